//! PostgreSQL's text output of one value, written into a buffer without allocating: the
//! formats `psql` shows and clients parse (PostgreSQL 15, `DateStyle = ISO`,
//! `IntervalStyle = postgres`, `bytea_output = hex`).

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike};

/// Microseconds in a day, an hour, a minute and a second.
const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;
const MINUTE_US: i64 = 60_000_000;
const SECOND_US: i64 = 1_000_000;

/// An integer in decimal.
pub(crate) fn integer(out: &mut BytesMut, value: impl itoa::Integer) {
    let mut buffer = itoa::Buffer::new();
    out.put_slice(buffer.format(value).as_bytes());
}

/// `digits` zero-padded to `width` (for dates and times).
fn padded(out: &mut BytesMut, value: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(value);
    for _ in text.len()..width {
        out.put_u8(b'0');
    }
    out.put_slice(text.as_bytes());
}

/// A small stack buffer for `std::fmt` output.
struct Stack {
    bytes: [u8; 64],
    len: usize,
}

impl std::fmt::Write for Stack {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The decimal digits (without leading zeros) and the exponent of the first digit of a
/// finite, non-zero float's absolute value, as `{:e}` or `{:.N e}` writes them.
fn decimal(args: std::fmt::Arguments<'_>) -> Option<([u8; 64], usize, i32)> {
    use std::fmt::Write;
    let mut stack = Stack {
        bytes: [0; 64],
        len: 0,
    };
    stack.write_fmt(args).ok()?;
    let text = &stack.bytes[..stack.len];
    let e = text.iter().position(|b| *b == b'e')?;
    let exponent: i32 = std::str::from_utf8(&text[e + 1..]).ok()?.parse().ok()?;
    let mut digits = [0u8; 64];
    let mut n = 0;
    for b in &text[..e] {
        if b.is_ascii_digit() {
            digits[n] = *b;
            n += 1;
        }
    }
    Some((digits, n, exponent))
}

/// A float as PostgreSQL prints it: the shortest text that reads back to the same value
/// (`extra_float_digits` > 0, the default) or `%.{precision + extra}g` otherwise; fixed
/// notation for decimal exponents from -4 to below the type's precision (15 for float8,
/// 6 for float4), `1e+15`-style otherwise; `NaN`, `Infinity`, `-Infinity`, `-0`.
pub(crate) fn float(out: &mut BytesMut, value: f64, single: bool, extra_digits: i8) {
    if value.is_nan() {
        return out.put_slice(b"NaN");
    }
    if value.is_infinite() {
        return out.put_slice(if value > 0.0 {
            b"Infinity"
        } else {
            b"-Infinity"
        });
    }
    if value.is_sign_negative() {
        out.put_u8(b'-');
    }
    if value == 0.0 {
        return out.put_u8(b'0');
    }
    let magnitude = value.abs();
    let precision: i32 = if single { 6 } else { 15 };
    let parts = if extra_digits > 0 {
        if single {
            decimal(format_args!("{:e}", magnitude as f32))
        } else {
            decimal(format_args!("{magnitude:e}"))
        }
    } else {
        let wanted = usize::try_from((precision + i32::from(extra_digits)).max(1)).unwrap_or(1);
        decimal(format_args!("{:.*e}", wanted - 1, magnitude))
    };
    let Some((digits, mut n, exponent)) = parts else {
        return out.put_u8(b'0');
    };
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
    }
    let digits = &digits[..n];
    if (-4..precision).contains(&exponent) {
        if exponent < 0 {
            out.put_slice(b"0.");
            for _ in 0..(-exponent - 1) {
                out.put_u8(b'0');
            }
            out.put_slice(digits);
        } else {
            let whole = usize::try_from(exponent).unwrap_or(0) + 1;
            if digits.len() <= whole {
                out.put_slice(digits);
                for _ in digits.len()..whole {
                    out.put_u8(b'0');
                }
            } else {
                out.put_slice(&digits[..whole]);
                out.put_u8(b'.');
                out.put_slice(&digits[whole..]);
            }
        }
    } else {
        out.put_u8(digits[0]);
        if digits.len() > 1 {
            out.put_u8(b'.');
            out.put_slice(&digits[1..]);
        }
        out.put_u8(b'e');
        out.put_u8(if exponent < 0 { b'-' } else { b'+' });
        padded(out, u64::from(exponent.unsigned_abs()), 2);
    }
}

/// An unscaled decimal with `scale` digits after the point (`numeric`: exactly `scale`
/// fraction digits, as PostgreSQL prints a `numeric(p, s)`).
pub(crate) fn numeric(out: &mut BytesMut, unscaled: i128, scale: i8) {
    if unscaled < 0 {
        out.put_u8(b'-');
    }
    let magnitude = unscaled.unsigned_abs();
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(magnitude).as_bytes();
    if scale <= 0 {
        out.put_slice(text);
        if magnitude != 0 {
            for _ in 0..scale.unsigned_abs() {
                out.put_u8(b'0');
            }
        }
        return;
    }
    let scale = usize::from(scale.unsigned_abs());
    if text.len() > scale {
        let point = text.len() - scale;
        out.put_slice(&text[..point]);
        out.put_u8(b'.');
        out.put_slice(&text[point..]);
    } else {
        out.put_slice(b"0.");
        for _ in text.len()..scale {
            out.put_u8(b'0');
        }
        out.put_slice(text);
    }
}

/// Bytes as `bytea_output = hex`: `\x` and two lowercase hex digits per byte.
pub(crate) fn bytea(out: &mut BytesMut, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + value.len() * 2);
    out.put_slice(b"\\x");
    for b in value {
        out.put_u8(HEX[usize::from(b >> 4)]);
        out.put_u8(HEX[usize::from(b & 15)]);
    }
}

/// A calendar date: `YYYY-MM-DD`, years before 1 as `YYYY-MM-DD BC` (year 0 is 1 BC).
fn write_date(out: &mut BytesMut, date: NaiveDate) -> bool {
    let year = date.year();
    let bc = year <= 0;
    let shown = if bc {
        1 - i64::from(year)
    } else {
        i64::from(year)
    };
    padded(out, shown.unsigned_abs(), 4);
    out.put_u8(b'-');
    padded(out, u64::from(date.month()), 2);
    out.put_u8(b'-');
    padded(out, u64::from(date.day()), 2);
    bc
}

/// `HH:MM:SS` and the microseconds without trailing zeros.
fn write_clock(out: &mut BytesMut, hours: u64, minutes: u64, seconds: u64, micros: u64) {
    padded(out, hours, 2);
    out.put_u8(b':');
    padded(out, minutes, 2);
    out.put_u8(b':');
    padded(out, seconds, 2);
    fraction(out, micros);
}

/// `.ffffff` without trailing zeros; nothing for zero.
fn fraction(out: &mut BytesMut, micros: u64) {
    if micros == 0 {
        return;
    }
    let mut micros = micros;
    let mut width = 6;
    while micros.is_multiple_of(10) {
        micros /= 10;
        width -= 1;
    }
    out.put_u8(b'.');
    padded(out, micros, width);
}

/// Days since 1970-01-01 as a `date`.
pub(crate) fn date(out: &mut BytesMut, days: i64) {
    let date = NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::try_days(days)?));
    match date {
        Some(date) => {
            if write_date(out, date) {
                out.put_slice(b" BC");
            }
        }
        None => integer(out, days),
    }
}

/// Microseconds since midnight as a `time`.
pub(crate) fn time(out: &mut BytesMut, micros: i64) {
    let micros = micros.rem_euclid(DAY_US).unsigned_abs();
    let seconds = micros / 1_000_000;
    write_clock(
        out,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        micros % 1_000_000,
    );
}

/// The session's time zone for `timestamptz` output.
#[derive(Clone, Debug)]
pub(crate) enum Zone {
    Utc,
    Named(arrow::array::timezone::Tz),
}

/// A timestamp (microseconds since the Unix epoch, UTC) as `timestamp` or, with a zone,
/// `timestamptz` in that zone (`+HH`, `+HH:MM` when the offset has minutes).
pub(crate) fn timestamp(out: &mut BytesMut, micros: i64, zone: Option<&Zone>) {
    let Some(utc) = DateTime::from_timestamp_micros(micros).map(|t| t.naive_utc()) else {
        return integer(out, micros);
    };
    let (local, offset) = match zone {
        None | Some(Zone::Utc) => (utc, 0),
        Some(Zone::Named(tz)) => {
            let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
            match utc.checked_add_signed(chrono::TimeDelta::seconds(i64::from(offset))) {
                Some(local) => (local, offset),
                None => (utc, 0),
            }
        }
    };
    let bc = naive(out, local);
    if zone.is_some() {
        out.put_u8(if offset < 0 { b'-' } else { b'+' });
        let offset = offset.unsigned_abs();
        padded(out, u64::from(offset / 3600), 2);
        if offset % 3600 != 0 {
            out.put_u8(b':');
            padded(out, u64::from(offset / 60 % 60), 2);
            if offset % 60 != 0 {
                out.put_u8(b':');
                padded(out, u64::from(offset % 60), 2);
            }
        }
    }
    if bc {
        out.put_slice(b" BC");
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`; true for a year BC.
fn naive(out: &mut BytesMut, t: NaiveDateTime) -> bool {
    let bc = write_date(out, t.date());
    out.put_u8(b' ');
    write_clock(
        out,
        u64::from(t.hour()),
        u64::from(t.minute()),
        u64::from(t.second()),
        u64::from(t.and_utc().timestamp_subsec_micros()),
    );
    bc
}

/// One nonzero field of a postgres-style interval (`AddPostgresIntPart`).
fn interval_part(out: &mut BytesMut, value: i64, unit: &[u8], zero: &mut bool, before: &mut bool) {
    if value == 0 {
        return;
    }
    if !*zero {
        out.put_u8(b' ');
    }
    if *before && value > 0 {
        out.put_u8(b'+');
    }
    integer(out, value);
    out.put_u8(b' ');
    out.put_slice(unit);
    if value != 1 {
        out.put_u8(b's');
    }
    *before = value < 0;
    *zero = false;
}

/// An interval as `IntervalStyle = postgres` prints it: `1 year 2 mons -3 days +04:05:06.5`,
/// `00:00:00` when zero; the time part is not folded into days.
pub(crate) fn interval(out: &mut BytesMut, months: i64, days: i64, micros: i64) {
    let mut zero = true;
    let mut before = false;
    interval_part(out, months / 12, b"year", &mut zero, &mut before);
    interval_part(out, months % 12, b"mon", &mut zero, &mut before);
    interval_part(out, days, b"day", &mut zero, &mut before);
    if zero || micros != 0 {
        if !zero {
            out.put_u8(b' ');
        }
        if micros < 0 {
            out.put_u8(b'-');
        } else if before && !zero {
            out.put_u8(b'+');
        }
        let magnitude = micros.unsigned_abs();
        let (hour, minute) = (HOUR_US.unsigned_abs(), MINUTE_US.unsigned_abs());
        let second = SECOND_US.unsigned_abs();
        write_clock(
            out,
            magnitude / hour,
            magnitude % hour / minute,
            magnitude % minute / second,
            magnitude % second,
        );
    }
}

/// Whether an array element's text needs double quotes (`array_out`): empty, `NULL` in any
/// case, or holding a brace, a comma, a quote, a backslash or white space.
fn needs_quotes(value: &[u8]) -> bool {
    value.is_empty()
        || value.eq_ignore_ascii_case(b"NULL")
        || value.iter().any(|b| {
            matches!(
                b,
                b'{' | b'}' | b',' | b'"' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
            )
        })
}

/// An array element's text (already written at `out[start..]`), quoted where needed.
pub(crate) fn quote_element(out: &mut BytesMut, start: usize) {
    if !needs_quotes(&out[start..]) {
        return;
    }
    let value = out.split_off(start);
    out.reserve(value.len() + 2);
    out.put_u8(b'"');
    for b in value.iter() {
        if *b == b'"' || *b == b'\\' {
            out.put_u8(b'\\');
        }
        out.put_u8(*b);
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut BytesMut)) -> String {
        let mut out = BytesMut::new();
        write(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn floats_print_as_postgresql_prints_them() {
        let cases: &[(f64, &str)] = &[
            (149.0, "149"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e300, "1.5e+300"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (value, expected) in cases {
            assert_eq!(text(|o| float(o, *value, false, 1)), *expected, "{value}");
        }
        assert_eq!(text(|o| float(o, 0.1f32.into(), true, 1)), "0.1");
        assert_eq!(text(|o| float(o, 1e6, true, 1)), "1e+06");
        assert_eq!(text(|o| float(o, 123456.0, true, 1)), "123456");
        assert_eq!(
            text(|o| float(o, 0.30000000000000004, false, 0)),
            "0.3",
            "extra_float_digits = 0 prints 15 significant digits"
        );
    }

    #[test]
    fn numerics_keep_their_scale() {
        assert_eq!(text(|o| numeric(o, 1250, 2)), "12.50");
        assert_eq!(text(|o| numeric(o, -5, 3)), "-0.005");
        assert_eq!(text(|o| numeric(o, 0, 2)), "0.00");
        assert_eq!(text(|o| numeric(o, 12, -2)), "1200");
        assert_eq!(text(|o| numeric(o, 12, 0)), "12");
    }

    #[test]
    fn dates_times_and_timestamps_drop_zero_fractions() {
        assert_eq!(text(|o| date(o, 20415)), "2025-11-23");
        assert_eq!(text(|o| date(o, -719_163)), "0001-12-31 BC");
        assert_eq!(text(|o| time(o, 45_296_500_000)), "12:34:56.5");
        assert_eq!(
            text(|o| timestamp(o, 1_763_856_000_000_000, None)),
            "2025-11-23 00:00:00"
        );
        assert_eq!(
            text(|o| timestamp(o, 1_763_856_000_000_120, Some(&Zone::Utc))),
            "2025-11-23 00:00:00.00012+00"
        );
        let kolkata = Zone::Named("Asia/Kolkata".parse().unwrap());
        assert_eq!(
            text(|o| timestamp(o, 1_763_856_000_000_000, Some(&kolkata))),
            "2025-11-23 05:30:00+05:30"
        );
    }

    #[test]
    fn intervals_follow_intervalstyle_postgres() {
        assert_eq!(text(|o| interval(o, 0, 0, 0)), "00:00:00");
        assert_eq!(
            text(|o| interval(o, 14, 3, 4 * HOUR_US + 5 * MINUTE_US + 6_500_000)),
            "1 year 2 mons 3 days 04:05:06.5"
        );
        assert_eq!(text(|o| interval(o, -12, 2, 0)), "-1 years +2 days");
        assert_eq!(text(|o| interval(o, 0, 1, -SECOND_US)), "1 day -00:00:01");
        assert_eq!(text(|o| interval(o, 0, -1, SECOND_US)), "-1 days +00:00:01");
        assert_eq!(text(|o| interval(o, 0, 0, 100 * HOUR_US)), "100:00:00");
    }

    #[test]
    fn array_elements_are_quoted_like_array_out() {
        for (value, expected) in [
            ("a", "a"),
            ("", "\"\""),
            ("null", "\"null\""),
            ("a b", "\"a b\""),
        ] {
            let mut out = BytesMut::from(&b"{"[..]);
            out.put_slice(value.as_bytes());
            quote_element(&mut out, 1);
            assert_eq!(&out[1..], expected.as_bytes());
        }
        let mut out = BytesMut::from(&br#"x"\"#[..]);
        quote_element(&mut out, 0);
        assert_eq!(&out[..], br#""x\"\\""#);
    }
}
