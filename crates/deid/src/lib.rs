//! `medlake-deid`: de-identification as DataFusion scalar functions (issue 23, item 3).
//!
//! | SQL | returns |
//! |---|---|
//! | `pseudonym(value, 'KEY_NAME')` | text: a stable keyed pseudonym of an identifier |
//! | `shift_date(date_or_timestamp, patient_key, 'KEY_NAME')` | the same type, moved by the patient's secret number of days |
//! | `safe_harbor_age(age)` | text: the age, or `'90+'` over 89 |
//! | `safe_harbor_age_from(birth_date, at_date)` | text: the completed years between, as `safe_harbor_age` |
//! | `safe_harbor_zip(zip)` | text: the first three digits, `'000'` for the restricted areas |
//! | `safe_harbor_date(date_or_timestamp)` | INT: the year |
//!
//! **Keys.** `pseudonym` and `shift_date` are HMAC-SHA-256 keyed by a secret the engine's
//! secret store holds, named by a string literal (never a column or parameter, so the
//! engine sees before running a statement which secrets it uses: [`referenced_keys`]).
//! The bytes come from the [`Keys`] resolver the engine gives [`udfs`], once per batch;
//! they are never kept in a function, a plan or an error. Same value, same key: same
//! output on every run and every server.
//!
//! **Identifiers** (the value of `pseudonym`, the patient of `shift_date`) are text or
//! integers; the canonical text is the value as text (an integer in decimal, so `123` and
//! `'123'` agree) with surrounding white space removed (`str::trim`; SQL Server `CHAR(n)`
//! pads). Nothing else changes: case, inner spaces and leading zeros count. Blank text
//! gives NULL.
//!
//! **pseudonym** = the first 32 lowercase hex characters (128 bits) of
//! HMAC-SHA-256(key, canonical text): see [`pseudonym_of`] and [`PSEUDONYM_HEX_CHARS`] for
//! the collision odds.
//!
//! **shift_date** moves every date of one patient by the same number of days, between −365
//! and −1 ([`SHIFT_MAX_DAYS`], [`shift_days_of`]), derived from an HMAC under a domain of
//! its own, so intervals between a patient's events are kept and the shift cannot be read
//! off the patient's pseudonym. A NULL or blank patient gives NULL, never the real date.
//!
//! **Safe Harbor** (45 CFR 164.514(b)(2)): [`RESTRICTED_ZIP3`] holds the 17 prefixes
//! published by HHS, with the citation.
//!
//! Every function propagates NULL, returns a scalar for scalar arguments, refuses wrong
//! types at planning with a message that names the function, and reports no patient value
//! and no key material in any error.
//!
//! Must not: know sessions, principals or where secrets are stored (the engine registers
//! the functions, checks USE SECRET and provides [`Keys`]); depend on any medlake crate.

mod args;
mod keys;
mod plan;
mod pseudonym;
mod safe_harbor;
mod shift;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;

pub use keys::{Keys, MIN_KEY_BYTES};
pub use plan::{key_argument, referenced_keys, referenced_keys_in_expr};
pub use pseudonym::{PSEUDONYM, PSEUDONYM_HEX_CHARS, pseudonym_of};
pub use safe_harbor::{
    MAX_AGE, RESTRICTED_ZIP3, SAFE_HARBOR_AGE, SAFE_HARBOR_AGE_FROM, SAFE_HARBOR_DATE,
    SAFE_HARBOR_ZIP, safe_harbor_age_text, safe_harbor_zip_text,
};
pub use shift::{SHIFT_DATE, SHIFT_MAX_DAYS, shift_days_of};

/// Every de-identification function, keyed through `keys`: register each with
/// `SessionContext::register_udf` (or `SessionStateBuilder::with_scalar_functions`).
pub fn udfs(keys: Arc<dyn Keys>) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(pseudonym::Pseudonym::new(Arc::clone(&keys))),
        ScalarUDF::new_from_impl(shift::ShiftDate::new(keys)),
        ScalarUDF::new_from_impl(safe_harbor::SafeHarborAge::new()),
        ScalarUDF::new_from_impl(safe_harbor::SafeHarborAgeFrom::new()),
        ScalarUDF::new_from_impl(safe_harbor::SafeHarborZip::new()),
        ScalarUDF::new_from_impl(safe_harbor::SafeHarborDate::new()),
    ]
}
