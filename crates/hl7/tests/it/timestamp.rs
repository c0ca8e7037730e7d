//! DTM values: precision, offsets, conversion to UTC with daylight saving time.

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use medlake_hl7::{ParseError, Precision, Timestamp};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_micros()
}

#[test]
fn precision_is_kept() {
    let cases = [
        ("2024", Precision::Year),
        ("202403", Precision::Month),
        ("20240315", Precision::Day),
        ("2024031510", Precision::Hour),
        ("202403151030", Precision::Minute),
        ("20240315103005", Precision::Second),
        ("20240315103005.1", Precision::Fraction(1)),
        ("20240315103005.1234", Precision::Fraction(4)),
        ("20240315103005.123456", Precision::Fraction(6)),
        ("20240315103005.0500-0500", Precision::Fraction(4)),
        ("2024+0100", Precision::Year),
        ("20240315-0330", Precision::Day),
    ];
    for (text, precision) in cases {
        let t = Timestamp::parse(text).unwrap();
        assert_eq!(t.precision(), precision, "{text}");
        assert_eq!(t.to_string(), text, "round trip");
        assert_eq!(text.parse::<Timestamp>().unwrap(), t);
    }
    let t = Timestamp::parse("202403").unwrap();
    let start = NaiveDate::from_ymd_opt(2024, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    assert_eq!(
        t.local(),
        start,
        "missing parts are the start of the period"
    );
    let t = Timestamp::parse("20240315103005.25").unwrap();
    assert_eq!(t.local().and_utc().timestamp_subsec_micros(), 250_000);
}

#[test]
fn offsets() {
    let t = Timestamp::parse("20240315103005+0100").unwrap();
    assert_eq!(t.offset_minutes(), Some(60));
    assert_eq!(t.to_utc_micros(London).unwrap(), utc(2024, 3, 15, 9, 30, 5));
    let t = Timestamp::parse("20240315103005.5-0330").unwrap();
    assert_eq!(t.offset_minutes(), Some(-210));
    assert_eq!(
        t.to_utc_micros(chrono_tz::Asia::Tokyo).unwrap(),
        utc(2024, 3, 15, 14, 0, 5) + 500_000,
        "the offset wins over the zone"
    );
    let t = Timestamp::parse("20240101000000+1400").unwrap();
    assert_eq!(
        t.to_utc_micros(London).unwrap(),
        utc(2023, 12, 31, 10, 0, 0)
    );
}

#[test]
fn local_times_in_europe_london() {
    let at = |s: &str| Timestamp::parse(s).unwrap().to_utc_micros(London);
    assert_eq!(at("20240115120000"), Ok(utc(2024, 1, 15, 12, 0, 0)), "GMT");
    assert_eq!(at("20240715120000"), Ok(utc(2024, 7, 15, 11, 0, 0)), "BST");
    assert_eq!(
        at("20240715"),
        Ok(utc(2024, 7, 14, 23, 0, 0)),
        "a day starts at local midnight"
    );
    // 31 March 2024: 01:00 GMT becomes 02:00 BST; 01:30 does not exist.
    assert_eq!(at("20240331005959"), Ok(utc(2024, 3, 31, 0, 59, 59)));
    let gap = at("20240331013000").unwrap_err();
    assert!(matches!(gap, ParseError::NonexistentLocalTime { .. }));
    assert_eq!(
        gap.to_string(),
        "the local time 2024-03-31 01:30:00 does not exist in Europe/London (daylight saving gap)"
    );
    assert_eq!(gap.hl7_code(), 102);
    assert_eq!(at("20240331020000"), Ok(utc(2024, 3, 31, 1, 0, 0)));
    // 27 October 2024: 02:00 BST becomes 01:00 GMT; 01:30 happens twice, the first is taken.
    assert_eq!(at("20241027013000"), Ok(utc(2024, 10, 27, 0, 30, 0)));
    assert_eq!(at("20241027023000"), Ok(utc(2024, 10, 27, 2, 30, 0)));
    assert_eq!(
        at("20241027013000+0000"),
        Ok(utc(2024, 10, 27, 1, 30, 0)),
        "the offset decides"
    );
}

#[test]
fn invalid_values() {
    let cases = [
        ("", "the value is empty"),
        ("24", "the date must have 4, 6, 8, 10, 12 or 14 digits"),
        ("2024031", "the date must have 4, 6, 8, 10, 12 or 14 digits"),
        ("2024-03-15", "the offset must be +HHMM or -HHMM"),
        ("202413", "there is no such date"),
        ("20240230", "there is no such date"),
        ("20230229", "there is no such date"),
        ("2024031524", "there is no such time of day"),
        ("202403151060", "there is no such time of day"),
        ("20240315105960", "there is no such time of day"),
        (
            "20240315.5",
            "a fraction of a second needs all 14 digits before it",
        ),
        (
            "20240315103005.",
            "the fraction of a second must have 1 to 6 digits",
        ),
        (
            "20240315103005.1234567",
            "the fraction of a second must have 1 to 6 digits",
        ),
        ("20240315103005+01", "the offset must be +HHMM or -HHMM"),
        (
            "20240315103005+0160",
            "the offset is out of range (at most 18 hours)",
        ),
        (
            "20240315103005+1900",
            "the offset is out of range (at most 18 hours)",
        ),
        ("20240315103005+01:00", "the offset must be +HHMM or -HHMM"),
        (" 20240315", "only digits are allowed before the fraction"),
        ("2024031５", "only digits, '.', '+' and '-' are allowed"),
        (
            "20240315T1030",
            "only digits are allowed before the fraction",
        ),
        ("+0100", "the date must have 4, 6, 8, 10, 12 or 14 digits"),
    ];
    for (text, reason) in cases {
        assert_eq!(
            Timestamp::parse(text),
            Err(ParseError::InvalidTimestamp { reason }),
            "{text:?}"
        );
    }
    assert_eq!(
        Timestamp::parse("20240229").unwrap().to_string(),
        "20240229",
        "leap year"
    );
}
