//! `medlake-common`: what every layer of medlake shares and nothing else.
//!
//! - [`Code`]: the one table of failure kinds and their Postgres SQLSTATE. Every error of
//!   every crate reports a `Code`; each door translates `Code` once, exhaustively (the
//!   Postgres wire sends [`Code::sqlstate`], Flight SQL maps it to a gRPC status, HTTP to a
//!   status code). No SQLSTATE is spelled anywhere else.
//! - [`redact`]: a location as it may be shown (no password, no query string).
//! - [`memory`]: the allocator's statistics, when the binary registered a probe.
//! - `local_io` (feature `local-io`): local file stores whose operations run on a fixed pool
//!   of I/O threads.
//!
//! It depends on no other medlake crate.

mod code;
mod error;
#[cfg(feature = "local-io")]
pub mod local_io;
pub mod memory;
mod redact;

pub use code::Code;
pub use error::error_chain;
pub use redact::redact;
