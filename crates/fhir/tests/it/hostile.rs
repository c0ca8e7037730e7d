//! Whatever a ViewDefinition, a path or a resource holds, evaluation returns rows or an
//! error: never a panic, never unbounded work.

use medlake_fhir::ViewDefinition;
use medlake_fhir::path::Path;
use serde_json::json;

/// A small deterministic generator (no dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_paths_never_panic() {
    const PIECES: &[&str] = &[
        "name",
        ".",
        "given",
        "(",
        ")",
        "[",
        "]",
        "0",
        "'x'",
        "=",
        "and",
        "or",
        "where",
        "first()",
        "exists(",
        "%rowIndex",
        "$this",
        "|",
        "+",
        "-",
        "*",
        "/",
        "div",
        "mod",
        "ofType(",
        "string",
        "{}",
        ",",
        "1.5",
        "is",
        "as",
        "`a`",
        "extension(",
        "join(",
        "not()",
        "'\\u00e9'",
        "\\",
        "%`c`",
        "iif(",
        "9999999999999999999",
        "'unterminated",
    ];
    let resource = json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["a", "b"], "family": "f"}],
        "extension": [{"url": "x", "valueString": "y"}]});
    let mut rng = Lcg(42);
    for _ in 0..20_000 {
        let len = 1 + rng.next() % 12;
        let text: String = (0..len)
            .map(|_| PIECES[(rng.next() as usize) % PIECES.len()])
            .collect::<Vec<_>>()
            .join("");
        if let Ok(path) = Path::parse(&text) {
            let view = json!({"resource": "Patient", "select": [{"column": [{"name": "c", "path": text, "collection": true}]}]});
            if let Ok(view) = ViewDefinition::from_json(&view) {
                let _ = view.rows(&resource);
            }
            let _ = path.text();
        }
    }
}

#[test]
fn hostile_definitions_are_refused() {
    let refused = [
        json!({}),
        json!([]),
        json!({"resource": "Patient"}),
        json!({"resource": "Patient", "select": []}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "1bad", "path": "id"}]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "A", "path": "id"}]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "%nope"}]}]}),
        json!({"resource": "Patient", "select": [{"forEach": "name", "forEachOrNull": "name", "column": [{"name": "a", "path": "id"}]}]}),
        json!({"resource": "Patient", "select": [{"unionAll": [{"column": [{"name": "a", "path": "id"}]}, {"column": [{"name": "b", "path": "id"}]}]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]}], "bogus": 1}),
        json!({"resource": "Pa'tient", "select": [{"column": [{"name": "a", "path": "id"}]}]}),
        json!({"resource": "Patient", "constant": [{"name": "c", "valueString": "x", "valueInteger": 1}], "select": [{"column": [{"name": "a", "path": "id"}]}]}),
    ];
    for d in refused {
        assert!(ViewDefinition::from_json(&d).is_err(), "accepted {d}");
    }
    // Nesting beyond the limit is refused, not a stack overflow.
    let mut select = json!({"column": [{"name": "a", "path": "id"}]});
    for _ in 0..200 {
        select = json!({"select": [select]});
    }
    assert!(
        ViewDefinition::from_json(&json!({"resource": "Patient", "select": [select]})).is_err()
    );
}

#[test]
fn runaway_rows_are_an_error() {
    // 1,000 names x 1,000 names = a million rows from one resource: refused.
    let names: Vec<_> = (0..1000)
        .map(|i| json!({"family": format!("f{i}")}))
        .collect();
    let resource = json!({"resourceType": "Patient", "id": "p", "name": names});
    let view = ViewDefinition::from_json(&json!({"resource": "Patient", "select": [
        {"forEach": "name", "column": [{"name": "a", "path": "family"}]},
        {"forEach": "name", "column": [{"name": "b", "path": "family"}]}
    ]}))
    .unwrap();
    let e = view.rows(&resource).unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
}

#[test]
fn views_that_would_work_forever_run_out_of_budget() {
    let resource = json!({"resourceType": "Patient", "id": "p"});
    let started = std::time::Instant::now();
    // A collection that doubles at every step: 2^36 items if nothing stopped it.
    let doubling = format!("(1|2){}.count()", ".select(1|2)".repeat(35));
    let view = ViewDefinition::from_json(&json!({"resource": "Patient",
        "select": [{"column": [{"name": "n", "path": doubling}]}]}))
    .unwrap();
    let e = view.rows(&resource).unwrap_err().to_string();
    assert!(e.contains("steps"), "{e}");
    // Selects nested around forEaches of four that end in an empty one: 4^31 visits, no row.
    let mut select = json!({"forEach": "{}", "column": [{"name": "x", "path": "1"}]});
    for _ in 0..30 {
        select = json!({"forEach": "(1|2|3|4)", "select": [select]});
    }
    let view =
        ViewDefinition::from_json(&json!({"resource": "Patient", "select": [select]})).unwrap();
    let e = view.rows(&resource).unwrap_err().to_string();
    assert!(e.contains("steps"), "{e}");
    // distinct() over many values compares every pair.
    let many: Vec<_> = (0..100_000).collect();
    let big = json!({"resourceType": "Patient", "id": "p", "n": many});
    let view = ViewDefinition::from_json(&json!({"resource": "Patient",
        "select": [{"column": [{"name": "n", "path": "n.distinct().count()"}]}]}))
    .unwrap();
    let e = view.rows(&big).unwrap_err().to_string();
    assert!(e.contains("steps"), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn nesting_is_counted_by_expressions_and_chains_are_bounded() {
    // Five nested where()s are ordinary FHIRPath.
    assert!(Path::parse("a.where(b.where(c.where(d.where(e.where(f.exists())))))").is_ok());
    // A chain as deep as the text allows is refused when it is parsed, not evaluated.
    let chain = vec!["1"; 1500].join("+");
    assert!(
        Path::parse(&chain)
            .unwrap_err()
            .to_string()
            .contains("chain")
    );
    let members = format!("a{}", ".b".repeat(1000));
    assert!(Path::parse(&members).is_err());
}
