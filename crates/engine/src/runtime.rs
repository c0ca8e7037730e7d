//! The engine's DataFusion runtime: how much memory queries, refreshes and writes may hold, and
//! where they spill when they need more.
//!
//! Without settings the memory pool is unbounded (DataFusion's default). `MEDLAKE_MEMORY_LIMIT`
//! (`512MB`, `2GiB`, `1073741824`; K, M, G, T are powers of 1024, as in PostgreSQL's settings)
//! bounds the memory that DataFusion's operators account for, shared by every session of the
//! process; sorts, aggregations, sort-merge joins and the like then spill to temporary files
//! under `MEDLAKE_SPILL_DIR` (default: the system's temporary folder) instead of failing. What
//! cannot spill (a hash join's build side, say) fails with `53200` when it does not fit.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

use crate::{Error, Result};

/// The environment variable that bounds the engine's memory.
pub const MEMORY_LIMIT_VAR: &str = "MEDLAKE_MEMORY_LIMIT";
/// The environment variable naming the folder for spill files.
pub const SPILL_DIR_VAR: &str = "MEDLAKE_SPILL_DIR";

/// Memory and spill settings of an [`crate::Engine`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Bytes the memory pool hands out; `None`: unbounded.
    pub memory_limit: Option<usize>,
    /// Where spill files go; `None`: the system's temporary folder.
    pub spill_dir: Option<PathBuf>,
}

impl RuntimeSettings {
    /// Reads `MEDLAKE_MEMORY_LIMIT` and `MEDLAKE_SPILL_DIR`; an unreadable limit is refused.
    pub fn from_env() -> Result<Self> {
        let memory_limit = match std::env::var(MEMORY_LIMIT_VAR) {
            Ok(text) if !text.trim().is_empty() => {
                Some(parse_bytes(&text).map_err(|reason| Error::InvalidValue {
                    what: MEMORY_LIMIT_VAR.to_string(),
                    reason,
                })?)
            }
            _ => None,
        };
        let spill_dir = std::env::var_os(SPILL_DIR_VAR)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            memory_limit,
            spill_dir,
        })
    }

    /// These settings, with a memory limit of half the machine's memory when none is set:
    /// what `medlake serve` runs with, so that no query or refresh can take the whole host.
    pub fn or_default_limit(mut self) -> Self {
        if self.memory_limit.is_none() {
            self.memory_limit = physical_memory().map(|bytes| bytes / 2);
        }
        self
    }

    /// The DataFusion runtime: a fair spill pool of `memory_limit` bytes (each spilling
    /// operator gets an equal share of what the others do not hold) that names its five largest
    /// consumers when it refuses memory, spill files in `spill_dir`, and a bounded local store.
    pub fn runtime_env(&self) -> Result<Arc<RuntimeEnv>> {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            builder = builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(limit),
                NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
            )));
        }
        if let Some(dir) = &self.spill_dir {
            builder = builder.with_temp_file_path(dir);
        }
        let env = builder.build_arc()?;
        // Files DataFusion reads by a file:// URL share the process's bound on local I/O
        // (its default local store would spawn a blocking thread per read in flight).
        if let Ok(local) = url::Url::parse("file://") {
            env.register_object_store(
                &local,
                medlake_common::local_io::bounded(Arc::new(
                    datafusion::object_store::local::LocalFileSystem::new(),
                )),
            );
        }
        Ok(env)
    }
}

/// `1073741824`, `512MB`, `512M`, `2GiB`, `1.5 GB` (case-insensitive; K, M, G, T with an
/// optional `B` or `iB` are powers of 1024).
pub fn parse_bytes(text: &str) -> std::result::Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 512MB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use B, KB, MB, GB or TB)"
            ));
        }
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(format!("'{text}' is not a usable memory size"));
    }
    Ok(bytes as usize)
}

/// The machine's memory in bytes (Linux `/proc/meminfo`), if known.
fn physical_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes(" 2GiB "), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5 GB"), Ok(3 << 29));
        assert_eq!(parse_bytes("64kB"), Ok(64 << 10));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("12 apples").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn a_limit_bounds_the_pool() {
        let settings = RuntimeSettings {
            memory_limit: Some(64 << 20),
            spill_dir: None,
        };
        let env = settings.runtime_env().expect("runtime");
        assert!(matches!(
            env.memory_pool.memory_limit(),
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) if n == 64 << 20
        ));
        let unbounded = RuntimeSettings::default().runtime_env().expect("runtime");
        assert!(matches!(
            unbounded.memory_pool.memory_limit(),
            datafusion::execution::memory_pool::MemoryLimit::Infinite
        ));
    }
}
