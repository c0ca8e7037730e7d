//! What a materialized view is: its query, schedule and expectations, parsed from
//!
//! ```sql
//! CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] schema.name
//!     [REFRESH EVERY '5 minutes' | REFRESH CRON '0 * * * *' | REFRESH ON CHANGE]
//!     [REFRESH POLICY AUTO | INCREMENTAL | INCREMENTAL STRICT | FULL]
//!     [CLUSTER BY (column, ...)]
//!     [FRESHNESS WARN AFTER '10 minutes' [ERROR AFTER '1 hour']]
//!     [( ] [CONSTRAINT rule EXPECT (boolean expression)
//!         [ON VIOLATION DROP ROW | ON VIOLATION FAIL UPDATE | ON VIOLATION QUARANTINE]] [, ...] [ )]
//! AS { query | AUTO CDC FROM source KEYS (...) SEQUENCE BY ... [...]
//!      | FHIR VIEW '<ViewDefinition JSON>' FROM source [COLUMN name] }
//! ```
//!
//! (`AUTO CDC` is [`crate::auto_cdc`]'s, `FHIR VIEW` [`crate::fhir_view`]'s)
//!
//! and stored as JSON in the view's own Delta commits.

use std::fmt;
use std::ops::ControlFlow;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{
    Ident, ObjectName, ObjectNamePart, Query, TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::auto_cdc::{self, AutoCdc};
use crate::cron::Cron;
use crate::error::{Error, Result};
use crate::fhir_view::{self, FhirView};

/// When a view refreshes by itself (in `medlake serve`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `REFRESH EVERY '5 minutes'`
    Every { seconds: u64 },
    /// `REFRESH CRON '0 * * * *'` (UTC)
    Cron { expression: String },
    /// `REFRESH ON CHANGE`: refreshed (incrementally where it can) soon after one of its
    /// Delta inputs commits ([`crate::Scheduler`]).
    OnChange,
}

/// How a view chooses between an incremental and a full refresh (`REFRESH POLICY`, as in
/// Databricks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Incremental where the query allows it, unless the changes are a large part of the
    /// inputs (see [`crate::AUTO_FULL_FRACTION`]): then recomputing is cheaper.
    #[default]
    Auto,
    /// Incremental wherever the query allows it, however large the changes.
    Incremental,
    /// Incremental or nothing: a refresh that would have to recompute fails instead, and a
    /// query that cannot be refreshed incrementally is refused when the view is created.
    IncrementalStrict,
    /// Always recompute.
    Full,
}

impl RefreshPolicy {
    pub fn is_auto(&self) -> bool {
        *self == RefreshPolicy::Auto
    }
}

impl fmt::Display for RefreshPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefreshPolicy::Auto => "AUTO",
            RefreshPolicy::Incremental => "INCREMENTAL",
            RefreshPolicy::IncrementalStrict => "INCREMENTAL STRICT",
            RefreshPolicy::Full => "FULL",
        })
    }
}

/// The shortest `REFRESH EVERY` interval: one second.
pub const MIN_INTERVAL_SECS: u64 = 1;
/// The longest `REFRESH EVERY` interval: 366 days (yearly, leap years included). Anything
/// rarer is a manual refresh; the bound keeps every date computed from it far from chrono's
/// limits.
pub const MAX_INTERVAL_SECS: u64 = 366 * 86_400;

impl Schedule {
    /// Whether the schedule can run: an interval within [`MIN_INTERVAL_SECS`] ..=
    /// [`MAX_INTERVAL_SECS`], a cron expression that parses. New definitions are checked when
    /// parsed; one stored by an older medlake may fail, and such a view is not scheduled.
    pub fn check(&self) -> Result<()> {
        match self {
            Schedule::Every { seconds } => check_interval(*seconds, &format!("{seconds} seconds")),
            Schedule::Cron { expression } => {
                Cron::parse(expression)
                    .map(|_| ())
                    .map_err(|reason| Error::InvalidValue {
                        what: "REFRESH CRON".into(),
                        reason,
                    })
            }
            Schedule::OnChange => Ok(()),
        }
    }

    /// The first due time after a refresh that started at `last`; `None` when the schedule is
    /// invalid (see [`Self::check`]) or the time would leave the calendar. Never panics.
    pub fn next_after(
        &self,
        last: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Every { seconds } => {
                if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(seconds) {
                    return None;
                }
                let step = chrono::TimeDelta::try_seconds(i64::try_from(*seconds).ok()?)?;
                last.checked_add_signed(step)
            }
            Schedule::Cron { expression } => Cron::parse(expression).ok()?.next_after(last),
            // Not a time: the scheduler watches its inputs instead.
            Schedule::OnChange => None,
        }
    }
}

fn check_interval(seconds: u64, text: &str) -> Result<()> {
    if (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&seconds) {
        Ok(())
    } else {
        Err(out_of_range(text))
    }
}

fn out_of_range(text: &str) -> Error {
    Error::InvalidValue {
        what: "REFRESH EVERY".into(),
        reason: format!("'{text}' is outside the allowed range of 1 second to 366 days"),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every { seconds } => write!(f, "EVERY '{}'", humanize(*seconds)),
            Schedule::Cron { expression } => write!(f, "CRON '{expression}'"),
            Schedule::OnChange => write!(f, "ON CHANGE"),
        }
    }
}

fn humanize(seconds: u64) -> String {
    for (unit, size) in [("day", 86_400), ("hour", 3_600), ("minute", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            let n = seconds / size;
            return format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{seconds} second{}", if seconds == 1 { "" } else { "s" })
}

/// Parses `'5 minutes'`, `'1 hour'`, `'30s'`, `'2 days'`: 1 second ..= 366 days
/// ([`MIN_INTERVAL_SECS`], [`MAX_INTERVAL_SECS`]), with checked arithmetic.
pub fn parse_interval(text: &str) -> Result<Duration> {
    let bad = || Error::InvalidValue {
        what: "REFRESH EVERY".into(),
        reason: format!(
            "'{text}' is not an interval; write it as '30 seconds', '5 minutes', '1 hour' or '1 day'"
        ),
    };
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    if n.is_empty() {
        return Err(bad());
    }
    let size: u64 = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    // Only digits are left: a parse failure is a number too large for u64.
    let seconds = n
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| out_of_range(text.trim()))?;
    check_interval(seconds, text.trim())?;
    Ok(Duration::from_secs(seconds))
}

/// What happens to a row that breaks an expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// No clause: keep the row, count it.
    Keep,
    /// `ON VIOLATION DROP ROW`
    Drop,
    /// `ON VIOLATION FAIL UPDATE`: the refresh fails and commits nothing.
    Fail,
    /// `ON VIOLATION QUARANTINE`: the row goes to `<view>_quarantine` with the rules it broke.
    Quarantine,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Keep => "keep",
            OnViolation::Drop => "drop",
            OnViolation::Fail => "fail",
            OnViolation::Quarantine => "quarantine",
        }
    }
}

/// `CONSTRAINT name EXPECT (expr) [ON VIOLATION ...]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub name: String,
    /// A boolean SQL expression over the view's columns. NULL counts as met, as in a CHECK
    /// constraint.
    pub expression: String,
    pub on_violation: OnViolation,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CONSTRAINT {} EXPECT ({})", self.name, self.expression)?;
        match self.on_violation {
            OnViolation::Keep => Ok(()),
            OnViolation::Drop => write!(f, " ON VIOLATION DROP ROW"),
            OnViolation::Fail => write!(f, " ON VIOLATION FAIL UPDATE"),
            OnViolation::Quarantine => write!(f, " ON VIOLATION QUARANTINE"),
        }
    }
}

/// A materialized view's definition: everything `CREATE MATERIALIZED VIEW` said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The defining query, in canonical SQL (formatting and comments do not matter).
    pub query: String,
    pub schedule: Option<Schedule>,
    pub expectations: Vec<Expectation>,
    /// The schema unqualified table names in the query resolve against.
    pub default_schema: String,
    /// `AS AUTO CDC ...`: what the user wrote, which `query` (what a refresh plans) was
    /// desugared from. Absent in definitions stored before AUTO CDC existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cdc: Option<AutoCdc>,
    /// `AS FHIR VIEW '...' FROM source`: what the user wrote, which `query` was compiled from
    /// ([`crate::fhir_view`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_view: Option<FhirView>,
    /// `REFRESH POLICY ...`; stored only when not `AUTO`, so definitions written before
    /// policies existed read (and compare) as they were.
    #[serde(default, skip_serializing_if = "RefreshPolicy::is_auto")]
    pub policy: RefreshPolicy,
    /// `CLUSTER BY (columns)`: every write of the view's rows (full and incremental refreshes)
    /// is sorted by these columns, so that the row groups of its files hold narrow ranges of
    /// them and a query on them skips the rest by their statistics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_by: Vec<String>,
    /// `FRESHNESS WARN AFTER '10 minutes' [ERROR AFTER '1 hour']`: how old the view's last
    /// successful refresh may be before `system.sources` calls it stale (for views that
    /// extract a source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

/// A view's freshness bounds, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub warn_after: u64,
    pub error_after: Option<u64>,
}

impl Freshness {
    /// `fresh`, `warn` or `error` for a last success `age_seconds` ago.
    pub fn status(&self, age_seconds: u64) -> &'static str {
        if self.error_after.is_some_and(|e| age_seconds > e) {
            "error"
        } else if age_seconds > self.warn_after {
            "warn"
        } else {
            "fresh"
        }
    }
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FRESHNESS WARN AFTER '{}'", humanize(self.warn_after))?;
        if let Some(error) = self.error_after {
            write!(f, " ERROR AFTER '{}'", humanize(error))?;
        }
        Ok(())
    }
}

impl ViewDefinition {
    /// The definition as a `CREATE MATERIALIZED VIEW` statement.
    pub fn to_sql(&self, schema: &str, name: &str) -> String {
        let mut sql = format!("CREATE MATERIALIZED VIEW {schema}.{name}");
        if let Some(schedule) = &self.schedule {
            sql.push_str(&format!(" REFRESH {schedule}"));
        }
        if !self.policy.is_auto() {
            sql.push_str(&format!(" REFRESH POLICY {}", self.policy));
        }
        if !self.cluster_by.is_empty() {
            let columns: Vec<String> = self.cluster_by.iter().map(|c| identifier(c)).collect();
            sql.push_str(&format!(" CLUSTER BY ({})", columns.join(", ")));
        }
        if let Some(freshness) = &self.freshness {
            sql.push_str(&format!(" {freshness}"));
        }
        for expectation in &self.expectations {
            sql.push_str(&format!(" {expectation}"));
        }
        sql.push_str(&format!(" AS {}", self.body()));
        sql
    }

    /// What follows `AS` as the user wrote it: the query, the `AUTO CDC` clause or the
    /// `FHIR VIEW` clause.
    pub fn body(&self) -> String {
        match (&self.auto_cdc, &self.fhir_view) {
            (Some(cdc), _) => cdc.to_string(),
            (None, Some(fhir)) => fhir.to_string(),
            (None, None) => self.query.clone(),
        }
    }

    /// For an `AUTO CDC` view, computes `query` from the source's columns (`source_schema`);
    /// the source is [`AutoCdc::source`]. Other views are left as they are.
    pub fn resolve(&mut self, source_schema: &datafusion::arrow::datatypes::Schema) -> Result<()> {
        if let Some(cdc) = &self.auto_cdc {
            self.query = cdc.desugar(source_schema)?;
        }
        Ok(())
    }
}

/// A parsed `CREATE MATERIALIZED VIEW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateView {
    pub name: ObjectName,
    pub or_replace: bool,
    pub if_not_exists: bool,
    /// The definition; `default_schema` is left empty for the engine to fill in.
    pub definition: ViewDefinition,
}

fn syntax(e: impl ToString) -> Error {
    Error::Syntax {
        message: e.to_string(),
    }
}

/// Consumes `word` (case-insensitive) if it is the next token: for statements sqlparser does
/// not know (the engine's own statements use it too).
pub fn word(parser: &mut Parser<'_>, word: &str) -> bool {
    if matches!(&parser.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word)) {
        parser.next_token();
        true
    } else {
        false
    }
}

fn expect_word(parser: &mut Parser<'_>, expected: &str, context: &str) -> Result<()> {
    if word(parser, expected) {
        Ok(())
    } else {
        Err(syntax(format!(
            "expected {expected} {context}, found '{}'",
            parser.peek_token().token
        )))
    }
}

fn string(parser: &mut Parser<'_>, context: &str) -> Result<String> {
    match parser.next_token().token {
        Token::SingleQuotedString(s) => Ok(s),
        other => Err(syntax(format!(
            "expected a quoted string {context}, found '{other}'"
        ))),
    }
}

/// Parses the rest of `CREATE [OR REPLACE] MATERIALIZED VIEW ...`, the parser standing at
/// `CREATE`. Returns `None` (consuming nothing) when the statement is something else.
pub fn parse_create(parser: &mut Parser<'_>) -> Result<Option<CreateView>> {
    let tokens = parser.peek_tokens::<4>();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    let or_replace = is(&tokens[1], "OR") && is(&tokens[2], "REPLACE");
    let at = if or_replace { 3 } else { 1 };
    if !is(&tokens[0], "CREATE") || !is(&tokens[at], "MATERIALIZED") {
        return Ok(None);
    }
    for _ in 0..=at {
        parser.next_token();
    }
    expect_word(parser, "VIEW", "after MATERIALIZED")?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    if or_replace && if_not_exists {
        return Err(syntax(
            "OR REPLACE and IF NOT EXISTS cannot be used together",
        ));
    }
    let name = parser.parse_object_name(false).map_err(syntax)?;
    let Options {
        schedule,
        policy,
        expectations,
        cluster_by,
        freshness,
    } = parse_options(parser)?;
    if !parser.parse_keyword(Keyword::AS) {
        return Err(syntax(format!(
            "expected AS before the view's query, found '{}'",
            parser.peek_token().token
        )));
    }
    let mut definition = ViewDefinition {
        query: String::new(),
        schedule,
        expectations,
        default_schema: String::new(),
        auto_cdc: None,
        fhir_view: None,
        policy,
        cluster_by,
        freshness,
    };
    if let Some(cdc) = auto_cdc::parse(parser)? {
        // The query is computed from the source's columns: see `ViewDefinition::resolve`.
        definition.auto_cdc = Some(cdc);
    } else if let Some(fhir) = fhir_view::parse(parser)? {
        // Compiled now: the query does not depend on the source's columns.
        definition.query = fhir.query()?;
        definition.fhir_view = Some(fhir);
    } else {
        let query = parser.parse_query().map_err(syntax)?;
        if parser.peek_token().token != Token::EOF {
            return Err(syntax(format!(
                "unexpected '{}' after the view's query",
                parser.peek_token().token
            )));
        }
        check_query(&query)?;
        definition.query = query.to_string();
    }
    Ok(Some(CreateView {
        name,
        or_replace,
        if_not_exists,
        definition,
    }))
}

/// `REFRESH ...`, `CLUSTER BY (...)` and the expectations, in any order, up to `AS`.
struct Options {
    schedule: Option<Schedule>,
    policy: RefreshPolicy,
    expectations: Vec<Expectation>,
    cluster_by: Vec<String>,
    freshness: Option<Freshness>,
}

/// `WARN AFTER 'interval' [ERROR AFTER 'interval']`, after `FRESHNESS`.
fn parse_freshness(parser: &mut Parser<'_>) -> Result<Freshness> {
    expect_word(parser, "WARN", "after FRESHNESS")?;
    expect_word(parser, "AFTER", "after FRESHNESS WARN")?;
    let warn_after = parse_interval(&string(parser, "after FRESHNESS WARN AFTER")?)?.as_secs();
    let error_after = if word(parser, "ERROR") {
        expect_word(parser, "AFTER", "after ERROR")?;
        let error = parse_interval(&string(parser, "after ERROR AFTER")?)?.as_secs();
        if error < warn_after {
            return Err(Error::InvalidValue {
                what: "FRESHNESS".into(),
                reason: "ERROR AFTER must not be shorter than WARN AFTER".into(),
            });
        }
        Some(error)
    } else {
        None
    };
    Ok(Freshness {
        warn_after,
        error_after,
    })
}

fn parse_options(parser: &mut Parser<'_>) -> Result<Options> {
    let mut schedule = None;
    let mut policy = None;
    let mut expectations: Vec<Expectation> = Vec::new();
    let mut cluster_by: Option<Vec<String>> = None;
    let mut freshness = None;
    loop {
        if word(parser, "FRESHNESS") {
            if freshness.replace(parse_freshness(parser)?).is_some() {
                return Err(syntax("FRESHNESS is given twice"));
            }
        } else if word(parser, "CLUSTER") {
            expect_word(parser, "BY", "after CLUSTER")?;
            if cluster_by.replace(parse_cluster_by(parser)?).is_some() {
                return Err(syntax("CLUSTER BY is given twice"));
            }
        } else if word(parser, "REFRESH") {
            if word(parser, "POLICY") {
                if policy.replace(parse_policy(parser)?).is_some() {
                    return Err(syntax("REFRESH POLICY is given twice"));
                }
            } else if schedule.replace(parse_schedule(parser)?).is_some() {
                return Err(syntax("REFRESH is given twice"));
            }
        } else if parser.peek_token().token == Token::LParen {
            parser.next_token();
            loop {
                expectations.push(parse_expectation(parser)?);
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser.expect_token(&Token::RParen).map_err(syntax)?;
        } else if matches!(&parser.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case("CONSTRAINT"))
        {
            expectations.push(parse_expectation(parser)?);
            let _ = parser.consume_token(&Token::Comma);
        } else {
            break;
        }
    }
    for (i, e) in expectations.iter().enumerate() {
        if expectations[..i].iter().any(|other| other.name == e.name) {
            return Err(Error::InvalidDefinition {
                reason: format!("expectation '{}' is defined twice", e.name),
            });
        }
    }
    Ok(Options {
        schedule,
        policy: policy.unwrap_or_default(),
        expectations,
        cluster_by: cluster_by.unwrap_or_default(),
        freshness,
    })
}

/// A column name as SQL: as it is when it reads back the same unquoted (lower case letters,
/// digits, `_`), double-quoted otherwise.
fn identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `(column, ...)` after `CLUSTER BY`: distinct column names (lower case unless quoted).
pub fn parse_cluster_by(parser: &mut Parser<'_>) -> Result<Vec<String>> {
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let mut columns: Vec<String> = Vec::new();
    loop {
        let ident = parser.parse_identifier().map_err(syntax)?;
        let column = if ident.quote_style.is_some() {
            ident.value
        } else {
            ident.value.to_lowercase()
        };
        if columns.contains(&column) {
            return Err(syntax(format!(
                "column \"{column}\" is named twice in CLUSTER BY"
            )));
        }
        columns.push(column);
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen).map_err(syntax)?;
    Ok(columns)
}

/// `AUTO | INCREMENTAL [STRICT] | FULL`, after `REFRESH POLICY`.
fn parse_policy(parser: &mut Parser<'_>) -> Result<RefreshPolicy> {
    if word(parser, "AUTO") {
        Ok(RefreshPolicy::Auto)
    } else if word(parser, "INCREMENTAL") {
        if word(parser, "STRICT") {
            Ok(RefreshPolicy::IncrementalStrict)
        } else {
            Ok(RefreshPolicy::Incremental)
        }
    } else if word(parser, "FULL") {
        Ok(RefreshPolicy::Full)
    } else {
        Err(syntax(format!(
            "expected AUTO, INCREMENTAL, INCREMENTAL STRICT or FULL after REFRESH POLICY, found '{}'",
            parser.peek_token().token
        )))
    }
}

/// `EVERY '5 minutes'`, `CRON '0 * * * *'` or `ON CHANGE`, after `REFRESH`.
fn parse_schedule(parser: &mut Parser<'_>) -> Result<Schedule> {
    if parser.parse_keyword(datafusion::sql::sqlparser::keywords::Keyword::ON) {
        expect_word(parser, "CHANGE", "after REFRESH ON")?;
        Ok(Schedule::OnChange)
    } else if word(parser, "EVERY") {
        let text = string(parser, "after REFRESH EVERY")?;
        Ok(Schedule::Every {
            seconds: parse_interval(&text)?.as_secs(),
        })
    } else if word(parser, "CRON") {
        let text = string(parser, "after REFRESH CRON")?;
        let cron = Cron::parse(&text).map_err(|reason| Error::InvalidValue {
            what: "REFRESH CRON".into(),
            reason,
        })?;
        Ok(Schedule::Cron {
            expression: cron.as_str().to_string(),
        })
    } else {
        Err(syntax(format!(
            "expected EVERY, CRON or ON CHANGE after REFRESH, found '{}'",
            parser.peek_token().token
        )))
    }
}

fn parse_expectation(parser: &mut Parser<'_>) -> Result<Expectation> {
    expect_word(parser, "CONSTRAINT", "to start an expectation")?;
    let name = normalize(&parser.parse_identifier().map_err(syntax)?);
    expect_word(parser, "EXPECT", &format!("after CONSTRAINT {name}"))?;
    let expression = parser.parse_expr().map_err(syntax)?;
    let expression = match expression {
        datafusion::sql::sqlparser::ast::Expr::Nested(inner) => inner.to_string(),
        other => other.to_string(),
    };
    let on_violation = if parser.parse_keyword(Keyword::ON) {
        expect_word(parser, "VIOLATION", "after ON")?;
        if word(parser, "DROP") {
            expect_word(parser, "ROW", "after ON VIOLATION DROP")?;
            OnViolation::Drop
        } else if word(parser, "FAIL") {
            expect_word(parser, "UPDATE", "after ON VIOLATION FAIL")?;
            OnViolation::Fail
        } else if word(parser, "QUARANTINE") {
            OnViolation::Quarantine
        } else {
            return Err(syntax(format!(
                "expected DROP ROW, FAIL UPDATE or QUARANTINE after ON VIOLATION, found '{}'",
                parser.peek_token().token
            )));
        }
    } else {
        OnViolation::Keep
    };
    Ok(Expectation {
        name,
        expression,
        on_violation,
    })
}

/// A view reads the current state of its inputs: time travel inside a definition would freeze
/// an input forever, and is refused.
fn check_query(query: &Query) -> Result<()> {
    struct TimeTravel(bool);
    impl Visitor for TimeTravel {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if matches!(
                factor,
                TableFactor::Table {
                    version: Some(_),
                    ..
                }
            ) {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut visitor = TimeTravel(false);
    let _ = query.visit(&mut visitor);
    if visitor.0 {
        return Err(Error::NotSupported {
            what: "VERSION AS OF / TIMESTAMP AS OF inside a materialized view (a view reads the current state of its inputs)".into(),
        });
    }
    Ok(())
}

/// An identifier as DataFusion resolves it: lower case unless quoted.
pub fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The identifier parts of a name, normalized.
pub fn name_parts(name: &ObjectName) -> Result<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(normalize(ident)),
            ObjectNamePart::Function(f) => Err(Error::NotSupported {
                what: format!("a computed name ({})", f.name),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    use super::*;

    fn parse(sql: &str) -> Result<Option<CreateView>> {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect).try_with_sql(sql).unwrap();
        parse_create(&mut parser)
    }

    #[test]
    fn parses_the_whole_statement() {
        let v = parse(
            "CREATE OR REPLACE MATERIALIZED VIEW silver.r REFRESH EVERY '5 minutes' \
             CLUSTER BY (Patient, \"Ts\") (CONSTRAINT valid_hr EXPECT (hr BETWEEN 20 AND 300) ON VIOLATION DROP ROW, \
              CONSTRAINT has_patient EXPECT (patient IS NOT NULL) ON VIOLATION QUARANTINE) \
             CONSTRAINT recent EXPECT (ts > '2020-01-01') \
             AS select  patient, hr from bronze.t where hr > 0",
        )
        .unwrap()
        .unwrap();
        assert!(v.or_replace && !v.if_not_exists);
        assert_eq!(
            v.definition.schedule,
            Some(Schedule::Every { seconds: 300 })
        );
        assert_eq!(v.definition.expectations.len(), 3);
        assert_eq!(v.definition.cluster_by, vec!["patient", "Ts"]);
        assert_eq!(v.definition.expectations[0].on_violation, OnViolation::Drop);
        assert_eq!(
            v.definition.expectations[0].expression,
            "hr BETWEEN 20 AND 300"
        );
        assert_eq!(v.definition.expectations[2].on_violation, OnViolation::Keep);
        assert_eq!(
            v.definition.query,
            "SELECT patient, hr FROM bronze.t WHERE hr > 0"
        );
        let sql = v.definition.to_sql("silver", "r");
        let again = parse(&sql).unwrap().unwrap();
        assert_eq!(again.definition, v.definition);
    }

    #[test]
    fn cron_and_errors() {
        let v = parse(
            "create materialized view if not exists g.x refresh cron '0  * * * *' as select 1",
        )
        .unwrap()
        .unwrap();
        assert!(v.if_not_exists);
        assert_eq!(
            v.definition.schedule,
            Some(Schedule::Cron {
                expression: "0 * * * *".into()
            })
        );
        assert!(parse("create table t (a int)").unwrap().is_none());
        let e = parse("create materialized view x refresh every 'soon' as select 1").unwrap_err();
        assert!(e.to_string().contains("'soon' is not an interval"), "{e}");
        let e = parse("create materialized view x constraint a expect (true) on violation explode as select 1")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("DROP ROW, FAIL UPDATE or QUARANTINE"),
            "{e}"
        );
        // (The engine's dialect parses VERSION AS OF; the check refuses it in a view.)
        assert!(parse("create materialized view x as select * from t version as of 3").is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_interval("1 hour").unwrap().as_secs(), 3600);
        assert_eq!(parse_interval(" 2 DAYS ").unwrap().as_secs(), 172_800);
        assert!(parse_interval("0 minutes").is_err());
        assert_eq!(humanize(300), "5 minutes");
        // The bounds: 1 second ..= 366 days.
        assert_eq!(parse_interval("1 second").unwrap().as_secs(), 1);
        assert_eq!(
            parse_interval("366 days").unwrap().as_secs(),
            MAX_INTERVAL_SECS
        );
        assert_eq!(
            parse_interval("8784 hours").unwrap().as_secs(),
            MAX_INTERVAL_SECS
        );
        for out in [
            "367 days",
            "31622401 seconds",
            "9223372036854775807 seconds",
            "18446744073709551615 s",
            "18446744073709551616 seconds",
            "99999999999999999999999999999999999999 days",
            "213503982334601 days",
        ] {
            let e = parse_interval(out).unwrap_err();
            assert!(matches!(e, Error::InvalidValue { .. }), "{out}: {e:?}");
            assert!(e.to_string().contains("1 second to 366 days"), "{out}: {e}");
        }
    }

    /// A corpus of hostile intervals: each is an error or an interval in bounds, never a
    /// panic. (The fuzz target `schedule` does the same with generated inputs.)
    #[test]
    fn hostile_intervals_never_panic() {
        let long = "9".repeat(10_000);
        let long_unit = format!("1 {}", "s".repeat(100_000));
        let corpus = [
            "",
            " ",
            "s",
            "-1 seconds",
            "-9223372036854775808 seconds",
            "+5 minutes",
            "1e300 seconds",
            "NaN seconds",
            "inf days",
            "1.5 hours",
            "0x10 s",
            "५ minutes",
            "５ minutes",
            "5 minutes\u{0}",
            "5 mínutes",
            "\u{feff}5 minutes",
            "5\tminutes",
            "4294967296 seconds",
            "18446744073709551615 seconds",
            "0 seconds",
            "00000000000000000000000000000000000001 second",
            &long,
            &format!("{long} s"),
            &long_unit,
        ];
        for text in corpus {
            match parse_interval(text) {
                Ok(d) => assert!(
                    (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&d.as_secs()),
                    "{text:?}"
                ),
                Err(e) => assert!(matches!(e, Error::InvalidValue { .. }), "{text:?}: {e:?}"),
            }
        }
        let sql = format!("create materialized view x refresh every '{long} days' as select 1");
        assert!(parse(&sql).is_err());
    }

    /// Schedules as an older medlake may have stored them: out of bounds, or a cron
    /// expression that no longer parses. None may panic, whatever the last refresh's time.
    #[test]
    fn stored_schedules_out_of_range_never_panic() {
        use chrono::{DateTime, TimeZone, Utc};
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            DateTime::<Utc>::UNIX_EPOCH,
        ];
        let schedules = [
            Schedule::Every { seconds: 0 },
            Schedule::Every { seconds: 1 },
            Schedule::Every {
                seconds: MAX_INTERVAL_SECS,
            },
            Schedule::Every {
                seconds: MAX_INTERVAL_SECS + 1,
            },
            Schedule::Every {
                seconds: i64::MAX as u64,
            },
            Schedule::Every { seconds: u64::MAX },
            Schedule::Every {
                seconds: 9_223_372_036_854_775,
            },
            Schedule::Cron {
                expression: "* * * * *".into(),
            },
            Schedule::Cron {
                expression: "0 0 30 2 *".into(),
            },
            Schedule::Cron {
                expression: "not a cron".into(),
            },
            Schedule::Cron {
                expression: "*/4294967295 * 1-31/4294967295 * *".into(),
            },
        ];
        for schedule in &schedules {
            let valid = schedule.check().is_ok();
            for &t in &times {
                let next = schedule.next_after(t);
                if let Some(next) = next {
                    assert!(valid, "{schedule:?}");
                    assert!(next > t, "{schedule:?} {t}");
                }
            }
            let _ = schedule.to_string();
        }
        let e = Schedule::Every {
            seconds: i64::MAX as u64,
        }
        .check()
        .unwrap_err();
        assert!(matches!(e, Error::InvalidValue { .. }), "{e:?}");
        // The last representable instant has no successor: no run, no panic.
        assert_eq!(
            Schedule::Every { seconds: 60 }.next_after(DateTime::<Utc>::MAX_UTC),
            None
        );
        // A stored huge interval deserializes (the view still loads) and is reported.
        let stored: Schedule =
            serde_json::from_str(r#"{"every":{"seconds":18446744073709551615}}"#).unwrap();
        assert!(stored.check().is_err());
        assert_eq!(stored.next_after(times[2]), None);
    }
}
