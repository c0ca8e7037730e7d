//! The physical extension codec the server, the scheduler and every executor share.
//!
//! Ballista's own codec decodes every extension node as one of Ballista's (shuffle readers
//! and writers), and has no slot for another codec, so this one wraps it: each extension
//! node's bytes start with a tag saying whose node follows.
//!
//! What may cross: Delta scans ([`LakeScanExec`]), external-table scans made to be planned
//! again by an executor with its own connectors and secrets ([`ExternalScanExec`]), a Delta
//! table's change feed over a range of versions ([`ChangesScanExec`]), data files
//! written into a Delta table's folder ([`LakeWriteExec`]: the commit stays on the server),
//! DataFusion's own nodes (encoded by datafusion-proto), Ballista's, and functions the
//! executors also have ([`Functions`]). Anything else is refused when the server encodes the
//! plan, so the query runs on the server instead ([`crate::Cluster::try_execute`]): the
//! connectors' own scan nodes (they hold connections and resolved secrets), per-session
//! functions (`current_user()`, `has_table_privilege()`), and functions keyed by a secret
//! (`pseudonym`, `shift_date`).

use std::collections::HashMap;
use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::ScalarUDF;
use datafusion::logical_expr::registry::FunctionRegistry;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::changes::ChangesScanExec;
use crate::external::{ExternalScanExec, Sources};
use crate::scan::LakeScanExec;
use crate::write::LakeWriteExec;

const BALLISTA: u8 = 0;
const LAKE_SCAN: u8 = 1;
const LAKE_WRITE: u8 = 2;
const EXTERNAL_SCAN: u8 = 3;
const CHANGES_SCAN: u8 = 4;

/// Functions that give the same answer wherever they run: never one holding a session's
/// identity or a secret. Names a server registers under these names but with per-session
/// state are refused by name, whatever the executors have.
const SERVER_ONLY: &[&str] = &[
    "current_user",
    "session_user",
    "is_member",
    "is_account_group_member",
    "has_table_privilege",
    "has_schema_privilege",
    "pseudonym",
    "shift_date",
    "medlake_erased",
];

/// The scalar functions of a cluster: DataFusion's own plus medlake's stateless ones, the
/// same on the server, the scheduler and the executors.
#[derive(Debug, Clone)]
pub struct Functions {
    extra: Vec<Arc<ScalarUDF>>,
    /// The executors' functions by name.
    known: Arc<HashMap<String, Arc<ScalarUDF>>>,
}

impl Functions {
    /// DataFusion's functions and `extra` (which replace DataFusion's of the same name).
    pub fn new(extra: Vec<Arc<ScalarUDF>>) -> Self {
        let extra: Vec<_> = extra
            .into_iter()
            .filter(|f| !SERVER_ONLY.contains(&f.name()))
            .collect();
        let state = Self::state_with(&extra);
        let known = state
            .scalar_functions()
            .iter()
            .filter(|(n, _)| !SERVER_ONLY.contains(&n.as_str()))
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        Self {
            extra,
            known: Arc::new(known),
        }
    }

    /// A session state with these functions (and DataFusion's defaults otherwise).
    pub fn state(&self) -> SessionState {
        Self::state_with(&self.extra)
    }

    fn state_with(extra: &[Arc<ScalarUDF>]) -> SessionState {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        for f in extra {
            // Replacing a built-in returns it; nothing to do with it.
            let _ = state.register_udf(f.clone());
        }
        state
    }

    /// Whether `f` runs the same on an executor: the executors have a function of its name,
    /// and it is this one (a server function shadowing a built-in, such as the Postgres
    /// door's `version()`, is another function there).
    pub fn crosses(&self, f: &ScalarUDF) -> bool {
        self.known
            .get(f.name())
            .is_some_and(|known| known.as_ref() == f)
    }
}

/// medlake's physical codec (around Ballista's).
#[derive(Debug)]
pub struct Codec {
    ballista: BallistaPhysicalExtensionCodec,
    functions: Functions,
    /// An executor's connectors, for the external scans it decodes.
    sources: Option<Arc<Sources>>,
}

impl Codec {
    pub fn new(functions: Functions) -> Self {
        Self {
            ballista: BallistaPhysicalExtensionCodec::default(),
            functions,
            sources: None,
        }
    }

    /// An executor's codec: external scans it decodes open their tables through `sources`.
    pub fn with_sources(mut self, sources: Option<Sources>) -> Self {
        self.sources = sources.map(Arc::new);
        self
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.split_first() {
            Some((&LAKE_SCAN, rest)) => Ok(Arc::new(LakeScanExec::decode(rest, inputs, ctx)?)),
            Some((&LAKE_WRITE, rest)) => {
                Ok(Arc::new(LakeWriteExec::decode(rest, inputs, ctx, self)?))
            }
            Some((&EXTERNAL_SCAN, rest)) => Ok(Arc::new(ExternalScanExec::decode(
                rest,
                inputs,
                ctx,
                self.sources.clone(),
            )?)),
            Some((&CHANGES_SCAN, rest)) => {
                Ok(Arc::new(ChangesScanExec::decode(rest, inputs, ctx)?))
            }
            Some((&BALLISTA, rest)) => self.ballista.try_decode(rest, inputs, ctx, converter),
            _ => Err(DataFusionError::Internal(
                "an extension node of a kind this medlake does not know (a different version?)"
                    .into(),
            )),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<LakeScanExec>() {
            buf.push(LAKE_SCAN);
            return scan.encode(buf);
        }
        if let Some(scan) = node.downcast_ref::<ExternalScanExec>() {
            buf.push(EXTERNAL_SCAN);
            return scan.encode(buf);
        }
        if let Some(scan) = node.downcast_ref::<ChangesScanExec>() {
            buf.push(CHANGES_SCAN);
            return scan.encode(buf);
        }
        if let Some(write) = node.downcast_ref::<LakeWriteExec>() {
            buf.push(LAKE_WRITE);
            return write.encode(buf, self);
        }
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf, converter)
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        Err(DataFusionError::Plan(format!(
            "function {name} is not one this cluster's executors have"
        )))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, _buf: &mut Vec<u8>) -> Result<()> {
        if self.functions.crosses(node) {
            Ok(())
        } else {
            Err(DataFusionError::NotImplemented(format!(
                "function {} runs only on the server",
                node.name()
            )))
        }
    }
}
