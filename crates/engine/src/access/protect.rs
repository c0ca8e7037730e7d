//! Column masks and row filters, applied to a statement's plan before it runs, and carried
//! through materialized views by lineage.
//!
//! Every scan of a protected table becomes `Projection(masks) <- Filter(row filters) <- Scan`
//! in the unoptimized logical plan, for every kind of statement (queries, `COPY (...) TO
//! STDOUT`, `INSERT ... SELECT`, `CREATE TABLE AS`, prepared statements, time travel, Flight),
//! so nothing above the scan ever sees a masked value: not a join, a group key, an error
//! message or a written table.
//!
//! Masks and filters are SQL over the table's columns; `current_user()`, `session_user()`,
//! `is_member('role')` and `is_account_group_member('role')` in them are replaced by the
//! principal's values and the expression simplified, so `CASE WHEN is_member('clinician')
//! THEN mrn ELSE '***' END` becomes `mrn` (the mask is lifted) or `'***'` for each principal.
//!
//! A materialized view's rows are computed from real values, so its columns inherit the masks
//! of what they are computed from ([`lineage`]): a column that *is* a masked column (selected,
//! renamed, a group key, or equal to one through a join key) gets the same mask; a column
//! computed from one in any other way (a function, an aggregate, a CASE) is NULL for whoever
//! the mask is not lifted for. A view over a row-filtered table inherits the filter when it
//! carries the filter's columns unchanged, and is refused otherwise, unless its owner
//! declassified it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, ScalarValue, TableReference};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder, lit};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use medlake_auth::{AccessState, Principal};

use crate::{Error, Result};

/// `schema.table`, lower case.
pub(crate) type TableKey = (String, String);

/// One mask as defined on its table.
#[derive(Debug)]
pub(crate) struct Mask {
    /// The masked column (unqualified).
    pub column: String,
    /// The mask over its table's columns (unqualified).
    pub expr: Expr,
    /// Its table's columns (unqualified), to type and simplify it.
    pub schema: DFSchemaRef,
}

/// What protects one column of a table.
#[derive(Clone, Debug, Default)]
pub(crate) struct ColumnPolicy {
    /// The masks its values come from.
    pub masks: Vec<Arc<Mask>>,
    /// The column's value *is* the (one) masked column's value, so its mask can be applied
    /// to it; otherwise it is NULL where a mask holds.
    pub exact: bool,
    /// Whether the mask was defined on this table (applied as written, with the table's
    /// other columns in reach).
    pub direct: bool,
}

/// A row filter over one table's columns.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// The table the filter was defined on (`schema.table`).
    pub source: String,
    /// Over this table's columns (unqualified).
    pub expr: Expr,
    pub columns: Vec<String>,
}

/// Everything that protects one table.
#[derive(Clone, Debug, Default)]
pub(crate) struct TablePolicy {
    pub columns: BTreeMap<String, ColumnPolicy>,
    pub filters: Vec<Filter>,
    /// Why reading the table is refused (a view that drops a row filter's columns).
    pub refused: Option<String>,
}

impl TablePolicy {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.filters.is_empty() && self.refused.is_none()
    }
}

/// A mask or filter's SQL, planned over a table's columns. A bare function name as a mask
/// is applied to the column (`SET MASK redact_mrn`).
pub(crate) fn plan_expression(
    state: &SessionState,
    schema: &DFSchema,
    sql: &str,
    column: Option<&str>,
) -> Result<Expr> {
    let is_name = !sql.is_empty()
        && sql.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !sql.starts_with(|c: char| c.is_ascii_digit());
    let text = match column {
        Some(column)
            if is_name
                && !schema
                    .fields()
                    .iter()
                    .any(|f| f.name().eq_ignore_ascii_case(sql)) =>
        {
            format!("{sql}(\"{}\")", column.replace('"', "\"\""))
        }
        _ => sql.to_string(),
    };
    state
        .create_logical_expr(&text, schema)
        .map_err(|e| Error::InvalidValue {
            what: "mask or row filter".into(),
            reason: e.strip_backtrace(),
        })
}

/// The policy of a table that is not a materialized view: its own masks and filter.
pub(crate) fn base_policy(
    state: &SessionState,
    access: &AccessState,
    key: &TableKey,
    schema: &DFSchema,
) -> Result<TablePolicy> {
    let mut policy = TablePolicy::default();
    let label = format!("{}.{}", key.0, key.1);
    if let Some(masks) = access.masks.get(key) {
        for (column, sql) in masks {
            let Some(field) = schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(column))
            else {
                continue; // the column was dropped; nothing to mask
            };
            let expr = plan_expression(state, schema, sql, Some(field.name()))?;
            policy.columns.insert(
                field.name().clone(),
                ColumnPolicy {
                    masks: vec![Arc::new(Mask {
                        column: field.name().clone(),
                        expr,
                        schema: Arc::new(schema.clone()),
                    })],
                    exact: true,
                    direct: true,
                },
            );
        }
    }
    if let Some(filter) = access.row_filters.get(key) {
        policy.filters.push(Filter {
            source: label,
            expr: plan_expression(state, schema, &filter.expression, None)?,
            columns: filter.columns.clone(),
        });
    }
    Ok(policy)
}

/// Who a plan is protected for.
pub(crate) struct Viewer<'a> {
    pub principal: &'a Principal,
    pub roles: &'a BTreeSet<String>,
    /// Break glass: masks and filters are lifted (audited by the caller).
    pub lifted: bool,
}

impl Viewer<'_> {
    /// `expr` with the principal's identity functions replaced by constants, simplified.
    fn specialize(&self, expr: &Expr, schema: &DFSchemaRef) -> Result<Expr> {
        let replaced = expr
            .clone()
            .transform_up(|e| {
                let Expr::ScalarFunction(ScalarFunction { func, args }) = &e else {
                    return Ok(Transformed::no(e));
                };
                let name = func.name().to_ascii_lowercase();
                let value = match name.as_str() {
                    "current_user" | "session_user" | "user" => lit(self.principal.name.clone()),
                    "is_member" | "is_account_group_member" => match args.as_slice() {
                        [
                            Expr::Literal(ScalarValue::Utf8(Some(role)), _)
                            | Expr::Literal(ScalarValue::Utf8View(Some(role)), _)
                            | Expr::Literal(ScalarValue::LargeUtf8(Some(role)), _),
                        ] => lit(self.roles.contains(&role.to_lowercase())),
                        _ => return Ok(Transformed::no(e)),
                    },
                    _ => return Ok(Transformed::no(e)),
                };
                Ok(Transformed::yes(value))
            })?
            .data;
        // Types first (`ELSE NULL` becomes a typed NULL), then constants folded: `CASE WHEN
        // true THEN mrn ELSE ... END` is `mrn`.
        let mut coercion = TypeCoercionRewriter::new(schema);
        let coerced = match replaced.clone().rewrite(&mut coercion) {
            Ok(t) => t.data,
            Err(_) => return Ok(fold_decided_case(replaced)),
        };
        let context = SimplifyContext::builder()
            .with_schema(schema.clone())
            .build();
        // A mask the simplifier cannot handle is applied as written.
        let simplified = ExprSimplifier::new(context)
            .simplify(coerced.clone())
            .unwrap_or(coerced);
        Ok(fold_decided_case(simplified))
    }

    /// Whether `mask` leaves its column as it is for this viewer.
    pub(crate) fn lifts(&self, mask: &Mask) -> Result<bool> {
        if self.lifted {
            return Ok(true);
        }
        let simplified = self.specialize(&mask.expr, &mask.schema)?;
        Ok(is_column(&simplified, &mask.column))
    }
}

/// `CASE WHEN true THEN x ...` is `x`; `CASE WHEN false THEN x ELSE y END` is `y` (what the
/// simplifier leaves of a mask once the principal's membership is known).
fn fold_decided_case(expr: Expr) -> Expr {
    let Expr::Case(case) = &expr else {
        return expr;
    };
    if case.expr.is_some() {
        return expr;
    }
    for (when, then) in &case.when_then_expr {
        match strip(when) {
            Expr::Literal(ScalarValue::Boolean(Some(true)), _) => {
                return fold_decided_case(strip(then).clone());
            }
            Expr::Literal(ScalarValue::Boolean(Some(false) | None), _) => continue,
            _ => return expr,
        }
    }
    match &case.else_expr {
        Some(otherwise) => fold_decided_case(strip(otherwise).clone()),
        None => expr,
    }
}

fn strip(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// Whether `expr` is the column itself (perhaps cast to its own type by coercion).
fn is_column(expr: &Expr, column: &str) -> bool {
    match strip(expr) {
        Expr::Column(c) => c.name == column,
        Expr::Cast(cast) => is_column(&cast.expr, column),
        _ => false,
    }
}

/// `expr` with its columns qualified by `qualifier`, and `rename` applied to their names.
fn requalify(
    expr: &Expr,
    qualifier: &TableReference,
    rename: &dyn Fn(&str) -> String,
) -> Result<Expr> {
    Ok(expr
        .clone()
        .transform_up(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new(
                Some(qualifier.clone()),
                rename(&c.name),
            )))),
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// Protects `plan` for `viewer`: every scan of a table in `policies` (by the key `resolve`
/// gives its name) is masked and filtered. Returns the plan unchanged when nothing applies.
pub(crate) fn protect(
    plan: LogicalPlan,
    viewer: &Viewer<'_>,
    policies: &HashMap<TableKey, Arc<TablePolicy>>,
    resolve: &dyn Fn(&TableReference) -> Option<TableKey>,
) -> Result<LogicalPlan> {
    if policies.values().all(|p| p.is_empty()) {
        return Ok(plan);
    }
    let mut changed = false;
    let plan = plan
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return if changed {
                    Ok(Transformed::yes(node.recompute_schema()?))
                } else {
                    Ok(Transformed::no(node))
                };
            };
            let Some(policy) = resolve(&scan.table_name)
                .and_then(|key| policies.get(&key))
                .filter(|p| !p.is_empty())
            else {
                return Ok(Transformed::no(node));
            };
            let wrapped = wrap_scan(node.clone(), viewer, policy)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            changed |= wrapped.transformed;
            Ok(wrapped)
        })
        .map_err(unwrap_external)?;
    Ok(plan.data)
}

fn unwrap_external(e: datafusion::error::DataFusionError) -> Error {
    match e {
        datafusion::error::DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(error) => *error,
            Err(other) => Error::from(datafusion::error::DataFusionError::External(other)),
        },
        datafusion::error::DataFusionError::Context(_, inner) => unwrap_external(*inner),
        other => Error::from(other),
    }
}

fn wrap_scan(
    node: LogicalPlan,
    viewer: &Viewer<'_>,
    policy: &TablePolicy,
) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::TableScan(scan) = &node else {
        return Ok(Transformed::no(node));
    };
    let qualifier = scan.table_name.clone();
    let schema = scan.projected_schema.clone();
    if let Some(reason) = &policy.refused
        && !viewer.lifted
    {
        return Err(Error::PermissionDenied {
            principal: viewer.principal.to_string(),
            privilege: "SELECT",
            object: reason.clone(),
        });
    }
    // The table's own (unqualified) schema, for simplifying its policy expressions.
    let unqualified = Arc::new(DFSchema::try_from(schema.as_arrow().clone())?);
    let mut predicate: Option<Expr> = None;
    if !viewer.lifted {
        for filter in &policy.filters {
            let specialized = viewer.specialize(&filter.expr, &unqualified)?;
            if matches!(
                specialized,
                Expr::Literal(ScalarValue::Boolean(Some(true)), _)
            ) {
                continue;
            }
            let expr = requalify(&specialized, &qualifier, &|n| n.to_string())?;
            predicate = Some(match predicate {
                Some(p) => p.and(expr),
                None => expr,
            });
        }
    }
    let mut masked = false;
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = Expr::Column(Column::new(Some(qualifier.clone()), field.name()));
        let Some(column_policy) = policy.columns.get(field.name()) else {
            exprs.push(column);
            continue;
        };
        let mut holding = Vec::new();
        for mask in &column_policy.masks {
            if !viewer.lifts(mask)? {
                holding.push(mask.clone());
            }
        }
        if holding.is_empty() {
            exprs.push(column);
            continue;
        }
        masked = true;
        let value = match holding.as_slice() {
            [mask] if column_policy.direct => {
                let specialized = viewer.specialize(&mask.expr, &mask.schema)?;
                requalify(&specialized, &qualifier, &|n| n.to_string())?
            }
            [mask] if column_policy.exact && only_column(&mask.expr, &mask.column) => {
                let specialized = viewer
                    .specialize(&mask.expr, &mask.schema)
                    .unwrap_or_else(|_| mask.expr.clone());
                let own = field.name().clone();
                requalify(&specialized, &qualifier, &|_| own.clone())?
            }
            _ => Expr::Literal(ScalarValue::try_from(field.data_type())?, None),
        };
        let value = Expr::TryCast(datafusion::logical_expr::TryCast::new(
            Box::new(value),
            field.data_type().clone(),
        ));
        exprs.push(value.alias_qualified(Some(qualifier.clone()), field.name()));
    }
    if predicate.is_none() && !masked {
        return Ok(Transformed::no(node));
    }
    let mut builder = LogicalPlanBuilder::from(node);
    if let Some(predicate) = predicate {
        builder = builder.filter(predicate)?;
    }
    if masked {
        builder = builder.project(exprs)?;
    }
    Ok(Transformed::yes(builder.build()?))
}

/// Whether `expr` reads no column but `column`.
fn only_column(expr: &Expr, column: &str) -> bool {
    expr.column_refs().iter().all(|c| c.name == column)
}

/// The tables `plan` scans (every node, subqueries too), by the name they are scanned under.
pub(crate) fn scanned(plan: &LogicalPlan) -> Vec<TableReference> {
    let mut tables = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            tables.push(scan.table_name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables
}

/// How a column of a plan's output depends on protected columns.
#[derive(Clone, Debug, Default)]
struct Taint {
    masks: Vec<Arc<Mask>>,
    exact: bool,
    /// The scanned columns it passes through unchanged: (table, scan, column), the scan
    /// numbered in the plan (a self-join's two scans are two sources of rows). A union's
    /// column passes each branch's.
    pass: Vec<Pass>,
}

/// A scanned column: (table, which scan of the plan, column).
type Pass = (TableKey, usize, String);

/// A row filter met under a view's query: the scan it filters, and why it cannot be
/// carried to the view's rows even if its columns reach them (a window over other rows).
struct FilterUse {
    key: TableKey,
    scan: usize,
    filter: Filter,
    mixed: Option<String>,
}

/// What the lineage walk carries along: the tables' policies, how to name them, the filters
/// met so far and the next scan's number.
struct Walk<'a> {
    sources: &'a HashMap<TableKey, Arc<TablePolicy>>,
    resolve: &'a dyn Fn(&TableReference) -> Option<TableKey>,
    filters: Vec<FilterUse>,
    scans: usize,
}

impl Taint {
    fn merge(taints: impl IntoIterator<Item = Taint>) -> Taint {
        let mut masks: Vec<Arc<Mask>> = Vec::new();
        for t in taints {
            for m in t.masks {
                if !masks.iter().any(|x| Arc::ptr_eq(x, &m)) {
                    masks.push(m);
                }
            }
        }
        Taint {
            masks,
            exact: false,
            pass: Vec::new(),
        }
    }
}

/// The policy a materialized view inherits from the tables its (planned) definition reads:
/// `sources` holds each scanned table's own policy, `resolve` names them, `declassified`
/// says whether the view's owner may drop its inputs' row filters.
pub(crate) fn lineage(
    definition: &LogicalPlan,
    sources: &HashMap<TableKey, Arc<TablePolicy>>,
    resolve: &dyn Fn(&TableReference) -> Option<TableKey>,
    view: &str,
    declassified: &dyn Fn(&TableKey) -> bool,
) -> Result<TablePolicy> {
    let mut walk = Walk {
        sources,
        resolve,
        filters: Vec::new(),
        scans: 0,
    };
    let taints = taints(definition, &mut walk)?;
    let schema = definition.schema();
    let mut policy = TablePolicy::default();
    for (field, taint) in schema.fields().iter().zip(&taints) {
        if !taint.masks.is_empty() {
            policy.columns.insert(
                field.name().clone(),
                ColumnPolicy {
                    exact: taint.exact && taint.masks.len() == 1,
                    masks: taint.masks.clone(),
                    direct: false,
                },
            );
        }
    }
    for FilterUse {
        key: table,
        scan,
        filter,
        mixed,
    } in walk.filters
    {
        // Each filter column must reach the output unchanged, from the scan it filters.
        let mut renames: HashMap<String, String> = HashMap::new();
        for column in &filter.columns {
            let wanted = (table.clone(), scan, column.clone());
            let carried = schema
                .fields()
                .iter()
                .zip(&taints)
                .find_map(|(field, taint)| {
                    taint.pass.contains(&wanted).then(|| field.name().clone())
                });
            if let Some(out) = carried {
                renames.insert(column.clone(), out);
            }
        }
        let lifted = declassified(&table);
        if let Some(why) = mixed.filter(|_| !lifted) {
            policy.refused = Some(format!(
                "materialized view {view}: it reads {}, whose row filter on ({}) it cannot carry: {why} (its owner may ALTER MATERIALIZED VIEW {view} DECLASSIFY)",
                filter.source,
                filter.columns.join(", ")
            ));
        } else if renames.len() == filter.columns.len() {
            let qualifier = TableReference::bare("__view");
            let expr = requalify(&filter.expr, &qualifier, &|n| {
                renames.get(n).cloned().unwrap_or_else(|| n.to_string())
            })?
            .transform_up(|e| match e {
                Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                    c.name,
                )))),
                other => Ok(Transformed::no(other)),
            })?
            .data;
            policy.filters.push(Filter {
                source: filter.source.clone(),
                columns: filter.columns.iter().map(|c| renames[c].clone()).collect(),
                expr,
            });
        } else if !lifted {
            policy.refused = Some(format!(
                "materialized view {view}: it reads {}, whose row filter on ({}) it does not carry (its owner may ALTER MATERIALIZED VIEW {view} DECLASSIFY)",
                filter.source,
                filter.columns.join(", ")
            ));
        }
    }
    Ok(policy)
}

fn column_taint(input: &LogicalPlan, taints: &[Taint], expr: &Expr) -> Taint {
    let schema = input.schema();
    let of = |c: &Column| {
        schema
            .maybe_index_of_column(c)
            .and_then(|i| taints.get(i))
            .cloned()
    };
    match strip(expr) {
        Expr::Column(c) => of(c).unwrap_or_default(),
        other => Taint::merge(other.column_refs().into_iter().filter_map(of)),
    }
}

/// How each output column of `plan` depends on protected columns, subqueries in its
/// expressions included: every column of a node with a subquery (`IN`, `EXISTS`, a scalar
/// subquery) carries the masks of what the subquery returns, and the subquery's row filters
/// are never carried (it computes over rows the filter would hide).
fn taints(plan: &LogicalPlan, walk: &mut Walk<'_>) -> Result<Vec<Taint>> {
    let mut subqueries: Vec<(Arc<LogicalPlan>, Vec<Expr>)> = Vec::new();
    for expr in plan.expressions() {
        expr.apply(|e| {
            let q = match e {
                Expr::ScalarSubquery(q) => q,
                Expr::Exists(x) => &x.subquery,
                Expr::InSubquery(x) => &x.subquery,
                _ => return Ok(TreeNodeRecursion::Continue),
            };
            subqueries.push((q.subquery.clone(), q.outer_ref_columns.clone()));
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    let first_filter = walk.filters.len();
    let inputs: Vec<Vec<Taint>> = plan
        .inputs()
        .into_iter()
        .map(|input| taints(input, walk))
        .collect::<Result<_>>()?;
    // What a correlated subquery reads of this node's input rows.
    let outer = |refs: &[Expr]| -> Vec<Arc<Mask>> {
        let mut masks = Vec::new();
        for r in refs {
            let Expr::OuterReferenceColumn(_, column) = r else {
                continue;
            };
            for (input, input_taints) in plan.inputs().into_iter().zip(&inputs) {
                if let Some(t) = input
                    .schema()
                    .maybe_index_of_column(column)
                    .and_then(|i| input_taints.get(i))
                {
                    masks.extend(t.masks.iter().cloned());
                }
            }
        }
        masks
    };
    let outer_masks: Vec<Vec<Arc<Mask>>> = subqueries.iter().map(|(_, refs)| outer(refs)).collect();
    let mut out = node_taints(plan, walk, inputs, first_filter)?;
    for ((subquery, _), outer_masks) in subqueries.into_iter().zip(outer_masks) {
        let mut returned = Taint::merge(taints(&subquery, walk)?).masks;
        returned.extend(outer_masks);
        if returned.is_empty() {
            continue;
        }
        for t in &mut out {
            for m in &returned {
                if !t.masks.iter().any(|x| Arc::ptr_eq(x, m)) {
                    t.masks.push(m.clone());
                }
            }
            t.exact = false;
        }
    }
    Ok(out)
}

fn node_taints(
    plan: &LogicalPlan,
    walk: &mut Walk<'_>,
    inputs: Vec<Vec<Taint>>,
    first_filter: usize,
) -> Result<Vec<Taint>> {
    let width = plan.schema().fields().len();
    let all_inputs = || Taint::merge(inputs.iter().flatten().cloned());
    Ok(match plan {
        LogicalPlan::TableScan(scan) => scan_taints(scan, walk)?,
        LogicalPlan::Projection(p) => p
            .expr
            .iter()
            .map(|e| column_taint(&p.input, &inputs[0], e))
            .collect(),
        LogicalPlan::Aggregate(a) => {
            // GROUPING SETS / ROLLUP / CUBE: one expression, one output column per distinct
            // grouping expression plus the grouping id. Their subtotal rows mix every value
            // of a column, so none passes a filter column through.
            let (group, sets): (Vec<Expr>, bool) = match a.group_expr.as_slice() {
                [Expr::GroupingSet(set)] => {
                    (set.distinct_expr().into_iter().cloned().collect(), true)
                }
                other => (other.to_vec(), false),
            };
            let mut out: Vec<Taint> = group
                .iter()
                .map(|e| {
                    let mut t = column_taint(&a.input, &inputs[0], e);
                    if sets {
                        t.pass.clear();
                    }
                    t
                })
                .collect();
            if sets {
                out.push(Taint::default());
            }
            // Grouping sets add an internal id column.
            for e in &a.aggr_expr {
                let mut t = column_taint(&a.input, &inputs[0], e);
                t.exact = false;
                t.pass.clear();
                out.push(t);
            }
            out.resize_with(width, all_inputs);
            out
        }
        LogicalPlan::Window(w) => {
            let mut out = inputs[0].clone();
            for e in &w.window_expr {
                let mut t = column_taint(&w.input, &inputs[0], e);
                t.exact = false;
                t.pass.clear();
                out.push(t);
                mix_by_window(&w.input, &inputs[0], e, &mut walk.filters[first_filter..]);
            }
            out
        }
        LogicalPlan::Join(join) => join_taints(join, &inputs[0], &inputs[1], width),
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                let column: Vec<Taint> = inputs.iter().filter_map(|t| t.get(i).cloned()).collect();
                let exact = column.iter().all(|t| t.exact);
                let mut pass: Vec<Pass> = Vec::new();
                for p in column.iter().flat_map(|t| t.pass.iter()) {
                    if !pass.contains(p) {
                        pass.push(p.clone());
                    }
                }
                let mut t = Taint::merge(column);
                t.exact = exact && t.masks.len() <= 1;
                t.pass = pass;
                t
            })
            .collect(),
        LogicalPlan::Filter(f) => {
            let mut out = inputs.into_iter().next().unwrap_or_default();
            share_equal(&f.predicate, f.input.schema(), &mut out);
            out
        }
        LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Subquery(_) => inputs.into_iter().next().unwrap_or_default(),
        LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_)) => {
            inputs.into_iter().next().unwrap_or_default()
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => vec![Taint::default(); width],
        // Anything else: every output column may come from every input column.
        _ => vec![all_inputs(); width],
    })
}

/// Columns a predicate says are equal (`a = b`, `a = upper(b)`) tell each other's values: each
/// side's columns carry the other side's masks as well.
fn share_equal(predicate: &Expr, schema: &DFSchema, taints: &mut [Taint]) {
    use datafusion::logical_expr::Operator;
    use datafusion::logical_expr::utils::split_conjunction;
    for conjunct in split_conjunction(predicate) {
        let Expr::BinaryExpr(b) = strip(conjunct) else {
            continue;
        };
        if b.op != Operator::Eq {
            continue;
        }
        let indexes = |e: &Expr| -> Vec<usize> {
            e.column_refs()
                .into_iter()
                .filter_map(|c| schema.maybe_index_of_column(c))
                .filter(|i| *i < taints.len())
                .collect()
        };
        let (l, r) = (indexes(&b.left), indexes(&b.right));
        let masks = |ix: &[usize]| -> Vec<Arc<Mask>> {
            ix.iter().flat_map(|i| taints[*i].masks.clone()).collect()
        };
        let (lm, rm) = (masks(&l), masks(&r));
        for (targets, masks) in [(&l, &rm), (&r, &lm)] {
            for &i in targets {
                let target = &mut taints[i];
                for m in masks {
                    if !target.masks.iter().any(|x| Arc::ptr_eq(x, m)) {
                        target.masks.push(m.clone());
                        target.exact = false;
                    }
                }
            }
        }
    }
}

/// A window function computes each row's value from other rows: of its partition, which
/// must hold only rows that agree on every filtered scan's filter columns (`PARTITION BY`
/// them), or the value tells a reader about rows its filter hides.
fn mix_by_window(input: &LogicalPlan, taints: &[Taint], expr: &Expr, filters: &mut [FilterUse]) {
    let partition: Vec<Taint> = match strip(expr) {
        Expr::WindowFunction(w) => w
            .params
            .partition_by
            .iter()
            .map(|e| column_taint(input, taints, e))
            .collect(),
        _ => Vec::new(),
    };
    for used in filters.iter_mut().filter(|f| f.mixed.is_none()) {
        let partitioned = used.filter.columns.iter().all(|column| {
            let wanted = (used.key.clone(), used.scan, column.clone());
            partition.iter().any(|t| t.pass.contains(&wanted))
        });
        if !partitioned {
            used.mixed = Some(format!(
                "a window function ({}) computes over rows of other filter values (PARTITION BY {} would not)",
                expr.schema_name(),
                used.filter.columns.join(", ")
            ));
        }
    }
}

/// A join's output: its sides' columns, where columns equal through a join key share their
/// masks (a semi or anti join keeps one side).
fn join_taints(
    join: &datafusion::logical_expr::Join,
    left: &[Taint],
    right: &[Taint],
    width: usize,
) -> Vec<Taint> {
    let (mut left, mut right) = (left.to_vec(), right.to_vec());

    // Columns equal through a join key share their masks.
    for (l, r) in &join.on {
        let (Expr::Column(lc), Expr::Column(rc)) = (strip(l), strip(r)) else {
            continue;
        };
        let (Some(li), Some(ri)) = (
            join.left.schema().maybe_index_of_column(lc),
            join.right.schema().maybe_index_of_column(rc),
        ) else {
            continue;
        };
        let lt = left[li].clone();
        let rt = right[ri].clone();
        for (target, other) in [(&mut left[li], &rt), (&mut right[ri], &lt)] {
            for m in &other.masks {
                if !target.masks.iter().any(|x| Arc::ptr_eq(x, m)) {
                    target.masks.push(m.clone());
                }
            }
            if target.masks.len() > 1 {
                target.exact = false;
            }
        }
    }
    // `ON a = b` beyond the equi-keys (the unoptimized plan keeps ON as a filter).
    if let Some(filter) = &join.filter
        && let Ok(schema) = join.left.schema().join(join.right.schema())
    {
        let split = left.len();
        let mut both: Vec<Taint> = left.into_iter().chain(right).collect();
        share_equal(filter, &schema, &mut both);
        right = both.split_off(split);
        left = both;
    }
    match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
            let mut out = left;
            out.resize_with(width, Taint::default);
            out
        }
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
            let mut out = right;
            out.resize_with(width, Taint::default);
            out
        }
        _ => left.into_iter().chain(right).collect(),
    }
}

/// A scan's columns: the masks its table's policy gives them, and its filters to carry.
fn scan_taints(
    scan: &datafusion::logical_expr::TableScan,
    walk: &mut Walk<'_>,
) -> Result<Vec<Taint>> {
    let number = walk.scans;
    walk.scans += 1;
    let key = (walk.resolve)(&scan.table_name);
    let policy = key.as_ref().and_then(|k| walk.sources.get(k));
    if let (Some(key), Some(policy)) = (&key, policy) {
        if let Some(reason) = &policy.refused {
            return Err(Error::PermissionDenied {
                principal: "the view".into(),
                privilege: "SELECT",
                object: reason.clone(),
            });
        }
        for filter in &policy.filters {
            walk.filters.push(FilterUse {
                key: key.clone(),
                scan: number,
                filter: filter.clone(),
                mixed: None,
            });
        }
    }
    Ok(scan
        .projected_schema
        .fields()
        .iter()
        .map(|field| {
            let column = policy.and_then(|p| p.columns.get(field.name()));
            Taint {
                masks: column.map(|c| c.masks.clone()).unwrap_or_default(),
                exact: column.is_none_or(|c| c.exact),
                pass: key
                    .clone()
                    .map(|k| (k, number, field.name().clone()))
                    .into_iter()
                    .collect(),
            }
        })
        .collect())
}
