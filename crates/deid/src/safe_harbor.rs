//! HIPAA Safe Harbor generalisations (45 CFR 164.514(b)(2)(i)): ages over 89, ZIP codes to
//! three digits, dates to their year. Keyless and pure.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int32Array};
use arrow::compute::kernels::temporal::{DatePart, date_part};
use arrow::datatypes::{DataType, Date32Type, Int64Type};
use arrow::temporal_conversions::date32_to_datetime;
use chrono::Datelike;
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::args::{arrays, check_arity, finish, is_text, strings, text_array};

/// The SQL names of the functions.
pub const SAFE_HARBOR_AGE: &str = "safe_harbor_age";
pub const SAFE_HARBOR_AGE_FROM: &str = "safe_harbor_age_from";
pub const SAFE_HARBOR_ZIP: &str = "safe_harbor_zip";
pub const SAFE_HARBOR_DATE: &str = "safe_harbor_date";

/// The oldest age Safe Harbor lets through as a number; older is "90+"
/// (164.514(b)(2)(i)(C): "all ages over 89 ... aggregated into a single category of age 90
/// or older").
pub const MAX_AGE: i64 = 89;

/// The three-digit ZIP prefixes whose area had 20,000 people or fewer in the 2000 Census,
/// which Safe Harbor publishes as `000` (164.514(b)(2)(i)(B)).
///
/// Source: HHS Office for Civil Rights, "Guidance Regarding Methods for De-identification of
/// Protected Health Information in Accordance with the HIPAA Privacy Rule" (26 November
/// 2012), the answer to "When can ZIP codes be included in de-identified information?"
/// (<https://www.hhs.gov/hipaa/for-professionals/privacy/special-topics/de-identification/index.html#zip>),
/// which derives them from the Census Bureau's 2000 ZIP Code Tabulation Areas (see also the
/// preamble of the 2002 rule, 67 FR 53182, 53233-53234). HHS notes that a covered entity
/// must not rely on this list once more current Census data is published: review it when
/// HHS updates its guidance.
pub const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// An age as Safe Harbor lets it be published: the number, or "90+" over [`MAX_AGE`].
/// `None` for a negative age (not an age: nothing to publish).
pub fn safe_harbor_age_text(age: i64) -> Option<String> {
    match age {
        ..0 => None,
        0..=MAX_AGE => Some(age.to_string()),
        _ => Some("90+".to_owned()),
    }
}

/// A ZIP code as Safe Harbor lets it be published: its first three digits, or `000` for the
/// [`RESTRICTED_ZIP3`] prefixes. The input (surrounding white space removed) must be a US
/// ZIP code: five digits, ZIP+4 (`12345-6789`) or nine digits; anything else is `None`
/// (a shorter code may have lost leading zeros, and a foreign postal code is not covered by
/// the three-digit rule).
pub fn safe_harbor_zip_text(zip: &str) -> Option<&str> {
    let zip = zip.trim();
    let bytes = zip.as_bytes();
    let digits = |b: &[u8]| b.iter().all(u8::is_ascii_digit);
    let valid = match bytes.len() {
        5 | 9 => digits(bytes),
        10 => digits(&bytes[..5]) && bytes[5] == b'-' && digits(&bytes[6..]),
        _ => false,
    };
    if !valid {
        return None;
    }
    // Valid input is ASCII, so byte 3 is a character boundary.
    let prefix = zip.get(..3)?;
    if RESTRICTED_ZIP3.contains(&prefix) {
        Some("000")
    } else {
        Some(prefix)
    }
}

/// Completed years from `birth` to `at` (a birthday on 29 February is reached on 1 March in
/// other years); `None` if `at` is before `birth`.
fn age_between(birth: chrono::NaiveDate, at: chrono::NaiveDate) -> Option<i64> {
    let before_birthday = (at.month(), at.day()) < (birth.month(), birth.day());
    let age = i64::from(at.year()) - i64::from(birth.year()) - i64::from(before_birthday);
    (age >= 0).then_some(age)
}

fn is_integer(data_type: &DataType) -> bool {
    data_type.is_integer() || data_type.is_null()
}

/// A DATE or TIMESTAMP argument (NULL counts as a DATE).
fn temporal(function: &str, data_type: &DataType) -> DfResult<DataType> {
    match data_type {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => Ok(data_type.clone()),
        DataType::Null => Ok(DataType::Date32),
        other => plan_err!("{function} takes a DATE or TIMESTAMP, not {other} (CAST text first)"),
    }
}

macro_rules! keyless_udf {
    ($ty:ident) => {
        #[derive(Debug, PartialEq, Eq, Hash)]
        pub(crate) struct $ty {
            signature: Signature,
        }

        impl $ty {
            pub(crate) fn new() -> Self {
                Self {
                    signature: Signature::user_defined(Volatility::Immutable),
                }
            }
        }
    };
}

keyless_udf!(SafeHarborAge);
keyless_udf!(SafeHarborAgeFrom);
keyless_udf!(SafeHarborZip);
keyless_udf!(SafeHarborDate);

impl ScalarUDFImpl for SafeHarborAge {
    fn name(&self) -> &str {
        SAFE_HARBOR_AGE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        check_arity(SAFE_HARBOR_AGE, "safe_harbor_age(age)", arg_types, 1)?;
        if !is_integer(&arg_types[0]) {
            return plan_err!(
                "{SAFE_HARBOR_AGE} takes an age in completed years (an integer), not {} \
                 (CAST it to an integer first)",
                arg_types[0]
            );
        }
        Ok(vec![DataType::Int64])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (arrays, scalar) = arrays(&args.args, args.number_rows)?;
        let [ages] = arrays.as_slice() else {
            return exec_err!("{SAFE_HARBOR_AGE} takes 1 argument");
        };
        let ages = ages.as_primitive_opt::<Int64Type>().ok_or_else(|| {
            datafusion::common::exec_datafusion_err!("{SAFE_HARBOR_AGE}: expected an integer")
        })?;
        let out = text_array(ages.iter().map(|a| a.and_then(safe_harbor_age_text)));
        finish(out, scalar)
    }
}

impl ScalarUDFImpl for SafeHarborAgeFrom {
    fn name(&self) -> &str {
        SAFE_HARBOR_AGE_FROM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let usage = "safe_harbor_age_from(birth_date, at_date)";
        check_arity(SAFE_HARBOR_AGE_FROM, usage, arg_types, 2)?;
        for t in arg_types {
            temporal(SAFE_HARBOR_AGE_FROM, t)?;
        }
        // Both as DATE, DataFusion's CAST (a timestamp's date in its own time zone).
        Ok(vec![DataType::Date32, DataType::Date32])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (arrays, scalar) = arrays(&args.args, args.number_rows)?;
        let [birth, at] = arrays.as_slice() else {
            return exec_err!("{SAFE_HARBOR_AGE_FROM} takes 2 arguments");
        };
        let (Some(birth), Some(at)) = (
            birth.as_primitive_opt::<Date32Type>(),
            at.as_primitive_opt::<Date32Type>(),
        ) else {
            return exec_err!("{SAFE_HARBOR_AGE_FROM}: expected two dates");
        };
        let date = |d: i32| date32_to_datetime(d).map(|t| t.date());
        let out = text_array(birth.iter().zip(at.iter()).map(|(b, a)| {
            let age = age_between(date(b?)?, date(a?)?)?;
            safe_harbor_age_text(age)
        }));
        finish(out, scalar)
    }
}

impl ScalarUDFImpl for SafeHarborZip {
    fn name(&self) -> &str {
        SAFE_HARBOR_ZIP
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        check_arity(SAFE_HARBOR_ZIP, "safe_harbor_zip(zip)", arg_types, 1)?;
        match &arg_types[0] {
            t if is_text(t) => Ok(vec![t.clone()]),
            DataType::Null => Ok(vec![DataType::Utf8]),
            DataType::Dictionary(_, v) if is_text(v) => Ok(vec![DataType::Utf8]),
            t if t.is_integer() => plan_err!(
                "{SAFE_HARBOR_ZIP} takes a ZIP code as text, not {t}: a ZIP code stored as a \
                 number has lost its leading zeros (lpad(CAST(zip AS VARCHAR), 5, '0') \
                 restores a five-digit one)"
            ),
            t => plan_err!("{SAFE_HARBOR_ZIP} takes a ZIP code as text, not {t}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (arrays, scalar) = arrays(&args.args, args.number_rows)?;
        let [zips] = arrays.as_slice() else {
            return exec_err!("{SAFE_HARBOR_ZIP} takes 1 argument");
        };
        let zips = strings(SAFE_HARBOR_ZIP, zips)?;
        finish(
            text_array(zips.map(|z| z.and_then(safe_harbor_zip_text))),
            scalar,
        )
    }
}

impl ScalarUDFImpl for SafeHarborDate {
    fn name(&self) -> &str {
        SAFE_HARBOR_DATE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        check_arity(
            SAFE_HARBOR_DATE,
            "safe_harbor_date(date_or_timestamp)",
            arg_types,
            1,
        )?;
        Ok(vec![temporal(SAFE_HARBOR_DATE, &arg_types[0])?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (arrays, scalar) = arrays(&args.args, args.number_rows)?;
        let [dates] = arrays.as_slice() else {
            return exec_err!("{SAFE_HARBOR_DATE} takes 1 argument");
        };
        // Arrow's year of a date or timestamp (a timestamp with a time zone: its local year).
        let years: ArrayRef = match dates.data_type() {
            DataType::Null => Arc::new(Int32Array::new_null(dates.len())),
            _ => date_part(dates.as_ref(), DatePart::Year)?,
        };
        finish(years, scalar)
    }
}
