//! What each member of a cluster accepts from the others.
//!
//! **Roles.** A member's certificate may name its role in its subject's organizational unit:
//! `medlake-server` (submits and follows jobs), `medlake-executor` (registers, polls for tasks,
//! reports them) or `medlake-scheduler`. The scheduler answers each gRPC method only for its
//! role ([`SchedulerGate`]): a stolen executor certificate cannot submit a job, a server's
//! cannot take tasks (and so see other queries' plans). A certificate without a role is a
//! member of every role, for one-certificate clusters; once the scheduler's own certificate
//! names a role, peers without one are refused.
//!
//! **Plans.** An executor runs only plans a medlake server makes ([`GuardedEngine`]): Delta
//! scans (the files a server's snapshot lists), a Delta table's change feed (under the
//! executor's warehouse), DataFusion's operators over them, shuffles, and data files written
//! into a Delta table's folder; never a file scan or a sink
//! DataFusion decodes by itself (which would read or write any path the executor can).

use std::sync::Arc;

use ballista_core::JobId;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use tonic::{Request, Status};
use x509_cert::der::Decode as _;

/// A member's role, from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Executor,
    Scheduler,
    /// A certificate naming no role: every role.
    Member,
}

impl Role {
    const PREFIX: &'static str = "medlake-";

    fn from_unit(unit: &str) -> Option<Self> {
        match unit.strip_prefix(Self::PREFIX)? {
            "server" => Some(Role::Server),
            "executor" => Some(Role::Executor),
            "scheduler" => Some(Role::Scheduler),
            _ => None,
        }
    }

    /// The role a DER certificate names (its subject's `OU=medlake-...`); `Member` when
    /// none; `None` when the certificate cannot be read.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let certificate = x509_cert::Certificate::from_der(der).ok()?;
        let mut role = Role::Member;
        for set in certificate.tbs_certificate.subject.0.iter() {
            for attribute in set.0.iter() {
                // id-at-organizationalUnitName (2.5.4.11)
                if attribute.oid.to_string() != "2.5.4.11" {
                    continue;
                }
                let value = attribute.value.value();
                if let Some(named) = std::str::from_utf8(value).ok().and_then(Role::from_unit) {
                    role = named;
                }
            }
        }
        Some(role)
    }

    /// The role a PEM certificate names.
    pub fn of_pem(pem: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(pem).ok()?;
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?;
        Self::of_certificate(&der)
    }
}

/// Which roles the scheduler answers, per gRPC method.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerGate {
    /// Whether peers whose certificates name no role are refused (the scheduler's own
    /// certificate names one).
    strict: bool,
}

impl SchedulerGate {
    pub fn new(own: Role) -> Self {
        Self {
            strict: own != Role::Member,
        }
    }

    /// The peer's role, if it may call a method for `allowed`.
    pub fn check<T>(
        &self,
        request: &Request<T>,
        allowed: Role,
        method: &str,
    ) -> Result<(), Status> {
        let certificates = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a cluster certificate is required"))?;
        let role = certificates
            .first()
            .and_then(|c| Role::of_certificate(c.as_ref()))
            .ok_or_else(|| Status::unauthenticated("the peer's certificate cannot be read"))?;
        let ok = match role {
            Role::Member => !self.strict,
            role => role == allowed,
        };
        if ok {
            Ok(())
        } else {
            tracing::warn!(
                ?role,
                method,
                "a cluster member called a method of another role"
            );
            Err(Status::permission_denied(format!(
                "{method} is for the cluster's {allowed:?} members"
            )))
        }
    }
}

/// The executor's engine: Ballista's, after checking that the task's plan is one a medlake
/// server makes, and that it writes only under the executor's warehouse when it has one.
#[derive(Default)]
pub struct GuardedEngine {
    inner: DefaultExecutionEngine,
    /// The warehouse `LakeWriteExec` may write under; `None`: anywhere with a Delta log.
    warehouse: Option<url::Url>,
}

impl GuardedEngine {
    /// An engine whose tasks write only under `warehouse` (when given).
    pub fn new(warehouse: Option<url::Url>) -> Self {
        Self {
            inner: DefaultExecutionEngine::new(),
            warehouse,
        }
    }
}

impl ExecutionEngine for GuardedEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        if let Some(refused) = refused(&plan).or_else(|| outside(&plan, self.warehouse.as_ref())) {
            tracing::warn!(%job_id, stage_id, refused, "an executor refused a task's plan");
            return Err(DataFusionError::Plan(format!(
                "this executor runs no plan with {refused}"
            )));
        }
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}

/// A Delta write, or a change-feed read, of `plan` whose table is not under `warehouse`,
/// named.
pub fn outside(plan: &Arc<dyn ExecutionPlan>, warehouse: Option<&url::Url>) -> Option<String> {
    let warehouse = warehouse?;
    let root = warehouse.as_str().trim_end_matches('/');
    // Parsed, so that `..` segments are resolved before the comparison.
    let inside = |table: &str| {
        url::Url::parse(table).is_ok_and(|url| {
            url.as_str()
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        })
    };
    let mut found = None;
    let _ = plan.apply(|node| {
        if let Some(write) = node.downcast_ref::<crate::write::LakeWriteExec>()
            && !inside(write.target().table.as_str())
        {
            found = Some("a Delta write outside this executor's warehouse".to_string());
        } else if let Some(changes) = node.downcast_ref::<crate::changes::ChangesScanExec>()
            && !inside(changes.table().as_str())
        {
            found = Some("a change-feed read outside this executor's warehouse".to_string());
        }
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The first node of `plan` an executor must not run, named.
pub fn refused(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let mut found = None;
    let _ = plan.apply(|node| {
        let name = node.name();
        if name.contains("Sink") {
            found = Some(format!("a sink ({name})"));
        } else if let Some(source) =
            node.downcast_ref::<datafusion::datasource::source::DataSourceExec>()
            && source
                .data_source()
                .downcast_ref::<datafusion::datasource::physical_plan::FileScanConfig>()
                .is_some()
        {
            found = Some("a file scan that is not a Delta table's".to_string());
        }
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_under_the_executors_warehouse() {
        use crate::write::{LakeWriteExec, Target};
        let input: Arc<dyn ExecutionPlan> =
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(Arc::new(
                datafusion::arrow::datatypes::Schema::empty(),
            )));
        let write = |table: &str| -> Arc<dyn ExecutionPlan> {
            Arc::new(LakeWriteExec::new(
                input.clone(),
                Target {
                    table: table.into(),
                    row_group_rows: 1,
                    page_rows: 1,
                    file_size: 0,
                    bloom_columns: Vec::new(),
                },
            ))
        };
        let warehouse = url::Url::parse("file:///data/wh/").unwrap();
        let at = |t: &str| outside(&write(t), Some(&warehouse));
        assert!(at("file:///data/wh/gold/v/").is_none());
        assert!(at("file:///data/wh/../etc/").is_some());
        assert!(at("file:///data/wh2/gold/v/").is_some());
        assert!(at("file:///data/wh").is_some());
        assert!(at("az://other/gold/v/").is_some());
        assert!(outside(&write("file:///anywhere/"), None).is_none());
    }

    #[test]
    fn change_feeds_are_read_only_under_the_executors_warehouse() {
        use crate::changes::ChangesScanExec;
        let warehouse = url::Url::parse("file:///data/wh/").unwrap();
        let at = |t: &str| {
            let scan: Arc<dyn ExecutionPlan> =
                Arc::new(ChangesScanExec::reading(url::Url::parse(t).unwrap()).unwrap());
            outside(&scan, Some(&warehouse))
        };
        assert!(at("file:///data/wh/bronze/t/").is_none());
        assert!(at("file:///data/wh/../secret/t/").is_some());
        assert!(at("file:///data/other/t/").is_some());
        assert!(at("az://lake/wh/bronze/t/").is_some());
    }

    #[test]
    fn roles_are_named_by_their_unit() {
        assert_eq!(Role::from_unit("medlake-server"), Some(Role::Server));
        assert_eq!(Role::from_unit("medlake-executor"), Some(Role::Executor));
        assert_eq!(Role::from_unit("server"), None);
        assert_eq!(Role::from_unit("medlake-admin"), None);
    }
}
