//! The source policy end to end (issue 20): what an external table may reach is the
//! operator's, checked at CREATE, again when a table is used (the config may have changed),
//! and on the address every connection really goes to. Each test fails on the code before the
//! policy existed (which resolved `${NAME}` from any environment variable and reached any path
//! and host).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Int32Array, StringArray};
use arrow::datatypes::{Field, Schema};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use medlake_engine::Engine;
use medlake_engine::runtime::RuntimeSettings;
use medlake_source::Policy;
use medlake_tds_testserver::{Column, Encryption, ServerConfig, SqlType, TdsServer};

use super::location;

const TOKEN: &str = "policy-test-token-51c9";

async fn engine(dir: &tempfile::TempDir, policy: Policy) -> Engine {
    Engine::open_with_sources(
        &location(dir),
        RuntimeSettings {
            memory_limit: None,
            spill_dir: None,
        },
        policy,
    )
    .await
    .unwrap()
}

/// Loopback allowed, nothing else (what an operator lists for a local stand-in).
fn loopback() -> Policy {
    Policy {
        allowed_hosts: vec!["127.0.0.1".into()],
        ..Policy::strict()
    }
}

/// A JSON API on 127.0.0.1 that answers `[{"id": 1}]` to the bearer token [`TOKEN`] and
/// counts the requests it receives.
async fn api() -> (String, Arc<AtomicUsize>) {
    async fn items(
        State(hits): State<Arc<AtomicUsize>>,
        headers: HeaderMap,
    ) -> (StatusCode, String) {
        hits.fetch_add(1, Ordering::SeqCst);
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth.is_empty() || auth == format!("Bearer {TOKEN}") {
            (StatusCode::OK, r#"[{"id": 1}, {"id": 2}]"#.to_string())
        } else {
            (StatusCode::UNAUTHORIZED, "bad token".to_string())
        }
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/items", get(items))
        .with_state(hits.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{port}"), hits)
}

/// The SQLSTATE and message of a failed statement.
async fn refused(engine: &Engine, sql: &str) -> (String, String) {
    let e = engine.sql(sql).await.expect_err(sql);
    (e.code().sqlstate().to_string(), e.to_string())
}

#[tokio::test]
async fn loopback_private_and_metadata_hosts_are_refused_unless_allowed() {
    let (address, hits) = api().await;
    let port = address.rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let strict = engine(&dir, Policy::strict()).await;
    for target in [
        format!("http://{address}/items"),
        // A name resolving to loopback: refused by the resolver, at connect time.
        format!("http://localhost:{port}/items"),
        // The same address written as IPv6 (mapped), which skips the resolver.
        format!("http://[::ffff:127.0.0.1]:{port}/items"),
        // Cloud metadata (link-local).
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/items".to_string(),
    ] {
        let started = Instant::now();
        let (state, message) = refused(
            &strict,
            &format!("CREATE EXTERNAL TABLE bronze.t STORED AS REST LOCATION '{target}'"),
        )
        .await;
        assert_eq!(state, "42501", "{target}: {message}");
        assert!(message.contains("allowed_hosts"), "{target}: {message}");
        // Refused, not retried or timed out.
        assert!(started.elapsed() < Duration::from_secs(5), "{target}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request reached the API");

    // Allowed: created and read.
    drop(strict);
    let allowed = engine(&dir, loopback()).await;
    allowed
        .sql(&format!(
            "CREATE EXTERNAL TABLE bronze.items STORED AS REST LOCATION 'http://{address}/items'"
        ))
        .await
        .unwrap();
    assert_eq!(
        super::count(&allowed, "SELECT count(*) FROM bronze.items").await,
        2
    );
    drop(allowed);

    // The operator's list changed: the stored table is refused when it is used.
    let hits_before = hits.load(Ordering::SeqCst);
    let strict = engine(&dir, Policy::strict()).await;
    let e = strict
        .query("SELECT count(*) FROM bronze.items")
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501", "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), hits_before);
}

#[tokio::test]
async fn secrets_resolve_only_from_the_servers_store() {
    let (address, hits) = api().await;
    let dir = tempfile::tempdir().unwrap();
    // The environment has this variable (.cargo/config.toml); the old resolver sent it.
    assert!(std::env::var("MEDLAKE_TEST_REST_TOKEN").is_ok());
    let strict = engine(&dir, loopback()).await;
    for name in ["MEDLAKE_TEST_REST_TOKEN", "PATH", "HOME"] {
        let (state, message) = refused(
            &strict,
            &format!(
                "CREATE EXTERNAL TABLE bronze.t STORED AS REST LOCATION 'http://{address}/items' \
                 OPTIONS ('bearer_token' '${{{name}}}')"
            ),
        )
        .await;
        assert_eq!(state, "42501", "{message}");
        assert!(
            message.contains(name) && message.contains("[secrets]"),
            "{message}"
        );
        let value = std::env::var(name).unwrap();
        assert!(!message.contains(&value), "{message}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    drop(strict);

    // Declared in the store: resolved and sent.
    let with_secret = engine(&dir, loopback().with_secret("API_TOKEN", TOKEN)).await;
    let create = format!(
        "CREATE EXTERNAL TABLE bronze.items STORED AS REST LOCATION 'http://{address}/items' \
         OPTIONS ('bearer_token' '${{API_TOKEN}}')"
    );
    with_secret.sql(&create).await.unwrap();
    assert_eq!(
        super::count(&with_secret, "SELECT count(*) FROM bronze.items").await,
        2
    );
    drop(with_secret);
    // The secret left the config: refused when used, by name.
    let without = engine(&dir, loopback()).await;
    let e = without
        .query("SELECT count(*) FROM bronze.items")
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501");
    assert!(e.to_string().contains("API_TOKEN"), "{e}");

    let options = [
        ("bearer_token".to_string(), "${API_TOKEN}".to_string()),
        ("page_size".to_string(), "10".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(medlake_source::secret_references(&options), ["API_TOKEN"]);
}

/// A secret bound to locations (`[secrets] NAME = { ..., locations = [...] }`) is sent only
/// there: a user who may use it cannot point a table of their own at another server and
/// receive it (nothing is sent; refused at CREATE, and at every use if the binding changes).
#[tokio::test]
async fn a_bound_secret_is_sent_only_under_its_locations() {
    let (address, hits) = api().await;
    let (elsewhere, elsewhere_hits) = api().await;
    let dir = tempfile::tempdir().unwrap();
    let bound = |to: &str| {
        let mut p = loopback().with_secret("API_TOKEN", TOKEN);
        p.secret_locations
            .insert("API_TOKEN".into(), vec![format!("http://{to}/items")]);
        p
    };
    let e = engine(&dir, bound(&address)).await;
    for location in [
        format!("http://{elsewhere}/items"),
        format!("http://{address}/itemsx"),
        format!("http://{address}@{elsewhere}/items"),
    ] {
        let (state, message) = refused(
            &e,
            &format!(
                "CREATE EXTERNAL TABLE bronze.stolen STORED AS REST LOCATION '{location}' \
                 OPTIONS ('bearer_token' '${{API_TOKEN}}')"
            ),
        )
        .await;
        assert_eq!(state, "42501", "{location}: {message}");
        assert!(message.contains("API_TOKEN"), "{message}");
        assert!(!message.contains(TOKEN), "{message}");
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "nothing was sent");
    e.sql(&format!(
        "CREATE EXTERNAL TABLE bronze.items STORED AS REST LOCATION 'http://{address}/items' \
         OPTIONS ('bearer_token' '${{API_TOKEN}}')"
    ))
    .await
    .unwrap();
    assert_eq!(
        super::count(&e, "SELECT count(*) FROM bronze.items").await,
        2
    );
    drop(e);
    // The operator moves the binding: the stored table is refused at its next use.
    let moved = engine(&dir, bound(&elsewhere)).await;
    let before = hits.load(Ordering::SeqCst);
    let err = moved
        .query("SELECT count(*) FROM bronze.items")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "42501", "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), before, "nothing was sent");
}

#[tokio::test]
async fn local_paths_must_be_allowed_and_never_the_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let landing = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(landing.path().join("docs")).unwrap();
    std::fs::write(landing.path().join("docs/a.txt"), "hello").unwrap();
    let policy = Policy {
        allowed_paths: vec![landing.path().to_path_buf()],
        ..Policy::strict()
    };
    let strict = engine(&dir, policy.clone()).await;
    let docs = landing.path().join("docs");
    for location in [
        "/etc/".to_string(),
        "file:///etc/".to_string(),
        format!("{}/../../../etc/", docs.display()),
        location(&dir),
    ] {
        for kind in ["BINARYFILE", "CSV", "PARQUET", "JSON", "DICOM"] {
            let (state, message) = refused(
                &strict,
                &format!("CREATE EXTERNAL TABLE bronze.t STORED AS {kind} LOCATION '{location}'"),
            )
            .await;
            assert_eq!(state, "42501", "{kind} {location}: {message}");
        }
    }
    strict
        .sql(&format!(
            "CREATE EXTERNAL TABLE bronze.docs STORED AS BINARYFILE LOCATION '{}'",
            docs.display()
        ))
        .await
        .unwrap();
    assert_eq!(
        super::count(&strict, "SELECT count(*) FROM bronze.docs").await,
        1
    );
    drop(strict);
    // Used under a policy that no longer allows the folder: refused.
    let none = engine(&dir, Policy::strict()).await;
    let e = none
        .query("SELECT count(*) FROM bronze.docs")
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501", "{e}");
    drop(none);

    // Even the CLI's permissive policy never reads the warehouse, nor a folder holding it.
    let permissive = engine(&dir, Policy::permissive()).await;
    for location in [
        location(&dir),
        format!("{}/bronze/", location(&dir)),
        format!("file://{}/", location(&dir)),
        dir.path().display().to_string(),
    ] {
        let (state, message) = refused(
            &permissive,
            &format!("CREATE EXTERNAL TABLE bronze.t STORED AS BINARYFILE LOCATION '{location}'"),
        )
        .await;
        assert_eq!(state, "42501", "{location}: {message}");
        assert!(message.contains("never read"), "{message}");
    }
}

#[tokio::test]
async fn blob_stores_connect_only_to_vetted_addresses_and_keep_the_servers_identity() {
    let dir = tempfile::tempdir().unwrap();
    let strict = engine(&dir, Policy::strict().with_secret("KEY", "a2V5")).await;
    let az = |endpoint: &str, extra: &str| {
        format!(
            "CREATE EXTERNAL TABLE bronze.t STORED AS CSV LOCATION 'az://landing/csv/' \
             OPTIONS ('azure_storage_account_name' 'devstoreaccount1', \
             'azure_storage_account_key' '${{KEY}}', 'azure_storage_endpoint' '{endpoint}', \
             'azure_allow_http' 'true'{extra})"
        )
    };
    for endpoint in [
        "http://127.0.0.1:9/devstoreaccount1",
        "http://localhost:9/devstoreaccount1",
        "http://169.254.169.254/devstoreaccount1",
    ] {
        let started = Instant::now();
        let (state, message) = refused(&strict, &az(endpoint, "")).await;
        assert_eq!(state, "42501", "{endpoint}: {message}");
        // Refused once, not retried for minutes by object_store.
        assert!(started.elapsed() < Duration::from_secs(10), "{endpoint}");
    }
    // The server's own identity (workload identity files, managed identity endpoints).
    for option in [
        "'azure_federated_token_file' '/var/run/secrets/azure/tokens/azure-identity-token'",
        "'azure_msi_endpoint' 'http://169.254.169.254/metadata/identity/oauth2/token'",
        "'azure_use_azure_cli' 'true'",
    ] {
        let (state, message) = refused(
            &strict,
            &format!(
                "CREATE EXTERNAL TABLE bronze.t STORED AS CSV LOCATION 'az://landing/csv/' \
                 OPTIONS ('azure_storage_account_name' 'acct', {option})"
            ),
        )
        .await;
        assert_eq!(state, "42501", "{option}: {message}");
        assert!(message.contains("ambient_identity"), "{message}");
    }
}

#[tokio::test]
async fn sql_server_connections_go_to_vetted_addresses_only() {
    let user = std::env::var("MEDLAKE_TEST_TDS_USER").expect("set by .cargo/config.toml");
    let password = std::env::var("MEDLAKE_TEST_TDS_PASSWORD").expect("set by .cargo/config.toml");
    let server = TdsServer::start(
        ServerConfig {
            encryption: Encryption::NotSupported,
            database: "EHR".into(),
            ..ServerConfig::default()
        }
        .with_user(user.clone(), password.clone()),
    )
    .await
    .unwrap();
    server.create_table(
        "dbo",
        "Wards",
        vec![
            Column::new("ID", SqlType::Int).not_null(),
            Column::new("Name", SqlType::NVarChar(Some(20))),
        ],
        vec![
            arrow::array::RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("ID", arrow::datatypes::DataType::Int32, false),
                    Field::new("Name", arrow::datatypes::DataType::Utf8, true),
                ])),
                vec![
                    Arc::new(Int32Array::from(vec![1, 2])),
                    Arc::new(StringArray::from(vec!["ICU", "ER"])),
                ],
            )
            .unwrap(),
        ],
    );
    let create = |host: &str| {
        format!(
            "CREATE EXTERNAL TABLE bronze.wards STORED AS SQLSERVER \
             LOCATION 'sqlserver://{host}:{}/EHR' OPTIONS ('encrypt' 'false', \
             'table' 'dbo.Wards', 'user' '${{TDS_USER}}', 'password' '${{TDS_PASSWORD}}', \
             'retries' '0')",
            server.port()
        )
    };
    let secrets = |p: Policy| {
        p.with_secret("TDS_USER", &user)
            .with_secret("TDS_PASSWORD", &password)
    };
    let dir = tempfile::tempdir().unwrap();
    let strict = engine(&dir, secrets(Policy::strict())).await;
    for host in ["127.0.0.1", "localhost"] {
        let (state, message) = refused(&strict, &create(host)).await;
        assert_eq!(state, "42501", "{host}: {message}");
    }
    // A CA file of the server outside the allowed paths.
    let (state, message) = refused(
        &strict,
        &create("127.0.0.1").replace(
            "'retries' '0'",
            "'retries' '0', 'ca_certificate' '/etc/hostname'",
        ),
    )
    .await;
    assert_eq!(state, "42501", "{message}");
    drop(strict);
    let allowed = engine(&dir, secrets(loopback())).await;
    allowed.sql(&create("127.0.0.1")).await.unwrap();
    assert_eq!(
        super::count(&allowed, "SELECT count(*) FROM bronze.wards").await,
        2
    );
}
