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

/// The built-in levels a configured user starts from; roles and grants (`GRANT`, stored in
/// `system.grants`, see [`crate::AccessState`]) add to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Nothing but what roles and grants give (the level of a clinician who may read only
    /// the tables granted to their role).
    None,
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
            Role::None => "none",
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
    /// Change rows of a table (UPDATE, MERGE's UPDATE clauses).
    Update,
    /// Remove rows of a table (DELETE, MERGE's DELETE clauses, TRUNCATE).
    Delete,
    /// Use a schema's tables (needed beside a table's own grant) or a secret.
    Usage,
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
    /// What only an object's owner (or an admin) may do: ALTER (masks, row filters,
    /// DECLASSIFY, OWNER TO), GRANT and REVOKE on it.
    Owner,
    /// Statement kinds without a rule of their own: admins only.
    Admin,
}

impl Privilege {
    pub fn as_str(&self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Drop => "DROP",
            Privilege::Refresh => "REFRESH",
            Privilege::Maintain => "MAINTAIN",
            Privilege::CreateExternal => "CREATE EXTERNAL",
            Privilege::UseSecret => "USE SECRET",
            Privilege::Owner => "OWNERSHIP",
            Privilege::Admin => "ADMIN",
        }
    }

    /// The privilege a `GRANT` names (`SELECT`, `CREATE EXTERNAL`, ...), case-insensitive.
    pub fn parse(text: &str) -> Option<Self> {
        let words: Vec<String> = text
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        Some(match words.join(" ").as_str() {
            "SELECT" => Privilege::Select,
            "INSERT" => Privilege::Insert,
            "UPDATE" => Privilege::Update,
            "DELETE" => Privilege::Delete,
            "USAGE" => Privilege::Usage,
            "CREATE" => Privilege::Create,
            "DROP" => Privilege::Drop,
            "REFRESH" => Privilege::Refresh,
            "MAINTAIN" => Privilege::Maintain,
            "CREATE EXTERNAL" => Privilege::CreateExternal,
            "USE SECRET" => Privilege::Usage,
            _ => return None,
        })
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
    /// Roles given by the configuration (`roles = [...]`); `GRANT role TO user` adds more,
    /// kept in the warehouse ([`crate::AccessState::roles_of`]).
    pub roles: BTreeSet<String>,
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
            roles: BTreeSet::new(),
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
            roles: BTreeSet::new(),
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
            roles: BTreeSet::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this principal's built-in level (or ingest-token scope) gives `privilege` on
    /// `object`, before roles, grants and ownership ([`crate::AccessState::allows`] adds
    /// those; the engine asks that).
    pub fn allows(&self, privilege: &Privilege, object: &Object) -> bool {
        if self.kind == PrincipalKind::IngestToken {
            return matches!(privilege, Privilege::Insert)
                && matches!(object, Object::Table { schema, table }
                    if self.tables.iter().any(|p| p.matches(schema, table)));
        }
        if self.is_admin() {
            return true;
        }
        if self.role == Role::None {
            return false;
        }
        match privilege {
            Privilege::Select | Privilege::Usage => !matches!(object, Object::Secret(_)),
            Privilege::Insert
            | Privilege::Update
            | Privilege::Delete
            | Privilege::Create
            | Privilege::Drop
            | Privilege::Refresh
            | Privilege::Maintain => self.role >= Role::Writer,
            Privilege::CreateExternal => self.role >= Role::Writer && self.create_external,
            Privilege::UseSecret => match object {
                Object::Secret(name) => self.secrets.contains(name),
                _ => false,
            },
            Privilege::Owner | Privilege::Admin => false,
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
