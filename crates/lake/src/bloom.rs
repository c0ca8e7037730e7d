//! Parquet bloom filters for a table's high-cardinality lookup keys.
//!
//! A row group's min/max statistics skip it only when the key lies outside its range; for a
//! key such as a patient's MRN or a device id in a table written in time order every row
//! group's range covers nearly every key, so a lookup of one patient reads every row group.
//! A bloom filter per row group and column answers "certainly not here" for most of them.
//!
//! `ALTER TABLE t SET TBLPROPERTIES ('medlake.bloomFilterColumns' = 'mrn, device_id')` names
//! the columns (at most [`MAX_COLUMNS`]; `''` names none again). Every later write into the
//! table (appends from every door, DML, MERGE, OPTIMIZE and automatic compaction, a
//! cluster's executors) writes a filter per row group for each of them: sized for a row
//! group's rows at a 5% false-positive rate, then folded down to the distinct values the row
//! group holds (parquet's writer does both). Files written before keep none until OPTIMIZE
//! rewrites them. Readers need nothing: DataFusion's Parquet scan checks the filters of the
//! row groups its statistics kept for `=` and `IN` predicates on those columns
//! (`bloom_filter_on_read`, on by default), and EXPLAIN ANALYZE's
//! `row_groups_pruned_bloom_filter` shows what they skipped.
//!
//! A medlake property, like `medlake.clusterBy`: other Delta readers ignore it, and the
//! filters are standard Parquet that any Parquet reader may use.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Schema};
use deltalake::parquet::file::properties::WriterPropertiesBuilder;
use deltalake::parquet::schema::types::ColumnPath;

/// The table property naming the columns that get a bloom filter per row group (stored as a
/// JSON array of the columns' names as the schema spells them).
pub const BLOOM_FILTER_COLUMNS: &str = "medlake.bloomFilterColumns";

/// At most this many columns of a table carry bloom filters: each costs every write a hash
/// per value and every file up to a few dozen KiB per row group.
pub const MAX_COLUMNS: usize = 16;

/// The columns a table's properties give bloom filters to (none when the property is absent
/// or not a JSON array of names: another engine may have written it).
pub fn bloom_filter_columns(configuration: &HashMap<String, String>) -> Vec<String> {
    configuration
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(BLOOM_FILTER_COLUMNS))
        .and_then(|(_, v)| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

/// `builder` with a bloom filter for each of `columns` (top-level columns, by name).
pub(crate) fn with_bloom_filters(
    mut builder: WriterPropertiesBuilder,
    columns: &[String],
) -> WriterPropertiesBuilder {
    for column in columns {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column.as_str()), true);
    }
    builder
}

/// The stored value of `medlake.bloomFilterColumns` for `value`, a comma-separated list of
/// `schema`'s columns (`''`: none), or why it cannot be set. A name is the column's as the
/// schema spells it or, when exactly one column matches it so, ignoring case; every column
/// must be of a type whose values a filter can be asked for (strings, binary, integers,
/// decimals, dates).
pub(crate) fn resolve(value: &str, schema: &Schema) -> Result<String, String> {
    let mut columns: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        if name.is_empty() {
            if value.trim().is_empty() {
                break;
            }
            return Err(format!("{BLOOM_FILTER_COLUMNS} has an empty column name"));
        }
        let name = name.trim_matches('"');
        let field = match schema.field_with_name(name) {
            Ok(field) => field,
            Err(_) => {
                let mut matching = schema
                    .fields()
                    .iter()
                    .filter(|f| f.name().eq_ignore_ascii_case(name));
                match (matching.next(), matching.next()) {
                    (Some(field), None) => field.as_ref(),
                    _ => {
                        return Err(format!(
                            "{BLOOM_FILTER_COLUMNS}: the table has no column '{}'",
                            name.chars().take(100).collect::<String>()
                        ));
                    }
                }
            }
        };
        if !filterable(field.data_type()) {
            return Err(format!(
                "{BLOOM_FILTER_COLUMNS}: column '{}' is of type {}; bloom filters are for \
                 strings, binary, integers, decimals and dates",
                field.name(),
                field.data_type()
            ));
        }
        if !columns.contains(field.name()) {
            columns.push(field.name().clone());
        }
    }
    if columns.len() > MAX_COLUMNS {
        return Err(format!(
            "{BLOOM_FILTER_COLUMNS} names {} columns; at most {MAX_COLUMNS}",
            columns.len()
        ));
    }
    serde_json::to_string(&columns).map_err(|e| e.to_string())
}

/// Whether a bloom filter on a column of `data_type` can skip row groups: DataFusion asks
/// filters for equality with literals of these types (floats, booleans and timestamps are
/// range or low-cardinality keys, which statistics serve).
fn filterable(data_type: &DataType) -> bool {
    use DataType::*;
    match data_type {
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
            true
        }
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => true,
        Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) | Date32 | Date64 => true,
        Dictionary(_, value) => filterable(value),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("mrn", DataType::Utf8, false),
            Field::new("Device", DataType::Int64, true),
            Field::new("value", DataType::Float64, true),
            Field::new("a", DataType::Utf8, true),
            Field::new("A", DataType::Utf8, true),
        ])
    }

    #[test]
    fn names_resolve_to_the_schema_spelling_once_each() {
        let value = resolve(" mrn , device, MRN", &schema()).unwrap();
        assert_eq!(value, r#"["mrn","Device"]"#);
        let configuration = HashMap::from([(BLOOM_FILTER_COLUMNS.to_string(), value)]);
        assert_eq!(bloom_filter_columns(&configuration), vec!["mrn", "Device"]);
        assert_eq!(resolve("", &schema()).unwrap(), "[]");
        assert_eq!(resolve("  ", &schema()).unwrap(), "[]");
        // Exact spelling wins where case alone does not decide.
        assert_eq!(resolve("A", &schema()).unwrap(), r#"["A"]"#);
    }

    #[test]
    fn unknown_ambiguous_unfilterable_and_empty_names_are_refused() {
        for (value, says) in [
            ("nope", "no column 'nope'"),
            ("mrn,,Device", "empty column name"),
            ("value", "of type Float64"),
        ] {
            let e = resolve(value, &schema()).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
        let many = Schema::new(
            (0..20)
                .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        );
        let all: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        assert!(
            resolve(&all.join(","), &many)
                .unwrap_err()
                .contains("at most 16")
        );
        // 'a' matches both 'a' exactly: fine; a name matching two columns only ignoring case
        // is refused.
        let two = Schema::new(vec![
            Field::new("Ab", DataType::Utf8, true),
            Field::new("aB", DataType::Utf8, true),
        ]);
        assert!(resolve("ab", &two).unwrap_err().contains("no column 'ab'"));
    }

    #[test]
    fn a_property_another_engine_wrote_badly_means_none() {
        let configuration = HashMap::from([(BLOOM_FILTER_COLUMNS.to_string(), "mrn".to_string())]);
        assert!(bloom_filter_columns(&configuration).is_empty());
        assert!(bloom_filter_columns(&HashMap::new()).is_empty());
    }
}
