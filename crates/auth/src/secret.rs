//! Secrets: values that never print, compare in constant time, and a store of the named
//! secrets (`[secrets]` in the config) that source options may reference as `${NAME}`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{Error, Result};

/// A password, token or key that never prints (`Debug` shows `Secret(***)`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The value itself: only to hand it to what needs it (a TLS library, a source's login).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, compared in constant time.
    pub fn verify(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(&mut buffer).is_err() {
        // Without randomness no token, handle or salt can be safe: stop rather than guess.
        panic!("the operating system's random number generator failed");
    }
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a configured secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the server.
    Env(String),
    /// A file (trailing newlines dropped), e.g. under `/run/secrets`.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the value; empty values are refused.
    pub fn read(&self, name: &str) -> Result<Secret> {
        let fail = |reason: String| Error::Secret {
            name: name.to_string(),
            reason,
        };
        let value = match self {
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| fail(format!("the environment variable {var} is not set")))?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        };
        if value.is_empty() {
            return Err(fail("the value is empty".into()));
        }
        Ok(Secret::new(value))
    }
}

/// The secrets source definitions may reference as `${NAME}`: only names declared here
/// resolve (never the server's other environment variables, never a login password or an
/// ingest token). Cheap to clone.
#[derive(Clone, Default)]
pub struct SecretStore {
    secrets: Arc<BTreeMap<String, Secret>>,
}

impl Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretStore {
    /// A store of already-read secrets.
    pub fn new(secrets: impl IntoIterator<Item = (String, Secret)>) -> Self {
        Self {
            secrets: Arc::new(secrets.into_iter().collect()),
        }
    }

    /// Reads every secret from its source now (a missing one fails the start, not a query).
    pub fn load(sources: &BTreeMap<String, SecretSource>) -> Result<Self> {
        let mut secrets = BTreeMap::new();
        for (name, source) in sources {
            if !valid_name(name) {
                return Err(Error::Secret {
                    name: name.clone(),
                    reason:
                        "secret names are letters, digits and '_', starting with a letter or '_'"
                            .into(),
                });
            }
            secrets.insert(name.clone(), source.read(name)?);
        }
        Ok(Self {
            secrets: Arc::new(secrets),
        })
    }

    /// The secret called `name`, if the store has it.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// The declared names (never the values).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

/// The names `${NAME}` may carry.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_compare_exactly() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.verify("hunter2"));
        assert!(!s.verify("hunter3"));
        assert!(!s.verify("hunter22"));
        assert!(!s.verify(""));
        let store = SecretStore::new([("EHR".to_string(), s)]);
        assert!(!format!("{store:?}").contains("hunter2"));
        assert!(store.get("EHR").is_some());
        assert!(store.get("PATH").is_none());
    }

    #[test]
    fn only_declared_names_load() {
        let mut sources = BTreeMap::new();
        sources.insert("bad name".to_string(), SecretSource::Env("HOME".into()));
        assert!(SecretStore::load(&sources).is_err());
        let mut sources = BTreeMap::new();
        sources.insert(
            "MISSING".to_string(),
            SecretSource::Env("MEDLAKE_TEST_SURELY_UNSET_9f3".into()),
        );
        let e = SecretStore::load(&sources).unwrap_err().to_string();
        assert!(e.contains("MEDLAKE_TEST_SURELY_UNSET_9f3"), "{e}");
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token(32), random_token(32));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
