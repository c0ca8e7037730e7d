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
//! ```
//! Passwords are never in the file: they come from the environment or a secret file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub users: Vec<UserEntry>,
    pub tls: Option<TlsEntry>,
    pub flight: Option<FlightEntry>,
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

    /// The users with their passwords, read from the environment or secret files.
    pub fn users(&self) -> Result<Vec<medlake_pgwire::User>, String> {
        let mut users = Vec::new();
        for entry in &self.users {
            let password = match (&entry.password_env, &entry.password_file) {
                (Some(var), None) => std::env::var(var).map_err(|_| {
                    format!(
                        "user '{}': the environment variable {var} (password_env) is not set",
                        entry.name
                    )
                })?,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| {
                        format!(
                            "user '{}': cannot read password_file {}: {e}",
                            entry.name,
                            file.display()
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                _ => {
                    return Err(format!(
                        "user '{}' needs exactly one of password_env or password_file",
                        entry.name
                    ));
                }
            };
            if password.is_empty() {
                return Err(format!("user '{}' has an empty password", entry.name));
            }
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
