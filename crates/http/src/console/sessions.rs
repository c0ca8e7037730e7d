//! The console's server-side sessions: a random token in an `HttpOnly` cookie names a
//! session that holds the principal, its CSRF token and when it was last used. A session
//! unused for the idle timeout is gone; the map is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use medlake_auth::Principal;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "medlake_console";

/// Sessions kept at most; beyond, the least recently used goes.
const MAX_SESSIONS: usize = 10_000;

/// Random bytes in a session or CSRF token (hex: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// A logged-in console user.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub user: String,
    pub principal: Principal,
    pub csrf: String,
    last_used: Instant,
}

/// Every open console session of the door (cheap to clone; clones share the map).
#[derive(Clone)]
pub(crate) struct Sessions {
    idle_timeout: Duration,
    map: Arc<Mutex<HashMap<String, Session>>>,
}

impl Sessions {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            map: Arc::default(),
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `principal`; returns its token (the cookie's value).
    pub(crate) fn open(&self, user: String, principal: Principal, client: SocketAddr) -> String {
        let token = medlake_auth::random_token(TOKEN_BYTES);
        let now = Instant::now();
        let mut map = self.lock();
        let timeout = self.idle_timeout;
        map.retain(|_, s| now.duration_since(s.last_used) < timeout);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        tracing::info!(target: "medlake::audit", user = %user, client = %client, "console login");
        map.insert(
            token.clone(),
            Session {
                user,
                principal,
                csrf: medlake_auth::random_token(TOKEN_BYTES),
                last_used: now,
            },
        );
        token
    }

    /// The session `token` names, if it exists and has not been idle too long; using it
    /// starts its idle time again.
    pub(crate) fn touch(&self, token: &str) -> Option<Session> {
        if token.len() != TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(token)?;
        if now.duration_since(session.last_used) >= self.idle_timeout {
            map.remove(token);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends the session `token` names.
    pub(crate) fn close(&self, token: &str) {
        self.lock().remove(token);
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub(crate) fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_only() {
        assert_eq!(cookie("a=1; medlake_console=xyz", COOKIE), Some("xyz"));
        assert_eq!(cookie("medlake_consolex=1", COOKIE), None);
        assert_eq!(cookie("", COOKIE), None);
        assert_eq!(cookie(";;=;medlake_console", COOKIE), None);
    }

    #[test]
    fn idle_sessions_expire_and_closed_ones_are_gone() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let token = sessions.open("u".into(), Principal::local("u"), client);
        assert!(sessions.touch(&token).is_some());
        assert!(sessions.touch("zz").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.touch(&token).is_none());
        let token = sessions.open("u".into(), Principal::local("u"), client);
        sessions.close(&token);
        assert!(sessions.touch(&token).is_none());
    }
}
