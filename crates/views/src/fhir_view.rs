//! `AS FHIR VIEW '<ViewDefinition JSON>' FROM source [COLUMN name]`: a materialized view
//! defined by an HL7 SQL-on-FHIR v2 ViewDefinition over a table that keeps FHIR resources'
//! JSON text (in the column `resource` unless `COLUMN` names another):
//!
//! ```sql
//! CREATE MATERIALIZED VIEW silver.fhir_vitals REFRESH ON CHANGE AS
//! FHIR VIEW '{"resource": "Observation", "select": [...]}' FROM bronze.fhir_observations
//! ```
//!
//! The definition is checked when the view is created (bad FHIRPath, unknown elements,
//! unions of different columns are syntax errors) and compiled to an ordinary query
//! ([`medlake_fhir::view_query`]): `fhir_view(resource, '...')` unnested into rows, so the
//! view refreshes (incrementally: the query is row-wise in its source), is masked through
//! lineage and is explained like any other. The view stores what the user wrote.

use std::fmt;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::definition::word;
use crate::error::{Error, Result};

/// The column of the source that holds each resource's JSON text, unless `COLUMN` says.
pub const RESOURCE_COLUMN: &str = "resource";

/// What `AS FHIR VIEW ...` said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FhirView {
    /// The ViewDefinition's JSON text, as written.
    pub definition: String,
    /// The source table or view, as SQL.
    pub source: String,
    /// The source's column with the resources' JSON text.
    pub column: String,
}

impl fmt::Display for FhirView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FHIR VIEW '{}' FROM {}",
            self.definition.replace('\'', "''"),
            self.source
        )?;
        if self.column != RESOURCE_COLUMN {
            write!(f, " COLUMN \"{}\"", self.column.replace('"', "\"\""))?;
        }
        Ok(())
    }
}

fn syntax(e: impl ToString) -> Error {
    Error::Syntax {
        message: e.to_string(),
    }
}

/// Parses `FHIR VIEW '...' FROM source [COLUMN name]` at the parser's position (after `AS`);
/// `None` (consuming nothing) when the body is something else.
pub fn parse(parser: &mut Parser<'_>) -> Result<Option<FhirView>> {
    let [fhir, view] = parser.peek_tokens::<2>();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    if !is(&fhir, "FHIR") || !is(&view, "VIEW") {
        return Ok(None);
    }
    parser.next_token();
    parser.next_token();
    let definition = match parser.next_token().token {
        Token::SingleQuotedString(s) => s,
        other => {
            return Err(syntax(format!(
                "expected the ViewDefinition's JSON as a quoted string after FHIR VIEW, found '{other}'"
            )));
        }
    };
    if !parser.parse_keyword(Keyword::FROM) {
        return Err(syntax(format!(
            "expected FROM after FHIR VIEW '...', found '{}'",
            parser.peek_token().token
        )));
    }
    if parser.peek_token().token == Token::LParen {
        return Err(syntax(
            "FHIR VIEW ... FROM takes the name of a table or view, not a query",
        ));
    }
    let source = parser.parse_object_name(false).map_err(syntax)?.to_string();
    let column = if word(parser, "COLUMN") {
        crate::definition::normalize(&parser.parse_identifier().map_err(syntax)?)
    } else {
        RESOURCE_COLUMN.to_owned()
    };
    if parser.peek_token().token != Token::EOF {
        return Err(syntax(format!(
            "unexpected '{}' after FHIR VIEW ... FROM {source}",
            parser.peek_token().token
        )));
    }
    Ok(Some(FhirView {
        definition,
        source,
        column,
    }))
}

impl FhirView {
    /// The query the view runs, in canonical SQL; an invalid ViewDefinition is a syntax
    /// error naming what is wrong.
    pub fn query(&self) -> Result<String> {
        let sql = medlake_fhir::view_query(&self.definition, &self.source, &self.column)
            .map_err(|e| syntax(format!("FHIR VIEW: {e}")))?;
        let query = Parser::new(&GenericDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_query())
            .map_err(|e| {
                Error::Internal(format!(
                    "FHIR VIEW compiled to a query that does not parse: {e}"
                ))
            })?;
        Ok(query.to_string())
    }
}
