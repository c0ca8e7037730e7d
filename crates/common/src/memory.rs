//! The process's allocator statistics, as the binary that chose the allocator reports them.
//!
//! The `medlake` binary uses jemalloc and registers a probe at start ([`set_probe`]); the
//! engine's `/metrics` series read it ([`probe`]). Libraries and tests that run on the system
//! allocator have none, and the series are then absent.

use std::sync::OnceLock;

/// Named byte counts (`allocated`, `resident`, ...), read when called.
pub type Probe = fn() -> Vec<(&'static str, u64)>;

static PROBE: OnceLock<Probe> = OnceLock::new();

/// Registers the process's probe; a second registration is ignored.
pub fn set_probe(probe: Probe) {
    let _ = PROBE.set(probe);
}

/// The registered probe's figures now (none without a probe).
pub fn probe() -> Vec<(&'static str, u64)> {
    PROBE.get().map(|probe| probe()).unwrap_or_default()
}
