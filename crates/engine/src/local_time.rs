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
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
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

    /// Whether the zone's clock keeps one offset from UTC from `from` to `to` (seconds), sampled
    /// every quarter of an hour: a change of offset lasts months, so a sample after it sees
    /// it.
    fn steady(&self, from: i64, to: i64) -> bool {
        if self.tz.is_none() {
            return true;
        }
        let Some(first) = self.offset(from) else {
            return false;
        };
        let mut at = from;
        while at < to {
            at = at.saturating_add(900).min(to);
            if self.offset(at) != Some(first) {
                return false;
            }
        }
        true
    }

    /// The instants (seconds, half-open) whose local date is `days`, when they are exactly
    /// that one range: the clock keeps one offset for two days around the day, so a local
    /// date neither repeats nor jumps there.
    fn date_preimage(&self, days: i32) -> Option<(i64, i64)> {
        let start = self.day_start(days)?;
        let end = self.day_start(days.checked_add(1)?)?;
        let margin = 2 * SECONDS_PER_DAY;
        self.steady(start.checked_sub(margin)?, end.checked_add(margin)?)
            .then_some((start, end))
    }

    /// The instants (`per_second` units, half-open) whose local hour began at `start`, when
    /// `start` begins a local hour and the clock keeps one offset for two days around it.
    fn hour_preimage(&self, start: i64, per_second: i64) -> Option<(i64, i64)> {
        let seconds = start.div_euclid(per_second);
        let margin = 2 * SECONDS_PER_DAY;
        if self.hour_start(start, per_second)? != start
            || !self.steady(seconds.checked_sub(margin)?, seconds.checked_add(margin)?)
        {
            return None;
        }
        Some((start, start.checked_add(3_600i64.checked_mul(per_second)?)?))
    }
}

/// A timestamp scalar of `data_type` holding `value` (its units).
fn timestamp_scalar(data_type: &DataType, value: i64) -> Option<ScalarValue> {
    let DataType::Timestamp(unit, zone) = data_type else {
        return None;
    };
    let zone = zone.clone();
    Some(match unit {
        TimeUnit::Second => ScalarValue::TimestampSecond(Some(value), zone),
        TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(value), zone),
        TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(value), zone),
        TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(value), zone),
    })
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

    /// `local_date(ts) = d` is `ts >= local_day_start(d) AND ts < local_day_start(d + 1)`, and
    /// `local_hour(ts) = h` is `ts >= h AND ts < h + 1 hour` (so with `<`, `>`, `IN`): a
    /// predicate on the bucket becomes a range of the instant, which Delta's file statistics
    /// and Parquet's row-group statistics can skip by. Not near a change of the clock (two
    /// days either side), where a local date or hour may repeat: there the predicate stays.
    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> DfResult<PreimageResult> {
        let (Some(Expr::Literal(value, _)), [arg]) = (Some(lit_expr), args) else {
            return Ok(PreimageResult::None);
        };
        let Ok(arg_type) = info.get_data_type(arg) else {
            return Ok(PreimageResult::None);
        };
        let DataType::Timestamp(unit, _) = &arg_type else {
            return Ok(PreimageResult::None);
        };
        let scale = per_second(*unit);
        let range = match (self.kind, value) {
            (Kind::Date, ScalarValue::Date32(Some(days))) => {
                self.zone.date_preimage(*days).and_then(|(start, end)| {
                    Some((start.checked_mul(scale)?, end.checked_mul(scale)?))
                })
            }
            (Kind::Hour, value) if value.data_type() == arg_type => {
                let start = match value {
                    ScalarValue::TimestampSecond(Some(v), _)
                    | ScalarValue::TimestampMillisecond(Some(v), _)
                    | ScalarValue::TimestampMicrosecond(Some(v), _)
                    | ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
                    _ => None,
                };
                start.and_then(|start| self.zone.hour_preimage(start, scale))
            }
            _ => None,
        };
        let Some((lower, upper)) = range else {
            return Ok(PreimageResult::None);
        };
        let (Some(lower), Some(upper)) = (
            timestamp_scalar(&arg_type, lower),
            timestamp_scalar(&arg_type, upper),
        ) else {
            return Ok(PreimageResult::None);
        };
        Ok(PreimageResult::Range {
            expr: arg.clone(),
            interval: Box::new(Interval::try_new(lower, upper)?),
        })
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

    #[test]
    fn preimages_are_exact_ranges_and_none_near_a_change_of_the_clock() {
        let day = |text: &str| {
            (NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        };
        let london = ClinicalZone::parse("Europe/London").unwrap();
        let utc = ClinicalZone::utc();
        for zone in [&london, &utc] {
            let d = day("2026-07-01");
            let (start, end) = zone.date_preimage(d).unwrap();
            // Every instant inside is of the day, the instants just outside are not.
            for t in [start, start + 1, end - 1, (start + end) / 2] {
                assert_eq!(zone.date_of(t, 1), Some(d));
            }
            assert_eq!(zone.date_of(start - 1, 1), Some(d - 1));
            assert_eq!(zone.date_of(end, 1), Some(d + 1));
            // In microseconds too.
            let (hour, per) = (seconds("2026-07-01 09:00:00") * 1_000_000, 1_000_000);
            assert_eq!(
                zone.hour_preimage(hour, per),
                Some((hour, hour + 3_600_000_000))
            );
            // Not the start of an hour: no range (`local_hour(ts) < 09:30` is not `ts < 09:30`).
            assert_eq!(zone.hour_preimage(hour + 1_800_000_000, per), None);
        }
        // The clocks go back on 25 October 2026 in London: no range near it.
        assert_eq!(london.date_preimage(day("2026-10-25")), None);
        assert_eq!(london.date_preimage(day("2026-10-24")), None);
        assert!(utc.date_preimage(day("2026-10-25")).is_some());
        let back = seconds("2026-10-25 01:00:00");
        assert_eq!(london.hour_preimage(back, 1), None);
        // Kolkata's hours begin at half past UTC hours.
        let kolkata = ClinicalZone::parse("Asia/Kolkata").unwrap();
        let half = seconds("2026-06-30 23:30:00");
        assert_eq!(kolkata.hour_preimage(half, 1), Some((half, half + 3_600)));
        assert_eq!(kolkata.hour_preimage(half + 1_800, 1), None);
    }
}
