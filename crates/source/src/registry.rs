//! The connectors a server was built with, by `STORED AS` kind: the one place that defines,
//! opens and lists external tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use datafusion::catalog::TableProvider;

use crate::portable::{Opened, Reopen};
use crate::{Connector, Definition, Error, External, Policy, RemoteTable, Result, secret};

/// Kind (upper case) → connector.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    connectors: BTreeMap<&'static str, Arc<dyn Connector>>,
}

impl Registry {
    /// No connector: every `STORED AS` is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `connector` for each of its kinds (a later connector replaces an earlier
    /// one for the kinds both serve).
    pub fn with(mut self, connector: impl Connector + 'static) -> Self {
        self.register(Arc::new(connector));
        self
    }

    /// Every connector of `other` added to these (`other`'s win for the kinds both serve).
    pub fn merge(mut self, other: Registry) -> Self {
        self.connectors.extend(other.connectors);
        self
    }

    /// Registers `connector` for each of its kinds.
    pub fn register(&mut self, connector: Arc<dyn Connector>) {
        for kind in connector.kinds() {
            self.connectors.insert(kind, connector.clone());
        }
    }

    /// The `STORED AS` kinds served, upper case, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.connectors.keys().copied().collect()
    }

    /// Whether `kind` (any case) is served.
    pub fn serves(&self, kind: &str) -> bool {
        self.connectors
            .contains_key(kind.to_ascii_uppercase().as_str())
    }

    fn connector(&self, kind: &str) -> Result<&Arc<dyn Connector>> {
        let upper = kind.to_ascii_uppercase();
        self.connectors
            .get(upper.as_str())
            .ok_or_else(|| Error::UnknownKind {
                kind: upper,
                accepted: self.kinds().join(", "),
            })
    }

    /// Validates a `CREATE EXTERNAL TABLE`, connects to the source to read its columns, and
    /// returns the definition to store. Every secret is resolved (from the policy's store
    /// only) when the source is contacted.
    pub async fn define(
        &self,
        kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        declared: SchemaRef,
        policy: &Arc<Policy>,
    ) -> Result<Definition> {
        let upper = kind.to_ascii_uppercase();
        policy.check_secret_destinations(location, &options)?;
        self.connector(&upper)?
            .define(&upper, location, options, declared, policy)
            .await
    }

    /// Opens a stored definition as a table (no connection is made until it is scanned). The
    /// policy is checked again now (it may have changed since the table was created) and is
    /// kept for the table's connections.
    pub fn open(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Arc<dyn External>> {
        Ok(Arc::new(self.opened(definition, policy)?))
    }

    /// Opens the rows another process scanned ([`Portable::reopen`](crate::Portable::reopen)) here: the definition as
    /// [`Self::open`] does (secrets from this process's policy, checked against it), then the
    /// same rows.
    pub fn reopen(&self, reopen: &Reopen, policy: &Arc<Policy>) -> Result<Arc<dyn TableProvider>> {
        self.opened(&reopen.definition, policy)?.rows(reopen)
    }

    fn opened(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Opened> {
        secret::check_references(&definition.options, policy)?;
        policy.check_secret_destinations(&definition.location, &definition.options)?;
        let inner = self.connector(&definition.kind)?.open(definition, policy)?;
        Ok(Opened {
            definition: definition.clone(),
            inner,
        })
    }

    /// Lists the tables of `remote_schema` at the source.
    pub async fn list_tables(
        &self,
        kind: &str,
        location: &str,
        options: &BTreeMap<String, String>,
        remote_schema: &str,
        policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>> {
        let upper = kind.to_ascii_uppercase();
        policy.check_secret_destinations(location, options)?;
        self.connector(&upper)?
            .list_tables(&upper, location, options, remote_schema, policy)
            .await
    }
}
