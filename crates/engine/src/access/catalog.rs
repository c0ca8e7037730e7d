//! What the catalogs show one session's principal: which relations it may list (and so
//! describe: their columns), and the privileges on them as PostgreSQL writes them
//! (`pg_class.relacl`, psql `\dp`).
//!
//! One rule, [`lists`], used by every listing: the SQL listings (`information_schema`, through
//! the session's catalog filter), `pg_catalog.pg_class`/`pg_attribute`/`pg_tables`/`pg_views`
//! (through the [`CatalogViewer`] each session puts in its DataFusion config, which the
//! Postgres catalog asks when it is scanned), `DESCRIBE` and Flight SQL's `GetTables`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use medlake_auth::{AUDITOR, AccessState, Object, PUBLIC, Principal, Privilege, Securable};

use super::Access;
use crate::Result;

/// A principal lists (and describes) a table when it holds any one of these on it: whoever
/// may write a table may see its columns.
pub(crate) const LISTING_PRIVILEGES: [Privilege; 5] = [
    Privilege::Select,
    Privilege::Insert,
    Privilege::Update,
    Privilege::Delete,
    Privilege::Refresh,
];

/// The schemas every principal lists: the catalogs themselves.
pub(crate) const CATALOG_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// The grantor written in an ACL item when the table has no recorded owner (the local
/// operator's tables: admins manage them). medlake does not record who granted.
const NO_OWNER: &str = "medlake";

/// Whether `principal` (holding `roles`) lists `schema.table`.
pub(crate) fn lists(
    state: &AccessState,
    principal: &Principal,
    roles: &BTreeSet<String>,
    schema: &str,
    table: &str,
) -> bool {
    let schema = schema.to_lowercase();
    if CATALOG_SCHEMAS.contains(&schema.as_str()) {
        return true;
    }
    let object = Object::Table {
        schema,
        table: table.to_lowercase(),
    };
    LISTING_PRIVILEGES
        .iter()
        .any(|p| state.allows(principal, roles, p, &object))
}

/// Whether `principal` may see a grant to `grantee` (on `object`): admins and auditors see
/// every grant; others their own, their roles' (`public` included) and those on what they own.
/// `SHOW GRANTS` and `pg_class.relacl` answer by this.
pub(crate) fn grant_visible(
    state: &AccessState,
    principal: &Principal,
    roles: &BTreeSet<String>,
    grantee: &str,
    object: Option<&Securable>,
) -> bool {
    principal.is_admin()
        || roles.contains(AUDITOR)
        || grantee == principal.name
        || roles.contains(grantee)
        || object.is_some_and(|o| state.owns(principal, roles, o))
}

/// PostgreSQL's ACL letter of a table privilege, in PostgreSQL's order (`arwdm`). REFRESH is
/// written `m`, PostgreSQL 17's MAINTAIN, which is what allows REFRESH MATERIALIZED VIEW there.
fn acl_letter(privilege: &Privilege) -> Option<(usize, char)> {
    Some(match privilege {
        Privilege::Insert => (0, 'a'),
        Privilege::Select => (1, 'r'),
        Privilege::Update => (2, 'w'),
        Privilege::Delete => (3, 'd'),
        Privilege::Refresh => (4, 'm'),
        _ => return None,
    })
}

/// A role name as `aclitem` writes it: `public` is empty, names that are not plain
/// identifiers are double-quoted.
fn acl_name(name: &str) -> String {
    if name == PUBLIC {
        return String::new();
    }
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The catalog as one session's principal sees it; put in each session's DataFusion config
/// (`SessionConfig::set_extension`) and read by the Postgres catalog when it is scanned.
pub struct CatalogViewer {
    principal: Principal,
    access: Arc<Access>,
}

impl std::fmt::Debug for CatalogViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogViewer")
            .field("principal", &self.principal.name)
            .finish_non_exhaustive()
    }
}

impl CatalogViewer {
    pub(crate) fn new(principal: Principal, access: Arc<Access>) -> Self {
        Self { principal, access }
    }

    /// The access state as of now, for one scan of a catalog table.
    pub(crate) async fn view(&self) -> Result<CatalogView> {
        let state = self.access.store.current().await?;
        let roles = state.roles_of(&self.principal);
        Ok(CatalogView {
            state,
            roles,
            principal: self.principal.clone(),
        })
    }
}

/// [`CatalogViewer`] as of one access state. Without one (a scan outside every session),
/// the Postgres catalog lists only the catalogs' own relations: deny by default.
#[derive(Debug)]
pub(crate) struct CatalogView {
    state: Arc<AccessState>,
    roles: BTreeSet<String>,
    principal: Principal,
}

impl CatalogView {
    /// Whether the principal lists `schema.table` ([`lists`]).
    pub(crate) fn lists(&self, schema: &str, table: &str) -> bool {
        lists(&self.state, &self.principal, &self.roles, schema, table)
    }

    /// `pg_class.relacl` of `schema.table`: PostgreSQL `aclitem`s (`grantee=letters/grantor`)
    /// for its owner (first) and for the grants on it or on its schema (`ON ALL TABLES IN SCHEMA`),
    /// those the principal may see ([`grant_visible`]), by grantee name; `None` when there is nothing to show
    /// (PostgreSQL's default privileges).
    pub(crate) fn acl(&self, schema: &str, table: &str) -> Option<Vec<String>> {
        let on = Securable::table(schema, table);
        let schema_on = Securable::Schema(schema.to_lowercase());
        let owner = self.state.owner(&on);
        let grantor = acl_name(owner.unwrap_or(NO_OWNER));
        let mut letters: BTreeMap<&str, BTreeSet<(usize, char)>> = BTreeMap::new();
        for grant in &self.state.grants {
            if grant.on != on && grant.on != schema_on {
                continue;
            }
            let Some(letter) = acl_letter(&grant.privilege) else {
                continue;
            };
            if grant_visible(
                &self.state,
                &self.principal,
                &self.roles,
                &grant.grantee,
                Some(&on),
            ) {
                letters.entry(&grant.grantee).or_default().insert(letter);
            }
        }
        // The owner holds every privilege, and comes first (as in PostgreSQL).
        let mut items = Vec::new();
        if let Some(owner) = owner {
            letters.remove(owner);
            let all: String = LISTING_PRIVILEGES
                .iter()
                .filter_map(acl_letter)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            items.push(format!("{}={all}/{grantor}", acl_name(owner)));
        }
        for (grantee, held) in letters {
            let held: String = held.into_iter().map(|(_, c)| c).collect();
            items.push(format!("{}={held}/{grantor}", acl_name(grantee)));
        }
        (!items.is_empty()).then_some(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medlake_auth::{Grant, Role};

    fn view(state: AccessState, principal: Principal) -> CatalogView {
        let roles = state.roles_of(&principal);
        CatalogView {
            state: Arc::new(state),
            roles,
            principal,
        }
    }

    #[test]
    fn acl_items_are_postgres_text_and_only_what_the_principal_may_see() {
        let mut state = AccessState::default();
        let grant = |grantee: &str, privilege, on: Securable| Grant {
            grantee: grantee.into(),
            privilege,
            on,
        };
        let patients = Securable::table("silver", "patients");
        state
            .grants
            .insert(grant("alice", Privilege::Select, patients.clone()));
        for p in [
            Privilege::Select,
            Privilege::Insert,
            Privilege::Update,
            Privilege::Delete,
        ] {
            state.grants.insert(grant("clinician", p, patients.clone()));
        }
        state.grants.insert(grant(
            "analyst",
            Privilege::Refresh,
            Securable::Schema("silver".into()),
        ));
        state
            .grants
            .insert(grant(PUBLIC, Privilege::Select, patients.clone()));
        let admin = view(state.clone(), Principal::user("root", Role::Admin));
        assert_eq!(
            admin.acl("silver", "patients"),
            Some(vec![
                "alice=r/medlake".to_string(),
                "analyst=m/medlake".into(),
                "clinician=arwd/medlake".into(),
                "=r/medlake".into(),
            ])
        );
        assert_eq!(
            admin.acl("silver", "other"),
            Some(vec!["analyst=m/medlake".into()])
        );
        assert_eq!(admin.acl("gold", "x"), None);
        // alice sees her own grant and public's, not clinician's or analyst's.
        let mut owned = state.clone();
        owned.owners.insert(patients.clone(), "dpo@hospital".into());
        let alice = view(owned.clone(), Principal::user("alice", Role::None));
        assert_eq!(
            alice.acl("silver", "patients"),
            Some(vec![
                "\"dpo@hospital\"=arwdm/\"dpo@hospital\"".to_string(),
                "alice=r/\"dpo@hospital\"".into(),
                "=r/\"dpo@hospital\"".into(),
            ])
        );
        // A SELECT grant without USAGE on the schema does not list the table.
        assert!(!alice.lists("silver", "patients"));
        assert!(alice.lists("pg_catalog", "pg_class"));
    }
}
