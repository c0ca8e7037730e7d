//! The access-control statements: roles, grants, ownership, masks and row filters.
//!
//! ```sql
//! CREATE ROLE clinician
//! DROP ROLE [IF EXISTS] clinician
//! GRANT SELECT, INSERT | ALL [PRIVILEGES] ON {WAREHOUSE | SCHEMA s | [TABLE] s.t
//!       | ALL TABLES IN SCHEMA s | SECRET name} TO grantee [, ...]
//! REVOKE ... ON ... FROM grantee [, ...]
//! GRANT clinician [, ...] TO alice [, ...]        -- role membership
//! REVOKE clinician FROM alice
//! SHOW GRANTS [TO grantee] [ON ...]
//! ALTER TABLE t ALTER COLUMN c SET MASK expr      -- a function name (applied to c) or an expression
//! ALTER TABLE t ALTER COLUMN c DROP MASK
//! ALTER TABLE t SET ROW FILTER expr ON (col, ...)
//! ALTER TABLE t DROP ROW FILTER
//! ALTER {TABLE | MATERIALIZED VIEW | SCHEMA} x OWNER TO name
//! ALTER MATERIALIZED VIEW v DECLASSIFY
//! ```

use datafusion::sql::sqlparser::ast::{Expr, ObjectName};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use medlake_auth::Privilege;

use crate::{Error, Result};

/// What a grant names, before the session resolves table names.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Warehouse,
    Schema(String),
    Table(ObjectName),
    Secret(String),
}

/// As SQL names it (`TABLE silver.patients`), for the audit.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Warehouse => write!(f, "WAREHOUSE"),
            Target::Schema(name) => write!(f, "SCHEMA {name}"),
            Target::Table(name) => write!(f, "TABLE {name}"),
            Target::Secret(name) => write!(f, "SECRET {name}"),
        }
    }
}

/// One access-control statement.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessStatement {
    CreateRole {
        name: String,
        if_not_exists: bool,
    },
    DropRole {
        name: String,
        if_exists: bool,
    },
    /// `GRANT/REVOKE privileges ON target TO/FROM grantees`; an empty list is `ALL`.
    Privileges {
        grant: bool,
        privileges: Vec<Privilege>,
        on: Target,
        grantees: Vec<String>,
    },
    /// `GRANT/REVOKE roles TO/FROM members`.
    Membership {
        grant: bool,
        roles: Vec<String>,
        members: Vec<String>,
    },
    ShowGrants {
        to: Option<String>,
        on: Option<Target>,
    },
    SetMask {
        table: ObjectName,
        column: String,
        /// `None`: DROP MASK.
        mask: Option<String>,
    },
    SetRowFilter {
        table: ObjectName,
        /// `None`: DROP ROW FILTER.
        filter: Option<(String, Vec<String>)>,
    },
    OwnerTo {
        on: Target,
        owner: String,
    },
    Declassify {
        view: ObjectName,
    },
}

fn syntax(message: impl ToString) -> Error {
    Error::Syntax {
        message: message.to_string(),
    }
}

fn word(parser: &mut Parser<'_>, w: &str) -> bool {
    match parser.peek_token().token {
        Token::Word(x) if x.value.eq_ignore_ascii_case(w) => {
            parser.next_token();
            true
        }
        _ => false,
    }
}

fn words(parser: &mut Parser<'_>, ws: &[&str]) -> bool {
    let peeked = parser.peek_tokens_with_location::<4>();
    let matches = ws.iter().enumerate().all(|(i, w)| {
        matches!(&peeked.get(i).map(|t| &t.token), Some(Token::Word(x)) if x.value.eq_ignore_ascii_case(w))
    });
    if matches {
        for _ in ws {
            parser.next_token();
        }
    }
    matches
}

fn ident(parser: &mut Parser<'_>, what: &str) -> Result<String> {
    let ident = parser
        .parse_identifier()
        .map_err(|_| syntax(format!("expected {what}")))?;
    // Names are case-insensitive unless quoted, as table names are.
    Ok(if ident.quote_style.is_some() {
        ident.value
    } else {
        ident.value.to_lowercase()
    })
}

fn ident_list(parser: &mut Parser<'_>, what: &str) -> Result<Vec<String>> {
    let mut names = vec![ident(parser, what)?];
    while parser.consume_token(&Token::Comma) {
        names.push(ident(parser, what)?);
    }
    Ok(names)
}

fn end(parser: &mut Parser<'_>, statement: &str) -> Result<()> {
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(syntax(format!("unexpected '{other}' in {statement}"))),
    }
}

/// Parses an access statement, or `None` when `text` is another statement.
pub fn parse(text: &str) -> Result<Option<AccessStatement>> {
    let dialect = crate::dialect::MedlakeDialect::default();
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| syntax(e.to_string()))?;
    parse_with(&mut parser)
}

fn parse_with(parser: &mut Parser<'_>) -> Result<Option<AccessStatement>> {
    let [first, second] = parser.peek_tokens::<2>();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    if is(&first, "CREATE") && is(&second, "ROLE") {
        parser.next_token();
        parser.next_token();
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = ident(parser, "a role name")?;
        end(parser, "CREATE ROLE")?;
        return Ok(Some(AccessStatement::CreateRole {
            name,
            if_not_exists,
        }));
    }
    if is(&first, "DROP") && is(&second, "ROLE") {
        parser.next_token();
        parser.next_token();
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = ident(parser, "a role name")?;
        end(parser, "DROP ROLE")?;
        return Ok(Some(AccessStatement::DropRole { name, if_exists }));
    }
    if is(&first, "GRANT") || is(&first, "REVOKE") {
        return parse_grant(parser).map(Some);
    }
    if is(&first, "SHOW") && is(&second, "GRANTS") {
        parser.next_token();
        parser.next_token();
        let mut to = None;
        let mut on = None;
        loop {
            if to.is_none() && (word(parser, "TO") || word(parser, "FOR")) {
                to = Some(ident(parser, "a user or role")?);
            } else if on.is_none() && word(parser, "ON") {
                on = Some(target(parser)?);
            } else {
                break;
            }
        }
        end(parser, "SHOW GRANTS")?;
        return Ok(Some(AccessStatement::ShowGrants { to, on }));
    }
    if is(&first, "ALTER") {
        return parse_alter(parser);
    }
    Ok(None)
}

fn parse_grant(parser: &mut Parser<'_>) -> Result<AccessStatement> {
    let grant = word(parser, "GRANT");
    if !grant {
        parser.next_token();
    }
    let statement = if grant { "GRANT" } else { "REVOKE" };
    // Privileges (or role names) up to ON, TO or FROM.
    let mut items: Vec<Vec<String>> = vec![Vec::new()];
    loop {
        match parser.peek_token().token {
            Token::Word(w)
                if ["ON", "TO", "FROM"]
                    .iter()
                    .any(|k| w.value.eq_ignore_ascii_case(k))
                    && w.quote_style.is_none() =>
            {
                break;
            }
            Token::Word(w) => {
                parser.next_token();
                let value = if w.quote_style.is_some() {
                    w.value
                } else {
                    w.value.to_lowercase()
                };
                if let Some(item) = items.last_mut() {
                    item.push(value);
                }
            }
            Token::Comma => {
                parser.next_token();
                items.push(Vec::new());
            }
            Token::EOF => return Err(syntax(format!("{statement} needs ON, TO or FROM"))),
            other => return Err(syntax(format!("unexpected '{other}' in {statement}"))),
        }
    }
    if items.iter().any(Vec::is_empty) {
        return Err(syntax(format!("{statement}: an empty privilege or role")));
    }
    if word(parser, "ON") {
        let on = target(parser)?;
        let privileges = privileges(&items)?;
        if !(if grant {
            word(parser, "TO")
        } else {
            word(parser, "FROM")
        }) {
            return Err(syntax(format!(
                "{statement} ... ON ... needs {}",
                if grant { "TO" } else { "FROM" }
            )));
        }
        let grantees = ident_list(parser, "a user or role")?;
        end(parser, statement)?;
        return Ok(AccessStatement::Privileges {
            grant,
            privileges,
            on,
            grantees,
        });
    }
    if !(if grant {
        word(parser, "TO")
    } else {
        word(parser, "FROM")
    }) {
        return Err(syntax(format!("{statement} needs ON, TO or FROM")));
    }
    let roles = items
        .into_iter()
        .map(|item| match <[String; 1]>::try_from(item) {
            Ok([role]) => Ok(role),
            Err(item) => Err(syntax(format!(
                "'{}' is not a role name (privileges need ON)",
                item.join(" ")
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let members = ident_list(parser, "a user or role")?;
    end(parser, statement)?;
    Ok(AccessStatement::Membership {
        grant,
        roles,
        members,
    })
}

/// `ALL [PRIVILEGES]` (an empty list) or named privileges.
fn privileges(items: &[Vec<String>]) -> Result<Vec<Privilege>> {
    if let [only] = items
        && (only == &["all"] || only == &["all", "privileges"])
    {
        return Ok(Vec::new());
    }
    items
        .iter()
        .map(|item| {
            let text = item.join(" ");
            Privilege::parse(&text).ok_or_else(|| {
                syntax(format!(
                    "unknown privilege '{}' (SELECT, INSERT, UPDATE, DELETE, REFRESH, CREATE, CREATE EXTERNAL, USAGE or ALL)",
                    text.to_uppercase()
                ))
            })
        })
        .collect()
}

fn target(parser: &mut Parser<'_>) -> Result<Target> {
    if word(parser, "WAREHOUSE") {
        return Ok(Target::Warehouse);
    }
    if word(parser, "SCHEMA") {
        return Ok(Target::Schema(ident(parser, "a schema name")?));
    }
    if word(parser, "SECRET") {
        // Secret names are as declared in [secrets] (case kept).
        let ident = parser
            .parse_identifier()
            .map_err(|_| syntax("expected a secret name"))?;
        return Ok(Target::Secret(ident.value));
    }
    if words(parser, &["ALL", "TABLES", "IN", "SCHEMA"]) {
        return Ok(Target::Schema(ident(parser, "a schema name")?));
    }
    let _ =
        word(parser, "TABLE") || words(parser, &["MATERIALIZED", "VIEW"]) || word(parser, "VIEW");
    let name = parser
        .parse_object_name(false)
        .map_err(|_| syntax("expected a table name"))?;
    Ok(Target::Table(name))
}

fn parse_alter(parser: &mut Parser<'_>) -> Result<Option<AccessStatement>> {
    // The parser is this function's own: an ALTER we do not own goes to DataFusion, which
    // parses the text again.
    let probe = parser;
    probe.next_token();
    let kind = if word(probe, "TABLE") {
        "TABLE"
    } else if words(probe, &["MATERIALIZED", "VIEW"]) {
        "MATERIALIZED VIEW"
    } else if word(probe, "SCHEMA") {
        "SCHEMA"
    } else {
        return Ok(None);
    };
    let name = match probe.parse_object_name(false) {
        Ok(name) => name,
        Err(_) => return Ok(None),
    };
    let statement = format!("ALTER {kind}");
    let parsed = if words(probe, &["OWNER", "TO"]) {
        let owner = ident(probe, "a user or role")?;
        let on = if kind == "SCHEMA" {
            Target::Schema(crate::statement::name_parts(&name)?.join("."))
        } else {
            Target::Table(name)
        };
        AccessStatement::OwnerTo { on, owner }
    } else if kind == "SCHEMA" {
        return Ok(None);
    } else if word(probe, "DECLASSIFY") {
        AccessStatement::Declassify { view: name }
    } else if words(probe, &["ALTER", "COLUMN"]) || word(probe, "ALTER") {
        let column = ident(probe, "a column name")?;
        let mask = if words(probe, &["SET", "MASK"]) {
            Some(expression(probe, "the mask")?)
        } else if words(probe, &["DROP", "MASK"]) {
            None
        } else {
            return Err(syntax(format!(
                "{statement} ALTER COLUMN: expected SET MASK or DROP MASK"
            )));
        };
        AccessStatement::SetMask {
            table: name,
            column,
            mask,
        }
    } else if words(probe, &["SET", "ROW", "FILTER"]) {
        let filter = expression(probe, "the row filter")?;
        if !word(probe, "ON") {
            return Err(syntax("SET ROW FILTER expr ON (columns): ON is missing"));
        }
        probe
            .expect_token(&Token::LParen)
            .map_err(|_| syntax("SET ROW FILTER ... ON (columns)"))?;
        let columns = ident_list(probe, "a column name")?;
        probe
            .expect_token(&Token::RParen)
            .map_err(|_| syntax("SET ROW FILTER ... ON (columns): ')' is missing"))?;
        AccessStatement::SetRowFilter {
            table: name,
            filter: Some((filter, columns)),
        }
    } else if words(probe, &["DROP", "ROW", "FILTER"]) {
        AccessStatement::SetRowFilter {
            table: name,
            filter: None,
        }
    } else {
        return Ok(None);
    };
    end(probe, &statement)?;
    Ok(Some(parsed))
}

/// An expression, kept as canonical SQL text.
fn expression(parser: &mut Parser<'_>, what: &str) -> Result<String> {
    let expr: Expr = parser
        .parse_expr()
        .map_err(|e| syntax(format!("{what}: {e}")))?;
    Ok(expr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sql: &str) -> Result<Option<AccessStatement>> {
        parse(sql)
    }

    #[test]
    fn grants_and_roles_parse() {
        assert_eq!(
            p("CREATE ROLE Clinician").unwrap(),
            Some(AccessStatement::CreateRole {
                name: "clinician".into(),
                if_not_exists: false
            })
        );
        let Some(AccessStatement::Privileges {
            grant: true,
            privileges,
            on: Target::Schema(s),
            grantees,
        }) = p("GRANT SELECT, CREATE EXTERNAL ON ALL TABLES IN SCHEMA silver TO clinician, etl")
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            privileges,
            vec![Privilege::Select, Privilege::CreateExternal]
        );
        assert_eq!(s, "silver");
        assert_eq!(grantees, vec!["clinician", "etl"]);
        assert!(matches!(
            p("REVOKE ALL PRIVILEGES ON TABLE silver.patients FROM x").unwrap(),
            Some(AccessStatement::Privileges { grant: false, ref privileges, on: Target::Table(_), .. }) if privileges.is_empty()
        ));
        assert_eq!(
            p("GRANT clinician TO alice, bob").unwrap(),
            Some(AccessStatement::Membership {
                grant: true,
                roles: vec!["clinician".into()],
                members: vec!["alice".into(), "bob".into()]
            })
        );
        assert!(p("GRANT select insert TO alice").is_err());
        assert!(p("GRANT SELEKT ON TABLE t TO alice").is_err());
        assert!(p("GRANT SELECT ON TABLE t").is_err());
        assert!(p("GRANT").is_err());
        assert!(matches!(
            p("GRANT USAGE ON SECRET EHR_PASSWORD TO etl").unwrap(),
            Some(AccessStatement::Privileges { on: Target::Secret(ref s), .. }) if s == "EHR_PASSWORD"
        ));
    }

    #[test]
    fn masks_filters_and_owners_parse() {
        assert!(matches!(
            p("ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK CASE WHEN is_member('clinician') THEN mrn ELSE '***' END").unwrap(),
            Some(AccessStatement::SetMask { ref column, mask: Some(ref m), .. }) if column == "mrn" && m.contains("is_member")
        ));
        assert!(matches!(
            p("ALTER TABLE t ALTER COLUMN c DROP MASK").unwrap(),
            Some(AccessStatement::SetMask { mask: None, .. })
        ));
        assert!(matches!(
            p("ALTER TABLE t SET ROW FILTER ward = 'icu' ON (ward)").unwrap(),
            Some(AccessStatement::SetRowFilter { filter: Some((_, ref cols)), .. }) if cols == &["ward"]
        ));
        assert!(matches!(
            p("ALTER MATERIALIZED VIEW gold.x OWNER TO bob").unwrap(),
            Some(AccessStatement::OwnerTo { .. })
        ));
        assert!(matches!(
            p("ALTER MATERIALIZED VIEW gold.x DECLASSIFY").unwrap(),
            Some(AccessStatement::Declassify { .. })
        ));
        // Other ALTERs are DataFusion's (which refuses them).
        assert_eq!(p("ALTER TABLE t ADD COLUMN x INT").unwrap(), None);
        assert!(p("ALTER TABLE t SET ROW FILTER x = 1").is_err());
        assert!(p("ALTER TABLE t ALTER COLUMN c SET MASK").is_err());
    }
}
