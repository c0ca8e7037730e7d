//! Watermarks as text: how a connector's highest watermark value is stored in a commit's
//! metadata, and read back. One encoding for every connector.

use chrono::{DateTime, SecondsFormat};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;

/// A watermark as text, which [`parse_mark`] (and each connector's own reader of marks, e.g.
/// SQL Server's parameters) reads back exactly: timestamps without a zone as
/// `YYYY-MM-DDTHH:MM:SS.ffffff`, with a zone as RFC 3339 in UTC (`...Z`), binary values (a
/// SQL Server `rowversion`) as `0x` and lower-case hex, anything else as DataFusion prints it.
pub fn encode_mark(value: &ScalarValue) -> Option<String> {
    use ScalarValue as S;
    if value.is_null() {
        return None;
    }
    Some(match value {
        S::TimestampMicrosecond(Some(us), None) => DateTime::from_timestamp_micros(*us)?
            .naive_utc()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string(),
        S::TimestampMicrosecond(Some(us), Some(_)) => {
            DateTime::from_timestamp_micros(*us)?.to_rfc3339_opts(SecondsFormat::Micros, true)
        }
        S::Binary(Some(bytes)) => {
            let mut hex = String::with_capacity(2 + 2 * bytes.len());
            hex.push_str("0x");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        }
        other => other.to_string(),
    })
}

/// A stored watermark as a value of the column's type.
pub fn parse_mark(mark: &str, data_type: &DataType) -> Result<ScalarValue, String> {
    if *data_type == DataType::Binary {
        return parse_hex(mark)
            .map(|bytes| ScalarValue::Binary(Some(bytes)))
            .map_err(|e| format!("watermark '{mark}' is not a {data_type}: {e}"));
    }
    ScalarValue::try_from_string(mark.to_string(), data_type)
        .ok()
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("watermark '{mark}' is not a {data_type}"))
}

/// A binary mark (`0x` and hex digits) back into its bytes.
pub fn parse_hex(mark: &str) -> Result<Vec<u8>, String> {
    let hex = mark.strip_prefix("0x").ok_or("no 0x prefix")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// The largest non-null value of column `index` in `batch`.
pub fn max_of(batch: &RecordBatch, index: usize) -> Result<Option<ScalarValue>, String> {
    let column = batch.column(index);
    let mut best: Option<ScalarValue> = None;
    for row in 0..column.len() {
        if column.is_null(row) {
            continue;
        }
        let value = ScalarValue::try_from_array(column, row).map_err(|e| e.to_string())?;
        if best
            .as_ref()
            .is_none_or(|b| value.partial_cmp(b) == Some(std::cmp::Ordering::Greater))
        {
            best = Some(value);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        for (value, text) in [
            (ScalarValue::Int64(Some(42)), "42"),
            (
                ScalarValue::TimestampMicrosecond(Some(1_714_557_600_000_001), None),
                "2024-05-01T10:00:00.000001",
            ),
            (
                ScalarValue::TimestampMicrosecond(Some(1_714_557_600_000_000), Some("UTC".into())),
                "2024-05-01T10:00:00.000000Z",
            ),
            (ScalarValue::Utf8(Some("v-0042".into())), "v-0042"),
            (ScalarValue::Binary(Some(vec![0, 0, 7, 209])), "0x000007d1"),
        ] {
            assert_eq!(encode_mark(&value).as_deref(), Some(text));
            assert_eq!(parse_mark(text, &value.data_type()).unwrap(), value);
        }
        assert!(parse_mark("soon", &DataType::Int64).is_err());
    }
}
