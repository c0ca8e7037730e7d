//! What a refresh did: why it ran ([`Trigger`]), how it ended ([`Status`]) and the whole
//! [`RefreshOutcome`] that `system.refreshes` records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use medlake_lake::TableName;

/// Why a refresh ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Create,
    Replace,
    Manual,
    Cascade,
    Schedule,
    /// `REFRESH ON CHANGE`: an input committed.
    Change,
    Apply,
    /// Recorded after a restart for a refresh whose commit stands but whose
    /// `system.refreshes` row was never written, when its commit does not say what ran it
    /// (commits before the trigger was kept in the view's state).
    Unknown,
}

impl Trigger {
    /// Whether the server ran it by itself (no statement asked for it).
    pub fn is_automatic(self) -> bool {
        matches!(self, Trigger::Schedule | Trigger::Change)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Create => "create",
            Trigger::Replace => "replace",
            Trigger::Manual => "manual",
            Trigger::Cascade => "cascade",
            Trigger::Schedule => "schedule",
            Trigger::Change => "change",
            Trigger::Apply => "apply",
            Trigger::Unknown => "unknown",
        }
    }

    /// The trigger [`Self::as_str`] names.
    pub fn parse(text: &str) -> Option<Trigger> {
        [
            Trigger::Create,
            Trigger::Replace,
            Trigger::Manual,
            Trigger::Cascade,
            Trigger::Schedule,
            Trigger::Change,
            Trigger::Apply,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// How a refresh ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    /// Nothing to do: no input changed since the last refresh.
    Skipped,
    /// Not refreshed because an upstream view failed or is stale.
    Stale,
    Failed,
    /// Another writer committed to the view first; its rows are fine, this refresh wrote
    /// nothing.
    Conflict,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Skipped => "skipped",
            Status::Stale => "stale",
            Status::Failed => "failed",
            Status::Conflict => "conflict",
        }
    }
}

/// One refresh, as `system.refreshes` records it.
#[derive(Clone, Debug)]
pub struct RefreshOutcome {
    pub view: TableName,
    pub refresh_id: String,
    pub trigger: Trigger,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// `full`, `incremental` or `none`.
    pub mode: &'static str,
    pub reason: String,
    pub inputs: BTreeMap<String, u64>,
    pub rows_written: u64,
    pub version: Option<u64>,
    pub status: Status,
    pub error: Option<String>,
    /// Per expectation: (name, expression, action, rows checked, violations).
    pub expectations: Vec<(String, String, &'static str, u64, u64)>,
}
