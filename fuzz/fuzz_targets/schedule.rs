//! `REFRESH EVERY '...'` and `REFRESH CRON '...'`: the parsers, then the next run computed
//! from the parsed schedule at the ends of the calendar. Nothing may panic; an accepted
//! interval lies within the bounds.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use medlake_views::Schedule;
use medlake_views::cron::Cron;
use medlake_views::definition::{MAX_INTERVAL_SECS, MIN_INTERVAL_SECS, parse_interval};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let times = [
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::UNIX_EPOCH,
        DateTime::<Utc>::MAX_UTC,
    ];
    if let Ok(interval) = parse_interval(text) {
        let seconds = interval.as_secs();
        assert!((MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&seconds));
        let schedule = Schedule::Every { seconds };
        assert!(schedule.check().is_ok());
        for t in times {
            let _ = schedule.next_after(t);
        }
    }
    // A stored interval of any size (an older medlake stored whatever u64 it parsed).
    if data.len() >= 8 {
        let seconds = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
        let schedule = Schedule::Every { seconds };
        let _ = schedule.check();
        for t in times {
            let _ = schedule.next_after(t);
        }
    }
    if let Ok(cron) = Cron::parse(text) {
        for t in times {
            if let Some(next) = cron.next_after(t) {
                assert!(next > t);
            }
        }
        // What is stored is the normalized text: it parses again to the same schedule.
        assert_eq!(Cron::parse(cron.as_str()).as_ref(), Ok(&cron));
    }
    let _ = Schedule::Cron {
        expression: text.to_string(),
    }
    .next_after(DateTime::<Utc>::UNIX_EPOCH);
});
