//! The scheduler lease on a local warehouse (a log of entries created if absent): acquired,
//! renewed, taken over after its TTL of silence, released at a clean stop, never held by two
//! contenders at once; and two engines on one warehouse of which exactly one leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use medlake_engine::Engine;
use medlake_lake::Warehouse;
use medlake_lake::lease::{self, Lease, Mechanism, Standing};

use super::location;

fn leading(s: &Standing) -> bool {
    matches!(s, Standing::Leading { .. })
}

fn follows(s: &Standing, holder: &str) -> bool {
    matches!(s, Standing::Following { holder: Some(h) } if h == holder)
}

#[tokio::test]
async fn acquired_renewed_taken_over_after_expiry_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::open(&location(&dir)).await.unwrap();
    let ttl = Duration::from_secs(1);
    let a = Lease::new(&wh, lease::SCHEDULER, "a".into(), ttl);
    let b = Lease::new(&wh, lease::SCHEDULER, "b".into(), ttl);
    assert_eq!(a.mechanism(), Mechanism::Log);
    assert!(leading(&a.step().await.unwrap()));
    assert!(follows(&b.step().await.unwrap(), "a"));
    // Renewed every third of the TTL: b keeps following for several TTLs.
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        assert!(leading(&a.step().await.unwrap()));
        assert!(follows(&b.step().await.unwrap(), "a"));
    }
    let (record, mechanism) = lease::current(&wh, lease::SCHEDULER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.holder.as_str(), record.sequence), ("a", 7));
    assert_eq!(mechanism, Mechanism::Log);
    assert!(record.expires_at() > record.renewed_at);
    // a stops renewing: b takes over once it has seen the same record for a whole TTL.
    let since = Instant::now();
    while !leading(&b.step().await.unwrap()) {
        tokio::time::sleep(ttl / 5).await;
    }
    let took = since.elapsed();
    assert!(took >= ttl && took < ttl * 3, "{took:?}");
    assert!(follows(&a.step().await.unwrap(), "b"));
    // A clean stop: released, and taken at once.
    assert!(b.release().await.unwrap());
    let (record, _) = lease::current(&wh, lease::SCHEDULER)
        .await
        .unwrap()
        .unwrap();
    assert!(record.released);
    assert!(leading(&a.step().await.unwrap()));
}

/// Four contenders step in a loop, with pauses now and then longer than the TTL (a process
/// that stalls, or dies and comes back). Each time one is told it leads, it leads until the
/// `until` it was given: no two such intervals of different holders overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_two_contenders_lead_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::open(&location(&dir)).await.unwrap();
    let ttl = Duration::from_millis(300);
    let claims = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, seed) in [5u64, 17, 29, 43].into_iter().enumerate() {
        let lease = Lease::new(&wh, lease::SCHEDULER, format!("c{i}"), ttl);
        let claims = claims.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = seed;
            let end = Instant::now() + Duration::from_secs(5);
            let mut steps = 0;
            while Instant::now() < end {
                steps += 1;
                if let Standing::Leading { until, .. } = lease.step().await.unwrap() {
                    let now = Instant::now();
                    claims
                        .lock()
                        .unwrap()
                        .push((lease.holder().to_string(), now, until));
                }
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pause = match (rng >> 33) % 16 {
                    0 => ttl * 2,
                    n => ttl / 10 * u32::try_from(n % 4).unwrap(),
                };
                tokio::time::sleep(pause).await;
            }
            steps
        }));
    }
    let mut steps = 0;
    for t in tasks {
        steps += t.await.unwrap();
    }
    let claims = claims.lock().unwrap().clone();
    let holders: std::collections::BTreeSet<_> = claims.iter().map(|c| c.0.clone()).collect();
    assert!(holders.len() >= 2, "no takeover in {steps} steps");
    for (i, (h1, from1, to1)) in claims.iter().enumerate() {
        for (h2, from2, to2) in &claims[i + 1..] {
            assert!(
                h1 == h2 || to1 <= from2 || to2 <= from1,
                "{h1} and {h2} led at once"
            );
        }
    }
    eprintln!(
        "{steps} steps, {} leading claims, {} holders",
        claims.len(),
        holders.len()
    );
}

async fn scalar(engine: &Engine, sql: &str) -> String {
    let batches = engine.query(sql).await.expect(sql);
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// Two engines on one warehouse: exactly one leads at every moment (what their schedulers,
/// alert evaluation and heartbeats follow); the lease table and the metrics say which; the
/// other takes over at once when the leader stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_warehouse_have_one_leader() {
    let dir = tempfile::tempdir().unwrap();
    let standby = || medlake_alerts::Settings {
        active: true,
        standby: true,
        ..Default::default()
    };
    let a = Engine::builder(&location(&dir))
        .alerts(standby())
        .open()
        .await
        .unwrap();
    let b = Engine::builder(&location(&dir))
        .alerts(standby())
        .open()
        .await
        .unwrap();
    let ttl = Duration::from_millis(1500);
    let (stop_a, stopped_a) = tokio::sync::watch::channel(false);
    let (_stop_b, stopped_b) = tokio::sync::watch::channel(false);
    let la = a.contend_for_scheduler(ttl, stopped_a);
    tokio::time::timeout(Duration::from_secs(5), la.leading.clone().wait_for(|l| *l))
        .await
        .expect("a leads")
        .unwrap();
    let lb = b.contend_for_scheduler(ttl, stopped_b);
    let end = Instant::now() + ttl * 3;
    while Instant::now() < end {
        assert!(*la.leading.borrow() && !*lb.leading.borrow());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        a.metrics_text()
            .await
            .contains("medlake_scheduler_leader 1")
    );
    assert!(
        b.metrics_text()
            .await
            .contains("medlake_scheduler_leader 0")
    );
    let table = scalar(
        &b,
        "SELECT holder, released, mechanism FROM system.scheduler_lease",
    )
    .await;
    assert!(table.contains(&la.holder), "{table}");
    assert!(table.contains("| false    | log       |"), "{table}");
    // a stops cleanly: it releases, b takes the lease at its next look (a fifth of the TTL).
    let stopped = Instant::now();
    stop_a.send(true).unwrap();
    la.released(Duration::from_secs(5)).await;
    tokio::time::timeout(ttl, lb.leading.clone().wait_for(|l| *l))
        .await
        .expect("b takes a released lease within a TTL")
        .unwrap();
    eprintln!("released lease taken after {:?}", stopped.elapsed());
    assert!(
        b.metrics_text()
            .await
            .contains("medlake_scheduler_leader 1")
    );
    let table = scalar(&a, "SELECT holder FROM system.scheduler_lease").await;
    assert!(table.contains(&lb.holder), "{table}");
}
