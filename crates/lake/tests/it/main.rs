//! medlake-lake's integration tests (one test binary for the crate).

mod change_feed;
mod create_race;
mod fsync;
mod snapshots;
