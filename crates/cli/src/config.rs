//! `medlake serve --config FILE`: users and TLS, in TOML.
//!
//! ```toml
//! [[users]]
//! name = "clinician"
//! password_env = "MEDLAKE_CLINICIAN_PASSWORD"   # or password_file = "/run/secrets/clinician"
//! role = "none"                                 # none (only grants), reader, writer (default), admin
//! roles = ["clinician"]                         # SQL roles (GRANT ... TO clinician), besides GRANT role TO user
//! method = "scram-sha-256"                      # or "md5" for old clients
//!
//! [[users]]
//! name = "etl"
//! password_env = "MEDLAKE_ETL_PASSWORD"
//! create_external = true                        # may CREATE EXTERNAL TABLE / IMPORT FOREIGN SCHEMA
//! secrets = ["EHR_PASSWORD"]                    # may reference ${EHR_PASSWORD} in OPTIONS
//!
//! [secrets]                                     # the only names ${NAME} resolves
//! EHR_PASSWORD = { env = "MEDLAKE_EHR_PASSWORD", locations = ["sqlserver://ehr-db.hospital.local"] }
//! LANDING_KEY = { file = "/run/secrets/landing_key" }   # no locations: wherever its users point it
//!
//! [sources]                                     # what external tables may reach
//! allowed_paths = ["/srv/landing"]              # local LOCATIONs only under these
//! allowed_hosts = ["ehr.hospital.internal", "10.20.0.0/16"]  # private/loopback hosts allowed
//! ambient_identity = ["az://landing/uploads"]   # may use the server's own cloud identity
//!
//! [flight]
//! token_lifetime_seconds = 3600                 # bearer tokens of the Flight SQL handshake
//! max_message_bytes = 67108864                  # largest gRPC message (one ingest batch)
//! max_ingest_bytes = 1073741824                 # one CommandStatementIngest
//! max_parameter_rows = 10000                    # rows bound to one prepared statement
//! max_prepared_per_user = 256                   # the least recently used one makes room
//! prepared_idle_seconds = 3600                  # unused prepared statements expire
//! max_connections = 512
//!
//! [postgres]
//! max_connections = 512                         # beyond, new connections are closed
//! max_prepared_statements = 1000                # named statements per connection (54000 beyond)
//!
//! [logins]                                      # failed logins, per client address, all doors
//! max_failures_per_user = 10                    # then that name is locked out from that address
//! max_failures_per_address = 50                 # across names (password spraying)
//! lockout_seconds = 1                           # doubles with each further failure
//! max_lockout_seconds = 60
//! window_seconds = 900                          # older failures are forgotten
//!
//! [audit]
//! enabled = true                                # false records nothing (benchmarks only)
//!
//! [tls]
//! cert = "/etc/medlake/server.crt"
//! key = "/etc/medlake/server.key"
//!
//! [[webhooks]]                                 # where alert rules (CREATE ALERT ... NOTIFY) post
//! name = "ward-pager"
//! url = "https://pager.hospital.internal/medlake"   # https (http only to loopback)
//! secret = "PAGER_HMAC"                         # a [secrets] name: signs each payload (HMAC-SHA-256)
//! timeout_seconds = 10
//! heartbeat_seconds = 60                        # a signed heartbeat this often while the pipeline is healthy
//!
//! [alerts]
//! max_attempts = 8                              # per webhook, then the delivery is 'failed'
//! first_backoff_seconds = 1                     # doubled after each failed attempt
//! max_backoff_seconds = 60
//! console_url = "https://medlake.hospital.internal:8080"   # the payload's link
//!
//! [clinical]
//! time_zone = "Europe/London"                   # hours and days of gold views (default UTC)
//!
//! [scheduler]
//! retry_attempts = 3                            # a failed scheduled refresh is retried
//! retry_backoff_seconds = 30                    # doubled after each failure
//! max_retry_backoff_seconds = 600
//! lease_seconds = 15                            # the scheduler lease's time to live: servers
//!                                               # sharing a warehouse run one scheduler; another
//!                                               # takes over within ~1.4x this when it dies
//!
//! [[ingest_tokens]]                             # bearer tokens of the HTTP ingest door
//! name = "ward-3-gateway"
//! token_env = "MEDLAKE_WARD3_TOKEN"             # or token_file
//! tables = ["bronze.readings"]                  # or "bronze.*"
//!
//! [http]
//! max_body_bytes = 16777216                     # 413 beyond
//! header_read_timeout_seconds = 10
//! body_read_timeout_seconds = 60                # 408 beyond
//! tls_handshake_timeout_seconds = 10
//! max_connections = 1024
//! queue_requests = 64                           # per table; 503 + Retry-After beyond
//! max_in_flight = 64                            # 429 + Retry-After beyond
//! quarantine = ["bronze.readings"]              # invalid rows go to <table>_quarantine
//! ```
//! Passwords and tokens are never in the file: they come from the environment or secret files.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub users: Vec<UserEntry>,
    pub tls: Option<TlsEntry>,
    pub flight: Option<FlightEntry>,
    #[serde(default)]
    pub ingest_tokens: Vec<TokenEntry>,
    pub http: Option<HttpEntry>,
    pub postgres: Option<PostgresEntry>,
    /// Named secrets: the only names `${NAME}` in source OPTIONS resolves.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, SecretEntry>,
    pub sources: Option<SourcesEntry>,
    pub logins: Option<LoginsEntry>,
    pub audit: Option<AuditEntry>,
    pub storage: Option<StorageEntry>,
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
    pub alerts: Option<AlertsEntry>,
    pub scheduler: Option<SchedulerEntry>,
    pub clinical: Option<ClinicalEntry>,
    /// `[mllp]`: the HL7 v2 door (see `mllp_door.rs`).
    pub mllp: Option<crate::mllp_door::MllpEntry>,
    /// `[cluster]`: the Ballista cluster queries run on (see `cluster.rs`).
    pub cluster: Option<crate::cluster::ClusterEntry>,
}

/// `[clinical]`: how the hospital's clinical reports are computed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicalEntry {
    /// The hospital's IANA time zone: the hours and days `local_hour()` / `local_date()`
    /// bucket by (gold views). Default UTC (or `MEDLAKE_TIME_ZONE`).
    pub time_zone: Option<String>,
}

/// `[scheduler]`: how failed scheduled and on-change refreshes are retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerEntry {
    pub retry_attempts: Option<u32>,
    pub retry_backoff_seconds: Option<u64>,
    pub max_retry_backoff_seconds: Option<u64>,
    /// The scheduler lease's time to live (default 15 s; 0.5 s to 1 h).
    pub lease_seconds: Option<f64>,
}

/// `[[webhooks]]`: a receiver of alert firings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    pub name: String,
    pub url: String,
    /// A `[secrets]` name whose value signs each payload.
    pub secret: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// Seconds between heartbeats (none without it).
    pub heartbeat_seconds: Option<u64>,
}

/// `[alerts]`: how firings are delivered.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsEntry {
    pub max_attempts: Option<u32>,
    pub first_backoff_seconds: Option<u64>,
    pub max_backoff_seconds: Option<u64>,
    pub console_url: Option<String>,
}

/// `[storage]`: how the warehouse's writes are acknowledged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageEntry {
    /// `true`: on a file:// warehouse every data file, log entry and the folders naming them
    /// are synced to disk before a write is acknowledged (also `MEDLAKE_FSYNC=on`).
    pub fsync: Option<bool>,
}

/// `[audit]`: whether statements are recorded in `system.audit` (default: yes).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// `false` records nothing (for measuring the audit's cost; never with patient data).
    pub enabled: Option<bool>,
}

impl Config {
    /// Whether writes are synced before they are acknowledged (`[storage] fsync`, or
    /// `MEDLAKE_FSYNC` = `on`/`true`/`1`; default off).
    pub fn fsync(&self) -> bool {
        let env = std::env::var("MEDLAKE_FSYNC")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "on" | "true" | "1"))
            .unwrap_or(false);
        env || self.storage.as_ref().and_then(|s| s.fsync).unwrap_or(false)
    }

    /// Whether auditing is on (`[audit] enabled`, default true).
    pub fn audit_enabled(&self) -> bool {
        self.audit.as_ref().and_then(|a| a.enabled).unwrap_or(true)
    }
}

/// How failed logins lock a client address out (every door).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginsEntry {
    pub max_failures_per_user: Option<u32>,
    pub max_failures_per_address: Option<u32>,
    pub lockout_seconds: Option<u64>,
    pub max_lockout_seconds: Option<u64>,
    pub window_seconds: Option<u64>,
}

impl LoginsEntry {
    /// The policy, each value bounded to something sensible (at least one failure, at most a day).
    pub fn policy(&self) -> medlake_auth::LoginPolicy {
        let default = medlake_auth::LoginPolicy::default();
        let seconds = |s: Option<u64>, default: std::time::Duration| {
            s.map_or(default, |s| {
                std::time::Duration::from_secs(s.clamp(1, 86_400))
            })
        };
        medlake_auth::LoginPolicy {
            max_failures_per_user: self
                .max_failures_per_user
                .map_or(default.max_failures_per_user, |n| n.max(1)),
            max_failures_per_address: self
                .max_failures_per_address
                .map_or(default.max_failures_per_address, |n| n.max(1)),
            window: seconds(self.window_seconds, default.window),
            lockout: seconds(self.lockout_seconds, default.lockout),
            max_lockout: seconds(self.max_lockout_seconds, default.max_lockout),
        }
    }
}

/// Where a named secret's value comes from: exactly one of `env` or `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    /// URL prefixes the secret may be sent under (an external table's LOCATION and the URLs
    /// in its OPTIONS); empty: wherever a table that may use it points.
    #[serde(default)]
    pub locations: Vec<String>,
}

/// What external tables may reach outside the warehouse.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesEntry {
    /// Local LOCATIONs must lie under one of these folders.
    #[serde(default)]
    pub allowed_paths: Vec<PathBuf>,
    /// Hosts (names, addresses or CIDR ranges) that may be loopback, link-local or private.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Locations (prefixes) that may use the server's own cloud identity.
    #[serde(default)]
    pub ambient_identity: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresEntry {
    pub max_connections: Option<usize>,
    /// Named prepared statements one connection may hold (default 1000).
    pub max_prepared_statements: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `schema.table` or `schema.*`.
    pub tables: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEntry {
    pub max_body_bytes: Option<usize>,
    /// A request's headers must arrive within this (default 10).
    pub header_read_timeout_seconds: Option<u64>,
    /// A request's body must arrive within this (default 60; 408 beyond).
    pub body_read_timeout_seconds: Option<u64>,
    /// A TLS handshake must finish within this (default 10).
    pub tls_handshake_timeout_seconds: Option<u64>,
    /// Open connections; beyond, new ones are closed (default 1024).
    pub max_connections: Option<usize>,
    pub queue_requests: Option<usize>,
    pub max_in_flight: Option<usize>,
    /// Tables whose invalid pushed rows are quarantined instead of refused.
    #[serde(default)]
    pub quarantine: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightEntry {
    /// How long a Flight SQL bearer token stays valid (default 3600).
    pub token_lifetime_seconds: Option<u64>,
    pub max_message_bytes: Option<usize>,
    pub max_ingest_bytes: Option<usize>,
    pub max_parameter_rows: Option<usize>,
    pub max_prepared_per_user: Option<usize>,
    pub prepared_idle_seconds: Option<u64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `none` (only what grants give), `reader` (queries only), `writer` (the default) or
    /// `admin`.
    pub role: Option<medlake_auth::Role>,
    /// SQL roles held from the configuration (`auditor`, `break_glass`, or roles made with
    /// `CREATE ROLE`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The older spelling of `role = "reader"`.
    #[serde(default)]
    pub read_only: bool,
    /// May create external tables (and IMPORT FOREIGN SCHEMA) without being an admin.
    #[serde(default)]
    pub create_external: bool,
    /// Secrets of `[secrets]` this user may reference as `${NAME}`.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub method: medlake_auth::Method,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// The ingest tokens, read from the environment or secret files.
    pub fn ingest_tokens(&self) -> Result<Vec<medlake_http::Token>, String> {
        self.ingest_tokens
            .iter()
            .map(|entry| {
                let secret = secret(
                    &format!("ingest token '{}'", entry.name),
                    entry.token_env.as_deref(),
                    entry.token_file.as_deref(),
                    "token",
                )?;
                if entry.tables.is_empty() {
                    return Err(format!("ingest token '{}' lists no tables", entry.name));
                }
                Ok(medlake_http::Token {
                    name: entry.name.clone(),
                    secret,
                    tables: entry.tables.clone(),
                })
            })
            .collect()
    }

    /// The users with their passwords, read from the environment or secret files.
    pub fn users(&self) -> Result<Vec<medlake_auth::User>, String> {
        let mut users: Vec<medlake_auth::User> = Vec::new();
        for entry in &self.users {
            if users.iter().any(|u| u.name == entry.name) {
                return Err(format!("user '{}' is configured twice", entry.name));
            }
            let password = secret(
                &format!("user '{}'", entry.name),
                entry.password_env.as_deref(),
                entry.password_file.as_deref(),
                "password",
            )?;
            let role = match (entry.role, entry.read_only) {
                (Some(medlake_auth::Role::Reader) | None, true) => medlake_auth::Role::Reader,
                (Some(_), true) => {
                    return Err(format!(
                        "user '{}': read_only = true contradicts role = {:?}",
                        entry.name, entry.role
                    ));
                }
                (Some(role), false) => role,
                (None, false) => medlake_auth::Role::Writer,
            };
            for name in &entry.secrets {
                if !self.secrets.contains_key(name) {
                    return Err(format!(
                        "user '{}' may use secret '{name}', which [secrets] does not declare",
                        entry.name
                    ));
                }
            }
            users.push(medlake_auth::User {
                name: entry.name.clone(),
                password: medlake_auth::Secret::new(password),
                method: entry.method,
                role,
                create_external: entry.create_external,
                secrets: entry.secrets.iter().cloned().collect(),
                roles: entry.roles.iter().map(|r| r.to_lowercase()).collect(),
            });
        }
        Ok(users)
    }

    /// The secret store: every `[secrets]` entry, read now. No login password or ingest
    /// token may be one of them (they would become readable by sources).
    pub fn secret_store(&self) -> Result<medlake_auth::SecretStore, String> {
        let mut sources = std::collections::BTreeMap::new();
        for (name, entry) in &self.secrets {
            let source = match (&entry.env, &entry.file) {
                (Some(var), None) => medlake_auth::SecretSource::Env(var.clone()),
                (None, Some(file)) => medlake_auth::SecretSource::File(file.clone()),
                _ => return Err(format!("secret '{name}' needs exactly one of env or file")),
            };
            let login_env = self
                .users
                .iter()
                .filter_map(|u| u.password_env.as_ref())
                .chain(
                    self.ingest_tokens
                        .iter()
                        .filter_map(|t| t.token_env.as_ref()),
                );
            let login_file = self
                .users
                .iter()
                .filter_map(|u| u.password_file.as_ref())
                .chain(
                    self.ingest_tokens
                        .iter()
                        .filter_map(|t| t.token_file.as_ref()),
                );
            let clash = match &source {
                medlake_auth::SecretSource::Env(var) => login_env.into_iter().any(|v| v == var),
                medlake_auth::SecretSource::File(file) => login_file.into_iter().any(|f| f == file),
            };
            if clash {
                return Err(format!(
                    "secret '{name}' reads a login password or ingest token; those are never available to sources"
                ));
            }
            sources.insert(name.clone(), source);
        }
        medlake_auth::SecretStore::load(&sources).map_err(|e| e.to_string())
    }

    /// What external tables may reach: `[secrets]` and `[sources]`, with the TLS and
    /// secret-file folders never readable. Nothing is allowed that the file does not list.
    pub fn source_policy(&self) -> Result<medlake_source::Policy, String> {
        let mut policy = medlake_source::Policy::strict();
        policy.secrets = self.secret_store()?;
        for (name, entry) in &self.secrets {
            for location in &entry.locations {
                let parsed = url::Url::parse(location.trim()).ok();
                if parsed.is_none_or(|u| u.host_str().is_none_or(str::is_empty)) {
                    return Err(format!(
                        "secret '{name}': location '{location}' is not a URL with a host (e.g. 'https://ehr.hospital.local/fhir')"
                    ));
                }
            }
            if !entry.locations.is_empty() {
                policy
                    .secret_locations
                    .insert(name.clone(), entry.locations.clone());
            }
        }
        if let Some(sources) = &self.sources {
            for path in &sources.allowed_paths {
                if !path.is_absolute() {
                    return Err(format!(
                        "[sources] allowed_paths: '{}' is not an absolute path",
                        path.display()
                    ));
                }
            }
            policy.allowed_paths = sources.allowed_paths.clone();
            policy.allowed_hosts = sources.allowed_hosts.clone();
            policy.ambient_identity = sources.ambient_identity.clone();
        }
        policy.forbidden_paths.extend(self.secret_folders());
        if let Some(tls) = &self.tls {
            policy.forbidden_paths.extend(
                [&tls.cert, &tls.key]
                    .iter()
                    .filter_map(|p| p.parent().map(Path::to_path_buf)),
            );
        }
        Ok(policy)
    }

    /// How failed automatic refreshes are retried (`[scheduler]`).
    pub fn scheduler_retries(&self) -> medlake_engine::RefreshRetries {
        let default = medlake_engine::RefreshRetries::default();
        let entry = self.scheduler.as_ref();
        let seconds = |s: Option<u64>, default: std::time::Duration| {
            s.map_or(default, |s| {
                std::time::Duration::from_secs(s.clamp(1, 86_400))
            })
        };
        medlake_engine::RefreshRetries {
            attempts: entry
                .and_then(|e| e.retry_attempts)
                .map_or(default.attempts, |n| n.min(100)),
            first_backoff: seconds(
                entry.and_then(|e| e.retry_backoff_seconds),
                default.first_backoff,
            ),
            max_backoff: seconds(
                entry.and_then(|e| e.max_retry_backoff_seconds),
                default.max_backoff,
            ),
        }
    }

    /// The scheduler lease's time to live (`[scheduler] lease_seconds`).
    pub fn scheduler_lease(&self) -> Result<std::time::Duration, String> {
        let Some(seconds) = self.scheduler.as_ref().and_then(|s| s.lease_seconds) else {
            return Ok(medlake_engine::DEFAULT_SCHEDULER_LEASE);
        };
        if !(0.5..=3600.0).contains(&seconds) {
            return Err(format!(
                "[scheduler] lease_seconds must be between 0.5 and 3600, not {seconds}"
            ));
        }
        Ok(std::time::Duration::from_secs_f64(seconds))
    }

    /// How alert rules are delivered: `[[webhooks]]` (secrets from `[secrets]`) and
    /// `[alerts]`; `active` for the server that evaluates them.
    pub fn alert_settings(&self, active: bool) -> Result<medlake_alerts::Settings, String> {
        let store = self.secret_store()?;
        let mut webhooks = Vec::new();
        for entry in &self.webhooks {
            if !medlake_alerts::deliver::valid_webhook_name(&entry.name) {
                return Err(format!(
                    "webhook name '{}': use letters, digits, - and _ (and not 'postgres')",
                    entry.name
                ));
            }
            if webhooks
                .iter()
                .any(|w: &medlake_alerts::Webhook| w.name == entry.name)
            {
                return Err(format!("webhook '{}' is declared twice", entry.name));
            }
            let url = url::Url::parse(&entry.url)
                .map_err(|e| format!("webhook '{}': its url does not parse: {e}", entry.name))?;
            let loopback = matches!(
                url.host(),
                Some(url::Host::Domain("localhost"))
                    | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                    | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
            );
            match url.scheme() {
                "https" => {}
                "http" if loopback => {}
                _ => {
                    return Err(format!(
                        "webhook '{}': its url must be https:// (http:// only to a loopback address)",
                        entry.name
                    ));
                }
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(format!(
                    "webhook '{}': no credentials in its url (give secret = \"NAME\" to sign payloads)",
                    entry.name
                ));
            }
            let secret = match &entry.secret {
                Some(name) => Some(store.get(name).cloned().ok_or_else(|| {
                    format!(
                        "webhook '{}': secret '{name}' is not declared in [secrets]",
                        entry.name
                    )
                })?),
                None => None,
            };
            webhooks.push(medlake_alerts::Webhook {
                name: entry.name.clone(),
                url,
                secret,
                timeout: std::time::Duration::from_secs(
                    entry.timeout_seconds.unwrap_or(10).clamp(1, 300),
                ),
                heartbeat: entry
                    .heartbeat_seconds
                    .map(|s| std::time::Duration::from_secs(s.clamp(1, 86_400))),
            });
        }
        let alerts = self.alerts.as_ref();
        let default = medlake_alerts::Retry::default();
        let seconds = |s: Option<u64>, default: std::time::Duration| {
            s.map_or(default, |s| {
                std::time::Duration::from_secs(s.clamp(1, 86_400))
            })
        };
        Ok(medlake_alerts::Settings {
            webhooks,
            retry: medlake_alerts::Retry {
                max_attempts: alerts
                    .and_then(|a| a.max_attempts)
                    .map_or(default.max_attempts, |n| n.clamp(1, 100)),
                first_backoff: seconds(
                    alerts.and_then(|a| a.first_backoff_seconds),
                    default.first_backoff,
                ),
                max_backoff: seconds(
                    alerts.and_then(|a| a.max_backoff_seconds),
                    default.max_backoff,
                ),
            },
            link_base: alerts
                .and_then(|a| a.console_url.clone())
                .unwrap_or_default(),
            policy: std::sync::Arc::new(medlake_source::Policy::strict()),
            active,
            standby: false,
        })
    }

    /// The hospital's time zone (`[clinical] time_zone`), when set.
    pub fn time_zone(&self) -> Result<Option<medlake_engine::local_time::ClinicalZone>, String> {
        self.clinical
            .as_ref()
            .and_then(|c| c.time_zone.as_deref())
            .map(|name| {
                medlake_engine::local_time::ClinicalZone::parse(name)
                    .map_err(|e| format!("[clinical] time_zone: {e}"))
            })
            .transpose()
    }

    /// The folders that hold secret files (no external table may read them).
    pub fn secret_folders(&self) -> Vec<PathBuf> {
        self.secrets
            .values()
            .filter_map(|s| s.file.as_ref())
            .chain(self.users.iter().filter_map(|u| u.password_file.as_ref()))
            .chain(
                self.ingest_tokens
                    .iter()
                    .filter_map(|t| t.token_file.as_ref()),
            )
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect()
    }
}

/// A secret from `<what>_env` (an environment variable) or `<what>_file`; never empty.
fn secret(
    owner: &str,
    env: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<String, String> {
    let value = match (env, file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            format!("{owner}: the environment variable {var} ({what}_env) is not set")
        })?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("{owner}: cannot read {what}_file {}: {e}", file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        _ => {
            return Err(format!(
                "{owner} needs exactly one of {what}_env or {what}_file"
            ));
        }
    };
    if value.is_empty() {
        return Err(format!("{owner} has an empty {what}"));
    }
    Ok(value)
}
