//! Integration tests of the audit log on real Delta tables in temporary folders.

mod support;
