//! Runs `tests/sql/**/*.slt` over the Postgres wire with tokio-postgres, twice: with the
//! simple query protocol (text results) and with the extended protocol (Parse/Bind/Execute,
//! binary results). Each value is turned back into the text the engine runner prints
//! (Arrow's display), so one set of expected results checks the engine and both encodings.
//! Arguments filter the files by path.

mod common;

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Simple,
    Extended,
}

/// A client error as the runner sees it: the server's message (and detail), its SQLSTATE.
#[allow(non_snake_case)]
fn WireError(e: tokio_postgres::Error) -> SltError {
    match e.as_db_error() {
        Some(db) => SltError {
            message: match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            },
            sqlstate: Some(db.code().code().to_string()),
        },
        None => SltError {
            message: e.to_string(),
            sqlstate: None,
        },
    }
}

fn printing(message: String) -> SltError {
    SltError {
        message,
        sqlstate: None,
    }
}

struct Db {
    client: Client,
    protocol: Protocol,
}

fn column_type(t: &Type) -> DefaultColumnType {
    match *t {
        Type::INT2 | Type::INT4 | Type::INT8 => DefaultColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

/// A Postgres `numeric` in binary format, as its decimal text.
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "short numeric".into())
        };
        let ndigits = usize::try_from(word(0)?)?;
        let weight = i32::from(word(1)?);
        let sign = word(2)? as u16;
        let dscale = usize::try_from(word(3)?)?;
        if sign == 0xC000 {
            return Ok(Numeric("NaN".into()));
        }
        let digits: Vec<i16> = (0..ndigits)
            .map(|i| word(4 + i))
            .collect::<Result<_, _>>()?;
        // Integer part: groups 0..=weight; fraction: the groups after, to dscale digits.
        let mut int_part = String::new();
        for g in 0..=weight.max(-1) {
            let d = usize::try_from(g)
                .ok()
                .and_then(|g| digits.get(g))
                .copied()
                .unwrap_or(0);
            if int_part.is_empty() {
                if d != 0 {
                    int_part = d.to_string();
                }
            } else {
                int_part.push_str(&format!("{d:04}"));
            }
        }
        if int_part.is_empty() {
            int_part.push('0');
        }
        let mut frac = String::new();
        let mut g = weight + 1;
        while frac.len() < dscale {
            let d = if g < 0 {
                0
            } else {
                usize::try_from(g)
                    .ok()
                    .and_then(|g| digits.get(g))
                    .copied()
                    .unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            g += 1;
        }
        frac.truncate(dscale);
        let mut text = if sign == 0x4000 {
            "-".to_string()
        } else {
            String::new()
        };
        text.push_str(&int_part);
        if dscale > 0 {
            text.push('.');
            text.push_str(&frac);
        }
        Ok(Numeric(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// A timestamp as Arrow prints it.
fn naive(ts: NaiveDateTime) -> String {
    format!("{ts:?}")
}

fn utc(ts: DateTime<Utc>) -> String {
    format!("{:?}", ts.naive_utc()) + "Z"
}

fn float(v: f64) -> String {
    format!("{v:?}")
}

fn present(text: String) -> String {
    if text.is_empty() {
        "(empty)".into()
    } else {
        text
    }
}

/// A binary-format value, printed as the engine runner prints it.
fn binary_value(row: &Row, i: usize) -> Result<String, String> {
    let t = row.columns()[i].type_().clone();
    let err = |e: tokio_postgres::Error| format!("column {i} ({t}): {e}");
    macro_rules! get {
        ($ty:ty, $f:expr) => {
            row.try_get::<_, Option<$ty>>(i)
                .map_err(err)?
                .map($f)
                .unwrap_or_else(|| "NULL".to_string())
        };
    }
    Ok(match t {
        Type::BOOL => get!(bool, |v| v.to_string()),
        Type::INT2 => get!(i16, |v| v.to_string()),
        Type::INT4 => get!(i32, |v| v.to_string()),
        Type::INT8 => get!(i64, |v| v.to_string()),
        Type::FLOAT4 => get!(f32, |v| format!("{v:?}")),
        Type::FLOAT8 => get!(f64, float),
        Type::NUMERIC => get!(Numeric, |v| v.0),
        Type::TIMESTAMP => get!(NaiveDateTime, naive),
        Type::TIMESTAMPTZ => get!(DateTime<Utc>, utc),
        Type::DATE => get!(NaiveDate, |v| v.to_string()),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::CHAR => {
            get!(String, present)
        }
        Type::INT8_ARRAY => get!(Vec<Option<i64>>, |v| list(
            v.into_iter().map(|x| x.map(|x| x.to_string()))
        )),
        Type::INT4_ARRAY => get!(Vec<Option<i32>>, |v| list(
            v.into_iter().map(|x| x.map(|x| x.to_string()))
        )),
        Type::TEXT_ARRAY => get!(Vec<Option<String>>, |v| list(v.into_iter())),
        other => return Err(format!("column {i}: no printer for type {other}")),
    })
}

fn list(items: impl Iterator<Item = Option<String>>) -> String {
    let items: Vec<String> = items.map(|x| x.unwrap_or_else(|| "NULL".into())).collect();
    format!("[{}]", items.join(", "))
}

/// A text-format value, printed as the engine runner prints it.
fn text_value(t: &Type, value: Option<&str>) -> Result<String, String> {
    let Some(v) = value else {
        return Ok("NULL".into());
    };
    let bad = |e: &dyn std::fmt::Display| format!("'{v}' is not a {t}: {e}");
    Ok(match *t {
        Type::BOOL => match v {
            "t" => "true".into(),
            "f" => "false".into(),
            _ => return Err(bad(&"expected t or f")),
        },
        Type::FLOAT4 => format!("{:?}", v.parse::<f32>().map_err(|e| bad(&e))?),
        Type::FLOAT8 => float(v.parse::<f64>().map_err(|e| bad(&e))?),
        Type::TIMESTAMP => {
            naive(NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f").map_err(|e| bad(&e))?)
        }
        Type::TIMESTAMPTZ => utc(DateTime::parse_from_str(
            &format!("{v}00"),
            "%Y-%m-%d %H:%M:%S%.f%z",
        )
        .or_else(|_| DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .map_err(|e| bad(&e))?
        .with_timezone(&Utc)),
        Type::INT8_ARRAY | Type::INT4_ARRAY | Type::TEXT_ARRAY => {
            let inner = v
                .strip_prefix('{')
                .and_then(|v| v.strip_suffix('}'))
                .ok_or_else(|| bad(&"not an array"))?;
            if inner.is_empty() {
                "[]".into()
            } else {
                list(
                    inner
                        .split(',')
                        .map(|x| (x != "NULL").then(|| x.trim_matches('"').to_string())),
                )
            }
        }
        _ => present(v.to_string()),
    })
}

impl Db {
    async fn simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let messages = self.client.simple_query(sql).await.map_err(WireError)?;
        let mut described = false;
        let mut rows: Vec<Vec<Option<String>>> = Vec::new();
        let mut count = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(_) => {
                    described = true;
                    rows.clear();
                }
                SimpleQueryMessage::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        if !described {
            return Ok(DBOutput::StatementComplete(count));
        }
        // The simple protocol names the columns; their types come from describing the
        // statement (Parse + Describe, nothing runs).
        let statement = self.client.prepare(sql).await.map_err(WireError)?;
        let types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let rows = rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&types)
                    .map(|(v, t)| text_value(t, v.as_deref()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(printing)?;
        Ok(DBOutput::Rows {
            types: types.iter().map(column_type).collect(),
            rows,
        })
    }

    async fn extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let statement = self.client.prepare(sql).await.map_err(WireError)?;
        if statement.columns().is_empty() {
            let n = self
                .client
                .execute(&statement, &[])
                .await
                .map_err(WireError)?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let rows = self
            .client
            .query(&statement, &[])
            .await
            .map_err(WireError)?;
        let types = statement
            .columns()
            .iter()
            .map(|c| column_type(c.type_()))
            .collect();
        let rows = rows
            .iter()
            .map(|row| (0..row.len()).map(|i| binary_value(row, i)).collect())
            .collect::<Result<Vec<_>, _>>()
            .map_err(printing)?;
        Ok(DBOutput::Rows { types, rows })
    }
}

/// Errors keep the server's SQLSTATE for `statement error (XXXXX)`.
#[derive(Debug)]
struct SltError {
    message: String,
    sqlstate: Option<String>,
}

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SltError {}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        // A record with several statements goes through the simple protocol (the extended
        // protocol takes one statement at a time).
        let several = medlake_engine::split(sql)
            .map(|s| s.len() > 1)
            .unwrap_or(false);
        match (self.protocol, several) {
            (Protocol::Extended, false) => self.extended(sql).await,
            _ => self.simple(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "medlake-wire"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }

    fn error_sql_state(err: &SltError) -> Option<String> {
        err.sqlstate.clone()
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sql");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
    });
    assert!(!files.is_empty(), "no .slt files under {}", root.display());

    let mut failures = Vec::new();
    let mut runs = 0;
    for protocol in [Protocol::Simple, Protocol::Extended] {
        for file in &files {
            runs += 1;
            // A fresh server and warehouse per file, as the engine runner does.
            let h = common::start_empty(true, common::users()).await;
            // As the engine runner does: the files are the operator's (an admin's).
            let config = h.config(common::ADMIN.0, common::ADMIN.1);
            let tls = h.tls();
            let mut runner = sqllogictest::Runner::new(move || {
                let config = config.clone();
                let tls = tls.clone();
                async move {
                    let (client, connection) = config.connect(tls).await.map_err(|e| SltError {
                        message: e.to_string(),
                        sqlstate: None,
                    })?;
                    tokio::spawn(connection);
                    Ok(Db { client, protocol })
                }
            });
            runner.with_column_validator(sqllogictest::strict_column_validator);
            let name = format!(
                "{} ({protocol:?})",
                file.strip_prefix(&root).unwrap_or(file).display()
            );
            match runner.run_file_async(file).await {
                Ok(()) => println!("ok      {name}"),
                Err(e) => {
                    println!("FAILED  {name}");
                    failures.push(format!("{name}:\n{}", e.display(true)));
                }
            }
        }
    }
    if !failures.is_empty() {
        eprintln!("\n{}", failures.join("\n\n"));
        eprintln!(
            "\n{} of {runs} sqllogictest runs over the wire failed",
            failures.len()
        );
        std::process::exit(1);
    }
    println!("{runs} sqllogictest runs over the wire passed (simple and extended protocols)");
}
