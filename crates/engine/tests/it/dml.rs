//! DELETE, UPDATE and MERGE (issue 24): privileges, masks and row filters (DML is no oracle
//! and no exfiltration path), the audit, values kept out of the Delta log, deletion vectors.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Output, Principal, Role, Session};

use crate::{outcome, scratch};

fn user(engine: &Engine, name: &str, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, Role::None);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

/// The rows of `sql` as one text table, spaces squeezed.
async fn rows(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The row count a command reports.
async fn changed(session: &Session, sql: &str) -> u64 {
    let mut outputs = session
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    match outputs.pop() {
        Some(Output::Command { rows, .. }) => rows,
        other => panic!("{sql}: {other:?}"),
    }
}

const SETUP: &str = "
    CREATE TABLE silver.patients (id BIGINT NOT NULL, ssn VARCHAR, ward VARCHAR, note VARCHAR);
    INSERT INTO silver.patients VALUES
        (1, '111-11-1111', 'icu', NULL),
        (2, '222-22-2222', 'icu', NULL),
        (3, '333-33-3333', 'cardio', NULL);
    CREATE TABLE silver.notes (id BIGINT, text VARCHAR);
    CREATE ROLE nurse;
    CREATE ROLE records;
    GRANT USAGE ON SCHEMA silver TO nurse, records;
    GRANT SELECT, UPDATE ON TABLE silver.patients TO records;
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE silver.patients TO nurse;
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE silver.notes TO nurse;
    ALTER TABLE silver.patients ALTER COLUMN ssn SET MASK CASE WHEN is_member('records') THEN ssn ELSE '***' END;
    ALTER TABLE silver.patients SET ROW FILTER is_member('records') OR ward = 'icu' ON (ward);
";

/// What is stored (the `records` role lifts the mask and the filter).
async fn stored(engine: &Engine) -> String {
    rows(
        &user(engine, "rita", &["records"]),
        "SELECT id, ssn, ward, note FROM silver.patients ORDER BY id",
    )
    .await
}

#[tokio::test]
async fn dml_predicates_see_masked_values_not_the_stored_ones() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    let before = stored(&engine).await;
    // Guessing a masked value by the row count tells nothing: the predicate reads '***'.
    for sql in [
        "DELETE FROM silver.patients WHERE ssn = '111-11-1111'",
        "DELETE FROM silver.patients WHERE ssn LIKE '1%'",
        "UPDATE silver.patients SET note = 'x' WHERE ssn = '222-22-2222'",
        "UPDATE silver.patients SET note = 'x' WHERE substr(ssn, 1, 1) = '2'",
        "MERGE INTO silver.patients t USING (SELECT '111-11-1111' AS guess) s ON t.ssn = s.guess \
         WHEN MATCHED THEN UPDATE SET note = 'hit'",
        "MERGE INTO silver.patients t USING (SELECT 1 AS id) s ON t.id = s.id AND t.ssn LIKE '1%' \
         WHEN MATCHED THEN DELETE",
    ] {
        assert_eq!(changed(&nurse, sql).await, 0, "{sql}");
    }
    assert_eq!(stored(&engine).await, before, "nothing changed");
    // A predicate on the masked value matches what the nurse sees.
    assert_eq!(
        changed(
            &nurse,
            "UPDATE silver.patients SET note = 'seen' WHERE ssn = '***'"
        )
        .await,
        2,
        "the two icu rows the filter shows"
    );
}

#[tokio::test]
async fn dml_copies_masked_values_never_stored_ones() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    // SET note = ssn copies what the nurse sees; ssn itself keeps its stored value.
    assert_eq!(
        changed(
            &nurse,
            "UPDATE silver.patients SET note = concat('ssn:', ssn)"
        )
        .await,
        2
    );
    // MERGE with the masked table as its source, into an unmasked one.
    assert_eq!(
        changed(
            &nurse,
            "MERGE INTO silver.notes n USING silver.patients p ON n.id = p.id \
             WHEN NOT MATCHED THEN INSERT (id, text) VALUES (p.id, p.ssn)"
        )
        .await,
        2
    );
    // Values of a MERGE's target, read in its SET: masked too.
    assert_eq!(
        changed(
            &nurse,
            "MERGE INTO silver.patients t USING silver.notes n ON t.id = n.id \
             WHEN MATCHED THEN UPDATE SET note = concat(t.ssn, '/', n.text)"
        )
        .await,
        2
    );
    let stored = stored(&engine).await;
    assert!(
        stored.contains("| 1 | 111-11-1111 | icu | ***/*** |"),
        "{stored}"
    );
    assert!(
        stored.contains("| 2 | 222-22-2222 | icu | ***/*** |"),
        "{stored}"
    );
    assert!(
        stored.contains("| 3 | 333-33-3333 | cardio | |"),
        "{stored}"
    );
    let notes = rows(
        &engine.local_session(),
        "SELECT id, text FROM silver.notes ORDER BY id",
    )
    .await;
    assert!(
        !notes.contains("-11-") && !notes.contains("-22-"),
        "{notes}"
    );
    assert!(
        !notes.contains("| 3 |"),
        "a filtered row is not a source row: {notes}"
    );
}

#[tokio::test]
async fn dml_never_touches_rows_a_row_filter_hides() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    assert_eq!(
        changed(&nurse, "UPDATE silver.patients SET note = 'n'").await,
        2
    );
    assert_eq!(
        changed(
            &nurse,
            "UPDATE silver.patients SET ward = 'icu' WHERE ward = 'cardio'"
        )
        .await,
        0
    );
    // NOT MATCHED BY SOURCE does not reach hidden rows; WHEN MATCHED cannot match them.
    assert_eq!(
        changed(
            &nurse,
            "MERGE INTO silver.patients t USING (SELECT 3 AS id UNION ALL SELECT 1) s ON t.id = s.id \
             WHEN MATCHED AND t.id = 3 THEN DELETE \
             WHEN NOT MATCHED BY SOURCE THEN DELETE"
        )
        .await,
        1,
        "row 2 deleted (not in the source), row 3 unseen"
    );
    assert_eq!(changed(&nurse, "DELETE FROM silver.patients").await, 1);
    let stored = stored(&engine).await;
    assert!(
        stored.contains("| 3 | 333-33-3333 | cardio | |") && !stored.contains("| 1 |"),
        "{stored}"
    );
}

#[tokio::test]
async fn dml_predicates_never_run_on_rows_a_row_filter_hides() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    // Errors a predicate raises on a hidden row would tell (a cast quoting it, a division by
    // zero only where a hidden row matches): the predicate sees only the rows shown.
    for sql in [
        "DELETE FROM silver.patients WHERE CAST(ward || '|' || id AS INT) = 1",
        "DELETE FROM silver.patients WHERE CASE WHEN ward = 'cardio' THEN id / (id - id) ELSE 0 END = 1",
        "UPDATE silver.patients SET note = 'x' WHERE CASE WHEN ward = 'cardio' THEN id / (id - id) ELSE 0 END = 1",
        "MERGE INTO silver.patients t USING (SELECT 1 AS id) s \
         ON CASE WHEN t.ward = 'cardio' THEN t.id / (t.id - t.id) ELSE 0 END = s.id \
         WHEN NOT MATCHED AND false THEN INSERT (id) VALUES (s.id)",
    ] {
        let result = nurse.sql(sql).await;
        if let Err(e) = &result {
            let text = e.to_string();
            assert!(
                !text.contains("cardio") && !text.to_lowercase().contains("divide by zero"),
                "{sql}: {text}"
            );
        }
    }
    let stored = stored(&engine).await;
    assert!(stored.contains("| 3 | 333-33-3333 | cardio |"), "{stored}");
}

#[tokio::test]
async fn dml_needs_select_and_the_privileges_of_what_it_does() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE silver.t (id BIGINT, v VARCHAR); INSERT INTO silver.t VALUES (1, 'a');
             CREATE TABLE silver.src (id BIGINT, v VARCHAR); INSERT INTO silver.src VALUES (1, 'b'), (2, 'c');
             CREATE ROLE eraser; CREATE ROLE updater; CREATE ROLE blind;
             GRANT USAGE ON SCHEMA silver TO eraser, updater, blind;
             GRANT DELETE ON TABLE silver.t TO eraser;
             GRANT SELECT, UPDATE ON TABLE silver.t TO updater;
             GRANT SELECT ON TABLE silver.src TO updater;
             GRANT UPDATE, INSERT, DELETE ON TABLE silver.t TO blind;
             GRANT SELECT ON TABLE silver.src TO blind;",
        )
        .await
        .unwrap();
    let eraser = user(&engine, "erin", &["eraser"]);
    let updater = user(&engine, "ulla", &["updater"]);
    let blind = user(&engine, "bo", &["blind"]);
    // DELETE/UPDATE read their table: SELECT as well.
    assert_eq!(
        outcome(&eraser, "DELETE FROM silver.t WHERE v = 'a'").await,
        "42501"
    );
    assert_eq!(
        outcome(&updater, "DELETE FROM silver.t WHERE v = 'a'").await,
        "42501"
    );
    let merge = |clauses: &str| {
        format!("MERGE INTO silver.t t USING silver.src s ON t.id = s.id {clauses}")
    };
    // MERGE: SELECT on target and source, and only the privileges of its clause kinds.
    assert_eq!(
        outcome(&updater, &merge("WHEN MATCHED THEN UPDATE SET v = s.v")).await,
        "ok"
    );
    assert_eq!(
        outcome(
            &updater,
            &merge("WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)")
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(&updater, &merge("WHEN MATCHED THEN DELETE")).await,
        "42501"
    );
    assert_eq!(
        outcome(&blind, &merge("WHEN MATCHED THEN DELETE")).await,
        "42501",
        "no SELECT on the target"
    );
    assert_eq!(
        outcome(
            &updater,
            "MERGE INTO silver.t t USING silver.patients_nowhere s ON t.id = s.id WHEN MATCHED THEN DELETE"
        )
        .await,
        "42P01"
    );
    let v = rows(&engine.local_session(), "SELECT id, v FROM silver.t").await;
    assert!(v.contains("| 1 | b |") && !v.contains("| 2 |"), "{v}");
}

#[tokio::test]
async fn a_masked_principal_cannot_rewrite_rows_under_check_constraints() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    // A CHECK constraint that reads the masked column (as another Delta engine may write).
    let table = engine
        .warehouse()
        .open_table(&medlake_engine::TableName::new("silver", "patients").unwrap())
        .await
        .unwrap();
    table
        .add_constraint()
        .with_constraint("note_is_not_ssn", "note IS NULL OR note <> ssn")
        .await
        .unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    // UPDATE SET note = '<guess>' would be refused exactly when the guess is right.
    assert_eq!(
        outcome(
            &nurse,
            "UPDATE silver.patients SET note = '111-11-1111' WHERE id = 1"
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(
            &nurse,
            "MERGE INTO silver.patients t USING (SELECT 1 AS id) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET note = '111-11-1111'"
        )
        .await,
        "42501"
    );
    // Deleting rewrites no row: allowed. An unmasked update is checked by the constraint.
    assert_eq!(
        outcome(&nurse, "DELETE FROM silver.patients WHERE id = 2").await,
        "ok"
    );
    let err = user(&engine, "rita", &["records"])
        .sql("UPDATE silver.patients SET note = ssn WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "23514", "{err}");
    assert!(!err.to_string().contains("111-11"), "no row preview: {err}");
}

#[tokio::test]
async fn dml_is_audited_with_what_it_wrote() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql("CREATE ROLE aud; GRANT auditor TO aud")
        .await
        .unwrap();
    let nurse = user(&engine, "nina", &["nurse"]);
    let auditor = user(&engine, "audrey", &["auditor"]);
    changed(&nurse, "DELETE FROM silver.patients WHERE id = 2").await;
    changed(
        &nurse,
        "MERGE INTO silver.notes n USING silver.patients p ON n.id = p.id \
         WHEN NOT MATCHED THEN INSERT (id, text) VALUES (p.id, 'x')",
    )
    .await;
    assert_eq!(
        outcome(&nurse, "UPDATE system.audit SET user_name = 'x'").await,
        "42501"
    );
    let audit = rows(
        &auditor,
        "SELECT kind, statement, objects_read, objects_written, row_count, outcome FROM system.audit \
         WHERE user_name = 'nina' ORDER BY seq",
    )
    .await;
    assert!(
        audit.contains(
            "| DELETE | DELETE FROM silver.patients WHERE id = ? | silver.patients | silver.patients | 1 | ok |"
        ),
        "{audit}"
    );
    assert!(
        audit.contains("| MERGE |")
            && audit.contains("| silver.notes,silver.patients | silver.notes | 1 | ok |"),
        "{audit}"
    );
    assert!(
        audit.contains("| UPDATE |") && audit.contains("| denied |"),
        "{audit}"
    );
}

#[tokio::test]
async fn dml_keeps_its_literals_out_of_the_delta_log() {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE silver.p (mrn VARCHAR, note VARCHAR);
             INSERT INTO silver.p VALUES ('A-001', 'a'), ('M-secret-7', 'b'), ('Z-999', 'c');
             DELETE FROM silver.p WHERE mrn = 'M-secret-7';
             UPDATE silver.p SET note = 'Q-set-value-3' WHERE mrn = 'Q-literal-9' OR note = 'K-literal-2';
             UPDATE silver.p SET note = 'n' WHERE mrn IN ('A-001', 'J-literal-5');
             MERGE INTO silver.p t USING (SELECT 'Z-999' AS m UNION ALL SELECT 'R-literal-8') s
               ON t.mrn = s.m AND t.note <> 'P-literal-6'
               WHEN MATCHED AND t.note <> 'W-literal-1' THEN DELETE",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&engine.local_session(), "SELECT mrn, note FROM silver.p").await,
        "+-------+------+\n| mrn | note |\n+-------+------+\n| A-001 | n |\n+-------+------+"
    );
    let log = dir.path().join("wh/silver/p/_delta_log");
    let mut text = String::new();
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            text.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(text.contains("\"operation\":\"MERGE\""), "{text}");
    for literal in [
        "M-secret-7",
        "Q-literal-9",
        "K-literal-2",
        "J-literal-5",
        "R-literal-8",
        "P-literal-6",
        "W-literal-1",
    ] {
        assert!(
            !text.contains(literal),
            "{literal} in the Delta log:\n{text}"
        );
    }
}

/// Z85 (ZeroMQ base-85), as Delta encodes a deletion vector file's UUID.
fn z85(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    let mut out = String::new();
    for chunk in bytes.chunks(4) {
        let mut value = u32::from_be_bytes(chunk.try_into().unwrap()) as u64;
        let mut five = [0u8; 5];
        for slot in five.iter_mut().rev() {
            *slot = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.push_str(std::str::from_utf8(&five).unwrap());
    }
    out
}

/// CRC-32 (ISO-HDLC, the one Delta's deletion vectors carry).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= *byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A deletion vector file (format version 1) holding one DV of the row indexes `rows` (all
/// below 65,536): a RoaringTreemap of one portable RoaringBitmap with one array container.
/// Returns the file's bytes and the DV's `sizeInBytes`.
fn deletion_vector_file(rows: &[u16]) -> (Vec<u8>, usize) {
    let mut bitmap = Vec::new();
    bitmap.extend(12346u32.to_le_bytes()); // SERIAL_COOKIE_NO_RUNCONTAINER
    bitmap.extend(1u32.to_le_bytes()); // one container
    bitmap.extend(0u16.to_le_bytes()); // its key
    bitmap.extend((rows.len() as u16 - 1).to_le_bytes()); // its cardinality - 1
    bitmap.extend(16u32.to_le_bytes()); // where its values start
    for row in rows {
        bitmap.extend(row.to_le_bytes());
    }
    let mut treemap = Vec::new();
    treemap.extend(1u64.to_le_bytes()); // one bitmap
    treemap.extend(0u32.to_le_bytes()); // for the high 32 bits 0
    treemap.extend(bitmap);
    let mut dv = 1681511377u32.to_le_bytes().to_vec(); // RoaringBitmapArray magic
    dv.extend(treemap);
    let mut file = vec![1u8]; // format version
    file.extend((dv.len() as u32).to_be_bytes());
    file.extend(&dv);
    file.extend(crc32(&dv).to_be_bytes());
    (file, dv.len())
}

/// Turns version 1 of a one-file table into a table with deletion vectors (what Spark or
/// Databricks writes for a DELETE): protocol 3/7 with the `deletionVectors` feature, and the
/// file re-added with a DV deleting `rows`.
fn add_deletion_vector(table: &std::path::Path, rows: &[u16]) {
    let log = table.join("_delta_log");
    let actions = |v: u32| -> Vec<serde_json::Value> {
        std::fs::read_to_string(log.join(format!("{v:020}.json")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut metadata = actions(0)
        .into_iter()
        .find_map(|a| a.get("metaData").cloned())
        .unwrap();
    metadata["configuration"]["delta.enableDeletionVectors"] = "true".into();
    let add = actions(1)
        .into_iter()
        .find_map(|a| a.get("add").cloned())
        .unwrap();
    let uuid: [u8; 16] = *b"medlake-dv-fixtu";
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    let canonical = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let (file, size) = deletion_vector_file(rows);
    std::fs::write(table.join(format!("deletion_vector_{canonical}.bin")), file).unwrap();
    let dv = serde_json::json!({
        "storageType": "u",
        "pathOrInlineDv": z85(&uuid),
        "offset": 1,
        "sizeInBytes": size,
        "cardinality": rows.len(),
    });
    let mut with_dv = add.clone();
    with_dv["deletionVector"] = dv;
    with_dv["dataChange"] = true.into();
    let remove = serde_json::json!({
        "path": add["path"],
        "deletionTimestamp": 1_700_000_000_000i64,
        "dataChange": true,
        "extendedFileMetadata": true,
        "partitionValues": add["partitionValues"],
        "size": add["size"],
    });
    let commit = [
        serde_json::json!({"commitInfo": {"timestamp": 1_700_000_000_000i64, "operation": "DELETE", "operationParameters": {"predicate": "[]"}, "engineInfo": "medlake test fixture (Spark-style deletion vector)"}}),
        serde_json::json!({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]}}),
        serde_json::json!({"metaData": metadata}),
        serde_json::json!({"remove": remove}),
        serde_json::json!({"add": with_dv}),
    ];
    let text: Vec<String> = commit.iter().map(|a| a.to_string()).collect();
    std::fs::write(log.join(format!("{:020}.json", 2)), text.join("\n")).unwrap();
}

#[tokio::test]
async fn tables_with_deletion_vectors_are_read_and_rewritten_correctly() {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.dv (id BIGINT NOT NULL, v VARCHAR);
             INSERT INTO bronze.dv VALUES (0, 'a'), (1, 'b'), (2, 'c'), (3, 'd'), (4, 'e'), (5, 'f')",
        )
        .await
        .unwrap();
    add_deletion_vector(&dir.path().join("wh/bronze/dv"), &[1, 3]);
    let local = engine.local_session();
    let all = "SELECT string_agg(concat(id, ':', v), ',' ORDER BY id) AS r FROM bronze.dv";
    // The rows as `id:v`, in order.
    let expect = |pairs: &[(i64, &str)]| {
        let text: Vec<String> = pairs.iter().map(|(i, v)| format!("{i}:{v}")).collect();
        let text = text.join(",");
        let line = format!("+{}+", "-".repeat(text.len() + 2));
        format!("{line}\n| r |\n{line}\n| {text} |\n{line}")
    };
    assert_eq!(
        rows(&local, all).await,
        expect(&[(0, "a"), (2, "c"), (4, "e"), (5, "f")])
    );
    assert_eq!(
        rows(&local, "SELECT count(*) AS n FROM bronze.dv").await,
        "+---+\n| n |\n+---+\n| 4 |\n+---+"
    );
    // The rows the DV deletes are not matched by DML, nor brought back by its rewrite.
    assert_eq!(
        changed(&local, "DELETE FROM bronze.dv WHERE id IN (1, 4)").await,
        1
    );
    assert_eq!(
        rows(&local, all).await,
        expect(&[(0, "a"), (2, "c"), (5, "f")])
    );
    assert_eq!(
        changed(&local, "UPDATE bronze.dv SET v = 'z' WHERE id <= 3").await,
        2
    );
    assert_eq!(
        changed(
            &local,
            "MERGE INTO bronze.dv t USING (SELECT 3 AS id UNION ALL SELECT 5) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET v = 'm' WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, 'new')"
        )
        .await,
        2
    );
    assert_eq!(
        rows(&local, all).await,
        expect(&[(0, "z"), (2, "z"), (3, "new"), (5, "m")])
    );
    // Time travel to the version with the DV still reads it.
    assert_eq!(
        rows(
            &local,
            "SELECT count(*) AS n FROM bronze.dv VERSION AS OF 2"
        )
        .await,
        "+---+\n| n |\n+---+\n| 4 |\n+---+"
    );
}

/// The deletion-vector table of the test above, read through a Ballista cluster
/// (crates/cluster): the executors plan the scan again from deltalake's provider, whose
/// snapshot carries the deletion vectors, so the deleted rows stay deleted there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_with_deletion_vectors_reads_the_same_on_a_cluster() {
    let functions = medlake_cluster::Functions::new(medlake_engine::cluster_functions());
    let cluster = medlake_cluster::testing::LocalCluster::start(2, functions.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path().join("wh").to_str().unwrap())
        .cluster(cluster.client(functions))
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.dv (id BIGINT NOT NULL, v VARCHAR);
             INSERT INTO bronze.dv VALUES (0, 'a'), (1, 'b'), (2, 'c'), (3, 'd'), (4, 'e'), (5, 'f')",
        )
        .await
        .unwrap();
    add_deletion_vector(&dir.path().join("wh/bronze/dv"), &[1, 3]);
    let local = engine.local_session();
    assert_eq!(
        rows(
            &local,
            "SELECT v, count(*) AS n FROM bronze.dv WHERE id >= 0 GROUP BY v ORDER BY v"
        )
        .await,
        "+---+---+\n| v | n |\n+---+---+\n| a | 1 |\n| c | 1 |\n| e | 1 |\n| f | 1 |\n+---+---+"
    );
    let metrics = engine.metrics_text().await;
    assert!(
        metrics.contains("medlake_cluster_queries_total{ran=\"cluster\"} 1"),
        "the query did not run on the cluster:\n{metrics}"
    );
}
