//! The Bulk Data `$export` flow (<https://hl7.org/fhir/uv/bulkdata/export.html>): the
//! kick-off (`Prefer: respond-async`, `_type`, `_since`), polling the status URL while it
//! answers 202 (waiting as `Retry-After` asks, within bounds; `X-Progress` logged), the
//! manifest (bounded), its `error` files (an export with errors fails unless
//! `allow_export_errors`), then its `output` and `deleted` NDJSON files streamed line by
//! line (each line bounded), and finally a DELETE of the status URL.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use medlake_source::scan::Window;
use medlake_source::{Error, Result};
use reqwest::Method;
use reqwest::header::{CONTENT_LOCATION, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::mpsc::Sender;
use tracing::{info, warn};
use url::Url;

use crate::client::{self, Client, NDJSON, Request};
use crate::rows::{self, Batches, Row};
use crate::{Export, instant};

#[derive(Debug, Deserialize)]
struct OutputFile {
    #[serde(rename = "type", default)]
    kind: String,
    url: String,
}

/// The complete-status body.
#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "transactionTime")]
    transaction_time: String,
    #[serde(rename = "requiresAccessToken", default)]
    requires_access_token: bool,
    #[serde(default)]
    output: Vec<OutputFile>,
    #[serde(default)]
    deleted: Vec<OutputFile>,
    #[serde(default)]
    error: Vec<OutputFile>,
}

/// Runs one export of the table's resource type (`_since` = the window's `after`) and sends
/// the rows of its files that belong to the window.
pub(crate) async fn read(
    client: &Client,
    export: &Export,
    window: &Window<DateTime<Utc>>,
    batches: &mut Batches,
    tx: &Sender<DfResult<RecordBatch>>,
) -> Result<()> {
    let started = Instant::now();
    let status = kick_off(client, export, window.after).await?;
    let result = async {
        let manifest = poll(client, &status, started).await?;
        let transaction_time = rows::micros(&manifest.transaction_time).ok_or_else(|| {
            malformed(client, format!("its transactionTime '{}' is not an instant", manifest.transaction_time))
        })?;
        if let Some(upto) = window.upto
            && upto.timestamp_micros() > transaction_time
        {
            return Err(Error::Remote {
                server: client.config.server.clone(),
                code: None,
                message: format!(
                    "the export's transactionTime {} is before this refresh's mark {}: the server's clock and its Date header disagree; nothing was read",
                    manifest.transaction_time,
                    crate::mark_text(upto)
                ),
            });
        }
        info!(server = %client.config.server, transaction_time = %manifest.transaction_time,
            files = manifest.output.len(), deleted = manifest.deleted.len(), "FHIR export complete");
        errors(client, &manifest).await?;
        files(client, &manifest, window, transaction_time, batches, tx).await
    }
    .await;
    // Tell the server it may delete the files (also after a failure: it cancels the export).
    let delete = Request {
        method: Method::DELETE,
        ..Request::get(&status, "the export's deletion", true)
    };
    if let Err(e) = client.send(delete).await {
        warn!(server = %client.config.server, error = %e, "could not delete the export's status URL");
    }
    result
}

fn malformed(client: &Client, message: String) -> Error {
    Error::MalformedPage {
        server: client.config.server.clone(),
        page: 1,
        message: format!("the export manifest: {message}"),
    }
}

/// The kick-off request; the status URL it answers with.
async fn kick_off(client: &Client, export: &Export, since: Option<DateTime<Utc>>) -> Result<Url> {
    let mut url = client.join(&export.path())?;
    url.query_pairs_mut()
        .append_pair("_type", &client.config.resource);
    if let Some(since) = since {
        url.query_pairs_mut().append_pair("_since", &instant(since));
    }
    info!(server = %client.config.server, export = %export.path(), since = ?since, "FHIR export kick-off");
    let request = Request {
        respond_async: true,
        ..Request::get(&url, "the export kick-off", true)
    };
    let response = client.send(request).await?;
    if response.status().as_u16() != 202 {
        return Err(Error::Remote {
            server: client.config.server.clone(),
            code: Some(response.status().as_u16().into()),
            message: format!(
                "the export kick-off answered {} instead of 202 Accepted: is {} a Bulk Data server?",
                response.status(),
                client.config.server
            ),
        });
    }
    let location = response
        .headers()
        .get(CONTENT_LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url.join(v).ok())
        .ok_or_else(|| Error::Remote {
            server: client.config.server.clone(),
            code: Some(202),
            message: "the export kick-off answered without a Content-Location (the status URL)"
                .into(),
        })?;
    if !client.config.token_allowed(&location.origin()) {
        return Err(Error::Refused {
            what: format!("the export status URL's host '{}'", location.host_str().unwrap_or_default()),
            reason: "it is not the FHIR server's origin nor one of 'token_origins', and it would receive the access token".into(),
        });
    }
    Ok(location)
}

/// Polls the status URL until the manifest arrives or `export_timeout_seconds` pass.
async fn poll(client: &Client, status: &Url, started: Instant) -> Result<Manifest> {
    let config = &client.config;
    loop {
        let response = client
            .send(Request::get(status, "the export status", true))
            .await?;
        if response.status().as_u16() == 200 {
            let body = client
                .body(response, config.max_manifest_bytes, "the export manifest")
                .await?;
            return serde_json::from_slice(&body)
                .map_err(|e| malformed(client, format!("not a Bulk Data manifest ({e})")));
        }
        if response.status().as_u16() != 202 {
            return Err(Error::Remote {
                server: config.server.clone(),
                code: Some(response.status().as_u16().into()),
                message: format!("the export status answered {}", response.status()),
            });
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let asked = header(RETRY_AFTER)
            .and_then(|v| medlake_source::http::parse_retry_after(&v, Utc::now()));
        let progress = header(reqwest::header::HeaderName::from_static("x-progress"));
        drop(response);
        let progress: String = progress.unwrap_or_default().chars().take(100).collect();
        let wait = asked
            .unwrap_or(config.poll_interval)
            .min(config.poll_max_wait);
        let left = config.export_timeout.saturating_sub(started.elapsed());
        if left.is_zero() || wait > left {
            return Err(Error::Timeout {
                server: config.server.clone(),
                seconds: config.export_timeout.as_secs(),
                during: format!(
                    "waiting for the export (export_timeout_seconds; last progress: {progress:?})"
                ),
            });
        }
        info!(server = %config.server, progress = %progress, wait = ?wait, "FHIR export in progress");
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}

/// The manifest's `error` files: OperationOutcomes about resources the export left out.
async fn errors(client: &Client, manifest: &Manifest) -> Result<()> {
    if manifest.error.is_empty() {
        return Ok(());
    }
    let mut issues = Vec::new();
    for (i, file) in manifest.error.iter().enumerate().take(5) {
        let url = file_url(client, file)?;
        let credentials =
            manifest.requires_access_token && client.config.token_allowed(&url.origin());
        let what = format!("error file {} of {}", i + 1, manifest.error.len());
        let request = Request {
            accept: NDJSON,
            ..Request::get(&url, &what, credentials)
        };
        let response = client.send(request).await?;
        let body = client
            .body(response, 64 << 10, &what)
            .await
            .unwrap_or_default();
        for line in String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
        {
            issues.push(client.scrub(&client::explain(line.as_bytes())));
        }
    }
    let summary = format!(
        "the export reported errors in {} file(s): {}",
        manifest.error.len(),
        issues.join(" | ")
    );
    if client.config.allow_export_errors {
        warn!(server = %client.config.server, errors = %summary, "FHIR export with errors (allow_export_errors)");
        return Ok(());
    }
    Err(Error::Remote {
        server: client.config.server.clone(),
        code: None,
        message: format!("{summary}; set 'allow_export_errors' 'true' to read the rest"),
    })
}

/// A file's URL, if its origin may be read.
fn file_url(client: &Client, file: &OutputFile) -> Result<Url> {
    let url = client
        .config
        .base
        .join(&file.url)
        .map_err(|e| malformed(client, format!("a file URL is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || !client.config.file_allowed(&url.origin()) {
        return Err(Error::Refused {
            what: format!("export file host '{}'", url.host_str().unwrap_or_default()),
            reason: "it is neither the FHIR server's origin nor one of the table's 'file_origins'"
                .into(),
        });
    }
    Ok(url)
}

/// The `output` files of the table's type, then the `deleted` files.
async fn files(
    client: &Client,
    manifest: &Manifest,
    window: &Window<DateTime<Utc>>,
    transaction_time: i64,
    batches: &mut Batches,
    tx: &Sender<DfResult<RecordBatch>>,
) -> Result<()> {
    let resource = client.config.resource.clone();
    let outputs: Vec<&OutputFile> = manifest
        .output
        .iter()
        .filter(|f| f.kind == resource)
        .collect();
    let total = outputs.len() + manifest.deleted.len();
    // A deletion without a time of its own happened before transactionTime, and after
    // `_since`; within the window it is placed at its end.
    let upto = window.upto.map(|t| t.timestamp_micros());
    let fallback = upto.unwrap_or(transaction_time);
    let tt = Some(transaction_time);
    let mut index = 0;
    for file in outputs {
        index += 1;
        let parse = |line: &str| rows::resource_row(line, &resource, tt).map(|r| vec![r]);
        let more = download(
            client,
            manifest,
            file,
            (index, total),
            batches,
            tx,
            parse,
            window,
        )
        .await?;
        if !more {
            return Ok(());
        }
    }
    for file in &manifest.deleted {
        index += 1;
        let parse = |line: &str| {
            rows::deleted_rows(line, &resource, Some(fallback), tt).map(|rows| {
                rows.into_iter()
                    .map(|mut r| {
                        r.last_updated = r.last_updated.map(|t| upto.map_or(t, |u| t.min(u)));
                        r
                    })
                    .collect()
            })
        };
        let more = download(
            client,
            manifest,
            file,
            (index, total),
            batches,
            tx,
            parse,
            window,
        )
        .await?;
        if !more {
            return Ok(());
        }
    }
    if batches.outside > 0 {
        info!(server = %client.config.server, rows = batches.outside, "resources outside the refresh's window left for the next one");
    }
    Ok(())
}

/// Streams one NDJSON file into rows. `false`: stop reading (LIMIT reached, reader gone).
#[allow(clippy::too_many_arguments)]
async fn download(
    client: &Client,
    manifest: &Manifest,
    file: &OutputFile,
    (index, total): (usize, usize),
    batches: &mut Batches,
    tx: &Sender<DfResult<RecordBatch>>,
    mut parse: impl FnMut(&str) -> std::result::Result<Vec<Row>, String>,
    window: &Window<DateTime<Utc>>,
) -> Result<bool> {
    let url = file_url(client, file)?;
    let credentials = manifest.requires_access_token && client.config.token_allowed(&url.origin());
    let what = format!("file {index} of {total} ({})", file.kind);
    let request = Request {
        accept: NDJSON,
        whole_timeout: false,
        ..Request::get(&url, &what, credentials)
    };
    let mut response = client.send(request).await?;
    let max = client.config.max_line_bytes;
    let bad = |line: usize, message: String| Error::MalformedPage {
        server: client.config.server.clone(),
        page: index,
        message: format!("{what}, line {line}: {message}"),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut line_no = 0usize;
    let mut finished = false;
    while !finished {
        let chunk = response.chunk().await.map_err(|e| client.lost(e, &what))?;
        let data = match &chunk {
            Some(c) => c.as_ref(),
            None => {
                finished = true;
                b"\n".as_slice()
            }
        };
        for piece in data.split_inclusive(|b| *b == b'\n') {
            pending.extend_from_slice(piece);
            if pending.len() > max + 2 {
                return Err(bad(
                    line_no + 1,
                    format!("a line is longer than max_line_bytes ({max})"),
                ));
            }
            if !pending.ends_with(b"\n") {
                continue;
            }
            line_no += 1;
            let line =
                std::str::from_utf8(&pending).map_err(|_| bad(line_no, "not UTF-8".into()))?;
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.trim().is_empty() {
                for row in parse(line).map_err(|m| bad(line_no, m))? {
                    if !row.deleted && !rows::in_window(&row, window) {
                        batches.outside += 1;
                        continue;
                    }
                    if !batches.push(row, tx).await {
                        return Ok(false);
                    }
                }
            }
            pending.clear();
        }
    }
    Ok(true)
}
