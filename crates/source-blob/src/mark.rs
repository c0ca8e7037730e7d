//! Incremental file discovery: which files a refresh has taken.
//!
//! A mark is taken from one listing of the table's folder: the newest last-modified time in
//! it (`max`, microseconds since the epoch), the lookback window it was taken with (`lookback`,
//! microseconds) and the paths of the files whose last-modified time is within that window of
//! `max` (`recent`, relative to the table's location). A file belongs to a mark when it is older
//! than the window (`modified < max - lookback`) or its path is among `recent`. So:
//!
//! - `upto(m)` reads the files of `m`: exactly what its listing held, save files that appeared
//!   later yet claim a last-modified time older than the window (the documented limit);
//! - `between(a, b)` reads the files of `b` that are not in `a`: each file once, whatever the
//!   order or equality of last-modified times inside the window;
//! - a file that lands while a refresh runs is not in the mark that refresh pinned (it was not
//!   listed), so the next refresh takes it.
//!
//! Marks are compact JSON, stored in the view's commit and shown in `system.refreshes`:
//! `{"max":…,"lookback":…,"recent_sha256":[…]}`. The recent files are named by a hash of their
//! path, never the path: hospitals name files after patients (`MRN0000042_discharge.pdf`), and
//! a view's state must not keep a name an erasure removed. (Marks written before kept the paths
//! in `recent`; they are still read.)

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use medlake_source::{Error, Result};

/// A set of files taken by one refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The newest last-modified time listed (µs since the epoch); `None`: no file.
    pub max: Option<i64>,
    /// The lookback window (µs).
    pub lookback: i64,
    /// Marks written before paths were hashed: the recent files' paths (read, never written).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub recent: BTreeSet<String>,
    /// The files modified at or after `max - lookback`: [`path_hash`] of each path, relative to
    /// the table's location.
    #[serde(default)]
    pub recent_sha256: BTreeSet<String>,
}

/// How a mark names a file: the first 16 bytes of the SHA-256 of its path, in hex.
pub fn path_hash(path: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(path.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Mark {
    /// The mark of a listing: `(relative path, last-modified µs)` pairs.
    pub fn of<'a>(files: impl IntoIterator<Item = (&'a str, i64)> + Clone, lookback: i64) -> Self {
        let max = files.clone().into_iter().map(|(_, m)| m).max();
        let recent = match max {
            None => BTreeSet::new(),
            Some(max) => files
                .into_iter()
                .filter(|(_, m)| *m >= max.saturating_sub(lookback))
                .map(|(p, _)| path_hash(p))
                .collect(),
        };
        Self {
            max,
            lookback,
            recent: BTreeSet::new(),
            recent_sha256: recent,
        }
    }

    /// Whether the file at `path`, last modified at `modified`, belongs to this mark.
    pub fn contains(&self, path: &str, modified: i64) -> bool {
        match self.max {
            None => false,
            Some(max) => {
                modified < max.saturating_sub(self.lookback)
                    || self.recent_sha256.contains(&path_hash(path))
                    || self.recent.contains(path)
            }
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(mark: &str) -> Result<Self> {
        serde_json::from_str(mark).map_err(|e| Error::Data {
            what: "file discovery mark".into(),
            message: format!("'{mark}' is not a file table's mark: {e}"),
        })
    }
}

/// Which files of the folder a scan reads.
#[derive(Clone, Debug, Default)]
pub enum Window {
    /// Every file listed now.
    #[default]
    All,
    /// The files of a mark (a full refresh pinned at it); `None`: no file.
    Upto(Option<Mark>),
    /// The files of the second mark that are not in the first (an incremental refresh).
    Between(Mark, Mark),
    /// The files a server listed while planning (key → last-modified µs), which another
    /// process (an executor) must find unchanged ([`medlake_source::External::pin`]).
    Pinned(std::sync::Arc<BTreeMap<String, i64>>),
}

impl Window {
    pub fn admits(&self, path: &str, modified: i64) -> bool {
        match self {
            Window::All => true,
            Window::Upto(None) => false,
            Window::Upto(Some(m)) => m.contains(path, modified),
            Window::Between(before, now) => {
                now.contains(path, modified) && !before.contains(path, modified)
            }
            Window::Pinned(files) => files.get(path) == Some(&modified),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn between_takes_each_file_once_whatever_the_times() {
        // Three files at the same second, then one landing later with an *older* time than
        // the newest (out of order), and one at exactly the old max.
        let first = [("a", 100 * S), ("b", 100 * S), ("c", 99 * S)];
        let a = Mark::of(first.iter().map(|(p, m)| (*p, *m)), 60 * S);
        let second = [
            ("a", 100 * S),
            ("b", 100 * S),
            ("c", 99 * S),
            ("d", 100 * S),
            ("e", 95 * S),
            ("f", 130 * S),
        ];
        let b = Mark::of(second.iter().map(|(p, m)| (*p, *m)), 60 * S);
        let window = Window::Between(a.clone(), b.clone());
        let taken: Vec<&str> = second
            .iter()
            .filter(|(p, m)| window.admits(p, *m))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(taken, ["d", "e", "f"]);
        // A file listed after `b` was pinned is not in `b`.
        assert!(!b.contains("g", 130 * S));
        assert!(!Window::Upto(Some(b.clone())).admits("g", 120 * S));
        // Older than the window: taken as part of the mark (the documented limit).
        assert!(b.contains("old", 10 * S));
        assert_eq!(Mark::decode(&b.encode()).unwrap(), b);
        assert!(!Mark::of(std::iter::empty(), S).contains("x", 0));
    }
}
