//! Failed logins slow an attacker down on every door: after a few failures from one address
//! for one user name (or many failures from one address for any names), further attempts
//! from that address are refused without checking the password, for a lockout that starts
//! at a second and doubles with each further failure, up to a minute. A success clears the
//! record of that name at that address, and the address's count.
//!
//! The record is per client address, not per user: an attacker cannot lock a user out from
//! elsewhere by failing on purpose, and a lockout is short, because a clinician locked out of
//! a dashboard is a harm too. Guessing is held to about one password a minute per name and
//! address. The record is bounded in memory, and one record is shared by all doors of a
//! server (clone [`Logins`]: the clones share it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

/// The rules of [`Logins`].
#[derive(Clone, Debug)]
pub struct LoginPolicy {
    /// Failures for one name from one address before that pair is locked out (default 10).
    pub max_failures_per_user: u32,
    /// Failures for any names from one address before the address is locked out
    /// (default 50): password spraying across many user names.
    pub max_failures_per_address: u32,
    /// Failures older than this are forgotten (default 15 minutes).
    pub window: Duration,
    /// The first lockout (default 1 s); each further failure doubles it.
    pub lockout: Duration,
    /// The longest lockout (default 60 s).
    pub max_lockout: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            max_failures_per_user: 10,
            max_failures_per_address: 50,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(60),
        }
    }
}

/// Records kept at most; beyond, expired records go first, then every record not locked out.
const MAX_RECORDS: usize = 100_000;

/// A login refused because of earlier failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedOut {
    /// When the client may try again.
    pub retry_after: Duration,
}

impl std::fmt::Display for LockedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many failed logins from this address: try again in {} s",
            self.retry_after.as_secs().max(1)
        )
    }
}

#[derive(Debug, Default)]
struct Record {
    failures: u32,
    last: Option<Instant>,
    locked_until: Option<Instant>,
}

impl Record {
    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Forgets failures older than the window (a lockout in force stays).
    fn age(&mut self, now: Instant, window: Duration) {
        if self.locked(now).is_none() && self.last.is_some_and(|last| now - last > window) {
            *self = Record::default();
        }
    }

    fn fail(&mut self, now: Instant, limit: u32, policy: &LoginPolicy) -> bool {
        self.age(now, policy.window);
        self.failures = self.failures.saturating_add(1);
        self.last = Some(now);
        if self.failures < limit {
            return false;
        }
        let doublings = (self.failures - limit).min(16);
        let lockout = policy
            .lockout
            .saturating_mul(1u32 << doublings)
            .min(policy.max_lockout);
        self.locked_until = Some(now + lockout);
        true
    }
}

#[derive(Debug, Default)]
struct State {
    pairs: HashMap<(IpAddr, String), Record>,
    addresses: HashMap<IpAddr, Record>,
}

/// The failed-login record of a server (cheap to clone; clones share the record).
#[derive(Clone, Debug, Default)]
pub struct Logins {
    policy: LoginPolicy,
    state: Arc<Mutex<State>>,
}

impl Logins {
    pub fn new(policy: LoginPolicy) -> Self {
        Self {
            policy,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `user` may try to log in from `address` now. Ask before checking a password.
    pub fn check(&self, address: IpAddr, user: &str) -> Result<(), LockedOut> {
        let now = Instant::now();
        let state = self.lock();
        let pair = state
            .pairs
            .get(&(address, user.to_owned()))
            .and_then(|r| r.locked(now));
        let whole = state.addresses.get(&address).and_then(|r| r.locked(now));
        match pair.into_iter().chain(whole).max() {
            Some(retry_after) => Err(LockedOut { retry_after }),
            None => Ok(()),
        }
    }

    /// Records a failed login (a wrong password, an unknown user or token).
    pub fn failed(&self, address: IpAddr, user: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.pairs.len() >= MAX_RECORDS || state.addresses.len() >= MAX_RECORDS {
            forget_unlocked(&mut state, now, self.policy.window);
        }
        let policy = &self.policy;
        let locked_pair = state
            .pairs
            .entry((address, user.to_owned()))
            .or_default()
            .fail(now, policy.max_failures_per_user, policy);
        let locked_address = state.addresses.entry(address).or_default().fail(
            now,
            policy.max_failures_per_address,
            policy,
        );
        if locked_pair || locked_address {
            warn!(
                target: "medlake::audit",
                client = %address,
                user = %user,
                "login locked out after repeated failures"
            );
        }
    }

    /// Records a successful login: the failures of this address and name are forgotten, and
    /// the address's count starts again (failures of other names at it stay counted).
    pub fn succeeded(&self, address: IpAddr, user: &str) {
        let mut state = self.lock();
        state.pairs.remove(&(address, user.to_owned()));
        state.addresses.remove(&address);
    }
}

fn forget_unlocked(state: &mut State, now: Instant, window: Duration) {
    state.pairs.values_mut().for_each(|r| r.age(now, window));
    state.pairs.retain(|_, r| r.failures > 0);
    state
        .addresses
        .values_mut()
        .for_each(|r| r.age(now, window));
    state.addresses.retain(|_, r| r.failures > 0);
    if state.pairs.len() >= MAX_RECORDS {
        state.pairs.retain(|_, r| r.locked(now).is_some());
    }
    if state.addresses.len() >= MAX_RECORDS {
        state.addresses.retain(|_, r| r.locked(now).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// The policy the tests reason about (the defaults may change).
    fn policy() -> LoginPolicy {
        LoginPolicy {
            max_failures_per_user: 5,
            max_failures_per_address: 20,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
        }
    }

    #[test]
    fn a_pair_is_locked_after_its_failures_and_others_are_not() {
        let logins = Logins::new(policy());
        for _ in 0..4 {
            logins.failed(ip(1), "alice");
            assert!(logins.check(ip(1), "alice").is_ok());
        }
        logins.failed(ip(1), "alice");
        let locked = logins.check(ip(1), "alice").unwrap_err();
        assert!(locked.retry_after <= Duration::from_secs(30));
        assert!(locked.retry_after > Duration::from_secs(25));
        // Another address, or another name from this address, may still try.
        assert!(logins.check(ip(2), "alice").is_ok());
        assert!(logins.check(ip(1), "bob").is_ok());
        // Each further failure doubles the lockout, up to the maximum.
        logins.failed(ip(1), "alice");
        assert!(logins.check(ip(1), "alice").unwrap_err().retry_after > Duration::from_secs(55));
        for _ in 0..20 {
            logins.failed(ip(1), "alice");
        }
        let longest = logins.check(ip(1), "alice").unwrap_err().retry_after;
        assert!(longest <= Duration::from_secs(15 * 60));
        assert!(longest > Duration::from_secs(14 * 60));
    }

    #[test]
    fn spraying_many_names_locks_the_address() {
        let logins = Logins::new(policy());
        for n in 0..19 {
            logins.failed(ip(3), &format!("user{n}"));
        }
        assert!(logins.check(ip(3), "someone-else").is_ok());
        logins.failed(ip(3), "user19");
        assert!(logins.check(ip(3), "someone-else").is_err());
        assert!(logins.check(ip(4), "someone-else").is_ok());
        // Until a name logs in from there: then the address's count starts again.
        logins.succeeded(ip(3), "user0");
        assert!(logins.check(ip(3), "someone-else").is_ok());
    }

    #[test]
    fn success_clears_the_pair_and_old_failures_are_forgotten() {
        let logins = Logins::new(LoginPolicy {
            window: Duration::from_millis(50),
            ..policy()
        });
        for _ in 0..4 {
            logins.failed(ip(5), "carol");
        }
        logins.succeeded(ip(5), "carol");
        for _ in 0..4 {
            logins.failed(ip(5), "carol");
        }
        assert!(logins.check(ip(5), "carol").is_ok());
        std::thread::sleep(Duration::from_millis(80));
        // The four failures above are older than the window: four more do not lock.
        for _ in 0..4 {
            logins.failed(ip(5), "carol");
        }
        assert!(logins.check(ip(5), "carol").is_ok());
    }

    #[test]
    fn clones_share_the_record_and_memory_is_bounded() {
        let logins = Logins::new(policy());
        let other_door = logins.clone();
        for _ in 0..5 {
            other_door.failed(ip(6), "dave");
        }
        assert!(logins.check(ip(6), "dave").is_err());
        for n in 0..(MAX_RECORDS as u32 + 10) {
            let address = IpAddr::from((0x2001_0db8u128 << 96 | n as u128).to_be_bytes());
            logins.failed(address, "x");
        }
        let state = logins.lock();
        assert!(state.pairs.len() <= MAX_RECORDS);
        assert!(state.addresses.len() <= MAX_RECORDS);
        // The lockout in force survived the purge.
        assert!(state.pairs.contains_key(&(ip(6), "dave".to_owned())));
    }
}
