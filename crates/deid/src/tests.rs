//! Unit tests: each function over arrays with NULLs, scalars, the fixed test vectors, and
//! errors that never carry key material.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, LargeStringArray, StringArray,
    StringViewArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Date32Type, Field, TimeUnit, TimestampMillisecondType};
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::*;

/// The test key (33 bytes) and what Python computes with it:
/// `hmac.new(KEY, b"MRN-0001", hashlib.sha256).hexdigest()[:32]`.
pub(crate) const KEY: &[u8] = b"medlake-test-key-0123456789abcdef";
const MRN_0001: &str = "d111d8e9bdbf08534d4190f630959a5e";
/// `hmac.new(KEY, b"123", hashlib.sha256).hexdigest()[:32]`
const TEXT_123: &str = "622275c27134bb6fa47a1e83a1b5caa8";
/// `-(1 + int.from_bytes(hmac.new(KEY, b"medlake.shift_date.v1\0MRN-0001",
/// hashlib.sha256).digest()[:8], "big") % 365)`, and the same for MRN-0002.
const SHIFT_0001: i64 = -120;
const SHIFT_0002: i64 = -116;

/// A resolver with `K` (the test key), `SHORT` (too short to use) and nothing else.
#[derive(Debug)]
pub(crate) struct TestKeys;

pub(crate) const SHORT_KEY: &[u8] = b"tiny-secret";

impl Keys for TestKeys {
    fn key(&self, name: &str) -> Result<Vec<u8>, String> {
        match name {
            "K" => Ok(KEY.to_vec()),
            "SHORT" => Ok(SHORT_KEY.to_vec()),
            other => Err(format!("no secret named '{other}'")),
        }
    }
}

fn udf(name: &str) -> ScalarUDF {
    udfs(Arc::new(TestKeys))
        .into_iter()
        .find(|f| f.name() == name)
        .expect("registered")
}

/// Calls `name` as DataFusion would after coercion: the return field is planned from the
/// arguments (scalars count as literals), then the function runs.
fn call(name: &str, args: Vec<ColumnarValue>, rows: usize) -> DfResult<ColumnarValue> {
    let f = udf(name);
    let types: Vec<DataType> = args.iter().map(ColumnarValue::data_type).collect();
    let coerced = f.coerce_types(&types)?;
    assert_eq!(coerced, types, "tests pass coerced arguments");
    let arg_fields: Vec<_> = types
        .iter()
        .enumerate()
        .map(|(i, t)| Arc::new(Field::new(format!("a{i}"), t.clone(), true)))
        .collect();
    let scalars: Vec<Option<&ScalarValue>> = args
        .iter()
        .map(|a| match a {
            ColumnarValue::Scalar(s) => Some(s),
            ColumnarValue::Array(_) => None,
        })
        .collect();
    let return_field = f.return_field_from_args(ReturnFieldArgs {
        arg_fields: &arg_fields,
        scalar_arguments: &scalars,
    })?;
    f.invoke_with_args(ScalarFunctionArgs {
        args,
        arg_fields,
        number_rows: rows,
        return_field,
        config_options: Arc::new(ConfigOptions::default()),
    })
}

fn array(value: DfResult<ColumnarValue>) -> ArrayRef {
    match value.expect("function runs") {
        ColumnarValue::Array(a) => a,
        ColumnarValue::Scalar(s) => panic!("expected an array, got {s:?}"),
    }
}

fn texts(a: &ArrayRef) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn key(name: &str) -> ColumnarValue {
    ColumnarValue::Scalar(ScalarValue::Utf8(Some(name.to_owned())))
}

fn col(a: impl Array + 'static) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(a))
}

/// The pseudonym recomputed here from the hmac crate, independently of the function.
fn reference_pseudonym(text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("any key length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())[..32].to_owned()
}

#[test]
fn pseudonym_matches_the_test_vectors() {
    assert_eq!(reference_pseudonym("MRN-0001"), MRN_0001);
    assert_eq!(pseudonym_of(KEY, "MRN-0001").as_deref(), Some(MRN_0001));
    assert_eq!(pseudonym_of(KEY, " MRN-0001\t").as_deref(), Some(MRN_0001));
    assert_eq!(pseudonym_of(KEY, "123").as_deref(), Some(TEXT_123));
    assert_eq!(pseudonym_of(KEY, "   "), None);
    assert_eq!(pseudonym_of(SHORT_KEY, "MRN-0001"), None);
    assert_eq!(shift_days_of(KEY, "MRN-0001"), Some(SHIFT_0001));
    assert_eq!(shift_days_of(KEY, "MRN-0002"), Some(SHIFT_0002));
}

#[test]
fn pseudonym_over_an_array_with_nulls_and_padding() {
    let values = StringArray::from(vec![
        Some("MRN-0001"),
        None,
        Some("  MRN-0001 "),
        Some(""),
        Some("mrn-0001"),
        Some("MRN-0002"),
    ]);
    let out = texts(&array(call(PSEUDONYM, vec![col(values), key("K")], 6)));
    let p = |t: &str| Some(reference_pseudonym(t));
    assert_eq!(
        out,
        vec![
            p("MRN-0001"),
            None,
            p("MRN-0001"),
            None,
            p("mrn-0001"),
            p("MRN-0002")
        ]
    );
    assert_eq!(out[0].as_deref(), Some(MRN_0001));
    assert_ne!(out[0], out[4], "case counts");
    assert!(out.iter().flatten().all(|p| {
        p.len() == PSEUDONYM_HEX_CHARS
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }));
}

#[test]
fn pseudonym_of_every_string_layout_and_of_a_scalar() {
    let rows = vec![Some("MRN-0001"), None];
    let want = vec![Some(MRN_0001.to_owned()), None];
    for values in [
        col(StringArray::from(rows.clone())),
        col(LargeStringArray::from(rows.clone())),
        col(StringViewArray::from(rows.clone())),
    ] {
        assert_eq!(
            texts(&array(call(PSEUDONYM, vec![values, key("K")], 2))),
            want
        );
    }
    let scalar = call(
        PSEUDONYM,
        vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("MRN-0001".into()))),
            key("K"),
        ],
        1,
    );
    match scalar.expect("runs") {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(p))) => assert_eq!(p, MRN_0001),
        other => panic!("expected a text scalar, got {other:?}"),
    }
    let null = call(
        PSEUDONYM,
        vec![ColumnarValue::Scalar(ScalarValue::Utf8(None)), key("K")],
        1,
    );
    assert!(matches!(
        null,
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    ));
}

#[test]
fn the_key_name_must_be_a_literal() {
    let names = col(StringArray::from(vec!["K"]));
    let values = col(StringArray::from(vec!["MRN-0001"]));
    let err = call(PSEUDONYM, vec![values.clone(), names], 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a string literal naming a secret"),
        "{err}"
    );
    let null = ColumnarValue::Scalar(ScalarValue::Utf8(None));
    let err = call(PSEUDONYM, vec![values, null], 1).unwrap_err();
    assert!(err.to_string().contains("string literal"), "{err}");
    let f = udf(PSEUDONYM);
    let err = f
        .coerce_types(&[DataType::Float64, DataType::Utf8])
        .unwrap_err();
    assert!(err.to_string().contains("text or an integer"), "{err}");
    let err = f.coerce_types(&[DataType::Utf8]).unwrap_err();
    assert!(err.to_string().contains("takes 2 arguments"), "{err}");
    assert_eq!(
        f.coerce_types(&[DataType::Int32, DataType::Utf8])
            .expect("integers"),
        vec![DataType::Utf8, DataType::Utf8]
    );
}

/// What an error or a Debug print must never contain: the key, as text or hex.
fn assert_no_key_material(text: &str) {
    for secret in [KEY, SHORT_KEY] {
        let as_text = String::from_utf8_lossy(secret);
        assert!(!text.contains(as_text.as_ref()), "key in {text:?}");
        assert!(!text.contains(&hex::encode(secret)), "hex key in {text:?}");
    }
}

#[test]
fn errors_and_debug_output_never_contain_key_material() {
    let values = || col(StringArray::from(vec![Some("MRN-0001"), None]));
    let dates = || col(Date32Array::from(vec![Some(19_000), None]));
    let patients = || col(StringArray::from(vec![Some("MRN-0001"), Some("MRN-0002")]));
    for name in ["SHORT", "MISSING"] {
        for result in [
            call(PSEUDONYM, vec![values(), key(name)], 2),
            call(SHIFT_DATE, vec![dates(), patients(), key(name)], 2),
        ] {
            let err = result.unwrap_err();
            let (shown, debug) = (err.to_string(), format!("{err:?}"));
            assert!(shown.contains(&format!("secret '{name}'")), "{shown}");
            assert_no_key_material(&shown);
            assert_no_key_material(&debug);
        }
    }
    for f in udfs(Arc::new(TestKeys)) {
        assert_no_key_material(&format!("{f:?}"));
    }
    let key = crate::keys::Key::new(KEY, PSEUDONYM, "K").expect("long enough");
    assert_eq!(format!("{key:?}"), "Key(***)");
}

#[test]
fn shift_date_moves_each_patient_by_one_offset() {
    let days = Date32Array::from(vec![
        Some(19_000),
        Some(19_010),
        None,
        Some(19_005),
        Some(19_000),
        Some(19_003),
    ]);
    let patients = StringArray::from(vec![
        Some("MRN-0001"),
        Some("MRN-0001"),
        Some("MRN-0001"),
        Some("MRN-0002"),
        None,
        Some(" MRN-0002 "),
    ]);
    let out = array(call(
        SHIFT_DATE,
        vec![col(days), col(patients), key("K")],
        6,
    ));
    let out: Vec<Option<i32>> = out.as_primitive::<Date32Type>().iter().collect();
    let s1 = i32::try_from(SHIFT_0001).expect("small");
    let s2 = i32::try_from(SHIFT_0002).expect("small");
    assert_eq!(
        out,
        vec![
            Some(19_000 + s1),
            Some(19_010 + s1),
            None,
            Some(19_005 + s2),
            None, // no patient: NULL, never the real date
            Some(19_003 + s2),
        ]
    );
}

#[test]
fn shift_date_keeps_the_timestamp_type_and_time_zone() {
    let ts = TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None])
        .with_timezone("Europe/Paris");
    let patients = StringArray::from(vec!["MRN-0001", "MRN-0001"]);
    let out = array(call(SHIFT_DATE, vec![col(ts), col(patients), key("K")], 2));
    assert_eq!(
        out.data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into()))
    );
    let out = out.as_primitive::<TimestampMillisecondType>();
    assert_eq!(out.value(0), 1_700_000_000_123 + SHIFT_0001 * 86_400_000);
    assert!(out.is_null(1));
}

#[test]
fn shift_date_out_of_range_is_an_error_not_a_panic() {
    let days = Date32Array::from(vec![i32::MIN]);
    let patients = StringArray::from(vec!["MRN-0001"]);
    let err = call(SHIFT_DATE, vec![col(days), col(patients), key("K")], 1).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert!(
        !err.to_string().contains(&i32::MIN.to_string()),
        "no patient value: {err}"
    );
}

#[test]
fn shift_days_stay_in_range_and_spread() {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20_000 {
        let d = shift_days_of(KEY, &format!("patient-{i}")).expect("a shift");
        assert!((-SHIFT_MAX_DAYS..=-1).contains(&d), "{d}");
        seen.insert(d);
    }
    assert_eq!(seen.len(), 365, "every shift in the range is used");
}

#[test]
fn safe_harbor_age_over_an_array() {
    let ages = Int64Array::from(vec![Some(0), Some(89), Some(90), Some(130), Some(-1), None]);
    let out = texts(&array(call(SAFE_HARBOR_AGE, vec![col(ages)], 6)));
    let want = [Some("0"), Some("89"), Some("90+"), Some("90+"), None, None];
    assert_eq!(out, want.map(|v| v.map(str::to_owned)));
    let f = udf(SAFE_HARBOR_AGE);
    assert_eq!(
        f.coerce_types(&[DataType::UInt8]).expect("int"),
        vec![DataType::Int64]
    );
    assert!(f.coerce_types(&[DataType::Float64]).is_err());
    assert!(f.coerce_types(&[DataType::Utf8]).is_err());
}

#[test]
fn safe_harbor_age_from_birth_and_event_dates() {
    let date = |y, m, d| {
        let day = chrono::NaiveDate::from_ymd_opt(y, m, d).expect("a date");
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
        Some(i32::try_from((day - epoch).num_days()).expect("small"))
    };
    let births = Date32Array::from(vec![
        date(1980, 6, 15),
        date(1980, 6, 15),
        date(2000, 2, 29),
        date(2000, 2, 29),
        date(1920, 1, 1),
        date(2024, 1, 2),
        None,
    ]);
    let at = Date32Array::from(vec![
        date(2020, 6, 14),
        date(2020, 6, 15),
        date(2021, 2, 28),
        date(2021, 3, 1),
        date(2020, 1, 1),
        date(2024, 1, 1),
        date(2024, 1, 1),
    ]);
    let out = texts(&array(call(
        SAFE_HARBOR_AGE_FROM,
        vec![col(births), col(at)],
        7,
    )));
    let want = [
        Some("39"),
        Some("40"),
        Some("20"),
        Some("21"),
        Some("90+"),
        None,
        None,
    ];
    assert_eq!(out, want.map(|v| v.map(str::to_owned)));
}

#[test]
fn safe_harbor_zip_forms() {
    let cases = [
        ("02138", Some("021")),
        (" 02138-1234 ", Some("021")),
        ("021381234", Some("021")),
        ("03601", Some("000")),
        ("89301-0001", Some("000")),
        ("2138", None),
        ("0213", None),
        ("02138-12", None),
        ("02138 1234", None),
        ("ABCDE", None),
        ("SW1A 1AA", None),
        ("", None),
        ("０２１３８", None), // full-width digits are not a ZIP code
    ];
    for (zip, want) in cases {
        assert_eq!(safe_harbor_zip_text(zip), want, "{zip:?}");
    }
    for prefix in RESTRICTED_ZIP3 {
        assert_eq!(safe_harbor_zip_text(&format!("{prefix}99")), Some("000"));
    }
    let zips = StringArray::from(vec![Some("05901"), None, Some("10001-0001"), Some("x")]);
    let out = texts(&array(call(SAFE_HARBOR_ZIP, vec![col(zips)], 4)));
    assert_eq!(
        out,
        vec![Some("000".into()), None, Some("100".into()), None]
    );
    let err = udf(SAFE_HARBOR_ZIP)
        .coerce_types(&[DataType::Int64])
        .unwrap_err();
    assert!(err.to_string().contains("leading zeros"), "{err}");
}

#[test]
fn hostile_zip_and_identifiers_never_panic() {
    let mut inputs: Vec<String> = [
        "",
        " ",
        "-",
        "-----",
        "12345-",
        "1234-56789",
        "é1234",
        "12é45",
        "123é",
        "1234\u{0}",
        "12345-678\u{301}",
        "\u{feff}12345",
        "𝟙𝟚𝟛𝟜𝟝",
        "12345\n6789",
        "99999-9999",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Every string of up to three characters from a hostile alphabet, padded to the lengths
    // the parser looks at.
    let alphabet = ['0', '9', '-', ' ', 'é', '\u{0}', '𝟙', 'a'];
    for a in alphabet {
        for b in alphabet {
            for c in alphabet {
                for pad in ["", "12", "123456", "12345-6"] {
                    inputs.push(format!("{pad}{a}{b}{c}"));
                    inputs.push(format!("{a}{pad}{b}{c}"));
                }
            }
        }
    }
    inputs.push("9".repeat(1 << 16));
    for input in &inputs {
        if let Some(zip) = safe_harbor_zip_text(input) {
            assert!(
                zip.len() == 3 && zip.bytes().all(|b| b.is_ascii_digit()),
                "{input:?}"
            );
        }
        let _ = pseudonym_of(KEY, input);
        let _ = shift_days_of(KEY, input);
    }
    let hostile = StringArray::from_iter_values(inputs.iter());
    let n = hostile.len();
    let zips = texts(&array(call(SAFE_HARBOR_ZIP, vec![col(hostile.clone())], n)));
    assert_eq!(zips.len(), n);
    let names = texts(&array(call(PSEUDONYM, vec![col(hostile), key("K")], n)));
    assert_eq!(names.len(), n);
}

#[test]
fn safe_harbor_date_is_the_local_year() {
    let dates = Date32Array::from(vec![Some(0), None, Some(-1)]);
    let out = array(call(SAFE_HARBOR_DATE, vec![col(dates)], 3));
    let years: Vec<Option<i32>> = out
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("INT")
        .iter()
        .collect();
    assert_eq!(years, vec![Some(1970), None, Some(1969)]);
    // 2020-12-31 23:30 UTC is already 2021 in Paris.
    let instant = 1_609_457_400_000;
    for (zone, want) in [(None, 2020), (Some("Europe/Paris"), 2021)] {
        let ts = TimestampMillisecondArray::from(vec![instant]).with_timezone_opt(zone);
        let out = array(call(SAFE_HARBOR_DATE, vec![col(ts)], 1));
        let out = out.as_any().downcast_ref::<Int32Array>().expect("INT");
        assert_eq!(out.value(0), want, "{zone:?}");
    }
}

#[test]
fn key_arguments_are_where_the_docs_say() {
    assert_eq!(key_argument(PSEUDONYM), Some(1));
    assert_eq!(key_argument(SHIFT_DATE), Some(2));
    assert_eq!(key_argument(SAFE_HARBOR_ZIP), None);
    assert_eq!(
        udfs(Arc::new(TestKeys))
            .iter()
            .map(ScalarUDF::name)
            .collect::<Vec<_>>(),
        vec![
            PSEUDONYM,
            SHIFT_DATE,
            SAFE_HARBOR_AGE,
            SAFE_HARBOR_AGE_FROM,
            SAFE_HARBOR_ZIP,
            SAFE_HARBOR_DATE
        ]
    );
}
