//! How often a blind-appended table is checkpointed, and which of its checkpoints are kept.
//!
//! A Delta checkpoint holds every live file and every tombstone (a removed file, kept until
//! `delta.deletedFileRetentionDuration`, 7 days by default, has passed). A table that the
//! ingest doors or the audit log commit to several times a second, compacted automatically,
//! gains a tombstone per commit, so each checkpoint is larger than the last: written every
//! 10 commits, the log grows quadratically (the 5-minute soak: 187 MB of log, 3,000
//! checkpoints of `system.audit` and `bronze.hl7_observations`; an hour would be tens of
//! GB) and writing them takes ever more of the machine. Two rules keep that linear:
//!
//! - **The interval follows the checkpoint's size** ([`append_interval`]): at least every
//!   [`APPEND_CHECKPOINT_INTERVAL`] commits, but one more commit per
//!   [`ACTIONS_PER_COMMIT`] actions of the newest checkpoint, up to
//!   [`MAX_APPEND_CHECKPOINT_INTERVAL`] commits (what a reader then replays is bounded: the
//!   Delta kernel reads the commits since the checkpoint with a decoder of ~3 MiB each).
//! - **Superseded checkpoints are deleted** ([`thinning`]): a checkpoint is only a shortcut
//!   (every commit it summarizes stays in the log until log retention), so of the older
//!   checkpoints one per [`ANCHOR_SPACING`] versions is kept (time travel to an older version
//!   replays at most that many commits from one of them, plus an interval) and the others are
//!   deleted once the checkpoint after them is [`GRACE`] old (a reader that listed the log
//!   just before may still be reading one). The newest is never deleted, and the expired-log
//!   cleanup (deltalake's, which keeps the newest checkpoint at or before the oldest version
//!   it keeps) finds an anchor where it found any checkpoint before.
//!
//! The expired-log cleanup lists the whole log, so it runs at most once per
//! [`CLEANUP_EVERY`] per table instead of after every checkpoint; the thinning then starts
//! from the first checkpoint left (which it never deletes: after a cleanup, the versions
//! after it are read from it), otherwise from the last anchor.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Blind-appended tables are checkpointed at least every this many commits (their
/// `delta.checkpointInterval` when smaller). Every reader that opens a table replays the
/// commits since its newest checkpoint, and the Delta kernel (through deltalake 1.1, which
/// fixes its settings) reads up to 1,000 of them at once, each with a JSON decoder sized for
/// 1,000 rows of the whole action schema: about 3 MiB per commit file. 100 commits since a
/// checkpoint made each open of a micro-batched table allocate ~300 MiB for a moment, and
/// the soak saw 1.5 GiB of such decoders at once; with 10 it is ~30 MiB.
pub const APPEND_CHECKPOINT_INTERVAL: u64 = 10;

/// The most commits between two checkpoints of a blind-appended table, however large its
/// checkpoint (~150 MiB of decoders for a reader opening it; see
/// [`APPEND_CHECKPOINT_INTERVAL`]).
pub const MAX_APPEND_CHECKPOINT_INTERVAL: u64 = 50;

/// One more commit between checkpoints per this many actions (files and tombstones) in the
/// newest checkpoint: the checkpoints written per commit then cost about this many actions,
/// whatever the table's size (up to [`MAX_APPEND_CHECKPOINT_INTERVAL`]).
pub const ACTIONS_PER_COMMIT: u64 = 2_000;

/// Of the superseded checkpoints, the first at or after every this many versions since the
/// last one kept is kept.
pub const ANCHOR_SPACING: u64 = 200;

/// How long a superseded checkpoint stays after the checkpoint that supersedes it was written.
pub const GRACE: Duration = Duration::from_secs(60);

/// The expired-log cleanup of a table (and a thinning from its first checkpoint) runs at
/// most this often.
pub const CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// The checkpoint interval of a blind-appended table whose newest checkpoint holds `actions`
/// actions, given its `delta.checkpointInterval` (`configured`).
pub fn append_interval(configured: u64, actions: u64) -> u64 {
    let base = configured.clamp(1, APPEND_CHECKPOINT_INTERVAL);
    base.max((actions / ACTIONS_PER_COMMIT).min(MAX_APPEND_CHECKPOINT_INTERVAL))
}

/// What the warehouse remembers of a table's checkpoints between its maintenance tasks.
#[derive(Clone, Debug, Default)]
pub(crate) struct CheckpointLog {
    /// Actions in the newest checkpoint written (its `_last_checkpoint` size); 0: unknown.
    pub actions: u64,
    /// The newest checkpoint kept as an anchor; `None` until the first thinning.
    pub anchor: Option<u64>,
    /// When the whole log was last listed (the expired-log cleanup, and the thinning from
    /// the first checkpoint instead of the anchor).
    pub listed: Option<Instant>,
}

/// Which checkpoints to delete, and the new anchor, given the table's checkpoints newer than
/// `anchor` (or all of them, when `anchor` is `None`), each with the time its file was
/// written; one is deleted once the checkpoint after it is `grace` old.
pub(crate) fn thinning(
    anchor: Option<u64>,
    listed: &[(u64, DateTime<Utc>)],
    now: DateTime<Utc>,
    grace: Duration,
) -> (Option<u64>, Vec<u64>) {
    let mut listed: Vec<(u64, DateTime<Utc>)> = listed
        .iter()
        .copied()
        .filter(|(v, _)| anchor.is_none_or(|a| *v > a))
        .collect();
    listed.sort_by_key(|(v, _)| *v);
    // A checkpoint of several parts is listed once per part: the newest part's time.
    listed.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = earlier.1.max(later.1);
        }
        same
    });
    let grace = chrono::TimeDelta::from_std(grace).unwrap_or(chrono::TimeDelta::MAX);
    let mut anchor = anchor;
    let mut delete = Vec::new();
    let mut i = 0;
    while i < listed.len() {
        let (version, _) = listed[i];
        let Some(kept) = anchor else {
            anchor = Some(version);
            i += 1;
            continue;
        };
        if version >= kept.saturating_add(ANCHOR_SPACING) {
            anchor = Some(version);
        } else if let Some((_, next_written)) = listed.get(i + 1) {
            if *next_written > now - grace {
                // Not superseded long enough; neither is any later one: the next thinning
                // looks at them again (from the anchor).
                break;
            }
            delete.push(version);
        }
        i += 1;
    }
    (anchor, delete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::TimeDelta::seconds(seconds_ago)
    }

    #[test]
    fn the_interval_grows_with_the_checkpoint_and_stays_bounded() {
        assert_eq!(append_interval(100, 0), 10);
        assert_eq!(append_interval(100, 19_999), 10);
        assert_eq!(append_interval(100, 40_000), 20);
        assert_eq!(
            append_interval(100, 10_000_000),
            MAX_APPEND_CHECKPOINT_INTERVAL
        );
        // A table asking for fewer commits between checkpoints gets them while small.
        assert_eq!(append_interval(4, 0), 4);
        assert_eq!(append_interval(0, 0), 1);
        assert_eq!(append_interval(4, 60_000), 30);
    }

    #[test]
    fn superseded_checkpoints_go_but_anchors_and_the_newest_stay() {
        let now = Utc::now();
        // Checkpoints every 10 versions, each written a second after the last, the newest now.
        let listed: Vec<(u64, DateTime<Utc>)> = (0..50u64)
            .map(|i| (i * 10 + 9, at(500 - i as i64 * 10, now)))
            .chain(std::iter::once((509, now)))
            .collect();
        let (anchor, delete) = thinning(None, &listed, now, GRACE);
        // Anchors: 9, 209, 409; the newest (509) and those superseded less than a minute
        // ago (the checkpoints after them written within GRACE) stay.
        assert_eq!(anchor, Some(409));
        assert!(!delete.contains(&9) && !delete.contains(&209) && !delete.contains(&409));
        assert!(!delete.contains(&509));
        assert!(delete.contains(&19) && delete.contains(&199) && delete.contains(&399));
        // 449 is followed by 459, written 50 s ago: kept for now.
        for kept in [449, 459, 469, 479, 489, 499] {
            assert!(!delete.contains(&kept), "{kept} deleted: {delete:?}");
        }
        assert!(delete.contains(&439), "{delete:?}");
        assert_eq!(delete.len(), 50 - 3 - 6);
        // The next thinning, a minute later, from the anchor: what was kept for now goes.
        let later = now + chrono::TimeDelta::seconds(61);
        let rest: Vec<_> = listed.iter().copied().filter(|(v, _)| *v > 409).collect();
        let (anchor, delete) = thinning(Some(409), &rest, later, GRACE);
        assert_eq!(anchor, Some(409));
        assert_eq!(delete, vec![419, 429, 439, 449, 459, 469, 479, 489, 499]);
    }

    #[test]
    fn multi_part_checkpoints_count_once_and_nothing_goes_without_a_successor() {
        let now = Utc::now();
        let old = at(3600, now);
        let listed = [(9, old), (19, old), (19, old), (29, at(10, now))];
        let (anchor, delete) = thinning(Some(9), &listed, now, GRACE);
        assert_eq!((anchor, delete), (Some(9), vec![]));
        let listed = [(19, old), (19, old), (29, old), (39, old)];
        let (anchor, delete) = thinning(Some(9), &listed, now, GRACE);
        assert_eq!((anchor, delete), (Some(9), vec![19, 29]));
        assert_eq!(thinning(None, &[], now, GRACE), (None, vec![]));
        assert_eq!(thinning(None, &[(5, old)], now, GRACE), (Some(5), vec![]));
    }
}
