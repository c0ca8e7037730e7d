//! `CREATE TABLE t SHALLOW | DEEP CLONE s` (the lake's clone; the creator owns the clone) and
//! `RESTORE TABLE t TO VERSION AS OF n | TO TIMESTAMP AS OF 'ts'`: Delta's own restore, one
//! commit that brings an earlier version's files back (the table's owner's or an admin's,
//! checked with every other privilege in `Session::execute`).
//!
//! A materialized view (or its quarantine table) cannot be cloned: its rows are stored unmasked and read through the
//! masks and row filters of its inputs (lineage), which a table copied from it would lose,
//! and its owner need not be the owner of those inputs.
//!
//! RESTORE is refused for materialized views (their definition and refresh state live in their commits:
//! a restore would leave a view whose recorded inputs no longer explain its rows; refresh it
//! instead, with FULL to recompute) and for the `system` schema (the audit log's hash chain,
//! the grants: `medlake restore` restores those with the rest of the warehouse).

use arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::ObjectName;
use medlake_lake::TimeTravel;

use crate::{Error, Output, Result, Session, int, record_batch, statement, text};

/// The columns `RESTORE TABLE` returns.
pub(crate) const COLUMNS: [(&str, DataType); 5] = [
    ("table", DataType::Utf8),
    ("version", DataType::Int64),
    ("restored_version", DataType::Int64),
    ("files_added", DataType::Int64),
    ("files_removed", DataType::Int64),
];

impl Session {
    pub(crate) async fn clone_table(
        &self,
        target: &ObjectName,
        source: &ObjectName,
        at: Option<&TimeTravel>,
        deep: bool,
        if_not_exists: bool,
    ) -> Result<Output> {
        let target = self.table_name(&statement::name_parts(target)?)?;
        let source = self.table_name(&statement::name_parts(source)?)?;
        if target.schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: format!("{target}: the system schema is medlake's"),
            });
        }
        if self.is_quarantine(&source).await? || self.shared.views.view(&source).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: source.to_string(),
                is: "a materialized view or its quarantine (its rows are protected by the masks and row filters \
                     of its inputs, which a copy would not carry; CREATE TABLE ... AS SELECT \
                     copies what you may read)",
                expected: "a table CLONE can copy",
            }
            .into());
        }
        let cloned = self
            .shared
            .warehouse
            .clone_table(&source, at, &target, deep, if_not_exists)
            .await?;
        if cloned.is_some() {
            self.record_owner(medlake_auth::Securable::table(
                &target.schema,
                &target.table,
            ))
            .await?;
        }
        Ok(Output::command("CREATE TABLE", 0))
    }

    pub(crate) async fn restore_table(
        &self,
        table: &ObjectName,
        to: &TimeTravel,
    ) -> Result<Output> {
        let name = self.table_name(&statement::name_parts(table)?)?;
        if name.schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: format!(
                    "{name} is a system table; `medlake restore` restores the system tables with the whole warehouse"
                ),
            });
        }
        if self.shared.views.view(&name).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: name.to_string(),
                is: "a materialized view (REFRESH MATERIALIZED VIEW ... FULL recomputes it)",
                expected: "a table RESTORE TABLE can restore",
            }
            .into());
        }
        let restored = self.shared.warehouse.restore_table(&name, to).await?;
        Ok(Output::batch(record_batch(vec![
            ("table", text([name.to_string()])),
            ("version", int([restored.version])),
            ("restored_version", int([restored.restored])),
            ("files_added", int([restored.files_added])),
            ("files_removed", int([restored.files_removed])),
        ])?))
    }
}
