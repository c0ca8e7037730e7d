//! External-table scans on a cluster whose executors have the connectors
//! (`--cluster-sources executors`): the scan crosses as its definition (secrets only as
//! `${NAME}`) and is planned again on the executor through the executor's own registry,
//! secrets and source policy. A connector made for the test (`STORED AS NUMBERS`) stands in
//! for the real ones, which crates/engine/tests/it (rest.rs, blob.rs) run the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::pretty::pretty_format_batches;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use medlake_cluster::testing::LocalCluster;
use medlake_cluster::{Cluster, Codec, Functions, Sources};
use medlake_source::{
    Connector, Definition, External, Policy, Registry, RemoteTable, Result, Watermarked,
};

/// `STORED AS NUMBERS OPTIONS ('n' '100', 'token' '${NUMBERS_TOKEN}')`: the numbers 0..n in
/// two partitions; opening needs the token's secret.
#[derive(Debug)]
struct Numbers;

#[derive(Debug)]
struct NumbersTable {
    n: i64,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

#[async_trait]
impl Connector for Numbers {
    fn kinds(&self) -> &'static [&'static str] {
        &["NUMBERS"]
    }

    async fn define(
        &self,
        kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        _declared: SchemaRef,
        _policy: &Arc<Policy>,
    ) -> Result<Definition> {
        Definition::new(kind, location, options, &serde_json::json!({}))
    }

    fn open(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Arc<dyn External>> {
        let token = medlake_source::secret::resolve("token", &definition.options["token"], policy)?;
        assert!(!token.expose().is_empty());
        let n = definition.options["n"].parse().unwrap();
        Ok(Arc::new(NumbersTable { n }))
    }

    async fn list_tables(
        &self,
        _kind: &str,
        _location: &str,
        _options: &BTreeMap<String, String>,
        _remote_schema: &str,
        _policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>> {
        Ok(Vec::new())
    }
}

impl External for NumbersTable {
    fn provider(self: Arc<Self>) -> Arc<dyn TableProvider> {
        let half = |range: std::ops::Range<i64>| {
            let values = Int64Array::from(range.collect::<Vec<_>>());
            vec![RecordBatch::try_new(schema(), vec![Arc::new(values)]).unwrap()]
        };
        let partitions = vec![half(0..self.n / 2), half(self.n / 2..self.n)];
        Arc::new(MemTable::try_new(schema(), partitions).unwrap())
    }

    fn watermarked(self: Arc<Self>) -> Option<Arc<dyn Watermarked>> {
        None
    }

    fn take_failure(&self) -> Option<medlake_source::Error> {
        None
    }
}

fn sources(secret: Option<&str>) -> Sources {
    let mut policy = Policy::strict();
    if let Some(value) = secret {
        policy = policy.with_secret("NUMBERS_TOKEN", value);
    }
    Sources {
        registry: Arc::new(Registry::new().with(Numbers)),
        policy: Arc::new(policy),
    }
}

/// A context with `numbers` (1,000 rows) opened as a server opens it.
async fn server() -> SessionContext {
    let server = sources(Some("server-value"));
    let options: BTreeMap<String, String> = [
        ("n".to_string(), "1000".to_string()),
        ("token".to_string(), "${NUMBERS_TOKEN}".to_string()),
    ]
    .into();
    let definition = server
        .registry
        .define(
            "NUMBERS",
            "numbers://here",
            options,
            schema(),
            &server.policy,
        )
        .await
        .unwrap();
    let table = server.registry.open(&definition, &server.policy).unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("numbers", table.provider()).unwrap();
    ctx
}

async fn on(
    cluster: &Cluster,
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<String> {
    let plan = ctx.sql(sql).await?.into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await?;
    let stream = match cluster.try_execute(physical, &ctx.copied_config()).await {
        Ok(stream) => stream?,
        Err(stays) => panic!("{sql}: stays on the server: {}", stays.0),
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_scan_external_tables_with_their_own_secrets() {
    let functions = Functions::new(Vec::new());
    let ctx = server().await;
    let sql = "SELECT count(*) AS n, sum(v) AS s, max(v) AS m FROM numbers WHERE v % 3 = 0";
    let here = pretty_format_batches(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
        .unwrap()
        .to_string();

    let members = LocalCluster::start_with_sources(2, functions.clone(), sources(Some("x"))).await;
    let cluster = members.client(functions.clone()).with_external_tables(true);
    assert_eq!(on(&cluster, &ctx, sql).await.unwrap(), here);

    // The scan's wire form round-trips through an executor's codec: same rows, and nothing
    // of the server's secret in it.
    let plan = ctx
        .sql("SELECT v FROM numbers")
        .await
        .unwrap()
        .into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    assert!(medlake_cluster::reads_tables(&physical));
    let codec = Codec::new(functions.clone());
    let node = PhysicalPlanNode::try_from_physical_plan(physical.clone(), &codec).unwrap();
    let bytes = prost::Message::encode_to_vec(&node);
    assert!(
        !bytes.windows(12).any(|w| w == b"server-value"),
        "a resolved secret crossed"
    );
    assert!(bytes.windows(16).any(|w| w == b"${NUMBERS_TOKEN}"));
    let executor = Codec::new(functions.clone()).with_sources(Some(sources(Some("y"))));
    let task = SessionContext::new().task_ctx();
    let decoded: Arc<dyn ExecutionPlan> = node.try_into_physical_plan(&task, &executor).unwrap();
    let rows: usize = collect(decoded, task.clone())
        .await
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 1000);

    // Executors without the secret, or without any connector: a clear error, nothing read.
    let members = LocalCluster::start_with_sources(1, functions.clone(), sources(None)).await;
    let cluster = members.client(functions.clone()).with_external_tables(true);
    let err = on(&cluster, &ctx, sql).await.unwrap_err().to_string();
    assert!(err.contains("NUMBERS_TOKEN"), "{err}");
    let members = LocalCluster::start(1, functions.clone()).await;
    let cluster = members.client(functions.clone()).with_external_tables(true);
    let err = on(&cluster, &ctx, sql).await.unwrap_err().to_string();
    assert!(err.contains("cannot read external tables"), "{err}");
}
