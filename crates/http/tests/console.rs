//! The operator console (`/console`) with a real HTTP client on loopback: login against the
//! configured users with the shared failed-login record, the session cookie's attributes,
//! CSRF, the idle timeout, security headers, and panels run as the logged-in user.

use std::collections::BTreeSet;
use std::time::Duration;

use medlake_auth::{Access, LoginPolicy, Logins, Method, Role, Secret, User};
use medlake_engine::Engine;
use medlake_http::{Auth, Config, Server};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;

const ADMIN: (&str, &str) = ("admin", "admin-password-1");
const NURSE: (&str, &str) = ("nurse", "nurse-password-1");

struct Door {
    _dir: tempfile::TempDir,
    engine: Engine,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Door {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn user(name: &str, password: &str, role: Role, roles: &[&str]) -> User {
    User {
        name: name.into(),
        password: Secret::new(password),
        method: Method::ScramSha256,
        role,
        create_external: false,
        secrets: BTreeSet::new(),
        roles: roles.iter().map(|r| (*r).to_string()).collect(),
    }
}

async fn door(configure: impl FnOnce(&mut Config)) -> Door {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.obs (patient_id BIGINT, hour TIMESTAMP, ward VARCHAR, \
             bed VARCHAR, news2 BIGINT); \
             INSERT INTO bronze.obs VALUES (1, TIMESTAMP '2026-11-23 08:00:00', 'icu', 'b1', 2), \
             (1, TIMESTAMP '2026-11-23 09:00:00', 'icu', 'b1', 6); \
             CREATE MATERIALIZED VIEW gold.open_view AS SELECT patient_id FROM bronze.obs; \
             CREATE MATERIALIZED VIEW gold.news2_hourly AS SELECT patient_id, hour, ward, bed, \
             news2, CASE WHEN news2 >= 5 THEN 'medium' ELSE 'low' END AS risk FROM bronze.obs; \
             CREATE ROLE ward_staff; \
             GRANT USAGE ON SCHEMA gold TO ward_staff; \
             GRANT SELECT ON TABLE gold.open_view TO ward_staff; \
             GRANT USAGE ON SCHEMA system TO ward_staff; \
             GRANT SELECT ON TABLE system.materialized_views TO ward_staff; \
             GRANT SELECT ON TABLE system.lineage TO ward_staff; \
             GRANT SELECT ON TABLE system.refreshes TO ward_staff",
        )
        .await
        .unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), Auth::Tokens(vec![]));
    config.console.access = Some(Access::Users(vec![
        user(ADMIN.0, ADMIN.1, Role::Admin, &[]),
        user(NURSE.0, NURSE.1, Role::None, &["ward_staff"]),
    ]));
    configure(&mut config);
    let server = Server::bind(engine.clone(), config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Door {
        _dir: dir,
        engine,
        base,
        stop: Some(stop),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn login_response(door: &Door, (name, password): (&str, &str)) -> reqwest::Response {
    client()
        .post(format!("{}/console/login", door.base))
        .form(&[("username", name), ("password", password)])
        .send()
        .await
        .unwrap()
}

/// The `Set-Cookie` header of a response.
fn set_cookie(headers: &HeaderMap) -> String {
    headers
        .get(SET_COOKIE)
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap()
        .to_string()
}

/// Logs in and returns the `name=value` of the session cookie.
async fn login(door: &Door, credentials: (&str, &str)) -> String {
    let response = login_response(door, credentials).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie(response.headers());
    cookie.split(';').next().unwrap().to_string()
}

async fn get(door: &Door, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", door.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

async fn json(door: &Door, path: &str, cookie: &str) -> Value {
    let response = get(door, path, Some(cookie)).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

fn names(dag: &Value) -> Vec<String> {
    dag["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                r["schema"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_session_cookie_and_wrong_passwords_get_401() {
    let door = door(|_| {}).await;
    let response = login_response(&door, ADMIN).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/console");
    let cookie = set_cookie(response.headers());
    assert!(cookie.starts_with("medlake_console="), "{cookie}");
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("medlake_console=");
    assert_eq!(value.len(), 64, "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");

    for wrong in [(ADMIN.0, "guess"), ("nobody", "guess"), ("", "")] {
        let response = login_response(&door, wrong).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(response.headers().get(SET_COOKIE).is_none());
    }
    // A login form posted from another site is refused, with the right password too.
    let response = client()
        .post(format!("{}/console/login", door.base))
        .header("origin", "http://evil.example")
        .form(&[("username", ADMIN.0), ("password", ADMIN.1)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(SET_COOKIE).is_none());
    // A body that is not a form, or too large, is refused without a session.
    let response = client()
        .post(format!("{}/console/login", door.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 64 << 10])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    assert!(response.headers().get(SET_COOKIE).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_by_the_shared_record() {
    let logins = Logins::new(LoginPolicy {
        max_failures_per_user: 3,
        lockout: Duration::from_secs(30),
        ..Default::default()
    });
    let shared = logins.clone();
    let door = door(move |c| c.console.logins = shared).await;
    for _ in 0..3 {
        let response = login_response(&door, (NURSE.0, "guess")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Locked out: even the right password is refused, with when to try again.
    let response = login_response(&door, NURSE).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.headers().get(SET_COOKIE).is_none());
    // The record is the one the other doors share.
    assert!(logins.check("127.0.0.1".parse().unwrap(), NURSE.0).is_err());
    // Another user at that address is not locked out.
    login(&door, ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_session_and_the_shell_redirects_to_login() {
    let door = door(|_| {}).await;
    for cookie in [
        None,
        Some("medlake_console=00"),
        Some("medlake_console=zz%; ;;=; medlake_console"),
        Some(&*format!("medlake_console={}", "a".repeat(64))),
    ] {
        let response = get(&door, "/console/api/overview", cookie).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{cookie:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
        let response = get(&door, "/console", cookie).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()["location"], "/console/login");
    }
    let cookie = login(&door, ADMIN).await;
    let response = get(&door, "/console", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'self'; frame-ancestors 'none'"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let page = response.text().await.unwrap();
    assert!(page.contains("<script src=\"/console/app.js\""));
    assert!(!page.contains("<script>"), "no inline script");
    let script = get(&door, "/console/app.js", None).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        get(&door, "/console/api/nosuch", Some(&cookie))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&door, "/console/x/y/z", None).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_needs_the_csrf_token() {
    let door = door(|_| {}).await;
    let cookie = login(&door, ADMIN).await;
    let session = json(&door, "/console/api/session", &cookie).await;
    assert_eq!(session["user"], ADMIN.0);
    let csrf = session["csrf"].as_str().unwrap().to_string();
    let logout = |token: Option<String>| {
        let mut request = client()
            .post(format!("{}/console/logout", door.base))
            .header("cookie", &cookie);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        logout(Some("0".repeat(64))).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // Refused logouts left the session open.
    json(&door, "/console/api/session", &cookie).await;
    let response = logout(Some(csrf)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(set_cookie(response.headers()).contains("Max-Age=0"));
    let response = get(&door, "/console/api/session", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out() {
    let door = door(|c| c.console.idle_timeout = Duration::from_secs(1)).await;
    let cookie = login(&door, ADMIN).await;
    // Use keeps the session open past the timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        json(&door, "/console/api/session", &cookie).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let response = get(&door, "/console/api/session", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panels_run_as_the_logged_in_user() {
    let door = door(|_| {}).await;
    let admin = login(&door, ADMIN).await;
    let nurse = login(&door, NURSE).await;

    let all = json(&door, "/console/api/overview", &admin).await;
    let views = names(&all["dag"]);
    assert!(views.contains(&"gold.open_view".to_string()), "{views:?}");
    assert!(
        views.contains(&"gold.news2_hourly".to_string()),
        "{views:?}"
    );
    assert!(
        all["dag"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["view"] == "gold.news2_hourly" && e["input"] == "bronze.obs"),
        "{}",
        all["dag"]
    );
    let ward = &all["ward"];
    assert_eq!(ward["available"], true, "{ward}");
    assert_eq!(ward["rows"].as_array().unwrap().len(), 1, "{ward}");
    assert_eq!(ward["rows"][0]["score"], 6);
    assert_eq!(ward["rows"][0]["trend"], "up");
    assert_eq!(ward["rows"][0]["risk"], "medium");
    assert!(all["refreshes"]["rows"].as_array().unwrap().len() >= 2);
    for panel in ["dag", "refreshes", "quarantine", "alerts", "ward"] {
        assert_eq!(all[panel]["available"], true, "{panel}: {}", all[panel]);
    }
    // Source health is there exactly when the server has system.sources.
    let has_sources = door
        .engine
        .query("SELECT * FROM system.sources LIMIT 0")
        .await
        .is_ok();
    assert_eq!(all["sources"]["available"], has_sources);

    // The nurse may read gold.open_view but not gold.news2_hourly.
    let dag = json(&door, "/console/api/dag", &nurse).await;
    assert_eq!(names(&dag), vec!["gold.open_view".to_string()], "{dag}");
    let ward = json(&door, "/console/api/ward", &nurse).await;
    assert_eq!(ward["rows"].as_array().unwrap().len(), 0, "{ward}");
    assert_eq!(ward["available"], false, "{ward}");
    assert_eq!(ward["reason"], "not granted", "{ward}");
    let refreshes = json(&door, "/console/api/refreshes", &nurse).await;
    let rows = refreshes["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{refreshes}");
    assert!(
        rows.iter().all(|r| r["view"] == "gold.open_view"),
        "{refreshes}"
    );
}
