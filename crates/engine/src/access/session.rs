//! What a [`Session`] does with access control: runs the access statements, protects every
//! plan with masks and row filters, records owners, and breaks glass.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::common::TableReference;
use datafusion::logical_expr::{ExprSchemable, LogicalPlan};
use medlake_auth::{
    AccessState, BREAK_GLASS, BUILT_IN_ROLES, Grant, PrincipalKind, RowFilter, Securable,
    all_privileges, grantable,
};
use medlake_lake::TableName;

use super::catalog::{CATALOG_SCHEMAS, LISTING_PRIVILEGES};
use super::parse::{AccessStatement, Target};
use super::protect::{self, Viewer};
use super::{TableKey, table_key};
use crate::{Error, Output, Result, Session};

/// The setting that breaks glass: `SET medlake.break_glass = 'reason'`.
pub const BREAK_GLASS_SETTING: &str = "medlake.break_glass";

/// Catalog tables whose rows name tables: each principal sees the rows of tables it holds a
/// privilege on.
const CATALOG_LISTINGS: &[(&str, &str)] = &[
    ("information_schema", "tables"),
    ("information_schema", "columns"),
    ("information_schema", "views"),
    ("pg_catalog", "__information_schema_tables"),
    ("pg_catalog", "__information_schema_columns"),
];

/// A `system` table whose rows are about materialized views.
struct SystemListing {
    table: &'static str,
    /// Its columns that name the view.
    columns: &'static [&'static str],
    /// The view's `schema.name`, in SQL over those columns.
    view: &'static str,
    /// Columns only the view's maintainers (its owner, writers, admins) read: a refresh's
    /// error may quote the values it failed on, and row counts count rows a filter hides.
    maintainers_only: &'static [(&'static str, &'static str)],
}

/// Each principal sees the rows of the views it lists, as in the catalogs.
const SYSTEM_LISTINGS: &[SystemListing] = &[
    SystemListing {
        table: medlake_views::system::MATERIALIZED_VIEWS,
        columns: &["schema", "name"],
        view: "\"schema\" || '.' || \"name\"",
        maintainers_only: &[("rows", "CAST(NULL AS BIGINT)")],
    },
    SystemListing {
        table: medlake_views::system::REFRESHES,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[
            ("rows_written", "CAST(NULL AS BIGINT)"),
            (
                "error",
                "CASE WHEN \"error\" IS NULL THEN NULL \
                 ELSE 'the refresh failed (its error is shown to the view''s owner)' END",
            ),
        ],
    },
    SystemListing {
        table: medlake_views::system::EXPECTATIONS,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[],
    },
    // A firing's key and row are the rule owner's reading of the view (their masks, their
    // row filters): only the view's maintainers read them; whoever lists the view sees that
    // an alert fired, its severity and its delivery.
    SystemListing {
        table: medlake_alerts::ALERTS,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[
            ("key", "CAST(NULL AS VARCHAR)"),
            ("row", "CAST(NULL AS VARCHAR)"),
        ],
    },
    SystemListing {
        table: medlake_alerts::ALERT_RULES,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[],
    },
    SystemListing {
        table: medlake_views::system::SOURCES,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[
            ("rows", "CAST(NULL AS BIGINT)"),
            (
                "last_error",
                "CASE WHEN \"last_error\" IS NULL THEN NULL \
                 ELSE 'the refresh failed (its error is shown to the view''s owner)' END",
            ),
        ],
    },
    SystemListing {
        table: medlake_views::system::LINEAGE,
        columns: &["view"],
        view: "\"view\"",
        maintainers_only: &[],
    },
];

fn text(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

impl Session {
    /// The access state as of now (re-read when another server may have changed it).
    pub(crate) async fn access_state(&self) -> Result<Arc<AccessState>> {
        self.shared.access.store.current().await
    }

    /// Whether this session's principal lists (and may describe) `name`: it holds one of
    /// [`LISTING_PRIVILEGES`] on it.
    async fn lists(&self, name: &TableName) -> Result<bool> {
        let state = self.access_state().await?;
        let roles = state.roles_of(&self.principal);
        Ok(super::catalog::lists(
            &state,
            &self.principal,
            &roles,
            &name.schema,
            &name.table,
        ))
    }

    /// `DESCRIBE t` names a table's columns: refused (42501) unless the principal lists it.
    pub(crate) async fn check_described(
        &self,
        statement: &datafusion::sql::parser::Statement,
    ) -> Result<()> {
        use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
        let datafusion::sql::parser::Statement::Statement(statement) = statement else {
            return Ok(());
        };
        let SqlStatement::ExplainTable { table_name, .. } = statement.as_ref() else {
            return Ok(());
        };
        let name = self.table_name(&crate::statement::name_parts(table_name)?)?;
        if self.lists(&name).await? {
            return Ok(());
        }
        tracing::warn!(target: "medlake::audit", principal = %self.principal.name, table = %name, "permission denied: DESCRIBE");
        Err(Error::PermissionDenied {
            principal: self.principal.to_string(),
            privilege: "SELECT, INSERT, UPDATE, DELETE or REFRESH",
            object: format!("table {name}"),
        })
    }

    /// A statement that does not plan may say why by naming a table's columns ("No field
    /// named x. Valid fields are ..."): when it names an existing table the principal does
    /// not list, the error is that refusal (42501) instead.
    pub(crate) async fn refuse_unlisted(
        &self,
        statement: &datafusion::sql::parser::Statement,
        error: Error,
    ) -> Error {
        use datafusion::sql::sqlparser::ast::visit_relations;
        let datafusion::sql::parser::Statement::Statement(statement) = statement else {
            return error;
        };
        let mut names = Vec::new();
        let _ = visit_relations(statement.as_ref(), |name| {
            names.push(name.clone());
            std::ops::ControlFlow::<()>::Continue(())
        });
        for name in names {
            let Ok(table) = crate::statement::name_parts(&name).and_then(|p| self.table_name(&p))
            else {
                continue;
            };
            let exists = self
                .shared
                .warehouse
                .table_exists(&table)
                .await
                .unwrap_or(false);
            if exists && matches!(self.lists(&table).await, Ok(false)) {
                return Error::PermissionDenied {
                    principal: self.principal.to_string(),
                    privilege: "SELECT, INSERT, UPDATE, DELETE or REFRESH",
                    object: format!("table {table}"),
                };
            }
        }
        error
    }

    /// The columns of `schema.table` as declared, when this session's principal lists it
    /// (`None` otherwise): for metadata doors (Flight SQL `GetTables` with schemas), which
    /// describe what a principal may write as well as what it may read.
    pub async fn table_columns(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<arrow::datatypes::SchemaRef>> {
        let name = TableName::new(schema, table)?;
        if !self.lists(&name).await? {
            return Ok(None);
        }
        let provider = self
            .ctx
            .table_provider(TableReference::partial(
                name.schema.as_str(),
                name.table.as_str(),
            ))
            .await
            .map_err(crate::unwrap_lake_error)?;
        Ok(Some(provider.schema()))
    }

    /// Whether glass is broken on this connection.
    fn glass_broken(&self) -> bool {
        self.break_glass
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// `SET medlake.break_glass = 'reason'` (an empty reason or `RESET` mends it).
    pub(crate) async fn break_glass(&self, reason: Option<String>) -> Result<Output> {
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if let Some(reason) = &reason {
            let state = self.access_state().await?;
            if !state.roles_of(&self.principal).contains(BREAK_GLASS) {
                tracing::warn!(target: "medlake::audit", principal = %self.principal.name, "break glass refused");
                return Err(Error::PermissionDenied {
                    principal: self.principal.to_string(),
                    privilege: "BREAK GLASS",
                    object: "this connection (members of the break_glass role only)".into(),
                });
            }
            if reason.chars().count() < 10 {
                return Err(Error::InvalidValue {
                    what: BREAK_GLASS_SETTING.into(),
                    reason: "give the reason (at least 10 characters): it is audited".into(),
                });
            }
            tracing::warn!(target: "medlake::audit", principal = %self.principal.name, reason = %reason, "BREAK GLASS: masks and row filters lifted for this connection");
        } else {
            tracing::info!(target: "medlake::audit", principal = %self.principal.name, "break glass ended");
        }
        *self
            .break_glass
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
        Ok(Output::command("SET", 0))
    }

    /// The break-glass reason of this connection, if glass is broken (for the audit).
    pub fn break_glass_reason(&self) -> Option<String> {
        self.break_glass
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `plan` with every protected table masked and filtered for this session's principal.
    /// `aliases` names the time-travel tables of the statement.
    pub(crate) async fn protect(
        &self,
        plan: LogicalPlan,
        state: &Arc<AccessState>,
        aliases: &HashMap<String, TableKey>,
    ) -> Result<LogicalPlan> {
        let default_schema = self.default_schema_name();
        let resolve = |r: &TableReference| -> Option<TableKey> {
            if r.schema() == Some(crate::TIME_TRAVEL_SCHEMA) {
                return aliases.get(r.table()).cloned();
            }
            Some(table_key(r, &default_schema))
        };
        let references = protect::scanned(&plan);
        // Pinned versions live in one internal schema: a statement reads only its own (its
        // `VERSION AS OF`), never another session's by name.
        if let Some(other) = references.iter().find(|r| {
            r.schema() == Some(crate::TIME_TRAVEL_SCHEMA) && !aliases.contains_key(r.table())
        }) {
            return Err(Error::PermissionDenied {
                principal: self.principal.to_string(),
                privilege: "SELECT",
                object: format!(
                    "{} (internal: read an old version with VERSION AS OF)",
                    crate::TIME_TRAVEL_SCHEMA
                ),
            })
            .inspect_err(|_| tracing::warn!(target: "medlake::audit", principal = %self.principal.name, table = %other, "internal time-travel table named"));
        }
        let scanned: BTreeSet<TableKey> = references.iter().filter_map(&resolve).collect();
        if scanned.is_empty() {
            return Ok(plan);
        }
        let session_state = self.ctx.state();
        let mut policies = self
            .shared
            .access
            .policies(
                state,
                &session_state,
                &self.shared.views,
                &self.shared.catalog.materialized_views(),
                scanned.iter().cloned(),
            )
            .await?;
        let roles = state.roles_of(&self.principal);
        // Everyone's listings, admins' too: an admin lists every table but system.audit (the
        // auditors'), so clients that read the schema of every listed table keep working.
        for (schema, table) in CATALOG_LISTINGS {
            let key = (schema.to_string(), table.to_string());
            if scanned.contains(&key) {
                policies.insert(key, Arc::new(catalog_listing_policy(&session_state)?));
            }
        }
        for listing in SYSTEM_LISTINGS {
            let key = ("system".to_string(), listing.table.to_string());
            if scanned.contains(&key) {
                policies.insert(
                    key,
                    Arc::new(system_listing_policy(&session_state, listing).await?),
                );
            }
        }
        let viewer = Viewer {
            principal: &self.principal,
            roles: &roles,
            lifted: self.glass_broken(),
        };
        protect::protect(plan, &viewer, &policies, &resolve)
    }

    /// Refuses `what` (a write that replaces every row of `name`) when a mask or row filter
    /// of the table holds for this principal: it would remove rows the filter hides from them
    /// and could write back masked values in place of real ones.
    pub(crate) async fn refuse_restricted_overwrite(
        &self,
        name: &TableName,
        what: &str,
    ) -> Result<()> {
        let sql = format!(
            "SELECT * FROM \"{}\".\"{}\"",
            name.schema.replace('"', "\"\""),
            name.table.replace('"', "\"\"")
        );
        let plan = self
            .ctx
            .state()
            .create_logical_plan(&sql)
            .await
            .map_err(crate::unwrap_lake_error)?;
        let state = self.access_state().await?;
        let protected = self.protect(plan.clone(), &state, &HashMap::new()).await?;
        if protected == plan {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            principal: self.principal.to_string(),
            privilege: "DELETE",
            object: format!(
                "{name} with {what}: a mask or row filter of the table holds for you, so it would remove rows you cannot see or write masked values"
            ),
        })
    }

    /// A materialized view's creator must hold what running its query needs: SELECT on every
    /// table and view it reads and USE SECRET on every de-identification key it names (its
    /// refreshes run as its owner later and are checked again then). A query that does not
    /// plan here does not plan for the views either (they plan with the engine's state, which
    /// this session's extends), and is refused there with the views' own error (a view
    /// naming itself: 42P17).
    pub(crate) async fn check_view_reads(
        &self,
        definition: &medlake_views::definition::ViewDefinition,
    ) -> Result<()> {
        let state = self.ctx.state();
        let Ok(plan) = state.create_logical_plan(&definition.query).await else {
            return Ok(());
        };
        let default_schema = self.default_schema_name();
        let mut needs = crate::privileges::for_plan(&plan, &default_schema)?;
        // Expectations run over the view's rows with the same rights: the keys they name too.
        for expectation in &definition.expectations {
            let sql = format!(
                "SELECT ({}) FROM ({}) AS __expectation",
                expectation.expression, definition.query
            );
            if let Ok(plan) = state.create_logical_plan(&sql).await {
                needs.extend(crate::privileges::for_plan(&plan, &default_schema)?);
            }
        }
        crate::privileges::check(&self.principal, &*self.access_state().await?, &needs)
    }

    /// A materialized view computes from real values (its refreshes read as the system), so
    /// its creator must see every masked column its query reads: in its output, a filter, a
    /// join, a group key or an aggregate alike (lineage then masks the output for readers).
    /// Otherwise `WHERE mrn = 'X'` in a view would tell its creator what the mask hides.
    /// Admins are not asked: they own every table and may drop its masks.
    pub(crate) async fn check_view_masks(&self, query: &str) -> Result<()> {
        // Admins (the operator too) may drop any mask anyway.
        if self.principal.is_admin() {
            return Ok(());
        }
        let state = self.ctx.state();
        // A query that does not plan is refused by the view's own checks.
        let Ok(plan) = state.create_logical_plan(query).await else {
            return Ok(());
        };
        let access = self.access_state().await?;
        let masked = first_masked_read(
            &self.shared.access,
            &access,
            &state,
            &self.shared.views,
            &self.shared.catalog.materialized_views(),
            &self.principal,
            &plan,
            &self.default_schema_name(),
        )
        .await?;
        match masked {
            None => Ok(()),
            Some(column) => Err(Error::PermissionDenied {
                principal: self.principal.to_string(),
                privilege: "SELECT",
                object: format!(
                    "column {column}, which is masked for you: a materialized view computes from real values, so its creator must see them"
                ),
            }),
        }
    }

    /// The row count a CREATE or REFRESH of `view` may answer with: none (0) when the view
    /// carries a row filter, whose hidden rows the count would reveal (the local operator
    /// sees it).
    pub(crate) async fn reportable_rows(&self, view: &TableName, rows: u64) -> Result<u64> {
        Ok(if self.row_filtered(view).await? {
            0
        } else {
            rows
        })
    }

    /// Whether a row filter of `table` (its own, or one its lineage carries) holds for this
    /// session's principal: counts of its rows would then tell what the filter hides (the
    /// local operator is held to none).
    pub(crate) async fn row_filtered(&self, table: &TableName) -> Result<bool> {
        if self.principal.kind == medlake_auth::PrincipalKind::Local {
            return Ok(false);
        }
        let state = self.access_state().await?;
        let key: TableKey = (table.schema.clone(), table.table.clone());
        let policies = self
            .shared
            .access
            .policies(
                &state,
                &self.ctx.state(),
                &self.shared.views,
                &self.shared.catalog.materialized_views(),
                [key.clone()],
            )
            .await?;
        Ok(policies
            .get(&key)
            .is_some_and(|p| !p.filters.is_empty() || p.refused.is_some()))
    }

    /// Forgets a view's DECLASSIFY (its definition is being replaced).
    pub(crate) async fn undeclassify(&self, view: &TableName) -> Result<()> {
        let key: TableKey = (view.schema.clone(), view.table.clone());
        if !self.access_state().await?.declassified.contains(&key) {
            return Ok(());
        }
        self.shared
            .access
            .store
            .change(|state| {
                state.declassified.remove(&key);
                Ok(())
            })
            .await?;
        self.shared.access.forget_lineage();
        Ok(())
    }

    /// Records this session's principal as the owner of what it created (the local
    /// operator's creations have no owner: admins manage them).
    pub(crate) async fn record_owner(&self, on: Securable) -> Result<()> {
        if self.principal.kind != PrincipalKind::User {
            return Ok(());
        }
        let owner = self.principal.name.clone();
        self.shared
            .access
            .store
            .change(|state| {
                state
                    .owners
                    .entry(on.clone())
                    .or_insert_with(|| owner.clone());
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Forgets the grants and policies of a dropped table (or schema, with `table: None`).
    pub(crate) async fn forget(&self, schema: &str, table: Option<&str>) -> Result<()> {
        let state = self.access_state().await?;
        let schema = schema.to_lowercase();
        let known = match table {
            Some(t) => {
                let on = Securable::table(&schema, t);
                let key = (schema.clone(), t.to_lowercase());
                state.grants.iter().any(|g| g.on == on)
                    || state.owners.contains_key(&on)
                    || state.masks.contains_key(&key)
                    || state.row_filters.contains_key(&key)
                    || state.declassified.contains(&key)
            }
            None => true,
        };
        self.shared.access.forget_lineage();
        if !known {
            return Ok(());
        }
        self.shared
            .access
            .store
            .change(|state| {
                match table {
                    Some(t) => state.forget_table(&schema, t),
                    None => state.forget_schema(&schema),
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    fn securable(&self, target: &Target) -> Result<Securable> {
        Ok(match target {
            Target::Warehouse => Securable::Warehouse,
            Target::Schema(s) => Securable::Schema(s.to_lowercase()),
            Target::Secret(s) => Securable::Secret(s.clone()),
            Target::Table(name) => {
                let name = self.table_name(&crate::statement::name_parts(name)?)?;
                Securable::table(&name.schema, &name.table)
            }
        })
    }

    /// Runs an access statement (its privileges were checked).
    pub(crate) async fn execute_access(&self, statement: AccessStatement) -> Result<Output> {
        match statement {
            AccessStatement::CreateRole {
                name,
                if_not_exists,
            } => self.create_role(name, if_not_exists).await,
            AccessStatement::DropRole { name, if_exists } => self.drop_role(name, if_exists).await,
            AccessStatement::Membership {
                grant,
                roles,
                members,
            } => self.change_membership(grant, roles, members).await,
            AccessStatement::Privileges {
                grant,
                privileges,
                on,
                grantees,
            } => {
                self.change_privileges(grant, privileges, on, grantees)
                    .await
            }
            AccessStatement::ShowGrants { to, on } => self.show_grants(to, on).await,
            AccessStatement::OwnerTo { on, owner } => self.owner_to(on, owner).await,
            AccessStatement::SetMask {
                table,
                column,
                mask,
            } => self.set_mask(table, column, mask).await,
            AccessStatement::SetRowFilter { table, filter } => {
                self.set_row_filter(table, filter).await
            }
            AccessStatement::Declassify { view } => self.declassify(view).await,
        }
    }

    /// `CREATE ROLE`.
    async fn create_role(&self, name: String, if_not_exists: bool) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        check_role_name(&name)?;
        if if_not_exists && store.current().await?.role_exists(&name) {
            return Ok(Output::command("CREATE ROLE", 0));
        }
        store
            .change(|state| {
                if state.role_exists(&name) {
                    return Err(Error::InvalidValue {
                        what: "CREATE ROLE".into(),
                        reason: format!("role \"{name}\" already exists"),
                    });
                }
                state.roles.insert(name.clone());
                Ok(())
            })
            .await?;
        tracing::info!(target: "medlake::audit", by = %by, role = %name, "role created");
        Ok(Output::command("CREATE ROLE", 0))
    }

    /// `DROP ROLE`: its memberships, grants and ownerships go with it.
    async fn drop_role(&self, name: String, if_exists: bool) -> Result<Output> {
        let store = &self.shared.access.store;
        if BUILT_IN_ROLES.contains(&name.as_str()) {
            return Err(Error::InvalidValue {
                what: "DROP ROLE".into(),
                reason: format!("{name} is built in"),
            });
        }
        store
            .change(|state| {
                if !state.roles.remove(&name) {
                    return if if_exists {
                        Ok(())
                    } else {
                        Err(undefined_role(&name))
                    };
                }
                state.members.retain(|(m, r)| *m != name && *r != name);
                state.grants.retain(|g| g.grantee != name);
                state.owners.retain(|_, owner| *owner != name);
                Ok(())
            })
            .await?;
        Ok(Output::command("DROP ROLE", 0))
    }

    /// `GRANT/REVOKE role TO/FROM members`.
    async fn change_membership(
        &self,
        grant: bool,
        roles: Vec<String>,
        members: Vec<String>,
    ) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        for member in &members {
            check_grantee(member)?;
        }
        let users = &self.shared.users;
        store
            .change(|state| {
                if grant {
                    for member in &members {
                        check_known(users, state, member)?;
                    }
                }
                for role in &roles {
                    if !state.role_exists(role) || role == "public" {
                        return Err(undefined_role(role));
                    }
                    if ["none", "reader", "writer", "admin"].contains(&role.as_str()) {
                        return Err(Error::InvalidValue {
                            what: "GRANT role".into(),
                            reason: format!(
                                "{role} is a built-in level, set by the configuration (role = \"{role}\")"
                            ),
                        });
                    }
                    for member in &members {
                        let pair = (member.clone(), role.clone());
                        if grant {
                            state.members.insert(pair);
                        } else {
                            state.members.remove(&pair);
                        }
                    }
                }
                Ok(())
            })
            .await?;
        tracing::info!(target: "medlake::audit", by = %by, grant, roles = ?roles, members = ?members, "role membership changed");
        Ok(Output::command(if grant { "GRANT" } else { "REVOKE" }, 0))
    }

    /// `GRANT/REVOKE privileges ON object TO/FROM grantees`.
    async fn change_privileges(
        &self,
        grant: bool,
        privileges: Vec<medlake_auth::Privilege>,
        on: Target,
        grantees: Vec<String>,
    ) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        let on = self.securable(&on)?;
        self.check_exists(&on).await?;
        let privileges = if privileges.is_empty() {
            all_privileges(&on)
        } else {
            privileges
        };
        for privilege in &privileges {
            if !grantable(privilege, &on) {
                return Err(Error::InvalidValue {
                    what: format!("{} privilege", privilege.as_str()),
                    reason: format!("it cannot be granted on a {}", on.kind()),
                });
            }
        }
        for grantee in &grantees {
            check_grantee(grantee)?;
        }
        let users = &self.shared.users;
        store
            .change(|state| {
                if grant {
                    for grantee in &grantees {
                        check_known(users, state, grantee)?;
                    }
                }
                for grantee in &grantees {
                    for privilege in &privileges {
                        let g = Grant {
                            grantee: grantee.clone(),
                            privilege: privilege.clone(),
                            on: on.clone(),
                        };
                        if grant {
                            state.grants.insert(g);
                        } else {
                            state.grants.remove(&g);
                        }
                    }
                }
                Ok(())
            })
            .await?;
        tracing::info!(target: "medlake::audit", by = %by, grant, on = %on, grantees = ?grantees, privileges = ?privileges.iter().map(|p| p.as_str()).collect::<Vec<_>>(), "privileges changed");
        Ok(Output::command(if grant { "GRANT" } else { "REVOKE" }, 0))
    }

    /// `ALTER ... OWNER TO`.
    async fn owner_to(&self, on: Target, owner: String) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        let on = self.securable(&on)?;
        self.check_exists(&on).await?;
        check_grantee(&owner)?;
        let users = &self.shared.users;
        store
            .change(|state| {
                check_known(users, state, &owner)?;
                state.owners.insert(on.clone(), owner.clone());
                Ok(())
            })
            .await?;
        tracing::info!(target: "medlake::audit", by = %by, on = %on, owner = %owner, "owner changed");
        Ok(Output::command("ALTER", 0))
    }

    /// `ALTER TABLE t ALTER COLUMN c SET MASK ... | DROP MASK`.
    async fn set_mask(
        &self,
        table: datafusion::sql::sqlparser::ast::ObjectName,
        column: String,
        mask: Option<String>,
    ) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        let name = self.table_name(&crate::statement::name_parts(&table)?)?;
        let schema = self.table_schema(&name).await?;
        let Some(field) = schema
            .fields()
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(&column))
        else {
            return Err(Error::InvalidValue {
                what: "column".into(),
                reason: format!("{name} has no column {column}"),
            });
        };
        let column = field.name().clone();
        if let Some(sql) = &mask {
            let planned = protect::plan_expression(&self.ctx.state(), &schema, sql, Some(&column))?;
            self.check_policy_keys(&planned).await?;
            let ty = planned.to_field(&schema)?.1.data_type().clone();
            if !arrow::compute::can_cast_types(&ty, field.data_type()) {
                return Err(Error::InvalidValue {
                    what: "mask".into(),
                    reason: format!(
                        "it gives {ty}, which does not convert to {column}'s type {}",
                        field.data_type()
                    ),
                });
            }
        }
        let key = (name.schema.clone(), name.table.clone());
        store
            .change(|state| {
                let masks = state.masks.entry(key.clone()).or_default();
                match &mask {
                    Some(sql) => {
                        masks.insert(column.clone(), sql.clone());
                    }
                    None => {
                        masks.remove(&column);
                    }
                }
                if masks.is_empty() {
                    state.masks.remove(&key);
                }
                Ok(())
            })
            .await?;
        self.shared.access.forget_lineage();
        tracing::info!(target: "medlake::audit", by = %by, table = %name, column = %column, set = mask.is_some(), "column mask changed");
        Ok(Output::command("ALTER TABLE", 0))
    }

    /// A mask or row filter is evaluated for every reader with the keys it names: whoever
    /// sets one must hold USE SECRET on each (else a mask `pseudonym(v, 'K')` on one's own
    /// table would compute keyed pseudonyms under a key one may not use).
    async fn check_policy_keys(&self, planned: &datafusion::logical_expr::Expr) -> Result<()> {
        let keys =
            medlake_deid::referenced_keys_in_expr(planned).map_err(|e| Error::InvalidValue {
                what: "de-identification key".into(),
                reason: e.strip_backtrace(),
            })?;
        let needs: Vec<crate::privileges::Need> = keys
            .into_iter()
            .map(|name| {
                crate::privileges::Need::new(
                    medlake_auth::Privilege::UseSecret,
                    medlake_auth::Object::Secret(name),
                )
            })
            .collect();
        crate::privileges::check(&self.principal, &*self.access_state().await?, &needs)
    }

    /// `ALTER TABLE t SET ROW FILTER ... ON (...) | DROP ROW FILTER`.
    async fn set_row_filter(
        &self,
        table: datafusion::sql::sqlparser::ast::ObjectName,
        filter: Option<(String, Vec<String>)>,
    ) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        let name = self.table_name(&crate::statement::name_parts(&table)?)?;
        let schema = self.table_schema(&name).await?;
        let filter = match filter {
            Some((sql, columns)) => {
                let planned = protect::plan_expression(&self.ctx.state(), &schema, &sql, None)?;
                self.check_policy_keys(&planned).await?;
                let ty = planned.to_field(&schema)?.1.data_type().clone();
                if ty != arrow::datatypes::DataType::Boolean {
                    return Err(Error::InvalidValue {
                        what: "row filter".into(),
                        reason: format!("it gives {ty}, not a boolean"),
                    });
                }
                let mut named = Vec::new();
                for c in &columns {
                    let field = schema
                        .fields()
                        .iter()
                        .find(|f| f.name().eq_ignore_ascii_case(c))
                        .ok_or_else(|| Error::InvalidValue {
                            what: "row filter column".into(),
                            reason: format!("{name} has no column {c}"),
                        })?;
                    named.push(field.name().clone());
                }
                // The filter reads only the columns it names (so a view that carries
                // them can inherit it).
                for used in planned.column_refs() {
                    if !named.contains(&used.name) {
                        return Err(Error::InvalidValue {
                            what: "row filter".into(),
                            reason: format!("it reads {}, which ON (...) does not list", used.name),
                        });
                    }
                }
                Some(RowFilter {
                    expression: sql,
                    columns: named,
                })
            }
            None => None,
        };
        let key = (name.schema.clone(), name.table.clone());
        store
            .change(|state| {
                match &filter {
                    Some(f) => {
                        state.row_filters.insert(key.clone(), f.clone());
                    }
                    None => {
                        state.row_filters.remove(&key);
                    }
                }
                Ok(())
            })
            .await?;
        self.shared.access.forget_lineage();
        tracing::info!(target: "medlake::audit", by = %by, table = %name, set = filter.is_some(), "row filter changed");
        Ok(Output::command("ALTER TABLE", 0))
    }

    /// `ALTER MATERIALIZED VIEW v DECLASSIFY`.
    async fn declassify(
        &self,
        view: datafusion::sql::sqlparser::ast::ObjectName,
    ) -> Result<Output> {
        let store = &self.shared.access.store;
        let by = self.principal.name.clone();
        let name = self.table_name(&crate::statement::name_parts(&view)?)?;
        let Some(definition) = self.shared.views.view(&name).await? else {
            return Err(Error::InvalidValue {
                what: "DECLASSIFY".into(),
                reason: format!("{name} is not a materialized view"),
            });
        };
        // Declassifying drops the row filters of the inputs: their owners' call.
        let state = self.access_state().await?;
        let mut planning = self.ctx.state();
        planning.config_mut().options_mut().catalog.default_schema =
            definition.definition.default_schema.clone();
        let plan = planning
            .create_logical_plan(&definition.definition.query)
            .await
            .map_err(crate::unwrap_lake_error)?;
        for reference in protect::scanned(&plan) {
            let key = table_key(&reference, &definition.definition.default_schema);
            if state.row_filters.contains_key(&key) {
                crate::privileges::check(
                    &self.principal,
                    &state,
                    &[crate::privileges::Need {
                        privilege: medlake_auth::Privilege::Owner,
                        object: medlake_auth::Object::Table {
                            schema: key.0.clone(),
                            table: key.1.clone(),
                        },
                    }],
                )?;
            }
        }
        let key = (name.schema.clone(), name.table.clone());
        store
            .change(|state| {
                state.declassified.insert(key.clone());
                Ok(())
            })
            .await?;
        self.shared.access.forget_lineage();
        tracing::warn!(target: "medlake::audit", by = %by, view = %name, "view declassified: it no longer carries its inputs' row filters");
        Ok(Output::command("ALTER MATERIALIZED VIEW", 0))
    }

    /// The schema of a table as the catalog has it.
    async fn table_schema(&self, name: &TableName) -> Result<datafusion::common::DFSchema> {
        let provider = self
            .ctx
            .table_provider(TableReference::partial(
                name.schema.as_str(),
                name.table.as_str(),
            ))
            .await
            .map_err(crate::unwrap_lake_error)?;
        Ok(datafusion::common::DFSchema::try_from(
            provider.schema().as_ref().clone(),
        )?)
    }

    /// Grants name objects that exist (a grant on a table dropped later goes with it).
    async fn check_exists(&self, on: &Securable) -> Result<()> {
        match on {
            Securable::Table { schema, table } => {
                let name = TableName::new(schema, table)?;
                let computed = schema == medlake_views::system::SCHEMA
                    && self.shared.catalog.is_computed_system_table(table);
                if !computed && !self.shared.warehouse.table_exists(&name).await? {
                    return Err(medlake_lake::Error::TableNotFound {
                        schema: schema.clone(),
                        table: table.clone(),
                    }
                    .into());
                }
            }
            Securable::Schema(schema) => {
                if !self.shared.warehouse.schema_exists(schema).await? {
                    return Err(medlake_lake::Error::SchemaNotFound {
                        schema: schema.clone(),
                    }
                    .into());
                }
            }
            Securable::Secret(_) | Securable::Warehouse => {}
        }
        Ok(())
    }

    /// `SHOW GRANTS`: the grants, memberships and owners this principal may see (admins and
    /// auditors: all; others: their own and their roles', and those on what they own).
    async fn show_grants(&self, to: Option<String>, on: Option<Target>) -> Result<Output> {
        let state = self.access_state().await?;
        let roles = state.roles_of(&self.principal);
        let on = on.map(|t| self.securable(&t)).transpose()?;
        let visible = |grantee: &str, object: Option<&Securable>| {
            super::catalog::grant_visible(&state, &self.principal, &roles, grantee, object)
        };
        let wanted = |grantee: &str, object: Option<&Securable>| {
            to.as_deref().is_none_or(|t| t == grantee)
                && on.as_ref().is_none_or(|o| object == Some(o))
                && visible(grantee, object)
        };
        let (mut principals, mut privileges, mut kinds, mut objects) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut push = |p: &str, privilege: &str, kind: &str, object: String| {
            principals.push(p.to_string());
            privileges.push(privilege.to_string());
            kinds.push(kind.to_string());
            objects.push(object);
        };
        for g in &state.grants {
            if wanted(&g.grantee, Some(&g.on)) {
                push(&g.grantee, g.privilege.as_str(), g.on.kind(), g.on.name());
            }
        }
        for (on_object, owner) in &state.owners {
            if wanted(owner, Some(on_object)) {
                push(owner, "OWNERSHIP", on_object.kind(), on_object.name());
            }
        }
        if on.is_none() {
            for (member, role) in &state.members {
                if wanted(member, None) {
                    push(member, "MEMBER", "role", role.clone());
                }
            }
            // The configured roles of the asking user, for a complete picture of oneself.
            if to.as_deref().is_none_or(|t| t == self.principal.name) {
                for role in &self.principal.roles {
                    push(
                        &self.principal.name,
                        "MEMBER",
                        "role",
                        format!("{role} (configured)"),
                    );
                }
            }
        }
        let batch = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("principal", arrow::datatypes::DataType::Utf8, false),
                arrow::datatypes::Field::new("privilege", arrow::datatypes::DataType::Utf8, false),
                arrow::datatypes::Field::new(
                    "object_type",
                    arrow::datatypes::DataType::Utf8,
                    false,
                ),
                arrow::datatypes::Field::new("object", arrow::datatypes::DataType::Utf8, false),
            ])),
            vec![
                text(principals),
                text(privileges),
                text(kinds),
                text(objects),
            ],
        )
        .map_err(|e| Error::Internal(format!("SHOW GRANTS rows: {e}")))?;
        Ok(Output::batch(batch))
    }
}

/// The filter every SQL catalog listing gets: the tables the principal holds a privilege on
/// (`catalog::lists`).
fn catalog_listing_policy(
    state: &datafusion::execution::context::SessionState,
) -> Result<protect::TablePolicy> {
    let schema = datafusion::common::DFSchema::try_from(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("table_schema", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("table_name", arrow::datatypes::DataType::Utf8, true),
    ]))?;
    // The rule of `catalog::lists`, in SQL.
    let schemas: Vec<String> = CATALOG_SCHEMAS.iter().map(|s| format!("'{s}'")).collect();
    let privileges: Vec<&str> = LISTING_PRIVILEGES.iter().map(|p| p.as_str()).collect();
    let expr = protect::plan_expression(
        state,
        &schema,
        &format!(
            "table_schema IN ({}) OR has_table_privilege(table_schema || '.' || table_name, '{}')",
            schemas.join(", "),
            privileges.join(", ")
        ),
        None,
    )?;
    Ok(protect::TablePolicy {
        filters: vec![protect::Filter {
            source: "the catalog".into(),
            expr,
            columns: vec!["table_schema".into(), "table_name".into()],
        }],
        ..Default::default()
    })
}

/// The first column `plan` reads anywhere (its output, a filter, a join, a group key, an
/// aggregate) that a mask holds for `principal` (`schema.table.column`), if any.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn first_masked_read(
    access: &super::Access,
    state: &Arc<AccessState>,
    session: &datafusion::execution::context::SessionState,
    views: &medlake_views::Views,
    materialized: &BTreeSet<TableKey>,
    principal: &medlake_auth::Principal,
    plan: &LogicalPlan,
    default_schema: &str,
) -> Result<Option<String>> {
    // Optimized, each scan reads exactly the columns the query uses somewhere.
    let optimized = session.optimize(plan).map_err(crate::unwrap_lake_error)?;
    let mut reads: Vec<(TableKey, Vec<String>)> = Vec::new();
    optimized.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let columns = scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            reads.push((table_key(&scan.table_name, default_schema), columns));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    let keys: Vec<TableKey> = reads.iter().map(|(key, _)| key.clone()).collect();
    let policies = access
        .policies(state, session, views, materialized, keys)
        .await?;
    let roles = state.roles_of(principal);
    let viewer = Viewer {
        principal,
        roles: &roles,
        lifted: false,
    };
    for (key, columns) in &reads {
        let Some(policy) = policies.get(key) else {
            continue;
        };
        for column in columns {
            let Some(masks) = policy.columns.get(column) else {
                continue;
            };
            for mask in &masks.masks {
                if !viewer.lifts(mask)? {
                    return Ok(Some(format!("{}.{}.{column}", key.0, key.1)));
                }
            }
        }
    }
    Ok(None)
}

/// The policy of one of [`SYSTEM_LISTINGS`], over the table's own schema.
async fn system_listing_policy(
    state: &datafusion::execution::context::SessionState,
    listing: &SystemListing,
) -> Result<protect::TablePolicy> {
    let provider = state
        .catalog_list()
        .catalog(crate::catalog::CATALOG)
        .and_then(|c| c.schema(medlake_views::system::SCHEMA));
    let table_schema = match provider {
        Some(schema) => schema
            .table(listing.table)
            .await?
            .map(|t| t.schema())
            .ok_or_else(|| Error::Internal(format!("system.{} is missing", listing.table)))?,
        None => return Err(Error::Internal("the system schema is missing".into())),
    };
    let schema = Arc::new(datafusion::common::DFSchema::try_from(
        table_schema.as_ref().clone(),
    )?);
    let privileges: Vec<&str> = LISTING_PRIVILEGES.iter().map(|p| p.as_str()).collect();
    let filter = protect::plan_expression(
        state,
        &schema,
        &format!(
            "has_table_privilege({}, '{}')",
            listing.view,
            privileges.join(", ")
        ),
        None,
    )?;
    let mut columns = std::collections::BTreeMap::new();
    for (column, hidden) in listing.maintainers_only {
        let expr = protect::plan_expression(
            state,
            &schema,
            &format!(
                "CASE WHEN has_table_privilege({}, 'MAINTAIN') THEN \"{column}\" ELSE {hidden} END",
                listing.view
            ),
            None,
        )?;
        let mask = protect::Mask {
            column: column.to_string(),
            expr,
            schema: schema.clone(),
        };
        columns.insert(
            column.to_string(),
            protect::ColumnPolicy {
                masks: vec![Arc::new(mask)],
                exact: true,
                direct: true,
            },
        );
    }
    Ok(protect::TablePolicy {
        filters: vec![protect::Filter {
            source: format!("system.{}", listing.table),
            expr: filter,
            columns: listing.columns.iter().map(|c| c.to_string()).collect(),
        }],
        columns,
        ..Default::default()
    })
}

fn undefined_role(name: &str) -> Error {
    Error::UndefinedRole {
        name: name.to_string(),
    }
}

/// Refuses a grantee (or new owner) that is neither PUBLIC, a role, nor a user the server
/// knows (when it knows its users: `medlake serve` with a config).
fn check_known(
    directory: &crate::access::owner::Directory,
    state: &AccessState,
    name: &str,
) -> Result<()> {
    match directory {
        Some(users) if !users.contains_key(name) && !state.role_exists(name) => {
            Err(undefined_role(name))
        }
        _ => Ok(()),
    }
}

fn check_role_name(name: &str) -> Result<()> {
    if BUILT_IN_ROLES.contains(&name) {
        return Err(Error::InvalidValue {
            what: "CREATE ROLE".into(),
            reason: format!("{name} is built in"),
        });
    }
    check_grantee(name)
}

/// Names of users and roles: what a config file or SQL identifier can hold, bounded.
fn check_grantee(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err(Error::InvalidValue {
            what: "user or role name".into(),
            reason: format!(
                "'{}' (1 to 63 letters, digits, _ - . @)",
                name.chars().take(64).collect::<String>()
            ),
        });
    }
    Ok(())
}
