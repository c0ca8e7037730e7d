//! medlake-lake's integration tests (one test binary for the crate).

mod change_feed;
mod checkpoints;
mod compaction;
mod create_race;
mod fsync;
mod snapshots;
