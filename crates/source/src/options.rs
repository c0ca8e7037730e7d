//! A typed reader of a table's OPTIONS: every connector's numbers are bounded (untrusted
//! numbers never reach a timer or an allocation unchecked) and every refusal names the
//! option.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::{Error, Result, secret};

/// An option refused, and why.
pub fn invalid(option: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// The OPTIONS of one table, as written.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a>(pub &'a BTreeMap<String, String>);

impl<'a> Options<'a> {
    /// The option's text, if given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// A number within `range` (`default` when the option is absent), refused as
    /// "'v' is not {what} from {min} to {max}".
    pub fn number<T>(
        &self,
        name: &str,
        default: T,
        range: RangeInclusive<T>,
        what: &str,
    ) -> Result<T>
    where
        T: FromStr + PartialOrd + Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<T>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    invalid(
                        name,
                        format!(
                            "'{v}' is not {what} from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    /// A number within `range`, or `None` when the option is absent.
    pub fn optional_number<T>(
        &self,
        name: &str,
        range: RangeInclusive<T>,
        what: &str,
    ) -> Result<Option<T>>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.number(name, *range.start(), range, what).map(Some),
        }
    }

    /// `true`/`yes`/`on` or `false`/`no`/`off` (any case); `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "yes" | "on") => Ok(true),
            Some("false" | "no" | "off") => Ok(false),
            Some(other) => Err(invalid(name, format!("'{other}' is not true or false"))),
        }
    }

    /// A credential option: absent, or a `${NAME}` reference (secrets are never stored).
    pub fn secret(&self, name: &str) -> Result<Option<String>> {
        self.get(name)
            .map(|v| secret::require_reference(name, v).map(|()| v.to_string()))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_bounded_and_refusals_name_the_option() {
        let map: BTreeMap<String, String> = [
            ("page_size".to_string(), " 50 ".to_string()),
            ("retries".to_string(), "11".to_string()),
            ("flag".to_string(), "Yes".to_string()),
        ]
        .into();
        let options = Options(&map);
        assert_eq!(
            options
                .number("page_size", 100, 1..=1000, "a size")
                .unwrap(),
            50
        );
        assert_eq!(
            options
                .number("absent", 100u64, 1..=1000, "a size")
                .unwrap(),
            100
        );
        let e = options
            .number("retries", 3u32, 0..=10, "a number")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "option 'retries': '11' is not a number from 0 to 10"
        );
        assert_eq!(
            options
                .optional_number::<u64>("absent", 1..=5, "x")
                .unwrap(),
            None
        );
        assert!(options.flag("flag", false).unwrap());
        assert!(options.flag("page_size", false).is_err());
    }
}
