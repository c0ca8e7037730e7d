//! How long `system.audit` keeps what it holds.

use std::time::Duration;

use crate::error::{Error, Result};

/// The shortest retention of `system.audit`: 6 years (2,192 days, leap days included). Its
/// table properties keep removed files and log entries that long, and [`check_vacuum`]
/// refuses a VACUUM with a shorter one unless an auditor forces it.
pub const MIN_RETENTION: Duration = Duration::from_secs(2_192 * 86_400);

/// Whether a VACUUM of `system.audit` (or a change of its retention) keeping `retain` may
/// run. Below [`MIN_RETENTION`] only with `forced_by_auditor`: the statement said FORCE and
/// its principal holds the auditor role (the engine decides both).
///
/// A VACUUM without `RETAIN` uses the table's own retention, which is [`MIN_RETENTION`]:
/// pass that.
pub fn check_vacuum(retain: Duration, forced_by_auditor: bool) -> Result<()> {
    if retain >= MIN_RETENTION || forced_by_auditor {
        return Ok(());
    }
    Err(Error::RetentionTooShort {
        requested_hours: retain.as_secs() / 3600,
        minimum_hours: MIN_RETENTION.as_secs() / 3600,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medlake_common::Code;

    #[test]
    fn six_years_or_an_auditor() {
        assert!(MIN_RETENTION >= Duration::from_secs(6 * 365 * 86_400));
        assert!(check_vacuum(MIN_RETENTION, false).is_ok());
        assert!(check_vacuum(MIN_RETENTION * 2, false).is_ok());
        let short = Duration::from_secs(7 * 86_400);
        let refused = check_vacuum(short, false).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidParameterValue);
        assert!(refused.to_string().contains("168 hours"), "{refused}");
        assert!(check_vacuum(short, true).is_ok());
        assert!(check_vacuum(Duration::ZERO, true).is_ok());
    }
}
