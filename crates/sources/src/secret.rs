//! Secrets in OPTIONS: `${NAME}` references resolved from the environment when a connection is
//! made. The catalog stores the reference; the value lives only in memory, in a [`Secret`]
//! whose `Debug` and `Display` never show it.

use crate::error::{Error, Result};

/// A secret value. `Debug` prints `Secret(***)`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment variable a `${NAME}` reference names, if `value` is one.
pub fn reference(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${")?.strip_suffix('}')?;
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    valid.then_some(name)
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
                "secrets are never stored: write a reference to an environment variable, e.g. '${{{}}}'",
                option.to_ascii_uppercase()
            ),
        })
    }
}

/// Resolves an option value: `${NAME}` is read from the environment, anything else is
/// returned as written.
pub fn resolve(option: &str, value: &str) -> Result<Secret> {
    match reference(value) {
        Some(name) => std::env::var(name)
            .map(Secret)
            .map_err(|_| Error::MissingSecret {
                option: option.to_string(),
                variable: name.to_string(),
            }),
        None => Ok(Secret(value.to_string())),
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
    }

    #[test]
    fn a_missing_variable_is_named_and_debug_hides_values() {
        let err = resolve("password", "${MEDLAKE_TEST_SURELY_UNSET_VAR}").unwrap_err();
        assert!(
            err.to_string().contains("MEDLAKE_TEST_SURELY_UNSET_VAR"),
            "{err}"
        );
        let secret = resolve("user", "sa").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "sa");
    }
}
