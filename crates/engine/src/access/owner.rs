//! Refreshes run as their view's owner: before a view's query runs (created, refreshed by a
//! statement, by a cascade or by the scheduler), the owner must still hold what running the
//! query needs (SELECT on every input, USE SECRET on every key it names). An owner who lost
//! a grant, or who is no longer a configured user, stops the view's refreshes with 42501
//! instead of the server reading on their behalf what they may no longer read. Scheduled
//! refreshes are audited as their owner (door `scheduler`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use medlake_audit::{AuditLog, Door, Event, Outcome};
use medlake_auth::{Principal, Role, Securable};
use medlake_lake::TableName;
use medlake_views::{RefreshAuthority, RefreshOutcome, Status};

use super::Access;
use crate::privileges;

/// The users a server knows (from its configuration), by name; `None` for the local command
/// line and `--insecure-no-auth`, where every session is the operator.
pub(crate) type Directory = Option<Arc<BTreeMap<String, Principal>>>;

/// [`RefreshAuthority`] from the warehouse's grants.
pub(crate) struct OwnerAuthority {
    pub access: Arc<Access>,
    pub directory: Directory,
    pub audit: AuditLog,
}

/// Who a view owned by `owner` refreshes as: the configured user of that name, or (a view
/// owned by a role) a principal holding only that role. `None`: nobody by that name.
pub(crate) fn principal_of(
    owner: &str,
    directory: &BTreeMap<String, Principal>,
    state: &medlake_auth::AccessState,
) -> Option<Principal> {
    if let Some(user) = directory.get(owner) {
        return Some(user.clone());
    }
    state.role_exists(owner).then(|| {
        let mut role = Principal::user(owner, Role::None);
        role.roles.insert(owner.to_string());
        role
    })
}

impl OwnerAuthority {
    /// The owner of `view` and the principal refreshes run as, when the view has an owner
    /// and this server knows its users.
    fn runs_as(
        &self,
        view: &TableName,
        state: &medlake_auth::AccessState,
    ) -> Result<Option<(String, Principal)>, String> {
        let Some(directory) = &self.directory else {
            return Ok(None);
        };
        let Some(owner) = state.owner(&Securable::table(&view.schema, &view.table)) else {
            // Created by the operator (or before owners existed): the server's own.
            return Ok(None);
        };
        match principal_of(owner, directory, state) {
            Some(principal) => Ok(Some((owner.to_string(), principal))),
            None => Err(format!(
                "its owner '{owner}' is no longer a configured user or role (ALTER MATERIALIZED VIEW {view} OWNER TO someone who is)"
            )),
        }
    }
}

#[async_trait::async_trait]
impl RefreshAuthority for OwnerAuthority {
    async fn check(
        &self,
        views: &medlake_views::Views,
        view: &TableName,
        plan: &LogicalPlan,
        default_schema: &str,
        session: &SessionState,
    ) -> Result<(), String> {
        let state = self
            .access
            .store
            .current()
            .await
            .map_err(|e| format!("the access rules cannot be read: {e}"))?;
        let Some((owner, principal)) = self.runs_as(view, &state)? else {
            return Ok(());
        };
        let needs = privileges::for_plan(plan, default_schema).map_err(|e| e.to_string())?;
        privileges::check(&principal, &state, &needs)
            .map_err(|e| format!("a refresh runs as the view's owner '{owner}': {e}"))?;
        // A mask set on an input after the view was created: the owner must still see every
        // masked column the query reads (a WHERE on one would tell them what it hides).
        let materialized = views
            .list()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| (v.name.schema, v.name.table))
            .collect();
        // Masks are SQL over `is_member(...)` and the like: the owner's functions.
        let mut session = session.clone();
        for udf in super::functions::udfs(principal.clone(), self.access.clone()) {
            datafusion::execution::FunctionRegistry::register_udf(&mut session, Arc::new(udf))
                .map_err(|e| e.to_string())?;
        }
        let masked = super::session::first_masked_read(
            &self.access,
            &state,
            &session,
            views,
            &materialized,
            &principal,
            plan,
            default_schema,
        )
        .await
        .map_err(|e| e.to_string())?;
        match masked {
            None => Ok(()),
            Some(column) => Err(format!(
                "a refresh runs as the view's owner '{owner}', for whom column {column} is masked: a view computes from real values, so its owner must see them"
            )),
        }
    }

    fn scheduled(&self, outcome: &RefreshOutcome) {
        let state = self.access.store.cached();
        let (user, roles) = match self.runs_as(&outcome.view, &state) {
            Ok(Some((owner, principal))) => (owner, state.roles_of(&principal)),
            _ => ("system".to_string(), Default::default()),
        };
        let statement = format!("REFRESH MATERIALIZED VIEW {}", outcome.view);
        let failed = outcome.status == Status::Failed;
        let refused = failed
            && outcome
                .error
                .as_deref()
                .is_some_and(|e| e.contains("refused:"));
        let event = Event {
            roles: roles.into_iter().collect(),
            objects_read: outcome.inputs.keys().cloned().collect(),
            objects_written: vec![outcome.view.to_string()],
            rows: Some(outcome.rows_written),
            outcome: match (failed, refused) {
                (false, _) => Outcome::Ok,
                (true, false) => Outcome::Error,
                (true, true) => Outcome::Denied,
            },
            code: refused.then_some(medlake_common::Code::InsufficientPrivilege),
            duration: (outcome.finished - outcome.started)
                .to_std()
                .unwrap_or_default(),
            session_id: Some(outcome.refresh_id.clone()),
            ..Event::new(user, Door::Scheduler, &statement)
        };
        if let Err(e) = self.audit.record_read(event) {
            // The refresh is committed already; the log says the audit missed it.
            tracing::error!(target: "medlake::audit", view = %outcome.view, error = %e, "a scheduled refresh could not be audited");
        }
    }
}
