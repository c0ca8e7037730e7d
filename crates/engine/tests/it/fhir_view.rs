//! `CREATE MATERIALIZED VIEW ... AS FHIR VIEW '<ViewDefinition>' FROM t`: SQL-on-FHIR v2
//! views over resources kept as JSON text, through the engine: created, refreshed
//! incrementally (appends and deletes), shown as written, refused when invalid, and the
//! `fhir_view()` function on its own.

use arrow::array::{Array, Float64Array, StringArray};
use arrow::datatypes::DataType;
use medlake_engine::{Code, Engine};

use crate::{count, scratch};

/// Vital signs from Observations: one row per coding (forEach), the value as DOUBLE, the
/// patient's key from the subject reference, a where on the status.
const VITALS: &str = r#"{
  "resourceType": "ViewDefinition",
  "name": "fhir_vitals",
  "resource": "Observation",
  "status": "active",
  "constant": [{"name": "mdc", "valueUri": "urn:iso:std:iso:11073:10101"}],
  "where": [{"path": "status = 'final' or status = 'amended'"}],
  "select": [
    {"column": [
      {"name": "id", "path": "getResourceKey()", "type": "id"},
      {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "id"},
      {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
      {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
      {"name": "unit", "path": "value.ofType(Quantity).code", "type": "code"}
    ]},
    {"forEach": "code.coding.where(system = %mdc)",
     "column": [{"name": "mdc_code", "path": "code", "type": "code"}]}
  ]
}"#;

fn observation(id: &str, patient: &str, code: &str, value: f64, status: &str) -> String {
    serde_json::json!({
        "resourceType": "Observation",
        "id": id,
        "status": status,
        "code": {"coding": [
            {"system": "urn:iso:std:iso:11073:10101", "code": code},
            {"system": "http://loinc.org", "code": "8867-4"}
        ]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-12-04T10:00:00+01:00",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
    .to_string()
}

async fn insert(engine: &Engine, rows: &[(&str, String)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, json)| format!("('Observation', '{id}', '{}')", json.replace('\'', "''")))
        .collect();
    engine
        .sql(&format!(
            "INSERT INTO bronze.fhir_observations VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
}

async fn vitals(engine: &Engine) -> Vec<String> {
    let batches = engine
        .query("SELECT id, patient_id, effective, value, unit, mdc_code FROM silver.fhir_vitals ORDER BY id")
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let text = |i: usize| {
            let a = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            a.as_any().downcast_ref::<StringArray>().unwrap().clone()
        };
        let values = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        for r in 0..b.num_rows() {
            out.push(format!(
                "{} {} {} {} {} {}",
                text(0).value(r),
                text(1).value(r),
                text(2).value(r),
                values.value(r),
                text(4).value(r),
                text(5).value(r)
            ));
        }
    }
    out
}

/// The first row's first column, as text.
fn first_text(b: &[arrow::array::RecordBatch]) -> String {
    let a = arrow::compute::cast(b[0].column(0), &DataType::Utf8).unwrap();
    a.as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_owned()
}

async fn last_mode(engine: &Engine) -> String {
    let b = engine
        .query("SELECT mode FROM system.refreshes WHERE view = 'silver.fhir_vitals' ORDER BY started DESC LIMIT 1")
        .await
        .unwrap();
    first_text(&b)
}

#[tokio::test]
async fn fhir_view_materialized_view_refreshes_incrementally() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.fhir_observations (resource_type STRING NOT NULL, id STRING NOT NULL, resource STRING)")
        .await
        .unwrap();
    insert(
        &engine,
        &[
            ("o1", observation("o1", "p1", "149530", 72.0, "final")),
            ("o2", observation("o2", "p2", "149530", 88.5, "preliminary")),
        ],
    )
    .await;
    engine
        .sql(&format!(
            "CREATE MATERIALIZED VIEW silver.fhir_vitals AS FHIR VIEW '{}' FROM bronze.fhir_observations",
            VITALS.replace('\'', "''")
        ))
        .await
        .unwrap();
    assert_eq!(
        vitals(&engine).await,
        ["o1 p1 2026-12-04T10:00:00+01:00 72 /min 149530"],
        "o2 is preliminary: the where drops it"
    );
    // The columns are typed as the definition says.
    let b = engine
        .query("SELECT * FROM silver.fhir_vitals LIMIT 1")
        .await
        .unwrap();
    // (Text reads back as Utf8 or Utf8View, as the lake's scan chooses.)
    let types: Vec<DataType> = b[0]
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => DataType::Utf8,
            other => other.clone(),
        })
        .collect();
    assert_eq!(
        types,
        [
            DataType::Utf8,
            DataType::Utf8,
            DataType::Utf8,
            DataType::Float64,
            DataType::Utf8,
            DataType::Utf8
        ]
    );

    // Appends refresh incrementally; a Patient in the same table gives no rows.
    insert(
        &engine,
        &[("o3", observation("o3", "p1", "150456", 97.0, "amended"))],
    )
    .await;
    engine
        .sql(r#"INSERT INTO bronze.fhir_observations VALUES ('Patient', 'p1', '{"resourceType":"Patient","id":"p1"}')"#)
        .await
        .unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.fhir_vitals")
        .await
        .unwrap();
    assert_eq!(last_mode(&engine).await, "incremental");
    assert_eq!(
        vitals(&engine).await,
        [
            "o1 p1 2026-12-04T10:00:00+01:00 72 /min 149530",
            "o3 p1 2026-12-04T10:00:00+01:00 97 /min 150456"
        ]
    );

    // A deleted resource leaves the view, and the incremental result equals a full one.
    engine
        .sql("DELETE FROM bronze.fhir_observations WHERE id = 'o1'")
        .await
        .unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.fhir_vitals")
        .await
        .unwrap();
    let after_delete = vitals(&engine).await;
    assert_eq!(
        after_delete,
        ["o3 p1 2026-12-04T10:00:00+01:00 97 /min 150456"]
    );
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.fhir_vitals FULL")
        .await
        .unwrap();
    assert_eq!(vitals(&engine).await, after_delete);

    // The view shows what was written, and its lineage names the bronze table.
    let b = engine
        .query("SELECT definition FROM system.materialized_views WHERE name = 'fhir_vitals'")
        .await
        .unwrap();
    let definition = first_text(&b);
    assert!(
        definition.contains("AS FHIR VIEW '{")
            && definition.contains("FROM bronze.fhir_observations"),
        "{definition}"
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM system.lineage WHERE view = 'silver.fhir_vitals' AND input = 'bronze.fhir_observations'").await,
        1
    );
}

#[tokio::test]
async fn invalid_view_definitions_are_refused_with_the_reason() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.fhir (resource STRING, other STRING)")
        .await
        .unwrap();
    let create = |body: &str| {
        format!("CREATE MATERIALIZED VIEW silver.v AS FHIR VIEW '{body}' FROM bronze.fhir")
    };
    for (body, says) in [
        ("not json", "not JSON"),
        (
            r#"{"select": [{"column": [{"name": "id", "path": "id"}]}]}"#,
            "needs resource",
        ),
        (
            r#"{"resource": "Patient", "select": [{"column": [{"name": "id", "path": "name.("}]}]}"#,
            "FHIRPath",
        ),
        (
            r#"{"resource": "Patient", "select": [{"column": [{"name": "id", "path": "%nope"}]}]}"#,
            "%nope",
        ),
        (
            r#"{"resource": "Patient", "select": [{"column": [{"name": "x-y", "path": "id"}]}]}"#,
            "column name",
        ),
    ] {
        let e = engine.sql(&create(body)).await.unwrap_err();
        assert_eq!(e.code(), Code::SyntaxError, "{body}: {e}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
    let e = engine
        .sql(r#"CREATE MATERIALIZED VIEW silver.v AS FHIR VIEW '{"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}' FROM bronze.fhir COLUMN nope"#)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // COLUMN names the column with the JSON; a resource that breaks a rule names itself.
    engine
        .sql(r#"INSERT INTO bronze.fhir VALUES (NULL, '{"resourceType": "Patient", "id": "p9", "name": [{"family": "a"}, {"family": "b"}]}')"#)
        .await
        .unwrap();
    let e = engine
        .sql(r#"CREATE MATERIALIZED VIEW silver.v AS FHIR VIEW '{"resource": "Patient", "select": [{"column": [{"name": "family", "path": "name.family"}]}]}' FROM bronze.fhir COLUMN other"#)
        .await
        .unwrap_err();
    let e = medlake_common::error_chain(&e);
    assert!(e.contains("Patient/p9") && e.contains("collection"), "{e}");
}

#[tokio::test]
async fn fhir_view_function_answers_ad_hoc_queries() {
    let (_dir, engine) = scratch().await;
    let sql = r#"SELECT r['given'] AS given FROM (SELECT unnest(fhir_view(
        '{"resourceType": "Patient", "id": "p1", "name": [{"given": ["Ann", "Marie"]}, {"given": ["Annie"]}]}',
        '{"resource": "Patient", "select": [{"forEach": "name.given", "column": [{"name": "given", "path": "$this", "type": "string"}]}]}'
    )) AS r) ORDER BY given"#;
    let b = engine.query(sql).await.unwrap();
    let given = b[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(
        (0..given.len()).map(|i| given.value(i)).collect::<Vec<_>>(),
        ["Ann", "Annie", "Marie"]
    );
    // The definition must be a literal: its columns are the function's type.
    let e = engine
        .query("SELECT fhir_view('{}', concat('{', '}'))")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("string literal"), "{e}");
}

/// A mask on the JSON column follows a FHIR VIEW's lineage: every column computed from the
/// masked resource is NULL for a reader the mask holds for, real for one it is lifted for;
/// a creator who sees only the mask cannot define the view at all.
#[tokio::test]
async fn a_mask_on_the_resources_follows_the_fhir_view() {
    use medlake_engine::{Principal, Role};
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.fhir_observations (resource_type STRING NOT NULL, id STRING NOT NULL, resource STRING);
             CREATE ROLE clinician; CREATE ROLE analyst;
             GRANT USAGE ON SCHEMA bronze TO clinician, analyst;
             GRANT SELECT ON TABLE bronze.fhir_observations TO clinician, analyst;
             GRANT USAGE, CREATE ON SCHEMA silver TO analyst;
             ALTER TABLE bronze.fhir_observations ALTER COLUMN resource
                 SET MASK CASE WHEN is_member('clinician') THEN resource ELSE NULL END",
        )
        .await
        .unwrap();
    insert(
        &engine,
        &[("o1", observation("o1", "p1", "149530", 72.0, "final"))],
    )
    .await;
    let create = format!(
        "CREATE MATERIALIZED VIEW silver.fhir_vitals AS FHIR VIEW '{}' FROM bronze.fhir_observations",
        VITALS.replace('\'', "''")
    );
    let user = |name: &str, role: &str| {
        let mut principal = Principal::user(name, Role::None);
        principal.roles.insert(role.to_owned());
        engine.session_for(principal)
    };
    let analyst = user("ann", "analyst");
    let clinician = user("cleo", "clinician");
    // The analyst sees only the mask: defining a view over the real JSON is refused.
    assert_eq!(crate::outcome(&analyst, &create).await, "42501");
    engine.sql(&create).await.unwrap();
    engine
        .sql("GRANT USAGE ON SCHEMA silver TO clinician; GRANT SELECT ON TABLE silver.fhir_vitals TO clinician, analyst")
        .await
        .unwrap();
    let read = "SELECT count(*) AS n, count(patient_id) AS patients, count(value) AS vals FROM silver.fhir_vitals";
    let counts = |b: Vec<arrow::array::RecordBatch>| -> Vec<i64> {
        (0..3)
            .map(|i| {
                b[0].column(i)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect()
    };
    assert_eq!(counts(clinician.query(read).await.unwrap()), [1, 1, 1]);
    let masked = analyst.query(read).await.unwrap();
    assert_eq!(counts(masked), [1, 0, 0], "the analyst reads NULLs");
}
