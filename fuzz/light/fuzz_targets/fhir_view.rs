//! A SQL-on-FHIR ViewDefinition over a FHIR resource, as `fhir_view()` evaluates it for
//! each row of a bronze table. The input is the definition's JSON, a NUL byte, and the
//! resource's JSON (a fixed Patient when that part is not a JSON value, with its
//! `resourceType` set to the view's resource). Nothing may panic, the work is bounded (the
//! view's [`Budget`] and row limit), and what `fhir_view()` builds its Arrow arrays from
//! holds: every row has one cell per column, of the column's type (a list of that type for
//! a collection), the same rows each time, and the SQL the view compiles to names only
//! checked column names.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medlake_fhir::{Cell, ColumnType, ViewDefinition, view_query};
use serde_json::{Value, json};

static PATIENT: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [
            {"use": "official", "family": "Doe", "given": ["Jane", "Q"]},
            {"use": "nickname", "given": ["JD"]}
        ],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "birthDate": "1970-01-01",
        "multipleBirthInteger": 2,
        "extension": [{"url": "http://example.org/weight", "valueDecimal": 70.5}],
        "contact": [{"name": {"family": "Roe"}, "telecom": [{"value": "x"}]}]
    })
});

fuzz_target!(|data: &[u8]| {
    let (definition, resource) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(definition) = std::str::from_utf8(definition) else {
        return;
    };
    let Ok(view) = ViewDefinition::parse(definition) else {
        return;
    };
    let columns = view.columns();
    for c in &columns {
        let mut chars = c.name.chars();
        assert!(
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "column name {:?} reaches the SQL unquoted",
            c.name
        );
    }
    assert!(view.resource().chars().all(|c| c.is_ascii_alphanumeric()));
    view_query(definition, "\"bronze\".\"fhir\"", "resource").expect("a checked view compiles");
    let resource = match serde_json::from_slice::<Value>(resource) {
        Ok(v) => v,
        Err(_) => {
            let mut p = PATIENT.clone();
            p["resourceType"] = json!(view.resource());
            p
        }
    };
    let Ok(rows) = view.rows(&resource) else {
        return;
    };
    for row in &rows {
        assert_eq!(
            row.len(),
            columns.len(),
            "a row of {} cells for {} columns",
            row.len(),
            columns.len()
        );
        for (cell, column) in row.iter().zip(&columns) {
            let ok = match (cell, column.collection) {
                (Cell::List(items), true) => items.iter().all(|i| fits(i, column.ty)),
                (Cell::Null, false) => true,
                (cell, false) => fits(cell, column.ty),
                (_, true) => false,
            };
            assert!(
                ok,
                "column {} ({:?}, collection {}) got {cell:?}",
                column.name, column.ty, column.collection
            );
        }
    }
    assert_eq!(
        view.rows(&resource).ok(),
        Some(rows),
        "the same resource gave other rows"
    );
});

/// Whether a (non-null) cell is a value of the column type, as `fhir_view()`'s arrays take
/// it (anything else would become NULL there without a word).
fn fits(cell: &Cell, ty: ColumnType) -> bool {
    matches!(
        (cell, ty),
        (Cell::Bool(_), ColumnType::Boolean)
            | (Cell::Int(_), ColumnType::Integer)
            | (Cell::Dec(_), ColumnType::Decimal)
            | (Cell::Text(_), ColumnType::Text)
    )
}
