//! The connectors this binary is built with, registered here and nowhere else: one line per
//! connector. A new connector is one crate implementing `medlake_source::Connector` plus one
//! line in [`registry`].

use medlake_engine::{Engine, EngineBuilder};

/// Every connector of the binary (a server's, and an executor's for external scans).
pub fn registry() -> medlake_source::Registry {
    medlake_source::Registry::new()
        .with(medlake_source_sqlserver::SqlServerConnector)
        .with(medlake_source_rest::RestConnector)
        .with(medlake_source_blob::BlobConnector)
        .with(medlake_source_cosmos::CosmosConnector)
        .with(medlake_source_fhir::FhirConnector)
}

/// An engine over `warehouse` with every connector of the binary.
pub fn engine(warehouse: &str) -> EngineBuilder {
    Engine::builder(warehouse).connectors(registry())
}

/// The engine of the local commands (`sql`, `apply`, `refresh`, `extract`): every connector,
/// and the permissive source policy (`${NAME}` falls back to the environment; never for
/// `medlake serve`).
pub async fn open_local(warehouse: &str) -> medlake_engine::Result<Engine> {
    local(warehouse).open().await
}

/// [`open_local`]'s builder, to configure further.
pub fn local(warehouse: &str) -> EngineBuilder {
    engine(warehouse).policy(medlake_source::Policy::permissive())
}
