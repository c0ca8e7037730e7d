//! Principals and the privilege rules of part 1: three built-in roles, an explicit
//! permission for external tables, per-principal secret use, and ingest tokens scoped to
//! tables. Deny by default: a privilege that no rule grants is refused for all but admins.

use std::collections::BTreeSet;
use std::fmt;

/// What kind of identity a principal is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A configured user (Postgres and Flight SQL doors, by password).
    User,
    /// A bearer token of the HTTP ingest door: it may push rows into its tables, nothing else.
    IngestToken,
    /// The operator on the server's own machine: the `medlake sql`/`apply`/`refresh` commands
    /// and `--insecure-no-auth` on loopback.
    Local,
}

/// The built-in roles (grants come in part 2 of the access-control work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Queries only.
    Reader,
    /// Queries, and writes to warehouse tables: INSERT, CREATE/DROP of tables, schemas and
    /// materialized views, REFRESH, OPTIMIZE, VACUUM, ingest.
    #[default]
    Writer,
    /// Everything, including external tables, every secret and statement kinds that have
    /// no privilege rule yet.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// `schema.table` or `schema.*` (an ingest token's tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: String,
    /// `None` for every table of the schema.
    pub table: Option<String>,
}

impl TablePattern {
    /// Parses `schema.table` or `schema.*` (case-insensitive, as table names are).
    pub fn parse(text: &str) -> Option<Self> {
        let (schema, table) = text.trim().split_once('.')?;
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return None;
        }
        Some(Self {
            schema: schema.to_lowercase(),
            table: (table != "*").then(|| table.to_lowercase()),
        })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.eq_ignore_ascii_case(schema)
            && self
                .table
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(table))
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            self.schema,
            self.table.as_deref().unwrap_or("*")
        )
    }
}

/// What a statement may need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    /// Read rows (SELECT, COPY TO STDOUT, DESCRIBE HISTORY, SHOW).
    Select,
    /// Add or replace rows of a table (INSERT, ingest).
    Insert,
    /// Create a table, schema or materialized view.
    Create,
    /// Drop a table, schema or materialized view.
    Drop,
    /// Refresh a materialized view.
    Refresh,
    /// OPTIMIZE and VACUUM.
    Maintain,
    /// Create an external table (reaches outside the warehouse).
    CreateExternal,
    /// Reference a secret of the store as `${NAME}`.
    UseSecret,
    /// Statement kinds without a rule of their own: admins only.
    Admin,
}

impl Privilege {
    pub fn as_str(&self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Create => "CREATE",
            Privilege::Drop => "DROP",
            Privilege::Refresh => "REFRESH",
            Privilege::Maintain => "MAINTAIN",
            Privilege::CreateExternal => "CREATE EXTERNAL",
            Privilege::UseSecret => "USE SECRET",
            Privilege::Admin => "ADMIN",
        }
    }
}

/// What a privilege is asked on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Table {
        schema: String,
        table: String,
    },
    Schema(String),
    Secret(String),
    /// The warehouse as a whole (statement kinds, settings).
    Warehouse(String),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Table { schema, table } => write!(f, "table {schema}.{table}"),
            Object::Schema(s) => write!(f, "schema {s}"),
            Object::Secret(s) => write!(f, "secret {s}"),
            Object::Warehouse(what) => f.write_str(what),
        }
    }
}

/// Who runs a statement. Every session of the engine has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub kind: PrincipalKind,
    pub role: Role,
    /// May create external tables (and IMPORT FOREIGN SCHEMA) without being an admin.
    pub create_external: bool,
    /// The secrets of the store this principal may reference (admins: all).
    pub secrets: BTreeSet<String>,
    /// Ingest tokens: the tables they may push into.
    pub tables: Vec<TablePattern>,
}

impl Principal {
    /// The operator on the server's machine (CLI, no-auth loopback demo): an admin.
    pub fn local(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: PrincipalKind::Local,
            role: Role::Admin,
            create_external: true,
            secrets: BTreeSet::new(),
            tables: Vec::new(),
        }
    }

    /// A configured user with a role.
    pub fn user(name: impl Into<String>, role: Role) -> Self {
        Self {
            name: name.into(),
            kind: PrincipalKind::User,
            role,
            create_external: false,
            secrets: BTreeSet::new(),
            tables: Vec::new(),
        }
    }

    /// An HTTP ingest token that may push into `tables`.
    pub fn ingest_token(name: impl Into<String>, tables: Vec<TablePattern>) -> Self {
        Self {
            name: name.into(),
            kind: PrincipalKind::IngestToken,
            role: Role::Reader,
            create_external: false,
            secrets: BTreeSet::new(),
            tables,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this principal holds `privilege` on `object`.
    pub fn allows(&self, privilege: &Privilege, object: &Object) -> bool {
        if self.kind == PrincipalKind::IngestToken {
            return matches!(privilege, Privilege::Insert)
                && matches!(object, Object::Table { schema, table }
                    if self.tables.iter().any(|p| p.matches(schema, table)));
        }
        if self.is_admin() {
            return true;
        }
        match privilege {
            Privilege::Select => true,
            Privilege::Insert
            | Privilege::Create
            | Privilege::Drop
            | Privilege::Refresh
            | Privilege::Maintain => self.role >= Role::Writer,
            Privilege::CreateExternal => self.role >= Role::Writer && self.create_external,
            Privilege::UseSecret => match object {
                Object::Secret(name) => self.secrets.contains(name),
                _ => false,
            },
            Privilege::Admin => false,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PrincipalKind::IngestToken => write!(f, "ingest token \"{}\"", self.name),
            _ => write!(f, "user \"{}\"", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str, t: &str) -> Object {
        Object::Table {
            schema: s.into(),
            table: t.into(),
        }
    }

    #[test]
    fn roles_are_ordered_and_deny_by_default() {
        let reader = Principal::user("r", Role::Reader);
        let writer = Principal::user("w", Role::Writer);
        let admin = Principal::user("a", Role::Admin);
        let t = table("bronze", "x");
        assert!(reader.allows(&Privilege::Select, &t));
        for p in [
            Privilege::Insert,
            Privilege::Create,
            Privilege::Drop,
            Privilege::Refresh,
        ] {
            assert!(!reader.allows(&p, &t));
            assert!(writer.allows(&p, &t));
        }
        let w = Object::Warehouse("statement".into());
        assert!(!writer.allows(&Privilege::Admin, &w));
        assert!(admin.allows(&Privilege::Admin, &w));
        assert!(!writer.allows(&Privilege::CreateExternal, &t));
        let mut etl = writer.clone();
        etl.create_external = true;
        assert!(etl.allows(&Privilege::CreateExternal, &t));
        assert!(!etl.allows(&Privilege::UseSecret, &Object::Secret("EHR".into())));
        etl.secrets.insert("EHR".into());
        assert!(etl.allows(&Privilege::UseSecret, &Object::Secret("EHR".into())));
        assert!(!etl.allows(&Privilege::UseSecret, &Object::Secret("OTHER".into())));
    }

    #[test]
    fn ingest_tokens_only_insert_into_their_tables() {
        let token = Principal::ingest_token(
            "gw",
            vec![
                TablePattern::parse("bronze.readings").unwrap(),
                TablePattern::parse("raw.*").unwrap(),
            ],
        );
        assert!(token.allows(&Privilege::Insert, &table("bronze", "readings")));
        assert!(token.allows(&Privilege::Insert, &table("RAW", "anything")));
        assert!(!token.allows(&Privilege::Insert, &table("bronze", "other")));
        assert!(!token.allows(&Privilege::Select, &table("bronze", "readings")));
        assert!(TablePattern::parse("nodot").is_none());
        assert!(TablePattern::parse("a.b.c").is_none());
    }
}
