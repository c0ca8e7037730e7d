//! Integration tests: tiberius (the client medlake's SQL Server connector uses) against the
//! TDS test server over loopback. Every server binds 127.0.0.1:0 and stops when dropped.

mod common;
mod faults;
mod login;
mod params;
mod queries;
mod smoke;
mod tracking;
mod types;
