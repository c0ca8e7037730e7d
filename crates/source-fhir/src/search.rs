//! Plain FHIR search: `GET [base]/[type]?<search>&_count=<page_size>` (with
//! `_lastUpdated=gt<after>&_lastUpdated=le<upto>` for a watermark window), following each
//! Bundle's `next` link within the server's origin (the paging the `rest` connector's
//! `'pagination' 'fhir'` uses, from `medlake_source::http`). Entries whose `search.mode` is
//! `include` or `outcome` are skipped; every resource is kept as the server wrote it.

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use medlake_source::scan::Window;
use medlake_source::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc::Sender;
use url::Url;

use crate::client::{Client, Request};
use crate::instant;
use crate::rows::{self, Batches};

#[derive(Deserialize)]
struct EntrySearch {
    mode: Option<String>,
}

#[derive(Deserialize)]
struct Entry {
    resource: Option<Box<RawValue>>,
    search: Option<EntrySearch>,
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    link: Option<Value>,
    #[serde(default)]
    entry: Vec<Entry>,
}

/// Reads every page of the search and sends the rows in `window`.
pub(crate) async fn read(
    client: &Client,
    params: &[(String, String)],
    window: &Window<DateTime<Utc>>,
    batches: &mut Batches,
    tx: &Sender<DfResult<RecordBatch>>,
) -> Result<()> {
    let config = &client.config;
    let mut url = client.join(&config.resource)?;
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
        query.append_pair("_count", &config.page_size.to_string());
        if let Some(after) = window.after {
            query.append_pair("_lastUpdated", &format!("gt{}", instant(after)));
        }
        if let Some(upto) = window.upto {
            query.append_pair("_lastUpdated", &format!("le{}", instant(upto)));
        }
    }
    let mut next = Some(url);
    let mut page = 0usize;
    // Pages already read: a server whose `next` links go round in a circle is an error, not
    // a read that never ends; and no read goes on past MAX_PAGES pages.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    while let Some(url) = next.take() {
        page += 1;
        if page > MAX_PAGES || !seen.insert(url.as_str().to_owned()) {
            return Err(Error::MalformedPage {
                server: config.server.clone(),
                page,
                message: if page > MAX_PAGES {
                    format!("more than {MAX_PAGES} pages")
                } else {
                    "its next link leads to a page already read".to_owned()
                },
            });
        }
        let what = format!("page {page}");
        let response = client.send(Request::get(&url, &what, true)).await?;
        let body = client.body(response, config.max_page_bytes, &what).await?;
        let malformed = |message: String| Error::MalformedPage {
            server: config.server.clone(),
            page,
            message,
        };
        let bundle: Bundle = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("not a FHIR Bundle ({e})")))?;
        let links = serde_json::json!({
            "resourceType": bundle.resource_type,
            "link": bundle.link,
        });
        next = medlake_source::http::fhir_next_link(&links)
            .map_err(malformed)?
            .map(|link| next_page(client, &url, link, page))
            .transpose()?;
        for (i, entry) in bundle.entry.iter().enumerate() {
            let mode = entry.search.as_ref().and_then(|s| s.mode.as_deref());
            if matches!(mode, Some("include" | "outcome")) {
                continue;
            }
            let Some(resource) = &entry.resource else {
                continue;
            };
            let row = rows::resource_row(resource.get(), &config.resource, None)
                .map_err(|m| malformed(format!("entry {i}: {m}")))?;
            if !rows::in_window(&row, window) {
                batches.outside += 1;
                continue;
            }
            if !batches.push(row, tx).await {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The most pages one search read follows.
const MAX_PAGES: usize = 100_000;

/// The next page's URL: on the server's origin (it receives the token), not the page itself.
fn next_page(client: &Client, current: &Url, link: &str, page: usize) -> Result<Url> {
    let config = &client.config;
    let malformed = |message: String| Error::MalformedPage {
        server: config.server.clone(),
        page,
        message,
    };
    let next = current
        .join(link)
        .map_err(|e| malformed(format!("its next link is not a URL: {e}")))?;
    if next.origin() != config.base.origin() {
        return Err(malformed(format!(
            "its next link leads to another origin ({}); the token is sent to {} only",
            next.origin().ascii_serialization(),
            config.base.origin().ascii_serialization()
        )));
    }
    if next == *current {
        return Err(malformed(
            "its next link is the page itself: the server would loop".into(),
        ));
    }
    Ok(next)
}
