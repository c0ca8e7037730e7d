//! Secrets in OPTIONS: `${NAME}` references resolved from the server's secret store
//! ([`Policy::secrets`], the config's `[secrets]`) when a connection is made, never from the
//! process environment (only [`Policy::permissive`], the local CLI's, falls back to it). The
//! catalog stores the reference; the value lives only in memory, in a [`Secret`] whose `Debug`
//! never shows it.

use std::collections::BTreeMap;

pub use medlake_auth::Secret;

use crate::error::{Error, Result};
use crate::policy::Policy;

/// The secret a `${NAME}` reference names, if `value` is one.
pub fn reference(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${")?.strip_suffix('}')?;
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    valid.then_some(name)
}

/// The secrets `options` reference (sorted, once each): what the engine checks the principal
/// may use before a definition is created or used.
pub fn secret_references(options: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = options
        .values()
        .filter_map(|v| reference(v))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Checks that the secret option `option` is written as a `${NAME}` reference, so that no
/// secret value is ever stored.
pub fn require_reference(option: &str, value: &str) -> Result<()> {
    if reference(value).is_some() {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: option.to_string(),
            reason: format!(
                "secrets are never stored: write a reference to a secret of the server's [secrets], e.g. '${{{}}}'",
                option.to_ascii_uppercase()
            ),
        })
    }
}

/// Checks that every secret `options` reference is one the policy holds (at CREATE and when a
/// table is opened), without reading a value into a message.
pub fn check_references(options: &BTreeMap<String, String>, policy: &Policy) -> Result<()> {
    for (option, value) in options {
        if let Some(name) = reference(value)
            && policy.secret(name).is_none()
        {
            return Err(unknown(option, name));
        }
    }
    Ok(())
}

fn unknown(option: &str, name: &str) -> Error {
    Error::UnknownSecret {
        option: option.to_string(),
        name: name.to_string(),
    }
}

/// Resolves an option value: `${NAME}` from the policy's secrets, anything else as written.
pub fn resolve(option: &str, value: &str, policy: &Policy) -> Result<Secret> {
    match reference(value) {
        Some(name) => policy.secret(name).ok_or_else(|| unknown(option, name)),
        None => Ok(Secret::new(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised_strictly() {
        assert_eq!(reference("${EHR_PASSWORD}"), Some("EHR_PASSWORD"));
        assert_eq!(reference("${}"), None);
        assert_eq!(reference("${1X}"), None);
        assert_eq!(reference("${A B}"), None);
        assert_eq!(reference("hunter2"), None);
        assert!(require_reference("password", "hunter2").is_err());
        let options: BTreeMap<String, String> = [
            ("user", "${EHR_USER}"),
            ("password", "${EHR_PASSWORD}"),
            ("again", "${EHR_USER}"),
            ("database", "EHR"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(secret_references(&options), ["EHR_PASSWORD", "EHR_USER"]);
    }

    #[test]
    fn only_the_store_resolves_and_messages_name_the_secret_only() {
        // The environment always has PATH: the old resolver read any variable.
        let strict = Policy::default().with_secret("EHR_PASSWORD", "hunter2");
        let err = resolve("password", "${PATH}", &strict).unwrap_err();
        assert_eq!(err.sqlstate(), "42501");
        assert!(err.to_string().contains("PATH"), "{err}");
        assert!(!err.to_string().contains("/usr"), "{err}");
        assert_eq!(
            resolve("password", "${EHR_PASSWORD}", &strict)
                .unwrap()
                .expose(),
            "hunter2"
        );
        let secret = resolve("user", "sa", &strict).unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "sa");
        // The local CLI's permissive policy falls back to the environment.
        assert!(resolve("password", "${PATH}", &Policy::permissive()).is_ok());
        let err = resolve(
            "password",
            "${MEDLAKE_TEST_SURELY_UNSET_VAR}",
            &Policy::permissive(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("MEDLAKE_TEST_SURELY_UNSET_VAR"),
            "{err}"
        );
    }
}
