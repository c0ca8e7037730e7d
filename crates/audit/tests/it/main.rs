//! Integration tests of the audit log on real Delta tables in temporary folders.

mod chain;
mod fail_closed;
mod sigkill;
mod support;
mod tamper;
