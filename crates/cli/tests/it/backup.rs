//! `medlake backup` and `medlake restore`: a backup, more writes, an incremental backup, and
//! restores at both instants answer as the source did then; on a local folder and on Azurite.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, csv, ok, stderr, stdout};

fn medlake_env(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .output()
        .expect("medlake runs")
}

fn ok_env(args: &[&str], env: &[(&str, String)]) -> String {
    let out = medlake_env(args, env);
    assert!(
        out.status.success(),
        "medlake {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The instant a `medlake backup` printed: `backup N of <instant>: ...`.
fn instant_of(printed: &str) -> String {
    let line = printed
        .lines()
        .find(|l| l.starts_with("backup "))
        .unwrap_or_else(|| panic!("no summary line: {printed}"));
    line.split(" of ")
        .nth(1)
        .and_then(|rest| rest.split(": ").next())
        .unwrap_or_else(|| panic!("no instant: {line}"))
        .to_string()
}

/// Files copied, from the summary line.
fn files_copied(printed: &str) -> u64 {
    let line = printed.lines().find(|l| l.starts_with("backup ")).unwrap();
    let before = line.split(" files (").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

const QUERIES: &[&str] = &[
    "SELECT id, ward FROM bronze.admissions ORDER BY id",
    "SELECT ward, n FROM silver.census ORDER BY ward",
    "SELECT count(*) FROM ehr.notes",
];

fn answers(warehouse: &Path) -> Vec<Vec<String>> {
    QUERIES.iter().map(|q| csv(warehouse, q)).collect()
}

fn first_state(wh: &Path) {
    ok(
        wh,
        &[
            "-c",
            "CREATE SCHEMA ehr",
            "-c",
            "CREATE TABLE ehr.notes (id INT NOT NULL, text VARCHAR)",
            "-c",
            "INSERT INTO ehr.notes VALUES (1, 'admitted')",
            "-c",
            "CREATE TABLE bronze.admissions (id INT NOT NULL, ward VARCHAR NOT NULL)",
            "-c",
            "INSERT INTO bronze.admissions VALUES (1, 'icu'), (2, 'er')",
            "-c",
            "CREATE MATERIALIZED VIEW silver.census AS SELECT ward, count(*) AS n FROM bronze.admissions GROUP BY ward",
        ],
    );
}

fn more_writes(wh: &Path) {
    ok(
        wh,
        &[
            "-c",
            "INSERT INTO bronze.admissions VALUES (3, 'icu'), (4, 'cardio')",
            "-c",
            "REFRESH MATERIALIZED VIEW silver.census",
            "-c",
            "INSERT INTO ehr.notes VALUES (2, 'moved'), (3, 'discharged')",
            "-c",
            "CREATE TABLE gold.later (x INT)",
        ],
    );
}

#[test]
fn incremental_backups_restore_to_either_instant() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, backups) = (dir.path().join("wh"), dir.path().join("backups"));
    let (wh_arg, to) = (wh.to_str().unwrap(), backups.to_str().unwrap());
    first_state(&wh);
    let first = answers(&wh);
    let printed = ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &[]);
    assert!(
        printed.contains("bronze.admissions: version 1\n"),
        "{printed}"
    );
    assert!(printed.contains("system.grants: version"), "{printed}");
    let (t1, copied1) = (instant_of(&printed), files_copied(&printed));

    more_writes(&wh);
    let second = answers(&wh);
    let printed = ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &[]);
    assert!(
        printed.contains("bronze.admissions: version 2\n"),
        "{printed}"
    );
    assert!(printed.contains("gold.later: version 0\n"), "{printed}");
    let copied2 = files_copied(&printed);
    // Only the new commits and data files travel (not the first backup's again).
    assert!(copied2 < copied1 + 8, "{copied1} then {copied2}: {printed}");
    let manifests = std::fs::read_dir(backups.join("manifests"))
        .unwrap()
        .count();
    assert_eq!(manifests, 2);
    // A third backup with nothing new copies nothing (a backup is not itself audited).
    let printed = ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &[]);
    assert_eq!(files_copied(&printed), 0, "{printed}");

    // Restored at the first instant: the first answers, no table created later.
    let r1 = dir.path().join("r1");
    let printed = ok_env(
        &[
            "restore",
            "--from",
            to,
            "--to",
            r1.to_str().unwrap(),
            "--at",
            &t1,
        ],
        &[],
    );
    assert!(
        printed.contains("bronze.admissions: version 1\n"),
        "{printed}"
    );
    assert!(!printed.contains("gold.later"), "{printed}");
    assert_eq!(answers(&r1), first);
    assert_eq!(
        csv(&r1, "SHOW TABLES")
            .iter()
            .filter(|l| l.contains("later"))
            .count(),
        0
    );
    // The source itself agrees at that instant.
    assert_eq!(
        csv(
            &wh,
            &format!("SELECT id, ward FROM bronze.admissions TIMESTAMP AS OF '{t1}' ORDER BY id")
        ),
        first[0]
    );

    // Restored at the newest backup: the second answers; history and views work there.
    let r2 = dir.path().join("r2");
    ok_env(
        &["restore", "--from", to, "--to", r2.to_str().unwrap()],
        &[],
    );
    assert_eq!(answers(&r2), second);
    assert_eq!(
        csv(
            &r2,
            "SELECT id FROM bronze.admissions VERSION AS OF 1 ORDER BY id"
        ),
        ["1", "2"]
    );
    ok(
        &r2,
        &["-c", "INSERT INTO bronze.admissions VALUES (5, 'er')"],
    );
    let out = ok_env(
        &[
            "refresh",
            "--warehouse",
            r2.to_str().unwrap(),
            "silver.census",
        ],
        &[],
    );
    assert!(out.contains("silver.census: succeeded"), "{out}");
    assert_eq!(
        csv(&r2, "SELECT n FROM silver.census WHERE ward = 'er'"),
        ["2"]
    );
    let out = ok_env(
        &["audit", "verify", "--warehouse", r2.to_str().unwrap()],
        &[],
    );
    assert!(out.contains("chain intact"), "{out}");
}

#[test]
fn restore_refuses_a_destination_that_is_not_empty_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, backups) = (dir.path().join("wh"), dir.path().join("backups"));
    let (wh_arg, to) = (wh.to_str().unwrap(), backups.to_str().unwrap());
    first_state(&wh);
    ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &[]);

    // Into a folder with something in it (here: another warehouse): refused, untouched.
    let busy = dir.path().join("busy");
    ok(&busy, &["-c", "CREATE TABLE bronze.mine (x INT)"]);
    let before = super::entries(&busy.join("bronze"));
    let out = medlake_env(
        &["restore", "--from", to, "--to", busy.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error [55000]"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(super::entries(&busy.join("bronze")), before);
    assert_eq!(csv(&busy, "SELECT count(*) FROM bronze.mine"), ["0"]);

    // A backup into a folder that holds something else: refused.
    let out = medlake_env(
        &[
            "backup",
            "--warehouse",
            wh_arg,
            "--to",
            busy.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        stderr(&out).starts_with("error [55000]"),
        "{}",
        stderr(&out)
    );

    // An unfinished restore: the warehouse does not open, and only the same restore resumes.
    let half = dir.path().join("half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("_medlake_restoring.json"), "{}").unwrap();
    let out = medlake_env(
        &[
            "sql",
            "--warehouse",
            half.to_str().unwrap(),
            "-c",
            "SELECT 1",
        ],
        &[],
    );
    assert!(
        stderr(&out).starts_with("error [55000]"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("has not finished"),
        "{}",
        stderr(&out)
    );
    let out = medlake_env(
        &["restore", "--from", to, "--to", half.to_str().unwrap()],
        &[],
    );
    assert!(
        stderr(&out).starts_with("error [55000]"),
        "{}",
        stderr(&out)
    );

    // Bad input: clear errors, no panics.
    let r = dir.path().join("r");
    let r = r.to_str().unwrap();
    for (args, code, text) in [
        (
            vec!["restore", "--from", wh_arg, "--to", r],
            Some(1),
            "holds no medlake backup",
        ),
        (
            vec!["restore", "--from", to, "--to", r, "--at", "2099-01-01"],
            Some(1),
            "no backup covers",
        ),
        (
            vec!["restore", "--from", to, "--to", r, "--at", "2001-01-01"],
            Some(1),
            "before the first backed-up commit",
        ),
        (
            vec!["restore", "--from", to, "--to", r, "--at", "soon"],
            Some(2),
            "not a timestamp",
        ),
        (
            vec![
                "backup",
                "--warehouse",
                wh_arg,
                "--to",
                to,
                "--at",
                "2099-01-01",
            ],
            Some(1),
            "in the future",
        ),
        (
            vec![
                "backup",
                "--warehouse",
                wh_arg,
                "--to",
                &format!("{wh_arg}/inner"),
            ],
            Some(1),
            "inside one another",
        ),
        (
            vec!["restore", "--from", to, "--to", "ftp://x/y"],
            Some(1),
            "unsupported scheme",
        ),
    ] {
        let out = medlake_env(&args, &[]);
        assert_eq!(out.status.code(), code, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(text), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// Azurite (from `$AZURITE_BLOB`, as tests/run.sh installs it) on a free loopback port,
/// killed on drop.
pub(crate) struct Azurite {
    child: Child,
    port: u16,
}

const ACCOUNT: &str = "devstoreaccount1";

impl Azurite {
    pub(crate) fn start() -> Self {
        let program = std::env::var("AZURITE_BLOB").expect(
            "AZURITE_BLOB must point at Azurite's azurite-blob program (tests/run.sh installs it)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Azurite ({program}): {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// Creates a container: a SharedKey-signed `PUT ?restype=container` (object_store cannot
    /// create containers), signed with Node's crypto (Azurite runs on Node).
    pub(crate) fn create_container(&self, name: &str) {
        const SCRIPT: &str = r#"
const [port, name, account, key] = process.argv.slice(1);
const crypto = require('crypto'), http = require('http');
const date = new Date().toUTCString(), version = '2021-08-06';
const toSign = 'PUT' + '\n'.repeat(12) + `x-ms-date:${date}\nx-ms-version:${version}\n/${account}/${account}/${name}\nrestype:container`;
const sig = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(toSign, 'utf8').digest('base64');
const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: `/${account}/${name}?restype=container`,
  headers: { 'x-ms-date': date, 'x-ms-version': version, 'Authorization': `SharedKey ${account}:${sig}`, 'Content-Length': 0 } },
  (res) => { console.log(res.statusCode); process.exit(res.statusCode === 201 ? 0 : 1); });
req.on('error', (e) => { console.log(String(e)); process.exit(1); });
req.end();
"#;
        let key = std::env::var("MEDLAKE_TEST_AZURITE_KEY").expect("set by .cargo/config.toml");
        let out = Command::new("node")
            .args(["-e", SCRIPT, &self.port.to_string(), name, ACCOUNT, &key])
            .output()
            .expect("node runs (Azurite needs it too)");
        assert!(
            out.status.success(),
            "creating container {name}: {}",
            stdout(&out)
        );
    }

    /// The environment that points object_store's Azure client at this Azurite.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn backups_on_azure_blob_storage() {
    let azurite = Azurite::start();
    azurite.create_container("backups");
    azurite.create_container("lake");
    let env = azurite.env();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh_arg = wh.to_str().unwrap();
    let to = "az://backups/hospital";
    first_state(&wh);
    let first = answers(&wh);
    let printed = ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &env);
    let t1 = instant_of(&printed);
    more_writes(&wh);
    let second = answers(&wh);
    let printed = ok_env(&["backup", "--warehouse", wh_arg, "--to", to], &env);
    assert!(printed.contains("backup 2 of"), "{printed}");

    // From Azure to a local folder at the first instant, and into Azure at the second.
    let r1 = dir.path().join("r1");
    ok_env(
        &[
            "restore",
            "--from",
            to,
            "--to",
            r1.to_str().unwrap(),
            "--at",
            &t1,
        ],
        &env,
    );
    assert_eq!(answers(&r1), first);
    let r2 = "az://lake/restored";
    ok_env(&["restore", "--from", to, "--to", r2], &env);
    for (query, expected) in QUERIES.iter().zip(&second) {
        let rows = ok_env(
            &["sql", "--warehouse", r2, "--format", "csv", "-c", query],
            &env,
        );
        let rows: Vec<String> = rows.lines().skip(1).map(str::to_string).collect();
        assert_eq!(&rows, expected, "{query}");
    }
    // A non-empty prefix of the container is refused there too.
    let out = medlake_env(&["restore", "--from", to, "--to", r2], &env);
    assert!(
        stderr(&out).starts_with("error [55000]"),
        "{}",
        stderr(&out)
    );
}
