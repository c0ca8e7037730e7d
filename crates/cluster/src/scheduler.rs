//! `medlake scheduler`: Ballista's scheduler with medlake's codec and functions, behind
//! mutual TLS.
//!
//! Ballista's own `start_grpc_service` serves plain HTTP/2 (with a REST API and a Flight
//! proxy); here the scheduler's gRPC service alone is served, by tonic with the cluster's TLS,
//! so a client without a certificate from the cluster CA never reaches it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::*;
use tonic::{Request, Response, Status};

use crate::guard::{Role, SchedulerGate};
use crate::{ClusterTls, Codec, Error, Functions};

/// Serves a scheduler on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: ClusterTls,
    functions: Functions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("the scheduler's address: {e}")))?;
    let state_functions = functions.clone();
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        external_host: addr.ip().to_string(),
        bind_port: addr.port(),
        // Executors poll for tasks: the scheduler never dials an executor.
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_physical_codec: Some(Arc::new(Codec::new(functions.clone()))),
        override_session_builder: Some(Arc::new(move |config| {
            let state = state_functions.state();
            Ok(
                datafusion::execution::SessionStateBuilder::new_from_existing(state)
                    .with_config(crate::isolated_partitions(config))
                    .build(),
            )
        })),
        override_create_grpc_client_endpoint: Some(tls.endpoint_override()),
        use_tls: true,
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
        Arc::new(BallistaLogicalExtensionCodec::default()),
        Arc::new(Codec::new(functions)),
    );
    let collector = ballista_scheduler::metrics::default_metrics_collector()?;
    let mut scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
        config.scheduler_endpoint(),
        cluster,
        codec,
        Arc::new(config),
        collector,
    );
    scheduler.init().await?;
    let gate = SchedulerGate::new(tls.role());
    let service = SchedulerGrpcServer::new(Gated {
        inner: scheduler,
        gate,
    })
    .max_decoding_message_size(crate::executor::MAX_MESSAGE)
    .max_encoding_message_size(crate::executor::MAX_MESSAGE);
    tracing::info!(%addr, "scheduler listening (mutual TLS)");
    tonic::transport::Server::builder()
        .tls_config(tls.server())
        .map_err(|e| Error::Config(format!("the scheduler's TLS: {e}")))?
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Ballista(format!("the scheduler stopped: {e}")))
}

/// Ballista's scheduler behind [`SchedulerGate`]: each method for its role only.
struct Gated<S> {
    inner: S,
    gate: SchedulerGate,
}

/// A method of the gated scheduler: checked for `role`, then Ballista's.
macro_rules! gated {
    ($name:ident, $params:ty, $result:ty, $role:expr) => {
        // async_trait's form of the method (the attribute cannot see into a macro).
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            request: Request<$params>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<$result>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                self.gate.check(&request, $role, stringify!($name))?;
                self.inner.$name(request).await
            })
        }
    };
}

impl<S: SchedulerGrpc> SchedulerGrpc for Gated<S> {
    type ExecuteQueryPushStream = S::ExecuteQueryPushStream;

    gated!(poll_work, PollWorkParams, PollWorkResult, Role::Executor);
    gated!(
        register_executor,
        RegisterExecutorParams,
        RegisterExecutorResult,
        Role::Executor
    );
    gated!(
        heart_beat_from_executor,
        HeartBeatParams,
        HeartBeatResult,
        Role::Executor
    );
    gated!(
        update_task_status,
        UpdateTaskStatusParams,
        UpdateTaskStatusResult,
        Role::Executor
    );
    gated!(
        executor_stopped,
        ExecutorStoppedParams,
        ExecutorStoppedResult,
        Role::Executor
    );
    gated!(
        create_update_session,
        CreateUpdateSessionParams,
        CreateUpdateSessionResult,
        Role::Server
    );
    gated!(
        remove_session,
        RemoveSessionParams,
        RemoveSessionResult,
        Role::Server
    );
    gated!(
        execute_query_push,
        ExecuteQueryParams,
        Self::ExecuteQueryPushStream,
        Role::Server
    );
    gated!(
        execute_query,
        ExecuteQueryParams,
        ExecuteQueryResult,
        Role::Server
    );
    gated!(
        get_job_status,
        GetJobStatusParams,
        GetJobStatusResult,
        Role::Server
    );
    gated!(
        get_job_metrics,
        GetJobMetricsParams,
        GetJobMetricsResult,
        Role::Server
    );
    gated!(cancel_job, CancelJobParams, CancelJobResult, Role::Server);
    gated!(
        clean_job_data,
        CleanJobDataParams,
        CleanJobDataResult,
        Role::Server
    );
}
