//! Statement text with its literals kept out: what `system.audit` stores instead of the SQL a
//! client sent (`WHERE mrn = 'X'` would otherwise make the audit a copy of patient
//! identifiers).

use std::fmt;

use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// The longest normalized text kept, in characters; longer texts are cut and end with
/// `… (N chars)`.
pub const MAX_STATEMENT_CHARS: usize = 16 * 1024;

/// A statement as the audit records it: SQL with every literal (strings of any quoting,
/// numbers) replaced by `?`, comments dropped, runs of whitespace collapsed to one space.
/// Identifiers, keywords, operators and parameter placeholders (`$1`, `?`) are kept. Text
/// that does not tokenize (an unterminated quote or comment) is recorded as a fixed
/// placeholder with its length, never as given.
///
/// The only ways to make one are [`Statement::normalize`] and [`Statement::described`], so
/// an [`crate::Event`] cannot carry raw SQL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Statement(String);

impl Statement {
    /// Normalizes `sql` (one statement or a script).
    pub fn normalize(sql: &str) -> Self {
        // Statements run under sqlparser's generic dialect (DataFusion's), which reads some
        // literals PostgreSQL's does not (`q'..'`, `r'..'`, `B".."`): its literals go first,
        // then PostgreSQL's (`E'..'`, `$$..$$`) in what remains.
        let Some(generic) = literals_out(&GenericDialect {}, sql) else {
            return Self(format!(
                "<statement that does not tokenize: {} bytes>",
                sql.len()
            ));
        };
        let text = literals_out(&PostgreSqlDialect {}, &generic).unwrap_or(generic);
        let statement = Self(cut(text));
        if statement.kind() == "ERASE" {
            // An erasure names a patient even when it does not parse (`ERASE PATIENT MRN0042`
            // unquoted reads as a word, which the normalizer keeps): never in the log.
            let dry = statement.0.to_ascii_uppercase().contains("DRY RUN");
            return Self(format!(
                "ERASE PATIENT ?{}",
                if dry { " DRY RUN" } else { "" }
            ));
        }
        statement
    }

    /// A fixed description of an action that is not SQL (`INGEST bronze.readings_push`), kept
    /// as given: it must not hold values.
    pub fn described(text: &'static str) -> Self {
        Self(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The statement's kind: its first keyword, upper-cased (`SELECT`, `INSERT`, ...;
    /// `WITH ... SELECT` is `WITH`). Empty for an empty statement.
    pub fn kind(&self) -> String {
        self.0
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or_default()
            .to_ascii_uppercase()
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `sql` tokenized by `dialect`, literals replaced, comments dropped, whitespace collapsed;
/// `None` when it does not tokenize.
fn literals_out(dialect: &dyn Dialect, sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(dialect, sql).tokenize().ok()?;
    let mut out = String::with_capacity(sql.len().min(MAX_STATEMENT_CHARS));
    let mut space = false;
    for token in &tokens {
        let text = match token {
            Token::Whitespace(_) | Token::EOF => {
                space = true;
                continue;
            }
            other => render(other),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(&text);
    }
    Some(out)
}

/// One token as the audit keeps it.
fn render(token: &Token) -> String {
    match token {
        // Literals, whatever their quoting.
        Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_) => "?".to_string(),
        // Names and keywords (quoted identifiers included: they name objects).
        Token::Word(_) | Token::Placeholder(_) => token.to_string(),
        Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => {
            " ".to_string()
        }
        // Anything else is an operator or punctuation; a token this list does not know (a
        // newer tokenizer's literal) is kept only if it holds no letter, digit or quote.
        other => {
            let text = other.to_string();
            if text
                .chars()
                .any(|c| c.is_alphanumeric() || matches!(c, '\'' | '"' | '`' | '$'))
            {
                "?".to_string()
            } else {
                text
            }
        }
    }
}

fn cut(text: String) -> String {
    let chars = text.chars().count();
    if chars <= MAX_STATEMENT_CHARS {
        return text;
    }
    let kept: String = text.chars().take(MAX_STATEMENT_CHARS).collect();
    format!("{kept}… ({chars} chars)")
}

#[cfg(test)]
mod tests {
    use super::Statement;

    fn n(sql: &str) -> String {
        Statement::normalize(sql).as_str().to_string()
    }

    #[test]
    fn erasures_never_keep_their_identifiers() {
        for sql in [
            "ERASE PATIENT MRN0042",
            "erase patient 'MRN0042', 42 in columns (mrn)",
            "/* hi */ ERASE PATIENT MRN0042 junk (",
        ] {
            assert_eq!(n(sql), "ERASE PATIENT ?", "{sql}");
        }
        assert_eq!(n("ERASE PATIENT 'x' DRY RUN"), "ERASE PATIENT ? DRY RUN");
    }

    #[test]
    fn strings_and_numbers_become_question_marks() {
        assert_eq!(
            n("SELECT * FROM ehr.patients WHERE mrn = 'MRN-0042' AND age > 61.5"),
            "SELECT * FROM ehr.patients WHERE mrn = ? AND age > ?"
        );
        assert_eq!(
            n("INSERT INTO bronze.t VALUES ('pump-1', 72, 1e3), ('o''brien', -4, .5)"),
            "INSERT INTO bronze.t VALUES (?, ?, ?), (?, -?, ?)"
        );
        assert_eq!(
            n("SELECT TIMESTAMP '2026-11-23 10:00:00', INTERVAL '1 day', x'DEADBEEF'"),
            "SELECT TIMESTAMP ?, INTERVAL ?, ?"
        );
    }

    #[test]
    fn every_quoting_of_strings_is_kept_out() {
        for (sql, secret) in [
            ("SELECT E'Jane\\'s record' AS x", "Jane"),
            ("SELECT $$Jane Doe$$", "Jane"),
            ("SELECT $tag$Jane $ Doe$tag$", "Jane"),
            ("SELECT N'Jane'", "Jane"),
            ("SELECT U&'J\\0061ne'", "J"),
            ("SELECT B'0101'", "0101"),
            ("SELECT '12345' || '6789'", "123"),
            // Literals only the generic dialect (which runs statements) reads.
            ("SELECT q'#x' Ada Lovelace '#' AS y", "Ada"),
            ("SELECT r'''Ada Lovelace''' AS y", "Ada"),
            ("SELECT B\"Ada Lovelace\" AS y", "Ada"),
        ] {
            let got = n(sql);
            assert!(!got.contains(secret), "{sql} -> {got}");
            assert!(got.starts_with("SELECT ?"), "{sql} -> {got}");
        }
    }

    #[test]
    fn comments_are_dropped_and_whitespace_collapsed() {
        assert_eq!(
            n("-- patient Jane Doe, MRN 42\nSELECT  a,\n\t/* Jane */ b FROM t  WHERE c = $1"),
            "SELECT a, b FROM t WHERE c = $1"
        );
        assert_eq!(
            n("SELECT a FROM t WHERE b = ?"),
            "SELECT a FROM t WHERE b = ?"
        );
    }

    #[test]
    fn identifiers_and_keywords_stay() {
        assert_eq!(
            n("SELECT \"Odd Name\".x FROM silver.readings VERSION AS OF 3"),
            "SELECT \"Odd Name\".x FROM silver.readings VERSION AS OF ?"
        );
        assert_eq!(n("select count(*) from t"), "select count(*) from t");
    }

    #[test]
    fn text_that_does_not_tokenize_is_a_placeholder_with_its_length() {
        for sql in [
            "SELECT * FROM t WHERE mrn = 'MRN-0042",
            "SELECT $$Jane",
            "SELECT E'Jane",
            "SELECT 1 /* Jane",
        ] {
            let got = n(sql);
            assert_eq!(
                got,
                format!("<statement that does not tokenize: {} bytes>", sql.len()),
                "{sql}"
            );
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(Statement::normalize("  select 1").kind(), "SELECT");
        assert_eq!(
            Statement::normalize("-- x\nINSERT INTO t VALUES (1)").kind(),
            "INSERT"
        );
        assert_eq!(Statement::normalize("").kind(), "");
    }

    #[test]
    fn long_statements_are_cut() {
        let sql = format!("SELECT {}", vec!["a"; 20_000].join(", "));
        let got = n(&sql);
        assert!(got.ends_with(" chars)"), "{}", &got[got.len() - 40..]);
        assert!(got.chars().count() < super::MAX_STATEMENT_CHARS + 40);
    }

    #[test]
    fn hostile_statements_never_panic() {
        for sql in [
            "",
            "'",
            "\"",
            "$",
            "$$",
            "$a$",
            "E'",
            "U&'",
            "--",
            "/*",
            "\u{0}",
            "é'ü",
            "x'zz'",
            "SELECT ''''",
            "\\",
            "1e",
            ".e1",
            "$1$",
            "?",
            "::",
            "'\n'",
        ] {
            let got = n(sql);
            assert!(!got.contains('\''), "{sql:?} -> {got}");
        }
    }
}
