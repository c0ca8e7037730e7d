//! Statements that belong to the Postgres connection, not to the warehouse: `SET`, `SHOW`,
//! `RESET`, `DISCARD`, transaction control, `DEALLOCATE`, and `COPY ... TO STDOUT`.
//!
//! Transactions: every statement is its own atomic Delta commit, as in autocommit mode.
//! `BEGIN`/`COMMIT`/`ROLLBACK` are accepted because tools send them; a `ROLLBACK` after a
//! write inside the block warns that the write stayed.

use medlake_common::Code;
use std::time::Duration;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use pgwire::error::{PgWireError, PgWireResult};

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
    /// Accepted and ignored (`CLOSE ALL`, `CHECKPOINT`).
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
                [] => return Err(user_error(Code::SyntaxError, "SHOW needs a setting name")),
                // `SHOW TABLES`, `SHOW COLUMNS ...`: DataFusion's; `SHOW GRANTS ...`: medlake's.
                [t] if t == "tables" => None,
                [first, ..] if first == "grants" => None,
                _ if names.iter().any(|n| n == "from" || n == "columns") => None,
                _ => Some(Command::Show(names.concat())),
            }
        }
        "reset" => {
            let w = words(text);
            let names: Vec<String> = w.iter().skip(1).map(lower).collect();
            match names.as_slice() {
                [all] if all == "all" => Some(Command::ResetAll),
                [] => return Err(user_error(Code::SyntaxError, "RESET needs a setting name")),
                // medlake's own settings are the engine's (`RESET medlake.break_glass`).
                _ if names.concat().starts_with("medlake.") => None,
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
                        Code::SyntaxError,
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
                _ => {
                    return Err(user_error(
                        Code::SyntaxError,
                        "DEALLOCATE needs a statement name",
                    ));
                }
            }
        }
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
            Code::SyntaxError,
            format!("cannot parse '{}'", text.trim()),
        ));
    }
    // The engine's settings, and medlake's own (`medlake.break_glass`), checked there.
    if name.starts_with("datafusion.") || name.starts_with("medlake.") {
        return Ok(Command::EngineSet);
    }
    let values: Vec<String> = w[i + 1..]
        .iter()
        .filter(|x| x.0 != ",")
        .map(|x| x.0.clone())
        .collect();
    Ok(Command::Set { name, values })
}

/// `COPY (query) TO STDOUT [WITH] (options)` or `COPY table [(columns)] TO STDOUT ...`.
fn parse_copy(text: &str) -> PgWireResult<CopyOut> {
    let trimmed = text.trim_start();
    let body = match trimmed.get(..4) {
        Some(copy) if copy.eq_ignore_ascii_case("copy") => trimmed[4..].trim_start(),
        _ => return Err(user_error(Code::SyntaxError, "expected COPY")),
    };
    let (query, rest) = if body.starts_with('(') {
        copy_of_query(body)?
    } else {
        copy_of_table(body).ok_or_else(|| user_error(Code::SyntaxError, "COPY needs TO STDOUT"))?
    };
    let w = words(&rest);
    copy_direction(&w)?;
    copy_options(query, &w[2..])
}

/// `(query) rest`: the query between the first parenthesis and the one that closes it.
fn copy_of_query(body: &str) -> PgWireResult<(String, String)> {
    // The query is everything up to the parenthesis that closes the first one.
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, body)
        .tokenize_with_location()
        .map_err(|e| user_error(Code::SyntaxError, e.to_string()))?;
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
    let end = end.ok_or_else(|| user_error(Code::SyntaxError, "COPY: unbalanced parenthesis"))?;
    // The closing parenthesis is one byte: the query lies between it and the opening one.
    let offset = offset_of(body, end.line, end.column);
    match (body.get(1..offset), body.get(offset + 1..)) {
        (Some(query), Some(rest)) if body[offset..].starts_with(')') => {
            Ok((query.to_string(), rest.to_string()))
        }
        _ => Err(user_error(
            Code::SyntaxError,
            "COPY: unbalanced parenthesis",
        )),
    }
}

/// `table [(columns)] rest`: a SELECT of the table's columns, and what follows them.
fn copy_of_table(body: &str) -> Option<(String, String)> {
    // COPY table [(columns)] TO STDOUT
    let w = words(body);
    let to = w
        .iter()
        .position(|x| lower(x) == "to" || lower(x) == "from")?;
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
    Some((
        format!("SELECT {select} FROM {table}"),
        body[direction_at..].to_string(),
    ))
}

/// Only `TO STDOUT` is served.
fn copy_direction(w: &[(String, bool)]) -> PgWireResult<()> {
    match (
        w.first().map(lower).as_deref(),
        w.get(1).map(lower).as_deref(),
    ) {
        (Some("to"), Some("stdout")) => Ok(()),
        (Some("from"), _) => Err(user_error(
            Code::FeatureNotSupported,
            "COPY FROM is not supported: load rows with INSERT, Flight SQL ingest or the HTTP ingest API",
        )),
        (Some("to"), _) => Err(user_error(
            Code::FeatureNotSupported,
            "COPY TO a server file is not supported: use COPY ... TO STDOUT (psql \\copy)",
        )),
        _ => Err(user_error(Code::SyntaxError, "COPY needs TO STDOUT")),
    }
}

/// The options after `TO STDOUT`: format, header, delimiter, null (PostgreSQL's defaults per
/// format).
fn copy_options(query: String, w: &[(String, bool)]) -> PgWireResult<CopyOut> {
    let mut copy = CopyOut {
        query,
        csv: false,
        header: false,
        delimiter: '\t',
        null: "\\N".into(),
    };
    let mut delimiter_set = false;
    let mut null_set = false;
    let options: Vec<String> = w.iter().map(lower).collect();
    let raw: Vec<String> = w.iter().map(|x| x.0.clone()).collect();
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
                            Code::FeatureNotSupported,
                            format!("COPY format \"{other}\" is not supported (csv, text)"),
                        ));
                    }
                    None => return Err(user_error(Code::SyntaxError, "COPY FORMAT needs a value")),
                }
            }
            "csv" => copy.csv = true,
            "binary" => {
                return Err(user_error(
                    Code::FeatureNotSupported,
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
                            Code::InvalidParameterValue,
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
                    Code::SyntaxError,
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

/// A `SET` value that passed its checks, ready to apply to a connection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Setting {
    /// `SET name = DEFAULT`: what `RESET name` does.
    Default,
    /// `search_path`: the schema to use (the session checks it exists), and the text stored.
    SearchPath {
        schema: String,
        shown: String,
    },
    StatementTimeout(Option<Duration>),
    /// Any other setting: the text `SHOW` answers.
    Value(String),
}

/// Checks `SET name = values` without a connection: the name is known, the value is one the
/// setting takes, and numbers are within their bounds (22023 outside). What the startup
/// packet, `options=-c ...` and `SET` share; never panics, whatever the input.
pub(crate) fn check_setting(name: &str, values: &[String]) -> PgWireResult<Setting> {
    let value = values.join(", ");
    if !KNOWN.iter().any(|(k, _)| *k == name) {
        return Err(user_error(
            Code::UndefinedObject,
            format!("unrecognized configuration parameter \"{name}\""),
        ));
    }
    if values.len() == 1 && values[0].eq_ignore_ascii_case("default") {
        return Ok(Setting::Default);
    }
    match name {
        "search_path" => {
            let schema = values
                .iter()
                .map(|v| v.trim())
                .find(|v| !v.is_empty() && *v != "$user" && *v != "pg_catalog")
                .unwrap_or("public");
            Ok(Setting::SearchPath {
                schema: schema.to_string(),
                shown: value,
            })
        }
        "statement_timeout" => Ok(Setting::StatementTimeout(parse_duration(name, &value)?)),
        "lock_timeout" | "idle_in_transaction_session_timeout" => {
            Ok(Setting::Value(show_duration(parse_duration(name, &value)?)))
        }
        "extra_float_digits" => {
            let digits = value
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|d| (-15..=3).contains(d))
                .ok_or_else(|| {
                    user_error(
                        Code::InvalidParameterValue,
                        format!(
                            "invalid value for parameter \"extra_float_digits\": \"{value}\" (an integer from -15 to 3)"
                        ),
                    )
                })?;
            Ok(Setting::Value(digits.to_string()))
        }
        "timezone" => {
            let zone = value.trim();
            let utc = matches!(
                zone.to_ascii_uppercase().as_str(),
                "UTC" | "ETC/UTC" | "GMT" | "Z" | "LOCAL"
            );
            if !utc && zone.parse::<arrow::array::timezone::Tz>().is_err() {
                return Err(user_error(
                    Code::InvalidParameterValue,
                    format!("invalid value for parameter \"TimeZone\": \"{value}\""),
                ));
            }
            Ok(Setting::Value(if zone.eq_ignore_ascii_case("local") {
                "UTC".into()
            } else {
                zone.to_string()
            }))
        }
        // The output formats medlake writes: PostgreSQL's defaults (the text of every value is
        // PostgreSQL's own in these styles).
        "datestyle" if !value.to_ascii_uppercase().contains("ISO") => Err(unsupported_style(
            "DateStyle",
            &value,
            "ISO (ISO, MDY or ISO, DMY)",
        )),
        "intervalstyle" if !value.trim().eq_ignore_ascii_case("postgres") => {
            Err(unsupported_style("IntervalStyle", &value, "postgres"))
        }
        "bytea_output" if !value.trim().eq_ignore_ascii_case("hex") => {
            Err(unsupported_style("bytea_output", &value, "hex"))
        }
        "client_encoding" => {
            let v = value.to_ascii_uppercase().replace('-', "");
            if v != "UTF8" && v != "UNICODE" {
                return Err(user_error(
                    Code::FeatureNotSupported,
                    format!("client_encoding \"{value}\" is not supported; medlake speaks UTF8"),
                ));
            }
            Ok(Setting::Value("UTF8".into()))
        }
        "standard_conforming_strings"
            if !matches!(value.to_ascii_lowercase().as_str(), "on" | "true" | "1") =>
        {
            Err(user_error(
                Code::FeatureNotSupported,
                "standard_conforming_strings cannot be turned off",
            ))
        }
        "server_version"
        | "server_version_num"
        | "server_encoding"
        | "integer_datetimes"
        | "is_superuser"
        | "max_identifier_length" => Err(user_error(
            Code::CantChangeRuntimeParam,
            format!("parameter \"{name}\" cannot be changed"),
        )),
        _ => Ok(Setting::Value(value)),
    }
}

/// A `SET` of an output style medlake does not write (0A000).
fn unsupported_style(name: &str, value: &str, supported: &str) -> PgWireError {
    user_error(
        Code::FeatureNotSupported,
        format!("{name} \"{value}\" is not supported; medlake writes {name} {supported}"),
    )
}

/// Applies `SET name = values`. Returns the ParameterStatus to report, if any.
/// `options=-c name=value -c ...` from the startup packet.
pub(crate) fn apply_startup_options(connection: &Connection, options: &str) -> PgWireResult<()> {
    for (name, value) in crate::connection::startup_assignments(options) {
        set(connection, &name, &[value])?;
    }
    Ok(())
}

/// A setting given as a startup parameter of its own (`search_path`, `application_name`, ...).
pub(crate) fn apply_startup_setting(
    connection: &Connection,
    name: &str,
    value: &str,
) -> PgWireResult<()> {
    set(connection, &name.to_ascii_lowercase(), &[value.to_string()]).map(|_| ())
}

pub(crate) fn set(
    connection: &Connection,
    name: &str,
    values: &[String],
) -> PgWireResult<Option<(&'static str, String)>> {
    let stored = match check_setting(name, values)? {
        Setting::Default => {
            reset(connection, name)?;
            return Ok(reported_name(name).map(|n| (n, default_of(name))));
        }
        Setting::SearchPath { schema, shown } => {
            connection
                .session
                .set_default_schema(&schema)
                .map_err(|e| crate::error::engine_error(&e))?;
            shown
        }
        Setting::StatementTimeout(timeout) => {
            let shown = show_duration(timeout);
            connection.update_settings(|s| {
                s.statement_timeout = timeout;
                s.values.insert(name.to_string(), shown);
            });
            return Ok(None);
        }
        Setting::Value(value) => value,
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
            Code::UndefinedObject,
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
                Code::UndefinedObject,
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

/// The longest timeout a setting takes: PostgreSQL's `INT_MAX` milliseconds (24.8 days).
pub(crate) const MAX_TIMEOUT_MS: u64 = i32::MAX as u64;

/// Postgres durations: `5000` (ms), `'5s'`, `'2min'`, `'1h'`, `'250ms'`, `'1d'`, `'10us'`;
/// 0 turns it off. As in PostgreSQL the value is rounded to whole milliseconds and must lie
/// within 0 ..= `INT_MAX` ms; anything else (negative, NaN, infinite, too large, exponents,
/// unknown units) is 22023. Never panics.
pub(crate) fn parse_duration(name: &str, value: &str) -> PgWireResult<Option<Duration>> {
    let invalid = || {
        user_error(
            Code::InvalidParameterValue,
            format!("invalid value for parameter \"{name}\": \"{value}\""),
        )
    };
    let v = value.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    // Only ASCII digits and dots reach the float parser: no sign, exponent, `inf` or `nan`.
    if number.is_empty() {
        return Err(invalid());
    }
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        "us" => 0.001,
        _ => return Err(invalid()),
    };
    let millis = (number * scale).round();
    // `contains` is false for NaN, so this check also refuses it.
    if !(0.0..=MAX_TIMEOUT_MS as f64).contains(&millis) {
        return Err(user_error(
            Code::InvalidParameterValue,
            format!(
                "{} is outside the valid range for parameter \"{name}\" (0 .. {MAX_TIMEOUT_MS} ms)",
                value.trim()
            ),
        ));
    }
    // In 0 ..= i32::MAX after the check above: the conversion is exact.
    let millis = millis as u64;
    Ok((millis > 0).then(|| Duration::from_millis(millis)))
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: hidden, may change).
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a connection-level statement and, for `SET`, checks its value; COPY options
    /// are parsed by the first step. Returns whether it was accepted.
    pub fn statement(text: &str) -> bool {
        match super::parse(text) {
            Ok(Some(super::Command::Set { name, values })) => {
                super::check_setting(&name, &values).is_ok()
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Splits a startup packet's `options` and checks every `-c name=value` in it.
    pub fn startup_options(options: &str) -> bool {
        crate::connection::startup_assignments(options)
            .into_iter()
            .all(|(name, value)| super::check_setting(&name, &[value]).is_ok())
    }

    /// Checks one startup parameter (`name`, `value`) as the startup packet sets it.
    pub fn startup_parameter(name: &str, value: &str) -> bool {
        super::check_setting(&name.to_ascii_lowercase(), &[value.to_string()]).is_ok()
    }
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
        let parse_duration = |v: &str| parse_duration("statement_timeout", v);
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

    /// `statement_timeout` is bounded as in PostgreSQL (0 ..= INT_MAX ms): 22023 outside,
    /// never a panic (`Duration::from_secs_f64` of 1e17 hours panicked the connection task).
    #[test]
    fn huge_timeouts_are_refused_not_panics() {
        let check = |v: &str| check_setting("statement_timeout", &[v.to_string()]);
        assert_eq!(
            check("2147483647").unwrap(),
            Setting::StatementTimeout(Some(Duration::from_millis(2_147_483_647)))
        );
        assert_eq!(
            check("24d").unwrap(),
            Setting::StatementTimeout(Some(Duration::from_secs(24 * 86_400)))
        );
        assert_eq!(check("0.4").unwrap(), Setting::StatementTimeout(None));
        for v in [
            "99999999999999999h",
            "2147483648",
            "25d",
            "1e300",
            "1E300",
            "-1",
            "-0",
            "NaN",
            "nan",
            "inf",
            "infinity",
            "-inf",
            "",
            ".",
            "..",
            "1..2",
            "5 parsecs",
            "５s",
            "5 ms ms",
            &"9".repeat(400),
            &format!("{}h", "9".repeat(400)),
        ] {
            let e = check(v).unwrap_err();
            assert!(format!("{e:?}").contains("22023"), "{v:?}: {e:?}");
        }
        let e = check("99999999999999999h").unwrap_err();
        assert!(
            format!("{e:?}").contains("outside the valid range"),
            "{e:?}"
        );
        for name in ["lock_timeout", "idle_in_transaction_session_timeout"] {
            assert_eq!(
                check_setting(name, &["5s".into()]).unwrap(),
                Setting::Value("5s".into())
            );
            assert!(check_setting(name, &["1e300".into()]).is_err());
            assert!(check_setting(name, &["99999999999999999h".into()]).is_err());
        }
        assert_eq!(
            check_setting("extra_float_digits", &["3".into()]).unwrap(),
            Setting::Value("3".into())
        );
        for v in ["4", "-16", "99999999999999999999", "NaN", "1.5", ""] {
            assert!(
                check_setting("extra_float_digits", &[v.into()]).is_err(),
                "{v}"
            );
        }
        // The output styles medlake writes, and time zones it can convert to.
        for (name, good, bad) in [
            ("timezone", "Europe/Berlin", "Mars/Olympus_Mons"),
            ("timezone", "+05:30", "\u{0}\u{ffff}"),
            ("datestyle", "ISO, DMY", "German"),
            ("intervalstyle", "postgres", "iso_8601"),
            ("bytea_output", "hex", "escape"),
        ] {
            assert!(check_setting(name, &[good.into()]).is_ok(), "{name} {good}");
            assert!(check_setting(name, &[bad.into()]).is_err(), "{name} {bad}");
        }
        assert_eq!(
            check_setting("timezone", &["local".into()]).unwrap(),
            Setting::Value("UTC".into())
        );
    }

    /// Every connection-level parser over hostile inputs: `Ok` or `Err`, never a panic. (The
    /// fuzz targets `pg_statement` and `pg_startup` do the same with generated inputs.)
    #[test]
    fn hostile_statements_never_panic() {
        let long = "9".repeat(100_000);
        let nested = format!(
            "COPY {}SELECT 1{} TO STDOUT",
            "(".repeat(500),
            ")".repeat(500)
        );
        let statements = [
            "copy".to_string(),
            "COPY".into(),
            "COPY (".into(),
            "COPY )".into(),
            "COPY ()".into(),
            "COPY () TO STDOUT".into(),
            "COPY (SELECT ')') TO STDOUT".into(),
            "COPY (SELECT 1)".into(),
            "COPY (SELECT 1) TO".into(),
            "COPY (SELECT 1) TO STDOUT WITH (DELIMITER".into(),
            "COPY (SELECT 1) TO STDOUT WITH (DELIMITER 'é')".into(),
            "COPY (SELECT 1) TO STDOUT WITH (DELIMITER '')".into(),
            "COPY (SELECT 1) TO STDOUT WITH (FORMAT".into(),
            "COPY (SELECT 1) TO STDOUT WITH (NULL".into(),
            "COPY (SELECT 1) TO STDOUT (HEADER 99999999999999999999999)".into(),
            "COPY (\n\r\tSELECT\r\n'é😀'\r)\rTO STDOUT".into(),
            "COPY (SELECT '😀😀😀') TO STDOUT".into(),
            "COPY t (a, b TO STDOUT".into(),
            "COPY é TO STDOUT".into(),
            "COPY \"t\" TO\tSTDOUT".into(),
            "COPY t to stdout".into(),
            "COPY t\nTO\nSTDOUT".into(),
            "COPY (SELECT 1) TO STDOUT -- )".into(),
            "COPY (SELECT 1 /* ) */) TO STDOUT".into(),
            "COPY (SELECT $$)$$) TO STDOUT".into(),
            nested,
            format!("COPY ({long}) TO STDOUT"),
            "SET".into(),
            "SET =".into(),
            "SET statement_timeout".into(),
            "SET statement_timeout TO".into(),
            "SET statement_timeout = '1e300'".into(),
            "SET statement_timeout = 1e300".into(),
            "SET statement_timeout = -1".into(),
            "SET statement_timeout = '99999999999999999h'".into(),
            format!("SET statement_timeout = {long}"),
            "SET TIME ZONE".into(),
            "SET SESSION".into(),
            "SET LOCAL".into(),
            "SET extra_float_digits = 18446744073709551616".into(),
            "SHOW".into(),
            "RESET".into(),
            "DISCARD".into(),
            "DEALLOCATE".into(),
            "ROLLBACK TO".into(),
            "\u{0}".into(),
            String::new(),
        ];
        for text in &statements {
            let _ = fuzzing::statement(text);
        }
        assert!(!fuzzing::statement(
            "SET statement_timeout = '99999999999999999h'"
        ));
        assert!(!fuzzing::statement("SET statement_timeout = 1e300"));
        for options in [
            "-c",
            "-c statement_timeout",
            "-c statement_timeout=",
            "-cstatement_timeout=1e300",
            "-c statement_timeout=99999999999999999h",
            "--statement_timeout=-5",
            "-c=",
            "-c==",
            "--",
            "-c é=é",
            "-c extra_float_digits=99999999999",
            "-c search_path=",
            &format!("-c statement_timeout={long}"),
        ] {
            let _ = fuzzing::startup_options(options);
        }
        assert!(!fuzzing::startup_options(
            "-c statement_timeout=99999999999999999h"
        ));
        assert!(!fuzzing::startup_options("-cstatement_timeout=1e300"));
        assert!(fuzzing::startup_options("-c statement_timeout=5s"));
        assert!(!fuzzing::startup_parameter("statement_timeout", "1e300"));
        assert!(!fuzzing::startup_parameter("STATEMENT_TIMEOUT", "NaN"));
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
