use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;

use super::{Lease, LeaseRecord, Mechanism, Place, Standing, Token};

/// Long enough that a busy machine does not stall a renewal past it.
const TTL: Duration = Duration::from_secs(1);

/// A lease place of each mechanism: ETags on an in-memory store (it has conditional
/// updates, as Azure does), the log on a local folder.
fn places(dir: &std::path::Path) -> Vec<Place> {
    let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    vec![
        Place {
            store: Arc::new(InMemory::new()),
            path: Path::from("_medlake_leases/scheduler.json"),
            mechanism: Mechanism::ETag,
        },
        Place {
            store: local,
            path: Path::from("_medlake_leases/scheduler"),
            mechanism: Mechanism::Log,
        },
    ]
}

fn lease(place: &Place, holder: &str, ttl: Duration) -> Lease {
    Lease::at(place.clone(), holder.to_string(), ttl)
}

fn leading(s: &Standing) -> bool {
    matches!(s, Standing::Leading { .. })
}

fn follows(s: &Standing, holder: &str) -> bool {
    matches!(s, Standing::Following { holder: Some(h) } if h == holder)
}

#[tokio::test]
async fn acquire_renew_follow_and_take_over_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    for place in places(dir.path()) {
        let m = place.mechanism;
        let a = lease(&place, "a", TTL);
        let b = lease(&place, "b", TTL);
        assert!(leading(&a.step().await.unwrap()), "{m:?}");
        assert!(follows(&b.step().await.unwrap(), "a"), "{m:?}");
        // Renewals keep b following, however long it watches.
        for _ in 0..4 {
            tokio::time::sleep(TTL / 3).await;
            let Standing::Leading { sequence, .. } = a.step().await.unwrap() else {
                panic!("{m:?}: a lost its lease while renewing it");
            };
            assert!(sequence >= 2, "{m:?}");
            assert!(follows(&b.step().await.unwrap(), "a"), "{m:?}");
        }
        let (record, _) = place.read().await.unwrap().unwrap();
        assert_eq!(record.holder, "a");
        assert_eq!(record.sequence, 5, "{m:?}: one write per step");
        assert!(record.acquired_at < record.renewed_at);
        // a stops renewing (dies): b sees the same record for a whole TTL, then takes it.
        let since = Instant::now();
        let taken = loop {
            let s = b.step().await.unwrap();
            if leading(&s) {
                break since.elapsed();
            }
            assert!(follows(&s, "a"), "{m:?}: {s:?}");
            tokio::time::sleep(TTL / 5).await;
        };
        assert!(taken >= TTL, "{m:?}: taken over after {taken:?}");
        assert!(taken < TTL * 3, "{m:?}: taken over after {taken:?}");
        // a comes back: it follows b, and its old token no longer writes.
        assert!(follows(&a.step().await.unwrap(), "b"), "{m:?}");
        let (record, _) = place.read().await.unwrap().unwrap();
        assert_eq!((record.holder.as_str(), record.sequence), ("b", 6));
    }
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for place in places(dir.path()) {
        let a = lease(&place, "a", Duration::from_secs(60));
        let b = lease(&place, "b", Duration::from_secs(60));
        assert!(leading(&a.step().await.unwrap()));
        assert!(follows(&b.step().await.unwrap(), "a"));
        assert!(a.release().await.unwrap());
        assert!(!a.release().await.unwrap(), "released once");
        assert!(leading(&b.step().await.unwrap()), "{:?}", place.mechanism);
        assert!(follows(&a.step().await.unwrap(), "b"));
    }
}

/// Contenders step in a loop with random pauses (some longer than the TTL, as a process
/// that stalls or dies and comes back); every time one is told it leads, it leads until
/// `until`. No two of those intervals of different holders may overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_two_contenders_lead_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for place in places(dir.path()) {
        let ttl = Duration::from_millis(300);
        let claims = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, seed) in [11u64, 23, 37, 41].into_iter().enumerate() {
            let lease = lease(&place, &format!("c{i}"), ttl);
            let claims = claims.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = seed;
                let end = Instant::now() + Duration::from_secs(4);
                while Instant::now() < end {
                    if let Standing::Leading { until, .. } = lease.step().await.unwrap() {
                        claims
                            .lock()
                            .unwrap()
                            .push((lease.holder.clone(), Instant::now(), until));
                    }
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let pause = match (rng >> 33) % 20 {
                        0 => ttl * 2,
                        n => ttl / 10 * u32::try_from(n % 4).unwrap(),
                    };
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let claims = claims.lock().unwrap().clone();
        let holders: std::collections::BTreeSet<_> = claims.iter().map(|c| &c.0).collect();
        assert!(
            holders.len() >= 2,
            "{:?}: no takeover happened",
            place.mechanism
        );
        for (i, (h1, from1, to1)) in claims.iter().enumerate() {
            for (h2, from2, to2) in &claims[i + 1..] {
                if h1 != h2 {
                    assert!(
                        to1 <= from2 || to2 <= from1,
                        "{:?}: {h1} and {h2} led at once",
                        place.mechanism
                    );
                }
            }
        }
    }
}

/// A writer that read the log long ago writes on top of an entry that old entries' deletion
/// made free again: its write must not count as a win.
#[tokio::test]
async fn a_late_writer_does_not_win_on_a_deleted_log_entry() {
    let dir = tempfile::tempdir().unwrap();
    let place = places(dir.path()).pop().unwrap();
    let a = lease(&place, "a", Duration::from_secs(60));
    for _ in 0..40 {
        assert!(leading(&a.step().await.unwrap()));
    }
    let mut entries = place.entries().await.unwrap();
    entries.sort_unstable();
    assert_eq!(entries.len() as u64, super::KEEP + 1, "{entries:?}");
    assert_eq!(entries.last(), Some(&40));
    let late = LeaseRecord {
        holder: "late".into(),
        sequence: 3,
        acquired_at: chrono::Utc::now(),
        renewed_at: chrono::Utc::now(),
        ttl_ms: 60_000,
        released: false,
    };
    assert_eq!(
        place.write(Some(&Token::Entry(2)), &late).await.unwrap(),
        None
    );
    let (record, _) = place.read().await.unwrap().unwrap();
    assert_eq!((record.holder.as_str(), record.sequence), ("a", 40));
    assert!(leading(&a.step().await.unwrap()));
}

#[tokio::test]
async fn the_first_write_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    for place in places(dir.path()) {
        let record = |h: &str| LeaseRecord {
            holder: h.into(),
            sequence: 1,
            acquired_at: chrono::Utc::now(),
            renewed_at: chrono::Utc::now(),
            ttl_ms: 1000,
            released: false,
        };
        assert!(place.write(None, &record("a")).await.unwrap().is_some());
        assert!(place.write(None, &record("b")).await.unwrap().is_none());
        let (first, token) = place.read().await.unwrap().unwrap();
        assert_eq!(first.holder, "a");
        assert!(
            place
                .write(Some(&token), &record("c"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            place
                .write(Some(&token), &record("d"))
                .await
                .unwrap()
                .is_none()
        );
    }
}
