//! `system.grants`: the access state ([`AccessState`]) as a Delta table of the warehouse, so
//! a restart or a second server over the same warehouse sees the same roles, grants, owners,
//! masks and row filters.
//!
//! The table holds the current state, one row per fact; every change rewrites it in one
//! commit (it is small: hundreds of rows), so `SELECT * FROM system.grants` is the state and
//! `DESCRIBE HISTORY system.grants` (and `system.audit`) says who changed it. Changes are
//! serialized within a server; a second server's change becomes visible here within
//! [`RECHECK`], and two servers changing it at once conflict in Delta (one retries on the
//! other's state).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use medlake_auth::{AccessState, Grant, Privilege, RowFilter, Securable};
use medlake_lake::{TableName, Warehouse, WriteMode};

use crate::{Error, Result};

/// The table's name in the `system` schema.
pub const GRANTS: &str = "grants";
/// How stale this server's copy may be before it looks for another server's change.
pub const RECHECK: Duration = Duration::from_secs(1);

fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        text("principal"),
        text("privilege"),
        text("object_type"),
        text("object"),
        text("column_name"),
        text("expression"),
        text("columns"),
    ]))
}

fn table() -> Result<TableName> {
    Ok(TableName::new(medlake_views::system::SCHEMA, GRANTS)?)
}

struct Loaded {
    state: Arc<AccessState>,
    version: Option<u64>,
    checked: Instant,
}

/// This server's copy of the access state and the one writer of `system.grants`.
pub(crate) struct AccessStore {
    warehouse: Warehouse,
    loaded: std::sync::RwLock<Loaded>,
    writer: tokio::sync::Mutex<()>,
}

impl AccessStore {
    /// Opens (creating when missing) `system.grants` and loads it.
    pub async fn open(warehouse: Warehouse) -> Result<Self> {
        let name = table()?;
        if !warehouse.table_exists(&name).await? {
            warehouse.create_table(&name, &schema(), true).await?;
        }
        let (state, version) = load(&warehouse).await?;
        Ok(Self {
            warehouse,
            loaded: std::sync::RwLock::new(Loaded {
                state: Arc::new(state),
                version,
                checked: Instant::now(),
            }),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The version of `system.grants` the access state was read at (after looking for another
    /// server's change as [`Self::current`] does): what a result cached for a principal
    /// depends on.
    pub async fn current_version(&self) -> Result<Option<u64>> {
        self.current().await?;
        Ok(self.read().version)
    }

    /// The access state, re-read when another server may have changed it.
    pub async fn current(&self) -> Result<Arc<AccessState>> {
        {
            let loaded = self.read();
            if loaded.checked.elapsed() < RECHECK {
                return Ok(loaded.state.clone());
            }
        }
        let latest = self.warehouse.open_table(&table()?).await?.version();
        if let Some(state) = self.still_current(latest) {
            return Ok(state);
        }
        let (state, version) = load(&self.warehouse).await?;
        let state = Arc::new(state);
        *self.write() = Loaded {
            state: state.clone(),
            version,
            checked: Instant::now(),
        };
        Ok(state)
    }

    /// The copy, when it is of table version `latest` (marked as checked now).
    fn still_current(&self, latest: Option<u64>) -> Option<Arc<AccessState>> {
        let mut loaded = self.write();
        (latest == loaded.version).then(|| {
            loaded.checked = Instant::now();
            loaded.state.clone()
        })
    }

    /// The copy in memory, without looking at the table (for per-row functions).
    pub fn cached(&self) -> Arc<AccessState> {
        self.read().state.clone()
    }

    /// Applies `change` to the latest state and stores the result in one commit; nothing
    /// changes when `change` fails. Returns the new state.
    pub async fn change(
        &self,
        change: impl Fn(&mut AccessState) -> Result<()>,
    ) -> Result<Arc<AccessState>> {
        let _writer = self.writer.lock().await;
        let mut last_error = None;
        for _attempt in 0..3 {
            let (mut state, _) = load(&self.warehouse).await?;
            change(&mut state)?;
            match self
                .warehouse
                .write_batches(&table()?, vec![to_batch(&state)?], WriteMode::Overwrite)
                .await
            {
                Ok(outcome) => {
                    let state = Arc::new(state);
                    *self.write() = Loaded {
                        state: state.clone(),
                        version: Some(outcome.version),
                        checked: Instant::now(),
                    };
                    return Ok(state);
                }
                // Another server changed it meanwhile: apply ours to theirs.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .map(Error::from)
            .unwrap_or_else(|| Error::Internal("system.grants did not settle".into())))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn load(warehouse: &Warehouse) -> Result<(AccessState, Option<u64>)> {
    let name = table()?;
    let (provider, version) = warehouse.table_provider(&name, None).await?;
    let ctx = SessionContext::new();
    let batches = ctx.read_table(provider)?.collect().await?;
    let mut state = AccessState::default();
    for batch in &batches {
        read_batch(batch, &mut state)?;
    }
    Ok((state, Some(version)))
}

/// A text column (Delta scans may give views or dictionaries of strings).
fn column(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let missing = || Error::Internal(format!("system.grants has no text column {name}"));
    let column = batch.column_by_name(name).ok_or_else(missing)?;
    let text = arrow::compute::cast(column, &DataType::Utf8).map_err(|_| missing())?;
    text.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(missing)
}

fn read_batch(batch: &RecordBatch, state: &mut AccessState) -> Result<()> {
    let kind = &column(batch, "kind")?;
    let principal = &column(batch, "principal")?;
    let privilege = &column(batch, "privilege")?;
    let object_type = &column(batch, "object_type")?;
    let object = &column(batch, "object")?;
    let column_name = &column(batch, "column_name")?;
    let expression = &column(batch, "expression")?;
    let columns = &column(batch, "columns")?;
    let get = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    let bad = |i: usize| Error::Internal(format!("system.grants row {i} is malformed"));
    for i in 0..batch.num_rows() {
        let securable = || {
            Securable::from_parts(
                &get(object_type, i).unwrap_or_default(),
                &get(object, i).unwrap_or_default(),
            )
            .ok_or_else(|| bad(i))
        };
        let table_key = || -> Result<(String, String)> {
            match securable()? {
                Securable::Table { schema, table } => Ok((schema, table)),
                _ => Err(bad(i)),
            }
        };
        match kind.value(i) {
            "role" => {
                state.roles.insert(get(principal, i).ok_or_else(|| bad(i))?);
            }
            "member" => {
                let member = get(principal, i).ok_or_else(|| bad(i))?;
                let role = get(object, i).ok_or_else(|| bad(i))?;
                state.members.insert((member, role));
            }
            "grant" => {
                let privilege = get(privilege, i)
                    .and_then(|p| Privilege::parse(&p))
                    .ok_or_else(|| bad(i))?;
                state.grants.insert(Grant {
                    grantee: get(principal, i).ok_or_else(|| bad(i))?,
                    privilege,
                    on: securable()?,
                });
            }
            "owner" => {
                state
                    .owners
                    .insert(securable()?, get(principal, i).ok_or_else(|| bad(i))?);
            }
            "mask" => {
                state.masks.entry(table_key()?).or_default().insert(
                    get(column_name, i).ok_or_else(|| bad(i))?,
                    get(expression, i).ok_or_else(|| bad(i))?,
                );
            }
            "row_filter" => {
                state.row_filters.insert(
                    table_key()?,
                    RowFilter {
                        expression: get(expression, i).ok_or_else(|| bad(i))?,
                        columns: get(columns, i)
                            .unwrap_or_default()
                            .split(',')
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect(),
                    },
                );
            }
            "declassified" => {
                state.declassified.insert(table_key()?);
            }
            // A kind a newer medlake wrote: refuse rather than silently grant less or more.
            other => {
                return Err(Error::Internal(format!(
                    "system.grants holds a kind this medlake does not know: {other}"
                )));
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Rows {
    columns: [Vec<Option<String>>; 8],
}

impl Rows {
    fn push(&mut self, values: [Option<String>; 8]) {
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
}

fn to_batch(state: &AccessState) -> Result<RecordBatch> {
    let mut rows = Rows::default();
    let s = |v: &str| Some(v.to_string());
    let on = |o: &Securable| [s(o.kind()), s(&o.name())];
    for role in &state.roles {
        rows.push([s("role"), s(role), None, None, None, None, None, None]);
    }
    for (member, role) in &state.members {
        rows.push([
            s("member"),
            s(member),
            None,
            s("role"),
            s(role),
            None,
            None,
            None,
        ]);
    }
    for g in &state.grants {
        let [t, n] = on(&g.on);
        rows.push([
            s("grant"),
            s(&g.grantee),
            s(g.privilege.as_str()),
            t,
            n,
            None,
            None,
            None,
        ]);
    }
    for (o, owner) in &state.owners {
        let [t, n] = on(o);
        rows.push([s("owner"), s(owner), None, t, n, None, None, None]);
    }
    for ((schema, table), masks) in &state.masks {
        for (column, expression) in masks {
            rows.push([
                s("mask"),
                None,
                None,
                s("table"),
                Some(format!("{schema}.{table}")),
                s(column),
                s(expression),
                None,
            ]);
        }
    }
    for ((schema, table), filter) in &state.row_filters {
        rows.push([
            s("row_filter"),
            None,
            None,
            s("table"),
            Some(format!("{schema}.{table}")),
            None,
            s(&filter.expression),
            Some(filter.columns.join(",")),
        ]);
    }
    for (schema, table) in &state.declassified {
        rows.push([
            s("declassified"),
            None,
            None,
            s("table"),
            Some(format!("{schema}.{table}")),
            None,
            None,
            None,
        ]);
    }
    let columns: Vec<ArrayRef> = rows
        .columns
        .into_iter()
        .map(|values| Arc::new(StringArray::from(values)) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema(), columns)
        .map_err(|e| Error::Internal(format!("system.grants rows: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_survives_a_round_trip() {
        let mut state = AccessState::default();
        state.roles.insert("clinician".into());
        state.members.insert(("alice".into(), "clinician".into()));
        state.grants.insert(Grant {
            grantee: "clinician".into(),
            privilege: Privilege::CreateExternal,
            on: Securable::Schema("bronze".into()),
        });
        state.grants.insert(Grant {
            grantee: "etl".into(),
            privilege: Privilege::Usage,
            on: Securable::Secret("EHR".into()),
        });
        state
            .owners
            .insert(Securable::table("silver", "patients"), "bob".into());
        state
            .masks
            .entry(("silver".into(), "patients".into()))
            .or_default()
            .insert(
                "mrn".into(),
                "CASE WHEN is_member('clinician') THEN mrn ELSE '***' END".into(),
            );
        state.row_filters.insert(
            ("silver".into(), "patients".into()),
            RowFilter {
                expression: "ward = 'icu'".into(),
                columns: vec!["ward".into()],
            },
        );
        state.declassified.insert(("gold".into(), "x".into()));
        let batch = to_batch(&state).unwrap();
        let mut back = AccessState::default();
        read_batch(&batch, &mut back).unwrap();
        assert_eq!(back, state);
    }
}
