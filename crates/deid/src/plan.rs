//! Which secrets a plan uses: the literal key names of its `pseudonym` and `shift_date`
//! calls, for the engine's USE SECRET check.

use std::collections::BTreeSet;

use datafusion::common::plan_err;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::args::literal_text;
use crate::pseudonym::PSEUDONYM;
use crate::shift::SHIFT_DATE;

/// The position of the key-name argument of a keyed function called `name`.
pub fn key_argument(name: &str) -> Option<usize> {
    match name {
        PSEUDONYM => Some(1),
        SHIFT_DATE => Some(2),
        _ => None,
    }
}

/// The secrets `plan` keys with: the key names of every `pseudonym` and `shift_date` call
/// in every expression of every node, subqueries and nested statements included (`EXPLAIN`,
/// `COPY (...)`, `INSERT ... SELECT`, CTAS, views' inputs), sorted and without duplicates.
///
/// Run it on the plan as planned from SQL, before the optimizer: the optimizer folds a call
/// whose arguments are all constants into its result, and the call (with its key name)
/// disappears from the plan.
///
/// Fails closed: a call whose key is not a string literal is an error (planning already
/// refuses it; this guards plans built some other way), so no secret is used unchecked.
pub fn referenced_keys(plan: &LogicalPlan) -> DfResult<Vec<String>> {
    let mut names = BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            collect(expr, &mut names)?;
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    Ok(names.into_iter().collect())
}

/// [`referenced_keys`] for one expression (not the subqueries it may hold).
pub fn referenced_keys_in_expr(expr: &Expr) -> DfResult<Vec<String>> {
    let mut names = BTreeSet::new();
    collect(expr, &mut names)?;
    Ok(names.into_iter().collect())
}

fn collect(expr: &Expr, names: &mut BTreeSet<String>) -> DfResult<()> {
    expr.apply(|e| {
        if let Expr::ScalarFunction(call) = e
            && let Some(index) = key_argument(call.func.name())
        {
            let name = match call.args.get(index) {
                Some(Expr::Literal(value, _)) => literal_text(value),
                _ => None,
            };
            match name {
                Some(name) => {
                    names.insert(name.to_owned());
                }
                None => {
                    return plan_err!(
                        "{}: the key name must be a string literal naming a secret",
                        call.func.name()
                    );
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}
