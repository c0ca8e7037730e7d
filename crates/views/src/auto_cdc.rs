//! `AUTO CDC`: a materialized view that applies a change feed (one row per change event) as
//! slowly changing dimension type 1 or 2, as Databricks' `AUTO CDC` / `APPLY CHANGES INTO`:
//!
//! ```sql
//! CREATE MATERIALIZED VIEW silver.patients AS
//! AUTO CDC FROM bronze.ehr_patients
//!     KEYS (patient_id)
//!     [APPLY AS DELETE WHEN op = 'D']
//!     SEQUENCE BY modified_at [, tie_breaker ...]
//!     [COLUMNS * | COLUMNS * EXCEPT (op, ...) | COLUMNS patient_id, mrn, ...]
//!     [STORED AS SCD TYPE 1 | STORED AS SCD TYPE 2]
//! ```
//!
//! The view stores what the user wrote ([`AutoCdc`], shown by `to_sql`) and an ordinary query
//! over the source that a refresh plans: window functions partitioned by the KEYS
//! ([`AutoCdc::desugar`]). The query names the source's columns, so it is computed when the
//! view is created or replaced, from the source's schema.
//!
//! Rules (the README's "AUTO CDC" section says the same):
//! - events whose SEQUENCE BY value (any of them) is NULL are ignored;
//! - the order of a key's events is the SEQUENCE BY values; among events tied on all of them
//!   a delete comes last, then the view's other columns (of orderable types, in the view's
//!   order, NULL lowest) decide: events still tied give the same rows whichever comes first,
//!   so the result never depends on arrival;
//! - SCD type 1: one row per key, its greatest event, absent when that event is a delete;
//! - SCD type 2: one row per version with `__start_at` (the first SEQUENCE BY value of the
//!   event that began it) and `__end_at` (that of the next version or delete of the key; NULL
//!   for the current version). A delete ends the current version and is no row itself. An
//!   event whose tracked columns (the output columns other than the KEYS and the SEQUENCE BY
//!   columns) equal the previous event's does not begin a version.

use std::fmt;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::sql::sqlparser::ast::{Expr, ObjectName};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::definition::{normalize, word};
use crate::error::{Error, Result};

/// The column of an SCD type 2 view with the sequence value that began a version.
pub const START_AT: &str = "__start_at";
/// The column of an SCD type 2 view with the sequence value that ended a version.
pub const END_AT: &str = "__end_at";
/// The prefix of the desugared query's own columns; a source column may not use it.
const INTERNAL: &str = "__medlake_";

/// How the view keeps history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScdType {
    /// The current state of each key.
    Type1,
    /// Every version of each key, with `__start_at` and `__end_at`.
    Type2,
}

/// The view's columns, from the source's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CdcColumns {
    /// `COLUMNS *` (or no clause) and `COLUMNS * EXCEPT (a, b)`: the source's columns in its
    /// order, less those.
    All { except: Vec<String> },
    /// `COLUMNS a, b`: these, in this order.
    List { columns: Vec<String> },
}

/// What `AS AUTO CDC FROM ...` said. Names are normalized (lower case unless quoted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoCdc {
    /// The source table or view, as written (resolved against the view's default schema).
    pub source: String,
    pub keys: Vec<String>,
    /// SQL expressions: the first is the sequence; the others break its ties, in order.
    pub sequence: Vec<String>,
    /// `APPLY AS DELETE WHEN`: a boolean SQL expression over the source's columns.
    pub delete_when: Option<String>,
    pub columns: CdcColumns,
    pub scd: ScdType,
}

fn syntax(e: impl ToString) -> Error {
    Error::Syntax {
        message: e.to_string(),
    }
}

fn found(parser: &Parser<'_>) -> String {
    parser.peek_token().token.to_string()
}

/// Parses `AUTO CDC FROM ...` up to the end of the statement, the parser standing after `AS`.
/// Returns `None` (consuming nothing) when the next words are not `AUTO CDC`.
pub fn parse(parser: &mut Parser<'_>) -> Result<Option<AutoCdc>> {
    let [auto, cdc] = parser.peek_tokens::<2>();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    if !is(&auto, "AUTO") || !is(&cdc, "CDC") {
        return Ok(None);
    }
    parser.next_token();
    parser.next_token();
    if !parser.parse_keyword(Keyword::FROM) {
        return Err(syntax(format!(
            "expected FROM after AUTO CDC, found '{}'",
            found(parser)
        )));
    }
    if parser.peek_token().token == Token::LParen {
        return Err(syntax(
            "AUTO CDC FROM takes the name of a table or view, not a query",
        ));
    }
    let source = parser.parse_object_name(false).map_err(syntax)?.to_string();
    if !word(parser, "KEYS") {
        return Err(syntax(format!(
            "expected KEYS (column, ...) after AUTO CDC FROM {source}, found '{}'",
            found(parser)
        )));
    }
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let keys = identifiers(parser)?;
    parser.expect_token(&Token::RParen).map_err(syntax)?;
    let clauses = parse_clauses(parser)?;
    let sequence = clauses.sequence.ok_or_else(|| {
        syntax("AUTO CDC needs SEQUENCE BY (the column that orders a key's changes)")
    })?;
    let cdc = AutoCdc {
        source,
        keys,
        sequence,
        delete_when: clauses.delete_when,
        columns: clauses
            .columns
            .unwrap_or(CdcColumns::All { except: Vec::new() }),
        scd: clauses.scd.unwrap_or(ScdType::Type1),
    };
    cdc.check()?;
    Ok(Some(cdc))
}

#[derive(Default)]
struct Clauses {
    sequence: Option<Vec<String>>,
    delete_when: Option<String>,
    columns: Option<CdcColumns>,
    scd: Option<ScdType>,
}

fn twice(clause: &str) -> Error {
    syntax(format!("{clause} is given twice"))
}

/// The clauses after KEYS, in any order, each at most once, up to the end of the statement.
fn parse_clauses(parser: &mut Parser<'_>) -> Result<Clauses> {
    let mut c = Clauses::default();
    loop {
        if word(parser, "SEQUENCE") {
            expect(parser, "BY", "after SEQUENCE")?;
            if c.sequence.replace(sequence(parser)?).is_some() {
                return Err(twice("SEQUENCE BY"));
            }
        } else if word(parser, "APPLY") {
            expect(parser, "AS", "after APPLY")?;
            expect(parser, "DELETE", "after APPLY AS")?;
            expect(parser, "WHEN", "after APPLY AS DELETE")?;
            let condition = parser.parse_expr().map_err(syntax)?;
            if c.delete_when.replace(unnest(condition)).is_some() {
                return Err(twice("APPLY AS DELETE WHEN"));
            }
        } else if word(parser, "COLUMNS") {
            if c.columns.replace(columns(parser)?).is_some() {
                return Err(twice("COLUMNS"));
            }
        } else if word(parser, "STORED") {
            expect(parser, "AS", "after STORED")?;
            if c.scd.replace(scd_type(parser)?).is_some() {
                return Err(twice("STORED AS"));
            }
        } else if parser.peek_token().token == Token::EOF {
            return Ok(c);
        } else {
            return Err(syntax(format!(
                "expected SEQUENCE BY, APPLY AS DELETE WHEN, COLUMNS or STORED AS in AUTO CDC, found '{}'",
                found(parser)
            )));
        }
    }
}

fn expect(parser: &mut Parser<'_>, expected: &str, context: &str) -> Result<()> {
    if word(parser, expected) {
        Ok(())
    } else {
        Err(syntax(format!(
            "expected {expected} {context}, found '{}'",
            found(parser)
        )))
    }
}

fn unnest(expr: Expr) -> String {
    match expr {
        Expr::Nested(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// `a [, b ...]` or `STRUCT(a, b)` (Databricks' spelling of a sequence with tie breakers).
fn sequence(parser: &mut Parser<'_>) -> Result<Vec<String>> {
    let [name, paren] = parser.peek_tokens::<2>();
    if matches!(&name, Token::Word(w) if w.value.eq_ignore_ascii_case("STRUCT"))
        && paren == Token::LParen
    {
        parser.next_token();
        parser.next_token();
        let exprs = parser
            .parse_comma_separated(Parser::parse_expr)
            .map_err(syntax)?;
        parser.expect_token(&Token::RParen).map_err(syntax)?;
        return Ok(exprs.into_iter().map(unnest).collect());
    }
    let exprs = parser
        .parse_comma_separated(Parser::parse_expr)
        .map_err(syntax)?;
    Ok(exprs.into_iter().map(unnest).collect())
}

fn identifiers(parser: &mut Parser<'_>) -> Result<Vec<String>> {
    let idents = parser
        .parse_comma_separated(|p| p.parse_identifier())
        .map_err(syntax)?;
    Ok(idents.iter().map(normalize).collect())
}

/// `*`, `* EXCEPT (a, ...)`, `a, b, ...` or `(a, b, ...)`.
fn columns(parser: &mut Parser<'_>) -> Result<CdcColumns> {
    if parser.consume_token(&Token::Mul) {
        if !parser.parse_keyword(Keyword::EXCEPT) {
            return Ok(CdcColumns::All { except: Vec::new() });
        }
        parser.expect_token(&Token::LParen).map_err(syntax)?;
        let except = identifiers(parser)?;
        parser.expect_token(&Token::RParen).map_err(syntax)?;
        return Ok(CdcColumns::All { except });
    }
    let parenthesized = parser.consume_token(&Token::LParen);
    let columns = identifiers(parser)?;
    if parenthesized {
        parser.expect_token(&Token::RParen).map_err(syntax)?;
    }
    Ok(CdcColumns::List { columns })
}

fn scd_type(parser: &mut Parser<'_>) -> Result<ScdType> {
    expect(parser, "SCD", "after STORED AS")?;
    expect(parser, "TYPE", "after STORED AS SCD")?;
    match parser.next_token().token {
        Token::Number(n, _) if n == "1" => Ok(ScdType::Type1),
        Token::Number(n, _) if n == "2" => Ok(ScdType::Type2),
        other => Err(syntax(format!(
            "expected SCD TYPE 1 or SCD TYPE 2, found SCD TYPE {other}"
        ))),
    }
}

fn duplicate(names: &[String]) -> Option<&String> {
    names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
        .map(|(_, n)| n)
}

fn invalid(reason: String) -> Error {
    Error::InvalidDefinition { reason }
}

impl AutoCdc {
    /// What can be checked without the source's schema.
    fn check(&self) -> Result<()> {
        for (clause, names) in [("KEYS", &self.keys), ("COLUMNS", self.listed())] {
            if let Some(name) = duplicate(names) {
                return Err(invalid(format!("AUTO CDC {clause} names '{name}' twice")));
            }
        }
        match &self.columns {
            CdcColumns::All { except } => {
                if let Some(key) = except.iter().find(|c| self.keys.contains(c)) {
                    return Err(invalid(format!(
                        "AUTO CDC cannot leave out the KEYS column '{key}' (COLUMNS * EXCEPT): a view keeps its keys"
                    )));
                }
            }
            CdcColumns::List { columns } => {
                if let Some(key) = self.keys.iter().find(|k| !columns.contains(k)) {
                    return Err(invalid(format!(
                        "AUTO CDC COLUMNS must include the KEYS column '{key}': a view keeps its keys"
                    )));
                }
            }
        }
        Ok(())
    }

    fn listed(&self) -> &Vec<String> {
        match &self.columns {
            CdcColumns::All { except } => except,
            CdcColumns::List { columns } => columns,
        }
    }

    /// The source's name, parsed.
    pub fn source_name(&self) -> Result<ObjectName> {
        let dialect = GenericDialect {};
        Parser::new(&dialect)
            .try_with_sql(&self.source)
            .and_then(|mut p| p.parse_object_name(false))
            .map_err(syntax)
    }

    /// A query that reads what the view reads (its lineage before [`Self::desugar`] ran).
    pub fn source_query(&self) -> String {
        format!("SELECT * FROM {}", self.source)
    }

    /// The ordinary query the view refreshes with, over `schema` (the source's columns).
    /// Every window function is partitioned by the KEYS, which are output columns.
    pub fn desugar(&self, schema: &Schema) -> Result<String> {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        self.check_names(&names)?;
        let output = self.output(&names);
        let sequence_columns = self.sequence_columns()?;
        for column in &sequence_columns {
            self.known(&names, column, "SEQUENCE BY")?;
        }
        // The view's columns that can change between a key's events.
        let tracked: Vec<&str> = output
            .iter()
            .copied()
            .filter(|n| !self.keys.iter().any(|k| k == n))
            .filter(|n| !sequence_columns.iter().any(|s| s == n))
            .collect();
        // Ties on the sequence are broken by what the view shows of an event (so events that
        // still tie give the same rows, whichever comes first): its columns, not others the
        // creator did not ask for (and may see masked).
        let ties: Vec<&str> = tracked
            .iter()
            .copied()
            .filter(|n| {
                schema
                    .field_with_name(n)
                    .is_ok_and(|f| orderable(f.data_type()))
            })
            .collect();
        Ok(match self.scd {
            ScdType::Type1 => self.type1(&output, &ties),
            ScdType::Type2 => self.type2(&output, &tracked, &ties),
        })
    }

    fn known(&self, names: &[&str], column: &str, clause: &str) -> Result<()> {
        if names.contains(&column) {
            return Ok(());
        }
        Err(Error::UnknownColumn {
            column: column.to_string(),
            clause: clause.to_string(),
            source_name: self.source.clone(),
            columns: names.join(", "),
        })
    }

    /// KEYS and COLUMNS name columns of the source; the view's own column names are free.
    fn check_names(&self, names: &[&str]) -> Result<()> {
        for key in &self.keys {
            self.known(names, key, "KEYS")?;
        }
        let clause = match self.columns {
            CdcColumns::All { .. } => "COLUMNS * EXCEPT",
            CdcColumns::List { .. } => "COLUMNS",
        };
        for column in self.listed() {
            self.known(names, column, clause)?;
        }
        if let Some(name) = names.iter().find(|n| n.starts_with(INTERNAL)) {
            return Err(invalid(format!(
                "AUTO CDC source column '{name}': names starting with {INTERNAL} are medlake's own"
            )));
        }
        if self.scd == ScdType::Type2 {
            let output = self.output(names);
            if let Some(name) = output.iter().find(|n| [START_AT, END_AT].contains(n)) {
                return Err(invalid(format!(
                    "AUTO CDC source column '{name}' collides with the SCD type 2 column of that name (leave it out with COLUMNS * EXCEPT)"
                )));
            }
        }
        Ok(())
    }

    fn output<'a>(&'a self, names: &[&'a str]) -> Vec<&'a str> {
        match &self.columns {
            CdcColumns::All { except } => names
                .iter()
                .copied()
                .filter(|n| !except.iter().any(|e| e == n))
                .collect(),
            CdcColumns::List { columns } => columns.iter().map(String::as_str).collect(),
        }
    }

    /// The SEQUENCE BY expressions that are plain column names, normalized.
    fn sequence_columns(&self) -> Result<Vec<String>> {
        let dialect = GenericDialect {};
        let mut columns = Vec::new();
        for text in &self.sequence {
            let expr = Parser::new(&dialect)
                .try_with_sql(text)
                .and_then(|mut p| p.parse_expr())
                .map_err(syntax)?;
            if let Expr::Identifier(ident) = expr {
                columns.push(normalize(&ident));
            }
        }
        Ok(columns)
    }

    fn partition(&self) -> String {
        self.keys
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `ORDER BY` of a key's events: the sequence, then a delete after an upsert, then the
    /// tie breakers; ascending with NULL lowest (`descending` reverses all of it).
    fn order(&self, ties: &[&str], descending: bool) -> String {
        let (dir, nulls) = if descending {
            ("DESC", "NULLS LAST")
        } else {
            ("ASC", "NULLS FIRST")
        };
        let sequence = self.sequence.iter().map(|s| format!("({s}) {dir}"));
        let delete = self
            .delete_when
            .is_some()
            .then(|| format!("{} {dir}", self.is_delete()));
        let ties = ties.iter().map(|t| format!("{} {dir} {nulls}", quote(t)));
        sequence
            .chain(delete)
            .chain(ties)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn events(&self) -> String {
        let not_null = self
            .sequence
            .iter()
            .map(|s| format!("({s}) IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!("{} WHERE {not_null}", self.source)
    }

    fn is_delete(&self) -> String {
        match &self.delete_when {
            Some(condition) => format!("coalesce(({condition}), false)"),
            None => "false".into(),
        }
    }

    fn type1(&self, output: &[&str], ties: &[&str]) -> String {
        format!(
            "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS {INTERNAL}rank FROM {events}) AS {INTERNAL}latest WHERE {INTERNAL}rank = 1 AND NOT {delete}",
            columns = quote_all(output),
            keys = self.partition(),
            order = self.order(ties, true),
            events = self.events(),
            delete = self.is_delete(),
        )
    }

    fn type2(&self, output: &[&str], tracked: &[&str], ties: &[&str]) -> String {
        let window = format!(
            "OVER (PARTITION BY {} ORDER BY {})",
            self.partition(),
            self.order(ties, false)
        );
        // A version begins at a key's first event, after a delete, or where a tracked column
        // changed; a delete is kept here (it ends a version) and dropped at the end.
        // (Every term in parentheses: dialects differ in how IS binds next to OR.)
        let mut begins = vec![
            format!("({INTERNAL}delete)"),
            format!("((lag({INTERNAL}delete) {window}) IS NOT FALSE)"),
        ];
        begins.extend(
            tracked
                .iter()
                .map(|c| format!("((lag({q}) {window}) IS DISTINCT FROM {q})", q = quote(c))),
        );
        format!(
            "SELECT {columns}, {START_AT}, {END_AT} FROM (\
             SELECT *, lead({START_AT}) {window} AS {END_AT} FROM (\
             SELECT *, ({begins}) AS {INTERNAL}begins FROM (\
             SELECT *, {delete} AS {INTERNAL}delete, ({first}) AS {START_AT} FROM {events}\
             ) AS {INTERNAL}events) AS {INTERNAL}changes WHERE {INTERNAL}begins\
             ) AS {INTERNAL}versions WHERE NOT {INTERNAL}delete",
            columns = quote_all(output),
            begins = begins.join(" OR "),
            delete = self.is_delete(),
            first = self.sequence[0],
            events = self.events(),
        )
    }
}

/// Whether DataFusion can sort by a column of this type (tie breakers skip the others).
fn orderable(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, value) => orderable(value),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            orderable(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().all(|f| orderable(f.data_type())),
        DataType::Map(..)
        | DataType::Union(..)
        | DataType::Null
        | DataType::RunEndEncoded(..)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => false,
        _ => true,
    }
}

/// An identifier as SQL: quoted, so any column name is read back exactly.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_all(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Words that start an AUTO CDC clause: quoted when they name a column, so a list reads back.
const CLAUSE_WORDS: &[&str] = &["apply", "columns", "except", "keys", "sequence", "stored"];

/// An identifier as the user would write it: bare when that reads back the same (the
/// parser takes any word as a column name).
fn display_ident(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !CLAUSE_WORDS.contains(&name);
    if simple {
        name.to_string()
    } else {
        quote(name)
    }
}

fn display_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| display_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for AutoCdc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AUTO CDC FROM {} KEYS ({})",
            self.source,
            display_list(&self.keys)
        )?;
        if let Some(condition) = &self.delete_when {
            write!(f, " APPLY AS DELETE WHEN {condition}")?;
        }
        write!(f, " SEQUENCE BY {}", self.sequence.join(", "))?;
        match &self.columns {
            CdcColumns::All { except } if except.is_empty() => {}
            CdcColumns::All { except } => {
                write!(f, " COLUMNS * EXCEPT ({})", display_list(except))?
            }
            CdcColumns::List { columns } => write!(f, " COLUMNS {}", display_list(columns))?,
        }
        let n = match self.scd {
            ScdType::Type1 => 1,
            ScdType::Type2 => 2,
        };
        write!(f, " STORED AS SCD TYPE {n}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::definition::{CreateView, ViewDefinition, parse_create};

    fn create(sql: &str) -> Result<Option<CreateView>> {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
        parse_create(&mut parser)
    }

    fn cdc(body: &str) -> Result<AutoCdc> {
        let view = create(&format!("CREATE MATERIALIZED VIEW s.v AS {body}"))?;
        let view = view.ok_or_else(|| syntax("not a view"))?;
        view.definition
            .auto_cdc
            .ok_or_else(|| syntax("not AUTO CDC"))
    }

    /// (id, region, name, op, seq): the source of the desugaring tests.
    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("region", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("op", DataType::Utf8, true),
            Field::new("seq", DataType::Int64, true),
        ])
    }

    #[test]
    fn parses_and_shows_what_was_written() {
        let view = create(
            "create or replace materialized view silver.p refresh every '5 minutes' \
             constraint named expect (name is not null) as \
             auto cdc from bronze.changes keys (id, Region) apply as delete when (op = 'D') \
             sequence by seq, \"Tie\" columns * except (op) stored as scd type 2",
        )
        .unwrap()
        .unwrap();
        let cdc = view.definition.auto_cdc.clone().unwrap();
        assert_eq!(cdc.source, "bronze.changes");
        assert_eq!(cdc.keys, ["id", "region"]);
        assert_eq!(cdc.sequence, ["seq", "\"Tie\""]);
        assert_eq!(cdc.delete_when.as_deref(), Some("op = 'D'"));
        assert_eq!(
            cdc.columns,
            CdcColumns::All {
                except: vec!["op".into()]
            }
        );
        assert_eq!(cdc.scd, ScdType::Type2);
        assert_eq!(
            view.definition.query, "",
            "computed from the source's schema later"
        );
        let sql = view.definition.to_sql("silver", "p");
        assert_eq!(
            sql,
            "CREATE MATERIALIZED VIEW silver.p REFRESH EVERY '5 minutes' \
             CONSTRAINT named EXPECT (name IS NOT NULL) AS AUTO CDC FROM bronze.changes \
             KEYS (id, region) APPLY AS DELETE WHEN op = 'D' SEQUENCE BY seq, \"Tie\" \
             COLUMNS * EXCEPT (op) STORED AS SCD TYPE 2"
        );
        let again = create(&sql).unwrap().unwrap();
        assert_eq!(again.definition, view.definition);
    }

    /// Definitions stored before AUTO CDC (no `auto_cdc` field) still load; new ones keep it.
    #[test]
    fn stored_definitions_load() {
        let old =
            r#"{"query":"SELECT 1","schedule":null,"expectations":[],"default_schema":"silver"}"#;
        let definition: ViewDefinition = serde_json::from_str(old).unwrap();
        assert_eq!(definition.auto_cdc, None);
        assert_eq!(definition.body(), "SELECT 1");
        let mut view =
            create("CREATE MATERIALIZED VIEW s.v AS AUTO CDC FROM t KEYS (id) SEQUENCE BY seq")
                .unwrap()
                .unwrap()
                .definition;
        view.resolve(&schema()).unwrap();
        assert!(view.query.contains("PARTITION BY \"id\""), "{}", view.query);
        let stored = serde_json::to_string(&view).unwrap();
        assert!(
            !serde_json::to_string(&definition)
                .unwrap()
                .contains("auto_cdc")
        );
        let loaded: ViewDefinition = serde_json::from_str(&stored).unwrap();
        assert_eq!(loaded, view);
        assert!(
            loaded.body().starts_with("AUTO CDC FROM t"),
            "{}",
            loaded.body()
        );
    }

    #[test]
    fn defaults_struct_sequences_and_column_lists() {
        let c = cdc("AUTO CDC FROM t KEYS (id) SEQUENCE BY struct(seq, name)").unwrap();
        assert_eq!(c.scd, ScdType::Type1);
        assert_eq!(c.columns, CdcColumns::All { except: vec![] });
        assert_eq!(c.sequence, ["seq", "name"]);
        assert_eq!(c.delete_when, None);
        let c = cdc("AUTO CDC FROM t KEYS (id) COLUMNS id, \"select\", stored SEQUENCE BY seq")
            .unwrap();
        assert_eq!(
            c.columns,
            CdcColumns::List {
                columns: vec!["id".into(), "select".into(), "stored".into()]
            }
        );
        // A clause's word as a column name is quoted when shown, so that it parses back.
        assert!(
            c.to_string()
                .contains("COLUMNS id, select, \"stored\" STORED"),
            "{c}"
        );
        assert_eq!(cdc(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn syntax_errors() {
        for (body, message) in [
            ("AUTO CDC FROM t KEYS (id)", "needs SEQUENCE BY"),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq STORED AS SCD TYPE 3",
                "SCD TYPE 3",
            ),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq STORED AS SCD TYPE x",
                "SCD TYPE 1 or",
            ),
            (
                "AUTO CDC FROM (SELECT * FROM t) KEYS (id) SEQUENCE BY seq",
                "not a query",
            ),
            ("AUTO CDC FROM t SEQUENCE BY seq", "expected KEYS"),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY a SEQUENCE BY b",
                "given twice",
            ),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY a TRACK HISTORY",
                "found 'TRACK'",
            ),
            ("AUTO CDC t KEYS (id) SEQUENCE BY a", "expected FROM"),
        ] {
            let e = cdc(body).unwrap_err();
            assert!(matches!(e, Error::Syntax { .. }), "{body}: {e:?}");
            assert!(e.to_string().contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn definition_errors() {
        for (body, message) in [
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq COLUMNS * EXCEPT (op, id)",
                "cannot leave out the KEYS column 'id'",
            ),
            (
                "AUTO CDC FROM t KEYS (id, region) SEQUENCE BY seq COLUMNS id, name",
                "must include the KEYS column 'region'",
            ),
            (
                "AUTO CDC FROM t KEYS (id, ID) SEQUENCE BY seq",
                "KEYS names 'id' twice",
            ),
        ] {
            let e = cdc(body).unwrap_err();
            assert!(
                matches!(e, Error::InvalidDefinition { .. }),
                "{body}: {e:?}"
            );
            assert!(e.to_string().contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn unknown_columns_are_named() {
        for (body, clause, column) in [
            ("AUTO CDC FROM t KEYS (idx) SEQUENCE BY seq", "KEYS", "idx"),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY sequ",
                "SEQUENCE BY",
                "sequ",
            ),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq COLUMNS * EXCEPT (opp)",
                "COLUMNS * EXCEPT",
                "opp",
            ),
            (
                "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq COLUMNS id, nme",
                "COLUMNS",
                "nme",
            ),
            // Quoted: case matters.
            (
                "AUTO CDC FROM t KEYS (\"ID\") SEQUENCE BY seq",
                "KEYS",
                "ID",
            ),
        ] {
            let e = cdc(body).unwrap().desugar(&schema()).unwrap_err();
            let Error::UnknownColumn {
                clause: c,
                column: col,
                ..
            } = &e
            else {
                panic!("{body}: {e:?}");
            };
            assert_eq!((c.as_str(), col.as_str()), (clause, column), "{body}");
            assert!(e.to_string().contains("id, region, name, op, seq"), "{e}");
        }
    }

    #[test]
    fn reserved_names_are_refused() {
        let mut fields = schema().fields().to_vec();
        fields.push(Arc::new(Field::new("__start_at", DataType::Int64, true)));
        let clash = Schema::new(fields);
        let c = cdc("AUTO CDC FROM t KEYS (id) SEQUENCE BY seq STORED AS SCD TYPE 2").unwrap();
        let e = c.desugar(&clash).unwrap_err();
        assert!(e.to_string().contains("collides"), "{e}");
        // Left out, or in a type 1 view, it is an ordinary column.
        let c = cdc(
            "AUTO CDC FROM t KEYS (id) SEQUENCE BY seq COLUMNS * EXCEPT (__start_at) STORED AS SCD TYPE 2",
        )
        .unwrap();
        assert!(c.desugar(&clash).is_ok());
        let c = cdc("AUTO CDC FROM t KEYS (id) SEQUENCE BY seq").unwrap();
        assert!(c.desugar(&clash).is_ok());
        let mut fields = schema().fields().to_vec();
        fields.push(Arc::new(Field::new(
            "__medlake_rank",
            DataType::Int64,
            true,
        )));
        let e = c.desugar(&Schema::new(fields)).unwrap_err();
        assert!(e.to_string().contains("medlake's own"), "{e}");
    }

    /// (id, region, name, op, seq)
    type Event = (
        i64,
        &'static str,
        Option<&'static str>,
        &'static str,
        Option<i64>,
    );

    /// Runs the desugared query over `rows` (id, region, name, op, seq), in arrival order.
    async fn run(body: &str, rows: &[Event]) -> String {
        let schema = Arc::new(schema());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap();
        // One row per partition: arrival order is not an order DataFusion keeps.
        let partitions = batch_rows(&batch);
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema.clone(), partitions).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let sql = cdc(body).unwrap().desugar(&schema).unwrap();
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut lines: Vec<String> = pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect();
        // Header (3 lines) first, rows sorted, the closing line last.
        let footer = lines.pop().unwrap_or_default();
        let mut body_lines = lines.split_off(3.min(lines.len()));
        body_lines.sort();
        lines.extend(body_lines);
        lines.push(footer);
        lines.join("\n")
    }

    fn batch_rows(batch: &RecordBatch) -> Vec<Vec<RecordBatch>> {
        (0..batch.num_rows())
            .map(|i| vec![batch.slice(i, 1)])
            .collect()
    }

    const EVENTS: &[Event] = &[
        (1, "n", Some("ann"), "I", Some(1)),
        (1, "n", Some("anne"), "U", Some(3)),
        // Arrives late with an older sequence: does not win.
        (1, "n", Some("an"), "U", Some(2)),
        (2, "n", Some("bob"), "I", Some(1)),
        (2, "n", None, "D", Some(2)),
        // Re-inserted after its delete.
        (3, "n", Some("cy"), "I", Some(1)),
        (3, "n", None, "D", Some(2)),
        (3, "n", Some("cyd"), "I", Some(4)),
        // The same id in another region is another key.
        (3, "s", Some("sue"), "I", Some(1)),
        // A NULL sequence is ignored.
        (3, "s", Some("never"), "U", None),
        // Tied on the sequence: the greater row (by name) wins.
        (4, "n", Some("dee"), "U", Some(5)),
        (4, "n", Some("dan"), "U", Some(5)),
        // Tied with a delete: the delete comes last, and wins.
        (6, "n", Some("fay"), "I", Some(1)),
        (6, "n", None, "D", Some(2)),
        (6, "n", Some("fae"), "U", Some(2)),
        // Unchanged re-deliveries do not begin a version (type 2).
        (5, "n", Some("eve"), "I", Some(1)),
        (5, "n", Some("eve"), "U", Some(2)),
        (5, "n", Some("eva"), "U", Some(3)),
        (5, "n", Some("eve"), "U", Some(4)),
    ];

    #[tokio::test]
    async fn type1_keeps_the_latest_event_of_each_key() {
        let out = run(
            "AUTO CDC FROM t KEYS (id, region) APPLY AS DELETE WHEN op = 'D' SEQUENCE BY seq \
             COLUMNS * EXCEPT (op)",
            EVENTS,
        )
        .await;
        let expected = "\
+----+--------+------+-----+
| id | region | name | seq |
+----+--------+------+-----+
| 1  | n      | anne | 3   |
| 3  | n      | cyd  | 4   |
| 3  | s      | sue  | 1   |
| 4  | n      | dee  | 5   |
| 5  | n      | eve  | 4   |
+----+--------+------+-----+";
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn type2_keeps_every_version() {
        let out = run(
            "AUTO CDC FROM t KEYS (id, region) APPLY AS DELETE WHEN op = 'D' SEQUENCE BY seq \
             COLUMNS id, region, name STORED AS SCD TYPE 2",
            EVENTS,
        )
        .await;
        let expected = "\
+----+--------+------+------------+----------+
| id | region | name | __start_at | __end_at |
+----+--------+------+------------+----------+
| 1  | n      | an   | 2          | 3        |
| 1  | n      | ann  | 1          | 2        |
| 1  | n      | anne | 3          |          |
| 2  | n      | bob  | 1          | 2        |
| 3  | n      | cy   | 1          | 2        |
| 3  | n      | cyd  | 4          |          |
| 3  | s      | sue  | 1          |          |
| 4  | n      | dan  | 5          | 5        |
| 4  | n      | dee  | 5          |          |
| 5  | n      | eva  | 3          | 4        |
| 5  | n      | eve  | 1          | 3        |
| 5  | n      | eve  | 4          |          |
| 6  | n      | fae  | 2          | 2        |
| 6  | n      | fay  | 1          | 2        |
+----+--------+------+------------+----------+";
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn without_deletes_a_delete_row_is_a_version() {
        let out = run(
            "AUTO CDC FROM t KEYS (id, region) SEQUENCE BY seq COLUMNS id, region, op",
            &EVENTS[3..5],
        )
        .await;
        assert!(out.contains("| 2  | n      | D  |"), "{out}");
    }
}
