//! The declared tables, held in memory with their SQL Server column types, and the
//! INFORMATION_SCHEMA views derived from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int16Array, Int32Array, RecordBatch, StringArray, UInt8Array, new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::encode::normalize_guid_array;
use crate::error::{Error, Result};
use crate::tracking::PrimaryKey;
use crate::types::{Column, SqlType};

/// A declared table.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Lower-case field names; this is the schema DataFusion sees.
    pub arrow_schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Change tracking, when enabled (with the table's primary key).
    pub tracking: Option<crate::tracking::Tracking>,
}

impl Table {
    pub(crate) fn column(&self, lower_name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.to_lowercase() == lower_name)
    }
}

/// Key: (lower-case schema, lower-case table).
pub(crate) type Key = (String, String);

pub(crate) fn key(schema: &str, table: &str) -> Key {
    (schema.to_lowercase(), table.to_lowercase())
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub tables: BTreeMap<Key, Arc<Table>>,
    /// `CHANGE_TRACKING_CURRENT_VERSION()`: advanced by every change of a tracked table.
    pub version: i64,
}

impl Catalog {
    pub(crate) fn create(
        &mut self,
        schema: &str,
        table: &str,
        columns: Vec<Column>,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        if columns.is_empty() {
            return Err(Error::NoColumns {
                schema: schema.into(),
                table: table.into(),
            });
        }
        let arrow_schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(c.name.to_lowercase(), c.sql_type.arrow_type(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        let mut t = Table {
            schema: schema.to_string(),
            name: table.to_string(),
            columns,
            arrow_schema,
            batches: Vec::new(),
            tracking: None,
        };
        for batch in batches {
            let batch = conform(&t, batch)?;
            t.batches.push(batch);
        }
        self.tables.insert(key(schema, table), Arc::new(t));
        Ok(())
    }

    pub(crate) fn append(
        &mut self,
        schema: &str,
        table: &str,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let k = key(schema, table);
        let existing = self.tables.get(&k).ok_or_else(|| Error::TableNotFound {
            schema: schema.into(),
            table: table.into(),
        })?;
        let mut t = Table::clone(existing);
        let mut added = Vec::new();
        for batch in batches {
            let batch = conform(&t, batch)?;
            added.push(batch.clone());
            t.batches.push(batch);
        }
        if t.tracking.is_some() && !added.is_empty() {
            let all = arrow::compute::concat_batches(&t.arrow_schema, &added)?;
            self.log_changes(&mut t, &all, 'I')?;
        }
        self.tables.insert(k, Arc::new(t));
        Ok(())
    }

    pub(crate) fn drop_table(&mut self, schema: &str, table: &str) {
        self.tables.remove(&key(schema, table));
    }
}

/// Rebuild a user batch with the table's schema: canonical Arrow types (casting when Arrow
/// can), lower-case names, GUIDs in canonical text, NOT NULL checked.
pub(crate) fn conform(t: &Table, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.num_columns() != t.columns.len() {
        return Err(Error::ColumnCount {
            schema: t.schema.clone(),
            table: t.name.clone(),
            got: batch.num_columns(),
            want: t.columns.len(),
        });
    }
    let mut arrays = Vec::with_capacity(t.columns.len());
    for (column, array) in t.columns.iter().zip(batch.columns()) {
        let column_err = |detail: String| Error::Column {
            column: column.name.clone(),
            detail,
        };
        let want = column.sql_type.arrow_type();
        let mut array: ArrayRef = if array.data_type() == &want {
            array.clone()
        } else {
            cast(array, &want).map_err(|e| {
                column_err(format!(
                    "cannot hold {} as {} ({want}): {e}",
                    array.data_type(),
                    column.sql_type.declaration()
                ))
            })?
        };
        if column.sql_type == SqlType::UniqueIdentifier {
            array = normalize_guid_array(&array).map_err(column_err)?;
        }
        if !column.nullable && array.null_count() > 0 {
            return Err(column_err("NULL in a NOT NULL column".into()));
        }
        arrays.push(array);
    }
    RecordBatch::try_new(t.arrow_schema.clone(), arrays).map_err(|e| Error::Column {
        column: String::new(),
        detail: e.to_string(),
    })
}

/// The INFORMATION_SCHEMA views: their declared columns and their current rows.
pub(crate) fn information_schema(catalog: &Catalog, database: &str) -> Result<Vec<Table>> {
    let (tables_columns, tables_arrays) = tables_view(catalog, database);
    let (columns_columns, columns_arrays) = columns_view(catalog, database);
    let (constraints_columns, constraints_arrays) = constraints_view(catalog, database);
    let (usage_columns, usage_arrays) = key_usage_view(catalog, database);

    let mut out = Vec::new();
    for (name, columns, arrays) in [
        ("TABLES", tables_columns, tables_arrays),
        ("COLUMNS", columns_columns, columns_arrays),
        ("TABLE_CONSTRAINTS", constraints_columns, constraints_arrays),
        ("KEY_COLUMN_USAGE", usage_columns, usage_arrays),
    ] {
        let arrow_schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(c.name.to_lowercase(), c.sql_type.arrow_type(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        let batches = vec![RecordBatch::try_new(arrow_schema.clone(), arrays)?];
        out.push(Table {
            schema: "INFORMATION_SCHEMA".into(),
            name: name.into(),
            columns,
            arrow_schema,
            batches,
            tracking: None,
        });
    }
    Ok(out)
}

/// The columns TABLE_CONSTRAINTS and KEY_COLUMN_USAGE start with.
fn constraint_columns() -> Vec<Column> {
    vec![
        Column::new("CONSTRAINT_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("CONSTRAINT_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("CONSTRAINT_NAME", SqlType::NVarChar(Some(128))).not_null(),
        Column::new("TABLE_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_NAME", SqlType::NVarChar(Some(128))).not_null(),
    ]
}

/// The values of [`constraint_columns`] for each row's key.
fn constraint_arrays(keys: &[&PrimaryKey], database: &str) -> Vec<ArrayRef> {
    let text = |f: &dyn Fn(&PrimaryKey) -> String| -> ArrayRef {
        Arc::new(StringArray::from(
            keys.iter().map(|k| f(k)).collect::<Vec<_>>(),
        ))
    };
    vec![
        text(&|_| database.to_string()),
        text(&|k| k.schema.clone()),
        text(&|k| k.constraint.clone()),
        text(&|_| database.to_string()),
        text(&|k| k.schema.clone()),
        text(&|k| k.table.clone()),
    ]
}

/// INFORMATION_SCHEMA.TABLE_CONSTRAINTS: the primary keys (of tables with change tracking).
fn constraints_view(catalog: &Catalog, database: &str) -> (Vec<Column>, Vec<ArrayRef>) {
    let mut columns = constraint_columns();
    columns.push(Column::new("CONSTRAINT_TYPE", SqlType::VarChar(Some(11))));
    let keys = crate::tracking::primary_keys(catalog);
    let mut arrays = constraint_arrays(&keys.iter().collect::<Vec<_>>(), database);
    arrays.push(Arc::new(StringArray::from(vec!["PRIMARY KEY"; keys.len()])));
    (columns, arrays)
}

/// INFORMATION_SCHEMA.KEY_COLUMN_USAGE: the columns of each primary key, in key order.
fn key_usage_view(catalog: &Catalog, database: &str) -> (Vec<Column>, Vec<ArrayRef>) {
    let mut columns = constraint_columns();
    columns.push(Column::new("COLUMN_NAME", SqlType::NVarChar(Some(128))));
    columns.push(Column::new("ORDINAL_POSITION", SqlType::Int).not_null());
    // (key, column, ordinal)
    let rows: Vec<(PrimaryKey, String, i32)> = crate::tracking::primary_keys(catalog)
        .into_iter()
        .flat_map(|k| {
            let columns = k.columns.clone();
            columns.into_iter().enumerate().map(move |(i, c)| {
                let key = PrimaryKey {
                    schema: k.schema.clone(),
                    table: k.table.clone(),
                    constraint: k.constraint.clone(),
                    columns: Vec::new(),
                };
                (key, c, i as i32 + 1)
            })
        })
        .collect();
    let mut arrays = constraint_arrays(&rows.iter().map(|r| &r.0).collect::<Vec<_>>(), database);
    arrays.push(Arc::new(StringArray::from(
        rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
    )));
    arrays.push(Arc::new(Int32Array::from(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
    )));
    (columns, arrays)
}

/// INFORMATION_SCHEMA.TABLES: its columns and rows.
fn tables_view(catalog: &Catalog, database: &str) -> (Vec<Column>, Vec<ArrayRef>) {
    let tables_columns = vec![
        Column::new("TABLE_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_NAME", SqlType::NVarChar(Some(128))).not_null(),
        Column::new("TABLE_TYPE", SqlType::VarChar(Some(10))),
    ];
    let mut names = (Vec::new(), Vec::new(), Vec::new());
    for t in catalog.tables.values() {
        names.0.push(database.to_string());
        names.1.push(t.schema.clone());
        names.2.push(t.name.clone());
    }
    let n = names.0.len();
    let tables_arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(names.0)),
        Arc::new(StringArray::from(names.1)),
        Arc::new(StringArray::from(names.2)),
        Arc::new(StringArray::from(vec!["BASE TABLE"; n])),
    ];
    (tables_columns, tables_arrays)
}

/// INFORMATION_SCHEMA.COLUMNS: its columns and rows.
fn columns_view(catalog: &Catalog, database: &str) -> (Vec<Column>, Vec<ArrayRef>) {
    let columns_columns = vec![
        Column::new("TABLE_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("TABLE_NAME", SqlType::NVarChar(Some(128))).not_null(),
        Column::new("COLUMN_NAME", SqlType::NVarChar(Some(128))),
        Column::new("ORDINAL_POSITION", SqlType::Int),
        Column::new("COLUMN_DEFAULT", SqlType::NVarChar(Some(4000))),
        Column::new("IS_NULLABLE", SqlType::VarChar(Some(3))),
        Column::new("DATA_TYPE", SqlType::NVarChar(Some(128))),
        Column::new("CHARACTER_MAXIMUM_LENGTH", SqlType::Int),
        Column::new("CHARACTER_OCTET_LENGTH", SqlType::Int),
        Column::new("NUMERIC_PRECISION", SqlType::TinyInt),
        Column::new("NUMERIC_PRECISION_RADIX", SqlType::SmallInt),
        Column::new("NUMERIC_SCALE", SqlType::Int),
        Column::new("DATETIME_PRECISION", SqlType::SmallInt),
        Column::new("CHARACTER_SET_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("CHARACTER_SET_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("CHARACTER_SET_NAME", SqlType::NVarChar(Some(128))),
        Column::new("COLLATION_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("COLLATION_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("COLLATION_NAME", SqlType::NVarChar(Some(128))),
        Column::new("DOMAIN_CATALOG", SqlType::NVarChar(Some(128))),
        Column::new("DOMAIN_SCHEMA", SqlType::NVarChar(Some(128))),
        Column::new("DOMAIN_NAME", SqlType::NVarChar(Some(128))),
    ];
    let mut catalog_col = Vec::new();
    let mut schema_col = Vec::new();
    let mut table_col = Vec::new();
    let mut column_col = Vec::new();
    let mut ordinal = Vec::new();
    let mut nullable = Vec::new();
    let mut data_type = Vec::new();
    let mut char_max = Vec::new();
    let mut octets = Vec::new();
    let mut precision = Vec::new();
    let mut radix = Vec::new();
    let mut scale = Vec::new();
    let mut dt_precision = Vec::new();
    let mut charset = Vec::new();
    let mut collation = Vec::new();
    for t in catalog.tables.values() {
        for (i, c) in t.columns.iter().enumerate() {
            let f = c.sql_type.information_schema();
            catalog_col.push(database.to_string());
            schema_col.push(t.schema.clone());
            table_col.push(t.name.clone());
            column_col.push(c.name.clone());
            ordinal.push(i as i32 + 1);
            nullable.push(if c.nullable { "YES" } else { "NO" });
            data_type.push(c.sql_type.type_name());
            char_max.push(f.character_maximum_length);
            octets.push(f.character_octet_length);
            precision.push(f.numeric_precision);
            radix.push(f.numeric_precision_radix);
            scale.push(f.numeric_scale);
            dt_precision.push(f.datetime_precision);
            charset.push(f.character_set_name);
            collation.push(f.collation_name);
        }
    }
    let rows = catalog_col.len();
    let null_text = || new_null_array(&arrow::datatypes::DataType::Utf8, rows);
    let columns_arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(catalog_col)),
        Arc::new(StringArray::from(schema_col)),
        Arc::new(StringArray::from(table_col)),
        Arc::new(StringArray::from(column_col)),
        Arc::new(Int32Array::from(ordinal)),
        null_text(),
        Arc::new(StringArray::from(nullable)),
        Arc::new(StringArray::from(data_type)),
        Arc::new(Int32Array::from(char_max)),
        Arc::new(Int32Array::from(octets)),
        Arc::new(UInt8Array::from(precision)),
        Arc::new(Int16Array::from(radix)),
        Arc::new(Int32Array::from(scale)),
        Arc::new(Int16Array::from(dt_precision)),
        null_text(),
        null_text(),
        Arc::new(StringArray::from(charset)),
        null_text(),
        null_text(),
        Arc::new(StringArray::from(collation)),
        null_text(),
        null_text(),
        null_text(),
    ];
    (columns_columns, columns_arrays)
}
