//! Which privileges a statement needs, derived from what it does: the DataFusion logical
//! plan of SQL statements (every node, including nested ones: `EXPLAIN ANALYZE`, subqueries,
//! `SELECT ... INTO`, `PREPARE`) and our own statements. [`Session::execute`] and
//! [`Session::describe`] ask for these before anything runs; a door never decides.
//!
//! Deny by default: a plan node or statement kind without a rule here needs
//! [`Privilege::Admin`].
//!
//! [`Session::execute`]: crate::Session::execute
//! [`Session::describe`]: crate::Session::describe

use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::dml::{InsertOp, MergeIntoAction};
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement as PlanStatement, WriteOp};
use medlake_auth::{AccessState, Object, Principal, Privilege};

use crate::access::parse::{AccessStatement, Target};
use crate::statement::Statement;
use crate::{Error, Result};

/// One privilege on one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Need {
    pub privilege: Privilege,
    pub object: Object,
}

impl Need {
    pub(crate) fn new(privilege: Privilege, object: Object) -> Self {
        Self { privilege, object }
    }

    fn admin(what: impl Into<String>) -> Self {
        Self::new(Privilege::Admin, Object::Warehouse(what.into()))
    }
}

/// Settings a non-admin session may change with `SET` (DataFusion's, as Flight SQL clients
/// send them; the Postgres door keeps its own connection settings). `datafusion.runtime.*`
/// (memory limits, spill folders) is the operator's, refused for everyone.
const SETTABLE: &[&str] = &[
    "datafusion.catalog.default_schema",
    "datafusion.execution.time_zone",
    "datafusion.explain.",
    "datafusion.format.",
];

/// Checks that `principal` holds every need (by its level, roles, grants or ownership in
/// `state`); the first one missing is the error, and every refusal is logged for the audit
/// trail.
pub(crate) fn check(principal: &Principal, state: &AccessState, needs: &[Need]) -> Result<()> {
    let roles = state.roles_of(principal);
    for need in needs {
        if !state.allows(principal, &roles, &need.privilege, &need.object) {
            tracing::warn!(
                target: "medlake::audit",
                principal = %principal.name,
                privilege = need.privilege.as_str(),
                object = %need.object,
                "permission denied"
            );
            return Err(Error::PermissionDenied {
                principal: principal.to_string(),
                privilege: need.privilege.as_str(),
                object: need.object.to_string(),
            });
        }
    }
    Ok(())
}

/// The object a table reference names, under `default_schema`. A time-travel table
/// (`VERSION AS OF`) is the table it is a version of: `schema.table@n#tag` in its own schema.
pub(crate) fn table_object(reference: &TableReference, default_schema: &str) -> Object {
    let (schema, table) = match reference {
        TableReference::Bare { table } => (default_schema.to_string(), table.to_string()),
        TableReference::Partial { schema, table } | TableReference::Full { schema, table, .. } => {
            (schema.to_string(), table.to_string())
        }
    };
    if schema == crate::TIME_TRAVEL_SCHEMA {
        let name = table.split('@').next().unwrap_or_default();
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (default_schema.to_string(), table.to_string()),
            [.., schema, table] => (schema.to_string(), table.to_string()),
            [] => (schema, table),
        };
        return Object::Table {
            schema: schema.to_lowercase(),
            table: table.to_lowercase(),
        };
    }
    Object::Table {
        schema: schema.to_lowercase(),
        table: table.to_lowercase(),
    }
}

/// What a change of `target` needs. Each kind of change needs its own privilege. DELETE and
/// UPDATE scan their target in their input (SELECT, from the scan: stricter than PostgreSQL,
/// which asks for it only when WHERE or SET reads a column).
fn dml_needs(dml: &datafusion::logical_expr::DmlStatement, target: Object) -> Vec<Need> {
    let mut needs = Vec::new();
    let privilege = match &dml.op {
        // INSERT OVERWRITE / REPLACE removes the rows it does not write.
        WriteOp::Insert(InsertOp::Overwrite | InsertOp::Replace) => {
            needs.push(Need::new(Privilege::Delete, target.clone()));
            Privilege::Insert
        }
        WriteOp::Insert(_) | WriteOp::Ctas => Privilege::Insert,
        WriteOp::Update => Privilege::Update,
        WriteOp::Delete | WriteOp::Truncate => Privilege::Delete,
        // MERGE reads its target (ON, conditions, values) and needs the write privilege of
        // each clause kind it holds.
        WriteOp::MergeInto(merge) => {
            for clause in &merge.clauses {
                let p = match clause.action {
                    MergeIntoAction::Update(_) => Privilege::Update,
                    MergeIntoAction::Insert { .. } => Privilege::Insert,
                    MergeIntoAction::Delete => Privilege::Delete,
                };
                needs.push(Need::new(p, target.clone()));
            }
            Privilege::Select
        }
        // A write kind DataFusion adds later: admins only until it has a rule.
        _ => Privilege::Admin,
    };
    needs.push(Need::new(privilege, target));
    needs
}

/// What running `plan` needs.
/// Whether a scan is the one DataFusion plans for a `table_history(...)` call (no table can
/// have that name: names are letters, digits, `_` and `-`).
fn is_history_scan(name: &TableReference) -> bool {
    matches!(name, TableReference::Bare { table } if **table == format!("{}()", crate::history::FUNCTION))
}

pub(crate) fn for_plan(plan: &LogicalPlan, default_schema: &str) -> Result<Vec<Need>> {
    let mut needs = Vec::new();
    let table = |r: &TableReference| table_object(r, default_schema);
    plan.apply_with_subqueries(|node| {
        match node {
            // `table_history('t')`'s scan is named after the function: SELECT on `t` was
            // checked before planning, through the statement's pins (`pin_versions`).
            LogicalPlan::TableScan(scan) if is_history_scan(&scan.table_name) => {}
            LogicalPlan::TableScan(scan) => {
                needs.push(Need::new(Privilege::Select, table(&scan.table_name)));
            }
            LogicalPlan::Dml(dml) => needs.extend(dml_needs(dml, table(&dml.table_name))),
            LogicalPlan::Ddl(ddl) => {
                let need = match ddl {
                    DdlStatement::CreateMemoryTable(c) => {
                        Need::new(Privilege::Create, table(&c.name))
                    }
                    DdlStatement::CreateView(c) => Need::new(Privilege::Create, table(&c.name)),
                    DdlStatement::DropTable(d) => Need::new(Privilege::Drop, table(&d.name)),
                    DdlStatement::DropView(d) => Need::new(Privilege::Drop, table(&d.name)),
                    DdlStatement::CreateCatalogSchema(c) => Need::new(
                        Privilege::Create,
                        Object::Schema(
                            c.schema_name
                                .rsplit('.')
                                .next()
                                .unwrap_or_default()
                                .to_lowercase(),
                        ),
                    ),
                    DdlStatement::DropCatalogSchema(d) => Need::new(
                        Privilege::Drop,
                        Object::Schema(d.name.schema_name().to_lowercase()),
                    ),
                    DdlStatement::CreateExternalTable(c) => {
                        let values = c.options.values().map(String::as_str);
                        for name in
                            secret_references(values.chain(c.locations.iter().map(String::as_str)))
                        {
                            needs.push(Need::new(Privilege::UseSecret, Object::Secret(name)));
                        }
                        Need::new(Privilege::CreateExternal, table(&c.name))
                    }
                    other => Need::admin(other.name()),
                };
                needs.push(need);
            }
            LogicalPlan::Statement(statement) => match statement {
                PlanStatement::SetVariable(set) => needs.push(setting(&set.variable)),
                PlanStatement::ResetVariable(reset) => needs.push(setting(&reset.variable)),
                // PREPARE's statement is this node's input, checked as any other; EXECUTE
                // runs what this session prepared (and was checked); transactions are
                // refused by the planner.
                PlanStatement::Prepare(_)
                | PlanStatement::Execute(_)
                | PlanStatement::Deallocate(_)
                | PlanStatement::TransactionStart(_)
                | PlanStatement::TransactionEnd(_) => {}
            },
            LogicalPlan::Copy(_) => needs.push(Need::admin("COPY to files on the server")),
            LogicalPlan::Extension(ext) => {
                needs.push(Need::admin(format!("plan node {}", ext.node.name())))
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Subquery(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::DescribeTable(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::RecursiveQuery(_) => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    // Keys of the de-identification functions are secrets: using one needs USE SECRET.
    let keys = medlake_deid::referenced_keys(plan).map_err(|e| Error::InvalidValue {
        what: "de-identification key".into(),
        reason: e.strip_backtrace(),
    })?;
    for name in keys {
        needs.push(Need::new(Privilege::UseSecret, Object::Secret(name)));
    }
    needs.sort();
    needs.dedup();
    Ok(needs)
}

/// `SET`/`RESET` of a DataFusion setting.
fn setting(variable: &str) -> Need {
    let name = variable.trim().to_ascii_lowercase();
    if name.starts_with("datafusion.runtime.") {
        // Nobody, not even an admin, changes the process's memory pool or spill folder from
        // SQL: the operator sets them (MEDLAKE_MEMORY_LIMIT, MEDLAKE_SPILL_DIR).
        return Need::new(
            Privilege::Admin,
            Object::Warehouse(format!(
                "setting {name} (the server's runtime; set by the operator)"
            )),
        );
    }
    let allowed = SETTABLE.iter().any(|s| {
        if s.ends_with('.') {
            name.starts_with(s)
        } else {
            name == *s
        }
    });
    if allowed {
        Need::new(
            Privilege::Select,
            Object::Warehouse(format!("setting {name}")),
        )
    } else {
        Need::admin(format!("setting {name}"))
    }
}

/// Whether `variable` may never be set from SQL, whoever asks.
pub(crate) fn operator_only(variable: &str) -> bool {
    variable
        .trim()
        .to_ascii_lowercase()
        .starts_with("datafusion.runtime.")
}

/// The names of the `${NAME}` secret references among option values.
pub(crate) fn secret_references<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = values
        .into_iter()
        .filter_map(|v| {
            let name = v.trim().strip_prefix("${")?.strip_suffix('}')?;
            Some(name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What one of our own statements needs (SQL statements are planned first: [`for_plan`]).
pub(crate) fn for_own(
    statement: &Statement,
    table: impl Fn(&[String]) -> Result<Object>,
) -> Result<Vec<Need>> {
    use crate::statement::name_parts;
    Ok(match statement {
        Statement::Sql(_) => {
            return Err(Error::Internal(
                "SQL statements are checked on their plan".into(),
            ));
        }
        Statement::CreateMaterializedView(create) => {
            let parts = medlake_views::definition::name_parts(&create.name)?;
            vec![Need::new(Privilege::Create, table(&parts)?)]
        }
        Statement::RefreshMaterializedView { name, .. } | Statement::ExplainRefresh { name } => {
            vec![Need::new(Privilege::Refresh, table(&name_parts(name)?)?)]
        }
        Statement::DropMaterializedView { name, .. } => {
            vec![Need::new(Privilege::Drop, table(&name_parts(name)?)?)]
        }
        Statement::ShowMaterializedViews => vec![Need::new(
            Privilege::Select,
            Object::Warehouse("materialized views".into()),
        )],
        Statement::DescribeHistory { table: name, .. } => {
            vec![Need::new(Privilege::Select, table(&name_parts(name)?)?)]
        }
        Statement::Optimize { table: name, .. } | Statement::Vacuum { table: name, .. } => {
            vec![Need::new(Privilege::Maintain, table(&name_parts(name)?)?)]
        }
        // Deletes rows and history from every table: the warehouse's admins only.
        Statement::Erase(_) => vec![Need::admin("erasure of a patient from every table")],
        // Rewrites the table to an earlier state, or changes how every later write lays out
        // its rows: its owner's (or an admin's) decision.
        Statement::RestoreTable { table: name, .. }
        | Statement::ClusterBy { table: name, .. }
        | Statement::SetTableProperties { table: name, .. } => {
            vec![Need::new(Privilege::Owner, table(&name_parts(name)?)?)]
        }
        // A clone holds every row and column of its source unmasked and unfiltered, and its
        // creator owns it: the source's owner's (or an admin's) decision, like a grant.
        Statement::CloneTable { target, source, .. } => vec![
            Need::new(Privilege::Create, table(&name_parts(target)?)?),
            Need::new(Privilege::Owner, table(&name_parts(source)?)?),
        ],
        Statement::Access(access) => access_needs(access, &table)?,
        Statement::Alert(alert) => alert_needs(alert, &table)?,
        Statement::ImportForeignSchema(import) => {
            let mut needs: Vec<Need> = secret_references(
                import
                    .options
                    .iter()
                    .map(|(_, v)| v.as_str())
                    .chain([import.location.as_str()]),
            )
            .into_iter()
            .map(|name| Need::new(Privilege::UseSecret, Object::Secret(name)))
            .collect();
            needs.push(Need::new(
                Privilege::CreateExternal,
                Object::Schema(import.into.to_lowercase()),
            ));
            needs
        }
    })
}

/// What an alert statement needs. A rule sends what it finds out of the warehouse (to the
/// server's webhooks), so creating one on a view is its owner's decision; dropping and
/// acknowledging name a rule, whose view is known only when it is looked up: the session
/// checks those against the rule's view (`alerting.rs`), with the same privileges.
fn alert_needs(
    statement: &medlake_alerts::AlertStatement,
    table: &impl Fn(&[String]) -> Result<Object>,
) -> Result<Vec<Need>> {
    use medlake_alerts::AlertStatement as A;
    Ok(match statement {
        A::Create(create) => vec![Need::new(
            Privilege::Owner,
            table(&crate::statement::name_parts(&create.on)?)?,
        )],
        // Anyone may listen: each notification is checked against the listener's privileges
        // on the rule's view when it arrives (`Session::next_notification`).
        A::Drop { .. } | A::Acknowledge { .. } | A::Listen { .. } | A::Unlisten { .. } => {
            Vec::new()
        }
        A::Show => vec![Need::new(
            Privilege::Select,
            Object::Warehouse("alert rules".into()),
        )],
    })
}

/// What an access-control statement needs: roles are the admins'; grants, masks, filters,
/// owners are their object's owner's (admins hold every ownership).
fn access_needs(
    statement: &AccessStatement,
    table: &impl Fn(&[String]) -> Result<Object>,
) -> Result<Vec<Need>> {
    use crate::statement::name_parts;
    let owner_of = |target: &Target| -> Result<Need> {
        Ok(match target {
            Target::Table(name) => Need::new(Privilege::Owner, table(&name_parts(name)?)?),
            Target::Schema(schema) => {
                Need::new(Privilege::Owner, Object::Schema(schema.to_lowercase()))
            }
            Target::Secret(name) => Need::admin(format!("grants on secret {name}")),
            Target::Warehouse => Need::admin("grants on the warehouse"),
        })
    };
    Ok(match statement {
        AccessStatement::CreateRole { .. }
        | AccessStatement::DropRole { .. }
        | AccessStatement::Membership { .. } => vec![Need::admin("roles and role membership")],
        AccessStatement::Privileges { on, .. } => vec![owner_of(on)?],
        AccessStatement::OwnerTo { on, .. } => vec![owner_of(on)?],
        // Each row lists what the principal may see (filtered when run).
        AccessStatement::ShowGrants { .. } => vec![Need::new(
            Privilege::Select,
            Object::Warehouse("grants".into()),
        )],
        AccessStatement::SetMask { table: name, .. }
        | AccessStatement::SetRowFilter { table: name, .. }
        | AccessStatement::Declassify { view: name } => {
            vec![Need::new(Privilege::Owner, table(&name_parts(name)?)?)]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_settings_are_the_operators() {
        assert!(operator_only("datafusion.runtime.memory_limit"));
        assert!(operator_only(" DataFusion.Runtime.temp_directory"));
        assert_eq!(
            setting("datafusion.runtime.memory_limit").privilege,
            Privilege::Admin
        );
        assert_eq!(
            setting("datafusion.catalog.default_schema").privilege,
            Privilege::Select
        );
        assert_eq!(
            setting("datafusion.explain.format").privilege,
            Privilege::Select
        );
        assert_eq!(
            setting("datafusion.optimizer.hash_join_inlist_pushdown_max_size").privilege,
            Privilege::Admin
        );
    }

    #[test]
    fn secret_references_are_found() {
        assert_eq!(
            secret_references(["${A}", "plain", " ${B} ", "${A}", "x${C}"]),
            vec!["A".to_string(), "B".to_string()]
        );
    }
}
