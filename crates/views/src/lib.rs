//! `medlake-views` owns materialized views, the medallion engine: their definitions
//! (`CREATE MATERIALIZED VIEW` with schedules and expectations), full and incremental
//! refreshes as single Delta commits, the dependency graph between views, expectations and
//! quarantine, the scheduler, and the `system` tables that record all of it.
//!
//! A view's definition and the input versions of its rows live in the view's own Delta log
//! (see [`refresh`]), so the catalog of views is transactional with the data. It plans SQL
//! with a DataFusion session the engine hands it and writes only through `medlake-lake`; it
//! knows nothing of clients, servers or connectors: external inputs are opened through the
//! connector `Registry` (`medlake-source`) the engine hands it.

pub mod auto_cdc;
mod bounds;
mod cost;
pub mod cron;
pub mod definition;
mod distributed;
mod erasure;
mod error;
mod expect;
pub mod fhir_view;
mod history;
mod incremental;
mod lineage;
mod multiset;
mod outcome;
mod reach;
pub mod refresh;
pub mod scheduler;
mod state;
pub mod system;
mod unread;

pub use auto_cdc::{AutoCdc, CdcColumns, ScdType};
pub use definition::{
    CreateView, Expectation, OnViolation, RefreshPolicy, Schedule, ViewDefinition, parse_create,
};
pub use error::{Error, Result};
pub use refresh::{
    AUTO_FULL_FRACTION, AUTO_MIN_ROWS, AUTO_READ_FRACTION, InputVolume, QUARANTINE_SUFFIX,
    RefreshAuthority, RefreshListener, RefreshOutcome, RefreshPlan, RefreshState, Status, Trigger,
    View, Views, quarantine_of, topological,
};
pub use scheduler::Scheduler;
