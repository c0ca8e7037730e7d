//! medlake-fhir's tests: the SQL-on-FHIR v2 specification's own test cases (`spec.rs`) and
//! our own (`paths.rs`: FHIRPath; `hostile.rs`: input that must never panic).

mod hostile;
mod paths;
mod spec;
