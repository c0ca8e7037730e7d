use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Date32Type, Int64Type};

use crate::{KEY, MRN_0001, context, run, table};

#[tokio::test]
async fn pseudonym_in_sql_matches_the_test_vector() {
    let ctx = context();
    let out = table(
        &ctx,
        "SELECT mrn, pseudonym(mrn, 'K') AS p FROM (VALUES ('MRN-0001'), (NULL), (' MRN-0001 '), ('')) t(mrn)",
    )
    .await;
    assert_eq!(out.matches(MRN_0001).count(), 2, "{out}");
    // An integer and its decimal text are one identifier; a constant call is folded.
    let out = table(
        &ctx,
        "SELECT pseudonym(123, 'K') = pseudonym('123', 'K') AS same, \
                pseudonym(CAST(123 AS BIGINT), 'K') = pseudonym(' 123', 'K') AS same64, \
                pseudonym('MRN-0001', 'K') AS folded, \
                pseudonym('MRN-0001', 'OTHER') <> pseudonym('MRN-0001', 'K') AS keyed",
    )
    .await;
    assert_eq!(out.matches("true").count(), 3, "{out}");
    assert!(out.contains(MRN_0001), "{out}");
    assert_eq!(
        medlake_deid::pseudonym_of(KEY, "MRN-0001").as_deref(),
        Some(MRN_0001)
    );
}

#[tokio::test]
async fn planning_refuses_a_key_that_is_not_a_literal() {
    let ctx = context();
    for sql in [
        "SELECT pseudonym(mrn, k) FROM (VALUES ('MRN-0001', 'K')) t(mrn, k)",
        "SELECT pseudonym(mrn, 'K' || '') FROM (VALUES ('MRN-0001')) t(mrn)",
        "SELECT pseudonym(mrn, NULL) FROM (VALUES ('MRN-0001')) t(mrn)",
        "SELECT shift_date(d, p, p) FROM (VALUES (DATE '2024-01-01', 'MRN-0001')) t(d, p)",
    ] {
        let err = run(&ctx, sql).await.unwrap_err().to_string();
        assert!(
            err.contains("must be a string literal naming a secret"),
            "{sql}: {err}"
        );
    }
    for (sql, expected) in [
        ("SELECT pseudonym(1.5, 'K')", "text or an integer"),
        ("SELECT pseudonym('x')", "takes 2 arguments"),
        (
            "SELECT shift_date('2024-01-01', 'p', 'K')",
            "DATE or TIMESTAMP",
        ),
        ("SELECT safe_harbor_zip(2138)", "leading zeros"),
        ("SELECT safe_harbor_age('90')", "integer"),
        ("SELECT safe_harbor_date(1)", "DATE or TIMESTAMP"),
    ] {
        let err = run(&ctx, sql).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{sql}: {err}");
    }
}

#[tokio::test]
async fn missing_keys_fail_at_execution_without_key_material() {
    let ctx = context();
    let err = run(
        &ctx,
        "SELECT pseudonym(mrn, 'NOPE') FROM (VALUES ('a')) t(mrn)",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pseudonym: secret 'NOPE': no secret named 'NOPE'"),
        "{err}"
    );
    // EXPLAIN shows the secret's name, never its bytes.
    let plan = table(
        &ctx,
        "EXPLAIN VERBOSE SELECT pseudonym(mrn, 'K'), shift_date(d, mrn, 'K') \
         FROM (VALUES ('a', DATE '2024-01-01')) t(mrn, d)",
    )
    .await;
    assert!(plan.contains("pseudonym"), "{plan}");
    assert!(
        !plan.contains(std::str::from_utf8(KEY).expect("text")),
        "{plan}"
    );
    assert!(!plan.contains(&hex::encode(KEY)), "{plan}");
}

#[tokio::test]
async fn shift_date_preserves_each_patients_intervals() {
    let ctx = context();
    let batches = run(
        &ctx,
        "SELECT patient, CAST(d AS BIGINT) AS d, CAST(shift_date(d, patient, 'K') AS BIGINT) AS s \
         FROM (SELECT patient, CAST(d AS DATE) AS d FROM (VALUES \
           ('MRN-0001', '2024-01-01'), ('MRN-0001', '2024-01-15'), ('MRN-0001', '2024-03-01'), \
           ('MRN-0002', '2024-01-01'), ('MRN-0002', '2023-12-25'), \
           ('MRN-0003', '2020-02-29'), ('MRN-0003', '2021-02-28')) v(patient, d)) t \
         ORDER BY patient, d",
    )
    .await
    .expect("runs");
    let mut rows = Vec::new();
    for b in &batches {
        let patient = b.column(0).as_string::<i32>();
        let (d, s) = (
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            rows.push((patient.value(i).to_owned(), d.value(i), s.value(i)));
        }
    }
    assert_eq!(rows.len(), 7);
    let mut offsets = std::collections::BTreeMap::new();
    for (patient, d, s) in &rows {
        let offset = s - d;
        assert!(
            (-medlake_deid::SHIFT_MAX_DAYS..=-1).contains(&offset),
            "{offset}"
        );
        assert_eq!(
            *offsets.entry(patient.clone()).or_insert(offset),
            offset,
            "{patient}"
        );
        assert_eq!(Some(offset), medlake_deid::shift_days_of(KEY, patient));
    }
    // Same offset per patient, so the days between a patient's events are unchanged.
    for pair in rows.windows(2).filter(|w| w[0].0 == w[1].0) {
        assert_eq!(pair[1].2 - pair[0].2, pair[1].1 - pair[0].1);
    }
    assert_eq!(offsets.len(), 3);
}

#[tokio::test]
async fn shift_date_keeps_timestamp_types() {
    let ctx = context();
    let batches = run(
        &ctx,
        "SELECT shift_date(arrow_cast(TIMESTAMP '2024-03-31 01:30:00', 'Timestamp(Microsecond, Some(\"Europe/Paris\"))'), 'MRN-0001', 'K') AS tz, \
                shift_date(TIMESTAMP '2024-01-01 10:00:00', 'MRN-0001', 'K') AS naive, \
                shift_date(DATE '2024-01-01', 'MRN-0001', 'K') AS d, \
                shift_date(DATE '2024-01-01', NULL, 'K') AS no_patient, \
                shift_date(NULL, 'MRN-0001', 'K') AS no_date",
    )
    .await
    .expect("runs");
    let schema = batches[0].schema();
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(
        format!("{types:?}"),
        r#"[Timestamp(Microsecond, Some("Europe/Paris")), Timestamp(Nanosecond, None), Date32, Date32, Date32]"#
    );
    let b = &batches[0];
    assert!(b.column(3).is_null(0) && b.column(4).is_null(0));
    let d = b.column(2).as_primitive::<Date32Type>().value(0);
    let offset = medlake_deid::shift_days_of(KEY, "MRN-0001").expect("shift");
    assert_eq!(i64::from(d), 19_723 + offset); // 2024-01-01 is day 19,723
}

#[tokio::test]
async fn safe_harbor_in_sql() {
    let ctx = context();
    let out = table(
        &ctx,
        "SELECT safe_harbor_age(age) AS age, safe_harbor_zip(zip) AS zip, \
                safe_harbor_date(CAST(d AS DATE)) AS year, \
                safe_harbor_age_from(CAST(birth AS DATE), CAST(d AS DATE)) AS age_at \
         FROM (VALUES \
           (34, '02138-4321', '2024-05-01', '1990-05-02'), \
           (90, '03601', '2023-01-01', '1930-01-01'), \
           (NULL, NULL, NULL, NULL), \
           (-3, '123', '1999-12-31', '2000-01-01')) t(age, zip, d, birth) ORDER BY year NULLS LAST",
    )
    .await;
    let expected = "\
+-----+-----+------+--------+
| age | zip | year | age_at |
+-----+-----+------+--------+
|     |     | 1999 |        |
| 90+ | 000 | 2023 | 90+    |
| 34  | 021 | 2024 | 33     |
|     |     |      |        |
+-----+-----+------+--------+";
    assert_eq!(out, expected);
}

#[tokio::test]
async fn hostile_sql_inputs_never_panic() {
    let ctx = context();
    let long = "9".repeat(100_000);
    for sql in [
        format!("SELECT pseudonym('{long}', 'K'), safe_harbor_zip('{long}')"),
        "SELECT pseudonym(x, 'K'), safe_harbor_zip(x) FROM (VALUES ('é'), ('\u{0}'), (''), ('𝟙𝟚𝟛𝟜𝟝'), ('12345-')) t(x)".into(),
        "SELECT pseudonym(CAST(-9223372036854775808 AS BIGINT), 'K')".into(),
        "SELECT safe_harbor_age(CAST(9223372036854775807 AS BIGINT)), safe_harbor_age(CAST(-9223372036854775808 AS BIGINT))".into(),
        "SELECT safe_harbor_age(CAST(18446744073709551615 AS BIGINT UNSIGNED))".into(),
        "SELECT shift_date(CAST('0001-01-01' AS DATE), 'p', 'K'), shift_date(arrow_cast(-9223372036854775807, 'Timestamp(Nanosecond, None)'), 'p', 'K')".into(),
        "SELECT safe_harbor_age_from(DATE '2024-01-01', DATE '1900-01-01'), safe_harbor_date(arrow_cast(9223372036854775807, 'Timestamp(Second, None)'))".into(),
        "SELECT pseudonym(x, 'K') FROM (SELECT 'a' AS x WHERE false) t".into(),
    ] {
        // An error is fine; a panic fails the test (DataFusion reports a panic in one of
        // its tasks as an error that says so).
        if let Err(e) = run(&ctx, &sql).await {
            let e = e.to_string();
            eprintln!("{e}");
            assert!(!e.to_lowercase().contains("panic"), "{sql}: {e}");
        }
    }
}
