//! `medlake-lake` owns the warehouse: its location (a local folder or an object store), its
//! schemas (folders) and its tables (Delta tables at `<warehouse>/<schema>/<table>/`), every
//! write to them (one atomic Delta commit each), time travel, history and maintenance
//! (OPTIMIZE, VACUUM, RESTORE TABLE) and its backups ([`backup`]: `medlake backup` and
//! `medlake restore`).
//!
//! It knows nothing of SQL statements, sessions, views or servers: `medlake-engine` drives it.
//! It hands out plain data (URLs, names, Delta table providers), never live connections, so
//! that what it produces can travel to Ballista executors; the one exception is an
//! [`Appender`], a table a long-lived server-side writer keeps open between its commits.

pub mod backup;
pub mod bloom;
pub mod changes;
pub mod checkpoints;
mod clone;
mod cluster;
mod dml;
pub mod durable;
pub mod erasure;
mod error;
mod guard;
pub mod lease;
mod location;
mod log_store;
pub mod maintenance;
mod sidecar;
mod snapshots;
mod warehouse;
mod written;

pub use backup::TableRestored;
pub use changes::{ChangeFeed, Span};
pub use clone::Cloned;
pub use dml::{
    ChangeOutcome, Hide, MERGE_SOURCE, MERGE_TARGET, Merge, MergeAction, MergeClause, MergeWhen,
};
pub use erasure::{Purged, Suppression};
pub use error::{Error, Refusal, Result};
pub use location::{CLOUD_SCHEMES, build_store_with, parse_location, redact};
pub use sidecar::SIDECAR_FOLDER;
pub use snapshots::{KeptSnapshots, Latest};
pub use warehouse::{
    Appender, BUILT_IN_SCHEMAS, CLUSTER_BY, CommitOptions, HistoryEntry, OptimizeOutcome,
    ROW_GROUP_ROWS, TableName, TimeTravel, VacuumOutcome, Warehouse, WriteMode, WriteOutcome,
    cluster_columns, parquet_layout, validate_name,
};
pub use written::WriteTarget;

/// The query planner a session must use for Delta writes: DataFusion's, plus the plan nodes
/// deltalake's writers add (metrics observers, CDC).
pub fn delta_query_planner()
-> std::sync::Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync> {
    deltalake::delta_datafusion::planner::DeltaPlanner::new()
}
