//! Statements: splitting a script, medlake's own statements (which sqlparser does not know),
//! and the time-travel clauses of table references.
//!
//! medlake's own statements:
//! ```sql
//! DESCRIBE HISTORY schema.table [LIMIT n]
//! OPTIMIZE schema.table [ZORDER BY (col, ...)]
//! ALTER TABLE schema.table CLUSTER BY (col, ...) | CLUSTER BY NONE
//! VACUUM schema.table [RETAIN n HOURS] [DRY RUN] [FORCE]
//! RESTORE [TABLE] schema.table TO VERSION AS OF n | TO TIMESTAMP AS OF 'ts'
//! CREATE TABLE [IF NOT EXISTS] t SHALLOW | DEEP CLONE s [VERSION AS OF n | TIMESTAMP AS OF 'ts']
//! CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] name [REFRESH ...] [expectations] AS query
//! REFRESH MATERIALIZED VIEW name [FULL] [CASCADE]
//! EXPLAIN REFRESH MATERIALIZED VIEW name
//! DROP MATERIALIZED VIEW [IF EXISTS] name
//! SHOW MATERIALIZED VIEWS
//! ```
//! Everything else is parsed by DataFusion's parser with [`MedlakeDialect`].

use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, TableFactor, TableVersion, Value,
    VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use medlake_lake::TimeTravel;

use crate::dialect::MedlakeDialect;
use crate::error::{Error, Result};

/// One parsed statement, ready for [`crate::Engine::execute`].
#[derive(Debug, Clone)]
pub enum Statement {
    /// A statement DataFusion plans (queries, DDL, DML, SET, SHOW, EXPLAIN, ...).
    Sql(Box<DfStatement>),
    /// `DESCRIBE HISTORY t [LIMIT n]`
    DescribeHistory {
        table: ObjectName,
        limit: Option<usize>,
    },
    /// `OPTIMIZE t [ZORDER BY (cols)]`
    Optimize {
        table: ObjectName,
        zorder: Vec<String>,
    },
    /// `ALTER TABLE t CLUSTER BY (cols) | CLUSTER BY NONE` (no columns)
    ClusterBy {
        table: ObjectName,
        columns: Vec<String>,
    },
    /// `ALTER TABLE t SET TBLPROPERTIES ('k' = 'v', ...)` (the automatic compaction policy:
    /// `medlake_lake::maintenance::SETTABLE_PROPERTIES`)
    SetTableProperties {
        table: ObjectName,
        properties: Vec<(String, String)>,
    },
    /// `CREATE [OR REPLACE] MATERIALIZED VIEW ...`
    CreateMaterializedView(Box<medlake_views::CreateView>),
    /// `REFRESH MATERIALIZED VIEW name [FULL] [CASCADE]`
    RefreshMaterializedView {
        name: ObjectName,
        full: bool,
        cascade: bool,
    },
    /// `EXPLAIN REFRESH MATERIALIZED VIEW name`
    ExplainRefresh { name: ObjectName },
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`
    DropMaterializedView { name: ObjectName, if_exists: bool },
    /// `SHOW MATERIALIZED VIEWS`
    ShowMaterializedViews,
    /// `IMPORT FOREIGN SCHEMA remote [LIMIT TO (t, ...) | EXCEPT (t, ...)] FROM SQLSERVER
    /// 'location' INTO local [OPTIONS ('k' 'v', ...)]`: one external table per remote table.
    ImportForeignSchema(Box<ImportForeignSchema>),
    /// Roles, grants, owners, masks and row filters (`GRANT`, `ALTER TABLE ... SET MASK`, ...).
    Access(Box<crate::access::parse::AccessStatement>),
    /// `RESTORE [TABLE] t TO VERSION AS OF n | TO TIMESTAMP AS OF 'ts'`
    RestoreTable { table: ObjectName, to: TimeTravel },
    /// `CREATE TABLE [IF NOT EXISTS] t SHALLOW | DEEP CLONE s [VERSION AS OF n | ...]`
    CloneTable {
        target: ObjectName,
        source: ObjectName,
        at: Option<TimeTravel>,
        deep: bool,
        if_not_exists: bool,
    },
    /// `ERASE PATIENT 'id' [, ...] [IN COLUMNS (c, ...)] [DRY RUN]`
    Erase(crate::erase::Erase),
    /// `CREATE [OR REPLACE] ALERT`, `DROP ALERT`, `ACKNOWLEDGE ALERT`, `SHOW ALERTS`
    Alert(medlake_alerts::AlertStatement),
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN] [FORCE]`
    Vacuum {
        table: ObjectName,
        retain_hours: Option<u64>,
        dry_run: bool,
        force: bool,
    },
}

/// `IMPORT FOREIGN SCHEMA`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportForeignSchema {
    /// The remote schema, as written (SQL Server names are case-insensitive).
    pub remote_schema: String,
    /// `LIMIT TO` (true) or `EXCEPT` (false) and the remote table names.
    pub only: Option<(bool, Vec<String>)>,
    /// The source kind (`SQLSERVER`).
    pub kind: String,
    pub location: String,
    /// The local schema the external tables are created in.
    pub into: String,
    pub options: Vec<(String, String)>,
}

impl Statement {
    /// Whether the statement is a plain query (`SELECT`/`VALUES`/`WITH ... SELECT`, without
    /// `INTO`): what `COPY (query) TO STDOUT` accepts, as in PostgreSQL. This is syntax, not
    /// a privilege: privileges are checked by `Session::execute` for every statement.
    pub fn is_query(&self) -> bool {
        use datafusion::sql::sqlparser::ast::{SetExpr, Statement as Sql};
        match self {
            Statement::Sql(statement) => match statement.as_ref() {
                DfStatement::Statement(statement) => match statement.as_ref() {
                    Sql::Query(query) => {
                        !matches!(query.body.as_ref(), SetExpr::Select(select) if select.into.is_some())
                    }
                    _ => false,
                },
                _ => false,
            },
            _ => false,
        }
    }
}

/// Replaces the `$1`, `$2`, ... placeholders of a statement with bound values, as typed
/// literals in its syntax tree (never as text: a value cannot change the statement). For the
/// servers' prepared statements (Postgres extended protocol, Flight SQL).
pub fn bind(
    statement: &Statement,
    values: Vec<datafusion::scalar::ScalarValue>,
) -> Result<Statement> {
    use datafusion::sql::sqlparser::ast::{
        Expr as SqlExpr, Value, visit_expressions, visit_expressions_mut,
    };
    if values.is_empty() {
        // Nothing bound: fine, unless the statement has a parameter (a client that prepared
        // `... = $1` or `?` and sent no values): say which, rather than fail in planning.
        if let Statement::Sql(sql) = statement
            && let DfStatement::Statement(ast) = sql.as_ref()
        {
            let mut first = None;
            let _ = visit_expressions(ast.as_ref(), |expr: &SqlExpr| {
                if let SqlExpr::Value(v) = expr
                    && let Value::Placeholder(p) = &v.value
                {
                    first = Some(p.clone());
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            });
            if let Some(p) = first {
                return Err(Error::InvalidValue {
                    what: format!("parameter {p}"),
                    reason: "no value was bound".into(),
                });
            }
        }
        return Ok(statement.clone());
    }
    let not_sql = || Error::NotSupported {
        what: "parameters outside SQL statements".into(),
    };
    let Statement::Sql(sql) = statement else {
        return Err(not_sql());
    };
    let DfStatement::Statement(ast) = sql.as_ref() else {
        return Err(not_sql());
    };
    let unparser = datafusion::sql::unparser::Unparser::default();
    let mut literals = Vec::with_capacity(values.len());
    for value in values {
        let expr = datafusion::logical_expr::Expr::Literal(value, None);
        literals.push(
            unparser
                .expr_to_sql(&expr)
                .map_err(|e| Error::InvalidValue {
                    what: "a parameter".into(),
                    reason: e.to_string(),
                })?,
        );
    }
    let mut ast = ast.as_ref().clone();
    let mut missing = None;
    let _ = visit_expressions_mut(&mut ast, |expr: &mut SqlExpr| {
        if let SqlExpr::Value(v) = expr
            && let Value::Placeholder(p) = &v.value
        {
            match p
                .trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .and_then(|i| literals.get(i.wrapping_sub(1)))
            {
                Some(literal) => *expr = SqlExpr::Nested(Box::new(literal.clone())),
                None => missing = Some(p.clone()),
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if let Some(p) = missing {
        return Err(Error::InvalidValue {
            what: format!("parameter {p}"),
            reason: "no value was bound".into(),
        });
    }
    Ok(Statement::Sql(Box::new(DfStatement::Statement(Box::new(
        ast,
    )))))
}

/// Splits `sql` into statements and parses each.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    split(sql)?
        .into_iter()
        .map(|text| parse_one(&text))
        .collect()
}

/// The statements of a script, as text, without their terminating `;`. Semicolons inside
/// strings, quoted names and comments do not split.
pub fn split(sql: &str) -> Result<Vec<String>> {
    let dialect = MedlakeDialect::default();
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax {
            message: e.to_string(),
        })?;
    let offsets = LineOffsets::new(sql);
    let mut statements = Vec::new();
    let mut start: Option<usize> = None;
    for token in &tokens {
        match &token.token {
            Token::SemiColon => {
                if let Some(begin) = start.take() {
                    let end = offsets.offset(token.span.start.line, token.span.start.column);
                    statements.push(sql[begin..end].trim().to_string());
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => {
                if start.is_none() {
                    start = Some(offsets.offset(token.span.start.line, token.span.start.column));
                }
            }
        }
    }
    if let Some(begin) = start {
        statements.push(sql[begin..].trim().to_string());
    }
    Ok(statements)
}

/// Rewrites the `?` placeholders of ADBC (`paramstyle` qmark) and JDBC clients into `$1`,
/// `$2`, ... in order of appearance, so that they are described and bound as `$n` ones.
/// `?` inside strings, quoted names and comments is left alone (the text is tokenized with
/// medlake's dialect, and only placeholder tokens are replaced). SQLite-style `?NNN` becomes
/// `$NNN`. A statement that mixes `?` and `$n` is refused (`42601`): their numbering would
/// clash. For the Flight SQL door only: PostgreSQL itself refuses `?`, and so does the
/// Postgres door.
pub fn qmark_placeholders(sql: &str) -> Result<std::borrow::Cow<'_, str>> {
    if !sql.contains('?') {
        return Ok(std::borrow::Cow::Borrowed(sql));
    }
    let dialect = MedlakeDialect::default();
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(syntax)?;
    let offsets = LineOffsets::new(sql);
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    let mut next = 0usize;
    let mut dollar = false;
    for token in &tokens {
        let Token::Placeholder(p) = &token.token else {
            continue;
        };
        if p.starts_with('$') && p[1..].chars().all(|c| c.is_ascii_digit()) && p.len() > 1 {
            dollar = true;
            continue;
        }
        let Some(number) = p.strip_prefix('?') else {
            continue;
        };
        let start = offsets.offset(token.span.start.line, token.span.start.column);
        let end = offsets.offset(token.span.end.line, token.span.end.column);
        if start < copied || end < start || sql.get(start..end) != Some(p.as_str()) {
            // The tokenizer's positions do not match the text: better refuse than guess.
            return Err(syntax(format!("cannot place parameter {p}")));
        }
        out.push_str(&sql[copied..start]);
        out.push('$');
        if number.is_empty() {
            next += 1;
            out.push_str(&next.to_string());
        } else {
            out.push_str(number);
        }
        copied = end;
    }
    if copied == 0 {
        return Ok(std::borrow::Cow::Borrowed(sql));
    }
    if dollar {
        return Err(syntax(
            "a statement uses either ? or $1, $2, ... parameters, not both",
        ));
    }
    out.push_str(&sql[copied..]);
    Ok(std::borrow::Cow::Owned(out))
}

/// `?` is not a parameter in PostgreSQL's syntax (nor in medlake's): a statement with one is
/// a syntax error (`42601`), as PostgreSQL answers, rather than a placeholder that no value
/// can be bound to. The Flight SQL door numbers `?` first ([`qmark_placeholders`]).
fn refuse_question_marks(text: &str) -> Result<()> {
    if !text.contains('?') {
        return Ok(());
    }
    let dialect = MedlakeDialect::default();
    // A text the tokenizer refuses is left to the parser's own error.
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return Ok(());
    };
    match tokens
        .iter()
        .find(|t| matches!(t, Token::Placeholder(p) if p.starts_with('?')))
    {
        Some(Token::Placeholder(p)) => Err(syntax(format!(
            "syntax error at or near \"{p}\": parameters are written $1, $2, ... (? is accepted by the Flight SQL door only)"
        ))),
        _ => Ok(()),
    }
}

/// Whether `sql` ends with a `;` that closes a statement (not one inside an unterminated
/// string or comment): what an interactive prompt waits for.
pub fn ends_statement(sql: &str) -> bool {
    let dialect = MedlakeDialect::default();
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return false;
    };
    tokens
        .iter()
        .rev()
        .find(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .is_some_and(|t| *t == Token::SemiColon)
}

/// Byte offsets of (line, column) positions, as the tokenizer reports them (1-based, columns
/// counted in characters).
struct LineOffsets<'a> {
    sql: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self { sql, starts }
    }

    fn offset(&self, line: u64, column: u64) -> usize {
        let line_start = usize::try_from(line.saturating_sub(1))
            .ok()
            .and_then(|l| self.starts.get(l).copied())
            .unwrap_or(self.sql.len());
        let chars = usize::try_from(column.saturating_sub(1)).unwrap_or(0);
        self.sql[line_start..]
            .char_indices()
            .nth(chars)
            .map_or(self.sql.len(), |(i, _)| line_start + i)
    }
}

fn syntax(e: impl ToString) -> Error {
    let message = e.to_string();
    // sqlparser's errors say "sql parser error: ..." before the message; the SQLSTATE and
    // "syntax error" already say as much.
    let message = message
        .strip_prefix("sql parser error: ")
        .map(str::to_string)
        .unwrap_or(message);
    Error::Syntax { message }
}

/// DataFusion's parser error as its message: `DataFusionError::SQL` prints its sqlparser
/// error with `{:?}` (`SQL error: ParserError("Expected: ...")`), which users should not see.
fn df_syntax(e: datafusion::error::DataFusionError) -> Error {
    use datafusion::sql::sqlparser::parser::ParserError;
    match e {
        datafusion::error::DataFusionError::SQL(parser, _) => match *parser {
            ParserError::ParserError(message) | ParserError::TokenizerError(message) => {
                Error::Syntax { message }
            }
            other => syntax(other),
        },
        other => syntax(other),
    }
}

/// `UPDATE t SET a = 1, a = 2`: refused as in PostgreSQL (42601), where DataFusion would
/// keep the last.
fn check_assignments(statement: &DfStatement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{AssignmentTarget, Statement as SqlStatement};
    let DfStatement::Statement(statement) = statement else {
        return Ok(());
    };
    let SqlStatement::Update(update) = statement.as_ref() else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for assignment in &update.assignments {
        let names = match &assignment.target {
            AssignmentTarget::ColumnName(name) => vec![name],
            AssignmentTarget::Tuple(names) => names.iter().collect(),
        };
        for name in names {
            let column = name.to_string().to_lowercase();
            if !seen.insert(column.clone()) {
                return Err(syntax(format!(
                    "multiple assignments to the same column \"{column}\""
                )));
            }
        }
    }
    Ok(())
}

/// Parses one statement (no `;`).
pub fn parse_one(text: &str) -> Result<Statement> {
    let dialect = MedlakeDialect::default();
    refuse_question_marks(text)?;
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(syntax)?;
    if is_access_statement(&parser)
        && let Some(access) = crate::access::parse::parse(text)?
    {
        return Ok(Statement::Access(Box::new(access)));
    }
    if let Some(own) = parse_own(&mut parser)? {
        return Ok(own);
    }
    let mut statements = DFParser::parse_sql_with_dialect(text, &dialect).map_err(df_syntax)?;
    for statement in &statements {
        check_depth(statement)?;
        check_assignments(statement)?;
    }
    match (statements.pop_front(), statements.is_empty()) {
        (Some(DfStatement::Statement(statement)), true) => Ok(Statement::Sql(Box::new(
            DfStatement::Statement(Box::new(crate::postgres::rewrite(text, *statement))),
        ))),
        (Some(statement), true) => Ok(Statement::Sql(Box::new(statement))),
        (None, _) => Err(syntax("empty statement")),
        (Some(_), false) => Err(Error::Internal(
            "a split statement parsed as several".into(),
        )),
    }
}

use medlake_views::definition::word;

/// How deeply a statement's expressions and queries may nest (`1 + 1 + ... + 1` nests once
/// per `+`; `SELECT 1 UNION ALL ...` once per UNION). Planning recurses over them, and a
/// statement nested deeper would exhaust a thread's stack and abort the server: refused with
/// `54000` instead, as PostgreSQL refuses what exceeds its `max_stack_depth` (`54001`).
pub const MAX_DEPTH: usize = 256;

/// The most parameters a statement may number (`$65535`), as in PostgreSQL.
pub const MAX_PARAMETERS: usize = 65_535;

/// The most values one `IN (...)` list may hold: planning and pruning walk a list
/// recursively, and a list of tens of thousands overflows a worker's stack.
pub const MAX_IN_LIST: usize = 10_000;

/// The most columns a select list may have (PostgreSQL's limit on a target list).
pub const MAX_COLUMNS: usize = 1_664;

/// The most `WHEN`s of one CASE, and of one statement's CASEs together: DataFusion's
/// simplifier takes time and memory superlinear in them (1,000 took minutes), outside the
/// memory pool and `statement_timeout`.
pub const MAX_CASE_BRANCHES: usize = 256;
const MAX_STATEMENT_CASE_BRANCHES: usize = 1_024;

/// Lists shorter than this do not count towards [`MAX_IN_LIST`]: many small arrays in a bulk
/// INSERT are fine; long lists are what the planner merges (`x IN (..) OR x IN (..)` becomes
/// one list) and walks recursively.
const LONG_LIST: usize = 16;

/// The walk of [`check_depth`]: how deep it is, and what it has counted.
struct Depth {
    now: usize,
    /// Why the walk stopped, when not for depth.
    refused: Option<String>,
    /// Values in long lists (IN, arrays, function arguments) and CASE branches so far.
    values: usize,
    branches: usize,
}

impl Depth {
    /// Adds `expr`'s list values and CASE branches to the statement's; why it is too much.
    fn count(&mut self, expr: &datafusion::sql::sqlparser::ast::Expr) -> Option<String> {
        use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, FunctionArguments};
        let values = match expr {
            SqlExpr::InList { list, .. } => list.len(),
            SqlExpr::Array(array) => array.elem.len(),
            SqlExpr::Function(function) => match &function.args {
                FunctionArguments::List(list) => list.args.len(),
                _ => 0,
            },
            SqlExpr::Case { conditions, .. } => {
                self.branches += conditions.len();
                if conditions.len() > MAX_CASE_BRANCHES
                    || self.branches > MAX_STATEMENT_CASE_BRANCHES
                {
                    return Some(format!(
                        "CASE expressions with {} WHEN branches (at most {MAX_CASE_BRANCHES} in one CASE, {MAX_STATEMENT_CASE_BRANCHES} in a statement; join with a mapping table instead)",
                        self.branches.max(conditions.len())
                    ));
                }
                0
            }
            _ => 0,
        };
        if values >= LONG_LIST {
            self.values += values;
        }
        (self.values > MAX_IN_LIST).then(|| {
            format!(
                "{} values in IN lists, arrays and function arguments (at most {MAX_IN_LIST} in a statement; join with a table or VALUES instead)",
                self.values
            )
        })
    }
}

impl datafusion::sql::sqlparser::ast::Visitor for Depth {
    type Break = ();
    fn pre_visit_expr(&mut self, expr: &datafusion::sql::sqlparser::ast::Expr) -> ControlFlow<()> {
        self.now += 1;
        if self.now > MAX_DEPTH {
            return ControlFlow::Break(());
        }
        self.refused = oversized(expr).or_else(|| self.count(expr));
        if self.refused.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn post_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
    fn pre_visit_query(
        &mut self,
        query: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::SetExpr;
        if let SetExpr::Select(select) = query.body.as_ref()
            && select.projection.len() > MAX_COLUMNS
        {
            self.refused = Some(format!(
                "a select list of {} columns (at most {MAX_COLUMNS}, as in PostgreSQL)",
                select.projection.len()
            ));
            return ControlFlow::Break(());
        }
        self.pre_visit_expr(&datafusion::sql::sqlparser::ast::Expr::Value(
            datafusion::sql::sqlparser::ast::Value::Null.into(),
        ))
    }
    fn post_visit_query(&mut self, _: &datafusion::sql::sqlparser::ast::Query) -> ControlFlow<()> {
        self.post_visit_expr(&datafusion::sql::sqlparser::ast::Expr::Value(
            datafusion::sql::sqlparser::ast::Value::Null.into(),
        ))
    }
}

/// Why one expression is too large to plan safely: a parameter numbered beyond
/// [`MAX_PARAMETERS`] (describing it would allocate a slot for every number below), or an
/// `IN` list longer than [`MAX_IN_LIST`].
fn oversized(expr: &datafusion::sql::sqlparser::ast::Expr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value};
    match expr {
        SqlExpr::Value(value) => match &value.value {
            Value::Placeholder(name) => {
                let digits = name.strip_prefix('$')?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                match digits.parse::<usize>() {
                    Ok(n) if (1..=MAX_PARAMETERS).contains(&n) => None,
                    _ => Some(format!(
                        "parameter ${} is outside $1..${MAX_PARAMETERS}",
                        digits.chars().take(24).collect::<String>()
                    )),
                }
            }
            _ => None,
        },
        SqlExpr::InList { list, .. } if list.len() > MAX_IN_LIST => Some(format!(
            "an IN list of {} values (at most {MAX_IN_LIST}; join with a table or VALUES instead)",
            list.len()
        )),
        _ => None,
    }
}

/// Refuses a statement nested deeper than [`MAX_DEPTH`] (the walk stops at the limit), or
/// holding an expression too large to plan safely ([`MAX_PARAMETERS`], [`MAX_IN_LIST`]).
pub fn check_depth(statement: &DfStatement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Visit;
    let DfStatement::Statement(statement) = statement else {
        return Ok(());
    };
    let mut depth = Depth {
        now: 0,
        refused: None,
        values: 0,
        branches: 0,
    };
    let broke = statement.visit(&mut depth).is_break() || set_depth(statement) > MAX_DEPTH;
    if let Some(what) = depth.refused {
        return Err(Error::TooComplex { what });
    }
    if broke {
        return Err(Error::TooComplex {
            what: format!("the statement nests deeper than {MAX_DEPTH} levels"),
        });
    }
    Ok(())
}

/// [`check_depth`] for a query kept as text (a materialized view's), before it is planned; a
/// query that does not parse is left to its planner's error.
pub fn check_query_depth(query: &str) -> Result<()> {
    let dialect = MedlakeDialect::default();
    match DFParser::parse_sql_with_dialect(query, &dialect) {
        Ok(statements) => statements.iter().try_for_each(check_depth),
        Err(_) => Ok(()),
    }
}

/// Refuses `table_changes(...)` in a materialized view's query (its refreshes plan the query
/// themselves, where nothing replaces the call): 0A000, said plainly.
pub fn refuse_changes_in_view(query: &str) -> Result<()> {
    let dialect = MedlakeDialect::default();
    let Ok(statements) = DFParser::parse_sql_with_dialect(query, &dialect) else {
        return Ok(());
    };
    for mut statement in statements {
        let pinned = pin_versions(&mut statement, 0)?;
        if let Some(pin) = pinned.first() {
            let what = match pin.at {
                Pin::Changes { .. } => "table_changes(...)",
                Pin::History => "table_history(...)",
                Pin::AsOf(_) => "VERSION AS OF / TIMESTAMP AS OF (time travel)",
            };
            return Err(Error::NotSupported {
                what: format!("{what} in a materialized view's query"),
            });
        }
    }
    Ok(())
}

/// How deeply `UNION`/`INTERSECT`/`EXCEPT` nest in a statement's queries (not visited as
/// queries by sqlparser's visitor).
fn set_depth(statement: &datafusion::sql::sqlparser::ast::Statement) -> usize {
    use datafusion::sql::sqlparser::ast::{SetExpr, Statement as SqlStatement};
    fn of(set: &SetExpr, depth: usize) -> usize {
        if depth > MAX_DEPTH {
            return depth;
        }
        match set {
            SetExpr::SetOperation { left, right, .. } => {
                of(left, depth + 1).max(of(right, depth + 1))
            }
            SetExpr::Query(q) => of(&q.body, depth + 1),
            _ => depth,
        }
    }
    match statement {
        SqlStatement::Query(q) => of(&q.body, 0),
        SqlStatement::Insert(insert) => insert.source.as_ref().map_or(0, |q| of(&q.body, 0)),
        _ => 0,
    }
}

/// Whether the statement starts like one of [`crate::access::parse`]'s.
fn is_access_statement(parser: &Parser<'_>) -> bool {
    let [first, second] = parser.peek_tokens::<2>();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    is(&first, "GRANT")
        || is(&first, "REVOKE")
        || is(&first, "ALTER")
        || ((is(&first, "CREATE") || is(&first, "DROP")) && is(&second, "ROLE"))
        || (is(&first, "SHOW") && is(&second, "GRANTS"))
}

fn expect_end(parser: &mut Parser<'_>, statement: &str) -> Result<()> {
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(syntax(format!("unexpected '{other}' in {statement}"))),
    }
}

/// The longest `VACUUM ... RETAIN n HOURS`: 100 years. Bounded so that the retention always
/// converts to a `chrono` duration and a cutoff instant (a larger one was an internal error).
pub const MAX_RETAIN_HOURS: u64 = 876_000;

/// medlake's own statements, or `None` to hand the text to DataFusion.
fn parse_own(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    let first = parser.peek_token().token;
    let Token::Word(first) = first else {
        return Ok(None);
    };
    let head = first.value.to_ascii_uppercase();
    let second_is = |parser: &Parser<'_>, word: &str| {
        let [_, second] = parser.peek_tokens::<2>();
        matches!(&second, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
    };
    if matches!(
        head.as_str(),
        "CREATE" | "DROP" | "ACKNOWLEDGE" | "SHOW" | "LISTEN" | "UNLISTEN"
    ) && let Some(alert) = medlake_alerts::rule::parse(parser)?
    {
        return Ok(Some(Statement::Alert(alert)));
    }
    match head.as_str() {
        "CREATE" if second_is(parser, "TABLE") && is_clone(parser) => parse_clone(parser),
        "CREATE" => Ok(medlake_views::parse_create(parser)?
            .map(|create| Statement::CreateMaterializedView(Box::new(create)))),
        "REFRESH" => parse_refresh(parser),
        "EXPLAIN" if second_is(parser, "REFRESH") => {
            parser.next_token();
            let Some(Statement::RefreshMaterializedView {
                name,
                full,
                cascade,
            }) = parse_refresh(parser)?
            else {
                return Err(syntax("expected REFRESH MATERIALIZED VIEW after EXPLAIN"));
            };
            if full || cascade {
                return Err(syntax(
                    "EXPLAIN REFRESH MATERIALIZED VIEW takes a view name only (no FULL or CASCADE)",
                ));
            }
            Ok(Some(Statement::ExplainRefresh { name }))
        }
        "DROP" if second_is(parser, "MATERIALIZED") => parse_drop_materialized_view(parser),
        "SHOW" if second_is(parser, "MATERIALIZED") => parse_show_materialized_views(parser),
        "DESCRIBE" | "DESC" => parse_describe_history(parser),
        "OPTIMIZE" => parse_optimize(parser),
        "ALTER" if second_is(parser, "TABLE") => parse_alter_table(parser),
        "IMPORT" => parse_import_foreign_schema(parser),
        "VACUUM" => parse_vacuum(parser),
        "RESTORE" => parse_restore(parser),
        "ERASE" => parse_erase(parser),
        _ => Ok(None),
    }
}

/// `REFRESH MATERIALIZED VIEW name [FULL] [CASCADE]`.
fn parse_refresh(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    if !word(parser, "MATERIALIZED") || !word(parser, "VIEW") {
        return Err(syntax("expected MATERIALIZED VIEW after REFRESH"));
    }
    let name = parser.parse_object_name(false).map_err(syntax)?;
    let mut full = false;
    let mut cascade = false;
    loop {
        if word(parser, "FULL") {
            full = true;
        } else if parser.parse_keyword(Keyword::CASCADE) {
            cascade = true;
        } else {
            break;
        }
    }
    expect_end(parser, "REFRESH MATERIALIZED VIEW")?;
    Ok(Some(Statement::RefreshMaterializedView {
        name,
        full,
        cascade,
    }))
}

/// `DROP MATERIALIZED VIEW [IF EXISTS] name`.
fn parse_drop_materialized_view(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    parser.next_token();
    if !word(parser, "VIEW") {
        return Err(syntax("expected VIEW after DROP MATERIALIZED"));
    }
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = parser.parse_object_name(false).map_err(syntax)?;
    expect_end(parser, "DROP MATERIALIZED VIEW")?;
    Ok(Some(Statement::DropMaterializedView { name, if_exists }))
}

/// `SHOW MATERIALIZED VIEWS`.
fn parse_show_materialized_views(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    parser.next_token();
    if !word(parser, "VIEWS") {
        return Err(syntax("expected VIEWS after SHOW MATERIALIZED"));
    }
    expect_end(parser, "SHOW MATERIALIZED VIEWS")?;
    Ok(Some(Statement::ShowMaterializedViews))
}

/// `DESCRIBE HISTORY table [LIMIT n]` (`None`: a plain DESCRIBE, for DataFusion).
fn parse_describe_history(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    let [_, second] = parser.peek_tokens::<2>();
    if !matches!(&second, Token::Word(w) if w.value.eq_ignore_ascii_case("HISTORY")) {
        return Ok(None);
    }
    parser.next_token();
    parser.next_token();
    let table = parser.parse_object_name(false).map_err(syntax)?;
    let limit = if parser.parse_keyword(Keyword::LIMIT) {
        // u64 by the parser (larger is a syntax error); usize may be narrower.
        let n = parser.parse_literal_uint().map_err(syntax)?;
        Some(usize::try_from(n).map_err(|_| Error::InvalidValue {
            what: "DESCRIBE HISTORY LIMIT".into(),
            reason: format!("{n} is too large"),
        })?)
    } else {
        None
    };
    expect_end(parser, "DESCRIBE HISTORY")?;
    Ok(Some(Statement::DescribeHistory { table, limit }))
}

/// `ALTER TABLE name CLUSTER BY (columns) | CLUSTER BY NONE` (the list parsed as a view's)
/// and `ALTER TABLE name SET TBLPROPERTIES ('key' = 'value', ...)`; any other ALTER TABLE is
/// not ours (`None`: DataFusion's, which refuses it).
fn parse_alter_table(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    parser.next_token();
    let Ok(table) = parser.parse_object_name(false) else {
        return Ok(None);
    };
    if parser.parse_keyword(Keyword::SET) {
        if !word(parser, "TBLPROPERTIES") {
            return Ok(None);
        }
        let properties = parse_properties(parser)?;
        expect_end(parser, "ALTER TABLE ... SET TBLPROPERTIES")?;
        return Ok(Some(Statement::SetTableProperties { table, properties }));
    }
    if !word(parser, "CLUSTER") {
        return Ok(None);
    }
    if !parser.parse_keyword(Keyword::BY) {
        return Err(syntax("expected BY after CLUSTER"));
    }
    let columns = if word(parser, "NONE") {
        Vec::new()
    } else {
        medlake_views::definition::parse_cluster_by(parser)?
    };
    expect_end(parser, "ALTER TABLE ... CLUSTER BY")?;
    Ok(Some(Statement::ClusterBy { table, columns }))
}

/// `('key' = 'value', ...)`: string literals, at least one pair.
fn parse_properties(parser: &mut Parser<'_>) -> Result<Vec<(String, String)>> {
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let mut properties = Vec::new();
    loop {
        let key = parser.parse_literal_string().map_err(syntax)?;
        parser.expect_token(&Token::Eq).map_err(syntax)?;
        let value = parser.parse_literal_string().map_err(syntax)?;
        properties.push((key, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen).map_err(syntax)?;
    Ok(properties)
}

/// `OPTIMIZE [TABLE] name [ZORDER BY (columns)]`.
fn parse_optimize(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    let _table_keyword = parser.parse_keyword(Keyword::TABLE);
    let table = parser.parse_object_name(false).map_err(syntax)?;
    let mut zorder = Vec::new();
    if word(parser, "ZORDER") {
        if !parser.parse_keyword(Keyword::BY) {
            return Err(syntax("expected BY after ZORDER"));
        }
        let parenthesized = parser.consume_token(&Token::LParen);
        loop {
            let ident = parser.parse_identifier().map_err(syntax)?;
            zorder.push(normalize(&ident));
            if !parser.consume_token(&Token::Comma) {
                break;
            }
        }
        if parenthesized {
            parser.expect_token(&Token::RParen).map_err(syntax)?;
        }
    }
    expect_end(parser, "OPTIMIZE")?;
    Ok(Some(Statement::Optimize { table, zorder }))
}

/// `IMPORT FOREIGN SCHEMA remote [LIMIT TO | EXCEPT (names)] FROM KIND 'location' INTO local [OPTIONS (...)]`.
fn parse_import_foreign_schema(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    if !word(parser, "FOREIGN") || !parser.parse_keyword(Keyword::SCHEMA) {
        return Err(syntax("expected FOREIGN SCHEMA after IMPORT"));
    }
    let remote_schema = parser.parse_identifier().map_err(syntax)?.value;
    let only = if parser.parse_keywords(&[Keyword::LIMIT, Keyword::TO]) {
        Some(true)
    } else if parser.parse_keyword(Keyword::EXCEPT) {
        Some(false)
    } else {
        None
    };
    let only = match only {
        None => None,
        Some(limit_to) => {
            parser.expect_token(&Token::LParen).map_err(syntax)?;
            let mut names = Vec::new();
            loop {
                names.push(parser.parse_identifier().map_err(syntax)?.value);
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser.expect_token(&Token::RParen).map_err(syntax)?;
            Some((limit_to, names))
        }
    };
    if !parser.parse_keyword(Keyword::FROM) {
        return Err(syntax(
            "expected FROM SQLSERVER 'sqlserver://host/database' in IMPORT FOREIGN SCHEMA",
        ));
    }
    let kind = parser
        .parse_identifier()
        .map_err(syntax)?
        .value
        .to_ascii_uppercase();
    let location = parser.parse_literal_string().map_err(syntax)?;
    if !parser.parse_keyword(Keyword::INTO) {
        return Err(syntax(
            "expected INTO local_schema in IMPORT FOREIGN SCHEMA",
        ));
    }
    let into = normalize(&parser.parse_identifier().map_err(syntax)?);
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::OPTIONS) {
        parser.expect_token(&Token::LParen).map_err(syntax)?;
        loop {
            let key = parser.parse_literal_string().map_err(syntax)?;
            let value = parser.parse_literal_string().map_err(syntax)?;
            options.push((key.to_ascii_lowercase(), value));
            if !parser.consume_token(&Token::Comma) {
                break;
            }
        }
        parser.expect_token(&Token::RParen).map_err(syntax)?;
    }
    expect_end(parser, "IMPORT FOREIGN SCHEMA")?;
    Ok(Some(Statement::ImportForeignSchema(Box::new(
        ImportForeignSchema {
            remote_schema,
            only,
            kind,
            location,
            into,
            options,
        },
    ))))
}

/// `RESTORE [TABLE] name TO VERSION AS OF n | TO TIMESTAMP AS OF 'ts'`.
fn parse_restore(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    const FORM: &str = "RESTORE TABLE name TO VERSION AS OF n | TO TIMESTAMP AS OF '...'";
    parser.next_token();
    let _table_keyword = parser.parse_keyword(Keyword::TABLE);
    let table = parser.parse_object_name(false).map_err(syntax)?;
    if !parser.parse_keyword(Keyword::TO) {
        return Err(syntax(format!("expected TO after the table name: {FORM}")));
    }
    let Some(to) = parse_as_of(parser, FORM)? else {
        return Err(syntax(format!(
            "expected VERSION or TIMESTAMP after TO: {FORM}"
        )));
    };
    expect_end(parser, "RESTORE TABLE")?;
    Ok(Some(Statement::RestoreTable { table, to }))
}

/// `VERSION AS OF n` or `TIMESTAMP AS OF 'ts'`; `None` if neither comes next.
fn parse_as_of(parser: &mut Parser<'_>, form: &str) -> Result<Option<TimeTravel>> {
    let version = word(parser, "VERSION");
    if !version && !parser.parse_keyword(Keyword::TIMESTAMP) {
        return Ok(None);
    }
    if !parser.parse_keywords(&[Keyword::AS, Keyword::OF]) {
        return Err(syntax(format!("expected AS OF: {form}")));
    }
    Ok(Some(if version {
        TimeTravel::Version(parser.parse_literal_uint().map_err(syntax)?)
    } else {
        let text = parser.parse_literal_string().map_err(syntax)?;
        TimeTravel::Timestamp(parse_timestamp(&text)?)
    }))
}

/// Whether a `CREATE TABLE` is a clone: `SHALLOW`/`DEEP` `CLONE` right after its name
/// (nothing like a column list or `AS` before).
fn is_clone(parser: &Parser<'_>) -> bool {
    let tokens = parser.peek_tokens::<12>();
    for pair in tokens.windows(2) {
        let is =
            |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
        if (is(&pair[0], "SHALLOW") || is(&pair[0], "DEEP")) && is(&pair[1], "CLONE") {
            return true;
        }
        if matches!(pair[0], Token::LParen | Token::EOF) || is(&pair[0], "AS") {
            return false;
        }
    }
    false
}

/// `CREATE TABLE [IF NOT EXISTS] t SHALLOW | DEEP CLONE s [VERSION AS OF n | TIMESTAMP AS OF 'ts']`.
fn parse_clone(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    const FORM: &str =
        "CREATE TABLE t SHALLOW | DEEP CLONE s [VERSION AS OF n | TIMESTAMP AS OF '...']";
    parser.next_token();
    parser.next_token();
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let target = parser.parse_object_name(false).map_err(syntax)?;
    let deep = word(parser, "DEEP");
    if !deep && !word(parser, "SHALLOW") || !word(parser, "CLONE") {
        return Err(syntax(format!(
            "expected SHALLOW CLONE or DEEP CLONE: {FORM}"
        )));
    }
    let source = parser.parse_object_name(false).map_err(syntax)?;
    let at = parse_as_of(parser, FORM)?;
    expect_end(parser, "CREATE TABLE ... CLONE")?;
    Ok(Some(Statement::CloneTable {
        target,
        source,
        at,
        deep,
        if_not_exists,
    }))
}

/// `VACUUM name [RETAIN n HOURS] [DRY RUN] [FORCE]`.
fn parse_vacuum(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    let table = parser.parse_object_name(false).map_err(syntax)?;
    let mut retain_hours = None;
    let mut dry_run = false;
    let mut force = false;
    loop {
        if word(parser, "RETAIN") {
            let hours = parser.parse_literal_uint().map_err(syntax)?;
            if hours > MAX_RETAIN_HOURS {
                return Err(Error::InvalidValue {
                    what: "VACUUM RETAIN".into(),
                    reason: format!(
                        "{hours} hours is outside the allowed range of 0 to {MAX_RETAIN_HOURS} hours (100 years)"
                    ),
                });
            }
            retain_hours = Some(hours);
            if !word(parser, "HOURS") && !word(parser, "HOUR") {
                return Err(syntax("expected HOURS after RETAIN n"));
            }
        } else if word(parser, "DRY") {
            if !word(parser, "RUN") {
                return Err(syntax("expected RUN after DRY"));
            }
            dry_run = true;
        } else if word(parser, "FORCE") {
            force = true;
        } else {
            break;
        }
    }
    expect_end(parser, "VACUUM")?;
    Ok(Some(Statement::Vacuum {
        table,
        retain_hours,
        dry_run,
        force,
    }))
}

/// Most identifiers one `ERASE PATIENT` names, and the longest one.
const MAX_ERASE_IDENTIFIERS: usize = 32;
const MAX_IDENTIFIER_LENGTH: usize = 256;

/// `ERASE PATIENT 'id' [, ...] [IN COLUMNS (c, ...)] [DRY RUN]`: identifiers are string or
/// integer literals (never parameters: the statement is an operator's, typed or scripted).
fn parse_erase(parser: &mut Parser<'_>) -> Result<Option<Statement>> {
    parser.next_token();
    if !word(parser, "PATIENT") {
        return Err(syntax("expected PATIENT after ERASE"));
    }
    let mut identifiers = Vec::new();
    loop {
        let value = match parser.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            _ => {
                return Err(syntax(
                    "ERASE PATIENT takes identifiers as string or integer literals",
                ));
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() || value.chars().count() > MAX_IDENTIFIER_LENGTH {
            return Err(Error::InvalidValue {
                what: "ERASE PATIENT".into(),
                reason: format!("an identifier must have 1 to {MAX_IDENTIFIER_LENGTH} characters"),
            });
        }
        identifiers.push(value);
        if identifiers.len() > MAX_ERASE_IDENTIFIERS {
            return Err(Error::InvalidValue {
                what: "ERASE PATIENT".into(),
                reason: format!("at most {MAX_ERASE_IDENTIFIERS} identifiers at once"),
            });
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    let mut columns = Vec::new();
    let mut dry_run = false;
    loop {
        if parser.parse_keyword(Keyword::IN) {
            if !word(parser, "COLUMNS") {
                return Err(syntax("expected COLUMNS after IN"));
            }
            let idents = parser
                .parse_parenthesized_column_list(
                    datafusion::sql::sqlparser::parser::IsOptional::Mandatory,
                    false,
                )
                .map_err(syntax)?;
            if idents.len() > MAX_ERASE_IDENTIFIERS {
                return Err(syntax("too many columns in IN COLUMNS"));
            }
            columns = idents.iter().map(normalize).collect();
        } else if word(parser, "DRY") {
            if !word(parser, "RUN") {
                return Err(syntax("expected RUN after DRY"));
            }
            dry_run = true;
        } else {
            break;
        }
    }
    expect_end(parser, "ERASE PATIENT")?;
    Ok(Some(Statement::Erase(crate::erase::Erase {
        identifiers,
        columns,
        dry_run,
    })))
}

pub use medlake_views::definition::normalize;

/// The identifier parts of a name, normalized.
/// Takes `CLUSTER BY (a, b)` (or `CLUSTER BY a, b`) off a `CREATE TABLE`, which DataFusion
/// refuses, and returns its column names (normalized as identifiers; none for any other
/// statement). Anything but distinct column names is a syntax error.
pub fn take_cluster_by(statement: &mut DfStatement) -> Result<Vec<String>> {
    use datafusion::sql::sqlparser::ast::{Statement as Sql, WrappedCollection};
    let DfStatement::Statement(ast) = statement else {
        return Ok(Vec::new());
    };
    let Sql::CreateTable(create) = ast.as_mut() else {
        return Ok(Vec::new());
    };
    let Some(clause) = create.cluster_by.take() else {
        return Ok(Vec::new());
    };
    let (WrappedCollection::NoWrapping(exprs) | WrappedCollection::Parentheses(exprs)) = clause;
    fn names(expr: &Expr, columns: &mut Vec<String>) -> Result<()> {
        match expr {
            Expr::Identifier(ident) => {
                let column = normalize(ident);
                if columns.contains(&column) {
                    return Err(syntax(format!(
                        "column \"{column}\" is named twice in CLUSTER BY"
                    )));
                }
                columns.push(column);
                Ok(())
            }
            Expr::Nested(inner) => names(inner, columns),
            Expr::Tuple(items) => items.iter().try_for_each(|e| names(e, columns)),
            other => Err(syntax(format!(
                "CLUSTER BY takes column names, not {other}"
            ))),
        }
    }
    let mut columns = Vec::new();
    for expr in &exprs {
        names(expr, &mut columns)?;
    }
    Ok(columns)
}

pub fn name_parts(name: &ObjectName) -> Result<Vec<String>> {
    Ok(medlake_views::definition::name_parts(name)?)
}

/// What a pinned table reference reads of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `t VERSION AS OF n` / `t TIMESTAMP AS OF '...'`: a past state.
    AsOf(TimeTravel),
    /// `table_changes('t', from [, to])`: the changes of a range of commits.
    Changes {
        from: TimeTravel,
        to: Option<TimeTravel>,
    },
    /// `table_history('t' [, limit])`: the table's commit history. The call stays as it is
    /// (a table function); the pin makes the statement need SELECT on `t`.
    History,
}

/// A table reference that asked for a past version or for changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedTable {
    /// The name as written (normalized parts).
    pub parts: Vec<String>,
    /// What it reads.
    pub at: Pin,
    /// The name the statement now uses for it, in the time-travel schema.
    pub alias: String,
}

/// Replaces every `t VERSION AS OF n` / `t TIMESTAMP AS OF '...'` and every
/// `table_changes('t', ...)` in the statement by a reference into the time-travel schema,
/// and returns what must be registered there. The alias names the table (`schema.table@…`),
/// which is what privileges, masks and row filters see. `tag` makes the names unique to the
/// statement.
pub fn pin_versions(statement: &mut DfStatement, tag: u64) -> Result<Vec<PinnedTable>> {
    let mut pinner = Pinner {
        tag,
        pinned: Vec::new(),
        error: None,
    };
    match statement {
        DfStatement::Statement(s) => {
            let _ = s.visit(&mut pinner);
        }
        DfStatement::Explain(explain) => return pin_versions(&mut explain.statement, tag),
        _ => {}
    }
    match pinner.error {
        Some(e) => Err(e),
        None => Ok(pinner.pinned),
    }
}

struct Pinner {
    tag: u64,
    pinned: Vec<PinnedTable>,
    error: Option<Error>,
}

impl VisitorMut for Pinner {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            version,
            args,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        // The pinned versions' schema is internal: a statement names its own pins through
        // `VERSION AS OF`, never another statement's by their names.
        if name
            .0
            .iter()
            .any(|part| part.as_ident().is_some_and(|i| internal(&i.value)))
        {
            self.error = Some(internal_named());
            return ControlFlow::Break(());
        }
        if version.is_none() && is_function(name, crate::history::FUNCTION) {
            let target = args.as_ref().and_then(|call| match call.args.first() {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => {
                    match &v.value {
                        Value::SingleQuotedString(text) => crate::history::target_parts(text),
                        _ => None,
                    }
                }
                _ => None,
            });
            // Every call must name its table where this can read it: the plan's check skips
            // the function's scan, trusting this pin.
            let Some(parts) = target else {
                self.error = Some(Error::InvalidValue {
                    what: crate::history::FUNCTION.into(),
                    reason: "it takes a table name as a string and an optional limit: \
                             table_history('bronze.readings', 10)"
                        .into(),
                });
                return ControlFlow::Break(());
            };
            if parts.iter().any(|p| internal(p)) {
                self.error = Some(internal_named());
                return ControlFlow::Break(());
            }
            self.pinned.push(PinnedTable {
                parts,
                at: Pin::History,
                alias: String::new(),
            });
            return ControlFlow::Continue(());
        }
        let changes = args.is_some() && crate::changes::is_call(name);
        let resolved = match (version.take(), args.take()) {
            (None, Some(call)) if changes => crate::changes::parse_call(&call).map(|call| {
                let at = Pin::Changes {
                    from: call.from,
                    to: call.to,
                };
                (call.parts, at)
            }),
            (None, call) => {
                // Not ours (a plain table, or another table function): as it was.
                *args = call;
                return ControlFlow::Continue(());
            }
            (Some(_), Some(_)) => Err(Error::NotSupported {
                what: "VERSION AS OF on a table function".into(),
            }),
            (Some(spec), None) => {
                time_travel(&spec).and_then(|at| Ok((name_parts(name)?, Pin::AsOf(at))))
            }
        };
        match resolved {
            // Nor through a name written in table_changes' string.
            Ok((parts, _)) if parts.iter().any(|p| internal(p)) => {
                self.error = Some(internal_named());
                ControlFlow::Break(())
            }
            Ok((parts, at)) => {
                let alias = format!("{}@{}#{}", parts.join("."), self.pinned.len(), self.tag);
                *name = ObjectName::from(vec![
                    Ident::with_quote('"', crate::catalog::CATALOG),
                    Ident::with_quote('"', crate::catalog::TIME_TRAVEL_SCHEMA),
                    Ident::with_quote('"', alias.clone()),
                ]);
                self.pinned.push(PinnedTable { parts, at, alias });
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// Whether `name` is the one-part name of the table function `function`.
fn is_function(name: &ObjectName, function: &str) -> bool {
    match name.0.as_slice() {
        [part] => part.as_ident().is_some_and(|i| normalize(i) == function),
        _ => false,
    }
}

fn internal(part: &str) -> bool {
    part.eq_ignore_ascii_case(crate::catalog::TIME_TRAVEL_SCHEMA)
}

fn internal_named() -> Error {
    Error::PermissionDenied {
        principal: "this session".into(),
        privilege: "SELECT",
        object: format!(
            "schema {} (internal: read a past version with VERSION AS OF)",
            crate::catalog::TIME_TRAVEL_SCHEMA
        ),
    }
}

fn time_travel(spec: &TableVersion) -> Result<TimeTravel> {
    let literal = |expr: &Expr| -> Option<Value> {
        match expr {
            Expr::Value(v) => Some(v.value.clone()),
            Expr::TypedString(t) => Some(t.value.value.clone()),
            Expr::Cast { expr, .. } | Expr::Nested(expr) => match expr.as_ref() {
                Expr::Value(v) => Some(v.value.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    match spec {
        TableVersion::VersionAsOf(expr) => match literal(expr) {
            Some(Value::Number(n, _)) => {
                n.parse::<u64>()
                    .map(TimeTravel::Version)
                    .map_err(|_| Error::InvalidValue {
                        what: "VERSION AS OF".into(),
                        reason: format!("'{n}' is not a table version (a whole number)"),
                    })
            }
            _ => Err(Error::InvalidValue {
                what: "VERSION AS OF".into(),
                reason: format!("expected a version number, found {expr}"),
            }),
        },
        TableVersion::TimestampAsOf(expr) | TableVersion::ForSystemTimeAsOf(expr) => {
            match literal(expr) {
                Some(Value::SingleQuotedString(s) | Value::DoubleQuotedString(s)) => {
                    parse_timestamp(&s).map(TimeTravel::Timestamp)
                }
                _ => Err(Error::InvalidValue {
                    what: "TIMESTAMP AS OF".into(),
                    reason: format!(
                        "expected a timestamp literal such as '2026-11-23 10:00:00', found {expr}"
                    ),
                }),
            }
        }
        other => Err(Error::NotSupported {
            what: format!("table version clause {other}"),
        }),
    }
}

/// Timestamps as users write them: RFC 3339, or `YYYY-MM-DD[ HH:MM:SS[.fff]]` in UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(s) {
        return Ok(ts.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(ts) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(ts.and_utc());
        }
    }
    if let Some(ts) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(ts.and_utc());
    }
    Err(Error::InvalidValue {
        what: "TIMESTAMP AS OF".into(),
        reason: format!(
            "'{s}' is not a timestamp; write it as '2026-11-23 10:00:00' (UTC) or in RFC 3339"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_by_of(sql: &str) -> Result<(Vec<String>, String)> {
        let Statement::Sql(mut statement) = parse_one(sql)? else {
            panic!("{sql} is not DataFusion's");
        };
        let columns = take_cluster_by(&mut statement)?;
        Ok((columns, statement.to_string()))
    }

    #[test]
    fn cluster_by_comes_off_create_table_as_its_column_names() {
        let (columns, rest) =
            cluster_by_of("CREATE TABLE t (a INT, \"B\" INT) CLUSTER BY (a, \"B\")").unwrap();
        assert_eq!(columns, ["a", "B"]);
        assert!(!rest.to_uppercase().contains("CLUSTER"), "{rest}");
        let (columns, _) =
            cluster_by_of("create table t cluster by A, b as select 1 as a, 2 as b").unwrap();
        assert_eq!(columns, ["a", "b"]);
        let (columns, _) = cluster_by_of("CREATE TABLE t (a INT)").unwrap();
        assert!(columns.is_empty());
        let (columns, _) = cluster_by_of("SELECT 1").unwrap();
        assert!(columns.is_empty());
        for bad in [
            "CREATE TABLE t (a INT) CLUSTER BY (a, a)",
            "CREATE TABLE t (a INT) CLUSTER BY (a + 1)",
            "CREATE TABLE t (a INT) CLUSTER BY (lower(a))",
        ] {
            let e = cluster_by_of(bad).unwrap_err();
            assert_eq!(e.code(), crate::Code::SyntaxError, "{bad}: {e}");
        }
    }

    #[test]
    fn splits_on_semicolons_outside_strings_and_comments() {
        let parts = split("select 'a;b'; -- c;d\n select \"x;y\" from t;\n\n;").unwrap();
        // Comments between statements belong to neither.
        assert_eq!(parts, vec!["select 'a;b'", "select \"x;y\" from t"]);
    }

    #[test]
    fn question_marks_become_numbered_placeholders_outside_strings_and_comments() {
        let q = |s| qmark_placeholders(s).map(|c| c.into_owned());
        assert_eq!(
            q("SELECT a FROM t WHERE b > ? AND c = ?").unwrap(),
            "SELECT a FROM t WHERE b > $1 AND c = $2"
        );
        assert_eq!(
            q("SELECT '?', \"what?\", ? -- really?\n/* ? */ FROM t WHERE x IN (?, ?)").unwrap(),
            "SELECT '?', \"what?\", $1 -- really?\n/* ? */ FROM t WHERE x IN ($2, $3)"
        );
        // Non-ASCII text before a placeholder, and on another line.
        assert_eq!(
            q("SELECT 'ä€' AS größe,\n ?").unwrap(),
            "SELECT 'ä€' AS größe,\n $1"
        );
        assert_eq!(q("SELECT ?2, ?1").unwrap(), "SELECT $2, $1");
        assert_eq!(q("SELECT $1, '?'").unwrap(), "SELECT $1, '?'");
        assert_eq!(q("SELECT 1").unwrap(), "SELECT 1");
        assert!(matches!(
            q("SELECT $1, ?").unwrap_err(),
            Error::Syntax { .. }
        ));
        assert!(q("SELECT 'unterminated ?").is_err());
        // Unrewritten, `?` is a syntax error (as in PostgreSQL); in a string it is text.
        assert!(matches!(
            parse_one("SELECT 1 WHERE 2 > ?").unwrap_err(),
            Error::Syntax { .. }
        ));
        assert!(parse_one("SELECT '?' -- ?").is_ok());
        // The rewritten statement parses and its placeholders bind as $n ones.
        let statement = parse_one(&q("SELECT ? + 1 AS x").unwrap()).unwrap();
        assert!(
            bind(
                &statement,
                vec![datafusion::scalar::ScalarValue::Int64(Some(41))]
            )
            .is_ok()
        );
    }

    #[test]
    fn knows_when_a_statement_ends() {
        assert!(ends_statement("select 1;\n"));
        assert!(ends_statement("select 1; -- done\n"));
        assert!(!ends_statement("select ';"));
        assert!(!ends_statement("select 1"));
    }

    #[test]
    fn parses_own_statements() {
        let s = parse("describe history bronze.t limit 3; optimize gold.x zorder by (a, b); vacuum t retain 0 hours dry run force").unwrap();
        assert!(matches!(
            &s[0],
            Statement::DescribeHistory { limit: Some(3), .. }
        ));
        assert!(matches!(&s[1], Statement::Optimize { zorder, .. } if zorder == &["a", "b"]));
        assert!(matches!(
            &s[2],
            Statement::Vacuum {
                retain_hours: Some(0),
                dry_run: true,
                force: true,
                ..
            }
        ));
        assert!(matches!(
            parse("describe bronze.t").unwrap()[0],
            Statement::Sql(_)
        ));
    }

    #[test]
    fn pins_versions() {
        let mut s = parse("select * from bronze.t version as of 3 join t2 timestamp as of '2026-11-23 10:00:00' on true")
            .unwrap();
        let Statement::Sql(stmt) = &mut s[0] else {
            panic!("not sql")
        };
        let pinned = pin_versions(stmt, 7).unwrap();
        assert_eq!(pinned.len(), 2);
        assert_eq!(pinned[0].at, Pin::AsOf(TimeTravel::Version(3)));
        assert_eq!(pinned[0].parts, vec!["bronze", "t"]);
        assert!(matches!(pinned[1].at, Pin::AsOf(TimeTravel::Timestamp(_))));
        assert!(stmt.to_string().contains("__medlake_time_travel"));
    }

    #[test]
    fn bad_timestamps_are_clear() {
        let err = parse_timestamp("yesterday").unwrap_err().to_string();
        assert!(err.contains("'yesterday' is not a timestamp"), "{err}");
    }

    /// Numbers in our own statements are bounded: `VACUUM RETAIN` to 100 years (22023 past
    /// it), `LIMIT` and `VERSION AS OF` to what the parser's u64 holds (a syntax error past).
    #[test]
    fn numbers_in_own_statements_are_bounded() {
        let retain = |h: &str| parse(&format!("vacuum t retain {h} hours"));
        assert!(retain("876000").is_ok());
        for h in ["876001", "9223372036854775807", "18446744073709551615"] {
            let e = retain(h).unwrap_err();
            assert_eq!(e.code(), crate::Code::InvalidParameterValue, "{h}: {e}");
        }
        for h in ["18446744073709551616", "-1", "1e300", "NaN", "1.5"] {
            assert!(retain(h).is_err(), "{h}");
        }
        assert!(parse("describe history t limit 18446744073709551615").is_ok());
        assert!(parse("describe history t limit 18446744073709551616").is_err());
        assert!(parse("describe history t limit -1").is_err());
        let e = parse(
            "create materialized view v refresh every '9223372036854775807 seconds' as select 1",
        )
        .unwrap_err();
        assert_eq!(e.code(), crate::Code::InvalidParameterValue, "{e}");
        let e = parse("create materialized view v refresh cron '*/99 * * * 9' as select 1")
            .unwrap_err();
        assert_eq!(e.code(), crate::Code::InvalidParameterValue, "{e}");
    }

    /// The statement parser over hostile inputs: `Ok` or `Err`, never a panic. (The fuzz
    /// target `statement` does the same with generated inputs.)
    #[test]
    fn hostile_statements_never_panic() {
        let long = "9".repeat(100_000);
        let deep = format!("select {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let corpus = [
            String::new(),
            ";".into(),
            ";;;".into(),
            "\u{0}".into(),
            "'".into(),
            "\"".into(),
            "/*".into(),
            "$$".into(),
            "é😀".into(),
            "describe history t limit".into(),
            format!("describe history t limit {long}"),
            format!("vacuum t retain {long} hours"),
            "vacuum t retain 1 hours retain 2 hours".into(),
            "vacuum".into(),
            "optimize".into(),
            "optimize t zorder by (".into(),
            "restore t".into(),
            "restore table t to version 3".into(),
            "restore table t to version as of -1".into(),
            "restore table t to timestamp as of 'yesterday'".into(),
            "restore table t to version as of 1 extra".into(),
            "create table t deep clone".into(),
            "create table t shallow clone s version as of x".into(),
            "create table t deep clone s timestamp as of 'whenever'".into(),
            "import foreign schema".into(),
            "refresh materialized view".into(),
            "drop materialized".into(),
            "create materialized view".into(),
            "create materialized view v refresh every".into(),
            "create materialized view v refresh every '' as select 1".into(),
            format!("create materialized view v refresh every '{long} s' as select 1"),
            "create materialized view v refresh cron '*/4294967295 * * * *' as select 1".into(),
            format!("select * from t version as of {long}"),
            "select * from t version as of -1".into(),
            "select * from t version as of 1e300".into(),
            "select * from t timestamp as of '99999-99-99'".into(),
            "select * from t timestamp as of '+262143-12-31T23:59:59Z'".into(),
            deep,
            format!("select {}", "1+".repeat(10_000) + "1"),
        ];
        for sql in &corpus {
            let _ = parse(sql);
            let _ = split(sql);
            let _ = ends_statement(sql);
        }
    }
}
