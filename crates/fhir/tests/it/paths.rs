//! FHIRPath beyond the specification's view tests: operators, functions, choice types,
//! errors that name the path.

use std::collections::HashMap;

use medlake_fhir::path::{Env, Item, Path};
use serde_json::{Value, json};

fn eval(path: &str, resource: &Value) -> Result<Vec<Value>, String> {
    let constants: HashMap<String, Value> = [("five".to_owned(), json!(5))].into();
    let budget = medlake_fhir::path::Budget::default();
    let env = Env {
        resource,
        constants: &constants,
        row_index: 3,
        budget: &budget,
    };
    let p = Path::parse(path).map_err(|e| e.to_string())?;
    let out = p
        .eval(&[Item::Node(resource, None)], &env)
        .map_err(|e| e.to_string())?;
    Ok(out.iter().map(Item::to_json).collect())
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [
            {"system": "urn:iso:std:iso:11073:10101", "code": "150456", "display": "SpO2"},
            {"system": "http://loinc.org", "code": "59408-5"}
        ]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-12-04T10:00:00Z",
        "valueQuantity": {"value": 97.5, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        "component": [
            {"code": {"text": "a"}, "valueInteger": 3},
            {"code": {"text": "b"}, "valueString": "x"}
        ]
    })
}

#[test]
fn navigation_and_choice_types() {
    let o = observation();
    assert_eq!(
        eval("code.coding.code", &o).unwrap(),
        vec![json!("150456"), json!("59408-5")]
    );
    assert_eq!(
        eval("Observation.code.coding[1].system", &o).unwrap(),
        vec![json!("http://loinc.org")]
    );
    assert_eq!(
        eval("value.ofType(Quantity).value", &o).unwrap(),
        vec![json!(97.5)]
    );
    assert_eq!(
        eval("value.ofType(string)", &o).unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(
        eval("effective.ofType(dateTime)", &o).unwrap(),
        vec![json!("2026-12-04T10:00:00Z")]
    );
    assert_eq!(
        eval("component.value.ofType(integer)", &o).unwrap(),
        vec![json!(3)]
    );
    assert!(
        eval("component.value is integer", &o).is_err(),
        "is needs one item"
    );
    assert_eq!(
        eval("component.first().value is integer", &o).unwrap(),
        vec![json!(true)]
    );
    assert_eq!(
        eval("subject.getReferenceKey(Patient)", &o).unwrap(),
        vec![json!("p1")]
    );
    assert_eq!(
        eval("subject.getReferenceKey(Group)", &o).unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(eval("getResourceKey()", &o).unwrap(), vec![json!("o1")]);
}

#[test]
fn operators() {
    let o = observation();
    let one = |p: &str| eval(p, &o).unwrap();
    assert_eq!(one("1 + 2 * 3"), vec![json!(7)]);
    assert_eq!(one("(1 + 2) * 3"), vec![json!(9)]);
    assert_eq!(one("7 div 2"), vec![json!(3)]);
    assert_eq!(one("7 mod 2"), vec![json!(1)]);
    assert_eq!(one("7 / 2"), vec![json!(3.5)]);
    assert_eq!(one("1 / 0"), Vec::<Value>::new());
    assert_eq!(one("-%five + 1"), vec![json!(-4)]);
    assert_eq!(one("'a' & {} & 'b'"), vec![json!("ab")]);
    assert_eq!(
        one("status = 'final' and value.ofType(Quantity).value > 90"),
        vec![json!(true)]
    );
    assert_eq!(one("status = 'draft' or {}"), Vec::<Value>::new());
    assert_eq!(one("{} or true"), vec![json!(true)]);
    assert_eq!(one("false and {}"), vec![json!(false)]);
    assert_eq!(one("false implies {}"), vec![json!(true)]);
    assert_eq!(one("true xor false"), vec![json!(true)]);
    assert_eq!(one("'150456' in code.coding.code"), vec![json!(true)]);
    assert_eq!(one("code.coding.code contains '1'"), vec![json!(false)]);
    assert_eq!(one("(1 | 2 | 1).count()"), vec![json!(2)]);
    assert_eq!(one("'ABC' ~ 'abc'"), vec![json!(true)]);
    assert_eq!(one("'ABC' != 'abc'"), vec![json!(true)]);
    assert_eq!(one("%rowIndex"), vec![json!(3)]);
    assert_eq!(
        one("code.coding.where(system = 'http://loinc.org').code"),
        vec![json!("59408-5")]
    );
    assert_eq!(
        one("code.coding.select(code & '@' & system).first()"),
        vec![json!("150456@urn:iso:std:iso:11073:10101")]
    );
    assert_eq!(
        one("code.coding.code.join('|')"),
        vec![json!("150456|59408-5")]
    );
    assert_eq!(one("iif(status = 'final', 'F', 'N')"), vec![json!("F")]);
    assert_eq!(one("status.upper().startsWith('FIN')"), vec![json!(true)]);
    assert_eq!(one("code.coding.all(code.exists())"), vec![json!(true)]);
    assert_eq!(one("component.tail().code.text"), vec![json!("b")]);
    assert_eq!(one("component.skip(1).take(1).code.text"), vec![json!("b")]);
    assert_eq!(one("`status`"), vec![json!("final")]);
    assert_eq!(
        one("'it\\'s'.length()"),
        vec![json!(4)],
        "\\' escapes a quote"
    );
    assert!(
        eval("'it''s'", &o).is_err(),
        "'' is not an escape in FHIRPath"
    );
}

#[test]
fn errors_name_the_path() {
    let o = observation();
    let e = eval("code.coding.code > 'a'", &o).unwrap_err();
    assert!(
        e.contains("code.coding.code > 'a'") && e.contains("single value"),
        "{e}"
    );
    for bad in [
        "@@",
        "name.",
        "where(",
        "foo()",
        "a[",
        "1 +",
        "%",
        "$index",
        "ofType('x')",
        "'abc",
    ] {
        assert!(Path::parse(bad).is_err(), "{bad} parses");
    }
    let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    assert!(
        Path::parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("deeper")
    );
    assert!(eval("%missing", &o).is_err());
    assert!(
        eval("9223372036854775807 + 1", &o)
            .unwrap_err()
            .contains("overflow")
    );
}
