//! `medlake serve --config FILE`: users and TLS, in TOML.
//!
//! ```toml
//! [[users]]
//! name = "clinician"
//! password_env = "MEDLAKE_CLINICIAN_PASSWORD"   # or password_file = "/run/secrets/clinician"
//! read_only = true                             # queries only, e.g. for dashboards
//! method = "scram-sha-256"                      # or "md5" for old clients
//!
//! [flight]
//! token_lifetime_seconds = 3600                 # bearer tokens of the Flight SQL handshake
//!
//! [tls]
//! cert = "/etc/medlake/server.crt"
//! key = "/etc/medlake/server.key"
//!
//! [[ingest_tokens]]                             # bearer tokens of the HTTP ingest door
//! name = "ward-3-gateway"
//! token_env = "MEDLAKE_WARD3_TOKEN"             # or token_file
//! tables = ["bronze.readings"]                  # or "bronze.*"
//!
//! [http]
//! max_body_bytes = 16777216                     # 413 beyond
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Queries only (dashboards): statements that could change the warehouse are refused.
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub method: medlake_pgwire::Method,
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
    pub fn users(&self) -> Result<Vec<medlake_pgwire::User>, String> {
        let mut users = Vec::new();
        for entry in &self.users {
            let password = secret(
                &format!("user '{}'", entry.name),
                entry.password_env.as_deref(),
                entry.password_file.as_deref(),
                "password",
            )?;
            users.push(medlake_pgwire::User {
                name: entry.name.clone(),
                password: medlake_pgwire::Secret::new(password),
                method: entry.method,
                read_only: entry.read_only,
            });
        }
        Ok(users)
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
