//! `DELETE`, `UPDATE` and `MERGE` on Delta tables: DataFusion's plan of the statement,
//! protected like every other plan (masks and row filters, [`crate::access`]), turned into
//! deltalake's copy-on-write operations (`medlake_lake::Warehouse::{delete,update,merge}_rows`),
//! one commit each.
//!
//! **What a DML statement sees is what its principal sees.** The predicates, SET values and
//! MERGE conditions are evaluated over the target's rows as the principal would read them:
//! a column masked for the principal is its masked value (so `WHERE ssn = '123'` matches only
//! what the mask shows, and `SET note = ssn` copies the masked value), and rows a row filter
//! hides are neither deleted, updated nor matched (the filter is added to the predicate, to
//! MERGE's ON and to its `NOT MATCHED BY SOURCE` clauses). Columns a statement does not set
//! are copied as they are stored. MERGE's source is a query, protected as any query.
//! A principal for whom any mask holds on the target may not UPDATE or MERGE a table with
//! CHECK constraints, invariants or generated columns (written by other Delta engines):
//! those rules read whole rows, masked columns included, and their refusals would tell.
//!
//! Subqueries in DELETE/UPDATE predicates, `UPDATE ... FROM` and `DELETE ... LIMIT` are
//! refused (`0A000`): write them as a MERGE.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind, MergeIntoOp};
use datafusion::logical_expr::{
    Cast, DmlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp,
};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use medlake_lake::{
    Hide, MERGE_SOURCE, MERGE_TARGET, Merge, MergeAction, MergeClause, MergeWhen, TableName,
};

use crate::{Error, Output, Result, Session};

/// What a chain of filters and projections over one scan of the target shows: which rows
/// (a predicate over the stored columns) and each of its columns (an expression over the
/// stored columns, unqualified).
#[derive(Debug)]
struct Seen {
    predicate: Option<Expr>,
    columns: HashMap<String, Expr>,
}

impl Seen {
    /// Whether any column is not shown as stored (a mask holds).
    fn masked(&self) -> bool {
        self.columns
            .iter()
            .any(|(name, e)| !matches!(e, Expr::Column(c) if &c.name == name))
    }
}

/// `then`, evaluated only where `shown` holds (false elsewhere). A row filter's rows must
/// never reach the user's predicate: `a AND b` may evaluate `b` on every row, and an error
/// it raises on a hidden row (a failed cast quoting the row, a division by zero) would tell
/// what the filter hides. CASE evaluates its THEN only on the rows its WHEN selects.
fn guarded(shown: Expr, then: Expr) -> Result<Expr> {
    Ok(datafusion::logical_expr::when(shown, then)
        .otherwise(datafusion::logical_expr::lit(false))?)
}

fn not_supported(what: impl Into<String>) -> Error {
    Error::NotSupported { what: what.into() }
}

/// `plan`, a chain over one scan of `target`, as a [`Seen`].
fn seen(plan: &LogicalPlan, target: &TableReference) -> Result<Seen> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if &scan.table_name != target || !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(not_supported(format!(
                    "a DELETE or UPDATE reading {} besides its target (use MERGE)",
                    scan.table_name
                )));
            }
            let columns = scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), Expr::Column(Column::from_name(f.name()))))
                .collect();
            Ok(Seen {
                predicate: None,
                columns,
            })
        }
        LogicalPlan::Filter(filter) => {
            let mut inner = seen(&filter.input, target)?;
            let predicate = substitute(&filter.predicate, &inner.columns)?;
            inner.predicate = Some(match inner.predicate {
                Some(p) => guarded(p, predicate)?,
                None => predicate,
            });
            Ok(inner)
        }
        LogicalPlan::Projection(projection) => {
            let inner = seen(&projection.input, target)?;
            let columns = projection
                .expr
                .iter()
                .zip(projection.schema.fields())
                .map(|(e, f)| Ok((f.name().clone(), substitute(e, &inner.columns)?)))
                .collect::<Result<_>>()?;
            Ok(Seen {
                predicate: inner.predicate,
                columns,
            })
        }
        LogicalPlan::SubqueryAlias(alias) => seen(&alias.input, target),
        LogicalPlan::Limit(_) => Err(not_supported("DELETE ... LIMIT")),
        LogicalPlan::Join(_) => Err(not_supported("UPDATE ... FROM (use MERGE)")),
        other => Err(not_supported(format!(
            "a DELETE or UPDATE over {} (use MERGE)",
            other.display()
        ))),
    }
}

/// `expr` with every column replaced by what `columns` says it is. Subqueries are refused:
/// deltalake evaluates predicates over the target's files alone.
fn substitute(expr: &Expr, columns: &HashMap<String, Expr>) -> Result<Expr> {
    rewrite_columns(
        expr,
        "a subquery in DELETE or UPDATE (write it as MERGE INTO t USING (subquery) ...)",
        |c| {
            columns.get(&c.name).cloned().ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "column {} is not a column of the table",
                    c.name
                ))
            })
        },
    )
}

/// `expr` in the form deltalake evaluates and prints: each column replaced by `resolve`,
/// aliases dropped, and a mask's TRY_CAST to its column's type made a CAST (deltalake cannot
/// print TRY_CAST into its commit and refuses the operation; a mask converts by
/// construction). Subqueries are refused with `subquery`: deltalake evaluates expressions
/// over the target's (and MERGE's source's) rows alone.
fn rewrite_columns(
    expr: &Expr,
    subquery: &str,
    resolve: impl Fn(&Column) -> datafusion::error::Result<Expr>,
) -> Result<Expr> {
    let mut found = false;
    expr.apply(|e| {
        found |= matches!(
            e,
            Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::ScalarSubquery(_)
                | Expr::SetComparison(_)
                | Expr::OuterReferenceColumn(..)
        );
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if found {
        return Err(not_supported(subquery));
    }
    let replaced = expr.clone().transform_up(|e| {
        Ok(match e {
            Expr::Column(c) => Transformed::yes(resolve(&c)?),
            Expr::Alias(alias) => Transformed::yes(*alias.expr),
            Expr::TryCast(t) => Transformed::yes(Expr::Cast(Cast {
                expr: t.expr,
                field: t.field,
            })),
            other => Transformed::no(other),
        })
    })?;
    Ok(replaced.data)
}

/// `expr` with its types made to agree over `schema` (the planner leaves that to the
/// analyzer, which deltalake's operations do not run on every expression).
fn coerce(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    let mut rewriter = TypeCoercionRewriter::new(schema);
    Ok(expr.rewrite(&mut rewriter)?.data)
}

/// `expr` with its (unqualified) columns qualified by `qualifier`.
fn qualify(expr: Expr, qualifier: &str) -> Result<Expr> {
    Ok(expr
        .transform_up(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_none() => Transformed::yes(Expr::Column(
                    Column::new(Some(TableReference::bare(qualifier)), c.name),
                )),
                other => Transformed::no(other),
            })
        })?
        .data)
}

/// What a commit's predicates become in its commitInfo: the statement's shape, literals as `?`.
fn hide() -> Hide {
    Arc::new(|sql: &str| {
        medlake_audit::Statement::normalize(sql)
            .as_str()
            .to_string()
    })
}

impl Session {
    /// Runs a planned (and protected) DELETE, UPDATE or MERGE.
    pub(crate) async fn execute_change(&self, dml: DmlStatement) -> Result<Output> {
        let name = self.resolve(&dml.table_name)?;
        let what = match &dml.op {
            WriteOp::Delete => "DELETE",
            WriteOp::Update => "UPDATE",
            _ => "MERGE",
        };
        self.check_writable(&name, what).await?;
        if self.shared.warehouse.external(&name).await?.is_some() {
            return Err(Error::Views(medlake_views::Error::WrongObjectType {
                name: name.to_string(),
                is: "an external table",
                expected: "a Delta table of the warehouse (external tables are read-only)",
            }));
        }
        match &dml.op {
            WriteOp::Delete => self.delete(&name, &dml).await,
            WriteOp::Update => self.update(&name, &dml).await,
            WriteOp::MergeInto(op) => self.merge(&name, &dml, op).await,
            other => Err(not_supported(format!("{} on Delta tables", other.name()))),
        }
    }

    async fn delete(&self, name: &TableName, dml: &DmlStatement) -> Result<Output> {
        let seen = seen(&dml.input, &dml.table_name)?;
        let schema = DFSchema::try_from(dml.target.schema().as_ref().clone())?;
        let predicate = seen.predicate.map(|p| coerce(p, &schema)).transpose()?;
        let outcome = self
            .shared
            .warehouse
            .delete_rows(name, predicate, Arc::new(self.ctx.state()), hide())
            .await?;
        Ok(Output::command(
            format!("DELETE {}", outcome.rows),
            outcome.rows,
        ))
    }

    async fn update(&self, name: &TableName, dml: &DmlStatement) -> Result<Output> {
        let LogicalPlan::Projection(top) = dml.input.as_ref() else {
            return Err(Error::Internal("an UPDATE's plan has no projection".into()));
        };
        let inner = seen(&top.input, &dml.table_name)?;
        let schema = DFSchema::try_from(dml.target.schema().as_ref().clone())?;
        let mut set = Vec::new();
        for (expr, field) in top.expr.iter().zip(top.schema.fields()) {
            let unchanged =
                matches!(expr.clone().unalias(), Expr::Column(c) if &c.name == field.name());
            if !unchanged {
                let value = coerce(substitute(expr, &inner.columns)?, &schema)?;
                set.push((field.name().clone(), value));
            }
        }
        self.refuse_masked_checks(name, &inner, "UPDATE").await?;
        let predicate = inner.predicate.map(|p| coerce(p, &schema)).transpose()?;
        let outcome = self
            .shared
            .warehouse
            .update_rows(name, predicate, set, Arc::new(self.ctx.state()), hide())
            .await?;
        Ok(Output::command(
            format!("UPDATE {}", outcome.rows),
            outcome.rows,
        ))
    }

    /// A principal a mask holds for may not rewrite rows of a table whose own rules read
    /// whole rows (their refusals would tell what the mask hides).
    async fn refuse_masked_checks(
        &self,
        name: &TableName,
        seen: &Seen,
        what: &'static str,
    ) -> Result<()> {
        if seen.masked() && self.shared.warehouse.has_row_checks(name).await? {
            return Err(Error::PermissionDenied {
                principal: self.principal.to_string(),
                privilege: what,
                object: format!(
                    "{name}: its CHECK constraints, invariants or generated columns read columns masked for you"
                ),
            });
        }
        Ok(())
    }

    /// The target of a MERGE as this session's principal sees it.
    async fn merge_target(&self, dml: &DmlStatement) -> Result<Seen> {
        let scan =
            LogicalPlanBuilder::scan(dml.table_name.clone(), dml.target.clone(), None)?.build()?;
        let access = self.access_state().await?;
        let protected = self.protect(scan, &access, &HashMap::new()).await?;
        seen(&protected, &dml.table_name)
    }

    async fn merge(
        &self,
        name: &TableName,
        dml: &DmlStatement,
        op: &MergeIntoOp,
    ) -> Result<Output> {
        let target = self.merge_target(dml).await?;
        self.refuse_masked_checks(name, &target, "MERGE").await?;
        let (source, sources) = merge_source(dml.input.as_ref())?;
        let target_columns: HashMap<String, Expr> = target
            .columns
            .iter()
            .map(|(n, e)| Ok((n.clone(), qualify(e.clone(), MERGE_TARGET)?)))
            .collect::<Result<_>>()?;
        let filter = target
            .predicate
            .map(|p| qualify(p, MERGE_TARGET))
            .transpose()?;
        let schema =
            DFSchema::try_from_qualified_schema(MERGE_TARGET, dml.target.schema().as_ref())?.join(
                &DFSchema::try_from_qualified_schema(MERGE_SOURCE, source.schema().as_arrow())?,
            )?;
        let rewrite = |e: &Expr| -> Result<Expr> {
            let e = merge_expr(e, &dml.table_name, &target_columns, &sources)?;
            coerce(e, &schema)
        };
        let mut on = rewrite(&op.on)?;
        if let Some(filter) = &filter {
            on = guarded(filter.clone(), on)?;
        }
        let fields: Vec<String> = dml
            .target
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let clauses = op
            .clauses
            .iter()
            .map(|clause| merge_clause(clause, &rewrite, filter.as_ref(), &fields))
            .collect::<Result<Vec<_>>>()?;
        let merge = Merge {
            source: datafusion::prelude::DataFrame::new(self.ctx.state(), source),
            on,
            clauses,
        };
        let outcome = self
            .shared
            .warehouse
            .merge_rows(name, merge, Arc::new(self.ctx.state()), hide())
            .await?;
        Ok(Output::command(
            format!("MERGE {}", outcome.rows),
            outcome.rows,
        ))
    }
}

/// One MERGE clause for deltalake: its expressions over `target.c`/`source.c` (`rewrite`),
/// `filter` (the target's row filter, if any) added to `NOT MATCHED BY SOURCE`.
fn merge_clause(
    clause: &datafusion::logical_expr::dml::MergeIntoClause,
    rewrite: &dyn Fn(&Expr) -> Result<Expr>,
    filter: Option<&Expr>,
    fields: &[String],
) -> Result<MergeClause> {
    let mut predicate = clause.predicate.as_ref().map(rewrite).transpose()?;
    let when = match clause.kind.canonical() {
        MergeIntoClauseKind::Matched => MergeWhen::Matched,
        MergeIntoClauseKind::NotMatchedBySource => {
            // Hidden target rows are never "not matched": they are not there.
            if let Some(filter) = filter {
                predicate = Some(match predicate {
                    Some(p) => guarded(filter.clone(), p)?,
                    None => filter.clone(),
                });
            }
            MergeWhen::NotMatchedBySource
        }
        _ => MergeWhen::NotMatched,
    };
    let action = match &clause.action {
        MergeIntoAction::Update(set) => MergeAction::Update(
            set.iter()
                .map(|(c, v)| Ok((c.clone(), rewrite(v)?)))
                .collect::<Result<_>>()?,
        ),
        MergeIntoAction::Delete => MergeAction::Delete,
        MergeIntoAction::Insert { columns, values } => {
            let columns: Vec<String> = if columns.is_empty() {
                fields.to_vec()
            } else {
                columns.clone()
            };
            MergeAction::Insert(
                columns
                    .into_iter()
                    .zip(values)
                    .map(|(c, v)| Ok((c, rewrite(v)?)))
                    .collect::<Result<_>>()?,
            )
        }
    };
    if matches!(
        (when, &action),
        (
            MergeWhen::NotMatched,
            MergeAction::Update(_) | MergeAction::Delete
        ) | (
            MergeWhen::Matched | MergeWhen::NotMatchedBySource,
            MergeAction::Insert(_)
        )
    ) {
        return Err(not_supported(
            "this MERGE clause (WHEN MATCHED and NOT MATCHED BY SOURCE update or delete; WHEN NOT MATCHED inserts)",
        ));
    }
    Ok(MergeClause {
        when,
        predicate,
        action,
    })
}

/// MERGE's source with one plain name per column, and where each of its (qualified)
/// columns went.
fn merge_source(input: &LogicalPlan) -> Result<(LogicalPlan, HashMap<Column, String>)> {
    let mut names = HashMap::new();
    let mut exprs = Vec::new();
    for (qualifier, field) in input.schema().iter() {
        let column = Column::new(qualifier.cloned(), field.name());
        if names.values().any(|n: &String| n == field.name()) {
            return Err(Error::InvalidValue {
                what: "MERGE source".into(),
                reason: format!(
                    "it has two columns named {}: give them different names",
                    field.name()
                ),
            });
        }
        names.insert(column.clone(), field.name().clone());
        exprs.push(Expr::Column(column).alias(field.name()));
    }
    let plan = LogicalPlanBuilder::from(input.clone())
        .project(exprs)?
        .build()?;
    Ok((plan, names))
}

/// A MERGE expression over `target.c` (as the principal sees it) and `source.c`.
fn merge_expr(
    expr: &Expr,
    target: &TableReference,
    target_columns: &HashMap<String, Expr>,
    sources: &HashMap<Column, String>,
) -> Result<Expr> {
    rewrite_columns(
        expr,
        "a subquery in a MERGE condition or value (join it into the USING source)",
        |c| {
            let value = if c.relation.as_ref() == Some(target) {
                target_columns.get(&c.name).cloned()
            } else {
                sources
                    .get(c)
                    .map(|n| Expr::Column(Column::new(Some(TableReference::bare(MERGE_SOURCE)), n)))
            };
            value.ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "MERGE: column {c} is neither the target's nor the source's"
                ))
            })
        },
    )
}
