//! PRELOGIN encryption negotiation, TLS, LOGIN7 and its failures.

use medlake_tds_testserver::{Encryption, LoginAuth, ServerConfig, TdsServer};
use tiberius::{AuthMethod, EncryptionLevel};

use crate::common::{PASSWORD, TdsClient, USER, config, connect_with, server, within};

async fn select_one(client: &mut TdsClient) -> i32 {
    client
        .simple_query("SELECT 1")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .try_get::<i32, _>(0)
        .unwrap()
        .unwrap()
}

async fn works(server_side: Encryption, client_side: EncryptionLevel) -> bool {
    let server = server(server_side).await;
    let mut client = within("connect", connect_with(config(&server, client_side)))
        .await
        .unwrap_or_else(|e| panic!("{server_side:?} / {client_side:?}: {e}"));
    assert_eq!(within("query", select_one(&mut client)).await, 1);
    let logins = server.logins();
    assert_eq!(logins.len(), 1);
    assert!(logins[0].success);
    logins[0].encrypted
}

#[tokio::test]
async fn required_encryption_with_trusted_certificate() {
    let server = server(Encryption::Required).await;
    assert!(server.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    // Validate the certificate for real: trust exactly it, check the host name.
    let mut cfg = config(&server, EncryptionLevel::Required);
    let mut strict = tiberius::Config::new();
    strict.host("localhost");
    strict.port(server.port());
    strict.authentication(AuthMethod::sql_server(USER, PASSWORD));
    strict.encryption(EncryptionLevel::Required);
    strict.trust_cert_ca_bundle(server.cert_pem().into_bytes());
    for c in [&mut cfg, &mut strict] {
        let mut client = within("connect", connect_with(c.clone())).await.unwrap();
        assert_eq!(within("query", select_one(&mut client)).await, 1);
    }
    assert!(server.logins().iter().all(|l| l.encrypted && l.success));
}

#[tokio::test]
async fn encryption_levels_negotiate_like_sql_server() {
    // Full TLS.
    assert!(works(Encryption::Required, EncryptionLevel::Required).await);
    assert!(works(Encryption::Required, EncryptionLevel::Off).await);
    assert!(works(Encryption::On, EncryptionLevel::On).await);
    assert!(works(Encryption::Off, EncryptionLevel::On).await);
    // SQL Server's default: TLS for the login only, then plaintext.
    assert!(works(Encryption::Off, EncryptionLevel::Off).await);
    // Plaintext.
    assert!(!works(Encryption::NotSupported, EncryptionLevel::NotSupported).await);
    assert!(!works(Encryption::Off, EncryptionLevel::NotSupported).await);
    assert!(!works(Encryption::On, EncryptionLevel::NotSupported).await);
}

/// tiberius 0.13 quirk: with `EncryptionLevel::Off` it treats a server's ENCRYPT_NOT_SUP as
/// "encrypt" (its negotiation falls through to `On`) and starts a TLS handshake the server
/// never answers, where MS-TDS says the connection goes on in plaintext.
#[tokio::test]
async fn tiberius_off_against_a_server_without_tls_fails() {
    let server = server(Encryption::NotSupported).await;
    let err = within(
        "connect",
        connect_with(config(&server, EncryptionLevel::Off)),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls handshake eof"), "{err}");
}

#[tokio::test]
async fn mismatched_encryption_is_refused() {
    // The server requires encryption, the client cannot: the server answers ENCRYPT_REQ and
    // closes the connection.
    let server = server(Encryption::Required).await;
    let err = within(
        "connect",
        connect_with(config(&server, EncryptionLevel::NotSupported)),
    )
    .await
    .unwrap_err();
    assert!(server.logins().is_empty(), "{err}");

    // The client requires encryption, the server has no certificate.
    let plain = crate::common::server(Encryption::NotSupported).await;
    let err = within(
        "connect",
        connect_with(config(&plain, EncryptionLevel::Required)),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("encryption"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn wrong_password_is_error_18456() {
    let server = server(Encryption::Off).await;
    let mut cfg = config(&server, EncryptionLevel::Required);
    cfg.authentication(AuthMethod::sql_server(USER, "wrong"));
    let err = within("connect", connect_with(cfg)).await.unwrap_err();
    assert_eq!(err.code(), Some(18456));
    match &err {
        tiberius::error::Error::Server(e) => {
            assert_eq!(e.message(), format!("Login failed for user '{USER}'."));
            assert_eq!(e.class(), 14);
            assert_eq!(e.state(), 1);
        }
        other => panic!("expected a server error, got {other}"),
    }

    let mut cfg = config(&server, EncryptionLevel::Off);
    cfg.authentication(AuthMethod::sql_server("nobody", PASSWORD));
    let err = within("connect", connect_with(cfg)).await.unwrap_err();
    assert_eq!(err.code(), Some(18456));

    let logins = server.logins();
    assert_eq!(logins.len(), 2);
    assert!(logins.iter().all(|l| !l.success));
    assert_eq!(logins[1].user, "nobody");
}

#[tokio::test]
async fn database_and_application_are_recorded() {
    let server = TdsServer::start(ServerConfig {
        database: "Warehouse".into(),
        ..ServerConfig::default().with_user(USER, PASSWORD)
    })
    .await
    .unwrap();
    let mut cfg = config(&server, EncryptionLevel::Required);
    cfg.database("warehouse");
    let mut client = within("connect", connect_with(cfg)).await.unwrap();
    let row = within("db_name", async {
        client
            .simple_query("SELECT DB_NAME() AS db")
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap()
    })
    .await;
    assert_eq!(row.try_get::<&str, _>("db").unwrap(), Some("warehouse"));
    let login = &server.logins()[0];
    assert_eq!(login.user, USER);
    assert_eq!(login.database, "warehouse");
    assert_eq!(login.app_name, "medlake-tests");
    assert_eq!(login.auth, LoginAuth::Sql);

    // Another database does not exist here: 4060 first, as SQL Server sends it.
    let mut cfg = config(&server, EncryptionLevel::Required);
    cfg.database("elsewhere");
    let err = within("connect", connect_with(cfg)).await.unwrap_err();
    assert_eq!(err.code(), Some(4060));
}

#[tokio::test]
async fn azure_ad_token_login() {
    let server = TdsServer::start(ServerConfig {
        aad_tokens: vec!["eyJ0eXAi.test-token".into()],
        encryption: Encryption::Required,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&server, EncryptionLevel::Required);
    cfg.authentication(AuthMethod::aad_token("eyJ0eXAi.test-token"));
    let mut client = within("connect", connect_with(cfg)).await.unwrap();
    assert_eq!(within("query", select_one(&mut client)).await, 1);
    assert_eq!(server.logins()[0].auth, LoginAuth::AadToken);

    let mut cfg = config(&server, EncryptionLevel::Required);
    cfg.authentication(AuthMethod::aad_token("forged"));
    let err = within("connect", connect_with(cfg)).await.unwrap_err();
    assert_eq!(err.code(), Some(18456));
}
