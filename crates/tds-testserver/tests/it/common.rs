//! Shared helpers: servers, tiberius clients and Arrow batches.

use std::future::Future;
use std::time::Duration;

use medlake_tds_testserver::{Encryption, ServerConfig, TdsServer};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

pub const USER: &str = "medlake";
pub const PASSWORD: &str = "S3cret!pass";

pub type TdsClient = Client<Compat<TcpStream>>;

/// A server with one SQL login and the given encryption setting.
pub async fn server(encryption: Encryption) -> TdsServer {
    TdsServer::start(ServerConfig {
        encryption,
        ..ServerConfig::default().with_user(USER, PASSWORD)
    })
    .await
    .expect("server starts")
}

/// A tiberius configuration for `server`, trusting its certificate.
pub fn config(server: &TdsServer, encryption: EncryptionLevel) -> Config {
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(server.port());
    config.authentication(AuthMethod::sql_server(USER, PASSWORD));
    config.encryption(encryption);
    config.trust_cert();
    config.application_name("medlake-tests");
    config
}

pub async fn connect_with(config: Config) -> tiberius::Result<TdsClient> {
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config, tcp.compat_write()).await
}

/// Connect with SQL Server's default client setting for tiberius + rustls (`Required`).
pub async fn connect(server: &TdsServer) -> TdsClient {
    connect_with(config(server, EncryptionLevel::Required))
        .await
        .expect("client connects")
}

/// Fail a test that hangs instead of hanging CI.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within 30 s"),
    }
}
