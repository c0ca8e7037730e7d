//! The plan cache: a statement prepared with parameters (`$1`, `?`; the extended protocol's
//! Parse/Bind/Execute, JDBC's PreparedStatement, ADBC's bound statements) is parsed, planned,
//! checked and protected once, and each execution only binds its values into that plan.
//!
//! An entry is the statement's logical plan with its placeholders, after the privilege check
//! and after masks and row filters were applied (`Session::protect`), with the privileges it
//! needed. It is keyed like the result cache ([`crate::result_cache::Key`]): the statement's
//! text with its placeholders, the principal, the version of the access state, the settings
//! fingerprint and every table read at its Delta id and version. A commit to a table, a new
//! grant, mask or row filter, or a `SET` therefore changes the key, and the next execution is
//! planned again (the plan holds the table's snapshot: it must never outlive its version). A
//! hit is checked again against the current access state and audited like any statement.
//!
//! The cached plan is DataFusion's unoptimized plan: each execution substitutes its values
//! (`LogicalPlan::with_param_values`) and is then optimized, so constant folding, pruning and
//! `now()` see the values and the clock of that execution. A statement whose template does not
//! plan (a placeholder DataFusion cannot type, ...) is remembered as such and runs as before,
//! with its values bound into its text.
//!
//! `MEDLAKE_PLAN_CACHE` sets how many plans are kept (1024 by default; `0` or `off` turns it
//! off), least recently used first out. A plan over an older version of a table (or an older
//! access state) than a plan being kept can never be looked up again (lookups see versions only
//! grow) and goes at once, as in the result cache: each plan holds its tables' snapshots, and
//! dead plans of busy tables ageing out only at the 1,024th made the server's memory grow for
//! as long as the cache was filling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use datafusion::logical_expr::LogicalPlan;

use crate::privileges::Need;
use crate::result_cache::{Key, supersedes};

/// The environment variable that sizes the cache, in plans (`0` turns it off).
pub const PLAN_CACHE_VAR: &str = "MEDLAKE_PLAN_CACHE";
/// How many plans are kept when `MEDLAKE_PLAN_CACHE` is not set.
pub const DEFAULT_PLANS: usize = 1024;

/// What the cache knows of a statement's template.
#[derive(Clone)]
pub(crate) enum Planned {
    /// Its protected plan, with placeholders, and the privileges it needs.
    Plan { plan: LogicalPlan, needs: Vec<Need> },
    /// The template does not plan on its own: bind its values into the text instead.
    Unfit,
}

struct Entry {
    planned: Planned,
    used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    tick: u64,
}

/// The engine's plan cache (shared by its sessions).
pub(crate) struct PlanCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Hits and misses of the plan cache since the engine opened, and the plans it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

impl PlanCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The capacity `MEDLAKE_PLAN_CACHE` asks for (a count of plans; anything else is refused).
    pub fn capacity_from_env() -> crate::Result<usize> {
        match std::env::var(PLAN_CACHE_VAR) {
            Ok(text) if text.trim().eq_ignore_ascii_case("off") => Ok(0),
            Ok(text) if !text.trim().is_empty() => {
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| crate::Error::InvalidValue {
                        what: PLAN_CACHE_VAR.to_string(),
                        reason: format!(
                            "'{}' is not a number of plans (or off)",
                            text.chars().take(40).collect::<String>()
                        ),
                    })
            }
            _ => Ok(DEFAULT_PLANS),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Forgets every plan (after an erasure, with the result cache).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.map.clear();
    }

    pub fn stats(&self) -> PlanCacheStats {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        PlanCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries.map.len(),
        }
    }

    /// What is kept for `key`, if anything.
    pub fn get(&self, key: &Key) -> Option<Planned> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.tick += 1;
        let tick = entries.tick;
        let Some(entry) = entries.map.get_mut(key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        entry.used = tick;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.planned.clone())
    }

    /// Keeps `planned` under `key`, forgetting the plans it supersedes (over older versions of
    /// its tables or an older access state) and, to make room, the least recently used plan.
    /// A plan that another kept plan supersedes is not kept.
    pub fn insert(&self, key: Key, planned: Planned) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.tick += 1;
        let used = entries.tick;
        if entries.map.keys().any(|other| supersedes(other, &key)) {
            return;
        }
        entries.map.retain(|other, _| !supersedes(&key, other));
        if !entries.map.contains_key(&key) && entries.map.len() >= self.capacity {
            let oldest = entries
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                entries.map.remove(&oldest);
            }
        }
        entries.map.insert(key, Entry { planned, used });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Key {
        Key {
            sql: sql.into(),
            principal: "p".into(),
            access_version: Some(1),
            settings: 0,
            reads: Vec::new(),
        }
    }

    #[test]
    fn keeps_at_most_its_capacity_least_recently_used_out() {
        let cache = PlanCache::new(2);
        cache.insert(key("a"), Planned::Unfit);
        cache.insert(key("b"), Planned::Unfit);
        assert!(cache.get(&key("a")).is_some());
        cache.insert(key("c"), Planned::Unfit);
        assert!(
            cache.get(&key("b")).is_none(),
            "b was the least recently used"
        );
        assert!(cache.get(&key("a")).is_some());
        assert!(cache.get(&key("c")).is_some());
        assert_eq!(cache.stats().entries, 2);
        cache.clear();
        assert_eq!(cache.stats().entries, 0);
    }

    fn reading(sql: &str, version: u64, access: u64) -> Key {
        Key {
            access_version: Some(access),
            reads: vec![crate::result_cache::Read {
                table: medlake_lake::TableName::new("gold", "t").unwrap(),
                id: "delta-id".into(),
                version,
            }],
            ..key(sql)
        }
    }

    #[test]
    fn a_plan_over_a_newer_version_retires_the_older_ones_at_once() {
        let cache = PlanCache::new(1024);
        cache.insert(reading("a", 1, 1), Planned::Unfit);
        cache.insert(reading("b", 1, 1), Planned::Unfit);
        cache.insert(key("unrelated"), Planned::Unfit);
        assert_eq!(cache.stats().entries, 3);
        // A commit to gold.t: the next plan over it retires every plan of its older version.
        cache.insert(reading("a", 2, 1), Planned::Unfit);
        assert_eq!(cache.stats().entries, 2);
        assert!(cache.get(&reading("b", 1, 1)).is_none());
        assert!(cache.get(&reading("a", 2, 1)).is_some());
        assert!(cache.get(&key("unrelated")).is_some());
        // A plan that is already stale (planned from an older snapshot) is not kept.
        cache.insert(reading("b", 1, 1), Planned::Unfit);
        assert!(cache.get(&reading("b", 1, 1)).is_none());
        // A newer access state (a grant, a mask) retires plans of the older one.
        cache.insert(reading("c", 2, 2), Planned::Unfit);
        assert!(cache.get(&reading("a", 2, 1)).is_none());
        assert_eq!(
            cache.stats().entries,
            1,
            "only c: the others saw access state 1"
        );
    }

    #[test]
    fn a_cache_of_size_zero_keeps_nothing() {
        let cache = PlanCache::new(0);
        assert!(!cache.enabled());
        cache.insert(key("a"), Planned::Unfit);
        assert!(cache.get(&key("a")).is_none());
    }
}
