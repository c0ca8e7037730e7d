//! Alert rules and their statements: `CREATE [OR REPLACE] ALERT`, `DROP ALERT`,
//! `ACKNOWLEDGE ALERT`, `SHOW ALERTS`.
//!
//! ```sql
//! CREATE [OR REPLACE] ALERT [IF NOT EXISTS] news2_high ON gold.news2_hourly
//!   WHEN risk IN ('medium', 'high')
//!   [KEY (patient_id, hour)]
//!   [SEVERITY risk]                  -- any expression over the view's columns; default 'warning'
//!   NOTIFY 'ward-pager' [, 'postgres'];
//! DROP ALERT [IF EXISTS] news2_high;
//! ACKNOWLEDGE ALERT news2_high [KEY ('p-17', '2026-12-04 10:00:00')];
//! SHOW ALERTS;
//! ```

use chrono::{DateTime, Utc};
use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The notification target that means "the Postgres door's `LISTEN <alert name>`".
pub const POSTGRES: &str = "postgres";

/// The severity of a rule without `SEVERITY`.
pub const DEFAULT_SEVERITY: &str = "'warning'";

/// A stored alert rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRule {
    /// Unique per creation: firings and their deduplication belong to one creation of a rule.
    pub id: String,
    /// The rule's name (also its `LISTEN` channel): lower-case letters, digits, `_`.
    pub name: String,
    /// The view (or table) it watches, `schema.table`.
    pub view: String,
    /// `WHEN`: a boolean SQL expression over the view's columns.
    pub condition: String,
    /// `KEY`: the columns that identify one thing alerted about; empty: the whole row.
    pub key: Vec<String>,
    /// `SEVERITY`: an SQL expression (a literal or over the view's columns).
    pub severity: String,
    /// `NOTIFY`: webhook names of the server's `[[webhooks]]`, or `postgres`.
    pub notify: Vec<String>,
    /// Who created it: evaluations run with this principal's privileges, masks and filters.
    pub owner: String,
    pub created: DateTime<Utc>,
    /// The view's version when the rule was created: rows committed later are evaluated.
    pub from_version: u64,
}

impl AlertRule {
    /// A new rule id.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Whether `other` has the same definition (what `CREATE OR REPLACE` may keep as it is).
    pub fn same_definition(&self, other: &AlertRule) -> bool {
        self.view == other.view
            && self.condition == other.condition
            && self.key == other.key
            && self.severity == other.severity
            && self.notify == other.notify
            && self.owner == other.owner
    }

    /// The rule as SQL (what `system.alert_rules` shows).
    pub fn to_sql(&self) -> String {
        let mut sql = format!(
            "CREATE ALERT {} ON {} WHEN {}",
            self.name, self.view, self.condition
        );
        if !self.key.is_empty() {
            let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
            sql.push_str(&format!(" KEY ({})", key.join(", ")));
        }
        sql.push_str(&format!(" SEVERITY {}", self.severity));
        let notify: Vec<String> = self.notify.iter().map(|n| quote_literal(n)).collect();
        sql.push_str(&format!(" NOTIFY {}", notify.join(", ")));
        sql
    }
}

/// Whether `name` reads back the same unquoted: lower-case letters, digits and `_`, not
/// starting with a digit.
fn is_plain(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `"name"` when the name needs quoting, else as it is.
pub fn quote_ident(name: &str) -> String {
    if is_plain(name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `'text'` as an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `CREATE ALERT`, parsed (names not yet resolved).
#[derive(Clone, Debug, PartialEq)]
pub struct CreateAlert {
    pub or_replace: bool,
    pub if_not_exists: bool,
    pub name: String,
    pub on: ObjectName,
    pub condition: Expr,
    pub key: Vec<String>,
    pub severity: Option<Expr>,
    pub notify: Vec<String>,
}

/// One of the alert statements.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertStatement {
    Create(Box<CreateAlert>),
    Drop {
        name: String,
        if_exists: bool,
    },
    /// `ACKNOWLEDGE ALERT name [KEY ('v', ...)]`: the open firings of the rule (with that key).
    Acknowledge {
        name: String,
        key: Option<Vec<String>>,
    },
    Show,
    /// `LISTEN name`: this session hears the rule's firings (as `NotificationResponse` on
    /// the Postgres door), each checked against its privileges when it arrives.
    Listen {
        channel: String,
    },
    /// `UNLISTEN name | *` (`None`: every channel).
    Unlisten {
        channel: Option<String>,
    },
}

impl AlertStatement {
    /// The statement as audit text: names only, never a value (an acknowledged key is a
    /// patient's).
    pub fn audit_text(&self) -> String {
        match self {
            AlertStatement::Create(create) => format!(
                "CREATE {}ALERT {} ON {}",
                if create.or_replace { "OR REPLACE " } else { "" },
                create.name,
                create.on
            ),
            AlertStatement::Drop { name, .. } => format!("DROP ALERT {name}"),
            AlertStatement::Acknowledge { name, key } => format!(
                "ACKNOWLEDGE ALERT {name}{}",
                if key.is_some() { " KEY (...)" } else { "" }
            ),
            AlertStatement::Show => "SHOW ALERTS".into(),
            AlertStatement::Listen { channel } => format!("LISTEN {channel}"),
            AlertStatement::Unlisten { channel } => {
                format!("UNLISTEN {}", channel.as_deref().unwrap_or("*"))
            }
        }
    }
}

fn syntax(message: impl Into<String>) -> Error {
    Error::Syntax(message.into())
}

fn word(parser: &mut Parser<'_>, expected: &str) -> bool {
    match parser.peek_token().token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(expected) && w.quote_style.is_none() => {
            parser.next_token();
            true
        }
        _ => false,
    }
}

/// Whether the next words are `words` (consumed only if they all are).
fn words(parser: &mut Parser<'_>, words: &[&str]) -> bool {
    let index = parser.index();
    for w in words {
        if !word(parser, w) {
            while parser.index() > index {
                parser.prev_token();
            }
            return false;
        }
    }
    true
}

fn expect_end(parser: &mut Parser<'_>, statement: &str) -> Result<()> {
    while parser.consume_token(&Token::SemiColon) {}
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(syntax(format!(
            "unexpected '{other}' at the end of {statement}"
        ))),
    }
}

/// A rule's name: an identifier of lower-case letters, digits and `_` (at most 63), as a
/// Postgres `LISTEN` channel is written.
fn rule_name(parser: &mut Parser<'_>) -> Result<String> {
    let ident = parser
        .parse_identifier()
        .map_err(|e| syntax(format!("expected an alert name: {e}")))?;
    check_name(&ident)
}

fn check_name(ident: &Ident) -> Result<String> {
    let name = if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    };
    if name.len() <= 63 && is_plain(&name) {
        Ok(name)
    } else {
        Err(Error::InvalidName { name })
    }
}

fn column_name(ident: Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn string_literal(parser: &mut Parser<'_>, what: &str) -> Result<String> {
    parser
        .parse_literal_string()
        .map_err(|e| syntax(format!("expected {what} as a string literal: {e}")))
}

/// Parses an alert statement if the parser is at one (`None` otherwise, nothing consumed).
pub fn parse(parser: &mut Parser<'_>) -> Result<Option<AlertStatement>> {
    let start = parser.index();
    if word(parser, "CREATE") {
        let or_replace = words(parser, &["OR", "REPLACE"]);
        if !word(parser, "ALERT") {
            while parser.index() > start {
                parser.prev_token();
            }
            return Ok(None);
        }
        return parse_create(parser, or_replace).map(Some);
    }
    if words(parser, &["DROP", "ALERT"]) {
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = rule_name(parser)?;
        expect_end(parser, "DROP ALERT")?;
        return Ok(Some(AlertStatement::Drop { name, if_exists }));
    }
    if words(parser, &["ACKNOWLEDGE", "ALERT"]) {
        let name = rule_name(parser)?;
        let key = if word(parser, "KEY") {
            parser
                .expect_token(&Token::LParen)
                .map_err(|e| syntax(e.to_string()))?;
            let mut values = vec![string_literal(parser, "a key value")?];
            while parser.consume_token(&Token::Comma) {
                values.push(string_literal(parser, "a key value")?);
            }
            parser
                .expect_token(&Token::RParen)
                .map_err(|e| syntax(e.to_string()))?;
            Some(values)
        } else {
            None
        };
        expect_end(parser, "ACKNOWLEDGE ALERT")?;
        return Ok(Some(AlertStatement::Acknowledge { name, key }));
    }
    if word(parser, "LISTEN") {
        let ident = parser
            .parse_identifier()
            .map_err(|e| syntax(format!("LISTEN needs a channel name: {e}")))?;
        let channel = column_name(ident);
        expect_end(parser, "LISTEN")?;
        return Ok(Some(AlertStatement::Listen { channel }));
    }
    if word(parser, "UNLISTEN") {
        let channel = if parser.consume_token(&Token::Mul) {
            None
        } else {
            let ident = parser
                .parse_identifier()
                .map_err(|e| syntax(format!("UNLISTEN needs a channel name or *: {e}")))?;
            Some(column_name(ident))
        };
        expect_end(parser, "UNLISTEN")?;
        return Ok(Some(AlertStatement::Unlisten { channel }));
    }
    if words(parser, &["SHOW", "ALERTS"]) {
        expect_end(parser, "SHOW ALERTS")?;
        return Ok(Some(AlertStatement::Show));
    }
    Ok(None)
}

fn parse_create(parser: &mut Parser<'_>, or_replace: bool) -> Result<AlertStatement> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    if or_replace && if_not_exists {
        return Err(syntax(
            "CREATE OR REPLACE ALERT and IF NOT EXISTS exclude each other",
        ));
    }
    let name = rule_name(parser)?;
    if !parser.parse_keyword(Keyword::ON) {
        return Err(syntax("expected ON <view> after the alert's name"));
    }
    let on = parser
        .parse_object_name(false)
        .map_err(|e| syntax(format!("expected the view the alert watches: {e}")))?;
    if !parser.parse_keyword(Keyword::WHEN) {
        return Err(syntax("expected WHEN <condition> after ON <view>"));
    }
    let condition = parser
        .parse_expr()
        .map_err(|e| syntax(format!("the WHEN condition: {e}")))?;
    let mut key = Vec::new();
    let mut severity = None;
    let mut notify = Vec::new();
    loop {
        if word(parser, "KEY") {
            if !key.is_empty() {
                return Err(syntax("KEY is given twice"));
            }
            parser
                .expect_token(&Token::LParen)
                .map_err(|e| syntax(format!("KEY (column, ...): {e}")))?;
            loop {
                let ident = parser
                    .parse_identifier()
                    .map_err(|e| syntax(format!("KEY (column, ...): {e}")))?;
                let column = column_name(ident);
                if key.contains(&column) {
                    return Err(syntax(format!("KEY names column {column} twice")));
                }
                key.push(column);
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser
                .expect_token(&Token::RParen)
                .map_err(|e| syntax(format!("KEY (column, ...): {e}")))?;
        } else if word(parser, "SEVERITY") {
            if severity.is_some() {
                return Err(syntax("SEVERITY is given twice"));
            }
            severity = Some(
                parser
                    .parse_expr()
                    .map_err(|e| syntax(format!("the SEVERITY expression: {e}")))?,
            );
        } else if word(parser, "NOTIFY") {
            if !notify.is_empty() {
                return Err(syntax("NOTIFY is given twice"));
            }
            loop {
                let target = string_literal(parser, "a webhook name or 'postgres'")?;
                if !notify.contains(&target) {
                    notify.push(target);
                }
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
        } else {
            break;
        }
    }
    if notify.is_empty() {
        return Err(syntax(
            "an alert needs NOTIFY 'webhook-name' [, 'postgres'] (who is told)",
        ));
    }
    expect_end(parser, "CREATE ALERT")?;
    Ok(AlertStatement::Create(Box::new(CreateAlert {
        or_replace,
        if_not_exists,
        name,
        on,
        condition,
        key,
        severity,
        notify,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;

    fn parsed(sql: &str) -> Result<Option<AlertStatement>> {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(sql)
            .map_err(|e| syntax(e.to_string()))?;
        parse(&mut parser)
    }

    #[test]
    fn create_alert_parses_every_clause() {
        let Some(AlertStatement::Create(create)) = parsed(
            "CREATE OR REPLACE ALERT News2_High ON gold.news2_hourly \
             WHEN risk IN ('medium', 'high') KEY (patient_id, \"Hour\") SEVERITY risk \
             NOTIFY 'ward-pager', 'postgres', 'ward-pager';",
        )
        .unwrap() else {
            panic!("not a CREATE ALERT");
        };
        assert!(create.or_replace);
        assert_eq!(create.name, "news2_high");
        assert_eq!(create.on.to_string(), "gold.news2_hourly");
        assert_eq!(create.condition.to_string(), "risk IN ('medium', 'high')");
        assert_eq!(create.key, vec!["patient_id", "Hour"]);
        assert_eq!(create.severity.unwrap().to_string(), "risk");
        assert_eq!(create.notify, vec!["ward-pager", "postgres"]);
    }

    #[test]
    fn other_statements_parse_and_create_table_is_not_ours() {
        assert_eq!(
            parsed("DROP ALERT IF EXISTS a1").unwrap(),
            Some(AlertStatement::Drop {
                name: "a1".into(),
                if_exists: true
            })
        );
        assert_eq!(
            parsed("ACKNOWLEDGE ALERT a1 KEY ('p-1', '2026')").unwrap(),
            Some(AlertStatement::Acknowledge {
                name: "a1".into(),
                key: Some(vec!["p-1".into(), "2026".into()])
            })
        );
        assert_eq!(parsed("SHOW ALERTS").unwrap(), Some(AlertStatement::Show));
        assert_eq!(parsed("CREATE TABLE t (a INT)").unwrap(), None);
        assert_eq!(
            parsed("CREATE OR REPLACE VIEW v AS SELECT 1").unwrap(),
            None
        );
    }

    #[test]
    fn bad_alerts_are_refused_with_a_reason() {
        for (sql, reason) in [
            ("CREATE ALERT a ON t WHEN x > 1", "NOTIFY"),
            ("CREATE ALERT a ON t NOTIFY 'w'", "WHEN"),
            ("CREATE ALERT \"A b\" ON t WHEN x NOTIFY 'w'", "alert name"),
            ("CREATE ALERT a ON t WHEN x NOTIFY 'w' KEY (a, a)", "twice"),
            ("CREATE ALERT a ON t WHEN x NOTIFY 'w' extra", "unexpected"),
            (
                "CREATE OR REPLACE ALERT IF NOT EXISTS a ON t WHEN x NOTIFY 'w'",
                "exclude",
            ),
        ] {
            let error = parsed(sql).unwrap_err().to_string();
            assert!(error.contains(reason), "{sql}: {error}");
        }
    }

    #[test]
    fn a_rule_prints_as_sql_that_parses_again() {
        let rule = AlertRule {
            id: "x".into(),
            name: "spo2_low".into(),
            view: "silver.readings".into(),
            condition: "metric = 'spo2' AND value < 88".into(),
            key: vec!["device_id".into(), "Taken At".into()],
            severity: "'high'".into(),
            notify: vec!["it's".into()],
            owner: "o".into(),
            created: Utc::now(),
            from_version: 0,
        };
        let sql = rule.to_sql();
        let Some(AlertStatement::Create(create)) = parsed(&sql).unwrap() else {
            panic!("{sql}");
        };
        assert_eq!(create.key, rule.key);
        assert_eq!(create.notify, rule.notify);
    }
}
