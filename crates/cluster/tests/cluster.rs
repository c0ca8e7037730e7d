//! A Ballista scheduler and two executors on loopback (port 0, mutual TLS), started by the
//! test and stopped with it; queries over a Delta warehouse run there and here, and must
//! agree.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use medlake_cluster::{Cluster, ClusterTls, Functions, distributable, executor, scheduler};
use medlake_lake::{TableName, Warehouse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        Self { ca_cert, ca_key }
    }

    /// A member's TLS: a certificate for 127.0.0.1 usable as server and client.
    fn member(&self) -> ClusterTls {
        let (ca, cert, key) = self.member_pem();
        ClusterTls::from_pem(ca, cert, key).unwrap()
    }

    /// A member's CA, certificate and key (PEM).
    fn member_pem(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (
            self.ca_cert.pem().into_bytes(),
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
    }
}

/// A scheduler and two executors; they stop when this is dropped.
struct Members {
    scheduler: String,
    stops: Vec<oneshot::Sender<()>>,
    _work: tempfile::TempDir,
}

impl Drop for Members {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

fn functions() -> Functions {
    Functions::new(Vec::new())
}

async fn start(pki: &Pki, executors: usize) -> Members {
    // RUST_LOG=info shows the members' own logs (Ballista logs through `log`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut stops = Vec::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tokio::spawn(scheduler::serve(
        listener,
        pki.member(),
        functions(),
        async move {
            let _ = stopped.await;
        },
    ));
    let work = tempfile::tempdir().unwrap();
    for i in 0..executors {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        let options = executor::Options {
            scheduler: scheduler.clone(),
            vcores: 2,
            work_dir: work.path().join(format!("executor{i}")),
            stores: Vec::new(),
        };
        let tls = pki.member();
        tokio::spawn(async move {
            let served = executor::serve(listener, options, tls, functions(), async move {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = served {
                eprintln!("executor {i}: {e}");
            }
        });
    }
    Members {
        scheduler,
        stops,
        _work: work,
    }
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
    let pki = Pki::new("medlake test cluster CA");
    let members = start(&pki, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = warehouse(dir.path()).await;
    let ctx = context(&warehouse).await;
    let cluster = Cluster::new(
        &members.scheduler.replace("https://", "ballista://"),
        pki.member(),
        functions(),
    )
    .unwrap();
    // Executors register with the scheduler on their first poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    let pki = Pki::new("medlake test cluster CA");
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
            let plan = distributable(plan).unwrap();
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

    let pki = Pki::new("medlake test cluster CA");
    let members = start(&pki, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_cert.pem().into_bytes()));
    let endpoint = Endpoint::from_shared(members.scheduler.clone())
        .unwrap()
        .tls_config(anonymous)
        .unwrap();
    assert!(ask(endpoint).await.is_err());
    // A certificate from another CA: refused.
    let (_, cert, key) = Pki::new("someone else's CA").member_pem();
    let stranger = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_cert.pem().into_bytes()))
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
