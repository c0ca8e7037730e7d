//! `shift_date(date_or_timestamp, patient_key, 'KEY_NAME')`: every date of one patient moved
//! by the same secret number of days.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveBuilder};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::args::{
    arrays, canonical, check_arity, finish, identifier_type, is_text, key_name,
    require_key_literal, strings,
};
use crate::keys::{Key, Keys};

/// The SQL name of the function.
pub const SHIFT_DATE: &str = "shift_date";

/// The shift is between `-SHIFT_MAX_DAYS` and `-1` days: always into the past (a shifted
/// date is never later than the real one, so recent events never land in the future), never
/// zero (no patient keeps their real dates), 365 equally likely values.
pub const SHIFT_MAX_DAYS: i64 = 365;

/// What `shift_date` MACs before the patient's canonical text, so that its output is
/// unrelated to the patient's `pseudonym` under the same key.
const DOMAIN: &[u8] = b"medlake.shift_date.v1\0";

const USAGE: &str = "shift_date(date_or_timestamp, patient_key, 'KEY_NAME')";

/// The shift in days for a patient, exactly as the SQL function computes it: with
/// `mac` = HMAC-SHA-256(key, `"medlake.shift_date.v1\0"` + canonical text of `patient`),
/// `-(1 + u64_big_endian(mac[0..8]) mod 365)`. `None` for a blank patient key, and for a key
/// shorter than [`crate::MIN_KEY_BYTES`].
pub fn shift_days_of(key: &[u8], patient: &str) -> Option<i64> {
    let key = Key::new(key, SHIFT_DATE, "").ok()?;
    canonical(patient).map(|text| shift_days(&key, text))
}

pub(crate) fn shift_days(key: &Key, canonical_patient: &str) -> i64 {
    let mac = key.mac(DOMAIN, canonical_patient);
    let mut first = [0u8; 8];
    first.copy_from_slice(&mac[..8]);
    // The modulo bias of 2^64 mod 365 is below 10^-16.
    let r = u64::from_be_bytes(first) % SHIFT_MAX_DAYS.unsigned_abs();
    // r < 365, so the cast is exact.
    -1 - r as i64
}

/// The type `shift_date` accepts as its first argument (and returns).
fn temporal(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => Some(data_type.clone()),
        DataType::Null => Some(DataType::Date32),
        _ => None,
    }
}

/// The `shift_date` function; see the crate documentation.
pub(crate) struct ShiftDate {
    signature: Signature,
    keys: Arc<dyn Keys>,
}

impl ShiftDate {
    pub(crate) fn new(keys: Arc<dyn Keys>) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            keys,
        }
    }
}

impl fmt::Debug for ShiftDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShiftDate").finish_non_exhaustive()
    }
}

impl PartialEq for ShiftDate {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature && Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for ShiftDate {}

impl Hash for ShiftDate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

impl ScalarUDFImpl for ShiftDate {
    fn name(&self) -> &str {
        SHIFT_DATE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        check_arity(SHIFT_DATE, USAGE, arg_types, 3)?;
        let Some(when) = temporal(&arg_types[0]) else {
            return plan_err!(
                "{SHIFT_DATE}: argument 1 must be a DATE or TIMESTAMP, not {} (CAST text first)",
                arg_types[0]
            );
        };
        let Some(patient) = identifier_type(&arg_types[1]) else {
            return plan_err!(
                "{SHIFT_DATE}: the patient key must be text or an integer, not {}",
                arg_types[1]
            );
        };
        let name = &arg_types[2];
        if !(is_text(name) || name.is_null()) {
            return plan_err!(
                "{SHIFT_DATE}: argument 3 must be a string literal naming a secret, not {name}"
            );
        }
        Ok(vec![when, patient, name.clone()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first().and_then(temporal) {
            Some(t) => Ok(t),
            None => plan_err!("{SHIFT_DATE} takes a DATE or TIMESTAMP: {USAGE}"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        require_key_literal(SHIFT_DATE, args.scalar_arguments, 2)?;
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Arc::new(Field::new(
            SHIFT_DATE,
            self.return_type(&types)?,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [when, patient, name] = args.args.as_slice() else {
            return exec_err!("{SHIFT_DATE} takes 3 arguments: {USAGE}");
        };
        let name = key_name(SHIFT_DATE, name)?;
        let (arrays, scalar) = arrays(&[when.clone(), patient.clone()], args.number_rows)?;
        let key = Key::resolve(self.keys.as_ref(), SHIFT_DATE, name)?;
        // A patient without a key gets NULL, never their real date.
        let days: Vec<Option<i64>> = strings(SHIFT_DATE, &arrays[1])?
            .map(|p| p.and_then(canonical).map(|t| shift_days(&key, t)))
            .collect();
        finish(shift_array(&arrays[0], &days)?, scalar)
    }
}

/// `array` with row `i` moved by `days[i]` days (NULL where either is NULL).
fn shift_array(array: &ArrayRef, days: &[Option<i64>]) -> DfResult<ArrayRef> {
    const DAY_S: i64 = 86_400;
    match array.data_type() {
        DataType::Date32 => shift::<Date32Type>(array, days, 1),
        DataType::Date64 => shift::<Date64Type>(array, days, DAY_S * 1_000),
        DataType::Timestamp(TimeUnit::Second, _) => {
            shift::<TimestampSecondType>(array, days, DAY_S)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            shift::<TimestampMillisecondType>(array, days, DAY_S * 1_000)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            shift::<TimestampMicrosecondType>(array, days, DAY_S * 1_000_000)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            shift::<TimestampNanosecondType>(array, days, DAY_S * 1_000_000_000)
        }
        DataType::Null => Ok(Arc::new(arrow::array::Date32Array::new_null(array.len()))),
        other => exec_err!("{SHIFT_DATE}: cannot shift a {other}"),
    }
}

/// Timestamps move by whole 86,400-second days of absolute time (so a local wall-clock time
/// may move by an hour across a daylight-saving change); the time zone is kept.
fn shift<T>(array: &ArrayRef, days: &[Option<i64>], per_day: i64) -> DfResult<ArrayRef>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64> + TryFrom<i64>,
{
    let values = array.as_primitive::<T>();
    let mut out = PrimitiveBuilder::<T>::with_capacity(values.len());
    for (value, days) in values.iter().zip(days) {
        let (Some(value), Some(days)) = (value, days) else {
            out.append_null();
            continue;
        };
        let shifted = days
            .checked_mul(per_day)
            .and_then(|delta| value.into().checked_add(delta))
            .and_then(|v| T::Native::try_from(v).ok());
        match shifted {
            Some(v) => out.append_value(v),
            // No value in the message: a date is patient data.
            None => return exec_err!("{SHIFT_DATE}: a value is out of range once shifted"),
        }
    }
    // The input's own type: a timestamp keeps its time zone.
    Ok(Arc::new(
        out.finish().with_data_type(array.data_type().clone()),
    ))
}
