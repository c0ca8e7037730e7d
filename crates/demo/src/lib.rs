//! medlake's demo hospital, for `medlake simulate` and `medlake quickstart`:
//!
//! - [`simulate`]: a ward of bedside devices posting vital signs to the HTTP ingest API, with
//!   the flaws real feeds have (the generator is a pure function of its seed and start).
//! - [`hospital`]: the quickstart's generated hospital (EHR people, devices, readings routed
//!   by channel, nursing observations, alerts, device events, trials, DICOM files, documents)
//!   written into the stand-in sources.
//! - [`project`]: the quickstart's project folder (the stand-in catalog and the repository's
//!   `sql/`, compiled in), the stand-in tables, the roles at work, one refresh of every view.
//!
//! The command line parses arguments, opens the engine with its connectors and starts the
//! doors; everything the demo generates lives here.

pub mod hospital;
pub mod project;
pub mod simulate;

/// Why a demo step stopped.
#[derive(Debug)]
pub enum Failure {
    /// The error was printed already.
    Reported,
    /// A problem with the arguments.
    Usage(String),
    /// The engine refused or failed.
    Error(medlake_engine::Error),
}

impl From<medlake_engine::Error> for Failure {
    fn from(e: medlake_engine::Error) -> Self {
        Failure::Error(e)
    }
}
