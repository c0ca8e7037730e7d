//! SQL functions that tell a query (or a mask) who is asking, registered in every session:
//! `current_user()`, `session_user()`, `is_member('role')` (also spelled
//! `is_account_group_member`, as in Databricks), `has_table_privilege([user,] 'schema.table',
//! 'SELECT')` and `has_schema_privilege([user,] 'schema', 'USAGE')`, answered from the
//! access state (psql and JDBC tools ask the last two).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanBuilder, StringArray};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::scalar::ScalarValue;
use medlake_auth::{Object, Principal, Privilege};

use super::Access;

/// The session's principal and the access state, compared by identity.
#[derive(Clone)]
struct Asker(Arc<(Principal, Arc<Access>)>);

impl std::fmt::Debug for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Asker({})", self.0.0.name)
    }
}

impl PartialEq for Asker {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Asker {}

impl Hash for Asker {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    CurrentUser,
    SessionUser,
    IsMember,
    IsAccountGroupMember,
    HasTablePrivilege,
    HasSchemaPrivilege,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Identity {
    kind: Kind,
    asker: Asker,
    signature: Signature,
}

/// The functions of one session.
pub(crate) fn udfs(principal: Principal, access: Arc<Access>) -> Vec<ScalarUDF> {
    let asker = Asker(Arc::new((principal, access)));
    let text = || DataType::Utf8;
    [
        (Kind::CurrentUser, Signature::nullary(Volatility::Stable)),
        (Kind::SessionUser, Signature::nullary(Volatility::Stable)),
        (
            Kind::IsMember,
            Signature::exact(vec![text()], Volatility::Stable),
        ),
        (
            Kind::IsAccountGroupMember,
            Signature::exact(vec![text()], Volatility::Stable),
        ),
        (
            Kind::HasTablePrivilege,
            Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![text(), text()]),
                    TypeSignature::Exact(vec![text(), text(), text()]),
                ],
                Volatility::Stable,
            ),
        ),
        (
            Kind::HasSchemaPrivilege,
            Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![text(), text()]),
                    TypeSignature::Exact(vec![text(), text(), text()]),
                ],
                Volatility::Stable,
            ),
        ),
    ]
    .into_iter()
    .map(|(kind, signature)| {
        ScalarUDF::new_from_impl(Identity {
            kind,
            asker: asker.clone(),
            signature,
        })
    })
    .collect()
}

impl Identity {
    fn principal(&self) -> &Principal {
        &self.asker.0.0
    }

    /// Whether the session's principal (or, for another user's name, nobody but that
    /// principal: other users' privileges are not disclosed) holds `privilege` on `object`.
    fn holds(&self, user: Option<&str>, object: &str, privilege: &str, schema_level: bool) -> bool {
        let principal = self.principal();
        if user.is_some_and(|u| !u.eq_ignore_ascii_case(&principal.name)) {
            return false;
        }
        let state = self.asker.0.1.store.cached();
        let roles = state.roles_of(principal);
        let object = if schema_level {
            Object::Schema(object.trim().to_lowercase())
        } else {
            let (schema, table) = object.trim().split_once('.').unwrap_or(("public", object));
            Object::Table {
                schema: schema.trim_matches('"').to_lowercase(),
                table: table.trim_matches('"').to_lowercase(),
            }
        };
        // Postgres accepts a comma-separated list: any of them.
        privilege.split(',').any(|p| {
            let p = p.trim().trim_end_matches(" WITH GRANT OPTION").to_string();
            let privilege = match p.to_ascii_uppercase().as_str() {
                "USAGE" if schema_level => Privilege::Usage,
                "CREATE" if schema_level => Privilege::Create,
                other => match Privilege::parse(other) {
                    Some(p) => p,
                    None => return false,
                },
            };
            state.allows(principal, &roles, &privilege, &object)
        })
    }
}

fn text_at(array: &ArrayRef, row: usize) -> Option<String> {
    let array = array.as_any().downcast_ref::<StringArray>()?;
    (!array.is_null(row)).then(|| array.value(row).to_string())
}

impl ScalarUDFImpl for Identity {
    fn name(&self) -> &str {
        match self.kind {
            Kind::CurrentUser => "current_user",
            Kind::SessionUser => "session_user",
            Kind::IsMember => "is_member",
            Kind::IsAccountGroupMember => "is_account_group_member",
            Kind::HasTablePrivilege => "has_table_privilege",
            Kind::HasSchemaPrivilege => "has_schema_privilege",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::CurrentUser | Kind::SessionUser => DataType::Utf8,
            _ => DataType::Boolean,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let principal = self.principal();
        match self.kind {
            Kind::CurrentUser | Kind::SessionUser => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                Some(principal.name.clone()),
            ))),
            Kind::IsMember | Kind::IsAccountGroupMember => {
                let roles = self.asker.0.1.store.cached().roles_of(principal);
                let rows = args.number_rows;
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let mut out = BooleanBuilder::with_capacity(rows);
                for row in 0..rows {
                    out.append_option(
                        text_at(&arrays[0], row).map(|r| roles.contains(&r.to_lowercase())),
                    );
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
            Kind::HasTablePrivilege | Kind::HasSchemaPrivilege => {
                let schema_level = self.kind == Kind::HasSchemaPrivilege;
                let rows = args.number_rows;
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let mut out = BooleanBuilder::with_capacity(rows);
                for row in 0..rows {
                    let values: Vec<Option<String>> =
                        arrays.iter().map(|a| text_at(a, row)).collect();
                    let answer = match values.as_slice() {
                        [Some(object), Some(privilege)] => {
                            Some(self.holds(None, object, privilege, schema_level))
                        }
                        [Some(user), Some(object), Some(privilege)] => {
                            Some(self.holds(Some(user), object, privilege, schema_level))
                        }
                        [_, _] | [_, _, _] => None,
                        _ => {
                            return Err(DataFusionError::Plan(format!(
                                "{} takes 2 or 3 arguments",
                                self.name()
                            )));
                        }
                    };
                    out.append_option(answer);
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
        }
    }
}
