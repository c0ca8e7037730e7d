//! `medlake-auth`: who is calling and what they may do, for every door and for the engine.
//!
//! It owns the principal model ([`Principal`], built from configured [`User`]s, ingest
//! [`Token`]s or the local operator), the privilege rules ([`AccessState::allows`]: levels, roles, grants, ownership), the
//! secret store that `${NAME}` references in source options resolve against
//! ([`SecretStore`]), constant-time secret comparison and random tokens ([`Secret`],
//! [`random_token`]), the loopback rule of no-auth mode ([`Access::check`]) and the one TLS
//! loader every door uses ([`TlsFiles::load`]) and the failed-login record every door
//! consults before checking a password ([`Logins`]).
//!
//! It decides *whether* a principal holds a privilege on an object; it never decides which
//! privileges a statement needs. That is the engine's job, in one place
//! (`medlake_engine::Session::execute`), derived from the statement's plan. A door only
//! authenticates and hands the engine a [`Principal`].

mod access;
mod grants;
mod principal;
mod secret;
mod throttle;
mod tls;

pub use access::{Access, Method, User};
pub use grants::{
    AUDITOR, AccessState, BREAK_GLASS, BUILT_IN_ROLES, Grant, PUBLIC, RowFilter, Securable,
    TableKey, all_privileges, grantable,
};
pub use principal::{Object, Principal, PrincipalKind, Privilege, Role, TablePattern};
pub use secret::{Secret, SecretSource, SecretStore, constant_time_eq, random_token};
pub use throttle::{LockedOut, LoginPolicy, Logins};
pub use tls::{Loaded as LoadedTls, TlsFiles, certificate_names};

/// Errors of this crate: configuration that cannot be used. Nothing is half-loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS is configured but cannot be used ({what}): {reason}")]
    Tls { what: String, reason: String },
    #[error("secret '{name}': {reason}")]
    Secret { name: String, reason: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
