//! SQL-on-FHIR v2 for medlake: a FHIR resource's JSON text, kept as it came in bronze,
//! becomes rows through an HL7 SQL-on-FHIR v2 `ViewDefinition`
//! (<https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/>).
//!
//! - [`path`]: the FHIRPath subset ViewDefinitions use, parsed once and evaluated over
//!   `serde_json` values without copying them.
//! - [`view`]: the ViewDefinition itself (`select`, `column`, `forEach`, `forEachOrNull`,
//!   `repeat`, `unionAll`, `where`, `constant`), checked when it is read.
//! - `udf` (feature `udf`, on by default): `fhir_view(resource, '<ViewDefinition>')`, the
//!   SQL function a `CREATE MATERIALIZED VIEW ... AS FHIR VIEW '...' FROM t` is compiled to
//!   (see [`view_query`]).
//!
//! Pure: `serde_json`, and DataFusion for the function; no I/O. Without the `udf` feature
//! nothing here depends on Arrow or DataFusion (the light fuzz targets, `fuzz/light/`).

pub mod path;
#[cfg(feature = "udf")]
pub mod udf;
pub mod view;

#[cfg(feature = "udf")]
pub use udf::fhir_view_udf;
pub use view::{Cell, Column, ColumnType, ViewDefinition};

/// The SQL name of the `fhir_view()` function.
pub const FHIR_VIEW: &str = "fhir_view";

/// Why a ViewDefinition or a path was refused, or failed on a resource.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The definition (or a path in it) is not valid: found when it is read.
    #[error("invalid ViewDefinition: {0}")]
    Invalid(String),
    /// A path failed on a resource (a single-valued column with several values, a `where`
    /// that is not boolean, a value of the wrong type).
    #[error("{0}")]
    Eval(String),
}

/// The SQL a ViewDefinition over `source` (a table whose `resource` column holds each
/// resource's JSON text) compiles to: one row per row of the view, columns named and typed
/// as the definition says. `source` is already a SQL name (quoted where needed); the
/// definition is checked here.
pub fn view_query(definition: &str, source: &str, resource_column: &str) -> Result<String, Error> {
    let view = ViewDefinition::parse(definition)?;
    let literal = definition.replace('\'', "''");
    let column = quote(resource_column);
    let columns: Vec<String> = view
        .columns()
        .iter()
        .map(|c| format!("\"fhir_row\"['{}'] AS \"{}\"", c.name, c.name))
        .collect();
    Ok(format!(
        "SELECT {} FROM (SELECT unnest({FHIR_VIEW}({column}, '{literal}')) AS \"fhir_row\" FROM {source}) AS \"fhir_rows\"",
        columns.join(", ")
    ))
}

/// `name` as a SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
