//! A FHIRPath expression evaluated over a FHIR resource, as a ViewDefinition's columns,
//! `where`s and `forEach`es are. The input is the expression's text, a NUL byte, and the
//! resource's JSON (a fixed Observation when that part is not a JSON value). Nothing may
//! panic, and the work is bounded: every evaluation spends from a [`Budget`], so that no
//! expression runs longer than libFuzzer's `-timeout` or grows past its `-rss_limit_mb`.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medlake_fhir::path::{Budget, Env, Item, Path};
use serde_json::{Value, json};

static OBSERVATION: LazyLock<Value> = LazyLock::new(|| {
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
            {"code": {"text": "b"}, "valueString": "x"},
            {"code": {"text": "c"}, "valueBoolean": true, "extension": [{"url": "u", "valueDecimal": 1e308}]}
        ]
    })
});

static CONSTANTS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
    [
        ("five".to_owned(), json!(5)),
        ("big".to_owned(), json!(i64::MAX)),
        ("text".to_owned(), json!("a'b\\c")),
        ("yes".to_owned(), json!(true)),
        ("half".to_owned(), json!(0.5)),
    ]
    .into()
});

fuzz_target!(|data: &[u8]| {
    let (text, resource) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(path) = Path::parse(text) else {
        return;
    };
    assert_eq!(path.text(), text);
    let _ = path.constants();
    let _ = path.implied_type();
    let parsed: Option<Value> = serde_json::from_slice(resource).ok();
    let resource = parsed.as_ref().unwrap_or(&OBSERVATION);
    let budget = Budget::default();
    let env = Env {
        resource,
        constants: &CONSTANTS,
        row_index: 3,
        budget: &budget,
    };
    if let Ok(items) = path.eval(&[Item::Node(resource, None)], &env) {
        for item in &items {
            let _ = item.to_json();
        }
    }
    // Again on a spent budget: an error, never a panic or unbounded work.
    let spent = Budget::new(0);
    let env = Env {
        budget: &spent,
        ..env
    };
    let _ = path.eval(&[Item::Node(resource, None)], &env);
});
