//! Two `medlake serve` on one warehouse run one scheduler between them (the scheduler lease):
//! only the holder runs a `REFRESH EVERY` view; manual refreshes work on both; when the
//! holder is SIGKILLed, the other takes the lease over within its TTL and a margin. On a local
//! folder (the lease as a log of entries created if absent) and on Azurite (one blob replaced
//! on its ETag).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::backup::Azurite;
use super::{BIN, stderr, stdout};

/// The lease's time to live in these tests.
const TTL: f64 = 2.0;

/// `medlake sql --warehouse W --format csv -c SQL`: the rows, header left out.
fn sql(wh: &str, env: &[(&'static str, String)], query: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["sql", "--warehouse", wh, "--format", "csv", "-c", query])
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{query}: {}", stderr(&out));
    stdout(&out).lines().skip(1).map(str::to_string).collect()
}

/// A `medlake serve` whose stdout lines are kept with when they came, and whose stderr (info
/// logs: each scheduled refresh) goes to a file.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    log: PathBuf,
}

impl Server {
    fn start(wh: &str, env: &[(&'static str, String)], dir: &Path, name: &str) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("[scheduler]\nlease_seconds = {TTL}\n")).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(BIN)
            .args(["serve", "--insecure-no-auth", "--poll-seconds", "1"])
            .args([
                "--pg",
                "127.0.0.1:0",
                "--flight",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&config)
            .args(["--warehouse", wh])
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .env("MEDLAKE_LOG", "warn,medlake_views::scheduler=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().unwrap().push((Instant::now(), line));
            }
        });
        let server = Self { child, lines, log };
        server.wait_for("medlake serve: postgres on", Duration::from_secs(120));
        server
    }

    /// When a line containing `text` was printed, waiting at most `within` for it.
    fn wait_for(&self, text: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some((at, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(text))
            {
                return *at;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn printed(&self, text: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(text))
    }

    fn pg_port(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let line = lines
            .iter()
            .find_map(|(_, l)| l.strip_prefix("medlake serve: postgres on 127.0.0.1:"))
            .expect("the postgres door's address");
        line.split_whitespace().next().unwrap().to_string()
    }

    /// Scheduled refreshes this server logged.
    fn scheduled_refreshes(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("scheduled refresh") && l.contains("silver.beats"))
            .count()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid in `system.scheduler_lease`'s holder (host/pid/random), and whether released.
fn lease_holder(wh: &str, env: &[(&'static str, String)]) -> Option<(u32, bool)> {
    let rows = sql(
        wh,
        env,
        "SELECT holder, released FROM system.scheduler_lease",
    );
    let row = rows.first()?;
    let (holder, released) = row.split_once(',')?;
    let pid = holder.split('/').nth(1)?.parse().ok()?;
    Some((pid, released == "true"))
}

fn scheduled_commits(wh: &str, env: &[(&'static str, String)]) -> usize {
    sql(
        wh,
        env,
        "SELECT count(*) FROM system.refreshes WHERE view = 'silver.beats' AND trigger = 'schedule' AND status = 'succeeded'",
    )[0]
    .parse()
    .unwrap()
}

/// Inserts a row every 300 ms until dropped, so each scheduled run has something to do.
struct Feeder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn start(wh: &str, env: &[(&'static str, String)]) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (wh, env, halt) = (wh.to_string(), env.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !halt.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                sql(
                    &wh,
                    &env,
                    &format!("INSERT INTO bronze.beats VALUES ('pump-{n}', 70)"),
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `REFRESH MATERIALIZED VIEW silver.beats FULL` through `server`'s Postgres door (again
/// after a conflict with a scheduled refresh committing at the same moment, 40001, or while
/// the leader's scheduled refresh of it runs, 55006).
fn manual_refresh(server: &Server) {
    for _ in 0..10 {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &server.pg_port(), "-U", "nurse"])
            .args(["-d", "medlake", "-X", "-v", "ON_ERROR_STOP=1"])
            .args(["-v", "VERBOSITY=verbose", "-c"])
            .arg("REFRESH MATERIALIZED VIEW silver.beats FULL")
            .output()
            .expect("psql runs (tests/run.sh installs postgresql-client)");
        if out.status.success() {
            return;
        }
        let err = stderr(&out);
        assert!(err.contains("40001") || err.contains("55006"), "{err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("ten manual refreshes in a row conflicted");
}

fn one_scheduler_and_takeover(wh: &str, env: &[(&'static str, String)], dir: &Path) {
    sql(
        wh,
        env,
        "CREATE TABLE bronze.beats (device VARCHAR NOT NULL, hr INT NOT NULL)",
    );
    sql(
        wh,
        env,
        "CREATE MATERIALIZED VIEW silver.beats REFRESH EVERY '1 second' AS SELECT device, hr FROM bronze.beats",
    );
    let mut a = Server::start(wh, env, dir, "a");
    a.wait_for(
        "scheduler lease held by this server",
        Duration::from_secs(30),
    );
    let b = Server::start(wh, env, dir, "b");
    assert_eq!(lease_holder(wh, env), Some((a.pid(), false)));
    // Both serve: a manual refresh through either one's door works.
    manual_refresh(&a);
    manual_refresh(&b);
    let feeder = Feeder::start(wh, env);
    // The holder runs the 1-second schedule (three runs that committed rows), the other none.
    let before = scheduled_commits(wh, env);
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.scheduled_refreshes() < 3 || scheduled_commits(wh, env) < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the holder runs no scheduled refresh"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        b.scheduled_refreshes(),
        0,
        "the follower ran a scheduled refresh"
    );
    assert!(!b.printed("scheduler lease held by this server"));
    assert_eq!(lease_holder(wh, env), Some((a.pid(), false)));
    let manual = sql(
        wh,
        env,
        "SELECT count(*) FROM system.refreshes WHERE view = 'silver.beats' AND trigger = 'manual' AND status = 'succeeded'",
    );
    assert_eq!(manual, ["2"]);

    // The holder dies without releasing: the follower takes over after a TTL of silence.
    let killed = Instant::now();
    a.kill9();
    let took = b.wait_for(
        "scheduler lease held by this server",
        Duration::from_secs_f64(TTL * 1.4 + 20.0),
    ) - killed;
    eprintln!("takeover after SIGKILL: {took:?} (TTL {TTL} s)");
    assert!(
        took >= Duration::from_secs_f64(TTL * 0.5),
        "{took:?}: before the lease lapsed"
    );
    // At most the TTL and two of the follower's polls (a fifth of the TTL each), plus a
    // margin for a machine busy with other tests.
    assert!(took <= Duration::from_secs_f64(TTL * 1.4 + 6.0), "{took:?}");
    assert_eq!(lease_holder(wh, env), Some((b.pid(), false)));
    let after = scheduled_commits(wh, env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.scheduled_refreshes() < 2 || scheduled_commits(wh, env) < after + 2 {
        assert!(
            Instant::now() < deadline,
            "the new holder runs no scheduled refresh"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(feeder);
    // A clean stop releases the lease.
    let mut b = b;
    let status = Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = b.child.wait();
    assert_eq!(lease_holder(wh, env), Some((b.pid(), true)));
}

#[test]
fn two_servers_on_a_local_warehouse_run_one_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    one_scheduler_and_takeover(wh.to_str().unwrap(), &[], dir.path());
    // The lease is a log of entries; old ones are deleted.
    let entries = std::fs::read_dir(wh.join("_medlake_leases/scheduler"))
        .unwrap()
        .count();
    assert!((1..=17).contains(&entries), "{entries} lease entries");
}

#[test]
fn two_servers_on_azure_blob_storage_run_one_scheduler() {
    let azurite = Azurite::start();
    azurite.create_container("lake");
    let dir = tempfile::tempdir().unwrap();
    one_scheduler_and_takeover("az://lake/wh", &azurite.env(), dir.path());
}
