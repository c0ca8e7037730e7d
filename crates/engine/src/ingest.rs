//! Pushed rows (the HTTP ingest door): appends that carry the idempotency keys of the requests
//! they answer in the same Delta commit, so that "was this batch written?" has a durable,
//! atomic answer that survives a crash between the commit and the acknowledgement.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use medlake_lake::{Appender, CommitOptions, TableName};
use serde_json::{Value, json};
use tracing::debug;

use crate::{Engine, Error, Result};

/// The key of the ingest record in a commit's `commitInfo`.
pub const INGEST_METADATA_KEY: &str = "medlake_ingest";

/// One request's idempotency key as an ingest commit records it: the key, and (since the
/// integrity check) the SHA-256 of the request's raw body and the name of the token that sent
/// it, so that the key reused with another body or by another token can be refused instead of
/// being taken for a retry. Commits written before carry only the key: their `body_sha256` and
/// `token` are `None` ("unknown"), and such a key matches any body and token, as it always did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestKey {
    pub key: String,
    /// Lowercase hex SHA-256 of the body as received (before any decompression).
    pub body_sha256: Option<String>,
    /// The name of the token that sent it (never the secret); `None` without authentication.
    pub token: Option<String>,
}

impl IngestKey {
    /// A key without body hash or token (what commits before the integrity check hold).
    pub fn bare(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// Whether `other` (the same key, sent again) is provably another request: a different
    /// body or a different token, where both sides know theirs. Unknown never conflicts.
    pub fn conflicts_with(&self, other: &IngestKey) -> bool {
        let differ =
            |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
        differ(&self.body_sha256, &other.body_sha256) || differ(&self.token, &other.token)
    }
}

/// What an ingest commit wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub rows: u64,
    pub version: u64,
}

impl Engine {
    /// The Delta table `name` (`schema.table`) rows can be pushed into, and its schema now.
    /// Materialized views, external tables and the system schema are refused.
    pub async fn ingest_target(&self, name: &str) -> Result<(TableName, SchemaRef)> {
        let table = Self::ingest_name(name)?;
        let warehouse = self.warehouse();
        if warehouse.external(&table).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: table.to_string(),
                is: "an external table",
                expected: "a Delta table",
            }
            .into());
        }
        if warehouse.table_exists(&table).await? && self.views().view(&table).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: table.to_string(),
                is: "a materialized view",
                expected: "a table (its rows come from REFRESH MATERIALIZED VIEW)",
            }
            .into());
        }
        let (provider, _) = warehouse.table_provider(&table, None).await?;
        Ok((table, provider.schema()))
    }

    /// The table `name` (`schema.table`) names as an ingest target, without looking at the
    /// warehouse; the system schema is refused.
    pub fn ingest_name(name: &str) -> Result<TableName> {
        let parts: Vec<&str> = name.split('.').collect();
        let table = match parts.as_slice() {
            [schema, table] => TableName::new(schema.to_lowercase(), table.to_lowercase())?,
            _ => {
                return Err(Error::InvalidValue {
                    what: "ingest target".into(),
                    reason: format!("'{name}' is not schema.table"),
                });
            }
        };
        if table.schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: format!("the system schema is read-only (ingest into {table})"),
            });
        }
        Ok(table)
    }

    /// Opens `table` for one writer: the table at its newest version, and the idempotency
    /// keys recorded by its newest `window` commits. With `create`, a missing table is fine
    /// (the first [`Self::ingest_append`] creates it); without, it is `TableNotFound`.
    pub async fn ingest_open(
        &self,
        table: &TableName,
        window: usize,
        create: bool,
    ) -> Result<IngestTable> {
        let mut log = IngestTable {
            name: table.clone(),
            appender: None,
            keys: HashMap::new(),
            commits: VecDeque::new(),
            prints: Fingerprints::new(),
            tokens: HashSet::new(),
            window: window.max(1),
            create,
        };
        self.ingest_load(&mut log).await?;
        Ok(log)
    }

    /// (Re)reads `log` from scratch: the newest version, and the keys of the newest `window`
    /// commits up to it.
    async fn ingest_load(&self, log: &mut IngestTable) -> Result<()> {
        log.appender = None;
        log.keys.clear();
        log.commits.clear();
        let warehouse = self.warehouse();
        let appender = match warehouse.open_appender(&log.name).await {
            Ok(appender) => appender,
            Err(medlake_lake::Error::TableNotFound { .. }) if log.create => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Commits after the opened version are read by the next refresh.
        let newest = appender.version();
        let versions = warehouse.versions(&log.name).await?;
        let recent: Vec<u64> = versions
            .into_iter()
            .filter(|v| *v <= newest)
            .rev()
            .take(log.window)
            .collect();
        for version in recent.into_iter().rev() {
            let keys = self.ingest_keys_of(&log.name, version).await?;
            log.remember(version, keys);
        }
        log.appender = Some(appender);
        Ok(())
    }

    /// The idempotency keys one commit records (none if its log entry is gone, cleaned up
    /// after a checkpoint), with their body hashes and tokens where the commit has them.
    async fn ingest_keys_of(&self, table: &TableName, version: u64) -> Result<Vec<IngestKey>> {
        let Some(actions) = self.warehouse().commit_actions(table, version).await? else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
        for action in actions {
            if let Some(ingest) = action
                .get("commitInfo")
                .and_then(|info| info.get(INGEST_METADATA_KEY))
            {
                keys.extend(recorded_keys(ingest));
            }
        }
        Ok(keys)
    }

    /// Brings `log` up to the table's newest commit (by anyone), reading only the log entries
    /// after the version it knows. Returns true when the table under that name turned out to
    /// be another one (dropped, perhaps created again) and was read from scratch: rows checked
    /// against the old one's schema must be checked again.
    pub async fn ingest_refresh(&self, log: &mut IngestTable) -> Result<bool> {
        let read = match log.appender.as_mut() {
            Some(appender) => self.warehouse().refresh_appender(appender).await?,
            None if !log.create => None,
            // No table yet: it is there once someone created it.
            None if !self.warehouse().table_exists(&log.name).await? => return Ok(false),
            None => {
                self.ingest_load(log).await?;
                return Ok(false);
            }
        };
        let Some(read) = read else {
            debug!(table = %log.name, "ingest table replaced; reading it again");
            self.ingest_load(log).await?;
            return Ok(true);
        };
        for version in read {
            let keys = self.ingest_keys_of(&log.name, version).await?;
            log.remember(version, keys);
        }
        Ok(false)
    }

    /// Appends `batches` in one commit that records `keys` (the idempotency keys of the
    /// requests answered), directly on top of the version `log` knows; schema enforcement is
    /// INSERT's (a batch that does not fit writes nothing). `Ok(None)` when someone committed
    /// since (or the table was dropped): nothing was committed; [`Self::ingest_refresh`], drop
    /// the requests whose keys are now known, and try again. A table opened with `create`
    /// and still missing is created by the commit. The commit is recorded in `system.audit`
    /// (sent by `senders`, the tokens' names) before this returns.
    pub async fn ingest_append(
        &self,
        log: &mut IngestTable,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        keys: &[IngestKey],
        senders: &[String],
        door: medlake_audit::Door,
    ) -> Result<Option<Appended>> {
        let appended = self
            .ingest_append_unaudited(log, schema, batches, keys)
            .await;
        if let Ok(Some(done)) = &appended {
            self.audit_ingest(&log.name, senders, done.rows, door)
                .await?;
        }
        appended
    }

    /// Records an ingest commit in `system.audit` before the door acknowledges it: one event
    /// per commit, naming the senders (tokens, MLLP senders) of its requests, never secrets.
    async fn audit_ingest(
        &self,
        table: &TableName,
        senders: &[String],
        rows: u64,
        door: medlake_audit::Door,
    ) -> Result<()> {
        let user = if senders.is_empty() {
            "ingest".to_string()
        } else {
            senders.join(",")
        };
        let mut event = medlake_audit::Event::of(
            user,
            door,
            medlake_audit::Statement::normalize(&format!("INGEST INTO {table}")),
        );
        event.kind = "INGEST".into();
        event.objects_written = vec![table.to_string()];
        event.rows = Some(rows);
        self.shared.audit.record_write(event).await?;
        Ok(())
    }

    async fn ingest_append_unaudited(
        &self,
        log: &mut IngestTable,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        keys: &[IngestKey],
    ) -> Result<Option<Appended>> {
        self.shared.audit.ensure_available()?;
        let started = std::time::Instant::now();
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let provider = MemTable::try_new(schema, vec![batches])?;
        let plan: LogicalPlan =
            LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(provider)), None)?
                .build()?;
        let options = CommitOptions {
            metadata: vec![(INGEST_METADATA_KEY.to_string(), ingest_record(keys))],
            ..CommitOptions::default()
        };
        let state = Arc::new(self.local_session().ctx.state());
        let warehouse = self.warehouse();
        debug!(table = %log.name, prepare_us = started.elapsed().as_micros() as u64, "ingest append");
        let version = match log.appender.as_mut() {
            Some(appender) => {
                let Some(version) = warehouse.append_to(appender, plan, state, &options).await?
                else {
                    return Ok(None);
                };
                version
            }
            None if log.create => {
                let Some(created) = warehouse
                    .create_table_as_with(&log.name, plan, state, true, &options)
                    .await?
                else {
                    // Someone else created it first.
                    return Ok(None);
                };
                // Read from scratch: whatever was committed right after the creation too.
                self.ingest_load(log).await?;
                return Ok(Some(Appended {
                    rows,
                    version: created.version,
                }));
            }
            None => {
                return Err(medlake_lake::Error::TableNotFound {
                    schema: log.name.schema.clone(),
                    table: log.name.table.clone(),
                }
                .into());
            }
        };
        log.remember(version, keys.to_vec());
        Ok(Some(Appended { rows, version }))
    }
}

/// The `commitInfo` record of an ingest commit: `keys` (every key, as commits before the
/// integrity check wrote them, so older readers still find them) and `requests` (key → its
/// `sha256` and `token`, where known).
fn ingest_record(keys: &[IngestKey]) -> Value {
    let mut requests = serde_json::Map::new();
    for k in keys {
        let mut entry = serde_json::Map::new();
        if let Some(sha) = &k.body_sha256 {
            entry.insert("sha256".into(), json!(sha));
        }
        if let Some(token) = &k.token {
            entry.insert("token".into(), json!(token));
        }
        if !entry.is_empty() {
            requests.insert(k.key.clone(), Value::Object(entry));
        }
    }
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    if requests.is_empty() {
        json!({ "keys": names })
    } else {
        json!({ "keys": names, "requests": requests })
    }
}

/// The keys an ingest record holds (see [`ingest_record`]); a key without a `requests` entry
/// (an older commit) has neither hash nor token.
fn recorded_keys(ingest: &Value) -> Vec<IngestKey> {
    let requests = ingest.get("requests").and_then(Value::as_object);
    let field = |key: &str, name: &str| {
        requests
            .and_then(|r| r.get(key))
            .and_then(|entry| entry.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ingest
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|key| IngestKey {
            key: key.to_string(),
            body_sha256: field(key, "sha256"),
            token: field(key, "token"),
        })
        .collect()
}

/// One table's ingest state as its writer keeps it between commits: the table held open at
/// the newest version the writer knows, and the idempotency keys of its newest `window`
/// commits (older ones are forgotten, so memory stays bounded).
///
/// A busy door's window holds tens of thousands of keys (10,000 commits of several HL7
/// messages each), so each is kept small: its 128-bit [`Fingerprints`] instead of its text,
/// the body's SHA-256 as 32 bytes, the token's name shared (~130 bytes a key instead of
/// ~500 with three copies of the text and the hash in hex; in the soak the window was one of
/// the few things that grew through the hour).
#[derive(Debug)]
pub struct IngestTable {
    name: TableName,
    /// `None` while a table opened with `create` does not exist.
    appender: Option<Appender>,
    /// Key's fingerprint → the version that recorded it, and what it recorded with it.
    keys: HashMap<u128, Remembered>,
    /// The remembered commits that recorded keys (their fingerprints), oldest first.
    commits: VecDeque<(u64, Vec<u128>)>,
    prints: Fingerprints,
    /// The token names seen, each kept once.
    tokens: HashSet<Arc<str>>,
    window: usize,
    create: bool,
}

/// A key's fingerprint: two SipHash-1-3 of the key under the process's random keys, 128 bits.
/// Two of n remembered keys share one with probability ~n²/2¹²⁹ (10⁻²⁹ for 10⁵ keys), and
/// the random keys keep a sender from choosing keys that collide.
#[derive(Debug)]
struct Fingerprints([RandomState; 2]);

impl Fingerprints {
    fn new() -> Self {
        Self([RandomState::new(), RandomState::new()])
    }

    fn of(&self, key: &str) -> u128 {
        let [high, low] = &self.0;
        (u128::from(high.hash_one(key)) << 64) | u128::from(low.hash_one(key))
    }
}

/// What a remembered commit recorded of one key.
#[derive(Debug)]
struct Remembered {
    version: u64,
    body_sha256: Option<BodyHash>,
    token: Option<Arc<str>>,
}

/// A body's SHA-256 as a commit recorded it: 32 bytes when it is 64 lowercase hex digits
/// (what medlake writes), the text as it was otherwise.
#[derive(Debug, PartialEq, Eq)]
enum BodyHash {
    Sha256([u8; 32]),
    Text(Box<str>),
}

impl BodyHash {
    fn new(hex: String) -> Self {
        let mut bytes = [0u8; 32];
        let digits = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let parsed = hex.len() == 64
            && hex
                .as_bytes()
                .chunks(2)
                .zip(bytes.iter_mut())
                .all(|(pair, byte)| match (digits(pair[0]), digits(pair[1])) {
                    (Some(high), Some(low)) => {
                        *byte = (high << 4) | low;
                        true
                    }
                    _ => false,
                });
        if parsed {
            BodyHash::Sha256(bytes)
        } else {
            BodyHash::Text(hex.into_boxed_str())
        }
    }

    fn to_hex(&self) -> String {
        match self {
            BodyHash::Sha256(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            BodyHash::Text(text) => text.to_string(),
        }
    }
}

impl IngestTable {
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// Whether a remembered commit holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(&self.prints.of(key))
    }

    /// The remembered record of `key` (its body hash and token where the commit has them).
    pub fn recorded(&self, key: &str) -> Option<IngestKey> {
        self.keys.get(&self.prints.of(key)).map(|r| IngestKey {
            key: key.to_string(),
            body_sha256: r.body_sha256.as_ref().map(BodyHash::to_hex),
            token: r.token.as_deref().map(str::to_string),
        })
    }

    /// The version the writer knows (`None` while the table does not exist).
    pub fn version(&self) -> Option<u64> {
        self.appender.as_ref().map(Appender::version)
    }

    fn remember(&mut self, version: u64, keys: Vec<IngestKey>) {
        if keys.is_empty() {
            return;
        }
        let mut prints = Vec::with_capacity(keys.len());
        for key in keys {
            let print = self.prints.of(&key.key);
            let token = key.token.map(|name| self.token(name));
            let remembered = Remembered {
                version,
                body_sha256: key.body_sha256.map(BodyHash::new),
                token,
            };
            self.keys.insert(print, remembered);
            prints.push(print);
        }
        self.commits.push_back((version, prints));
        while self.commits.len() > self.window {
            let Some((old, prints)) = self.commits.pop_front() else {
                break;
            };
            for print in prints {
                if self.keys.get(&print).is_some_and(|r| r.version == old) {
                    self.keys.remove(&print);
                }
            }
        }
    }

    /// The token name, shared with the keys that already carry it.
    fn token(&mut self, name: String) -> Arc<str> {
        if let Some(known) = self.tokens.get(name.as_str()) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.tokens.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_keys_compact_and_gives_them_back_whole() {
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let mut table = IngestTable {
            name: TableName::new("bronze", "t").unwrap(),
            appender: None,
            keys: HashMap::new(),
            commits: VecDeque::new(),
            prints: Fingerprints::new(),
            tokens: HashSet::new(),
            window: 2,
            create: true,
        };
        let key = |k: &str, body: &str, token: &str| IngestKey {
            key: k.into(),
            body_sha256: Some(body.into()),
            token: Some(token.into()),
        };
        table.remember(1, vec![key("a", sha, "ward-3"), key("b", "00ff", "ward-3")]);
        table.remember(2, vec![IngestKey::bare("c")]);
        // The hash as 32 bytes, an odd one as it was; one copy of the token's name.
        assert!(matches!(
            table.keys[&table.prints.of("a")].body_sha256,
            Some(BodyHash::Sha256(_))
        ));
        assert_eq!(table.tokens.len(), 1);
        assert_eq!(table.recorded("a"), Some(key("a", sha, "ward-3")));
        assert_eq!(table.recorded("b"), Some(key("b", "00ff", "ward-3")));
        assert_eq!(table.recorded("c"), Some(IngestKey::bare("c")));
        assert!(table.contains("c") && !table.contains("d"));
        assert_ne!(table.prints.of("a"), table.prints.of("b"));
        // A third commit pushes the first out of the window of two.
        table.remember(3, vec![IngestKey::bare("d")]);
        assert!(!table.contains("a") && !table.contains("b"));
        assert!(table.contains("c") && table.contains("d"));
        // A key recorded again by a newer commit stays while that commit is remembered.
        table.remember(4, vec![IngestKey::bare("c")]);
        table.remember(5, vec![IngestKey::bare("e")]);
        assert!(table.contains("c") && !table.contains("d"));
    }

    #[test]
    fn records_carry_hashes_and_tokens_and_old_records_still_read() {
        let keys = vec![
            IngestKey {
                key: "a".into(),
                body_sha256: Some("00ff".into()),
                token: Some("ward-3".into()),
            },
            IngestKey::bare("b"),
        ];
        let record = ingest_record(&keys);
        assert_eq!(record["keys"], json!(["a", "b"]));
        assert_eq!(recorded_keys(&record), keys);
        // A commit written before the integrity check: keys only, hash and token unknown.
        let old = json!({ "keys": ["a"] });
        assert_eq!(recorded_keys(&old), vec![IngestKey::bare("a")]);
        assert!(!IngestKey::bare("a").conflicts_with(&keys[0]));
        assert!(!keys[0].conflicts_with(&IngestKey::bare("a")));
        let other_body = IngestKey {
            body_sha256: Some("0000".into()),
            ..keys[0].clone()
        };
        assert!(keys[0].conflicts_with(&other_body));
        let other_token = IngestKey {
            token: Some("ward-4".into()),
            ..keys[0].clone()
        };
        assert!(keys[0].conflicts_with(&other_token));
        assert!(!keys[0].conflicts_with(&keys[0].clone()));
    }
}
