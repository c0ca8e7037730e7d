//! The hospital's clock: SQL functions that place an instant in the hospital's time zone
//! (`[clinical] time_zone` of the server's config, else `MEDLAKE_TIME_ZONE`, else UTC), for
//! the views that report by hour or by day.
//!
//! - `local_date(ts)`: the calendar date of the instant `ts` in the hospital's zone (a DATE);
//! - `local_hour(ts)`: the instant the hospital's local hour holding `ts` began (the type of
//!   `ts`): one bucket per local hour, so a local day has 23 or 25 of them on the days the
//!   clocks change;
//! - `local_day_start(date)`: the instant the local day `date` began (a TIMESTAMP):
//!   `local_day_start(d + 1) - local_day_start(d)` is that day's length, 23, 24 or 25 hours;
//! - `clinical_time_zone()`: the zone's name.
//!
//! The warehouse stores instants as timestamps without a zone, in UTC (the sources' and the
//! clock's convention: `now()` is UTC as long as `datafusion.execution.time_zone` is unset).
//! That is why the zone is not DataFusion's session setting: setting it would give `now()` a
//! zone, and comparing a zone-less column with it would read the stored UTC values as London
//! wall-clock times, an hour off in summer. These functions take and return UTC instants
//! and only their bucketing is local. They are immutable for a given engine (views that call
//! them refresh incrementally); every process that refreshes a warehouse's views must use
//! the same zone, and a view keeps the rows computed under an earlier zone until a
//! `REFRESH MATERIALIZED VIEW ... FULL`.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{Array, ArrayRef, Date32Array, Int64Array};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{NaiveDate, Offset, TimeZone};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::{Error, Result};

/// The environment variable naming the hospital's time zone for processes without the
/// server's config (`medlake sql`, `apply`, `refresh`).
pub const TIME_ZONE_VAR: &str = "MEDLAKE_TIME_ZONE";

const SECONDS_PER_DAY: i64 = 86_400;

/// The hospital's time zone (an IANA name such as `Europe/London`, or `UTC`).
#[derive(Clone, Debug)]
pub struct ClinicalZone {
    name: String,
    /// `None`: UTC.
    tz: Option<Tz>,
}

impl Default for ClinicalZone {
    fn default() -> Self {
        Self::utc()
    }
}

impl ClinicalZone {
    /// UTC: today's behaviour, and the default.
    pub fn utc() -> Self {
        Self {
            name: "UTC".into(),
            tz: None,
        }
    }

    /// The zone named `name`: an IANA name (`Europe/London`) or `UTC`. Fixed offsets
    /// (`+01:00`) are refused: a hospital's clock changes with daylight saving time.
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim();
        let invalid = |reason: &str| Error::InvalidValue {
            what: "the clinical time zone".into(),
            reason: format!("'{name}': {reason}"),
        };
        if name.starts_with(['+', '-']) {
            return Err(invalid(
                "give the zone's IANA name (e.g. Europe/London), not a fixed offset",
            ));
        }
        let tz = Tz::from_str(name).map_err(|_| invalid("not an IANA time zone name"))?;
        Ok(Self {
            name: name.to_string(),
            tz: Some(tz),
        })
    }

    /// `MEDLAKE_TIME_ZONE`, when set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(TIME_ZONE_VAR) {
            Ok(name) if !name.trim().is_empty() => Self::parse(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Seconds the zone's clock is ahead of UTC at the instant `utc_seconds`.
    fn offset(&self, utc_seconds: i64) -> Option<i64> {
        let instant = chrono::DateTime::from_timestamp(utc_seconds, 0)?;
        let Some(tz) = &self.tz else {
            return Some(0);
        };
        let offset = tz.offset_from_utc_datetime(&instant.naive_utc());
        Some(i64::from(offset.fix().local_minus_utc()))
    }

    /// The local date (days since 1970-01-01) of the instant `value` (`per_second` units a
    /// second).
    fn date_of(&self, value: i64, per_second: i64) -> Option<i32> {
        let seconds = value.div_euclid(per_second);
        let local = seconds.checked_add(self.offset(seconds)?)?;
        i32::try_from(local.div_euclid(SECONDS_PER_DAY)).ok()
    }

    /// The instant (same units as `value`) the local hour holding `value` began.
    fn hour_start(&self, value: i64, per_second: i64) -> Option<i64> {
        let offset = self
            .offset(value.div_euclid(per_second))?
            .checked_mul(per_second)?;
        let local = value.checked_add(offset)?;
        let hour = 3_600i64.checked_mul(per_second)?;
        local
            .checked_sub(local.rem_euclid(hour))?
            .checked_sub(offset)
    }

    /// The instant (seconds) the local day `days` (since 1970-01-01) began: its midnight, or
    /// the first local time after it when the clocks skip midnight.
    fn day_start(&self, days: i32) -> Option<i64> {
        let date = NaiveDate::from_ymd_opt(1970, 1, 1)?
            .checked_add_signed(chrono::TimeDelta::try_days(i64::from(days))?)?;
        let midnight = date.and_hms_opt(0, 0, 0)?;
        let Some(tz) = &self.tz else {
            return Some(midnight.and_utc().timestamp());
        };
        // A gap is at most a few hours: the first local minute that exists.
        for minutes in 0..=24 * 60 {
            let local = midnight + chrono::TimeDelta::try_minutes(minutes)?;
            if let Some(start) = tz.from_local_datetime(&local).earliest() {
                return Some(start.timestamp());
            }
        }
        None
    }
}

/// The functions, for one engine's zone.
pub(crate) fn udfs(zone: &ClinicalZone) -> Vec<ScalarUDF> {
    let zone = Arc::new(zone.clone());
    [Kind::Date, Kind::Hour, Kind::DayStart, Kind::ZoneName]
        .into_iter()
        .map(|kind| {
            ScalarUDF::new_from_impl(LocalTime {
                kind,
                zone: zone.clone(),
                signature: if kind == Kind::ZoneName {
                    Signature::nullary(Volatility::Immutable)
                } else {
                    Signature::user_defined(Volatility::Immutable)
                },
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Date,
    Hour,
    DayStart,
    ZoneName,
}

#[derive(Debug)]
struct LocalTime {
    kind: Kind,
    zone: Arc<ClinicalZone>,
    signature: Signature,
}

impl PartialEq for LocalTime {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.zone.name == other.zone.name
    }
}

impl Eq for LocalTime {}

impl std::hash::Hash for LocalTime {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.zone.name.hash(state);
    }
}

/// Units a second of a timestamp's unit.
fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

impl ScalarUDFImpl for LocalTime {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Date => "local_date",
            Kind::Hour => "local_hour",
            Kind::DayStart => "local_day_start",
            Kind::ZoneName => "clinical_time_zone",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let [arg] = arg_types else {
            return plan_err!("{}() takes one argument", self.name());
        };
        let naive = DataType::Timestamp(TimeUnit::Nanosecond, None);
        Ok(vec![match (self.kind, arg) {
            (Kind::DayStart, DataType::Date32) => DataType::Date32,
            (Kind::DayStart, DataType::Date64 | DataType::Utf8 | DataType::Utf8View)
            | (Kind::DayStart, DataType::LargeUtf8 | DataType::Null) => DataType::Date32,
            (Kind::DayStart, other) => {
                return plan_err!("local_day_start() takes a date, not {other}");
            }
            (_, DataType::Timestamp(..)) => arg.clone(),
            (_, DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::Utf8View)
            | (_, DataType::LargeUtf8 | DataType::Null) => naive,
            (_, other) => return plan_err!("{}() takes a timestamp, not {other}", self.name()),
        }])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::Date => DataType::Date32,
            Kind::Hour => match arg_types.first() {
                Some(t @ DataType::Timestamp(..)) => t.clone(),
                _ => DataType::Timestamp(TimeUnit::Nanosecond, None),
            },
            Kind::DayStart => DataType::Timestamp(TimeUnit::Nanosecond, None),
            Kind::ZoneName => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.kind == Kind::ZoneName {
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                self.zone.name.clone(),
            ))));
        }
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let Some(input) = args.args.first() else {
            return exec_err!("{}() takes one argument", self.name());
        };
        let input = input.to_array(args.number_rows.max(1))?;
        let output = self.compute(&input)?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &output, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(output))
        }
    }
}

impl LocalTime {
    fn compute(&self, input: &ArrayRef) -> DfResult<ArrayRef> {
        let zone = &self.zone;
        match (self.kind, input.data_type()) {
            (Kind::DayStart, DataType::Date32) => {
                let days = arrow::compute::cast(input, &DataType::Int32)?;
                let days = arrow::array::as_primitive_array::<arrow::datatypes::Int32Type>(&days);
                let starts: Int64Array = days
                    .iter()
                    .map(|d| {
                        d.and_then(|d| zone.day_start(d))
                            .and_then(|s| s.checked_mul(1_000_000_000))
                    })
                    .collect();
                Ok(arrow::compute::cast(
                    &(Arc::new(starts) as ArrayRef),
                    &DataType::Timestamp(TimeUnit::Nanosecond, None),
                )?)
            }
            (Kind::Date | Kind::Hour, DataType::Timestamp(unit, _)) => {
                let scale = per_second(*unit);
                let values = arrow::compute::cast(input, &DataType::Int64)?;
                let values =
                    arrow::array::as_primitive_array::<arrow::datatypes::Int64Type>(&values);
                if self.kind == Kind::Date {
                    let dates: Date32Array = values
                        .iter()
                        .map(|v| v.and_then(|v| zone.date_of(v, scale)))
                        .collect();
                    return Ok(Arc::new(dates));
                }
                let hours: Int64Array = values
                    .iter()
                    .map(|v| v.and_then(|v| zone.hour_start(v, scale)))
                    .collect();
                Ok(arrow::compute::cast(
                    &(Arc::new(hours) as ArrayRef),
                    input.data_type(),
                )?)
            }
            (_, other) => exec_err!("{}() cannot take {other}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(text: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp()
    }

    #[test]
    fn london_days_are_23_and_25_hours_on_the_days_the_clocks_change() {
        let london = ClinicalZone::parse("Europe/London").unwrap();
        let day = |text: &str| {
            (NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        };
        let length = |d: &str| {
            (london.day_start(day(d) + 1).unwrap() - london.day_start(day(d)).unwrap()) / 3600
        };
        assert_eq!(length("2026-03-29"), 23);
        assert_eq!(length("2026-10-25"), 25);
        assert_eq!(length("2026-07-01"), 24);
        // Summer: local midnight is 23:00 UTC the day before.
        assert_eq!(
            london.day_start(day("2026-07-01")),
            Some(seconds("2026-06-30 23:00:00"))
        );
        // 23:30 UTC on 30 June is 00:30 on 1 July in London, in its 00:00 hour.
        let late = seconds("2026-06-30 23:30:00");
        assert_eq!(london.date_of(late, 1), Some(day("2026-07-01")));
        assert_eq!(
            london.hour_start(late, 1),
            Some(seconds("2026-06-30 23:00:00"))
        );
        let utc = ClinicalZone::utc();
        assert_eq!(utc.date_of(late, 1), Some(day("2026-06-30")));
        // A half-hour zone buckets by its own hours.
        let kolkata = ClinicalZone::parse("Asia/Kolkata").unwrap();
        assert_eq!(
            kolkata.hour_start(seconds("2026-06-30 23:40:00") * 1000, 1000),
            Some(seconds("2026-06-30 23:30:00") * 1000)
        );
        assert!(ClinicalZone::parse("Europe/Londinium").is_err());
        assert!(ClinicalZone::parse("+01:00").is_err());
        assert_eq!(utc.name(), "UTC");
    }
}
