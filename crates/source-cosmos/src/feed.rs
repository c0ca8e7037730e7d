//! The change feed in "all versions and deletes" (full-fidelity) mode, for tables declared with
//! `'changes' 'all_versions_and_deletes'`: marks, and change feed items as rows.
//!
//! **Marks.** A mark is the SDK's change feed continuation token (`c1.` and base64url JSON): for
//! every partition key range (its EPK bounds) the server's continuation, the ETag the service
//! returned and takes back as `If-None-Match`. The service's ETag for this feed is the range's
//! LSN in quotes (`"42"`: the changes up to LSN 42 are read), which is how a read between two
//! marks knows where to stop in each range. Nothing else in the token is relied upon: a token
//! whose shape is not known (a newer SDK) still resumes, but without a bound per range (the
//! read then stops when every range answered 304).
//!
//! **Versions.** `_change_version` is the change's LSN (`metadata.lsn`). LSNs are per range,
//! not global; a document lives in one range, and a range that splits hands its LSN sequence
//! on to its children, so the LSNs of one document's changes increase. Rows read by a snapshot
//! (`'S'`) carry version 0: below every LSN any range can give a later change, whichever range
//! the document is in (a mark's per-range LSNs could not give one number that is both above
//! the document's earlier changes and below its later ones in every range).

use std::num::NonZeroU32;

use azure_data_cosmos::CosmosError;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::{ChangeFeedPageIterator, ContinuationToken, FeedScope};
use azure_data_cosmos::models::{ChangeFeedItem, ChangeFeedOperationType};
use azure_data_cosmos::options::{
    ChangeFeedMode, ChangeFeedOptions, ChangeFeedStartFrom, MaxItemCountHint,
};
use base64::Engine;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use futures::StreamExt;
use medlake_source::{Error, Result};
use serde_json::{Map, Value};

use crate::{Planned, Shared, backoff, connect_retrying, cosmos_error, retryable};

type Pages = ChangeFeedPageIterator<ChangeFeedItem<Value>>;

/// The value of the `changes` option that turns the change feed on.
pub(crate) const MODE: &str = "all_versions_and_deletes";
/// The operation column: `I`, `U`, `D`, or `S` for a row a snapshot read.
pub(crate) const OPERATION: &str = "_change_operation";
/// The version column: the change's LSN (0 for a snapshot row).
pub(crate) const VERSION: &str = "_change_version";

/// One partition key range's position in a mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RangePos {
    pub min: String,
    pub max: String,
    pub etag: String,
}

/// The per-range positions of an SDK change feed continuation token; `None` when the token is
/// not one this version understands (then reads are not bounded per range).
pub(crate) fn positions(token: &str) -> Option<Vec<RangePos>> {
    let body = token.strip_prefix("c1.")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    let state: Value = serde_json::from_slice(&json).ok()?;
    let tokens = state.pointer("/root/active_tokens")?.as_array()?;
    tokens
        .iter()
        .map(|t| {
            Some(RangePos {
                min: t.get("min_epk")?.as_str()?.to_string(),
                max: t.get("max_epk")?.as_str()?.to_string(),
                etag: t.get("server_continuation")?.as_str()?.to_string(),
            })
        })
        .collect()
}

/// Whether `token` is a change feed continuation (of any version) rather than something else.
pub(crate) fn is_token(token: &str) -> bool {
    let t = token.trim();
    !t.is_empty() && t.starts_with('c') && t.contains('.')
}

/// The LSN of a range's continuation (`"42"` → 42).
pub(crate) fn lsn_of(etag: &str) -> Option<i64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// Whether EPK range `[a_min, a_max)` holds `[b_min, b_max)` (EPKs are upper-case hex, compared
/// as text; `""` is the lowest and `"FF"` the highest bound).
fn holds(a_min: &str, a_max: &str, b_min: &str, b_max: &str) -> bool {
    a_min <= b_min && b_max <= a_max
}

/// The LSN up to which the range `[min, max)` is read for a mark: the LSN of the mark's range
/// that holds it (the same range, or its parent before a split), else the highest of the
/// mark's ranges inside it (after a merge). `None` when the mark says nothing of it.
pub(crate) fn bound(upto: &[RangePos], min: &str, max: &str) -> Option<i64> {
    if let Some(r) = upto.iter().find(|r| holds(&r.min, &r.max, min, max)) {
        return lsn_of(&r.etag);
    }
    upto.iter()
        .filter(|r| holds(min, max, &r.min, &r.max))
        .map(|r| lsn_of(&r.etag))
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .max()
}

/// The range that served a page: the one position that changed between two snapshots of the
/// token (or the only range).
pub(crate) fn served<'a>(before: &[RangePos], after: &'a [RangePos]) -> Option<&'a RangePos> {
    let changed: Vec<&RangePos> = after.iter().filter(|p| !before.contains(p)).collect();
    match (changed.as_slice(), after) {
        ([one], _) => Some(one),
        (_, [only]) => Some(only),
        _ => None,
    }
}

/// Whether every range of `now` has read up to its bound in `upto`.
pub(crate) fn caught_up(now: &[RangePos], upto: &[RangePos]) -> bool {
    !now.is_empty()
        && now
            .iter()
            .all(|p| match (lsn_of(&p.etag), bound(upto, &p.min, &p.max)) {
                (Some(at), Some(b)) => at >= b,
                _ => false,
            })
}

/// One change as a row's document: the operation letter, the LSN, and the document the
/// columns read (`current` for creates and replaces; for a delete the previous image when the
/// feed gives it, else only the id and the partition key, from `metadata`).
/// `partition_key` is the container's partition key path (`/deviceId`).
pub(crate) fn change(
    item: &ChangeFeedItem<Value>,
    partition_key: Option<&str>,
) -> Result<(&'static str, i64, Value), String> {
    let metadata = item
        .metadata()
        .ok_or("a change without metadata (is the feed read in full-fidelity mode?)")?;
    let lsn = metadata
        .lsn()
        .ok_or("a change without metadata.lsn")?
        .value();
    let operation = metadata
        .operation_type()
        .ok_or("a change without metadata.operationType")?;
    let (letter, doc) = match operation {
        ChangeFeedOperationType::Create => ("I", item.current().cloned()),
        ChangeFeedOperationType::Replace => ("U", item.current().cloned()),
        ChangeFeedOperationType::Delete => {
            let mut doc = match item.previous() {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            let id = metadata
                .id()
                .map(str::to_string)
                .or_else(|| text(item.current()?.get("id")?))
                .or_else(|| text(doc.get("id")?));
            let Some(id) = id else {
                return Err(format!("delete at LSN {lsn} carries no document id"));
            };
            doc.insert("id".into(), Value::String(id));
            if let (Some(path), Some(value)) = (partition_key, metadata.partition_key()) {
                set_partition_key(&mut doc, path, value);
            }
            ("D", Some(Value::Object(doc)))
        }
        _ => {
            return Err(format!(
                "change at LSN {lsn} has an operation type this version does not know"
            ));
        }
    };
    let doc = doc.ok_or_else(|| format!("change at LSN {lsn} carries no current document"))?;
    Ok((letter, lsn, doc))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Puts a delete's partition key value (as the feed gives it: an object of path name to value,
/// an array of values, or the value) at `path` in `doc`, unless the previous image has it.
fn set_partition_key(doc: &mut Map<String, Value>, path: &str, given: &Value) {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some(last) = segments.last() else {
        return;
    };
    let value = match given {
        Value::Array(values) => values.first().cloned(),
        Value::Object(o) if o.len() == 1 => o.values().next().cloned(),
        Value::Object(o) => o.get(last.as_str()).cloned(),
        other => Some(other.clone()),
    };
    let Some(value) = value else {
        return;
    };
    let mut at = doc;
    for segment in &segments[..segments.len() - 1] {
        let next = at
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = next else {
            return; // the previous image has a value there that is not an object: keep it
        };
        at = inner;
    }
    at.entry(last.clone()).or_insert(value);
}

/// Whether the service refused a continuation: an all versions and deletes continuation
/// older than the container's retention answers 400 (the SDK's own refusals of a token are
/// not from the wire).
fn expired(e: &CosmosError) -> bool {
    e.is_from_wire() && u16::from(e.status().status_code()) == 400
}

/// What a poll of the feed gave: a page, a failure of the service, or no answer in time.
enum Polled {
    Page(Vec<ChangeFeedItem<Value>>),
    Failed(CosmosError),
    TimedOut,
}

impl Shared {
    /// The container's change feed in full-fidelity mode, from `from` (else from now).
    async fn open_feed(
        &self,
        container: &ContainerClient,
        from: Option<&str>,
        page_size: u32,
    ) -> std::result::Result<Pages, CosmosError> {
        let size = NonZeroU32::new(page_size).unwrap_or(NonZeroU32::MIN);
        let mut options = ChangeFeedOptions::default()
            .with_mode(ChangeFeedMode::AllVersionsAndDeletes)
            .with_max_item_count(MaxItemCountHint::Limit(size));
        if let Some(token) = from {
            options = options.with_continuation_token(ContinuationToken::from_string(token.into()));
        }
        container
            .query_change_feed::<Value>(
                FeedScope::full_container(),
                ChangeFeedStartFrom::Now,
                Some(options),
            )
            .await
    }

    async fn poll(&self, pages: &mut Pages) -> Polled {
        match tokio::time::timeout(self.config.timeout, pages.next()).await {
            Err(_) => Polled::TimedOut,
            Ok(Some(Ok(page))) => Polled::Page(page.into_items()),
            Ok(Some(Err(e))) => Polled::Failed(e),
            // The SDK's change feed never ends; an end is taken as no change.
            Ok(None) => Polled::Page(Vec::new()),
        }
    }

    fn timeout(&self, during: &str) -> Error {
        Error::Timeout {
            server: self.config.server.clone(),
            seconds: self.config.timeout.as_secs(),
            during: during.to_string(),
        }
    }

    fn token_of(&self, pages: &Pages, during: &str) -> Result<String> {
        pages
            .to_continuation_token()
            .map(|t| t.as_str().to_string())
            .map_err(|e| cosmos_error(&self.config, during, &e, false))
    }

    /// The feed's current position in every range: the high mark of a change table.
    pub(crate) async fn feed_position(&self) -> Result<String> {
        let config = &self.config;
        let during = "reading the change feed's position";
        let container = connect_retrying(config, &self.policy).await?;
        let mut attempt = 0;
        loop {
            let failed = match self.open_feed(&container, None, 1).await {
                // The first poll pins every range to "now" (304s carrying the ETags).
                Ok(mut pages) => match self.poll(&mut pages).await {
                    Polled::Page(_) => return self.token_of(&pages, during),
                    Polled::Failed(e) => Some(e),
                    Polled::TimedOut => None,
                },
                Err(e) => Some(e),
            };
            let transient = failed.as_ref().is_none_or(retryable);
            if !transient || attempt >= config.retries {
                return Err(match failed {
                    Some(e) => cosmos_error(config, during, &e, false),
                    None => self.timeout(during),
                });
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Whether the service still serves the feed from `after` in every range (polled once
    /// per range, one change at most each).
    pub(crate) async fn feed_kept_since(&self, after: &str) -> Result<bool> {
        let config = &self.config;
        let during = "checking the change feed continuation";
        let ranges = positions(after).map_or(1, |p| p.len().max(1));
        let container = connect_retrying(config, &self.policy).await?;
        let mut pages = match self.open_feed(&container, Some(after), 1).await {
            Ok(pages) => pages,
            Err(e) if expired(&e) => return Ok(false),
            Err(e) => return Err(cosmos_error(config, during, &e, false)),
        };
        for _ in 0..ranges {
            match self.poll(&mut pages).await {
                Polled::Page(_) => {}
                Polled::Failed(e) if expired(&e) => {
                    tracing::info!(error = %e, table = %config.target(), "change feed continuation expired");
                    return Ok(false);
                }
                Polled::Failed(e) => return Err(cosmos_error(config, during, &e, false)),
                Polled::TimedOut => return Err(self.timeout(during)),
            }
        }
        Ok(true)
    }

    /// The changes after mark `after` up to mark `upto`, one row per change, sent to `sink`
    /// page by page. Each range is read up to its LSN in `upto` (changes past it are left to
    /// the next read); without per-range LSNs, until every range answered 304.
    pub(crate) async fn read_feed(
        &self,
        planned: &Planned,
        after: &str,
        upto: &str,
        schema: &SchemaRef,
        sink: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
    ) -> Result<()> {
        let config = &self.config;
        let container = connect_retrying(config, &self.policy).await?;
        let upto = positions(upto);
        let mut token = after.to_string();
        let mut at = positions(after).unwrap_or_default();
        let (mut empty_run, mut pages_read, mut attempt) = (0usize, 0usize, 0u32);
        let mut remaining = planned.limit;
        loop {
            let during = format!(
                "reading change feed page {} of {}",
                pages_read + 1,
                config.target()
            );
            let failed = match self
                .open_feed(&container, Some(&token), config.page_size)
                .await
            {
                Err(e) => Some(e),
                Ok(mut pages) => loop {
                    let items = match self.poll(&mut pages).await {
                        Polled::Page(items) => items,
                        Polled::Failed(e) => break Some(e),
                        Polled::TimedOut => break None,
                    };
                    attempt = 0;
                    pages_read += 1;
                    let now = self.token_of(&pages, &during)?;
                    let now_at = positions(&now).unwrap_or_default();
                    let limit = match (&upto, served(&at, &now_at)) {
                        (Some(u), Some(range)) => bound(u, &range.min, &range.max),
                        _ => None,
                    };
                    empty_run = if items.is_empty() { empty_run + 1 } else { 0 };
                    let batch = self.feed_batch(&items, limit, planned, schema, pages_read)?;
                    let batch = match remaining.as_mut() {
                        Some(left) => {
                            let b = batch.slice(0, batch.num_rows().min(*left));
                            *left -= b.num_rows();
                            b
                        }
                        None => batch,
                    };
                    if batch.num_rows() > 0 && sink.send(Ok(batch)).await.is_err() {
                        return Ok(()); // the reader is gone
                    }
                    (token, at) = (now, now_at);
                    let done = empty_run >= at.len().max(1)
                        || upto.as_ref().is_some_and(|u| caught_up(&at, u));
                    if done || remaining == Some(0) {
                        return Ok(());
                    }
                },
            };
            // Resume from the last page read.
            if failed.as_ref().is_none_or(retryable) && attempt < config.retries {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            return Err(match failed {
                Some(e) if expired(&e) => Error::Remote {
                    server: config.server.clone(),
                    code: Some(400),
                    message: format!(
                        "{during}: the change feed no longer keeps the changes since the last refresh \
                         (retention passed); refresh again to take a new snapshot: {e}"
                    ),
                },
                Some(e) => cosmos_error(config, &during, &e, pages_read > 0),
                None => self.timeout(&during),
            });
        }
    }

    /// The batch of one feed page: its changes up to LSN `limit` (all without one).
    fn feed_batch(
        &self,
        items: &[ChangeFeedItem<Value>],
        limit: Option<i64>,
        planned: &Planned,
        schema: &SchemaRef,
        page: usize,
    ) -> Result<RecordBatch> {
        let malformed = |message: String| Error::MalformedPage {
            server: self.config.server.clone(),
            page,
            message,
        };
        let mut docs = Vec::with_capacity(items.len());
        let mut tags = Vec::with_capacity(items.len());
        for item in items {
            let (operation, lsn, doc) =
                change(item, self.partition_key.as_deref()).map_err(malformed)?;
            if limit.is_some_and(|l| lsn > l) {
                continue;
            }
            docs.push(doc);
            tags.push((operation, lsn));
        }
        self.convert(&docs, planned, schema, Some(&tags))
            .map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: Value) -> ChangeFeedItem<Value> {
        serde_json::from_value(v).unwrap()
    }

    fn token(ranges: &[(&str, &str, &str)]) -> String {
        let tokens: Vec<Value> = ranges
            .iter()
            .map(|(min, max, etag)| {
                json!({"min_epk": min, "max_epk": max, "server_continuation": etag})
            })
            .collect();
        let state = json!({"op": "ChangeFeed", "rid": "abc=", "cfm": true,
            "root": {"kind": "unordered_merge", "active_tokens": tokens, "start_from": "Now"}});
        format!(
            "c1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(state.to_string())
        )
    }

    #[test]
    fn feed_pages_become_rows_with_operation_and_lsn() {
        let page: Value = json!({"_rid": "x", "_count": 3, "Documents": [
            {"current": {"id": "a1", "deviceId": "d1", "v": 1, "_lsn": 5},
             "metadata": {"operationType": "create", "lsn": 5, "crts": 1700000000}},
            {"current": {"id": "a1", "deviceId": "d1", "v": 2},
             "previous": {"id": "a1", "deviceId": "d1", "v": 1},
             "metadata": {"operationType": "replace", "lsn": 7, "previousImageLSN": 5}},
            {"current": {}, "metadata": {"operationType": "delete", "lsn": 9, "id": "a1",
             "partitionKey": {"deviceId": "d1"}}},
        ]});
        let rows: Vec<_> = page["Documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| change(&item(d.clone()), Some("/deviceId")).unwrap())
            .collect();
        assert_eq!((rows[0].0, rows[0].1), ("I", 5));
        assert_eq!(rows[0].2["v"], json!(1));
        assert_eq!((rows[1].0, rows[1].1), ("U", 7));
        assert_eq!(rows[1].2["v"], json!(2));
        assert_eq!((rows[2].0, rows[2].1), ("D", 9));
        assert_eq!(rows[2].2, json!({"id": "a1", "deviceId": "d1"}));
    }

    #[test]
    fn deletes_keep_the_previous_image_and_take_keys_in_every_shape() {
        let with_previous = item(
            json!({"current": {}, "previous": {"id": "a", "deviceId": "d2", "v": 3},
            "metadata": {"operationType": "delete", "lsn": 4, "id": "a", "partitionKey": ["d2"]}}),
        );
        let (op, _, doc) = change(&with_previous, Some("/deviceId")).unwrap();
        assert_eq!(
            (op, doc),
            ("D", json!({"id": "a", "deviceId": "d2", "v": 3}))
        );
        let array_key = item(
            json!({"metadata": {"operationType": "delete", "lsn": 4, "id": "b",
            "partitionKey": ["d3"]}}),
        );
        assert_eq!(
            change(&array_key, Some("/device/id")).unwrap().2,
            json!({"id": "b", "device": {"id": "d3"}})
        );
        let no_id = item(json!({"metadata": {"operationType": "delete", "lsn": 4}}));
        assert!(change(&no_id, None).unwrap_err().contains("no document id"));
        let no_metadata = item(json!({"current": {"id": "a"}}));
        assert!(change(&no_metadata, None).unwrap_err().contains("metadata"));
        let unknown = item(json!({"current": {"id": "a"},
            "metadata": {"operationType": "truncate", "lsn": 1}}));
        assert!(change(&unknown, None).is_err());
    }

    #[test]
    fn marks_hold_a_continuation_per_range_and_bound_reads() {
        let upto = positions(&token(&[("", "7F", "\"12\""), ("7F", "FF", "\"30\"")])).unwrap();
        assert_eq!(upto.len(), 2);
        assert_eq!(bound(&upto, "", "7F"), Some(12));
        // After a split, the children read up to their parent's LSN.
        assert_eq!(bound(&upto, "7F", "BF"), Some(30));
        // After a merge, the merged range reads up to the highest of its parts.
        assert_eq!(bound(&upto, "", "FF"), Some(30));
        let before = positions(&token(&[("", "7F", "\"10\""), ("7F", "FF", "\"30\"")])).unwrap();
        let now = positions(&token(&[("", "7F", "\"12\""), ("7F", "FF", "\"30\"")])).unwrap();
        assert_eq!(served(&before, &now).map(|p| p.min.as_str()), Some(""));
        assert!(caught_up(&now, &upto));
        assert!(!caught_up(&before, &upto));
        assert_eq!(positions("c1.not base64"), None);
        assert_eq!(positions("42"), None);
        assert!(is_token(&token(&[])) && !is_token("") && !is_token("17"));
        assert_eq!(lsn_of("\"17\""), Some(17));
        assert_eq!(lsn_of("W/\"17\""), Some(17));
        assert_eq!(lsn_of("{\"Start\":1}"), None);
    }
}
