//! Who may log in to the password doors (Postgres wire, Flight SQL), and the rules a door
//! must meet before it listens: no-auth only on loopback, and passwords never in clear
//! off the machine.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tracing::warn;

use crate::{Principal, PrincipalKind, Role, Secret};

/// How a user proves their password on the Postgres wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// SCRAM-SHA-256 (RFC 7677), what PostgreSQL uses by default since version 14.
    #[default]
    ScramSha256,
    /// MD5 challenge-response, for clients too old for SCRAM.
    Md5,
}

/// A configured user.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: Secret,
    pub method: Method,
    pub role: Role,
    /// May create external tables without being an admin.
    pub create_external: bool,
    /// Secrets of the store this user may reference as `${NAME}`.
    pub secrets: BTreeSet<String>,
    /// SQL roles this user holds from the configuration (`roles = ["clinician"]`).
    pub roles: BTreeSet<String>,
}

impl User {
    /// Whether `password` is this user's (compared in constant time), for doors that receive
    /// the password itself (Flight SQL's Basic handshake, over TLS).
    pub fn verify(&self, password: &str) -> bool {
        self.password.verify(password)
    }

    /// The principal this user's sessions run as.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            kind: PrincipalKind::User,
            role: self.role,
            create_external: self.create_external || self.role == Role::Admin,
            secrets: self.secrets.clone(),
            tables: Vec::new(),
            roles: self.roles.clone(),
        }
    }
}

/// Who may connect.
#[derive(Clone, Debug)]
pub enum Access {
    /// Users with passwords.
    Users(Vec<User>),
    /// Anyone, without a password, as the local operator: only for demos on loopback.
    InsecureNoAuth,
}

impl Access {
    /// Checks that a door may serve `listen` with this access: no-auth only on loopback
    /// (with a loud warning), at least one user otherwise, and password logins on a
    /// non-loopback address only over TLS. `door` names it in messages.
    pub fn check(&self, listen: SocketAddr, door: &str, tls: bool) -> Result<(), String> {
        match self {
            Access::InsecureNoAuth if !listen.ip().is_loopback() => Err(format!(
                "no-auth mode only binds a loopback address, not {listen}"
            )),
            Access::InsecureNoAuth => {
                warn!(
                    addr = %listen,
                    "{} WITHOUT AUTHENTICATION: anyone on this machine can read and write the warehouse (--insecure-no-auth)",
                    door.to_uppercase()
                );
                Ok(())
            }
            Access::Users(users) if users.is_empty() => {
                Err(format!("no users are configured for the {door}"))
            }
            Access::Users(_) if !tls && !listen.ip().is_loopback() => Err(format!(
                "the {door} would take passwords in clear on {listen}: configure [tls] (cert and key) \
                 or listen on a loopback address"
            )),
            Access::Users(_) => Ok(()),
        }
    }

    /// The user called `name`, if configured.
    pub fn user(&self, name: &str) -> Option<&User> {
        match self {
            Access::Users(users) => users.iter().find(|u| u.name == name),
            Access::InsecureNoAuth => None,
        }
    }

    /// The principal of an unauthenticated no-auth session (the local operator), or `None`
    /// when users are configured.
    pub fn anonymous(&self, name: &str) -> Option<Principal> {
        match self {
            Access::InsecureNoAuth => Some(Principal::local(if name.is_empty() {
                "anonymous"
            } else {
                name
            })),
            Access::Users(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_travel_in_clear_off_loopback() {
        let users = Access::Users(vec![User {
            name: "u".into(),
            password: Secret::new("p"),
            method: Method::ScramSha256,
            role: Role::Reader,
            create_external: false,
            secrets: BTreeSet::new(),
            roles: BTreeSet::new(),
        }]);
        let any: SocketAddr = "0.0.0.0:5432".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert!(users.check(any, "postgres door", false).is_err());
        assert!(users.check(any, "postgres door", true).is_ok());
        assert!(users.check(lo, "postgres door", false).is_ok());
        assert!(Access::InsecureNoAuth.check(any, "x", true).is_err());
        assert!(Access::InsecureNoAuth.check(lo, "x", false).is_ok());
        assert!(Access::Users(vec![]).check(lo, "x", true).is_err());
    }
}
