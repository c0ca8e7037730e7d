//! medlake-lake's integration tests (one test binary for the crate).

mod create_race;
