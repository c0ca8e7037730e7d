//! The HTTP ingest door's body decoding: gzip, JSON array or NDJSON, then each row checked
//! against a schema that has every column type the door ingests. The first byte chooses the
//! framing. Nothing may panic; every row is either accepted or refused with a reason.
#![no_main]

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = |unit| DataType::Timestamp(unit, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("s", DataType::Utf8, true),
        Field::new("sv", DataType::Utf8View, true),
        Field::new("i8", DataType::Int8, true),
        Field::new("i32", DataType::Int32, true),
        Field::new("i64", DataType::Int64, true),
        Field::new("u8", DataType::UInt8, true),
        Field::new("u64", DataType::UInt64, true),
        Field::new("f32", DataType::Float32, true),
        Field::new("f64", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("d", DataType::Decimal128(38, 10), true),
        Field::new("d0", DataType::Decimal128(6, 0), true),
        Field::new("dn", DataType::Decimal128(4, -2), true),
        Field::new("date", DataType::Date32, true),
        Field::new("ts_s", ts(TimeUnit::Second), true),
        Field::new("ts_ms", ts(TimeUnit::Millisecond), true),
        Field::new("ts_us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("ts_ns", ts(TimeUnit::Nanosecond), true),
        Field::new("required", DataType::Utf8, false),
    ]))
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let body = if mode & 2 != 0 {
        match medlake_http::gunzip(body, 1 << 20) {
            Ok(inflated) => inflated,
            Err(_) => return,
        }
    } else {
        body.to_vec()
    };
    let Ok(values) = medlake_http::values(&body, mode & 1 != 0) else {
        return;
    };
    let count = values.len();
    let checked = medlake_http::rows(&SCHEMA, values, 100);
    let accepted = checked.batch.map_or(0, |b| b.num_rows());
    assert_eq!(accepted + checked.refused_total, count);
    assert!(checked.refused.len() <= 100);
});
