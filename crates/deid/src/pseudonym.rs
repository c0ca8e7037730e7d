//! `pseudonym(value, 'KEY_NAME') -> text`: a keyed, stable pseudonym of an identifier.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::args::{
    arrays, canonical, check_arity, finish, identifier_type, is_text, key_name,
    require_key_literal, strings, text_array,
};
use crate::keys::{Key, Keys};

/// The SQL name of the function.
pub const PSEUDONYM: &str = "pseudonym";

/// How many lowercase hex characters a pseudonym has: the first 16 bytes (128 bits) of the
/// HMAC-SHA-256. Two different identifiers share a pseudonym with probability 2^-128; among
/// n identifiers the chance of any collision is about n² / 2^129: 1.5 × 10^-21 for a
/// billion, so a pseudonym can be joined on like the identifier it replaces.
pub const PSEUDONYM_HEX_CHARS: usize = 32;

const USAGE: &str = "pseudonym(value, 'KEY_NAME')";

/// The pseudonym of `value` under the key `key`, exactly as the SQL function computes it:
/// the first [`PSEUDONYM_HEX_CHARS`] lowercase hex characters of
/// HMAC-SHA-256(key, canonical text of `value`), where the canonical text is `value` with
/// surrounding white space removed. `None` for blank text, and for a key shorter than
/// [`crate::MIN_KEY_BYTES`].
///
/// In Python: `hmac.new(key, value.strip().encode(), hashlib.sha256).hexdigest()[:32]`
/// (Python's `strip` and Rust's `trim` agree on spaces, tabs and line breaks).
pub fn pseudonym_of(key: &[u8], value: &str) -> Option<String> {
    let key = Key::new(key, PSEUDONYM, "").ok()?;
    canonical(value).map(|text| pseudonym_text(&key, text))
}

pub(crate) fn pseudonym_text(key: &Key, canonical_text: &str) -> String {
    // No domain prefix: a pseudonym is the plain HMAC of the identifier, so another system
    // holding the same key computes the same pseudonym (linkage across tools).
    // `shift_date` prefixes its own domain, so a published pseudonym says nothing about a
    // patient's date shift even under the same key.
    let mac = key.mac(b"", canonical_text);
    hex::encode(&mac[..PSEUDONYM_HEX_CHARS / 2])
}

/// The `pseudonym` function; see the crate documentation.
pub(crate) struct Pseudonym {
    signature: Signature,
    keys: Arc<dyn Keys>,
}

impl Pseudonym {
    pub(crate) fn new(keys: Arc<dyn Keys>) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            keys,
        }
    }
}

// Never prints the resolver: what it holds is its own business.
impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonym").finish_non_exhaustive()
    }
}

impl PartialEq for Pseudonym {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature && Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for Pseudonym {}

impl Hash for Pseudonym {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

impl ScalarUDFImpl for Pseudonym {
    fn name(&self) -> &str {
        PSEUDONYM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        check_arity(PSEUDONYM, USAGE, arg_types, 2)?;
        let Some(value) = identifier_type(&arg_types[0]) else {
            return plan_err!(
                "{PSEUDONYM}: the value must be text or an integer, not {}",
                arg_types[0]
            );
        };
        let name = &arg_types[1];
        if !(is_text(name) || name.is_null()) {
            return plan_err!(
                "{PSEUDONYM}: argument 2 must be a string literal naming a secret, not {name}"
            );
        }
        Ok(vec![value, name.clone()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        require_key_literal(PSEUDONYM, args.scalar_arguments, 1)?;
        Ok(Arc::new(Field::new(PSEUDONYM, DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [value, name] = args.args.as_slice() else {
            return exec_err!("{PSEUDONYM} takes 2 arguments: {USAGE}");
        };
        let name = key_name(PSEUDONYM, name)?;
        let (arrays, scalar) = arrays(std::slice::from_ref(value), args.number_rows)?;
        let key = Key::resolve(self.keys.as_ref(), PSEUDONYM, name)?;
        let values = strings(PSEUDONYM, &arrays[0])?;
        let out =
            text_array(values.map(|v| v.and_then(canonical).map(|t| pseudonym_text(&key, t))));
        finish(out, scalar)
    }
}
