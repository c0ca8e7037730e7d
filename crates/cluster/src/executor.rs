//! `medlake executor`: a Ballista executor with medlake's codec and functions. It polls the
//! scheduler for tasks (Ballista's pull mode, so the scheduler never dials executors) and
//! serves its shuffle and result files over Arrow Flight; both behind the cluster's mutual TLS.
//!
//! Object stores: `file://` is built in; a task reading a cloud warehouse resolves the store
//! from this process's environment (the same variables as `medlake serve`): credentials never
//! travel in a plan.

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::BALLISTA_PROTOCOL_VERSION;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::executor_resource::Resource;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    ExecutorOperatingSystemSpecification, ExecutorRegistration, ExecutorResource,
    ExecutorSpecification,
};
use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec};
use ballista_executor::execution_loop;
use ballista_executor::executor::Executor;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::metrics::LoggingMetricsCollector;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{ClusterTls, Codec, Error, Functions};

/// The largest gRPC message between members (a plan with a large table's snapshot).
pub(crate) const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// What an executor needs besides its listener.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scheduler: `https://host:port`.
    pub scheduler: String,
    /// Tasks at once.
    pub vcores: usize,
    /// Shuffle files.
    pub work_dir: std::path::PathBuf,
    /// Object stores tasks read through, by URL (a cloud warehouse's, built from this
    /// process's environment); `file://` needs none.
    pub stores: Vec<(url::Url, Arc<dyn ObjectStore>)>,
    /// The warehouse the executor serves (`--warehouse`): tasks write data files only under
    /// it. `None`: wherever a server's plan says (a table with a Delta log).
    pub warehouse: Option<url::Url>,
    /// Bytes of memory the executor's tasks may hold together (a fair spill pool: sorts and
    /// aggregations spill into the work folder past it); `None`: unbounded.
    pub memory_limit: Option<usize>,
    /// The connectors and source configuration external scans open their tables with
    /// (`--config`: its `[secrets]` and `[sources]`); `None`: such scans fail here.
    pub sources: Option<crate::Sources>,
}

/// Runs an executor serving Flight on `listener` until `shutdown` completes or the
/// scheduler connection ends.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    tls: ClusterTls,
    functions: Functions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("the executor's address: {e}")))?;
    let work_dir = options
        .work_dir
        .to_str()
        .ok_or_else(|| Error::Config("the executor's work directory is not UTF-8".into()))?
        .to_string();
    std::fs::create_dir_all(&work_dir).map_err(|e| Error::Read {
        path: options.work_dir.clone(),
        reason: e.to_string(),
    })?;
    let vcores = options.vcores.max(1);
    let metadata = ExecutorRegistration {
        id: uuid::Uuid::new_v4().to_string(),
        host: Some(addr.ip().to_string()),
        port: u32::from(addr.port()),
        grpc_port: 0,
        specification: Some(ExecutorSpecification {
            resources: vec![ExecutorResource {
                resource: Some(Resource::Vcores(vcores as u32)),
            }],
        }),
        // Ballista 55's scheduler unwraps this on every poll.
        os_info: Some(ExecutorOperatingSystemSpecification {
            system_name: std::env::consts::OS.into(),
            physical_cores: vcores as u32,
            ..Default::default()
        }),
        ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
    };
    let tmp = work_dir.clone();
    let stores = options.stores.clone();
    // One pool for every task of this executor.
    let pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>> =
        options.memory_limit.map(|limit| {
            Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(
                limit,
            )) as _
        });
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        let mut builder = RuntimeEnvBuilder::new().with_temp_file_path(tmp.clone());
        if let Some(pool) = &pool {
            builder = builder.with_memory_pool(pool.clone());
        }
        let runtime = builder.build_arc()?;
        for (url, store) in &stores {
            runtime.register_object_store(url, store.clone());
        }
        Ok(runtime)
    });
    let session_tls = tls.clone();
    let config: ballista_core::ConfigProducer =
        Arc::new(move || session_tls.session_config(SessionConfig::new_with_ballista()));
    let registry = Arc::new(BallistaFunctionRegistry::from(&functions.state()));
    // Plans are checked before they run: only what a medlake server makes.
    let executor = Arc::new(Executor::new(
        metadata,
        &work_dir,
        runtime,
        config,
        registry,
        Arc::new(LoggingMetricsCollector::default()),
        vcores,
        Arc::new(crate::guard::GuardedEngine::new(options.warehouse.clone())),
    ));

    let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let flight = tonic::transport::Server::builder()
        .tls_config(tls.server())
        .map_err(|e| Error::Config(format!("the executor's TLS: {e}")))?
        .add_service(flight)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);

    let endpoint = (tls.endpoint_override())(
        tonic::transport::Endpoint::from_shared(options.scheduler.clone())
            .map_err(|e| Error::Config(format!("the scheduler address: {e}")))?,
    )
    .map_err(|e| Error::Config(format!("the scheduler address: {e}")))?;
    let channel = endpoint.connect().await.map_err(|e| {
        Error::Ballista(format!(
            "cannot reach the scheduler at {}: {e}",
            options.scheduler
        ))
    })?;
    let scheduler = SchedulerGrpcClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE);
    let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
        Arc::new(BallistaLogicalExtensionCodec::default()),
        Arc::new(Codec::new(functions).with_sources(options.sources.clone())),
    );
    tracing::info!(%addr, scheduler = %options.scheduler, "executor serving (mutual TLS)");
    let health = ballista_executor::health::ExecutorHealth::new();
    let poll = execution_loop::poll_loop(scheduler, executor, codec, None, None, health);
    tokio::select! {
        r = flight => r.map_err(|e| Error::Ballista(format!("the executor's Flight service stopped: {e}"))),
        r = poll => r.map_err(Error::from),
    }
}
