//! A Ballista scheduler and two executors on loopback (port 0, mutual TLS), started by the
//! test and stopped with it; queries over a Delta warehouse run there and here, and must
//! agree.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use medlake_cluster::testing::{LocalCluster, TestCa};
use medlake_cluster::{Cluster, Functions, LakeWriteExec, RemoteExec, Target, distributable};
use medlake_lake::{CommitOptions, TableName, Warehouse, WriteMode};

fn functions() -> Functions {
    Functions::new(Vec::new())
}

/// A warehouse with `bronze.readings`: three commits (three files), 3,000 rows.
async fn warehouse(dir: &std::path::Path) -> Warehouse {
    let warehouse = Warehouse::open(dir.to_str().unwrap()).await.unwrap();
    warehouse.create_schema("bronze", true).await.unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let name = TableName::new("bronze", "readings").unwrap();
    for part in 0..3i64 {
        let seq: Vec<i64> = (part * 1000..(part + 1) * 1000).collect();
        let patients: Vec<String> = seq.iter().map(|s| format!("p{:02}", s % 37)).collect();
        let values: Vec<f64> = seq.iter().map(|s| (*s as f64) * 0.5).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(patients)),
                Arc::new(Int64Array::from(seq)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap();
        warehouse.append_batches(&name, vec![batch]).await.unwrap();
    }
    warehouse
}

async fn context(warehouse: &Warehouse) -> SessionContext {
    let ctx = SessionContext::new();
    let name = TableName::new("bronze", "readings").unwrap();
    let (provider, _) = warehouse.table_provider(&name, None).await.unwrap();
    ctx.register_table("readings", provider).unwrap();
    ctx
}

async fn here(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

async fn there(ctx: &SessionContext, cluster: &Cluster, sql: &str) -> String {
    let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    let stream = match cluster.try_execute(physical, &ctx.copied_config()).await {
        Ok(stream) => stream.unwrap(),
        Err(stays) => panic!("{sql}: stays on the server: {}", stays.0),
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_over_delta_tables_give_the_same_rows_on_two_executors_as_here() {
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let cluster = members.client(functions());
    for sql in [
        "SELECT count(*) AS n, sum(value) AS total FROM readings",
        "SELECT patient_id, count(*) AS n, max(value) AS top FROM readings \
         GROUP BY patient_id ORDER BY patient_id",
        "SELECT seq, upper(patient_id) AS p FROM readings WHERE seq BETWEEN 1995 AND 2004 \
         ORDER BY seq",
        "SELECT a.patient_id, count(*) AS pairs FROM readings a JOIN readings b \
         ON a.patient_id = b.patient_id AND a.seq + 1 = b.seq GROUP BY a.patient_id \
         ORDER BY pairs DESC, a.patient_id LIMIT 5",
    ] {
        let expected = here(&ctx, sql).await;
        let got = there(&ctx, &cluster, sql).await;
        assert_eq!(got, expected, "{sql}");
    }
}

/// Ballista 55 gives each task of a stage a slice of its partitions and restricts the leaves
/// it knows to it; a Delta scan's partitions are named by its tokens (crates/cluster/src/
/// slice.rs), so however the scheduler cuts a stage into tasks, each partition is read once.
/// (Before the tokens, a stage run as two tasks read the table twice, now and then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_partition_of_a_delta_scan_is_read_once_whatever_the_tasks() {
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let cluster = members.client(functions());
    let sql = "SELECT count(*) AS n, sum(seq) AS s FROM readings";
    let expected = here(&ctx, sql).await;
    assert!(expected.contains("| 3000 | 4498500 |"), "{expected}");
    for _ in 0..8 {
        assert_eq!(there(&ctx, &cluster, sql).await, expected);
    }
}

/// A write that checks expectations crosses the codec with its rules (names, actions,
/// predicates), and the decoded write checks the rows as the server would: kept rows written,
/// the counts in its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checking_write_round_trips_through_the_codec_and_counts_what_it_dropped() {
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
    use datafusion::scalar::ScalarValue;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    use medlake_cluster::checks::{Action, Rule};
    use medlake_cluster::{Checking, Codec};
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    warehouse.create_schema("silver", true).await.unwrap();
    let target = TableName::new("silver", "checked").unwrap();
    let first = ctx
        .sql("SELECT * FROM readings WHERE seq = 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    warehouse.append_batches(&target, first).await.unwrap();
    let elsewhere = warehouse
        .write_elsewhere(&target, &CommitOptions::default())
        .await
        .unwrap()
        .unwrap();
    // The rows as an in-memory scan (which crosses as data).
    let rows = ctx
        .sql("SELECT * FROM readings")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let schema = rows[0].schema();
    let query: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
        datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[rows],
            schema.clone(),
            None,
        )
        .unwrap();
    let compare = |column: &str,
                   op,
                   value: ScalarValue|
     -> Arc<dyn datafusion::physical_expr::PhysicalExpr> {
        let index = schema.index_of(column).unwrap();
        Arc::new(BinaryExpr::new(
            Arc::new(Column::new(column, index)),
            op,
            Arc::new(Literal::new(value)),
        ))
    };
    use datafusion::logical_expr::Operator;
    let rules = vec![
        Rule {
            name: "late".into(),
            action: Action::Drop,
            predicate: compare("seq", Operator::GtEq, ScalarValue::Int64(Some(1000))),
        },
        Rule {
            name: "low".into(),
            action: Action::Keep,
            predicate: compare("value", Operator::Lt, ScalarValue::Float64(Some(1000.0))),
        },
    ];
    let write: Arc<dyn datafusion::physical_plan::ExecutionPlan> = Arc::new(
        LakeWriteExec::new(
            query,
            Target {
                table: elsewhere.table,
                row_group_rows: elsewhere.row_group_rows,
                page_rows: elsewhere.page_rows,
                file_size: elsewhere.file_size,
                bloom_columns: elsewhere.bloom_columns,
            },
        )
        .checking(Checking {
            rules,
            refresh_id: "r1".into(),
            quarantine: None,
        }),
    );
    let codec = Codec::new(functions());
    let bytes = PhysicalPlanNode::try_from_physical_plan(write.clone(), &codec)
        .unwrap()
        .encode_to_vec();
    let executor = SessionContext::new_with_state(functions().state());
    let decoded = PhysicalPlanNode::decode(bytes.as_slice())
        .unwrap()
        .try_into_physical_plan(&executor.task_ctx(), &codec)
        .unwrap();
    let shown = |p: &Arc<dyn datafusion::physical_plan::ExecutionPlan>| {
        datafusion::physical_plan::displayable(p.as_ref())
            .indent(false)
            .to_string()
    };
    assert_eq!(shown(&decoded), shown(&write));
    assert!(
        shown(&decoded).contains("late Drop seq@1 >= 1000"),
        "{}",
        shown(&decoded)
    );
    let rows = datafusion::physical_plan::collect(decoded, ctx.task_ctx())
        .await
        .unwrap();
    let written = medlake_cluster::write::written(&rows).unwrap();
    // 3,000 rows checked; "late" (seq >= 1000) drops seq 0..999; "low" (value = seq / 2 <
    // 1000) only counts seq 2000..2999.
    assert_eq!(
        (written.checked, written.rows, written.violations.clone()),
        (3000, 2000, vec![1000, 1000])
    );
    assert!(written.quarantined.is_empty());
}

/// `is_member(role)` as a server registers it: an identity the executors cannot know.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IsMember(Signature);

impl ScalarUDFImpl for IsMember {
    fn name(&self) -> &str {
        "is_member"
    }
    fn signature(&self) -> &Signature {
        &self.0
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(true.into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_a_session_function_or_an_unknown_node_stays_on_the_server() {
    let pki = TestCa::new("medlake test cluster CA");
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    ctx.register_udf(ScalarUDF::new_from_impl(IsMember(Signature::exact(
        vec![DataType::Utf8],
        Volatility::Volatile,
    ))));
    let cluster = Cluster::new("ballista://127.0.0.1:9", pki.member(), functions()).unwrap();
    let plan = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
            let plan = distributable(plan, medlake_cluster::Externals::Here).unwrap();
            ctx.state().create_physical_plan(&plan).await.unwrap()
        }
    };
    let stays = cluster
        .encode(&plan("SELECT patient_id FROM readings WHERE is_member(patient_id)").await)
        .unwrap_err();
    assert!(
        stays.0.contains("is_member runs only on the server"),
        "{}",
        stays.0
    );
    // A Delta scan not made distributable (deltalake's own node) is refused by the codec.
    let raw = ctx
        .sql("SELECT patient_id FROM readings WHERE value > 3")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    assert!(cluster.encode(&raw).is_err());
    assert!(
        cluster
            .encode(&plan("SELECT patient_id FROM readings WHERE value > 3").await)
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_cluster_certificate_is_refused() {
    use ballista_core::serde::protobuf::GetJobStatusParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let members = LocalCluster::start(0, functions()).await;
    let pki = &members.ca;
    let ask = |endpoint: Endpoint| async move {
        let channel = endpoint.connect().await?;
        let mut client = SchedulerGrpcClient::new(channel);
        client
            .get_job_status(GetJobStatusParams { job_id: "x".into() })
            .await
            .map(|_| ())
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    };
    // Plain HTTP/2: refused.
    let plain = Endpoint::from_shared(members.scheduler.replace("https://", "http://")).unwrap();
    assert!(ask(plain).await.is_err());
    // TLS trusting the CA, without a client certificate: refused in the handshake.
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.pem()));
    let endpoint = Endpoint::from_shared(members.scheduler.clone())
        .unwrap()
        .tls_config(anonymous)
        .unwrap();
    assert!(ask(endpoint).await.is_err());
    // A certificate from another CA: refused.
    let (_, cert, key) = TestCa::new("someone else's CA").member_pem();
    let stranger = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.pem()))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let endpoint = Endpoint::from_shared(members.scheduler.clone())
        .unwrap()
        .tls_config(stranger)
        .unwrap();
    assert!(ask(endpoint).await.is_err());
    // A member's certificate: answered (the job does not exist, but the call went through).
    let (ca, cert, key) = pki.member_pem();
    let member = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let endpoint = Endpoint::from_shared(members.scheduler.clone())
        .unwrap()
        .tls_config(member)
        .unwrap();
    let answered = ask(endpoint).await;
    if let Err(e) = &answered {
        let status = e.downcast_ref::<tonic::Status>();
        assert!(
            status.is_some(),
            "a member could not reach the scheduler: {e}"
        );
    }
}

/// The codec's round trip: a plan with Delta scans encoded to bytes and decoded (as an
/// executor does, with no table registered) shows the same plan and gives the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_round_trips_through_the_codec_to_the_same_plan_and_rows() {
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let codec = medlake_cluster::Codec::new(functions());
    let cluster = Cluster::new(
        "ballista://127.0.0.1:9",
        TestCa::new("ca").member(),
        functions(),
    )
    .unwrap();
    for sql in [
        "SELECT patient_id, sum(value) AS s FROM readings WHERE seq % 3 = 1 GROUP BY patient_id \
         ORDER BY patient_id",
        "SELECT seq, value FROM readings WHERE patient_id = 'p07' AND seq > 2500 ORDER BY seq \
         LIMIT 4",
    ] {
        let logical = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
        let plan = cluster.plan(&ctx.state(), logical).await.unwrap();
        let bytes = PhysicalPlanNode::try_from_physical_plan(plan.clone(), &codec)
            .unwrap()
            .encode_to_vec();
        // A fresh context: no table, only the functions an executor has.
        let executor = SessionContext::new_with_state(functions().state());
        let decoded = PhysicalPlanNode::decode(bytes.as_slice())
            .unwrap()
            .try_into_physical_plan(&executor.task_ctx(), &codec)
            .unwrap();
        let shown = |p: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>| {
            datafusion::physical_plan::displayable(p.as_ref())
                .indent(false)
                .to_string()
        };
        assert_eq!(shown(&decoded), shown(&plan), "{sql}");
        let batches = datafusion::physical_plan::collect(decoded, executor.task_ctx())
            .await
            .unwrap();
        assert_eq!(
            pretty_format_batches(&batches).unwrap().to_string(),
            here(&ctx, sql).await,
            "{sql}"
        );
    }
}

/// The rows of `sql` written into `name` by the executors ([`LakeWriteExec`]) and committed
/// here once ([`Warehouse::commit_written`]).
async fn write_there(
    ctx: &SessionContext,
    cluster: &Cluster,
    warehouse: &Warehouse,
    name: &TableName,
    sql: &str,
    mode: WriteMode,
) -> datafusion::error::Result<medlake_lake::WriteOutcome> {
    let plan = ctx.sql(sql).await?.into_unoptimized_plan();
    let query = cluster.plan(&ctx.state(), plan).await?;
    let options = CommitOptions::default();
    let target = warehouse
        .write_elsewhere(name, &options)
        .await
        .unwrap()
        .expect("the table takes files written elsewhere");
    medlake_cluster::write::writable(&query.schema(), &target.schema).unwrap();
    let write = Arc::new(LakeWriteExec::new(
        query,
        Target {
            table: target.table,
            row_group_rows: target.row_group_rows,
            page_rows: target.page_rows,
            file_size: target.file_size,
            bloom_columns: target.bloom_columns,
        },
    ));
    let remote = RemoteExec::new(cluster, write, &ctx.copied_config()).unwrap();
    let rows = datafusion::physical_plan::collect(Arc::new(remote), ctx.task_ctx()).await?;
    let written = medlake_cluster::write::written(&rows)?;
    assert!(!written.adds.is_empty());
    assert_eq!((written.checked, written.quarantined.len()), (0, 0));
    Ok(warehouse
        .commit_written(name, written.adds, written.rows, mode, &options)
        .await
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_write_a_tables_files_and_the_server_commits_them_once() {
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let cluster = members.client(functions());
    // The target: the same columns as bronze.readings, one row to start with.
    warehouse.create_schema("silver", true).await.unwrap();
    let target = TableName::new("silver", "even").unwrap();
    let first = ctx
        .sql("SELECT * FROM readings WHERE seq = 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    warehouse.append_batches(&target, first).await.unwrap();
    let (provider, _) = warehouse.table_provider(&target, None).await.unwrap();
    let before = provider.schema();
    let sql = "SELECT * FROM readings WHERE seq % 2 = 0";
    let written = write_there(
        &ctx,
        &cluster,
        &warehouse,
        &target,
        sql,
        WriteMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!((written.version, written.rows), (1, 1500));
    let fresh = |w: &Warehouse| {
        let w = w.clone();
        let target = target.clone();
        async move {
            let ctx = context(&w).await;
            let (provider, _) = w.table_provider(&target, None).await.unwrap();
            assert_eq!(provider.schema(), before);
            ctx.register_table("even", provider).unwrap();
            let got = here(
                &ctx,
                "SELECT count(*) AS n, sum(seq) AS s, max(seq % 2) AS odd FROM even",
            )
            .await;
            let expected = here(
                &ctx,
                "SELECT count(*) AS n, sum(seq) AS s, max(seq % 2) AS odd FROM readings \
                 WHERE seq % 2 = 0",
            )
            .await;
            (got, expected)
        }
    };
    // The overwrite replaced the first row: exactly the even readings.
    let (got, expected) = fresh(&warehouse).await;
    assert_eq!(got, expected);
    // An append adds them again in one more commit.
    let appended = write_there(&ctx, &cluster, &warehouse, &target, sql, WriteMode::Append)
        .await
        .unwrap();
    assert_eq!((appended.version, appended.rows), (2, 1500));
    let history = warehouse.history(&target, Some(1)).await.unwrap();
    assert_eq!(history[0].rows_written, Some(1500));
    // A query failing on the executors commits nothing.
    let failing = "SELECT patient_id, CAST(CAST(seq AS VARCHAR) || 'x' AS BIGINT) AS seq, value \
                   FROM readings";
    let failed = write_there(
        &ctx,
        &cluster,
        &warehouse,
        &target,
        failing,
        WriteMode::Overwrite,
    )
    .await;
    assert!(failed.is_err());
    let table = warehouse.open_table(&target).await.unwrap();
    assert_eq!(table.version(), Some(2));
}

/// Calls one scheduler method of each role with `tls`'s certificate: whether each was
/// refused for the certificate's role (`PermissionDenied`).
async fn refused_methods(
    scheduler: &str,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
) -> (bool, bool) {
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use ballista_core::serde::protobuf::{GetJobStatusParams, PollWorkParams};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let channel = Endpoint::from_shared(scheduler.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SchedulerGrpcClient::new(channel);
    let denied =
        |r: Result<(), tonic::Status>| r.is_err_and(|s| s.code() == tonic::Code::PermissionDenied);
    let server_method = client
        .get_job_status(GetJobStatusParams { job_id: "x".into() })
        .await
        .map(|_| ());
    let executor_method = client
        .poll_work(PollWorkParams {
            metadata: None,
            num_free_vcores: 0,
            task_status: Vec::new(),
        })
        .await
        .map(|_| ());
    (denied(server_method), denied(executor_method))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn role_certificates_confine_each_member_to_its_methods() {
    let members = LocalCluster::start_with_roles(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    // The server's certificate runs queries; the executors (role certificates) run them.
    let sql = "SELECT patient_id, count(*) AS n FROM readings GROUP BY patient_id ORDER BY 1";
    let server = members.client(functions());
    assert_eq!(there(&ctx, &server, sql).await, here(&ctx, sql).await);
    let ca = &members.ca;
    // Each role may call its own methods only; a certificate naming no role, none (the
    // scheduler's own certificate names one).
    for (role, expected) in [
        (Some("medlake-server"), (false, true)),
        (Some("medlake-executor"), (true, false)),
        (None, (true, true)),
    ] {
        let (ca_pem, cert, key) = ca.member_pem_as(role);
        assert_eq!(
            refused_methods(&members.scheduler, ca_pem, cert, key).await,
            expected,
            "{role:?}"
        );
    }
    // An executor's certificate cannot submit a job.
    let address = members.scheduler.replace("https://", "ballista://");
    let stolen = Cluster::new(
        &address,
        ca.member_as(Some("medlake-executor")),
        functions(),
    )
    .unwrap();
    let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
    let physical = stolen.plan(&ctx.state(), plan).await.unwrap();
    let submitted = match stolen.try_execute(physical, &ctx.copied_config()).await {
        Ok(stream) => match stream {
            Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
            Err(e) => Err(e),
        },
        Err(stays) => panic!("stays: {}", stays.0),
    };
    let error = submitted.expect_err("an executor's certificate submitted a job");
    assert!(error.to_string().contains("Server"), "{error}");
}

#[test]
fn executors_refuse_plans_with_file_scans_or_sinks() {
    use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
    use datafusion::execution::object_store::ObjectStoreUrl;

    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let source = Arc::new(ParquetSource::new(schema.clone()));
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
        .with_file(datafusion::datasource::listing::PartitionedFile::new(
            "etc/shadow",
            10,
        ))
        .build();
    let scan: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
        datafusion::datasource::source::DataSourceExec::from_data_source(config);
    let refused = medlake_cluster::guard::refused(&scan).expect("a file scan is refused");
    assert!(refused.contains("file scan"), "{refused}");
    let values: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
        Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema));
    assert!(medlake_cluster::guard::refused(&values).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_scheduler_down_plans_run_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = Cluster::new(
        &format!("ballista://127.0.0.1:{port}"),
        TestCa::new("ca").member(),
        functions(),
    )
    .unwrap();
    let sql = "SELECT patient_id, count(*) AS n FROM readings GROUP BY patient_id ORDER BY 1";
    let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    // A query is told to stay (and the next one is, without trying again).
    for _ in 0..2 {
        match cluster
            .try_execute(physical.clone(), &ctx.copied_config())
            .await
        {
            Err(stays) => assert!(stays.0.contains("unreachable"), "{}", stays.0),
            Ok(_) => panic!("a scheduler nobody runs took the plan"),
        }
    }
    // A refresh's RemoteExec runs its plan here and gives the same rows.
    let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    let remote = RemoteExec::new(&cluster, physical, &ctx.copied_config()).unwrap();
    let batches = datafusion::physical_plan::collect(Arc::new(remote), ctx.task_ctx())
        .await
        .unwrap();
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        here(&ctx, sql).await
    );
}

/// A table only this process can scan (DataFusion's streaming table has no codec): `rows`
/// rows of (patient_id, ward), each ward name `pad` characters long.
#[derive(Debug)]
struct Wards {
    schema: arrow::datatypes::SchemaRef,
    rows: usize,
    pad: usize,
}

impl datafusion::physical_plan::streaming::PartitionStream for Wards {
    fn schema(&self) -> &arrow::datatypes::SchemaRef {
        &self.schema
    }

    fn execute(
        &self,
        _ctx: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::execution::SendableRecordBatchStream {
        let schema = self.schema.clone();
        let (rows, pad) = (self.rows, self.pad);
        let batches = (0..rows.div_ceil(1000)).map(move |b| {
            let ids: Vec<String> = (b * 1000..((b + 1) * 1000).min(rows))
                .map(|i| format!("p{:02}", i % 37))
                .collect();
            let wards: Vec<String> = (b * 1000..((b + 1) * 1000).min(rows))
                .map(|i| format!("{:0>pad$}", i % 3))
                .collect();
            Ok(RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(StringArray::from(wards)),
                ],
            )?)
        });
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::iter(batches.collect::<Vec<_>>()),
            ),
        )
    }
}

fn wards(rows: usize, pad: usize) -> Arc<dyn datafusion::catalog::TableProvider> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("ward", DataType::Utf8, false),
    ]));
    let stream = Arc::new(Wards {
        schema: schema.clone(),
        rows,
        pad,
    });
    Arc::new(datafusion::catalog::streaming::StreamingTable::try_new(schema, vec![stream]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_scan_only_the_server_can_run_travels_as_rows() {
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    ctx.register_table("wards", wards(37, 1)).unwrap();
    ctx.register_table("big_wards", wards(100_000, 1000))
        .unwrap();
    let cluster = members.client(functions());
    let sql = "SELECT w.ward, count(*) AS n, sum(r.value) AS total FROM readings r \
               JOIN wards w ON r.patient_id = w.patient_id GROUP BY w.ward ORDER BY 1";
    assert_eq!(there(&ctx, &cluster, sql).await, here(&ctx, sql).await);
    // 100 MB of rows: more than a plan carries; the query stays here.
    let big = "SELECT max(w.ward) FROM readings r JOIN big_wards w ON r.patient_id = w.patient_id";
    let plan = ctx.sql(big).await.unwrap().into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    assert!(cluster.encode(&physical).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_delta_table_reads_the_same_on_the_cluster() {
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    // A table another Delta writer partitioned by ward (medlake itself writes no partitions).
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("ward", DataType::Utf8, false),
    ]));
    let seq: Vec<i64> = (0..3000).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(seq.clone())),
            Arc::new(Float64Array::from_iter_values(
                seq.iter().map(|s| *s as f64 / 4.0),
            )),
            Arc::new(StringArray::from_iter_values(
                seq.iter().map(|s| format!("w{}", s % 4)),
            )),
        ],
    )
    .unwrap();
    let folder = dir.path().join("bronze").join("parted");
    std::fs::create_dir_all(&folder).unwrap();
    let location = url::Url::from_directory_path(folder).unwrap();
    deltalake::DeltaTable::try_from_url(location)
        .await
        .unwrap()
        .write(vec![batch])
        .with_partition_columns(["ward"])
        .await
        .unwrap();
    let name = TableName::new("bronze", "parted").unwrap();
    let (provider, _) = warehouse.table_provider(&name, None).await.unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("parted", provider).unwrap();
    let cluster = members.client(functions());
    for sql in [
        "SELECT ward, count(*) AS n, sum(seq) AS s, max(value) AS top FROM parted \
         GROUP BY ward ORDER BY ward",
        "SELECT seq, ward FROM parted WHERE ward = 'w2' AND seq < 20 ORDER BY seq",
    ] {
        assert_eq!(
            there(&ctx, &cluster, sql).await,
            here(&ctx, sql).await,
            "{sql}"
        );
    }
}

/// A Delta table's change feed (an append and a DELETE, read from their data files) crosses as
/// its table and range of versions: the executors open the same feed from
/// the table's log and give the rows the server reads; the plan names the change-feed scan and
/// round-trips through the codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_feed_is_read_by_the_executors_as_here() {
    use datafusion::logical_expr::{col, lit};
    let members = LocalCluster::start(2, functions()).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let name = TableName::new("bronze", "readings").unwrap();
    let hide: medlake_lake::Hide = Arc::new(|s: &str| s.to_string());
    let writer = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_query_planner(medlake_lake::delta_query_planner())
        .build();
    let deleted = warehouse
        .delete_rows(
            &name,
            Some((col("seq") % lit(10i64)).eq(lit(0i64))),
            Arc::new(writer),
            hide,
        )
        .await
        .unwrap();
    assert_eq!(deleted.rows, 300);
    let latest = *warehouse.versions(&name).await.unwrap().last().unwrap();
    let feed = warehouse.changes(&name, 2, latest).await.unwrap();
    ctx.register_table("feed", feed).unwrap();
    let cluster = members.client(functions());
    let sql = "SELECT _change_type, count(*) AS n, sum(seq) AS s FROM feed \
               GROUP BY _change_type ORDER BY _change_type";
    let expected = here(&ctx, sql).await;
    // The table has no change data feed: the DELETE reads as its rewritten files' rows
    // deleted (3000) and their kept rows inserted again (2700), beside version 2's append.
    assert!(expected.contains("| delete       | 3000 |"), "{expected}");
    assert!(expected.contains("| insert       | 3700 |"), "{expected}");
    let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
    let physical = cluster.plan(&ctx.state(), plan).await.unwrap();
    let shown = datafusion::physical_plan::displayable(physical.as_ref())
        .indent(false)
        .to_string();
    assert!(shown.contains("ChangesScanExec"), "{shown}");
    // The codec round trip, decoded where no table is registered: the same plan and rows.
    {
        use datafusion_proto::physical_plan::AsExecutionPlan;
        use datafusion_proto::protobuf::PhysicalPlanNode;
        use prost::Message;
        let codec = medlake_cluster::Codec::new(functions());
        let bytes = PhysicalPlanNode::try_from_physical_plan(physical.clone(), &codec)
            .unwrap()
            .encode_to_vec();
        let executor = SessionContext::new_with_state(functions().state());
        let decoded = PhysicalPlanNode::decode(bytes.as_slice())
            .unwrap()
            .try_into_physical_plan(&executor.task_ctx(), &codec)
            .unwrap();
        let decoded_shown = datafusion::physical_plan::displayable(decoded.as_ref())
            .indent(false)
            .to_string();
        assert_eq!(decoded_shown, shown);
        let batches = datafusion::physical_plan::collect(decoded, executor.task_ctx())
            .await
            .unwrap();
        assert_eq!(
            pretty_format_batches(&batches).unwrap().to_string(),
            expected
        );
    }
    for _ in 0..3 {
        assert_eq!(there(&ctx, &cluster, sql).await, expected);
    }
}
