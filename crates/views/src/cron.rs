//! Five-field cron schedules (`minute hour day-of-month month day-of-week`), in UTC.
//!
//! Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of
//! those. Day of week is 0-7 (0 and 7 are Sunday). As in Vixie cron, when both day fields are
//! restricted a day matches if either matches.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Cron {
    /// Parses `text`; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!(
                "cron schedule '{text}' needs 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        };
        let mut weekdays = field(weekday, 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            text: fields.join(" "),
            minutes: field(minute, 0, 59, "minute")?,
            hours: field(hour, 0, 23, "hour")?,
            days: field(day, 1, 31, "day of month")?,
            months: field(month, 1, 12, "month")?,
            weekdays,
            days_restricted: *day != "*",
            weekdays_restricted: *weekday != "*",
        })
    }

    /// The expression as written (fields separated by one space).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let day = self.days & (1 << t.day()) != 0;
        let weekday = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first instant strictly after `after` (to the minute) that the schedule names;
    /// `None` if there is none within five years or before the end of chrono's calendar.
    /// All date arithmetic is checked: no `after` makes it panic.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(Duration::minutes(1))?;
        let mut t = start;
        // Five years covers every valid combination (29 February on a given weekday, ...).
        let limit = start
            .checked_add_signed(Duration::days(366 * 5))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let (year, month) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = t
                    .with_day(1)?
                    .with_hour(0)?
                    .with_minute(0)?
                    .with_month(month)?
                    .with_year(year)?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t
                    .checked_add_signed(Duration::days(1))?
                    .with_hour(0)?
                    .with_minute(0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.checked_add_signed(Duration::hours(1))?.with_minute(0)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add_signed(Duration::minutes(1))?;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// One field as a bit set of allowed values.
fn field(text: &str, min: u32, max: u32, what: &str) -> Result<u64, String> {
    let bad = |why: String| format!("cron {what} field '{text}': {why}");
    let number = |s: &str| -> Result<u32, String> {
        let n: u32 = s
            .parse()
            .map_err(|_| bad(format!("'{s}' is not a number")))?;
        if n < min || n > max {
            return Err(bad(format!("{n} is outside {min}-{max}")));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| bad(format!("step '{step}' is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0".into()));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad(format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let n = number(range)?;
            (n, if part.contains('/') { max } else { n })
        };
        // `low..=high` lies within `min..=max` (at most 0..=59), so the shift fits in u64;
        // the step may be as large as u32::MAX, so the addition is checked.
        let mut v = Some(low);
        while let Some(value) = v.filter(|value| *value <= high) {
            bits |= 1u64 << value;
            v = value.checked_add(step);
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_occurrences() {
        let hourly = Cron::parse("0 * * * *").unwrap();
        assert_eq!(
            hourly.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-23T11:00:00Z"))
        );
        assert_eq!(
            hourly.next_after(at("2026-11-23T10:59:59Z")),
            Some(at("2026-11-23T11:00:00Z"))
        );
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_15.next_after(at("2026-11-23T10:07:00Z")),
            Some(at("2026-11-23T10:15:00Z"))
        );
        // 02:30 on weekdays: from Friday evening the next one is Monday.
        let weekdays = Cron::parse("30 2 * * 1-5").unwrap();
        assert_eq!(
            weekdays.next_after(at("2026-11-27T20:00:00Z")),
            Some(at("2026-11-30T02:30:00Z"))
        );
        let new_year = Cron::parse("0 0 1 1 *").unwrap();
        assert_eq!(
            new_year.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let leap = Cron::parse("0 12 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2028-02-29T12:00:00Z"))
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Cron::parse("61 * * * *").unwrap_err();
        assert!(e.contains("minute field '61'"), "{e}");
        assert!(Cron::parse("* * *").unwrap_err().contains("needs 5 fields"));
        assert!(
            Cron::parse("*/0 * * * *")
                .unwrap_err()
                .contains("step of 0")
        );
    }

    /// Steps and values as large as the integer types, and instants at the calendar's
    /// ends: an error or a result, never a panic (debug builds check overflow).
    #[test]
    fn hostile_expressions_never_panic() {
        let long = format!("{} * * * *", vec!["1"; 10_000].join(","));
        let corpus = [
            "*/4294967295 * * * *",
            "0 0 1-31/4294967295 * *",
            "59-59/4294967295 23 31 12 7",
            "*/4294967296 * * * *",
            "18446744073709551616 * * * *",
            "-1 * * * *",
            "+1 * * * *",
            "1--2 * * * *",
            "1-2-3 * * * *",
            "1/2/3 * * * *",
            "*/ * * * *",
            "/ * * * *",
            ", * * * *",
            "* * * * 8",
            "* * 0 * *",
            "* * * 13 *",
            "٣ * * * *",
            "\u{0} * * * *",
            "",
            &long,
        ];
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            at("2026-11-23T10:00:00Z"),
        ];
        for text in corpus {
            if let Ok(cron) = Cron::parse(text) {
                for &t in &times {
                    if let Some(next) = cron.next_after(t) {
                        assert!(next > t, "{text}: {t} -> {next}");
                    }
                }
            }
        }
        let steps = Cron::parse("0 0 1-31/4294967295 * *").unwrap();
        assert_eq!(steps.days, 1 << 1);
        assert_eq!(
            Cron::parse("* * * * *")
                .unwrap()
                .next_after(DateTime::<Utc>::MAX_UTC),
            None
        );
    }
}
