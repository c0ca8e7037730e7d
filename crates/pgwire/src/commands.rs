//! Statements that belong to the Postgres connection, not to the warehouse: `SET`, `SHOW`,
//! `RESET`, `DISCARD`, transaction control, `DEALLOCATE`, and `COPY ... TO STDOUT`.
//!
//! Transactions: every statement is its own atomic Delta commit, as in autocommit mode.
//! `BEGIN`/`COMMIT`/`ROLLBACK` are accepted because tools send them; a `ROLLBACK` after a
//! write inside the block warns that the write stayed.

use std::time::Duration;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use pgwire::error::PgWireResult;

use crate::connection::{Connection, KNOWN, reported_name};
use crate::error::user_error;

/// A connection-level statement.
#[derive(Clone, Debug)]
pub(crate) enum Command {
    Set {
        name: String,
        values: Vec<String>,
    },
    /// `SET` of a DataFusion option: the engine runs it.
    EngineSet,
    Show(String),
    ShowAll,
    Reset(String),
    ResetAll,
    DiscardAll,
    Begin,
    Commit,
    Rollback,
    Savepoint(&'static str),
    Deallocate(Option<String>),
    /// Accepted and ignored (`LISTEN`, `UNLISTEN`, `CLOSE ALL`, `CHECKPOINT`).
    Ignored(&'static str),
    Copy(CopyOut),
}

/// `COPY (query) TO STDOUT` / `COPY table TO STDOUT`, with its format options.
#[derive(Clone, Debug)]
pub(crate) struct CopyOut {
    pub query: String,
    pub csv: bool,
    pub header: bool,
    pub delimiter: char,
    pub null: String,
}

/// The words and strings of a statement, in order (`'x'` → `x`).
fn words(text: &str) -> Vec<(String, bool)> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some((w.value, w.quote_style.is_some())),
            Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some((s, true)),
            Token::Number(n, _) => Some((n, true)),
            Token::Eq => Some(("=".into(), false)),
            Token::Comma => Some((",".into(), false)),
            Token::Minus => Some(("-".into(), false)),
            Token::Period => Some((".".into(), false)),
            Token::LParen => Some(("(".into(), false)),
            Token::RParen => Some((")".into(), false)),
            Token::Mul => Some(("*".into(), false)),
            _ => None,
        })
        .collect()
}

fn lower(word: &(String, bool)) -> String {
    if word.1 {
        word.0.clone()
    } else {
        word.0.to_ascii_lowercase()
    }
}

/// Recognizes a connection-level statement.
pub(crate) fn parse(text: &str) -> PgWireResult<Option<Command>> {
    let trimmed = text.trim_start();
    let first = trimmed
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let command = match first.as_str() {
        "set" => Some(parse_set(text)?),
        "show" => {
            let w = words(text);
            let names: Vec<String> = w.iter().skip(1).map(lower).collect();
            match names.as_slice() {
                [all] if all == "all" => Some(Command::ShowAll),
                [t, i, l] if t == "transaction" && i == "isolation" && l == "level" => {
                    Some(Command::Show("transaction_isolation".into()))
                }
                [] => return Err(user_error("42601", "SHOW needs a setting name")),
                // `SHOW TABLES`, `SHOW COLUMNS ...`: DataFusion's.
                [t] if t == "tables" => None,
                _ if names.iter().any(|n| n == "from" || n == "columns") => None,
                _ => Some(Command::Show(names.concat())),
            }
        }
        "reset" => {
            let w = words(text);
            let names: Vec<String> = w.iter().skip(1).map(lower).collect();
            match names.as_slice() {
                [all] if all == "all" => Some(Command::ResetAll),
                [] => return Err(user_error("42601", "RESET needs a setting name")),
                _ => Some(Command::Reset(names.concat())),
            }
        }
        "discard" => {
            let w = words(text);
            match w.get(1).map(lower).as_deref() {
                Some("all") => Some(Command::DiscardAll),
                Some("plans" | "sequences" | "temp" | "temporary") => {
                    Some(Command::Ignored("DISCARD"))
                }
                _ => {
                    return Err(user_error(
                        "42601",
                        "DISCARD takes ALL, PLANS, SEQUENCES or TEMP",
                    ));
                }
            }
        }
        "begin" => Some(Command::Begin),
        "start" => {
            let w = words(text);
            match w.get(1).map(lower).as_deref() {
                Some("transaction") => Some(Command::Begin),
                _ => None,
            }
        }
        "commit" | "end" => Some(Command::Commit),
        "rollback" | "abort" => {
            let w = words(text);
            if w.iter().any(|x| lower(x) == "to") {
                Some(Command::Savepoint("ROLLBACK"))
            } else {
                Some(Command::Rollback)
            }
        }
        "savepoint" => Some(Command::Savepoint("SAVEPOINT")),
        "release" => Some(Command::Savepoint("RELEASE")),
        "deallocate" => {
            let w = words(text);
            let rest: Vec<String> = w
                .iter()
                .skip(1)
                .map(lower)
                .filter(|x| x != "prepare")
                .collect();
            match rest.as_slice() {
                [all] if all == "all" => Some(Command::Deallocate(None)),
                [name] => Some(Command::Deallocate(Some(name.clone()))),
                _ => return Err(user_error("42601", "DEALLOCATE needs a statement name")),
            }
        }
        "listen" => Some(Command::Ignored("LISTEN")),
        "unlisten" => Some(Command::Ignored("UNLISTEN")),
        "checkpoint" => Some(Command::Ignored("CHECKPOINT")),
        "close" => Some(Command::Ignored("CLOSE CURSOR")),
        "copy" => Some(Command::Copy(parse_copy(text)?)),
        _ => None,
    };
    Ok(command)
}

fn parse_set(text: &str) -> PgWireResult<Command> {
    let w = words(text);
    let mut i = 1;
    if matches!(w.get(i).map(lower).as_deref(), Some("session" | "local")) {
        i += 1;
    }
    // SET TIME ZONE x; SET NAMES x; SET SESSION CHARACTERISTICS AS TRANSACTION ...;
    // SET TRANSACTION ...
    match w.get(i).map(lower).as_deref() {
        Some("time") if w.get(i + 1).map(lower).as_deref() == Some("zone") => {
            let values = w[i + 2..].iter().map(|x| x.0.clone()).collect();
            return Ok(Command::Set {
                name: "timezone".into(),
                values,
            });
        }
        Some("names") => {
            let values = w[i + 1..].iter().map(|x| x.0.clone()).collect();
            return Ok(Command::Set {
                name: "client_encoding".into(),
                values,
            });
        }
        Some("transaction" | "characteristics") => return Ok(Command::Ignored("SET")),
        Some("session") if w.get(i + 1).map(lower).as_deref() == Some("characteristics") => {
            return Ok(Command::Ignored("SET"));
        }
        _ => {}
    }
    // name [. name] {TO | =} value [, value ...]
    let mut name = String::new();
    while let Some(word) = w.get(i) {
        let l = lower(word);
        if l == "to" || l == "=" {
            break;
        }
        name.push_str(&l);
        i += 1;
    }
    if name.is_empty() || i >= w.len() {
        return Err(user_error(
            "42601",
            format!("cannot parse '{}'", text.trim()),
        ));
    }
    if name.starts_with("datafusion.") {
        return Ok(Command::EngineSet);
    }
    let values: Vec<String> = w[i + 1..]
        .iter()
        .filter(|x| x.0 != ",")
        .map(|x| x.0.clone())
        .collect();
    Ok(Command::Set { name, values })
}

fn parse_copy(text: &str) -> PgWireResult<CopyOut> {
    let body = text.trim_start()[4..].trim_start();
    let (query, rest) = if body.starts_with('(') {
        // The query is everything up to the parenthesis that closes the first one.
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, body)
            .tokenize_with_location()
            .map_err(|e| user_error("42601", e.to_string()))?;
        let mut depth = 0i32;
        let mut end = None;
        for t in &tokens {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(t.span.start);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| user_error("42601", "COPY: unbalanced parenthesis"))?;
        let offset = offset_of(body, end.line, end.column);
        (body[1..offset].to_string(), body[offset + 1..].to_string())
    } else {
        // COPY table [(columns)] TO STDOUT
        let w = words(body);
        let to = w
            .iter()
            .position(|x| lower(x) == "to" || lower(x) == "from")
            .ok_or_else(|| user_error("42601", "COPY needs TO STDOUT"))?;
        let mut table = String::new();
        let mut columns = Vec::new();
        let mut in_columns = false;
        for x in &w[..to] {
            match x.0.as_str() {
                "(" => in_columns = true,
                ")" => in_columns = false,
                "," => {}
                _ if in_columns => columns.push(quote_ident(&x.0)),
                "." => table.push('.'),
                _ => table.push_str(&quote_ident(&x.0)),
            }
        }
        let select = if columns.is_empty() {
            "*".to_string()
        } else {
            columns.join(", ")
        };
        let direction_at = body
            .to_ascii_lowercase()
            .find(&format!(" {} ", lower(&w[to])))
            .unwrap_or(0);
        (
            format!("SELECT {select} FROM {table}"),
            body[direction_at..].to_string(),
        )
    };
    let w = words(&rest);
    match (
        w.first().map(lower).as_deref(),
        w.get(1).map(lower).as_deref(),
    ) {
        (Some("to"), Some("stdout")) => {}
        (Some("from"), _) => {
            return Err(user_error(
                "0A000",
                "COPY FROM is not supported: load rows with INSERT, Flight SQL ingest or the HTTP ingest API",
            ));
        }
        (Some("to"), _) => {
            return Err(user_error(
                "0A000",
                "COPY TO a server file is not supported: use COPY ... TO STDOUT (psql \\copy)",
            ));
        }
        _ => return Err(user_error("42601", "COPY needs TO STDOUT")),
    }
    let mut copy = CopyOut {
        query,
        csv: false,
        header: false,
        delimiter: '\t',
        null: "\\N".into(),
    };
    let mut delimiter_set = false;
    let mut null_set = false;
    let options: Vec<String> = w[2..].iter().map(lower).collect();
    let raw: Vec<String> = w[2..].iter().map(|x| x.0.clone()).collect();
    let mut i = 0;
    while i < options.len() {
        match options[i].as_str() {
            "with" | "(" | ")" | "," => {}
            "format" => {
                i += 1;
                match options.get(i).map(String::as_str) {
                    Some("csv") => copy.csv = true,
                    Some("text") => copy.csv = false,
                    Some(other) => {
                        return Err(user_error(
                            "0A000",
                            format!("COPY format \"{other}\" is not supported (csv, text)"),
                        ));
                    }
                    None => return Err(user_error("42601", "COPY FORMAT needs a value")),
                }
            }
            "csv" => copy.csv = true,
            "binary" => {
                return Err(user_error(
                    "0A000",
                    "COPY binary format is not supported (csv, text)",
                ));
            }
            "header" => {
                copy.header = !matches!(
                    options.get(i + 1).map(String::as_str),
                    Some("false" | "off" | "0")
                );
                if matches!(
                    options.get(i + 1).map(String::as_str),
                    Some("true" | "on" | "1" | "false" | "off" | "0")
                ) {
                    i += 1;
                }
            }
            "delimiter" => {
                i += 1;
                let d = raw.get(i).cloned().unwrap_or_default();
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => copy.delimiter = c,
                    _ => {
                        return Err(user_error(
                            "22023",
                            "COPY delimiter must be a single one-byte character",
                        ));
                    }
                }
                delimiter_set = true;
            }
            "null" => {
                i += 1;
                copy.null = raw.get(i).cloned().unwrap_or_default();
                null_set = true;
            }
            "encoding" => {
                i += 1;
            }
            "as" => {}
            other => {
                return Err(user_error(
                    "42601",
                    format!("COPY option \"{other}\" is not supported"),
                ));
            }
        }
        i += 1;
    }
    if copy.csv {
        if !delimiter_set {
            copy.delimiter = ',';
        }
        if !null_set {
            copy.null = String::new();
        }
    }
    Ok(copy)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn offset_of(text: &str, line: u64, column: u64) -> usize {
    let mut current = 1u64;
    let mut start = 0usize;
    for (i, c) in text.char_indices() {
        if current == line {
            break;
        }
        if c == '\n' {
            current += 1;
            start = i + 1;
        }
    }
    text[start..]
        .char_indices()
        .nth(usize::try_from(column.saturating_sub(1)).unwrap_or(0))
        .map_or(text.len(), |(i, _)| start + i)
}

/// Applies `SET name = values`. Returns the ParameterStatus to report, if any.
pub(crate) fn set(
    connection: &Connection,
    name: &str,
    values: &[String],
) -> PgWireResult<Option<(&'static str, String)>> {
    let value = values.join(", ");
    let is_default = values.len() == 1 && values[0].eq_ignore_ascii_case("default");
    if !KNOWN.iter().any(|(k, _)| *k == name) {
        return Err(user_error(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        ));
    }
    if is_default {
        reset(connection, name)?;
        return Ok(reported_name(name).map(|n| (n, default_of(name))));
    }
    match name {
        "search_path" => {
            let schema = values
                .iter()
                .map(|v| v.trim())
                .find(|v| !v.is_empty() && *v != "$user" && *v != "pg_catalog")
                .unwrap_or("public");
            connection
                .session
                .set_default_schema(schema)
                .map_err(|e| crate::error::engine_error(&e))?;
        }
        "statement_timeout" => {
            let timeout = parse_duration(&value)?;
            connection.update_settings(|s| s.statement_timeout = timeout);
            let shown = show_duration(timeout);
            connection.update_settings(|s| {
                s.values.insert(name.to_string(), shown);
            });
            return Ok(None);
        }
        "client_encoding" => {
            let v = value.to_ascii_uppercase().replace('-', "");
            if v != "UTF8" && v != "UNICODE" {
                return Err(user_error(
                    "0A000",
                    format!("client_encoding \"{value}\" is not supported; medlake speaks UTF8"),
                ));
            }
        }
        "standard_conforming_strings"
            if !matches!(value.to_ascii_lowercase().as_str(), "on" | "true" | "1") =>
        {
            return Err(user_error(
                "0A000",
                "standard_conforming_strings cannot be turned off",
            ));
        }
        "server_version"
        | "server_version_num"
        | "server_encoding"
        | "integer_datetimes"
        | "is_superuser"
        | "max_identifier_length" => {
            return Err(user_error(
                "55P02",
                format!("parameter \"{name}\" cannot be changed"),
            ));
        }
        _ => {}
    }
    let stored = match name {
        "client_encoding" => "UTF8".to_string(),
        _ => value.clone(),
    };
    connection.update_settings(|s| {
        s.values.insert(name.to_string(), stored.clone());
    });
    Ok(reported_name(name).map(|n| (n, stored)))
}

fn default_of(name: &str) -> String {
    KNOWN
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| (*v).to_string())
        .unwrap_or_default()
}

/// `RESET name`.
pub(crate) fn reset(connection: &Connection, name: &str) -> PgWireResult<()> {
    if !KNOWN.iter().any(|(k, _)| *k == name) {
        return Err(user_error(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        ));
    }
    let (default, schema) = connection.defaults();
    if name == "search_path" {
        connection
            .session
            .set_default_schema(&schema)
            .map_err(|e| crate::error::engine_error(&e))?;
    }
    connection.update_settings(|s| {
        if name == "statement_timeout" {
            s.statement_timeout = default.statement_timeout;
        }
        if let Some(v) = default.values.get(name) {
            s.values.insert(name.to_string(), v.clone());
        }
    });
    Ok(())
}

/// `RESET ALL` (and `DISCARD ALL`).
pub(crate) fn reset_all(connection: &Connection) -> PgWireResult<()> {
    for (name, _) in KNOWN {
        reset(connection, name)?;
    }
    Ok(())
}

/// The value `SHOW name` answers.
pub(crate) fn show(connection: &Connection, name: &str) -> PgWireResult<String> {
    if name == "search_path" {
        return Ok(format!(
            "\"$user\", {}",
            connection.session.default_schema()
        ));
    }
    connection
        .settings()
        .values
        .get(name)
        .cloned()
        .ok_or_else(|| {
            user_error(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })
}

/// A duration as Postgres shows it: `0`, `250ms`, `5s`, `2min`, `1h`.
fn show_duration(timeout: Option<Duration>) -> String {
    let Some(timeout) = timeout else {
        return "0".into();
    };
    let ms = timeout.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Postgres durations: `5000` (ms), `'5s'`, `'2min'`, `'1h'`, `'250ms'`; 0 turns it off.
fn parse_duration(value: &str) -> PgWireResult<Option<Duration>> {
    let v = value.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        user_error(
            "22023",
            format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
        )
    })?;
    let millis = match unit.trim() {
        "" | "ms" => number,
        "s" => number * 1000.0,
        "min" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        "d" => number * 86_400_000.0,
        "us" => number / 1000.0,
        _ => {
            return Err(user_error(
                "22023",
                format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
            ));
        }
    };
    Ok((millis > 0.0).then(|| Duration::from_secs_f64(millis / 1000.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_forms() {
        let c = parse_copy("COPY (SELECT 1, 'a') TO STDOUT WITH (FORMAT csv, HEADER)").unwrap();
        assert_eq!(c.query, "SELECT 1, 'a'");
        assert!(c.csv && c.header);
        assert_eq!(c.delimiter, ',');
        let c = parse_copy("COPY ( select x from t ) TO STDOUT csv").unwrap();
        assert_eq!(c.query.trim(), "select x from t");
        assert!(c.csv && !c.header);
        let c = parse_copy("COPY gold.vitals (a, b) TO STDOUT").unwrap();
        assert_eq!(c.query, "SELECT \"a\", \"b\" FROM \"gold\".\"vitals\"");
        assert!(!c.csv);
        assert_eq!(c.null, "\\N");
        assert!(parse_copy("COPY t FROM STDIN").is_err());
        assert!(parse_copy("COPY (SELECT 1) TO '/etc/passwd'").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("5000").unwrap(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_duration("2s").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("0").unwrap(), None);
        assert!(parse_duration("soon").is_err());
        assert_eq!(show_duration(parse_duration("300").unwrap()), "300ms");
        assert_eq!(show_duration(parse_duration("5000").unwrap()), "5s");
        assert_eq!(show_duration(parse_duration("2min").unwrap()), "2min");
        assert_eq!(show_duration(None), "0");
    }

    #[test]
    fn set_forms() {
        match parse_set("SET search_path TO bronze, public").unwrap() {
            Command::Set { name, values } => {
                assert_eq!(name, "search_path");
                assert_eq!(values, vec!["bronze", "public"]);
            }
            other => panic!("{other:?}"),
        }
        match parse_set("SET TIME ZONE 'Europe/Paris'").unwrap() {
            Command::Set { name, values } => {
                assert_eq!(name, "timezone");
                assert_eq!(values, vec!["Europe/Paris"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_set("SET datafusion.execution.batch_size = 1024").unwrap(),
            Command::EngineSet
        ));
    }
}
