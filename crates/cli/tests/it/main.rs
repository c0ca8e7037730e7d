//! The `medlake` binary as users run it: `medlake sql -c/-f`, restarts, SIGKILLs in the
//! middle of a large INSERT and of a refresh, `medlake apply`, `refresh` and `serve`;
//! `medlake simulate` against a mock ingest server (simulate.rs); `medlake quickstart` and the
//! reference warehouse of catalog/ and sql/ (quickstart.rs).

mod audit;
mod backup;
mod extract;
mod ingest;
mod layering;
mod quickstart;
mod scheduler_lease;
mod simulate;

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

/// What a new user meets first: an empty table shows its columns (in a fresh process, in both
/// formats), `--timing` keeps CSV output clean, a last statement without `;` piped in still
/// runs, `\\d name` describes a table, and a syntax error reads as a message, not a debug dump.
#[test]
fn first_steps_of_a_new_user() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ok(
        &wh,
        &["-c", "CREATE TABLE bronze.empty (id BIGINT, name VARCHAR)"],
    );
    // Fresh processes from here on.
    let table = ok(&wh, &["-c", "SELECT * FROM bronze.empty"]);
    assert_eq!(
        table, "+----+------+\n| id | name |\n+----+------+\n+----+------+\n(0 rows)\n",
        "{table}"
    );
    let filtered = ok(&wh, &["-c", "SELECT name FROM bronze.empty WHERE id > 3"]);
    assert!(filtered.contains("| name |"), "{filtered}");
    assert_eq!(
        ok(
            &wh,
            &["--format", "csv", "-c", "SELECT * FROM bronze.empty"]
        ),
        "id,name\n"
    );

    let out = medlake(&wh, &["--format", "csv", "--timing", "-c", "SELECT 1 AS x"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "x\n1\n");
    assert!(stderr(&out).starts_with("Time: "), "{}", stderr(&out));

    let out = medlake(&wh, &["-c", "SELEC 1"]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.starts_with("error [42601]: syntax error: Expected"),
        "{message}"
    );
    assert!(!message.contains("ParserError"), "{message}");

    let mut child = Command::new(BIN)
        .arg("sql")
        .arg("--warehouse")
        .arg(&wh)
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
        .write_all(b"\\d bronze.empty\nSELECT count(*) AS n\n  FROM bronze.empty")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("| id          | Int64     | YES         |"),
        "{text}"
    );
    assert!(text.contains("| n |\n+---+\n| 0 |"), "{text}");
    assert_eq!(stderr(&out), "");
}

#[test]
fn help_is_everywhere() {
    for args in [
        vec!["--help"],
        vec!["sql", "--help"],
        vec!["refresh", "--help"],
        vec!["apply", "--help"],
        vec!["serve", "--help"],
    ] {
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

/// Waits until `child` has written a file into `dir` that `before` did not list, then kills
/// it with SIGKILL while it is still running.
fn kill_once_files_appear(
    mut child: std::process::Child,
    dir: &Path,
    before: &[String],
    what: &str,
) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the {what} ended ({status}) before it could be killed: make it larger");
        }
        if entries(dir).iter().any(|e| !before.contains(e)) {
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
        "the {what} was still running when killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
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

    let child = Command::new(BIN)
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
    kill_once_files_appear(child, &table, &before, "insert");
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

#[test]
fn sigkill_in_the_middle_of_a_merge_leaves_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ok(
        &wh,
        &[
            "-c",
            "CREATE TABLE bronze.big (id BIGINT NOT NULL, payload VARCHAR NOT NULL)",
            "-c",
            "INSERT INTO bronze.big VALUES (0, 'before'), (1, 'before')",
        ],
    );
    let table = wh.join("bronze/big");
    let before = entries(&table);

    let child = Command::new(BIN)
        .arg("sql")
        .arg("--warehouse")
        .arg(&wh)
        .arg("-c")
        .arg(
            "MERGE INTO bronze.big t \
             USING (SELECT value AS id, repeat('x', 64) || CAST(value AS VARCHAR) AS payload \
                    FROM generate_series(1, 400000000)) s \
             ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET payload = s.payload \
             WHEN NOT MATCHED THEN INSERT (id, payload) VALUES (s.id, s.payload)",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_once_files_appear(child, &table, &before, "merge");
    assert!(
        entries(&table).len() > before.len(),
        "the killed merge had written files"
    );

    // The table is at its previous version, readable, and writable again.
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('bronze.big')"),
        ["1"]
    );
    assert_eq!(
        csv(&wh, "SELECT id, payload FROM bronze.big ORDER BY id"),
        ["0,before", "1,before"]
    );
    ok(
        &wh,
        &[
            "-c",
            "MERGE INTO bronze.big t USING (SELECT 1 AS id) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET payload = 'after'",
        ],
    );
    assert_eq!(
        csv(&wh, "SELECT id, payload FROM bronze.big ORDER BY id"),
        ["0,before", "1,after"]
    );
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('bronze.big')"),
        ["2"]
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("medlake runs")
}

fn ok_run(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "medlake {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn sigkill_in_the_middle_of_a_refresh_leaves_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ok(
        &wh,
        &[
            "-c",
            "CREATE TABLE bronze.seed (id BIGINT NOT NULL)",
            "-c",
            "INSERT INTO bronze.seed SELECT value FROM generate_series(1, 10)",
            "-c",
            "CREATE MATERIALIZED VIEW silver.cube AS SELECT a.id * 1000000 + b.id * 1000 + c.id AS k, \
             repeat('x', 48) AS pad FROM bronze.seed a, bronze.seed b, bronze.seed c",
            "-c",
            "INSERT INTO bronze.seed SELECT value FROM generate_series(11, 800)",
        ],
    );
    let view = wh.join("silver/cube");
    let before = entries(&view);
    // 800^3 rows: long enough to be killed while it writes.
    let child = Command::new(BIN)
        .args(["refresh", "--warehouse"])
        .arg(&wh)
        .arg("silver.cube")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_once_files_appear(child, &view, &before, "refresh");
    assert!(
        entries(&view).len() > before.len(),
        "the killed refresh had written files"
    );

    // The view is at its previous version and readable; nothing recorded the killed refresh.
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('silver.cube')"),
        ["0"]
    );
    assert_eq!(csv(&wh, "SELECT count(*) FROM silver.cube"), ["1000"]);
    assert_eq!(
        csv(
            &wh,
            "SELECT status FROM system.refreshes WHERE view = 'silver.cube'"
        ),
        ["succeeded"]
    );
    // The next refresh is correct.
    ok(
        &wh,
        &[
            "-c",
            "INSERT OVERWRITE bronze.seed SELECT value FROM generate_series(1, 12)",
        ],
    );
    let out = ok_run(&[
        "refresh",
        "--warehouse",
        wh.to_str().unwrap(),
        "silver.cube",
    ]);
    assert!(out.contains("silver.cube: succeeded (full)"), "{out}");
    // The view reads the input three times: a rewrite of it is recomputed.
    assert!(out.contains("bronze.seed changed (versions"), "{out}");
    assert_eq!(
        csv(&wh, "SELECT count(*), count(DISTINCT k) FROM silver.cube"),
        ["1728,1728"]
    );
    assert_eq!(
        csv(&wh, "SELECT max(version) FROM table_history('silver.cube')"),
        ["1"]
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn apply_is_idempotent_orders_views_by_dependency_and_keeps_removed_views() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let project = dir.path().join("project");
    write(
        &project.join("catalog/sources.sql"),
        "CREATE TABLE IF NOT EXISTS bronze.vitals (patient VARCHAR NOT NULL, hr INT);\n\
         INSERT INTO bronze.vitals SELECT 'p' || CAST(value % 3 AS VARCHAR), CAST(value AS INT) FROM generate_series(1, 6) WHERE NOT EXISTS (SELECT 1 FROM bronze.vitals);\n",
    );
    // File names sort gold before silver: apply must order by what each view reads.
    write(
        &project.join("sql/a_gold/per_patient.sql"),
        "-- gold: one row per patient\nCREATE MATERIALIZED VIEW gold.per_patient AS\n  SELECT patient, count(*) AS n FROM silver.vitals GROUP BY patient;\n",
    );
    write(
        &project.join("sql/b_silver/vitals.sql"),
        "CREATE MATERIALIZED VIEW silver.vitals AS SELECT patient, hr FROM bronze.vitals WHERE hr > 1;\n",
    );
    let wh_arg = wh.to_str().unwrap();
    let project_arg = project.to_str().unwrap();
    let first = ok_run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    let silver = first.find("created   silver.vitals").expect(&first);
    let gold = first.find("created   gold.per_patient").expect(&first);
    assert!(silver < gold, "{first}");

    // Again: nothing changes, the data stays (same versions).
    let again = ok_run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    assert!(
        again.contains("unchanged silver.vitals (version 0)"),
        "{again}"
    );
    assert!(
        again.contains("unchanged gold.per_patient (version 0)"),
        "{again}"
    );
    // Reformatting and comments are not changes.
    write(
        &project.join("sql/b_silver/vitals.sql"),
        "-- silver\ncreate materialized view silver.vitals as\n    select patient, hr\n    from bronze.vitals\n    where hr > 1;\n",
    );
    let again = ok_run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    assert!(again.contains("unchanged silver.vitals"), "{again}");

    // A changed definition is replaced and refreshed.
    write(
        &project.join("sql/b_silver/vitals.sql"),
        "CREATE MATERIALIZED VIEW silver.vitals AS SELECT patient, hr FROM bronze.vitals WHERE hr > 3;\n",
    );
    let changed = ok_run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    assert!(
        changed.contains("replaced  silver.vitals (3 rows)"),
        "{changed}"
    );
    assert_eq!(csv(&wh, "SELECT count(*) FROM silver.vitals"), ["3"]);
    assert_eq!(
        csv(
            &wh,
            "SELECT max(version) FROM table_history('silver.vitals')"
        ),
        ["1"]
    );

    // A removed file keeps its view and data, and says so.
    std::fs::remove_file(project.join("sql/a_gold/per_patient.sql")).unwrap();
    let removed = ok_run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    assert!(
        removed.contains("kept      gold.per_patient (no project file defines it any more"),
        "{removed}"
    );
    assert_eq!(csv(&wh, "SELECT count(*) FROM gold.per_patient"), ["3"]);

    // A broken file names itself.
    write(
        &project.join("sql/c/broken.sql"),
        "CREATE MATERIALIZED VIEW silver.x AS SELEC 1;\n",
    );
    let out = run(&["apply", "--warehouse", wh_arg, "--project", project_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken.sql"), "{}", stderr(&out));
}

#[test]
fn serve_refreshes_scheduled_views_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let project = dir.path().join("project");
    write(
        &project.join("catalog/sources.sql"),
        "CREATE TABLE IF NOT EXISTS bronze.beats (device VARCHAR NOT NULL, hr INT NOT NULL);\n",
    );
    write(
        &project.join("sql/silver/beats.sql"),
        "CREATE MATERIALIZED VIEW silver.beats REFRESH EVERY '1 second' AS SELECT device, hr FROM bronze.beats WHERE hr > 0;\n",
    );
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--insecure-no-auth",
            "--pg",
            "127.0.0.1:0",
            "--flight",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--poll-seconds",
            "1",
            "--warehouse",
        ])
        .arg(&wh)
        .arg("--project")
        .arg(&project)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The project is applied before the scheduler starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !wh.join("silver/beats/_delta_log").exists() {
        assert!(Instant::now() < deadline, "the project was not applied");
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(
        &wh,
        &[
            "-c",
            "INSERT INTO bronze.beats VALUES ('pump-1', 72), ('pump-2', 0)",
        ],
    );
    loop {
        let refreshed = csv(
            &wh,
            "SELECT mode, rows_written FROM system.refreshes WHERE view = 'silver.beats' AND trigger = 'schedule' AND status = 'succeeded'",
        );
        if !refreshed.is_empty() {
            assert_eq!(refreshed, ["incremental,1"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled refresh was recorded"
        );
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(csv(&wh, "SELECT device FROM silver.beats"), ["pump-1"]);
    let pid = server.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("created   silver.beats"), "{printed}");
    assert!(printed.contains("medlake serve: stopped"), "{printed}");
    assert!(
        printed.contains("medlake serve: postgres on 127.0.0.1:"),
        "{printed}"
    );
}

#[test]
fn serve_refuses_unsafe_or_incomplete_setups() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--warehouse")
            .arg(&wh)
            .args([
                "--pg",
                "127.0.0.1:0",
                "--flight",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("MEDLAKE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No users and no explicit no-auth mode: nothing starts.
    let (code, err) = run(&[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no users are configured"), "{err}");

    // A user whose password variable is missing.
    let config = dir.path().join("medlake.toml");
    write(
        &config,
        "[[users]]\nname = \"alice\"\npassword_env = \"TEST_MISSING_PASSWORD\"\n",
    );
    let (code, err) = run(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TEST_MISSING_PASSWORD"), "{err}");

    // TLS configured with files that do not exist: refused, never served in plaintext.
    write(
        &config,
        "[[users]]\nname = \"alice\"\npassword_env = \"TEST_PASSWORD\"\n[tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\n",
    );
    let (code, err) = run(
        &["--config", config.to_str().unwrap()],
        &[("TEST_PASSWORD", "s3cret-value")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TLS"), "{err}");
    assert!(!err.contains("s3cret-value"), "{err}");

    // A hospital time zone that is not one: refused before anything is computed with it.
    for zone in ["Europe/Londinium", "+01:00"] {
        write(
            &config,
            &format!(
                "[[users]]\nname = \"alice\"\npassword_env = \"TEST_PASSWORD\"\n[clinical]\ntime_zone = \"{zone}\"\n"
            ),
        );
        let (code, err) = run(
            &["--config", config.to_str().unwrap()],
            &[("TEST_PASSWORD", "s3cret-value")],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("[clinical] time_zone") && err.contains(zone),
            "{err}"
        );
    }

    // No-auth mode beyond loopback.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--insecure-no-auth",
            "--pg",
            "0.0.0.0:0",
            "--flight",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--warehouse",
        ])
        .arg(&wh)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
