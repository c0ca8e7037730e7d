//! `referenced_keys`: what the engine's USE SECRET check reads from a plan.

use datafusion::prelude::SessionContext;

use crate::context;

async fn keys_of(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<String>> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    medlake_deid::referenced_keys(&plan)
}

#[tokio::test]
async fn every_key_name_of_a_plan_is_found() {
    let ctx = context();
    ctx.sql("CREATE TABLE visits (mrn TEXT, d DATE) AS VALUES ('MRN-0001', DATE '2024-01-01')")
        .await
        .expect("create");
    let cases: [(&str, &[&str]); 7] = [
        ("SELECT pseudonym(mrn, 'A') FROM visits", &["A"]),
        ("SELECT safe_harbor_zip('02138')", &[]),
        (
            "SELECT shift_date(d, mrn, 'B'), pseudonym(mrn, 'A') FROM visits \
             WHERE pseudonym(mrn, 'C') IN (SELECT pseudonym(mrn, 'D') FROM visits) \
               AND EXISTS (SELECT 1 FROM visits v WHERE pseudonym(v.mrn, 'E') = 'x') \
             ORDER BY pseudonym(mrn, 'A')",
            &["A", "B", "C", "D", "E"],
        ),
        (
            "SELECT (SELECT max(pseudonym(mrn, 'F')) FROM visits) AS s, \
                    count(DISTINCT shift_date(d, mrn, 'G')) FROM visits GROUP BY pseudonym(mrn, 'H')",
            &["F", "G", "H"],
        ),
        (
            "WITH p AS (SELECT pseudonym(mrn, 'I') AS p FROM visits) \
             SELECT p FROM p UNION ALL SELECT pseudonym('x', 'J')",
            &["I", "J"],
        ),
        ("EXPLAIN SELECT pseudonym('MRN-0001', 'K')", &["K"]),
        (
            "CREATE TABLE out AS SELECT pseudonym(mrn, 'L') AS p, \
             row_number() OVER (PARTITION BY pseudonym(mrn, 'M')) AS n FROM visits",
            &["L", "M"],
        ),
    ];
    for (sql, want) in cases {
        let got = keys_of(&ctx, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(got, want, "{sql}");
    }
}

#[tokio::test]
async fn a_call_whose_key_is_not_a_literal_fails_closed() {
    use datafusion::logical_expr::{ScalarUDF, col};
    let udf: ScalarUDF = medlake_deid::udfs(std::sync::Arc::new(crate::TestKeys))
        .into_iter()
        .next()
        .expect("pseudonym");
    let call = udf.call(vec![col("mrn"), col("secret_name")]);
    let err = medlake_deid::referenced_keys_in_expr(&call)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a string literal"), "{err}");
    let ok = udf.call(vec![col("mrn"), datafusion::logical_expr::lit("K")]);
    assert_eq!(
        medlake_deid::referenced_keys_in_expr(&ok).expect("literal"),
        vec!["K"]
    );
}
