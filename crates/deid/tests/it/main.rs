//! The functions end to end: SQL through a DataFusion `SessionContext` with them registered,
//! and the key names the engine's privilege check reads from a plan.

mod keys;
mod sql;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::Result;
use datafusion::prelude::SessionContext;
use medlake_deid::Keys;

/// The test key (Python: `hmac.new(KEY, b"MRN-0001", hashlib.sha256).hexdigest()[:32]` is
/// `MRN_0001`).
pub const KEY: &[u8] = b"medlake-test-key-0123456789abcdef";
pub const MRN_0001: &str = "d111d8e9bdbf08534d4190f630959a5e";

/// Secrets `K` and `OTHER` (a different key); anything else is missing.
#[derive(Debug)]
pub struct TestKeys;

impl Keys for TestKeys {
    fn key(&self, name: &str) -> Result<Vec<u8>, String> {
        match name {
            "K" => Ok(KEY.to_vec()),
            "OTHER" => Ok(b"another-key-of-enough-length-42".to_vec()),
            other => Err(format!("no secret named '{other}'")),
        }
    }
}

pub fn context() -> SessionContext {
    let ctx = SessionContext::new();
    for udf in medlake_deid::udfs(Arc::new(TestKeys)) {
        ctx.register_udf(udf);
    }
    ctx
}

pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

/// The result as text lines (a pretty table).
pub async fn table(ctx: &SessionContext, sql: &str) -> String {
    let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).expect("prints").to_string()
}
