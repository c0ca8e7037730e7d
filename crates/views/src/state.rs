//! Per-group aggregate state for GROUP BY views, so that a refresh after appends costs what
//! was appended, not the history of every group it touches.
//!
//! A view whose query is row-wise operations over one GROUP BY (the keyed shape of
//! [`crate::incremental`]) whose aggregates are all in [`MERGEABLE`] keeps, beside its rows,
//! each group's *partial aggregate state*: what DataFusion's `Partial` aggregation emits (a
//! count, a sum, a mean and M2 for `stddev`...). A full refresh computes the state of every
//! group and the view's rows from it; a refresh whose inputs only gained rows aggregates
//! the gained rows alone, merges that into the stored state of the groups they touch and
//! evaluates those groups, instead of reading all of their rows again. Aggregates whose state
//! is a list (`count(DISTINCT)`, `median`, `array_agg`...) grow with the rows: their views are
//! recomputed by group as before.
//!
//! The state is an Arrow IPC sidecar file of the view's table (`medlake_lake`'s sidecars),
//! tagged with the view version its rows match and a fingerprint of the definition. A
//! recompute by key (after removals) replaces the touched groups' state; any other refresh
//! (a region, a linear plan) deletes it, and a state whose tag is not the version of the
//! view's last refresh commit is never used (an erasure in between, a crash between the
//! view's commit and the state's write: the refresh recomputes by key, the next full refresh
//! writes the state again). OPTIMIZE and VACUUM commits change no row and keep it valid.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator,
    LogicalPlan, LogicalPlanBuilder, Signature, Volatility, col,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::{ExecutionPlan, collect, execute_stream};
use futures::TryStreamExt as _;

use crate::incremental::{Keyed, key_predicate};

/// The aggregate functions whose state is a few values per group, mergeable: the ones a view
/// keeps state for.
pub(crate) const MERGEABLE: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "bool_and",
    "bool_or",
];

/// The most partial state rows a refresh keeps in memory (a partial aggregation emits up to
/// one row per group and input partition): a view with more groups recomputes by key.
const MAX_STATE_ROWS: usize = 2_000_000;

/// The view table's sidecar file holding the state.
pub(crate) const STATE_FILE: &str = "aggregate-state";

const VERSION_KEY: &str = "medlake.view_version";
const FINGERPRINT_KEY: &str = "medlake.definition";
const GROUPS: &str = "medlake_groups";

/// Each group's partial aggregate state: the group columns, then each aggregate's state
/// fields (as a partial aggregation names them; every column nullable).
pub(crate) struct State {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// What a state refresh computed: the view's rows for the groups it merged, and the view's
/// whole new state.
pub(crate) struct Aggregated {
    /// The view's query over the merged groups' values (its keyed node replaced by them).
    pub values: LogicalPlan,
    pub state: State,
    /// How many groups were merged and evaluated.
    pub groups: usize,
}

/// What identifies a definition's state: its query and the schema it resolves names in.
pub(crate) fn fingerprint(query: &str, default_schema: &str) -> String {
    let mut hasher = DefaultHasher::new();
    query.hash(&mut hasher);
    default_schema.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The state stored for a view at `version`, as an IPC file.
pub(crate) fn encode(state: &State, version: u64, fingerprint: &str) -> DfResult<Vec<u8>> {
    let mut metadata = state.schema.metadata().clone();
    metadata.insert(VERSION_KEY.into(), version.to_string());
    metadata.insert(FINGERPRINT_KEY.into(), fingerprint.to_string());
    let schema = Arc::new(Schema::new_with_metadata(
        state.schema.fields().clone(),
        metadata,
    ));
    let mut writer = FileWriter::try_new(Vec::new(), &schema)?;
    for batch in &state.batches {
        writer.write(&RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )?)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The stored state's rows when it describes the view at `version` under the definition
/// `fingerprint`; `None` otherwise (or when the file cannot be read: it is recomputed).
pub(crate) fn decode(bytes: &[u8], version: u64, fingerprint: &str) -> Option<State> {
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).ok()?;
    let schema = reader.schema();
    let metadata = schema.metadata();
    if metadata.get(VERSION_KEY) != Some(&version.to_string())
        || metadata.get(FINGERPRINT_KEY).map(String::as_str) != Some(fingerprint)
    {
        return None;
    }
    let schema = Arc::new(Schema::new(schema.fields().clone()));
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.ok()?;
        batches.push(RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).ok()?);
    }
    Some(State { schema, batches })
}

/// What happens to the stored state of the groups a refresh touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Merged with the state of the rows the inputs gained.
    Merge,
    /// Dropped: the inputs are all of the groups' rows (a recompute by key).
    Replace,
}

/// The physical pieces of a view's aggregate, as DataFusion planned it over its input.
struct Pieces {
    group_by: PhysicalGroupBy,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    input_schema: SchemaRef,
}

/// Computes the view's rows for the groups that `inputs` (plans over the keyed node's input:
/// the whole input, what each changed input gained, or all rows of the touched groups) reach,
/// with `stored` state: the stored groups whose keys are among `keys` (one value list per key
/// expression) are merged in or replaced ([`Carry`]) and evaluated, the others are kept as
/// they are. `None`: the view keeps no state (an aggregate outside [`MERGEABLE`], more than
/// [`MAX_STATE_ROWS`] partial rows), or the stored state does not fit the query's (it is
/// recomputed).
pub(crate) async fn aggregate(
    ctx: &SessionContext,
    keyed: &Keyed,
    inputs: Vec<LogicalPlan>,
    stored: Option<(State, &[Vec<ScalarValue>], Carry)>,
) -> DfResult<Option<Aggregated>> {
    let LogicalPlan::Aggregate(node) = keyed.node() else {
        return Ok(None);
    };
    let mut pieces = None;
    let mut rows = Vec::new();
    for input in inputs {
        let Some((planned, batches)) = partial(ctx, node, input).await? else {
            return Ok(None);
        };
        pieces.get_or_insert(planned);
        rows.extend(batches);
    }
    let Some(pieces) = pieces else {
        return Ok(None);
    };
    let Some(first) = rows.first() else {
        return Err(DataFusionError::Internal(
            "a partial aggregate returned no batch".into(),
        ));
    };
    let schema = state_schema(&first.schema());
    let mut merging = rows
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut kept = Vec::new();
    if let Some((state, keys, carry)) = stored {
        if !same_types(&state.schema, &schema) {
            return Ok(None);
        }
        let Some(touched) = stored_keys(node, keyed, &schema, keys) else {
            return Ok(None);
        };
        let (carried, untouched) = split(ctx, state, touched).await?;
        if carry == Carry::Merge {
            merging.extend(carried);
        }
        kept = untouched;
    }
    let merged = merge(ctx, &pieces, &schema, merging).await?;
    let values = evaluate(ctx, &pieces, &schema, merged.clone()).await?;
    let merged_groups = merged.iter().map(RecordBatch::num_rows).sum();
    kept.extend(merged);
    Ok(Some(Aggregated {
        values: values_plan(keyed, node.schema.as_ref(), values)?,
        state: State {
            schema,
            batches: kept,
        },
        groups: merged_groups,
    }))
}

/// The partial aggregate state of `input`'s rows, by group; `None` when an aggregate keeps no
/// mergeable state.
async fn partial(
    ctx: &SessionContext,
    node: &Aggregate,
    input: LogicalPlan,
) -> DfResult<Option<(Pieces, Vec<RecordBatch>)>> {
    let plan = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(input),
        node.group_expr.clone(),
        node.aggr_expr.clone(),
    )?);
    let physical = ctx.state().create_physical_plan(&plan).await?;
    let Some(found) = first_aggregate(&physical) else {
        return Err(DataFusionError::Internal(format!(
            "no aggregate in the plan of {}",
            plan.display()
        )));
    };
    if !found.group_expr().is_single() || !mergeable(found.aggr_expr())? {
        return Ok(None);
    }
    let pieces = Pieces {
        group_by: found.group_expr().clone(),
        aggregates: found.aggr_expr().to_vec(),
        filters: found.filter_expr().to_vec(),
        input_schema: found.input_schema(),
    };
    let exec = AggregateExec::try_new(
        AggregateMode::Partial,
        pieces.group_by.clone(),
        pieces.aggregates.clone(),
        pieces.filters.clone(),
        found.input().clone(),
        pieces.input_schema.clone(),
    )?;
    let schema = exec.schema();
    let mut stream = execute_stream(Arc::new(exec), ctx.task_ctx())?;
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(batch) = stream.try_next().await? {
        rows += batch.num_rows();
        if rows > MAX_STATE_ROWS {
            // As many groups as rows: a state would not be smaller than the input.
            return Ok(None);
        }
        batches.push(batch);
    }
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(schema)]
    } else {
        batches
    };
    Ok(Some((pieces, batches)))
}

/// The first aggregation over raw rows (`Partial` or `Single`) in a physical plan.
fn first_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    if let Some(found) = plan.downcast_ref::<AggregateExec>()
        && matches!(
            found.mode(),
            AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
        )
    {
        return Some(found);
    }
    plan.children().into_iter().find_map(first_aggregate)
}

/// Whether every aggregate is a [`MERGEABLE`] function, not DISTINCT, with a state of flat
/// values.
fn mergeable(aggregates: &[Arc<AggregateFunctionExpr>]) -> DfResult<bool> {
    for aggregate in aggregates {
        if aggregate.is_distinct() || !MERGEABLE.contains(&aggregate.fun().name()) {
            return Ok(false);
        }
        if aggregate
            .state_fields()?
            .iter()
            .any(|f| f.data_type().is_nested())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The stored state's schema for a partial aggregation's output: its names (the final
/// aggregation checks them) and types, every column nullable.
fn state_schema(partial: &Schema) -> SchemaRef {
    let fields: Vec<Field> = partial
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    Arc::new(Schema::new(fields))
}

fn same_types(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.data_type() == y.data_type() && x.name() == y.name())
}

/// The predicate over the state's group columns selecting the groups of `keys`; `None` when
/// a key is not one of the aggregate's group expressions.
fn stored_keys(
    node: &Aggregate,
    keyed: &Keyed,
    schema: &Schema,
    keys: &[Vec<ScalarValue>],
) -> Option<Expr> {
    let mut predicate = None::<Expr>;
    for (key, values) in keyed.key_exprs.iter().zip(keys) {
        let position = node.group_expr.iter().position(|g| g == key)?;
        let name = schema.field(position).name();
        let term = key_predicate(col(Column::new_unqualified(name)), values);
        predicate = Some(match predicate {
            Some(p) => p.and(term),
            None => term,
        });
    }
    predicate
}

/// The stored state's rows of the groups `touched` selects, and the others.
async fn split(
    ctx: &SessionContext,
    state: State,
    touched: Expr,
) -> DfResult<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    if state.batches.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let table = Arc::new(MemTable::try_new(
        state.schema.clone(),
        vec![state.batches],
    )?);
    let rows = ctx.read_table(table)?;
    let carried = rows.clone().filter(touched.clone())?.collect().await?;
    let kept = rows.filter(touched.is_not_true())?.collect().await?;
    Ok((carried, kept))
}

/// Merges state rows into one row per group (the [`StateOf`] each aggregate).
async fn merge(
    ctx: &SessionContext,
    pieces: &Pieces,
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
) -> DfResult<Vec<RecordBatch>> {
    let wrapped = pieces
        .aggregates
        .iter()
        .map(|a| state_of(a, &pieces.input_schema))
        .collect::<DfResult<Vec<_>>>()?;
    let merged = final_aggregate(ctx, pieces, schema, wrapped, rows).await?;
    let groups = pieces.group_by.expr().len();
    merged
        .iter()
        .map(|batch| {
            let mut columns = batch.columns()[..groups].to_vec();
            for state in &batch.columns()[groups..] {
                columns.extend(state.as_struct().columns().iter().cloned());
            }
            RecordBatch::try_new(schema.clone(), columns).map_err(Into::into)
        })
        .collect()
}

/// Each group's values from its merged state.
async fn evaluate(
    ctx: &SessionContext,
    pieces: &Pieces,
    schema: &SchemaRef,
    merged: Vec<RecordBatch>,
) -> DfResult<Vec<RecordBatch>> {
    final_aggregate(ctx, pieces, schema, pieces.aggregates.clone(), merged).await
}

async fn final_aggregate(
    ctx: &SessionContext,
    pieces: &Pieces,
    schema: &SchemaRef,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    rows: Vec<RecordBatch>,
) -> DfResult<Vec<RecordBatch>> {
    let source = MemorySourceConfig::try_new_exec(&[rows], schema.clone(), None)?;
    let filters = vec![None; aggregates.len()];
    let exec = AggregateExec::try_new(
        AggregateMode::Final,
        pieces.group_by.as_final(),
        aggregates,
        filters,
        source,
        pieces.input_schema.clone(),
    )?;
    collect(Arc::new(exec), ctx.task_ctx()).await
}

/// The view's query with its aggregate replaced by the rows `values` (the aggregate's
/// output, in its column order).
fn values_plan(
    keyed: &Keyed,
    node_schema: &DFSchema,
    values: Vec<RecordBatch>,
) -> DfResult<LogicalPlan> {
    let target = node_schema.as_arrow();
    let positional = Arc::new(Schema::new(
        target
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), f.is_nullable()))
            .collect::<Vec<_>>(),
    ));
    let mut batches = Vec::new();
    for batch in values {
        let columns = batch
            .columns()
            .iter()
            .zip(positional.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(positional.clone(), columns)?);
    }
    let table = Arc::new(MemTable::try_new(positional, vec![batches])?);
    let exprs: Vec<Expr> = node_schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(
                Some(TableReference::bare(GROUPS)),
                format!("c{i}"),
            ))
            .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let replacement = LogicalPlanBuilder::scan(GROUPS, provider_as_source(table), None)?
        .project(exprs)?
        .build()?;
    keyed.replace_node(replacement)
}

/// `aggregate` returning its state (a struct of its state fields) instead of its value.
fn state_of(
    aggregate: &Arc<AggregateFunctionExpr>,
    input_schema: &SchemaRef,
) -> DfResult<Arc<AggregateFunctionExpr>> {
    let fields = aggregate.state_fields()?;
    let function = StateOf {
        name: format!("state_of_{}", aggregate.fun().name()),
        inner: aggregate.fun().clone(),
        result: aggregate.field(),
        fields: fields.clone(),
        signature: Signature::variadic_any(Volatility::Immutable),
    };
    Ok(Arc::new(
        AggregateExprBuilder::new(
            Arc::new(AggregateUDF::new_from_impl(function)),
            aggregate.expressions(),
        )
        .schema(input_schema.clone())
        .alias(aggregate.name())
        .order_by(aggregate.order_bys().to_vec())
        .with_ignore_nulls(aggregate.ignore_nulls())
        .build()?,
    ))
}

/// An aggregate function whose result is the state of another (`inner`): merged like it,
/// evaluated to a struct of its state fields.
#[derive(Debug)]
struct StateOf {
    name: String,
    inner: AggregateUDF,
    /// What `inner` returns (its accumulator's type follows it: a sum's state is its type).
    result: FieldRef,
    fields: Vec<FieldRef>,
    signature: Signature,
}

impl PartialEq for StateOf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.inner == other.inner && self.fields == other.fields
    }
}

impl Eq for StateOf {}

impl Hash for StateOf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.inner.hash(state);
        self.fields.hash(state);
    }
}

impl StateOf {
    /// `args` as `inner`'s accumulators expect them: returning `inner`'s type (a sum's
    /// state is its type), not the struct.
    fn inner_args<'a>(&self, args: AccumulatorArgs<'a>) -> AccumulatorArgs<'a> {
        AccumulatorArgs {
            return_field: self.result.clone(),
            ..args
        }
    }

    fn struct_fields(&self) -> Fields {
        self.fields
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect()
    }
}

impl AggregateUDFImpl for StateOf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Struct(self.struct_fields()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(StateAccumulator {
            inner: self.inner.accumulator(self.inner_args(args))?,
            fields: self.struct_fields(),
        }))
    }

    // The groups accumulator whenever `inner` has one: the partial aggregation that made the
    // state used it, and its state differs from the row accumulator's (an `avg` group with
    // only NULLs emits a NULL count there, `0` here, and a 0 count read back by the final
    // step's groups accumulator is a seen group: `0 / 0`, NaN, instead of NULL).
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner
            .groups_accumulator_supported(self.inner_args(args))
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(StateGroups {
            inner: self
                .inner
                .create_groups_accumulator(self.inner_args(args))?,
            fields: self.struct_fields(),
        }))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(self.fields.clone())
    }
}

/// The fields of `fields` from `arrays` (cast where the state's type differs), as a struct.
fn state_struct(arrays: Vec<ArrayRef>, fields: &Fields) -> DfResult<StructArray> {
    let arrays = arrays
        .into_iter()
        .zip(fields.iter())
        .map(|(array, field)| {
            if array.data_type() == field.data_type() {
                Ok(array)
            } else {
                Ok(cast(&array, field.data_type())?)
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(StructArray::try_new(fields.clone(), arrays, None)?)
}

/// [`StateAccumulator`] for groups: merged as `inner`, evaluated to `inner`'s state.
struct StateGroups {
    inner: Box<dyn GroupsAccumulator>,
    fields: Fields,
}

impl GroupsAccumulator for StateGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let state = self.inner.state(emit_to)?;
        Ok(Arc::new(state_struct(state, &self.fields)?))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.inner
            .merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[derive(Debug)]
struct StateAccumulator {
    inner: Box<dyn Accumulator>,
    fields: Fields,
}

impl Accumulator for StateAccumulator {
    fn update_batch(&mut self, values: &[arrow::array::ArrayRef]) -> DfResult<()> {
        self.inner.update_batch(values)
    }

    fn merge_batch(&mut self, states: &[arrow::array::ArrayRef]) -> DfResult<()> {
        self.inner.merge_batch(states)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let arrays = self
            .inner
            .state()?
            .iter()
            .map(ScalarValue::to_array)
            .collect::<DfResult<Vec<_>>>()?;
        Ok(ScalarValue::Struct(Arc::new(state_struct(
            arrays,
            &self.fields,
        )?)))
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}
