//! Keys: the resolver the engine provides, and the HMAC a function keys with it.
//!
//! Key bytes live only inside [`Key`] for the time one batch is computed: they are never
//! stored in a function, a plan or an error, and `Debug` prints `Key(***)`.

use std::fmt;

use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result as DfResult;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The fewest bytes a key may have. A pseudonym is only as strong as its key: a short or
/// empty secret (a placeholder left in a config) would make every pseudonym reversible by
/// hashing candidate identifiers, so it is refused rather than used.
pub const MIN_KEY_BYTES: usize = 16;

/// Where the functions get their keys: the engine's secret store, by name.
///
/// The engine has already checked that the session may use the secret (see
/// [`crate::referenced_keys`]) before a plan that names it runs; the resolver only looks it
/// up. It is called once per batch (and once at planning time for a call whose arguments are
/// all constants, which DataFusion folds): cache in the resolver if a lookup is costly.
///
/// Implementations must keep key bytes out of their `Debug` output and out of their error
/// messages: the functions put the message (and the secret's name) into their own error.
pub trait Keys: Send + Sync + fmt::Debug {
    /// The bytes of the secret named `name`, or why it cannot be had (no such secret, cannot
    /// read it...).
    fn key(&self, name: &str) -> Result<Vec<u8>, String>;
}

/// A resolved key, ready to MAC with: HMAC-SHA-256 with the key's ipad/opad computed once.
pub(crate) struct Key {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// Looks up the secret `name` for `function` (named in the errors).
    pub(crate) fn resolve(keys: &dyn Keys, function: &str, name: &str) -> DfResult<Self> {
        let bytes = keys
            .key(name)
            .map_err(|why| exec_datafusion_err!("{function}: secret '{name}': {why}"))?;
        Self::new(&bytes, function, name)
    }

    pub(crate) fn new(bytes: &[u8], function: &str, name: &str) -> DfResult<Self> {
        if bytes.len() < MIN_KEY_BYTES {
            return exec_err!(
                "{function}: secret '{name}' is too short to key an HMAC \
                 (it needs at least {MIN_KEY_BYTES} bytes)"
            );
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(bytes)
            .map_err(|_| exec_datafusion_err!("{function}: secret '{name}' cannot key an HMAC"))?;
        Ok(Self { mac })
    }

    /// HMAC-SHA-256 of `domain` followed by `text`.
    pub(crate) fn mac(&self, domain: &[u8], text: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(domain);
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().into()
    }
}
