//! The `medlake` binary as users run it: `medlake sql -c/-f`, restarts, and a SIGKILL in the
//! middle of a large INSERT.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_medlake");

fn medlake(warehouse: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("sql")
        .arg("--warehouse")
        .arg(warehouse)
        .args(args)
        .output()
        .expect("medlake runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(warehouse: &Path, args: &[&str]) -> String {
    let out = medlake(warehouse, args);
    assert!(
        out.status.success(),
        "medlake {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn csv(warehouse: &Path, sql: &str) -> Vec<String> {
    ok(warehouse, &["--format", "csv", "-c", sql])
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn bronze_table_round_trip_with_time_travel_history_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = ok(
        &wh,
        &[
            "-c",
            "CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, hr INT NOT NULL)",
            "-c",
            "INSERT INTO bronze.readings VALUES ('pump-1', 70), ('pump-2', 80)",
            "-c",
            "INSERT INTO bronze.readings VALUES ('pump-3', 90)",
            "-c",
            "SELECT * FROM bronze.readings VERSION AS OF 1 ORDER BY device_id",
            "-c",
            "DESCRIBE HISTORY bronze.readings",
        ],
    );
    assert!(
        out.contains("CREATE TABLE\nINSERT 0 2\nINSERT 0 1\n"),
        "{out}"
    );
    assert!(out.contains("| pump-1    | 70 |"), "{out}");
    assert!(
        !out.contains("pump-3    | 90 |\n+---"),
        "version 1 has no pump-3: {out}"
    );
    assert!(out.contains("(2 rows)"), "{out}");
    assert!(
        out.contains("CREATE TABLE") && out.contains("WRITE"),
        "{out}"
    );
    assert!(out.contains("(3 rows)"), "history has three commits: {out}");

    let refused = medlake(
        &wh,
        &["-c", "INSERT INTO bronze.readings VALUES ('pump-4', NULL)"],
    );
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert_eq!(
        err.trim(),
        "error [23502]: write to 'bronze.readings' refused, nothing was written: NULL in NOT NULL column 'hr'"
    );

    // A restart (a new process) keeps everything, and the refused insert left no trace.
    assert_eq!(csv(&wh, "SELECT count(*) FROM bronze.readings"), ["3"]);
    assert_eq!(
        csv(
            &wh,
            "SELECT max(version) FROM table_history('bronze.readings')"
        ),
        ["2"]
    );
    assert_eq!(
        csv(
            &wh,
            "SELECT device_id FROM bronze.readings VERSION AS OF 1 ORDER BY 1"
        ),
        ["pump-1", "pump-2"]
    );
}

#[test]
fn scripts_run_from_files_and_stop_at_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        "-- a comment; with a semicolon\nCREATE TABLE bronze.s (x INT);\nINSERT INTO bronze.s VALUES (1);\nSELECT * FROM bronze.nope;\nINSERT INTO bronze.s VALUES (2);\n",
    )
    .unwrap();
    let out = medlake(&wh, &["-f", script.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("error [42P01]"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
    assert_eq!(csv(&wh, "SELECT x FROM bronze.s"), ["1"]);
}

#[test]
fn the_interactive_prompt_reads_multi_line_statements() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("sql")
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"CREATE TABLE bronze.p\n  (x INT);\nINSERT INTO bronze.p VALUES (1), (2);\n\
              SELECT 'a;b' AS s,\n  count(*) AS n FROM bronze.p;\nSELECT * FROM nope;\n\\dt\n\\q\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("CREATE TABLE\nTime: "), "{text}");
    assert!(text.contains("| a;b | 2 |"), "{text}");
    assert!(text.contains("| bronze       | p          |"), "{text}");
    // An error does not end the session: the \\dt after it ran.
    assert_eq!(
        stderr(&out).trim(),
        "error [42P01]: table 'public.nope' does not exist"
    );
}

#[test]
fn help_is_everywhere() {
    for args in [vec!["--help"], vec!["sql", "--help"]] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success());
        assert!(stdout(&out).contains("Usage: medlake"), "{}", stdout(&out));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn sigkill_in_the_middle_of_a_large_insert_leaves_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ok(
        &wh,
        &[
            "-c",
            "CREATE TABLE bronze.big (id BIGINT NOT NULL, payload VARCHAR NOT NULL)",
            "-c",
            "INSERT INTO bronze.big VALUES (0, 'before')",
        ],
    );
    let table = wh.join("bronze/big");
    let before = entries(&table);

    let mut child = Command::new(BIN)
        .arg("sql")
        .arg("--warehouse")
        .arg(&wh)
        .arg("-c")
        .arg(
            "INSERT INTO bronze.big SELECT value, repeat('x', 64) || CAST(value AS VARCHAR) \
             FROM generate_series(1, 400000000)",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the insert has started writing data files, then kill it.
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the insert ended ({status}) before it could be killed: make it larger");
        }
        let now = entries(&table);
        if now.iter().any(|e| !before.contains(e)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no data file appeared in 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still inserting when killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        entries(&table).len() > before.len(),
        "the killed insert had written files"
    );

    // The table is at its previous version, readable, and writable again.
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('bronze.big')"),
        ["1"]
    );
    assert_eq!(csv(&wh, "SELECT id, payload FROM bronze.big"), ["0,before"]);
    ok(&wh, &["-c", "INSERT INTO bronze.big VALUES (1, 'after')"]);
    assert_eq!(
        csv(&wh, "SELECT id FROM bronze.big ORDER BY id"),
        ["0", "1"]
    );
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('bronze.big')"),
        ["2"]
    );
}
