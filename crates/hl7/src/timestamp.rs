//! HL7 date/time values (DTM, and the first component of TS):
//! `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`.
//!
//! The precision written is kept ([`Precision`]); missing parts read as the start of the
//! period (`202403` is 1 March 2024, 00:00). The standard allows 1 to 4 fraction digits; up
//! to 6 (microseconds) are accepted. The offset, when written, is `+HHMM` or `-HHMM` (at most
//! 18 hours); a value without one is wall-clock time in a zone the caller knows
//! ([`Timestamp::to_utc_micros`]).

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};

use crate::error::{ParseError, Result};
use crate::segment::Segment;

/// How much of a [`Timestamp`] was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// `YYYY`.
    Year,
    /// `YYYYMM`.
    Month,
    /// `YYYYMMDD`.
    Day,
    /// `YYYYMMDDHH`.
    Hour,
    /// `YYYYMMDDHHMM`.
    Minute,
    /// `YYYYMMDDHHMMSS`.
    Second,
    /// `YYYYMMDDHHMMSS.S…` with this many fraction digits (1 to 6).
    Fraction(u8),
}

/// An HL7 DTM value: wall-clock date and time as written, its precision, and its UTC offset
/// when one was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp {
    local: NaiveDateTime,
    precision: Precision,
    offset_minutes: Option<i16>,
}

fn invalid(reason: &'static str) -> ParseError {
    ParseError::InvalidTimestamp { reason }
}

fn digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// `+HHMM` / `-HHMM` as minutes east of UTC.
fn parse_offset(s: &str) -> Result<i16> {
    let b = s.as_bytes();
    if b.len() != 5 || !digits(&s[1..]) {
        return Err(invalid("the offset must be +HHMM or -HHMM"));
    }
    let hours = i16::from(b[1] - b'0') * 10 + i16::from(b[2] - b'0');
    let minutes = i16::from(b[3] - b'0') * 10 + i16::from(b[4] - b'0');
    if hours > 18 || minutes > 59 || (hours == 18 && minutes > 0) {
        return Err(invalid("the offset is out of range (at most 18 hours)"));
    }
    let total = hours * 60 + minutes;
    Ok(if b[0] == b'-' { -total } else { total })
}

/// The fraction digits as microseconds and the precision.
fn parse_fraction(frac: &str) -> Result<(u32, Precision)> {
    if frac.is_empty() || frac.len() > 6 || !digits(frac) {
        return Err(invalid("the fraction of a second must have 1 to 6 digits"));
    }
    let mut micros = 0u32;
    for i in 0..6 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        micros = micros * 10 + d;
    }
    let n = u8::try_from(frac.len()).map_err(|_| invalid("fraction too long"))?;
    Ok((micros, Precision::Fraction(n)))
}

impl Timestamp {
    /// Parses a DTM value (see the module docs). White space is not allowed.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid("the value is empty"));
        }
        if !s.is_ascii() {
            return Err(invalid("only digits, '.', '+' and '-' are allowed"));
        }
        let (main, offset) = match s.find(['+', '-']) {
            Some(i) => (&s[..i], Some(parse_offset(&s[i..])?)),
            None => (s, None),
        };
        let (date, frac) = match main.split_once('.') {
            Some((d, f)) => (d, Some(f)),
            None => (main, None),
        };
        if !digits(date) {
            return Err(invalid("only digits are allowed before the fraction"));
        }
        let mut precision = match date.len() {
            4 => Precision::Year,
            6 => Precision::Month,
            8 => Precision::Day,
            10 => Precision::Hour,
            12 => Precision::Minute,
            14 => Precision::Second,
            _ => return Err(invalid("the date must have 4, 6, 8, 10, 12 or 14 digits")),
        };
        let mut micros = 0;
        if let Some(frac) = frac {
            if precision != Precision::Second {
                return Err(invalid(
                    "a fraction of a second needs all 14 digits before it",
                ));
            }
            (micros, precision) = parse_fraction(frac)?;
        }
        // ASCII digits only: the slices are on character boundaries and the numbers fit.
        let num = |a: usize, b: usize, default: u32| -> u32 {
            date.get(a..b)
                .and_then(|x| x.parse().ok())
                .unwrap_or(default)
        };
        let year = i32::try_from(num(0, 4, 0)).map_err(|_| invalid("bad year"))?;
        let day = NaiveDate::from_ymd_opt(year, num(4, 6, 1), num(6, 8, 1))
            .ok_or_else(|| invalid("there is no such date"))?;
        let time =
            NaiveTime::from_hms_micro_opt(num(8, 10, 0), num(10, 12, 0), num(12, 14, 0), micros)
                .ok_or_else(|| invalid("there is no such time of day"))?;
        Ok(Timestamp {
            local: day.and_time(time),
            precision,
            offset_minutes: offset,
        })
    }

    /// The date and time as written (missing parts at the start of the period), without
    /// applying the offset.
    pub fn local(&self) -> NaiveDateTime {
        self.local
    }

    /// How much was written.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The UTC offset written, in minutes east of UTC (`+0100` is 60).
    pub fn offset_minutes(&self) -> Option<i16> {
        self.offset_minutes
    }

    /// Microseconds since 1970-01-01 00:00 UTC. A value with an offset uses it; one without
    /// is read as wall-clock time in `zone`: in a daylight saving overlap the earlier
    /// instant is taken, a time in a gap is [`ParseError::NonexistentLocalTime`].
    pub fn to_utc_micros(&self, zone: chrono_tz::Tz) -> Result<i64> {
        if let Some(off) = self.offset_minutes {
            return Ok(self.local.and_utc().timestamp_micros() - i64::from(off) * 60_000_000);
        }
        match zone.from_local_datetime(&self.local).earliest() {
            Some(t) => Ok(t.timestamp_micros()),
            None => Err(ParseError::NonexistentLocalTime {
                local: self.local.to_string(),
                zone: zone.name().to_owned(),
            }),
        }
    }
}

impl FromStr for Timestamp {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self> {
        Timestamp::parse(s)
    }
}

impl fmt::Display for Timestamp {
    /// The value in HL7 form with the precision it was written with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.local;
        write!(f, "{:04}", t.year())?;
        let parts = [t.month(), t.day(), t.hour(), t.minute(), t.second()];
        let shown = match self.precision {
            Precision::Year => 0,
            Precision::Month => 1,
            Precision::Day => 2,
            Precision::Hour => 3,
            Precision::Minute => 4,
            Precision::Second | Precision::Fraction(_) => 5,
        };
        for p in &parts[..shown] {
            write!(f, "{p:02}")?;
        }
        if let Precision::Fraction(n) = self.precision {
            let n = u32::from(n.clamp(1, 6));
            let value = t.nanosecond() / 1000 / 10u32.pow(6 - n);
            write!(f, ".{value:0width$}", width = n as usize)?;
        }
        if let Some(off) = self.offset_minutes {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            write!(f, "{sign}{:02}{:02}", a / 60, a % 60)?;
        }
        Ok(())
    }
}

/// Timestamp in field `f` (first component) of `seg`, `None` when empty; `label` names the
/// segment in errors (`MSH`, `OBX(2)`).
pub(crate) fn field(
    seg: &Segment,
    label: &str,
    f: usize,
    name: &'static str,
) -> Result<Option<Timestamp>> {
    let value = seg.leaf(f, 1, 1, 1);
    if value.is_empty() {
        return Ok(None);
    }
    Timestamp::parse(value.trim())
        .map(Some)
        .map_err(|e| ParseError::InvalidField {
            field: format!("{label}-{f}"),
            name,
            reason: match e {
                ParseError::InvalidTimestamp { reason } => reason.to_owned(),
                other => other.to_string(),
            },
        })
}
