//! Who may connect, and how they prove it: SCRAM-SHA-256 (the default, as in PostgreSQL) or
//! md5 for old clients, against the users of the server's configuration; TLS required when
//! it is configured; the database must be `medlake`.

use medlake_common::Code;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::scram::{ScramServerAuth, ScramServerAuthWaitingForClientFinal};
use pgwire::api::auth::{
    LoginInfo, Password, ServerParameterProvider, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, METADATA_APPLICATION_NAME, METADATA_DATABASE, METADATA_USER, PgWireConnectionState,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tracing::{info, warn};

use crate::connection::{Connection, Registry};

const SCRAM_ITERATIONS: usize = 4096;

pub use medlake_auth::{Access, Logins, Method, Secret, User};

/// A user as the server keeps it: SCRAM's salted password, computed once.
struct Known {
    user: User,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

/// The per-connection progress of a login.
enum Pending {
    ScramFirst { user: String, password: Password },
    ScramFinal(Box<ScramServerAuthWaitingForClientFinal>),
    Md5 { user: String, expected: String },
}

struct PendingLogin(Mutex<Option<Pending>>);

impl PendingLogin {
    fn take(&self) -> Option<Pending> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn put(&self, pending: Pending) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pending);
    }
}

/// Authenticates connections and opens their medlake session.
pub struct Startup {
    engine: medlake_engine::Engine,
    access: Access,
    users: HashMap<String, Known>,
    /// Salted password of no user: an unknown user fails at the same step as a wrong password.
    decoy: (Vec<u8>, Vec<u8>),
    tls_required: bool,
    registry: Arc<Registry>,
    parameters: Parameters,
    /// Failed logins, shared with the server's other doors.
    logins: Logins,
}

impl Startup {
    pub(crate) fn new(
        engine: medlake_engine::Engine,
        access: Access,
        tls_required: bool,
        registry: Arc<Registry>,
        logins: Logins,
    ) -> Self {
        let mut users = HashMap::new();
        if let Access::Users(list) = &access {
            for user in list {
                let salt: [u8; 16] = rand_bytes();
                let salted = pgwire::api::auth::sasl::scram::gen_salted_password(
                    user.password.expose(),
                    &salt,
                    SCRAM_ITERATIONS,
                );
                users.insert(
                    user.name.clone(),
                    Known {
                        user: user.clone(),
                        salt: salt.to_vec(),
                        salted,
                    },
                );
            }
        }
        let decoy_salt: [u8; 16] = rand_bytes();
        let decoy_password: [u8; 32] = rand_bytes();
        Self {
            engine,
            access,
            users,
            decoy: (decoy_salt.to_vec(), decoy_password.to_vec()),
            tls_required,
            registry,
            parameters: Parameters,
            logins,
        }
    }

    /// Records a failed login and returns its error.
    fn failed(&self, client: std::net::SocketAddr, user: &str) -> PgWireError {
        warn!(target: "medlake::audit", user = %user, client = %client, "postgres password authentication failed");
        self.logins.failed(client.ip(), user);
        audit_refused(&self.engine, client, user, Code::InvalidPassword);
        password_failed(user)
    }

    async fn finish<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pid = i32::from_be_bytes(rand_bytes::<4>()) & 0x7fff_ffff;
        let secret: [u8; 4] = rand_bytes();
        let secret = SecretKey::I32(i32::from_be_bytes(secret));
        client.set_pid_and_secret_key(pid, secret.clone());
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let application = client
            .metadata()
            .get(METADATA_APPLICATION_NAME)
            .cloned()
            .unwrap_or_default();
        let principal = match self.users.get(&user) {
            Some(known) => known.user.principal(),
            None => self.access.anonymous(&user).ok_or_else(|| {
                fatal(
                    Code::InvalidAuthorization,
                    format!("no such user \"{user}\""),
                )
            })?,
        };
        if matches!(self.access, Access::Users(_)) {
            self.logins.succeeded(client.socket_addr().ip(), &user);
        }
        let read_only = principal.role == medlake_engine::Role::Reader;
        let connection = Arc::new(Connection::new(
            self.engine.session_for_at(
                principal,
                medlake_engine::Origin::new(
                    medlake_engine::Door::Postgres,
                    Some(client.socket_addr().to_string()),
                ),
            ),
            user.clone(),
        ));
        // A client may choose its schema at connect time (`options=-c search_path=bronze`).
        if let Some(options) = client.metadata().get("options").cloned() {
            crate::commands::apply_startup_options(&connection, &options)?;
        }
        for (key, value) in client.metadata().clone() {
            if let Some(setting) = startup_setting(&key) {
                crate::commands::apply_startup_setting(&connection, setting, &value)?;
            }
        }
        if read_only {
            connection.update_settings(|s| {
                s.values
                    .insert("default_transaction_read_only".into(), "on".into());
            });
        }
        // What RESET and DISCARD ALL return to.
        connection.seal_startup_defaults();
        let guard = self.registry.register(pid, &secret, &connection);
        client.session_extensions().insert(connection);
        client.session_extensions().insert(guard);
        info!(
            user = %user,
            client = %client.socket_addr(),
            tls = client.is_secure(),
            application = %application,
            "postgres connection authenticated"
        );
        finish_authentication(client, &self.parameters).await
    }
}

/// Startup parameters (besides `options`) that are settings.
fn startup_setting(key: &str) -> Option<&'static str> {
    match key.to_ascii_lowercase().as_str() {
        "search_path" => Some("search_path"),
        "application_name" => Some("application_name"),
        "statement_timeout" => Some("statement_timeout"),
        "extra_float_digits" => Some("extra_float_digits"),
        "datestyle" => Some("DateStyle"),
        "timezone" => Some("TimeZone"),
        _ => None,
    }
}

pub(crate) fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom(&mut out);
    out
}

fn getrandom(out: &mut [u8]) {
    // ring is already in the tree for TLS; its SystemRandom reads the OS's CSPRNG.
    use tokio_rustls::rustls::crypto::ring::default_provider;
    let provider = default_provider();
    if provider.secure_random.fill(out).is_err() {
        // Unreachable on Linux; never continue with predictable bytes.
        panic!("the operating system's random number generator failed");
    }
}

/// Records a refused login in `system.audit` (a log that cannot be written is only logged:
/// the login fails anyway).
fn audit_refused(
    engine: &medlake_engine::Engine,
    client: std::net::SocketAddr,
    user: &str,
    code: Code,
) {
    let door = medlake_engine::Door::Postgres;
    if let Err(e) = engine.audit_refused(door, Some(client.to_string()), user, "LOGIN", code) {
        warn!(target: "medlake::audit", error = %e, "a refused login could not be audited");
    }
}

fn fatal(code: Code, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.sqlstate().to_owned(),
        message.into(),
    )))
}

fn password_failed(user: &str) -> PgWireError {
    fatal(
        Code::InvalidPassword,
        format!("password authentication failed for user \"{user}\""),
    )
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let user = self.admissible(client)?;
                match &self.access {
                    Access::InsecureNoAuth => self.finish(client).await,
                    Access::Users(_) => self.challenge(client, user).await,
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.on_password(client, message).await
            }
            _ => Ok(()),
        }
    }
}

/// A SCRAM or MD5 exchange with a client.
type PasswordMessage = pgwire::messages::startup::PasswordMessageFamily;

impl Startup {
    /// The user of a startup packet, if the connection may log in at all: TLS when it is
    /// required, a user name, and medlake's database.
    fn admissible<C: ClientInfo>(&self, client: &C) -> PgWireResult<String> {
        if self.tls_required && !client.is_secure() {
            warn!(client = %client.socket_addr(), "refused a connection without TLS");
            return Err(fatal(
                Code::InvalidAuthorization,
                "this medlake server requires TLS: connect with sslmode=require",
            ));
        }
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        if user.is_empty() {
            return Err(fatal(Code::InvalidAuthorization, "no user name was given"));
        }
        let database = client
            .metadata()
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        if database != medlake_engine::CATALOG {
            return Err(fatal(
                Code::InvalidCatalogName,
                format!(
                    "database \"{database}\" does not exist (the database is \"{}\")",
                    medlake_engine::CATALOG
                ),
            ));
        }
        Ok(user)
    }

    /// Asks for the password (SCRAM-SHA-256 or MD5, as the user is configured; an unknown
    /// user gets a decoy SCRAM exchange), unless the address is locked out.
    async fn challenge<C>(&self, client: &mut C, user: String) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Err(locked) = self.logins.check(client.socket_addr().ip(), &user) {
            warn!(
                target: "medlake::audit",
                user = %user,
                client = %client.socket_addr(),
                "postgres login refused: locked out after failed logins"
            );
            audit_refused(
                &self.engine,
                client.socket_addr(),
                &user,
                Code::InvalidAuthorization,
            );
            return Err(fatal(Code::InvalidAuthorization, locked.to_string()));
        }
        let known = self.users.get(&user);
        let pending = match known.map_or(Method::ScramSha256, |k| k.user.method) {
            Method::ScramSha256 => {
                let (salt, salted) = known.map_or_else(
                    || self.decoy.clone(),
                    |k| (k.salt.clone(), k.salted.clone()),
                );
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec!["SCRAM-SHA-256".to_owned()],
                    )))
                    .await?;
                Pending::ScramFirst {
                    user,
                    password: Password::new(Some(salt), salted),
                }
            }
            Method::Md5 => {
                let salt: [u8; 4] = rand_bytes();
                let password = known
                    .map(|k| k.user.password.expose().to_string())
                    .unwrap_or_default();
                let expected =
                    pgwire::api::auth::md5pass::hash_md5_password(&user, &password, &salt);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::MD5Password(salt.to_vec()),
                    ))
                    .await?;
                Pending::Md5 { user, expected }
            }
        };
        client
            .session_extensions()
            .insert(PendingLogin(Mutex::new(Some(pending))));
        Ok(())
    }

    /// The next step of the password exchange the connection is in.
    async fn on_password<C>(&self, client: &mut C, message: PasswordMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let unexpected = || fatal(Code::ProtocolViolation, "unexpected password message");
        let login = client
            .session_extensions()
            .get::<PendingLogin>()
            .ok_or_else(unexpected)?;
        let pending = login.take();
        match pending.ok_or_else(unexpected)? {
            Pending::ScramFirst { user, password } => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != "SCRAM-SHA-256" {
                    return Err(fatal(
                        Code::InvalidAuthorization,
                        format!(
                            "SASL mechanism {} is not supported; use SCRAM-SHA-256",
                            initial.auth_method
                        ),
                    ));
                }
                let data = initial.data.ok_or_else(|| {
                    fatal(Code::ProtocolViolation, "empty SCRAM client-first message")
                })?;
                let (server_first, waiting) = ScramServerAuth::new()
                    .on_client_first_message(&data, password)
                    .map_err(|e| {
                        warn!(user = %user, error = %e, "SCRAM client-first refused");
                        self.failed(client.socket_addr(), &user)
                    })?;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(server_first.into()),
                    ))
                    .await?;
                login.put(Pending::ScramFinal(Box::new(waiting)));
                Ok(())
            }
            Pending::ScramFinal(waiting) => {
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_string();
                let response = message.into_sasl_response()?;
                let known = self.users.contains_key(&user);
                match waiting.on_client_final_message(&response.data) {
                    Ok(server_final) if known => {
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(server_final.into()),
                            ))
                            .await?;
                        self.finish(client).await
                    }
                    _ => Err(self.failed(client.socket_addr(), &user)),
                }
            }
            Pending::Md5 { user, expected } => {
                let password = message.into_password()?;
                let matches = medlake_auth::constant_time_eq(
                    password.password.as_bytes(),
                    expected.as_bytes(),
                );
                if self.users.contains_key(&user) && matches {
                    self.finish(client).await
                } else {
                    Err(self.failed(client.socket_addr(), &user))
                }
            }
        }
    }
}

/// The ParameterStatus messages sent after authentication.
pub(crate) struct Parameters;

impl ServerParameterProvider for Parameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut params = HashMap::new();
        let mut set = |k: &str, v: &str| {
            params.insert(k.to_owned(), v.to_owned());
        };
        set("server_version", medlake_engine::postgres::SERVER_VERSION);
        set("server_encoding", "UTF8");
        set("client_encoding", "UTF8");
        set("DateStyle", "ISO, MDY");
        set("IntervalStyle", "postgres");
        set("TimeZone", "UTC");
        set("integer_datetimes", "on");
        set("standard_conforming_strings", "on");
        set("is_superuser", "off");
        set("in_hot_standby", "off");
        set("default_transaction_read_only", "off");
        set("scram_iterations", &SCRAM_ITERATIONS.to_string());
        if let Some(user) = client.metadata().get(METADATA_USER) {
            set("session_authorization", user);
        }
        let application = client
            .metadata()
            .get(METADATA_APPLICATION_NAME)
            .cloned()
            .unwrap_or_default();
        set("application_name", &application);
        Some(params)
    }
}
