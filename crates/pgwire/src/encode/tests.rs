use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int8Array, ListArray, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::Int32Type;
use pgwire::api::Type;

use super::*;

fn fields(n: usize, format: FieldFormat) -> Vec<FieldInfo> {
    (0..n)
        .map(|i| FieldInfo::new(format!("c{i}"), None, None, Type::TEXT, format))
        .collect()
}

fn batch(columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_from_iter(
        columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("c{i}"), c)),
    )
    .unwrap()
}

/// The values of a DataRow (`None` for NULL).
fn values(row: &DataRow) -> Vec<Option<Vec<u8>>> {
    let mut at = 0;
    let data = &row.data[..];
    (0..row.field_count)
        .map(|_| {
            let len = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            at += 4;
            (len >= 0).then(|| {
                let len = usize::try_from(len).unwrap();
                at += len;
                data[at - len..at].to_vec()
            })
        })
        .collect()
}

#[test]
fn text_rows_hold_postgresqls_text_and_nulls() {
    let b = batch(vec![
        Arc::new(Float64Array::from(vec![Some(149.0), None])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(1_763_856_000_000_000),
            Some(1),
        ])),
        Arc::new(StringArray::from(vec![Some("a\tb"), Some("")])),
        Arc::new(Int8Array::from(vec![Some(-3), Some(7)])),
        Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            Some(vec![]),
        ])),
    ]);
    let encoder = Encoder::new(&fields(5, FieldFormat::Text), &b).unwrap();
    let rows = encoder.data_rows(&Style::default());
    assert_eq!(rows.len(), 2);
    let text = |v: &Option<Vec<u8>>| v.as_ref().map(|v| String::from_utf8(v.clone()).unwrap());
    let first: Vec<_> = values(&rows[0]).iter().map(text).collect();
    assert_eq!(
        first,
        vec![
            Some("149".into()),
            Some("2025-11-23 00:00:00".into()),
            Some("a\tb".into()),
            Some("-3".into()),
            Some("{1,NULL}".into())
        ]
    );
    let second: Vec<_> = values(&rows[1]).iter().map(text).collect();
    assert_eq!(second[0], None);
    assert_eq!(second[1].as_deref(), Some("1970-01-01 00:00:00.000001"));
    assert_eq!(second[4].as_deref(), Some("{}"));
}

#[test]
fn binary_rows_use_the_send_formats() {
    let b = batch(vec![
        Arc::new(Int8Array::from(vec![Some(-3)])),
        Arc::new(TimestampMicrosecondArray::from(vec![Some(
            binary::EPOCH_MICROS + 5,
        )])),
        Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(7)]),
        ])),
    ]);
    let encoder = Encoder::new(&fields(3, FieldFormat::Binary), &b).unwrap();
    let row = values(&encoder.data_rows(&Style::default())[0]);
    assert_eq!(row[0].as_deref(), Some(&(-3i16).to_be_bytes()[..]));
    assert_eq!(row[1].as_deref(), Some(&5i64.to_be_bytes()[..]));
    let array: Vec<u8> = [1i32, 0, 23, 1, 1, 4, 7]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    assert_eq!(row[2].as_deref(), Some(&array[..]));
}

#[test]
fn copy_lines_escape_text_and_quote_csv() {
    let b = batch(vec![
        Arc::new(StringArray::from(vec![
            Some("a\tb\\c"),
            None,
            Some("x,\"y\""),
        ])),
        Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0), None])),
    ]);
    let encoder = Encoder::new(&fields(2, FieldFormat::Text), &b).unwrap();
    let mut out = BytesMut::new();
    let text = CopyFormat {
        csv: false,
        delimiter: b"\t",
        null: b"\\N",
    };
    encoder.copy_lines(&Style::default(), &text, &mut out);
    assert_eq!(&out[..], b"a\\tb\\\\c\t1.5\n\\N\t2\nx,\"y\"\t\\N\n");
    let mut out = BytesMut::new();
    let csv = CopyFormat {
        csv: true,
        delimiter: b",",
        null: b"",
    };
    encoder.copy_lines(&Style::default(), &csv, &mut out);
    assert_eq!(&out[..], b"a\tb\\c,1.5\n,2\n\"x,\"\"y\"\"\",\n");
}
