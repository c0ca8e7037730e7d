//! The operator console: `/console`, a small web app shipped in the binary (HTML, one
//! script, one stylesheet; no CDN), over a JSON API under `/console/api/`.
//!
//! Login is the password doors' login: the configured users ([`medlake_auth::Access`]),
//! checked with [`medlake_auth::User::verify`] after the server's shared failed-login record
//! ([`medlake_auth::Logins`]) lets the attempt in, and counted there. In no-auth mode the
//! console is the local operator's, on loopback only. A login opens a server-side session
//! named by a random token in a cookie (`HttpOnly; SameSite=Strict; Path=/console`, and
//! `Secure` with TLS) that ends after an idle timeout or at logout; writes (logout) carry the
//! session's CSRF token in `x-csrf-token`. Every panel is SQL run in an engine session of the
//! logged-in principal ([`medlake_engine::Engine::session_for_at`], door `http`), so
//! privileges, row filters and masks apply; a table the user may not read is an empty panel.
//! Every response carries a strict Content-Security-Policy (no inline script), `nosniff` and
//! `Cache-Control: no-store`.

mod panels;
mod sessions;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use medlake_auth::{Access, Logins};
use medlake_engine::{Code, Door, Engine, Origin};
use serde_json::json;
use tracing::warn;

use crate::ingest::Peer;
use sessions::{COOKIE, Session, Sessions};

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The largest request body the console reads (a login form).
const MAX_BODY_BYTES: usize = 16 << 10;

/// The longest user name or password the login form takes.
const MAX_CREDENTIAL_CHARS: usize = 1024;

/// The console's settings in the door's [`crate::Config`].
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// Who may log in: the password doors' users, or no-auth on loopback. `None` (the
    /// default): no console.
    pub access: Option<Access>,
    /// The server's failed-login record, shared with the other doors.
    pub logins: Logins,
    /// A session unused this long is closed (default 15 minutes).
    pub idle_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            access: None,
            logins: Logins::default(),
            idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone)]
struct Console {
    engine: Engine,
    access: Access,
    logins: Logins,
    sessions: Sessions,
    /// The door has TLS: cookies are `Secure`.
    secure: bool,
}

/// The console's routes (all under `/console`), or an empty router without a console.
pub(crate) fn router(engine: Engine, config: &ConsoleConfig, secure: bool) -> Router {
    let Some(access) = config.access.clone() else {
        return Router::new();
    };
    let console = Console {
        engine,
        access,
        logins: config.logins.clone(),
        sessions: Sessions::new(config.idle_timeout),
        secure,
    };
    Router::new()
        .route("/console", get(shell))
        .route("/console/", get(|| async { redirect("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route("/console/api/{panel}", get(api))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        // Not `no-referrer`: with it browsers send `Origin: null` on the login form's POST.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let kind = match kind {
        "text/javascript" => "text/javascript; charset=utf-8",
        _ => "text/css; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such console page")
}

/// The login page with one of our own messages (never text from the request).
fn login_html(status: StatusCode, message: Option<&'static str>) -> Response {
    let message = message.map_or(String::new(), |m| format!("<p class=\"error\">{m}</p>"));
    html(status, LOGIN_HTML.replace("<!--message-->", &message))
}

fn client(peer: Option<Extension<Peer>>) -> SocketAddr {
    peer.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0.0)
}

impl Console {
    /// The session the request's cookie names, if it is open.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let token = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| sessions::cookie(h, COOKIE))?;
        let session = self.sessions.touch(token)?;
        Some((token.to_string(), session))
    }

    fn cookie(&self, token: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// No-auth mode: a session of the local operator, for a loopback client only.
    fn open_local(&self, client: SocketAddr) -> Option<String> {
        if !client.ip().is_loopback() {
            return None;
        }
        let principal = self.access.anonymous("")?;
        Some(
            self.sessions
                .open(principal.name.clone(), principal, client),
        )
    }

    fn logged_in(&self, token: &str, status: StatusCode, body: Response) -> Response {
        let mut response = body;
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::SET_COOKIE, self.cookie(token));
        response
    }
}

/// `GET /console`: the app, or the login page for a browser without a session.
async fn shell(
    State(console): State<Console>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let page = html(StatusCode::OK, INDEX_HTML.to_string());
    if console.session(&headers).is_some() {
        return page;
    }
    if matches!(console.access, Access::InsecureNoAuth) {
        if let Some(token) = console.open_local(client(peer)) {
            return console.logged_in(&token, StatusCode::OK, page);
        }
        return error(
            StatusCode::FORBIDDEN,
            "the console is open to loopback only",
        );
    }
    redirect("/console/login")
}

async fn login_page(State(console): State<Console>) -> Response {
    if matches!(console.access, Access::InsecureNoAuth) {
        return redirect("/console");
    }
    login_html(StatusCode::OK, None)
}

#[derive(serde::Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// `POST /console/login` (a form: `username`, `password`).
async fn login(
    State(console): State<Console>,
    peer: Option<Extension<Peer>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    form: Result<Form<Credentials>, FormRejection>,
) -> Response {
    let client = client(peer);
    if !same_origin(&headers, &uri) {
        return login_html(StatusCode::FORBIDDEN, Some("Cross-site login refused."));
    }
    if matches!(console.access, Access::InsecureNoAuth) {
        return match console.open_local(client) {
            Some(token) => console.logged_in(&token, StatusCode::SEE_OTHER, redirect("/console")),
            None => error(
                StatusCode::FORBIDDEN,
                "the console is open to loopback only",
            ),
        };
    }
    let Ok(Form(credentials)) = form else {
        return login_html(
            StatusCode::BAD_REQUEST,
            Some("Give a user name and a password."),
        );
    };
    let user: String = credentials
        .username
        .chars()
        .take(MAX_CREDENTIAL_CHARS)
        .collect();
    if let Err(locked) = console.logins.check(client.ip(), &user) {
        warn!(target: "medlake::audit", user = %user, client = %client, "console login refused: locked out after failed logins");
        let mut response = login_html(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins from this address: try again later."),
        );
        if let Ok(value) = HeaderValue::from_str(&locked.retry_after.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let known = console.access.user(&user).filter(|u| {
        credentials.password.chars().count() <= MAX_CREDENTIAL_CHARS
            && u.verify(&credentials.password)
    });
    let Some(known) = known else {
        warn!(target: "medlake::audit", user = %user, client = %client, "console password authentication failed");
        console.logins.failed(client.ip(), &user);
        if let Err(e) = console.engine.audit_refused(
            Door::Http,
            Some(client.to_string()),
            &user,
            "LOGIN",
            Code::InvalidPassword,
        ) {
            warn!(target: "medlake::audit", error = %e, "a refused login could not be audited");
        }
        return login_html(StatusCode::UNAUTHORIZED, Some("Login failed."));
    };
    console.logins.succeeded(client.ip(), &user);
    let token = console.sessions.open(user, known.principal(), client);
    console.logged_in(&token, StatusCode::SEE_OTHER, redirect("/console"))
}

/// Whether a browser's `Origin` (when it sends one) is this server (`Host`, or the
/// authority of an HTTP/2 request).
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    matches!((origin, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// `POST /console/logout`, with the session's CSRF token in `x-csrf-token`.
async fn logout(State(console): State<Console>, headers: HeaderMap) -> Response {
    let Some((token, session)) = console.session(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let presented = headers
        .get("x-csrf-token")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !medlake_auth::constant_time_eq(presented, session.csrf.as_bytes()) {
        return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    console.sessions.close(&token);
    let secure = if console.secure { "; Secure" } else { "" };
    let clear = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = Json(json!({ "logged_out": true })).into_response();
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /console/api/{panel}`: `session` (who, the CSRF token) or one of the panels.
async fn api(
    State(console): State<Console>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(panel): Path<String>,
) -> Response {
    let Some((_, session)) = console.session(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    if panel == "session" {
        return Json(json!({
            "user": session.user,
            "csrf": session.csrf,
            "idle_timeout_seconds": console.sessions.idle_timeout().as_secs(),
        }))
        .into_response();
    }
    if !panels::PANELS.contains(&panel.as_str()) {
        return error(StatusCode::NOT_FOUND, "no such panel");
    }
    let engine_session = console.engine.session_for_at(
        session.principal,
        Origin::new(Door::Http, Some(client(peer).to_string())),
    );
    match panels::get(&engine_session, &panel).await {
        Some(value) => Json(value).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such panel"),
    }
}
