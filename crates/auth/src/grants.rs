//! Roles, grants, ownership and data policies (column masks, row filters): the access state
//! the engine keeps in the warehouse's `system.grants` table, and the one rule
//! ([`AccessState::allows`]) that says whether a principal holds a privilege on an object.
//!
//! A principal holds a privilege when its built-in level gives it ([`Principal::allows`]),
//! when it owns the object, or when a grant to it, to one of its roles or to `public` does.
//! Two tables are outside every level and grant: `system.audit` is read (and its retention
//! shortened) only by the `auditor` role, and `system.grants` only by admins and auditors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::{Object, Principal, PrincipalKind, Privilege};

/// The role whose members read `system.audit`.
pub const AUDITOR: &str = "auditor";
/// The role whose members may `SET medlake.break_glass = 'reason'` to lift masks and row
/// filters for their connection.
pub const BREAK_GLASS: &str = "break_glass";
/// The pseudo-role every principal belongs to.
pub const PUBLIC: &str = "public";
/// Role names that always exist and cannot be created or dropped: the built-in levels, the
/// special roles and `public`.
pub const BUILT_IN_ROLES: &[&str] = &[
    "none",
    "reader",
    "writer",
    "admin",
    AUDITOR,
    BREAK_GLASS,
    PUBLIC,
];

/// What a grant is on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Securable {
    /// The warehouse (`GRANT CREATE ON WAREHOUSE`: create schemas).
    Warehouse,
    /// A schema: `ON SCHEMA s` and `ON ALL TABLES IN SCHEMA s` (table privileges granted on
    /// a schema cover its tables, those created later too).
    Schema(String),
    Table {
        schema: String,
        table: String,
    },
    Secret(String),
}

impl Securable {
    pub fn table(schema: &str, table: &str) -> Self {
        Securable::Table {
            schema: schema.to_lowercase(),
            table: table.to_lowercase(),
        }
    }

    /// The kind word stored in `system.grants` and shown by `SHOW GRANTS`.
    pub fn kind(&self) -> &'static str {
        match self {
            Securable::Warehouse => "warehouse",
            Securable::Schema(_) => "schema",
            Securable::Table { .. } => "table",
            Securable::Secret(_) => "secret",
        }
    }

    /// The object's name (`schema.table`, the schema, the secret; empty for the warehouse).
    pub fn name(&self) -> String {
        match self {
            Securable::Warehouse => String::new(),
            Securable::Schema(s) | Securable::Secret(s) => s.clone(),
            Securable::Table { schema, table } => format!("{schema}.{table}"),
        }
    }

    /// Reads back what [`Securable::kind`] and [`Securable::name`] wrote.
    pub fn from_parts(kind: &str, name: &str) -> Option<Self> {
        Some(match kind {
            "warehouse" => Securable::Warehouse,
            "schema" => Securable::Schema(name.to_string()),
            "secret" => Securable::Secret(name.to_string()),
            "table" => {
                let (schema, table) = name.split_once('.')?;
                Securable::table(schema, table)
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Securable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Securable::Warehouse => f.write_str("warehouse"),
            other => write!(f, "{} {}", other.kind(), other.name()),
        }
    }
}

/// One privilege granted to a user or role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub grantee: String,
    pub privilege: Privilege,
    pub on: Securable,
}

/// `ALTER TABLE t SET ROW FILTER expr ON (columns)`: only rows for which `expression` is true
/// are seen; `columns` are the ones it reads (a view must carry them to inherit it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowFilter {
    pub expression: String,
    pub columns: Vec<String>,
}

/// `schema.table`, lower case.
pub type TableKey = (String, String);

/// Everything `system.grants` holds, as of one version of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessState {
    /// Roles made with `CREATE ROLE` (the built-in ones are not listed).
    pub roles: BTreeSet<String>,
    /// `(member, role)`: `GRANT role TO member` (a user or another role).
    pub members: BTreeSet<(String, String)>,
    pub grants: BTreeSet<Grant>,
    /// Owners of tables, materialized views and schemas (their creators unless changed
    /// with `ALTER ... OWNER TO`).
    pub owners: BTreeMap<Securable, String>,
    /// Column masks: table → column → SQL expression (a function name or an expression
    /// over the table's columns).
    pub masks: BTreeMap<TableKey, BTreeMap<String, String>>,
    pub row_filters: BTreeMap<TableKey, RowFilter>,
    /// Materialized views whose owner declared that they may drop the row filters of
    /// their inputs (`ALTER MATERIALIZED VIEW v DECLASSIFY`).
    pub declassified: BTreeSet<TableKey>,
}

impl AccessState {
    /// Whether `name` is a role (built in or created).
    pub fn role_exists(&self, name: &str) -> bool {
        BUILT_IN_ROLES.contains(&name) || self.roles.contains(name)
    }

    /// Every role `principal` holds: its built-in level, `public`, the roles of its
    /// configuration and those granted in SQL, transitively (roles granted to its roles).
    pub fn roles_of(&self, principal: &Principal) -> BTreeSet<String> {
        let mut roles: BTreeSet<String> = BTreeSet::new();
        if principal.kind == PrincipalKind::IngestToken {
            return roles;
        }
        roles.insert(PUBLIC.to_string());
        roles.insert(principal.role.as_str().to_string());
        let mut pending: Vec<String> = principal.roles.iter().cloned().collect();
        pending.push(principal.name.clone());
        let mut seen = BTreeSet::new();
        while let Some(member) = pending.pop() {
            if !seen.insert(member.clone()) {
                continue;
            }
            if member != principal.name {
                roles.insert(member.clone());
            }
            for (m, role) in &self.members {
                if *m == member {
                    pending.push(role.clone());
                }
            }
        }
        roles
    }

    /// The owner of a table or schema, if one is recorded.
    pub fn owner(&self, on: &Securable) -> Option<&str> {
        self.owners.get(on).map(String::as_str)
    }

    /// Whether `principal` (holding `roles`, from [`AccessState::roles_of`]) owns `on`.
    pub fn owns(&self, principal: &Principal, roles: &BTreeSet<String>, on: &Securable) -> bool {
        self.owner(on)
            .is_some_and(|owner| owner == principal.name || roles.contains(owner))
    }

    /// Whether `principal`, holding `roles`, may do `privilege` on `object`. Deny by default.
    pub fn allows(
        &self,
        principal: &Principal,
        roles: &BTreeSet<String>,
        privilege: &Privilege,
        object: &Object,
    ) -> bool {
        if let Object::Table { schema, table } = object
            && schema == "system"
        {
            match table.as_str() {
                // The audit trail is the auditors': not even an admin reads it without
                // taking (and so auditing) the role.
                "audit" => {
                    return matches!(privilege, Privilege::Select | Privilege::Maintain)
                        && roles.contains(AUDITOR);
                }
                // Who may grant what, which identifiers were erased (as hashes), and the
                // alert log (each firing's row as its rule's owner read it: readers see
                // firings through `system.alerts`, filtered by the views they list).
                "grants" | "erasures" | "alert_events" => {
                    return *privilege == Privilege::Select
                        && (principal.is_admin() || roles.contains(AUDITOR));
                }
                _ => {}
            }
        }
        if principal.allows(privilege, object) {
            return true;
        }
        if principal.kind == PrincipalKind::IngestToken {
            return false;
        }
        // The catalogs every client reads to find its way (the engine filters their rows to
        // what the principal may use).
        if let Object::Table { schema, .. } = object
            && matches!(schema.as_str(), "information_schema" | "pg_catalog")
        {
            return *privilege == Privilege::Select;
        }
        match object {
            // Statement-level things (settings, listings that are filtered per principal).
            Object::Warehouse(_) => matches!(privilege, Privilege::Select),
            Object::Table { schema, table } => {
                let on = Securable::table(schema, table);
                if self.owns(principal, roles, &on) && *privilege != Privilege::Admin {
                    return true;
                }
                let schema_on = Securable::Schema(schema.clone());
                match privilege {
                    Privilege::Select
                    | Privilege::Insert
                    | Privilege::Update
                    | Privilege::Delete
                    | Privilege::Refresh => {
                        let schema_grant = self.granted(roles, principal, privilege, &schema_on);
                        schema_grant
                            || (self.granted(roles, principal, privilege, &on)
                                && self.uses_schema(principal, roles, schema))
                    }
                    // Creating `schema.table`: CREATE (or CREATE EXTERNAL) on its schema.
                    Privilege::Create | Privilege::CreateExternal => {
                        self.owns(principal, roles, &schema_on)
                            || self.granted(roles, principal, privilege, &schema_on)
                            || (*privilege == Privilege::CreateExternal
                                && self.granted(roles, principal, privilege, &Securable::Warehouse))
                    }
                    // DROP, OPTIMIZE/VACUUM, ALTER, GRANT: the owner's (above) or an admin's.
                    _ => false,
                }
            }
            Object::Schema(schema) => {
                let on = Securable::Schema(schema.clone());
                match privilege {
                    Privilege::Usage => self.uses_schema(principal, roles, schema),
                    Privilege::Create => {
                        self.granted(roles, principal, privilege, &Securable::Warehouse)
                    }
                    Privilege::CreateExternal => {
                        self.owns(principal, roles, &on)
                            || self.granted(roles, principal, privilege, &on)
                            || self.granted(roles, principal, privilege, &Securable::Warehouse)
                    }
                    Privilege::Admin => false,
                    _ => self.owns(principal, roles, &on),
                }
            }
            Object::Secret(name) => {
                matches!(privilege, Privilege::UseSecret | Privilege::Usage)
                    && self.granted(
                        roles,
                        principal,
                        &Privilege::Usage,
                        &Securable::Secret(name.clone()),
                    )
            }
        }
    }

    /// Whether a grant of `privilege` on `on` reaches the principal (to its name or a role).
    fn granted(
        &self,
        roles: &BTreeSet<String>,
        principal: &Principal,
        privilege: &Privilege,
        on: &Securable,
    ) -> bool {
        self.grants.iter().any(|g| {
            g.on == *on
                && g.privilege == *privilege
                && (g.grantee == principal.name || roles.contains(&g.grantee))
        })
    }

    /// USAGE on a schema: granted, implied by any grant on the schema, or its ownership.
    fn uses_schema(&self, principal: &Principal, roles: &BTreeSet<String>, schema: &str) -> bool {
        let on = Securable::Schema(schema.to_string());
        self.owns(principal, roles, &on)
            || self
                .grants
                .iter()
                .any(|g| g.on == on && (g.grantee == principal.name || roles.contains(&g.grantee)))
    }

    /// The grants `SHOW GRANTS` lists for one grantee (`None`: every grant).
    pub fn grants_to<'a>(&'a self, grantee: Option<&'a str>) -> impl Iterator<Item = &'a Grant> {
        self.grants
            .iter()
            .filter(move |g| grantee.is_none_or(|name| g.grantee == name))
    }

    /// Forgets everything recorded about a dropped table: grants, owner, masks, filter.
    pub fn forget_table(&mut self, schema: &str, table: &str) {
        let on = Securable::table(schema, table);
        self.grants.retain(|g| g.on != on);
        self.owners.remove(&on);
        let key = (schema.to_lowercase(), table.to_lowercase());
        self.masks.remove(&key);
        self.row_filters.remove(&key);
        self.declassified.remove(&key);
    }

    /// Forgets a dropped schema and its tables.
    pub fn forget_schema(&mut self, schema: &str) {
        let schema = schema.to_lowercase();
        self.grants.retain(|g| match &g.on {
            Securable::Schema(s) => *s != schema,
            Securable::Table { schema: s, .. } => *s != schema,
            _ => true,
        });
        self.owners.retain(|on, _| match on {
            Securable::Schema(s) => *s != schema,
            Securable::Table { schema: s, .. } => *s != schema,
            _ => true,
        });
        self.masks.retain(|(s, _), _| *s != schema);
        self.row_filters.retain(|(s, _), _| *s != schema);
        self.declassified.retain(|(s, _)| *s != schema);
    }
}

/// The privileges `GRANT ALL [PRIVILEGES] ON ...` gives on each kind of object.
pub fn all_privileges(on: &Securable) -> Vec<Privilege> {
    match on {
        Securable::Warehouse => vec![Privilege::Create, Privilege::CreateExternal],
        Securable::Schema(_) => vec![
            Privilege::Usage,
            Privilege::Create,
            Privilege::CreateExternal,
            Privilege::Select,
            Privilege::Insert,
            Privilege::Update,
            Privilege::Delete,
            Privilege::Refresh,
        ],
        Securable::Table { .. } => vec![
            Privilege::Select,
            Privilege::Insert,
            Privilege::Update,
            Privilege::Delete,
            Privilege::Refresh,
        ],
        Securable::Secret(_) => vec![Privilege::Usage],
    }
}

/// Whether `privilege` may be granted on `on` (`GRANT CREATE ON TABLE` makes no sense).
pub fn grantable(privilege: &Privilege, on: &Securable) -> bool {
    all_privileges(on).contains(privilege)
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

    use crate::Role;

    fn clinician() -> Principal {
        let mut p = Principal::user("alice", Role::None);
        p.roles.insert("clinician".into());
        p
    }

    #[test]
    fn a_none_user_holds_only_what_is_granted() {
        let mut state = AccessState::default();
        let alice = clinician();
        let roles = state.roles_of(&alice);
        let patients = table("silver", "patients");
        assert!(!state.allows(&alice, &roles, &Privilege::Select, &patients));
        // A table grant alone is not enough: USAGE on the schema too.
        state.grants.insert(Grant {
            grantee: "clinician".into(),
            privilege: Privilege::Select,
            on: Securable::table("silver", "patients"),
        });
        assert!(!state.allows(&alice, &roles, &Privilege::Select, &patients));
        state.grants.insert(Grant {
            grantee: "clinician".into(),
            privilege: Privilege::Usage,
            on: Securable::Schema("silver".into()),
        });
        assert!(state.allows(&alice, &roles, &Privilege::Select, &patients));
        assert!(!state.allows(&alice, &roles, &Privilege::Insert, &patients));
        assert!(!state.allows(
            &alice,
            &roles,
            &Privilege::Select,
            &table("silver", "other")
        ));
        // A schema-wide grant covers every table, later ones too.
        state.grants.insert(Grant {
            grantee: "alice".into(),
            privilege: Privilege::Select,
            on: Securable::Schema("gold".into()),
        });
        assert!(state.allows(
            &alice,
            &roles,
            &Privilege::Select,
            &table("gold", "anything")
        ));
    }

    #[test]
    fn roles_are_transitive_and_ownership_gives_the_owner_ops() {
        let mut state = AccessState::default();
        state.roles.insert("clinician".into());
        state.roles.insert("oncall".into());
        state.members.insert(("clinician".into(), "oncall".into()));
        state.members.insert(("oncall".into(), "clinician".into())); // a cycle
        let alice = clinician();
        let roles = state.roles_of(&alice);
        assert!(roles.contains("oncall") && roles.contains("public") && roles.contains("none"));
        let t = table("gold", "x");
        assert!(!state.allows(&alice, &roles, &Privilege::Owner, &t));
        state
            .owners
            .insert(Securable::table("gold", "x"), "oncall".into());
        for p in [
            Privilege::Owner,
            Privilege::Drop,
            Privilege::Select,
            Privilege::Maintain,
        ] {
            assert!(state.allows(&alice, &roles, &p, &t));
        }
        // A writer's level does not include what only owners do.
        let w = Principal::user("w", Role::Writer);
        let wr = state.roles_of(&w);
        assert!(state.allows(&w, &wr, &Privilege::Drop, &t));
        assert!(!state.allows(&w, &wr, &Privilege::Owner, &t));
    }

    #[test]
    fn the_audit_table_is_the_auditors_only() {
        let state = AccessState::default();
        let admin = Principal::user("root", Role::Admin);
        let audit = table("system", "audit");
        assert!(!state.allows(&admin, &state.roles_of(&admin), &Privilege::Select, &audit));
        let mut auditor = Principal::user("eve", Role::None);
        auditor.roles.insert(AUDITOR.into());
        let roles = state.roles_of(&auditor);
        assert!(state.allows(&auditor, &roles, &Privilege::Select, &audit));
        assert!(!state.allows(&auditor, &roles, &Privilege::Insert, &audit));
        assert!(state.allows(
            &auditor,
            &roles,
            &Privilege::Select,
            &table("system", "grants")
        ));
        let reader = Principal::user("r", Role::Reader);
        assert!(!state.allows(
            &reader,
            &state.roles_of(&reader),
            &Privilege::Select,
            &table("system", "grants")
        ));
    }

    #[test]
    fn secrets_need_usage() {
        let mut state = AccessState::default();
        let etl = Principal::user("etl", Role::None);
        let roles = state.roles_of(&etl);
        let secret = Object::Secret("EHR".into());
        assert!(!state.allows(&etl, &roles, &Privilege::UseSecret, &secret));
        state.grants.insert(Grant {
            grantee: "etl".into(),
            privilege: Privilege::Usage,
            on: Securable::Secret("EHR".into()),
        });
        assert!(state.allows(&etl, &roles, &Privilege::UseSecret, &secret));
        // A reader's level never reaches secrets.
        let r = Principal::user("r", Role::Reader);
        assert!(!state.allows(
            &r,
            &state.roles_of(&r),
            &Privilege::UseSecret,
            &Object::Secret("X".into())
        ));
    }

    #[test]
    fn forgetting_a_table_drops_its_grants_and_policies() {
        let mut state = AccessState::default();
        state.grants.insert(Grant {
            grantee: "x".into(),
            privilege: Privilege::Select,
            on: Securable::table("s", "t"),
        });
        state.owners.insert(Securable::table("s", "t"), "x".into());
        state
            .masks
            .entry(("s".into(), "t".into()))
            .or_default()
            .insert("c".into(), "'***'".into());
        state.forget_table("S", "T");
        assert_eq!(state, AccessState::default());
    }
}
