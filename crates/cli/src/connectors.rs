//! The connectors this binary is built with, registered here and nowhere else: one line per
//! connector. A new connector is one crate implementing `medlake_source::Connector` plus one
//! line in [`engine`].

use medlake_engine::{Engine, EngineBuilder};

/// An engine over `warehouse` with every connector of the binary.
pub fn engine(warehouse: &str) -> EngineBuilder {
    Engine::builder(warehouse)
        .with_connector(medlake_source_sqlserver::SqlServerConnector)
        .with_connector(medlake_source_rest::RestConnector)
        .with_connector(medlake_source_blob::BlobConnector)
        .with_connector(medlake_source_cosmos::CosmosConnector)
        .with_connector(medlake_source_fhir::FhirConnector)
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
