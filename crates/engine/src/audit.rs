//! Every statement a session runs lands in `system.audit` ([`medlake_audit`]): who (user and
//! roles), from which door and address, the statement with its literals kept out, the tables
//! read and written (from the privileges it needed), rows, outcome, SQLSTATE, duration and a
//! break-glass reason. Writes are audited before they are acknowledged; queries when their
//! stream ends (with the rows returned). If the audit log cannot be written, statements are
//! refused: fail closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use medlake_audit::{Door, Event, Outcome, Statement as Text};
use medlake_auth::{Object, PrincipalKind, Privilege};

use crate::privileges::Need;
use crate::statement::Statement;
use crate::{Error, Output, Result, Session};

/// Where a session's statements come from, for the audit.
#[derive(Clone, Debug)]
pub struct Origin {
    pub door: Door,
    /// The client's address, when the door has one.
    pub client: Option<String>,
}

impl Origin {
    pub fn new(door: Door, client: Option<String>) -> Self {
        Self { door, client }
    }
}

/// The statement as audit text: SQL (its literals are removed by the normalizer), or a
/// description of our own statements naming only objects.
fn text(statement: &Statement) -> Text {
    let sql = match statement {
        Statement::Sql(sql) => sql.to_string(),
        Statement::DescribeHistory { table, .. } => format!("DESCRIBE HISTORY {table}"),
        Statement::Optimize { table, .. } => format!("OPTIMIZE {table}"),
        Statement::ClusterBy { table, .. } => format!("ALTER TABLE {table} CLUSTER BY"),
        Statement::SetTableProperties { table: t, .. } => {
            format!("ALTER TABLE {t} SET TBLPROPERTIES")
        }
        Statement::CreateMaterializedView(create) => {
            let definition = &create.definition;
            let mut sql = format!(
                "CREATE {}MATERIALIZED VIEW {}{}",
                if create.or_replace { "OR REPLACE " } else { "" },
                if create.if_not_exists {
                    "IF NOT EXISTS "
                } else {
                    ""
                },
                create.name
            );
            if let Some(schedule) = &definition.schedule {
                sql.push_str(&format!(" REFRESH {schedule}"));
            }
            if !definition.policy.is_auto() {
                sql.push_str(&format!(" REFRESH POLICY {}", definition.policy));
            }
            for expectation in &definition.expectations {
                sql.push_str(&format!(" {expectation}"));
            }
            sql.push_str(&format!(" AS {}", definition.body()));
            sql
        }
        Statement::RefreshMaterializedView { name, full, .. } => format!(
            "REFRESH MATERIALIZED VIEW {name}{}",
            if *full { " FULL" } else { "" }
        ),
        Statement::ExplainRefresh { name } => format!("EXPLAIN REFRESH MATERIALIZED VIEW {name}"),
        Statement::DropMaterializedView { name, .. } => format!("DROP MATERIALIZED VIEW {name}"),
        Statement::ShowMaterializedViews => "SHOW MATERIALIZED VIEWS".into(),
        Statement::ImportForeignSchema(import) => format!(
            "IMPORT FOREIGN SCHEMA {} FROM {} INTO {}",
            import.remote_schema, import.kind, import.into
        ),
        Statement::Vacuum { table, .. } => format!("VACUUM {table}"),
        Statement::Alert(alert) => alert.audit_text(),
        Statement::Erase(erase) => erase.audit_text(),
        Statement::RestoreTable { table, .. } => format!("RESTORE TABLE {table}"),
        Statement::CloneTable {
            target,
            source,
            deep,
            ..
        } => format!(
            "CREATE TABLE {target} {} CLONE {source}",
            if *deep { "DEEP" } else { "SHALLOW" }
        ),
        Statement::Access(access) => access_text(access),
    };
    Text::normalize(&sql)
}

/// The audit text of a grant, role, mask, row filter or ownership statement.
fn access_text(access: &crate::access::parse::AccessStatement) -> String {
    use crate::access::parse::AccessStatement as A;
    match access {
        A::CreateRole { name, .. } => format!("CREATE ROLE {name}"),
        A::DropRole { name, .. } => format!("DROP ROLE {name}"),
        A::Privileges {
            grant,
            privileges,
            on,
            grantees,
        } => format!(
            "{} {} ON {on} {} {}",
            if *grant { "GRANT" } else { "REVOKE" },
            if privileges.is_empty() {
                "ALL".to_string()
            } else {
                privileges
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if *grant { "TO" } else { "FROM" },
            grantees.join(", ")
        ),
        A::Membership {
            grant,
            roles,
            members,
        } => format!(
            "{} {} {} {}",
            if *grant { "GRANT" } else { "REVOKE" },
            roles.join(", "),
            if *grant { "TO" } else { "FROM" },
            members.join(", ")
        ),
        A::ShowGrants { to, on } => format!(
            "SHOW GRANTS{}{}",
            to.as_ref().map(|t| format!(" TO {t}")).unwrap_or_default(),
            on.as_ref().map(|o| format!(" ON {o}")).unwrap_or_default()
        ),
        A::SetMask {
            table,
            column,
            mask,
        } => format!(
            "ALTER TABLE {table} ALTER COLUMN {column} {}",
            if mask.is_some() {
                "SET MASK ?"
            } else {
                "DROP MASK"
            }
        ),
        A::SetRowFilter { table, filter } => format!(
            "ALTER TABLE {table} {}",
            if filter.is_some() {
                "SET ROW FILTER ?"
            } else {
                "DROP ROW FILTER"
            }
        ),
        A::OwnerTo { on, owner } => format!("ALTER {on} OWNER TO {owner}"),
        A::Declassify { view } => format!("ALTER MATERIALIZED VIEW {view} DECLASSIFY"),
    }
}

/// The tables a statement read and wrote, from the privileges it needed.
pub(crate) fn objects(needs: &[Need]) -> (Vec<String>, Vec<String>) {
    let (mut read, mut written) = (Vec::new(), Vec::new());
    for need in needs {
        if let Object::Table { schema, table } = &need.object {
            let name = format!("{schema}.{table}");
            if need.privilege == Privilege::Select {
                read.push(name);
            } else {
                written.push(name);
            }
        }
    }
    (read, written)
}

impl Session {
    pub(crate) fn door(&self) -> Door {
        match &self.origin {
            Some(origin) => origin.door,
            None => match self.principal.kind {
                PrincipalKind::IngestToken => Door::Http,
                PrincipalKind::Local => Door::Cli,
                PrincipalKind::User => Door::Postgres,
            },
        }
    }

    /// The event of a statement, before its outcome is known.
    pub(crate) fn audit_event(&self, statement: &Statement) -> Event {
        let roles = self
            .shared
            .access
            .store
            .cached()
            .roles_of(&self.principal)
            .into_iter()
            .collect();
        Event {
            roles,
            client: self.origin.as_ref().and_then(|o| o.client.clone()),
            session_id: Some(self.id.to_string()),
            break_glass: self.break_glass_reason(),
            ..Event::of(self.principal.name.clone(), self.door(), text(statement))
        }
    }

    /// Refuses to run anything while the audit log cannot be written (fail closed).
    pub(crate) fn audit_available(&self) -> Result<()> {
        Ok(self.shared.audit.ensure_available()?)
    }

    /// Records a statement's outcome: a command is durable in the audit before it is
    /// acknowledged; a query's rows are counted and recorded when its stream ends (or is
    /// dropped); a failure is recorded with its SQLSTATE.
    pub(crate) async fn audited(
        &self,
        mut event: Event,
        started: Instant,
        result: Result<Output>,
    ) -> Result<Output> {
        let (read, written) = std::mem::take(
            &mut *self
                .touched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        event.objects_read = read;
        event.objects_written = written;
        // `SET medlake.break_glass` records its own reason (its text loses the literal).
        event.break_glass = self.break_glass_reason().or(event.break_glass);
        let audit = self.shared.audit.clone();
        match result {
            Err(error) => {
                event.outcome = failure_outcome(&error);
                event.code = Some(error.code());
                event.duration = started.elapsed();
                // The statement failed either way; a failing audit log says so too.
                audit.record_write(event).await?;
                Err(error)
            }
            Ok(Output::Command { tag, rows }) => {
                event.rows = Some(rows);
                event.duration = started.elapsed();
                audit.record_write(event).await?;
                Ok(Output::Command { tag, rows })
            }
            Ok(Output::Rows(stream)) => {
                let schema = stream.schema();
                let mut guard = Recorder {
                    audit,
                    event: Some(event),
                    rows: Arc::new(AtomicU64::new(0)),
                    started,
                };
                let rows = guard.rows.clone();
                let counted = stream.map(move |batch| {
                    match &batch {
                        Ok(batch) => {
                            rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        }
                        // A query that fails while streaming (`SELECT 1/0`): its event says so.
                        Err(e) => {
                            if let Some(event) = guard.event.as_mut() {
                                event.outcome = Outcome::Error;
                                event.code = Some(crate::error::datafusion_code(e));
                            }
                        }
                    }
                    batch
                });
                Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
                    schema, counted,
                ))))
            }
        }
    }
}

impl Session {
    /// Records a statement that failed before it ran (refused or not planned when prepared),
    /// queued like a query's event.
    pub(crate) fn audit_failure(
        &self,
        statement: &Statement,
        error: &Error,
        started: Instant,
    ) -> Result<()> {
        let mut event = self.audit_event(statement);
        event.outcome = failure_outcome(error);
        event.code = Some(error.code());
        event.duration = started.elapsed();
        Ok(self.shared.audit.record_read(event)?)
    }

    /// Records a statement a door answered without the engine (the Postgres door's `SET`,
    /// `SHOW`, `BEGIN`, `DISCARD`, ...), described as `statement` (literals are removed):
    /// queued like a query's event. Refused while the log cannot be written (fail closed).
    pub fn audit_door_statement(
        &self,
        statement: &str,
        failed: Option<medlake_common::Code>,
    ) -> Result<()> {
        self.audit_available()?;
        let mut event = self.audit_event(&Statement::ShowMaterializedViews);
        event.statement = Text::normalize(statement);
        event.kind = event.statement.kind();
        if let Some(code) = failed {
            event.outcome = Outcome::Error;
            event.code = Some(code);
        }
        Ok(self.shared.audit.record_read(event)?)
    }
}

impl crate::Engine {
    /// Records what a door refused before any session existed: a failed login (`LOGIN`), a
    /// request with no or an unknown credential (401) or one outside its scope (403), as
    /// `claimed` (the user name or token name the client gave, cut to 128 characters) from
    /// `client`. `what` is normalized like any statement. Queued like a query's event; an
    /// error only when the log cannot be written.
    pub fn audit_refused(
        &self,
        door: Door,
        client: Option<String>,
        claimed: &str,
        what: &str,
        code: medlake_common::Code,
    ) -> Result<()> {
        let claimed: String = claimed.chars().take(128).collect();
        let event = Event {
            client,
            outcome: if code == medlake_common::Code::InsufficientPrivilege {
                Outcome::Denied
            } else {
                Outcome::Error
            },
            code: Some(code),
            ..Event::new(claimed, door, what)
        };
        Ok(self.shared.audit.record_read(event)?)
    }
}

/// How a failed statement ended: refused by a privilege check, or an error.
fn failure_outcome(error: &Error) -> Outcome {
    if matches!(
        error,
        Error::PermissionDenied { .. } | Error::ReadOnly { .. }
    ) {
        Outcome::Denied
    } else {
        Outcome::Error
    }
}

/// Records a query's event when its stream is done with (consumed or dropped).
struct Recorder {
    audit: medlake_audit::AuditLog,
    event: Option<Event>,
    rows: Arc<AtomicU64>,
    started: Instant,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.rows = Some(self.rows.load(Ordering::Relaxed));
            event.duration = self.started.elapsed();
            if let Err(e) = self.audit.record_read(event) {
                tracing::error!(target: "medlake::audit", error = %e, "a query's audit event could not be queued");
            }
        }
    }
}
