//! The published SQL-on-FHIR v2 test cases (`tests/spec/*.json`, copied from
//! github.com/FHIR/sql-on-fhir-v2 at the commit named in `tests/spec/README.md`), each run
//! two ways: through SQL (`view_query` planned and executed by DataFusion over an in-memory
//! table of the resources' JSON text: what a materialized view runs) and through
//! `ViewDefinition::rows` directly. Every test tagged `shareable` must pass both ways; the
//! others are run and reported, and the ones we do not support are listed with a reason.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use medlake_fhir::{Cell, ViewDefinition, fhir_view_udf, view_query};
use serde_json::{Map, Value};

/// Tests we do not pass, with the reason (all tagged `experimental` in the specification).
const UNSUPPORTED: &[(&str, &str)] = &[];

fn spec_dir() -> PathBuf {
    // Cargo sets CARGO_MANIFEST_DIR when it runs a test too: that one names this clone even
    // when a shared target folder holds a binary built from another clone's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/spec")
}

/// Numbers compare by value (5 and 5.0 are the same), objects by key, arrays in order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Two row sets equal as multisets.
fn same_rows(got: &[Value], want: &[Value]) -> bool {
    if got.len() != want.len() {
        return false;
    }
    let mut unused: Vec<&Value> = want.iter().collect();
    got.iter()
        .all(|g| match unused.iter().position(|w| same(g, w)) {
            Some(i) => {
                unused.swap_remove(i);
                true
            }
            None => false,
        })
}

fn cell_json(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Int(i) => Value::from(*i),
        Cell::Dec(d) => Value::from(*d),
        Cell::Text(s) => Value::String(s.clone()),
        Cell::List(items) => Value::Array(items.iter().map(cell_json).collect()),
    }
}

/// The rows `ViewDefinition::rows` gives, as JSON objects, and the column names.
fn direct(view: &Value, resources: &[Value]) -> Result<(Vec<String>, Vec<Value>), String> {
    let view = ViewDefinition::from_json(view).map_err(|e| e.to_string())?;
    let names: Vec<String> = view.columns().iter().map(|c| c.name.clone()).collect();
    let mut rows = Vec::new();
    for r in resources {
        for row in view.rows(r).map_err(|e| e.to_string())? {
            let object: Map<String, Value> = names
                .iter()
                .cloned()
                .zip(row.iter().map(cell_json))
                .collect();
            rows.push(Value::Object(object));
        }
    }
    Ok((names, rows))
}

/// The rows the compiled SQL gives, as JSON objects, and the column names.
async fn through_sql(
    view: &Value,
    resources: &[Value],
) -> Result<(Vec<String>, Vec<Value>), String> {
    let sql = view_query(&view.to_string(), "resources", "resource").map_err(|e| e.to_string())?;
    let ctx = SessionContext::new();
    ctx.register_udf(fhir_view_udf());
    let schema = Arc::new(Schema::new(vec![Field::new(
        "resource",
        DataType::Utf8,
        true,
    )]));
    let texts: StringArray = resources.iter().map(|r| Some(r.to_string())).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(texts)]).map_err(|e| e.to_string())?;
    let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(|e| e.to_string())?;
    ctx.register_table("resources", Arc::new(table))
        .map_err(|e| e.to_string())?;
    let df = ctx.sql(&sql).await.map_err(|e| e.to_string())?;
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        writer.write(b).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner();
    let rows: Vec<Value> = if bytes.is_empty() {
        vec![]
    } else {
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
    };
    // The JSON writer leaves NULL columns out: put them back.
    let rows = rows
        .into_iter()
        .map(|r| {
            let mut object = r.as_object().cloned().unwrap_or_default();
            for n in &names {
                object.entry(n.clone()).or_insert(Value::Null);
            }
            Value::Object(object)
        })
        .collect();
    Ok((names, rows))
}

/// Runs one test case both ways: `Ok` when both pass, else why.
async fn run_case(case: &Value, resources: &[Value]) -> Result<(), String> {
    let view = &case["view"];
    let results = [
        ("direct", direct(view, resources)),
        ("sql", through_sql(view, resources).await),
    ];
    for (how, result) in results {
        if case.get("expectError").is_some() {
            if let Ok((_, rows)) = result {
                return Err(format!("{how}: expected an error, got {rows:?}"));
            }
            continue;
        }
        let (names, rows) = result.map_err(|e| format!("{how}: {e}"))?;
        if let Some(columns) = case.get("expectColumns").and_then(Value::as_array) {
            let want: Vec<&str> = columns.iter().filter_map(Value::as_str).collect();
            if names != want {
                return Err(format!("{how}: columns {names:?}, expected {want:?}"));
            }
        }
        if let Some(want) = case.get("expect").and_then(Value::as_array)
            && !same_rows(&rows, want)
        {
            return Err(format!("{how}: rows {rows:?}\n  expected {want:?}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn specification_test_cases() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spec_dir())
        .expect("tests/spec")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "the specification's test files are there"
    );
    let (mut passed, mut failed_shareable, mut other) = (0, Vec::new(), Vec::new());
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let suite: Value =
            serde_json::from_slice(&std::fs::read(file).expect("read")).expect("json");
        let resources = suite["resources"].as_array().cloned().unwrap_or_default();
        for case in suite["tests"].as_array().expect("tests") {
            let title = case["title"].as_str().unwrap_or("?");
            let shareable = case["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "shareable"));
            match run_case(case, &resources).await {
                Ok(()) => passed += 1,
                Err(why) if shareable => failed_shareable.push(format!("{name} / {title}: {why}")),
                Err(why) => other.push((name.clone(), format!("{title}: {why}"))),
            }
        }
    }
    for (file, why) in &other {
        let listed = UNSUPPORTED.iter().any(|(f, _)| f == file);
        println!(
            "not shareable, not passed ({}): {file} / {why}",
            if listed { "listed" } else { "UNLISTED" }
        );
    }
    println!(
        "{passed} passed, {} shareable failed, {} others not passed",
        failed_shareable.len(),
        other.len()
    );
    assert!(
        failed_shareable.is_empty(),
        "shareable tests failed:\n{}",
        failed_shareable.join("\n")
    );
    let unlisted: Vec<_> = other
        .iter()
        .filter(|(f, _)| !UNSUPPORTED.iter().any(|(u, _)| u == f))
        .collect();
    assert!(
        unlisted.is_empty(),
        "tests not passed and not listed in UNSUPPORTED: {unlisted:?}"
    );
    assert!(passed >= 134, "only {passed} cases passed");
}
