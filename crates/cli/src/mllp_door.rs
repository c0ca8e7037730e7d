//! The `[mllp]` section of the config file and the HL7 v2 door's configuration from it:
//!
//! ```toml
//! [mllp]
//! listen = "0.0.0.0:2575"                        # or --mllp ADDR
//! client_ca = "/etc/medlake/device-ca.pem"       # mutual TLS; [tls] cert and key serve it
//! schema = "bronze"                              # where hl7_observations, hl7_adt, hl7_quarantine live
//! max_message_bytes = 1048576
//! idle_timeout_seconds = 600
//! max_connections = 512
//! processing_ids = ["P"]                         # MSH-11 accepted; others are answered AR
//!
//! [[mllp.senders]]
//! name = "icu-gateway"
//! certificate = "icu-gateway.hospital.internal"  # a DNS name of its client certificate
//! addresses = ["10.20.0.0/16"]                   # private networks only
//! applications = ["MONITOR_GW"]                  # MSH-3 it may claim (empty: any)
//! facilities = ["ICU"]                           # MSH-4 it may claim (empty: any)
//! message_types = ["ORU"]                        # MSH-9 it may send (empty: any)
//! ```
//! Timestamps sent without an offset are read in `[clinical] time_zone` (default UTC).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::Failure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpEntry {
    pub listen: Option<SocketAddr>,
    pub client_ca: Option<PathBuf>,
    pub schema: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub idle_timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub processing_ids: Option<Vec<String>>,
    #[serde(default)]
    pub senders: Vec<SenderEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderEntry {
    pub name: String,
    pub certificate: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub applications: Vec<String>,
    #[serde(default)]
    pub facilities: Vec<String>,
    #[serde(default)]
    pub message_types: Vec<String>,
}

/// The MLLP door's configuration, when it is asked for (`--mllp ADDR` or `[mllp] listen`).
/// Without configured senders it only runs with `insecure_no_auth` (loopback).
pub(crate) fn config(
    listen: Option<SocketAddr>,
    config: &crate::config::Config,
    insecure_no_auth: bool,
) -> Result<Option<medlake_mllp::Config>, Failure> {
    let entry = config.mllp.as_ref();
    let Some(listen) = listen.or_else(|| entry.and_then(|e| e.listen)) else {
        return Ok(None);
    };
    let usage = |m: String| Failure::Usage(format!("[mllp] {m}"));
    let senders = entry
        .map(|e| e.senders.iter().map(sender).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(usage)?
        .unwrap_or_default();
    let auth = match (insecure_no_auth, senders.is_empty()) {
        (true, true) => medlake_mllp::Auth::InsecureNoAuth,
        (false, _) => medlake_mllp::Auth::Senders(senders),
        (true, false) => {
            return Err(usage(
                "--insecure-no-auth and configured senders exclude each other".into(),
            ));
        }
    };
    let mut mllp = medlake_mllp::Config::new(listen, auth);
    mllp.tls = config.tls.as_ref().map(|t| medlake_auth::TlsFiles {
        cert: t.cert.clone(),
        key: t.key.clone(),
    });
    if let Some(zone) = config
        .clinical
        .as_ref()
        .and_then(|c| c.time_zone.as_deref())
    {
        mllp.time_zone = zone
            .parse()
            .map_err(|_| Failure::Usage(format!("[clinical] time_zone: unknown zone '{zone}'")))?;
    }
    let Some(e) = entry else {
        return Ok(Some(mllp));
    };
    mllp.client_ca = e.client_ca.clone();
    if let Some(schema) = &e.schema {
        mllp.schema = schema.to_ascii_lowercase();
    }
    if let Some(n) = e.max_message_bytes {
        mllp.max_message_bytes = n.clamp(1024, 64 << 20);
    }
    if let Some(s) = e.idle_timeout_seconds {
        mllp.idle_timeout = std::time::Duration::from_secs(s.clamp(1, 86_400));
    }
    if let Some(n) = e.max_connections {
        mllp.max_connections = n.max(1);
    }
    if let Some(ids) = &e.processing_ids {
        mllp.processing_ids = ids.clone();
    }
    Ok(Some(mllp))
}

fn sender(entry: &SenderEntry) -> Result<medlake_mllp::Sender, String> {
    let addresses = entry
        .addresses
        .iter()
        .map(|a| {
            a.parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!(
                        "sender '{}': '{a}' is not an address or network",
                        entry.name
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(medlake_mllp::Sender {
        name: entry.name.clone(),
        certificate: entry.certificate.clone(),
        addresses,
        applications: entry.applications.clone(),
        facilities: entry.facilities.clone(),
        message_types: entry
            .message_types
            .iter()
            .map(|t| t.to_ascii_uppercase())
            .collect(),
    })
}
