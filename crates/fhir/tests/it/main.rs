//! medlake-fhir's tests: the SQL-on-FHIR v2 specification's own test cases (`spec.rs`) and
//! our own (`paths.rs`: FHIRPath; `hostile.rs`: input that must never panic).

mod hostile;
mod paths;
// The specification's cases run through fhir_view() in DataFusion.
#[cfg(feature = "udf")]
mod spec;
