//! T-SQL to DataFusion: parse with sqlparser's MsSqlDialect and rewrite the T-SQL-isms
//! (TOP, OFFSET/FETCH, brackets, three-part names, @parameters, COUNT_BIG, CONVERT, T-SQL type
//! names, case-insensitive names) into a statement DataFusion plans.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use chrono::NaiveDate;
use datafusion::sql::sqlparser::ast::{
    self, CastKind, DataType as SqlDataType, ExactNumberInfo, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArguments, Ident, LimitClause, ObjectName, ObjectNamePart, Query,
    Select, SelectItem, SetExpr, Statement, TableFactor, TimezoneInfo, Value, ValueWithSpan,
    VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::MsSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

use crate::catalog::Key;
use crate::request::Value as ParamValue;
use crate::tracking::CHANGES_FUNCTION;
use crate::types::SqlType;

/// A T-SQL error as SQL Server reports it (ERROR token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Msg {number}, Level {class}, State {state}: {message}")]
pub(crate) struct SqlError {
    pub number: u32,
    pub state: u8,
    pub class: u8,
    pub message: String,
}

impl SqlError {
    pub(crate) fn new(number: u32, class: u8, message: impl Into<String>) -> Self {
        SqlError {
            number,
            state: 1,
            class,
            message: message.into(),
        }
    }

    /// A user error without a specific SQL Server number.
    pub(crate) fn general(message: impl Into<String>) -> Self {
        SqlError::new(50000, 16, message)
    }

    pub(crate) fn syntax(near: &str) -> Self {
        SqlError::new(102, 15, format!("Incorrect syntax near '{near}'."))
    }

    pub(crate) fn invalid_object(name: &str) -> Self {
        SqlError::new(208, 16, format!("Invalid object name '{name}'."))
    }

    pub(crate) fn invalid_column(name: &str) -> Self {
        SqlError::new(207, 16, format!("Invalid column name '{name}'."))
    }
}

/// The name SQL Server gives an output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutName {
    Named(String),
    Unnamed,
    Wildcard,
}

/// One statement of a batch, ready to run.
#[derive(Debug)]
pub(crate) enum Stmt {
    /// `SET ...`: acknowledged with DONE only.
    Set,
    /// `USE db`.
    Use(String),
    /// A query rewritten for DataFusion.
    Query(Box<PreparedQuery>),
}

#[derive(Debug)]
pub(crate) struct PreparedQuery {
    pub statement: Statement,
    pub names: Vec<OutName>,
    /// Tables the query reads (lower-case schema, table).
    pub relations: Vec<Key>,
    /// Lower-case identifier -> spelling in the query (for error messages).
    pub spellings: HashMap<String, String>,
}

/// Parameters of an sp_executesql call, by lower-case name (`@p1`).
pub(crate) type Params = HashMap<String, (Option<SqlType>, ParamValue)>;

/// Session facts some expressions read (`DB_NAME()`, `@@SPID`).
pub(crate) struct SessionInfo<'a> {
    pub database: &'a str,
    pub spid: u16,
    /// What the `CHANGE_TRACKING_*` functions answer.
    pub tracking: crate::tracking::Facts,
}

/// A statement of a batch as parsed.
#[derive(Debug)]
pub(crate) enum Parsed {
    Statement(Box<Statement>),
    /// A `SET` option sqlparser does not know; acknowledged like any SET.
    Set,
}

/// Parse a batch into statements. Statements sqlparser cannot read are reported with SQL
/// Server's syntax error (102), except `SET` options which are acknowledged.
pub(crate) fn parse_batch(sql: &str) -> Result<Vec<Parsed>, SqlError> {
    let sql = &changetable_syntax(sql);
    match Parser::parse_sql(&MsSqlDialect {}, sql) {
        Ok(statements) => Ok(statements
            .into_iter()
            .map(|s| Parsed::Statement(Box::new(s)))
            .collect()),
        Err(whole_err) => {
            // Retry piece by piece so `SET` options sqlparser does not know pass.
            let pieces = split_statements(sql);
            if pieces.len() <= 1 && !is_set(sql) {
                return Err(syntax_error(&whole_err, sql));
            }
            let mut out = Vec::new();
            for piece in pieces {
                if is_set(&piece) {
                    out.push(Parsed::Set);
                    continue;
                }
                let parsed = Parser::parse_sql(&MsSqlDialect {}, &piece)
                    .map_err(|e| syntax_error(&e, &piece))?;
                out.extend(parsed.into_iter().map(|s| Parsed::Statement(Box::new(s))));
            }
            Ok(out)
        }
    }
}

/// `CHANGETABLE(CHANGES t, v)` as a function call sqlparser reads (`CHANGETABLE(t, v)`); the
/// rewriter turns it into the change table function.
fn changetable_syntax(sql: &str) -> std::borrow::Cow<'_, str> {
    let upper = sql.to_ascii_uppercase();
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = upper[from..].find("CHANGETABLE") {
        let start = from + found + "CHANGETABLE".len();
        from = start;
        let rest = &upper[start..];
        let open = rest.len() - rest.trim_start().len();
        if !rest[open..].starts_with('(') {
            continue;
        }
        let inner = &rest[open + 1..];
        let spaces = inner.len() - inner.trim_start().len();
        let word = &inner[spaces..];
        if word.starts_with("CHANGES") && word[7..].starts_with(char::is_whitespace) {
            let cut = start + open + 1 + spaces;
            out.push_str(&sql[copied..cut]);
            copied = cut + "CHANGES".len();
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    std::borrow::Cow::Owned(out)
}

fn is_set(sql: &str) -> bool {
    let t = sql.trim_start().to_ascii_uppercase();
    t.starts_with("SET ") || t.starts_with("SET\t") || t.starts_with("SET\n")
}

/// Split on `;` outside strings, brackets, quoted identifiers and comments.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '[' => {
                let close = if c == '[' { ']' } else { c };
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == close {
                        if chars.peek() == Some(&close) && close != ']' {
                            cur.push(close);
                            chars.next();
                            continue;
                        }
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// SQL Server's 102 from a sqlparser error: "Expected: ..., found: X at Line: 1, Column: 8".
fn syntax_error(err: &ParserError, sql: &str) -> SqlError {
    let msg = err.to_string();
    let near = msg
        .split("found: ")
        .nth(1)
        .map(|rest| {
            rest.split(" at Line")
                .next()
                .unwrap_or(rest)
                .trim()
                .to_string()
        })
        .filter(|t| !t.is_empty() && t != "EOF")
        .unwrap_or_else(|| {
            sql.split_whitespace()
                .last()
                .unwrap_or_default()
                .to_string()
        });
    SqlError::syntax(&near)
}

/// Classify and rewrite one parsed statement.
pub(crate) fn prepare(
    parsed: Parsed,
    params: &Params,
    session: &SessionInfo<'_>,
) -> Result<Stmt, SqlError> {
    let statement = match parsed {
        Parsed::Set => return Ok(Stmt::Set),
        Parsed::Statement(s) => *s,
    };
    match statement {
        Statement::Set(_) => Ok(Stmt::Set),
        Statement::Use(u) => {
            let name = match u {
                ast::Use::Object(n)
                | ast::Use::Database(n)
                | ast::Use::Catalog(n)
                | ast::Use::Schema(n) => n,
                other => {
                    return Err(SqlError::general(format!("unsupported USE: {other}")));
                }
            };
            Ok(Stmt::Use(name_parts(&name).join(".")))
        }
        Statement::Query(query) => {
            let names = output_names(&query);
            let mut statement = Statement::Query(query);
            let mut rw = Rewriter {
                params,
                session,
                relations: Vec::new(),
                cte_names: HashSet::new(),
                spellings: HashMap::new(),
                error: None,
            };
            let _ = statement.visit(&mut rw);
            if let Some(e) = rw.error {
                return Err(e);
            }
            let relations = rw
                .relations
                .into_iter()
                .filter(|(key, written)| {
                    !(key.0 == "dbo" && rw.cte_names.contains(&key.1) && !written.contains('.'))
                })
                .map(|(key, _)| key)
                .collect();
            Ok(Stmt::Query(Box::new(PreparedQuery {
                statement,
                names,
                relations,
                spellings: rw.spellings,
            })))
        }
        other => {
            let text = other.to_string();
            let verb = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Err(SqlError::general(format!(
                "medlake-tds-testserver runs queries only; '{verb}' statements are not supported."
            )))
        }
    }
}

/// The original spellings of an object name's parts.
fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            ObjectNamePart::Function(f) => f.to_string(),
        })
        .collect()
}

/// The written name of every output column of the query's first SELECT.
fn output_names(query: &Query) -> Vec<OutName> {
    fn first_select(body: &SetExpr) -> Option<&Select> {
        match body {
            SetExpr::Select(s) => Some(s),
            SetExpr::Query(q) => first_select(&q.body),
            SetExpr::SetOperation { left, .. } => first_select(left),
            _ => None,
        }
    }
    let Some(select) = first_select(&query.body) else {
        return Vec::new();
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(Expr::Identifier(i)) if !i.value.starts_with('@') => {
                OutName::Named(i.value.clone())
            }
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
                .last()
                .map_or(OutName::Unnamed, |i| OutName::Named(i.value.clone())),
            SelectItem::ExprWithAlias { alias, .. } => OutName::Named(alias.value.clone()),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => OutName::Wildcard,
            _ => OutName::Unnamed,
        })
        .collect()
}

struct Rewriter<'a> {
    params: &'a Params,
    session: &'a SessionInfo<'a>,
    /// (resolved key, name as written)
    relations: Vec<(Key, String)>,
    cte_names: HashSet<String>,
    spellings: HashMap<String, String>,
    error: Option<SqlError>,
}

impl Rewriter<'_> {
    fn fail(&mut self, e: SqlError) -> ControlFlow<()> {
        if self.error.is_none() {
            self.error = Some(e);
        }
        ControlFlow::Break(())
    }

    /// Lower-case an identifier and quote it so DataFusion takes it verbatim.
    fn ident(&mut self, ident: &mut Ident) {
        let lower = ident.value.to_lowercase();
        self.spellings
            .entry(lower.clone())
            .or_insert_with(|| ident.value.clone());
        ident.value = lower;
        ident.quote_style = Some('"');
    }
}

fn number(n: impl ToString) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::Number(n.to_string(), false)))
}

fn string(s: impl Into<String>) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(s.into())))
}

fn cast(expr: Expr, data_type: SqlDataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(expr),
        data_type,
        array: false,
        format: None,
    }
}

/// Undo the `CAST(n AS INT)` the rewriter puts around integer literals, where DataFusion wants
/// a bare number (LIMIT, OFFSET, ORDER BY ordinal).
fn bare_number(expr: Expr) -> Expr {
    match expr {
        Expr::Cast {
            expr: inner,
            data_type: SqlDataType::Int(_) | SqlDataType::BigInt(_) | SqlDataType::SmallInt(_),
            ..
        } if matches!(
            inner.as_ref(),
            Expr::Value(ValueWithSpan {
                value: Value::Number(..),
                ..
            })
        ) =>
        {
            *inner
        }
        Expr::Nested(inner) => bare_number(*inner),
        other => other,
    }
}

/// A T-SQL type name as a type DataFusion plans with SQL Server's meaning.
fn map_type(dt: &SqlDataType) -> SqlDataType {
    let text = dt.to_string().to_ascii_uppercase();
    let base = text
        .split('(')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let arg = |i: usize| -> Option<u64> {
        text.split('(')
            .nth(1)?
            .trim_end_matches(')')
            .split(',')
            .nth(i)?
            .trim()
            .parse()
            .ok()
    };
    let ts = |precision: Option<u64>, tz: TimezoneInfo| {
        // SQL Server's default fractional precision is 7 (100 ns): nanoseconds in Arrow.
        let p = match precision.unwrap_or(7) {
            0..=6 => 6,
            _ => 9,
        };
        SqlDataType::Timestamp(Some(p), tz)
    };
    match base.as_str() {
        "TINYINT" => SqlDataType::TinyIntUnsigned(None),
        "BIT" => SqlDataType::Boolean,
        "MONEY" => SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(19, 4)),
        "SMALLMONEY" => SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(10, 4)),
        "FLOAT" => match arg(0) {
            Some(n) if n <= 24 => SqlDataType::Real,
            _ => SqlDataType::Double(ExactNumberInfo::None),
        },
        "REAL" => SqlDataType::Real,
        "DEC" | "DECIMAL" | "NUMERIC" => match (arg(0), arg(1)) {
            (Some(p), Some(s)) => {
                SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(p, s as i64))
            }
            (Some(p), None) => SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(p, 0)),
            _ => SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(18, 0)),
        },
        "CHAR" | "VARCHAR" | "NCHAR" | "NVARCHAR" | "TEXT" | "NTEXT" | "XML" | "SYSNAME"
        | "UNIQUEIDENTIFIER" | "SQL_VARIANT" | "CHARACTER" | "NATIONAL" => {
            SqlDataType::Varchar(None)
        }
        "BINARY" | "VARBINARY" | "IMAGE" | "ROWVERSION" | "TIMESTAMP" => SqlDataType::Bytea,
        "DATE" => SqlDataType::Date,
        "TIME" => SqlDataType::Time(None, TimezoneInfo::None),
        "DATETIME" | "SMALLDATETIME" => ts(Some(6), TimezoneInfo::None),
        "DATETIME2" => ts(arg(0), TimezoneInfo::None),
        "DATETIMEOFFSET" => ts(arg(0), TimezoneInfo::WithTimeZone),
        "INT" | "INTEGER" => SqlDataType::Int(None),
        "SMALLINT" => SqlDataType::SmallInt(None),
        "BIGINT" => SqlDataType::BigInt(None),
        _ => dt.clone(),
    }
}

/// The sqlparser type for a parameter's SQL Server type.
fn param_data_type(ty: SqlType) -> SqlDataType {
    let decl = ty.declaration();
    let parsed = Parser::new(&MsSqlDialect {})
        .try_with_sql(&decl)
        .and_then(|mut p| p.parse_data_type());
    match parsed {
        Ok(dt) => map_type(&dt),
        Err(_) => SqlDataType::Varchar(None),
    }
}

/// A parameter value as a typed literal expression.
pub(crate) fn literal(ty: Option<SqlType>, value: &ParamValue) -> Expr {
    let typed = |e: Expr, fallback: SqlDataType| cast(e, ty.map_or(fallback, param_data_type));
    match value {
        ParamValue::Null => match ty {
            Some(t) => cast(Expr::Value(Value::Null.into()), param_data_type(t)),
            None => Expr::Value(Value::Null.into()),
        },
        ParamValue::Int(i) => typed(number(i), SqlDataType::BigInt(None)),
        ParamValue::TinyInt(u) => cast(number(u), SqlDataType::TinyIntUnsigned(None)),
        ParamValue::Bit(b) => Expr::Value(Value::Boolean(*b).into()),
        ParamValue::Float(f) => cast(
            string(format!("{f:e}")),
            SqlDataType::Double(ExactNumberInfo::None),
        ),
        ParamValue::Real(f) => cast(string(format!("{f:e}")), SqlDataType::Real),
        ParamValue::Decimal(v, p, s) => cast(
            string(decimal_text(*v, *s)),
            SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(
                u64::from((*p).max(*s).max(1)),
                i64::from(*s),
            )),
        ),
        ParamValue::String(s) => string(s.clone()),
        ParamValue::Guid(s) => string(s.clone()),
        ParamValue::Binary(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            Expr::Value(Value::HexStringLiteral(hex).into())
        }
        ParamValue::Date(days) => cast(string(date_text(*days)), SqlDataType::Date),
        ParamValue::Time(ns) => cast(
            string(time_text(*ns, 9)),
            SqlDataType::Time(None, TimezoneInfo::None),
        ),
        ParamValue::DateTime(days, ns) => cast(
            string(format!("{}T{}", date_text(*days), time_text(*ns, 9))),
            SqlDataType::Timestamp(Some(9), TimezoneInfo::None),
        ),
        ParamValue::DateTimeOffset(days, ns, _) => cast(
            string(format!("{}T{}Z", date_text(*days), time_text(*ns, 9))),
            SqlDataType::Timestamp(Some(9), TimezoneInfo::WithTimeZone),
        ),
    }
}

pub(crate) fn decimal_text(v: i128, scale: u8) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let digits = v.unsigned_abs().to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// `YYYY-MM-DD` of a day count since 0001-01-01.
pub(crate) fn date_text(days_ce: i64) -> String {
    NaiveDate::from_num_days_from_ce_opt((days_ce + 1) as i32).map_or_else(
        || format!("day {days_ce}"),
        |d| d.format("%Y-%m-%d").to_string(),
    )
}

/// `HH:MM:SS[.fraction]` with `digits` fractional digits (0..=9).
pub(crate) fn time_text(ns_of_day: u64, digits: u32) -> String {
    let secs = ns_of_day / 1_000_000_000;
    let frac = ns_of_day % 1_000_000_000;
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if digits == 0 {
        return base;
    }
    let frac = format!("{frac:09}");
    format!("{base}.{}", &frac[..digits.min(9) as usize])
}

/// Local time text of a UTC datetimeoffset value, SQL Server style: `... +02:00`.
pub(crate) fn datetimeoffset_text(days: i64, ns: u64, offset: i16, digits: u32) -> String {
    let total = i128::from(days) * 86_400_000_000_000
        + i128::from(ns)
        + i128::from(offset) * 60_000_000_000;
    let day = total.div_euclid(86_400_000_000_000) as i64;
    let rest = total.rem_euclid(86_400_000_000_000) as u64;
    let sign = if offset < 0 { '-' } else { '+' };
    let off = offset.unsigned_abs();
    format!(
        "{} {} {sign}{:02}:{:02}",
        date_text(day),
        time_text(rest, digits),
        off / 60,
        off % 60
    )
}

/// A system function or variable SQL Server answers without data.
fn system_value(name: &str, session: &SessionInfo<'_>) -> Option<Expr> {
    Some(match name {
        "@@version" => string(crate::wire::version_string()),
        "@@spid" => cast(number(session.spid), SqlDataType::SmallInt(None)),
        "@@servername" => string("MEDLAKE-TDS"),
        "@@language" => string("us_english"),
        "@@trancount" => cast(number(0), SqlDataType::Int(None)),
        "@@rowcount" => cast(number(0), SqlDataType::Int(None)),
        _ => return None,
    })
}

fn function_args(f: &Function) -> Vec<Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn rename(f: &mut Function, name: &str) {
    f.name = ObjectName::from(vec![Ident::new(name)]);
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.cte_names.insert(cte.alias.name.value.to_lowercase());
            }
        }
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                let mut name = cte.alias.name.clone();
                self.ident(&mut name);
                cte.alias.name = name;
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // OFFSET n ROWS FETCH NEXT m ROWS ONLY -> LIMIT m OFFSET n
        if let Some(fetch) = query.fetch.take() {
            if fetch.percent || fetch.with_ties {
                return self.fail(SqlError::general(
                    "FETCH ... PERCENT / WITH TIES is not supported by medlake-tds-testserver",
                ));
            }
            let limit = fetch.quantity.map(bare_number);
            query.limit_clause = Some(match query.limit_clause.take() {
                Some(LimitClause::LimitOffset {
                    offset, limit_by, ..
                }) => LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                },
                _ => LimitClause::LimitOffset {
                    limit,
                    offset: None,
                    limit_by: vec![],
                },
            });
        }
        // SELECT TOP (n) -> LIMIT n
        let top = match query.body.as_mut() {
            SetExpr::Select(select) => select.top.take(),
            _ => None,
        };
        if let Some(top) = top {
            if top.percent || top.with_ties {
                return self.fail(SqlError::general(
                    "TOP ... PERCENT / WITH TIES is not supported by medlake-tds-testserver",
                ));
            }
            let n = match top.quantity {
                Some(ast::TopQuantity::Constant(n)) => number(n),
                Some(ast::TopQuantity::Expr(e)) => bare_number(e),
                None => return self.fail(SqlError::syntax("TOP")),
            };
            query.limit_clause = Some(LimitClause::LimitOffset {
                limit: Some(n),
                offset: None,
                limit_by: vec![],
            });
        }
        if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &mut query.limit_clause {
            if let Some(l) = limit.take() {
                *limit = Some(bare_number(l));
            }
            if let Some(o) = offset {
                let v = std::mem::replace(&mut o.value, number(0));
                o.value = bare_number(v);
            }
        }
        if let Some(order_by) = &mut query.order_by
            && let ast::OrderByKind::Expressions(exprs) = &mut order_by.kind
        {
            for e in exprs {
                let v = std::mem::replace(&mut e.expr, number(0));
                e.expr = bare_number(v);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        let mut seen = HashSet::new();
        for (i, item) in select.projection.iter_mut().enumerate() {
            match item {
                SelectItem::ExprWithAlias { alias, .. } => {
                    seen.insert(alias.value.to_lowercase());
                    self.ident(alias);
                }
                SelectItem::UnnamedExpr(expr) => {
                    let plain = match expr {
                        Expr::Identifier(id) if !id.value.starts_with('@') => {
                            Some(id.value.to_lowercase())
                        }
                        Expr::CompoundIdentifier(parts) => {
                            parts.last().map(|p| p.value.to_lowercase())
                        }
                        _ => None,
                    };
                    // Unnamed expressions and repeated columns get an internal name so that
                    // DataFusion accepts `SELECT MAX(x), MAX(x)` as SQL Server does.
                    let needs_alias = match &plain {
                        Some(name) => !seen.insert(name.clone()),
                        None => true,
                    };
                    if needs_alias {
                        let expr = std::mem::replace(expr, number(0));
                        *item = SelectItem::ExprWithAlias {
                            expr,
                            alias: Ident::with_quote('"', format!("__medlake_c{i}")),
                        };
                    }
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                with_hints,
                args,
                ..
            } => {
                with_hints.clear();
                if let Some(alias) = alias {
                    self.ident(&mut alias.name);
                }
                let last = name.0.last().map(|p| p.to_string().to_ascii_lowercase());
                if let (Some("changetable"), Some(args)) = (last.as_deref(), args.as_mut()) {
                    let table = args.args.first().map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e.to_string(),
                        other => other.to_string(),
                    });
                    if let (Some(table), 2) = (table, args.args.len()) {
                        args.args[0] = FunctionArg::Unnamed(FunctionArgExpr::Expr(string(table)));
                        *name = ObjectName::from(vec![Ident::new(CHANGES_FUNCTION)]);
                    } else {
                        return self.fail(SqlError::syntax("CHANGETABLE"));
                    }
                }
            }
            TableFactor::Derived {
                alias: Some(alias), ..
            } => {
                self.ident(&mut alias.name);
                for c in &mut alias.columns {
                    self.ident(&mut c.name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        let written = name_parts(relation);
        if written == [CHANGES_FUNCTION] {
            return ControlFlow::Continue(());
        }
        // server.db.schema.table / db.schema.table -> schema.table; db..table -> dbo.table
        let mut parts: Vec<Ident> = relation
            .0
            .iter()
            .filter_map(|p| match p {
                ObjectNamePart::Identifier(i) => Some(i.clone()),
                ObjectNamePart::Function(_) => None,
            })
            .collect();
        if parts.len() > 2 {
            parts.drain(..parts.len() - 2);
        }
        if parts.len() == 2 && parts[0].value.is_empty() {
            parts[0] = Ident::new("dbo");
        }
        for p in &mut parts {
            self.ident(p);
        }
        let key = match parts.as_slice() {
            [table] => ("dbo".to_string(), table.value.clone()),
            [schema, table] => (schema.value.clone(), table.value.clone()),
            _ => return self.fail(SqlError::invalid_object(&written.join("."))),
        };
        relation.0 = parts.into_iter().map(ObjectNamePart::Identifier).collect();
        self.relations.push((key, written.join(".")));
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(id) if id.value.starts_with("@@") => {
                let name = id.value.to_lowercase();
                match system_value(&name, self.session) {
                    Some(v) => *expr = v,
                    None => {
                        return self.fail(SqlError::general(format!(
                            "{} is not supported by medlake-tds-testserver",
                            id.value
                        )));
                    }
                }
            }
            Expr::Identifier(id) if id.value.starts_with('@') => {
                match self.params.get(&id.value.to_lowercase()) {
                    Some((ty, value)) => *expr = literal(*ty, value),
                    None => {
                        let msg = format!("Must declare the scalar variable \"{}\".", id.value);
                        return self.fail(SqlError::new(137, 15, msg));
                    }
                }
            }
            Expr::Identifier(id) => self.ident(id),
            Expr::CompoundIdentifier(parts) => {
                if parts.len() > 3 {
                    parts.drain(..parts.len() - 3);
                }
                for p in parts.iter_mut() {
                    self.ident(p);
                }
            }
            Expr::Value(v) => {
                match &v.value {
                    Value::NationalStringLiteral(s) => {
                        v.value = Value::SingleQuotedString(s.clone());
                    }
                    // SQL Server types an integer literal that fits as int.
                    Value::Number(n, false)
                        if n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<i32>().is_ok() =>
                    {
                        let lit = Expr::Value(v.clone());
                        *expr = cast(lit, SqlDataType::Int(None));
                    }
                    _ => {}
                }
            }
            Expr::Cast { data_type, .. } => *data_type = map_type(data_type),
            Expr::Convert {
                is_try,
                expr: inner,
                data_type: Some(dt),
                ..
            } => {
                let inner = std::mem::replace(inner.as_mut(), number(0));
                *expr = Expr::Cast {
                    kind: if *is_try {
                        CastKind::TryCast
                    } else {
                        CastKind::Cast
                    },
                    expr: Box::new(inner),
                    data_type: map_type(dt),
                    array: false,
                    format: None,
                };
            }
            Expr::BinaryOp { left, op, right }
                if *op == ast::BinaryOperator::Plus
                    && (is_string_literal(left) || is_string_literal(right)) =>
            {
                *op = ast::BinaryOperator::StringConcat;
            }
            Expr::Function(_) => self.rewrite_function(expr),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Rewriter<'_> {
    /// A T-SQL function call in DataFusion's terms: renamed (`ISNULL` → `coalesce`, `LEN` →
    /// `character_length(rtrim(..))`), typed as SQL Server types it (`COUNT` is int), or
    /// answered from the session (`DB_NAME()`, `SERVERPROPERTY(..)`, the clock functions).
    fn rewrite_function(&self, expr: &mut Expr) {
        let Expr::Function(f) = expr else {
            return;
        };
        let name = f.name.to_string().to_lowercase();
        let name = name.trim_matches(|c| c == '[' || c == ']' || c == '"');
        match name {
            "count_big" => rename(f, "count"),
            "count" => {
                rename(f, "count");
                let call = std::mem::replace(expr, number(0));
                *expr = cast(call, SqlDataType::Int(None));
            }
            "isnull" => rename(f, "coalesce"),
            "len" => {
                let args = function_args(f);
                rename(f, "character_length");
                if let Some(arg) = args.into_iter().next() {
                    let trimmed = Expr::Function(Function {
                        name: ObjectName::from(vec![Ident::new("rtrim")]),
                        uses_odbc_syntax: false,
                        parameters: FunctionArguments::None,
                        args: FunctionArguments::List(ast::FunctionArgumentList {
                            duplicate_treatment: None,
                            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
                            clauses: vec![],
                        }),
                        filter: None,
                        null_treatment: None,
                        over: None,
                        within_group: vec![],
                    });
                    f.args = FunctionArguments::List(ast::FunctionArgumentList {
                        duplicate_treatment: None,
                        args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(trimmed))],
                        clauses: vec![],
                    });
                }
            }
            "datalength" => rename(f, "octet_length"),
            "getdate" | "sysdatetime" | "getutcdate" | "sysutcdatetime" | "current_timestamp" => {
                *expr = cast(
                    Expr::Function(Function {
                        name: ObjectName::from(vec![Ident::new("now")]),
                        uses_odbc_syntax: false,
                        parameters: FunctionArguments::None,
                        args: FunctionArguments::List(ast::FunctionArgumentList {
                            duplicate_treatment: None,
                            args: vec![],
                            clauses: vec![],
                        }),
                        filter: None,
                        null_treatment: None,
                        over: None,
                        within_group: vec![],
                    }),
                    SqlDataType::Timestamp(Some(6), TimezoneInfo::None),
                );
            }
            "change_tracking_current_version" => {
                *expr = cast(
                    number(self.session.tracking.current_version),
                    SqlDataType::BigInt(None),
                );
            }
            "change_tracking_min_valid_version" => {
                let table = function_args(f).into_iter().next().and_then(|a| match a {
                    Expr::Function(inner)
                        if inner.name.to_string().eq_ignore_ascii_case("object_id") =>
                    {
                        match function_args(&inner).into_iter().next() {
                            Some(Expr::Value(ValueWithSpan {
                                value: Value::SingleQuotedString(name),
                                ..
                            })) => Some(name),
                            _ => None,
                        }
                    }
                    _ => None,
                });
                let valid = table
                    .map(|t| crate::tracking::object_key(&t))
                    .and_then(|k| self.session.tracking.min_valid.get(&k).copied());
                *expr = match valid {
                    Some(v) => cast(number(v), SqlDataType::BigInt(None)),
                    None => cast(Expr::Value(Value::Null.into()), SqlDataType::BigInt(None)),
                };
            }
            "db_name" => *expr = string(self.session.database),
            "schema_name" => *expr = string("dbo"),
            "serverproperty" => {
                let arg = function_args(f)
                    .into_iter()
                    .next()
                    .map(|a| a.to_string().trim_matches('\'').to_lowercase())
                    .unwrap_or_default();
                let (major, minor, build) = crate::wire::SERVER_VERSION;
                *expr = match arg.as_str() {
                    "productversion" => string(format!("{major}.{minor}.{build}.0")),
                    "productmajorversion" => string(major.to_string()),
                    "edition" => string("Developer Edition (64-bit)"),
                    "engineedition" => cast(number(3), SqlDataType::Int(None)),
                    "servername" | "machinename" => string("MEDLAKE-TDS"),
                    "collation" => string(crate::types::COLLATION_NAME),
                    _ => Expr::Value(Value::Null.into()),
                };
            }
            other => {
                let other = other.to_string();
                rename(f, &other);
            }
        }
    }
}

fn is_string_literal(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(_) | Value::NationalStringLiteral(_),
            ..
        })
    )
}

/// Split an sp_executesql `@params` declaration: `@P1 int,@P2 numeric(5,2)`.
pub(crate) fn parse_param_declarations(decl: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    let mut push = |cur: &mut String| {
        let item = cur.trim();
        if let Some((name, ty)) = item.split_once(char::is_whitespace) {
            let ty = ty.trim();
            let ty = ty
                .strip_suffix("OUTPUT")
                .or_else(|| ty.strip_suffix("output"))
                .unwrap_or(ty)
                .trim();
            out.push((name.to_string(), ty.to_string()));
        }
        cur.clear();
    };
    for c in decl.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => push(&mut cur),
            _ => cur.push(c),
        }
    }
    push(&mut cur);
    out
}

/// Days and nanoseconds of a value as the parameter renderer needs them.
pub(crate) fn render_param(value: &ParamValue, ty: Option<SqlType>) -> String {
    let digits = match ty {
        Some(SqlType::Time { scale })
        | Some(SqlType::DateTime2 { scale })
        | Some(SqlType::DateTimeOffset { scale }) => u32::from(scale),
        Some(SqlType::DateTime) => 3,
        _ => 7,
    };
    match value {
        ParamValue::Null => "NULL".into(),
        ParamValue::Int(i) => i.to_string(),
        ParamValue::TinyInt(u) => u.to_string(),
        ParamValue::Bit(b) => u8::from(*b).to_string(),
        ParamValue::Float(f) => f.to_string(),
        ParamValue::Real(f) => f.to_string(),
        ParamValue::Decimal(v, _, s) => decimal_text(*v, *s),
        ParamValue::String(s) | ParamValue::Guid(s) => s.clone(),
        ParamValue::Binary(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("0x{hex}")
        }
        ParamValue::Date(days) => date_text(*days),
        ParamValue::Time(ns) => time_text(*ns, digits),
        ParamValue::DateTime(days, ns) => {
            format!("{} {}", date_text(*days), time_text(*ns, digits))
        }
        ParamValue::DateTimeOffset(days, ns, offset) => {
            datetimeoffset_text(*days, *ns, *offset, digits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> String {
        let params = Params::new();
        let session = SessionInfo {
            database: "master",
            spid: 51,
            tracking: Default::default(),
        };
        let mut stmts = parse_batch(sql).unwrap();
        match prepare(stmts.remove(0), &params, &session).unwrap() {
            Stmt::Query(q) => q.statement.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_becomes_limit() {
        let out = rewrite("SELECT TOP (5) [Id] FROM [Sales].[dbo].[Orders] WITH (NOLOCK)");
        assert!(out.contains("LIMIT 5"), "{out}");
        assert!(out.contains("\"dbo\".\"orders\""), "{out}");
    }

    #[test]
    fn offset_fetch_becomes_limit() {
        let out = rewrite("SELECT a FROM t ORDER BY a OFFSET 10 ROWS FETCH NEXT 5 ROWS ONLY");
        assert!(out.contains("LIMIT 5 OFFSET 10"), "{out}");
    }

    #[test]
    fn param_declarations_split_at_top_level() {
        assert_eq!(
            parse_param_declarations("@P1 int,@P2 numeric(5,2), @P3 nvarchar(max)"),
            vec![
                ("@P1".to_string(), "int".to_string()),
                ("@P2".to_string(), "numeric(5,2)".to_string()),
                ("@P3".to_string(), "nvarchar(max)".to_string()),
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_token() {
        let err = parse_batch("SELECT * FORM t").unwrap_err();
        assert_eq!(err.number, 102);
    }

    #[test]
    fn renders_values() {
        assert_eq!(decimal_text(-12345, 2), "-123.45");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(time_text(45_296_123_456_700, 7), "12:34:56.1234567");
        assert_eq!(
            datetimeoffset_text(738_885, 0, 120, 0),
            format!("{} 02:00:00 +02:00", date_text(738_885))
        );
    }
}
