//! `medlake quickstart` and the reference warehouse (catalog/quickstart + sql/): the whole path
//! at a small scale (every gold view has rows), NEWS2 boundary by boundary against a
//! table-driven chart written here, and a quarantine case for every silver rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::{BIN, csv, ok, stderr, stdout};

const GOLD: &[&str] = &[
    "gold.patient_daily_vitals",
    "gold.news2_hourly",
    "gold.device_performance",
    "gold.alert_response",
    "gold.trial_cohort_vitals",
    "gold.data_completeness",
];

fn quickstart(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("quickstart")
        .arg("--dir")
        .arg(dir)
        .args(["--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("medlake runs");
    assert!(
        out.status.success(),
        "medlake quickstart {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn apply(warehouse: &Path, project: &Path) -> String {
    let out = Command::new(BIN)
        .args(["apply", "--warehouse"])
        .arg(warehouse)
        .arg("--project")
        .arg(project)
        .output()
        .expect("medlake runs");
    assert!(
        out.status.success(),
        "medlake apply failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn count(warehouse: &Path, sql: &str) -> u64 {
    csv(warehouse, sql)[0].parse().expect("a count")
}

#[test]
fn quickstart_once_at_small_scale_fills_every_gold_view() {
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let out = quickstart(
        &qs,
        &[
            "--patients",
            "10",
            "--hours",
            "3",
            "--rate",
            "0.2",
            "--once",
            "--live-seconds",
            "5",
        ],
    );
    for line in [
        "stand-in sources created",
        "demo hospital: 10 patients",
        "gold.news2_hourly is queryable",
        "pushing 5 s of live readings",
        "refreshing every view once",
        "psql \"host=127.0.0.1",
        "adbc_driver_flightsql",
        "done (--once)",
        // The roles of sql/access.sql: masked identifiers for the clinician, a refresh by
        // the engineer, the audit read by the auditor (which records both).
        "clara (clinician)",
        "MRN-****",
        "REFRESH MATERIALIZED VIEW",
        "audrey (auditor)",
        "| eddie ",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Nobody's MRN reached the clinician's output.
    assert!(!out.contains("| MRN0"), "{out}");
    let wh = qs.join("warehouse");
    for view in GOLD {
        let rows = count(&wh, &format!("SELECT count(*) FROM {view}"));
        assert!(rows > 0, "{view} is empty");
    }
    // Every source reached silver: pushed (history and live), pulled, uploaded as CSV.
    let sources = csv(
        &wh,
        "SELECT DISTINCT source FROM silver.readings ORDER BY 1",
    );
    assert_eq!(sources, ["file", "hl7", "push", "rest"]);
    // The live readings arrived through the HTTP door: commits after the history's one.
    let versions = count(
        &wh,
        "SELECT max(version) FROM table_history('bronze.readings_push')",
    );
    assert!(
        versions >= 2,
        "no live readings: bronze.readings_push at version {versions}"
    );
    // Batch uploads came in both formats, through the blob connector.
    assert_eq!(
        csv(
            &wh,
            "SELECT DISTINCT _source FROM bronze.readings_files ORDER BY 1"
        ),
        ["blob:csv", "blob:parquet"]
    );
    // Converted units only: no degF, mmol/L or kPa in silver.
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM silver.readings WHERE unit IN ('degF', 'mmol/L', 'kPa')"
        ),
        0
    );
    assert!(
        count(
            &wh,
            "SELECT count(*) FROM silver.readings WHERE raw_unit = 'kPa'"
        ) > 0
    );
    assert!(
        count(
            &wh,
            "SELECT count(*) FROM silver.readings WHERE raw_unit = 'mmol/L'"
        ) > 0
    );
    // The generator's flaws are caught: glitches, an unknown device, a wrong patient.
    let rules = csv(
        &wh,
        "SELECT DISTINCT _medlake_rules FROM silver.readings_quarantine ORDER BY 1",
    );
    assert!(
        rules.iter().any(|r| r.contains("device_assigned")),
        "{rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r.contains("patient_matches_assignment")),
        "{rules:?}"
    );
    // Complete NEWS2 rows exist, and every band is one of the four.
    assert!(count(&wh, "SELECT count(*) FROM gold.news2_hourly WHERE complete") > 0);
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM gold.news2_hourly WHERE complete AND risk NOT IN \
             ('low', 'low-medium', 'medium', 'high')"
        ),
        0
    );
    // The demo's patient with chronic hypercapnia is scored on SpO2 scale 2: their usual
    // 88-92 % scores nothing (on scale 1 it would score 3 every hour).
    assert!(
        count(
            &wh,
            "SELECT count(*) FROM gold.news2_hourly WHERE spo2_scale = 2 AND spo2 IS NOT NULL"
        ) > 0
    );
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM gold.news2_hourly WHERE spo2_scale = 2 \
             AND spo2 BETWEEN 88 AND 92 AND spo2_score <> 0"
        ),
        0
    );
    // Files: DICOM headers parsed, documents listed.
    assert!(
        count(
            &wh,
            "SELECT count(*) FROM silver.imaging_studies WHERE error IS NULL AND patient_id IS NOT NULL"
        ) > 0
    );
    assert!(count(&wh, "SELECT count(*) FROM bronze.documents") > 0);
    // A second run starts the folder over.
    quickstart(
        &qs,
        &[
            "--patients",
            "2",
            "--hours",
            "1",
            "--rate",
            "0.05",
            "--once",
            "--live-seconds",
            "1",
        ],
    );
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM silver.patients WHERE patient_id < 9000"
        ),
        2
    );
}

// ---------------------------------------------------------------------------------------------
// NEWS2, independently: the RCP chart as tables of (highest value in the band, score).

const RESPIRATION: &[(f64, u32)] = &[(8.0, 3), (11.0, 1), (20.0, 0), (24.0, 2), (f64::MAX, 3)];
const SPO2_SCALE_1: &[(f64, u32)] = &[(91.0, 3), (93.0, 2), (95.0, 1), (f64::MAX, 0)];
/// SpO2 scale 2 (a prescribed target of 88-92 %: hypercapnic respiratory failure), on air
/// and on oxygen.
const SPO2_SCALE_2_AIR: &[(f64, u32)] = &[(83.0, 3), (85.0, 2), (87.0, 1), (f64::MAX, 0)];
const SPO2_SCALE_2_OXYGEN: &[(f64, u32)] = &[
    (83.0, 3),
    (85.0, 2),
    (87.0, 1),
    (92.0, 0),
    (94.0, 1),
    (96.0, 2),
    (f64::MAX, 3),
];
const SYSTOLIC: &[(f64, u32)] = &[(90.0, 3), (100.0, 2), (110.0, 1), (219.0, 0), (f64::MAX, 3)];
const PULSE: &[(f64, u32)] = &[
    (40.0, 3),
    (50.0, 1),
    (90.0, 0),
    (110.0, 1),
    (130.0, 2),
    (f64::MAX, 3),
];
const TEMPERATURE: &[(f64, u32)] = &[(35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (f64::MAX, 2)];

fn chart(table: &[(f64, u32)], value: f64) -> u32 {
    table
        .iter()
        .find(|(highest, _)| value <= *highest + 1e-9)
        .map(|(_, score)| *score)
        .expect("the last band is open")
}

#[derive(Clone, Copy, Debug)]
struct Obs {
    respiration_rate: f64,
    spo2: f64,
    oxygen: bool,
    systolic: f64,
    pulse: f64,
    consciousness: &'static str,
    temperature: f64,
    /// The patient's SpO2 target in ehr.spo2_targets: "" none, "88-92" (scale 2),
    /// "88-92 ended" (ended before the hour: scale 1), "94-98" (scale 1).
    target: &'static str,
}

const NORMAL: Obs = Obs {
    respiration_rate: 16.0,
    spo2: 97.0,
    oxygen: false,
    systolic: 120.0,
    pulse: 70.0,
    consciousness: "A",
    temperature: 37.0,
    target: "",
};

/// The SpO2 score of `o` on the scale its target puts it on.
fn spo2_score(o: &Obs) -> u32 {
    match (o.target, o.oxygen) {
        ("88-92", false) => chart(SPO2_SCALE_2_AIR, o.spo2),
        ("88-92", true) => chart(SPO2_SCALE_2_OXYGEN, o.spo2),
        _ => chart(SPO2_SCALE_1, o.spo2),
    }
}

fn news2(o: &Obs) -> (u32, &'static str) {
    let scores = [
        chart(RESPIRATION, o.respiration_rate),
        spo2_score(o),
        if o.oxygen { 2 } else { 0 },
        chart(SYSTOLIC, o.systolic),
        chart(PULSE, o.pulse),
        if o.consciousness == "A" { 0 } else { 3 },
        chart(TEMPERATURE, o.temperature),
    ];
    let total: u32 = scores.iter().sum();
    let risk = match total {
        7.. => "high",
        5..=6 => "medium",
        _ if scores.contains(&3) => "low-medium",
        _ => "low",
    };
    (total, risk)
}

/// Each value of `table`'s band edges and the value just above it (`step` apart).
fn edges(table: &[(f64, u32)], step: f64) -> Vec<f64> {
    table
        .iter()
        .filter(|(h, _)| *h < f64::MAX)
        .flat_map(|(h, _)| [*h, ((h + step) * 10.0).round() / 10.0])
        .collect()
}

fn prepared(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let qs = dir.join("qs");
    let out = quickstart(&qs, &["--prepare-only"]);
    assert!(out.contains("medlake apply"), "{out}");
    (qs.join("warehouse"), qs.join("project"))
}

#[test]
fn news2_hourly_matches_the_rcp_chart_at_every_band_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, project) = prepared(dir.path());
    let mut cases: Vec<Obs> = Vec::new();
    for v in edges(RESPIRATION, 1.0) {
        cases.push(Obs {
            respiration_rate: v,
            ..NORMAL
        });
    }
    for v in edges(SPO2_SCALE_1, 1.0) {
        cases.push(Obs { spo2: v, ..NORMAL });
    }
    // Scale 2 for the patients with an 88-92 % target, on air and on oxygen; scale 1 for a
    // target that ended before the hour and for another target range.
    for (table, oxygen) in [(SPO2_SCALE_2_AIR, false), (SPO2_SCALE_2_OXYGEN, true)] {
        for v in edges(table, 1.0) {
            cases.push(Obs {
                spo2: v,
                oxygen,
                target: "88-92",
                ..NORMAL
            });
        }
    }
    for target in ["", "88-92", "88-92 ended", "94-98"] {
        for oxygen in [false, true] {
            cases.push(Obs {
                spo2: 89.0,
                oxygen,
                target,
                ..NORMAL
            });
        }
    }
    for v in edges(SYSTOLIC, 1.0) {
        cases.push(Obs {
            systolic: v,
            ..NORMAL
        });
    }
    for v in edges(PULSE, 1.0) {
        cases.push(Obs { pulse: v, ..NORMAL });
    }
    for v in edges(TEMPERATURE, 0.1) {
        cases.push(Obs {
            temperature: v,
            ..NORMAL
        });
    }
    cases.push(Obs {
        oxygen: true,
        ..NORMAL
    });
    for c in ["C", "V", "P", "U"] {
        cases.push(Obs {
            consciousness: c,
            ..NORMAL
        });
    }
    // Risk band edges: 4 / 5 (low / medium), 6 / 7 (medium / high), a single 3 (low-medium)
    // alone and inside a medium or high total, 0.
    cases.extend([
        NORMAL,
        Obs {
            respiration_rate: 21.0,
            pulse: 111.0,
            ..NORMAL
        },
        Obs {
            respiration_rate: 21.0,
            pulse: 111.0,
            spo2: 95.0,
            ..NORMAL
        },
        Obs {
            respiration_rate: 21.0,
            pulse: 111.0,
            oxygen: true,
            ..NORMAL
        },
        Obs {
            respiration_rate: 21.0,
            pulse: 111.0,
            oxygen: true,
            spo2: 95.0,
            ..NORMAL
        },
        Obs {
            systolic: 90.0,
            ..NORMAL
        },
        Obs {
            systolic: 90.0,
            pulse: 91.0,
            ..NORMAL
        },
        Obs {
            systolic: 90.0,
            pulse: 111.0,
            ..NORMAL
        },
        Obs {
            systolic: 90.0,
            pulse: 111.0,
            temperature: 39.1,
            ..NORMAL
        },
        Obs {
            spo2: 91.0,
            oxygen: true,
            consciousness: "V",
            respiration_rate: 25.0,
            ..NORMAL
        },
    ]);
    // One patient per case, charted by a nurse at 10:05; a device's readings too for the
    // device path: the monitor of patient p sends the same pulse at 10:30 (the hour's latest
    // value wins) and a thermometer sends the temperature in degF for the temperature cases.
    let mut sql = String::new();
    let mut expected = BTreeMap::new();
    for (i, o) in cases.iter().enumerate() {
        let p = 5000 + i;
        expected.insert(p, news2(o));
        let (range, ended) = match o.target {
            "" => (None, "NULL"),
            "88-92" => (Some("88, 92"), "NULL"),
            "88-92 ended" => (Some("88, 92"), "TIMESTAMP '2026-11-23 09:30:00'"),
            _ => (Some("94, 98"), "NULL"),
        };
        if let Some(range) = range {
            sql.push_str(&format!(
                "INSERT INTO ehr.spo2_targets VALUES ({p}, {p}, {range}, 'COPD', 'Dr Test', TIMESTAMP '2026-11-23 08:00:00', {ended}, TIMESTAMP '2026-11-23 08:00:00');\n"
            ));
        }
        sql.push_str(&format!(
            "INSERT INTO ehr.patients VALUES ({p}, 'MRN{p}', 'Case', 'Test', DATE '1950-01-01', 'F', TIMESTAMP '2026-11-23 00:00:00');
             INSERT INTO ehr.encounters VALUES ({p}, {p}, 'Ward 1', 'B1', TIMESTAMP '2026-11-23 00:00:00', NULL, TIMESTAMP '2026-11-23 00:00:00');
             INSERT INTO ehr.observations VALUES ({p}, {p}, TIMESTAMP '2026-11-23 10:05:00', {}, {}, {}, {}, {}, '{}', {}, 'RN Test', TIMESTAMP '2026-11-23 10:06:00');
             INSERT INTO ehr.devices VALUES ('monitor-{p}', 'monitor', 'Acme', 'M', 'S', 1.0, TIMESTAMP '2026-11-23 00:00:00'), ('thermo-{p}', 'thermo', 'Acme', 'T', 'S', 1.0, TIMESTAMP '2026-11-23 00:00:00');
             INSERT INTO ehr.device_assignments VALUES ({p}, 'monitor-{p}', {p}, TIMESTAMP '2026-11-23 00:00:00', NULL, TIMESTAMP '2026-11-23 00:00:00'), ({}, 'thermo-{p}', {p}, TIMESTAMP '2026-11-23 00:00:00', NULL, TIMESTAMP '2026-11-23 00:00:00');
             INSERT INTO bronze.readings_push VALUES ('monitor-{p}', {p}, 'heart_rate', 65, 'bpm', TIMESTAMP '2026-11-23 10:01:00'), ('monitor-{p}', {p}, 'heart_rate', {}, 'bpm', TIMESTAMP '2026-11-23 10:30:00'), ('thermo-{p}', {p}, 'temperature', {}, 'degF', TIMESTAMP '2026-11-23 10:31:00');\n",
            o.respiration_rate,
            o.spo2,
            o.oxygen,
            o.systolic,
            // The nurse's pulse is overridden by the monitor's later reading.
            72.0,
            o.consciousness,
            // The nurse's temperature is overridden by the thermometer's later reading.
            36.9,
            p + 100_000,
            o.pulse,
            // degF that converts back to the case's degC at 0.1 degC.
            ((o.temperature * 9.0 / 5.0 + 32.0) * 100.0).round() / 100.0,
        ));
    }
    ok(&wh, &["-c", &sql]);
    apply(&wh, &project);
    let rows = csv(
        &wh,
        "SELECT patient_id, news2, risk, temperature, pulse, spo2_score, spo2_scale FROM gold.news2_hourly \
         WHERE hour = TIMESTAMP '2026-11-23 10:00:00' ORDER BY patient_id",
    );
    assert_eq!(rows.len(), cases.len(), "{rows:?}");
    for (row, (i, o)) in rows.iter().zip(cases.iter().enumerate()) {
        let p = 5000 + i;
        let (total, risk) = expected[&p];
        let want_prefix = format!("{p},{total},{risk},");
        assert!(
            row.starts_with(&want_prefix),
            "case {o:?}: expected NEWS2 {total} ({risk}), gold.news2_hourly has {row}"
        );
        let fields: Vec<&str> = row.split(',').collect();
        let temperature: f64 = fields[3].parse().unwrap();
        assert!(
            (temperature - o.temperature).abs() < 1e-9,
            "case {o:?}: the hour's temperature is the degF reading converted, got {row}"
        );
        let scale = if o.target == "88-92" { "2" } else { "1" };
        assert_eq!(
            (fields[5], fields[6]),
            (spo2_score(o).to_string().as_str(), scale),
            "case {o:?}: SpO2 score and scale, got {row}"
        );
    }
    // The case the scale exists for: SpO2 89 % on air scores 3 on scale 1 (an unflagged
    // patient) and 0 on scale 2 (a patient with an 88-92 % target).
    let at_89 = |target: &str| {
        let o = cases
            .iter()
            .position(|o| o.spo2 == 89.0 && !o.oxygen && o.target == target)
            .unwrap();
        rows[o].split(',').nth(5).unwrap().to_string()
    };
    assert_eq!((at_89(""), at_89("88-92")), ("3".into(), "0".into()));
}

// ---------------------------------------------------------------------------------------------
// Hours and days in the hospital's time zone.

/// `medlake sql --format csv` with the hospital's time zone `zone` (MEDLAKE_TIME_ZONE).
fn csv_in(zone: &str, warehouse: &Path, sql: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .env("MEDLAKE_TIME_ZONE", zone)
        .args(["sql", "--format", "csv", "--warehouse"])
        .arg(warehouse)
        .args(["-c", sql])
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out).lines().skip(1).map(str::to_string).collect()
}

/// A monitor on one patient from 2026-03-28 to 2026-03-31 and from 2026-10-24 to 2026-10-27
/// (UTC), a heart rate every 20 minutes: with `MEDLAKE_TIME_ZONE=Europe/London` the views
/// of sql/ give the local day of the spring change (29 March) 23 NEWS2 hours, 69 readings
/// and 23 attached hours, the autumn one (25 October) 25, 75 and 25, the days after 24.
#[test]
fn gold_views_count_hours_and_days_in_the_hospitals_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, project) = prepared(dir.path());
    let mut readings = Vec::new();
    for (from, to) in [
        ("2026-03-28 00:00:00", "2026-03-31 00:00:00"),
        ("2026-10-24 00:00:00", "2026-10-27 00:00:00"),
    ] {
        let parse =
            |t: &str| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").unwrap();
        let mut at = parse(from);
        while at < parse(to) {
            readings.push(format!(
                "('monitor-1', 1, 'heart_rate', 72, 'bpm', TIMESTAMP '{}')",
                at.format("%Y-%m-%d %H:%M:%S")
            ));
            at += chrono::TimeDelta::minutes(20);
        }
    }
    ok(
        &wh,
        &[
            "-c",
            "INSERT INTO ehr.patients VALUES (1, 'MRN1', 'A', 'B', DATE '1950-01-01', 'F', TIMESTAMP '2026-03-01 00:00:00')",
            "-c",
            "INSERT INTO ehr.devices VALUES ('monitor-1', 'monitor', 'Acme', 'M', 'S', 1.0, TIMESTAMP '2026-03-01 00:00:00')",
            "-c",
            "INSERT INTO ehr.device_assignments VALUES (1, 'monitor-1', 1, TIMESTAMP '2026-03-27 00:00:00', TIMESTAMP '2026-10-28 00:00:00', TIMESTAMP '2026-03-27 00:00:00')",
            "-c",
            "INSERT INTO ehr.encounters VALUES (1, 1, 'Ward 1', 'B1', TIMESTAMP '2026-03-27 00:00:00', NULL, TIMESTAMP '2026-03-27 00:00:00')",
            "-c",
            &format!(
                "INSERT INTO bronze.readings_push VALUES {}",
                readings.join(", ")
            ),
        ],
    );
    let out = Command::new(BIN)
        .env("MEDLAKE_TIME_ZONE", "Europe/London")
        .args(["apply", "--warehouse"])
        .arg(&wh)
        .arg("--project")
        .arg(&project)
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let london = |sql: &str| csv_in("Europe/London", &wh, sql);
    let days = "('2026-03-29', '2026-03-30', '2026-10-25', '2026-10-26')";
    assert_eq!(
        london(&format!(
            "SELECT local_date(hour), count(*) FROM gold.news2_hourly \
             WHERE CAST(local_date(hour) AS VARCHAR) IN {days} GROUP BY 1 ORDER BY 1"
        )),
        [
            "2026-03-29,23",
            "2026-03-30,24",
            "2026-10-25,25",
            "2026-10-26,24"
        ]
    );
    assert_eq!(
        london(&format!(
            "SELECT day, readings FROM gold.patient_daily_vitals \
             WHERE CAST(day AS VARCHAR) IN {days} ORDER BY day"
        )),
        [
            "2026-03-29,69",
            "2026-03-30,72",
            "2026-10-25,75",
            "2026-10-26,72"
        ]
    );
    assert_eq!(
        london(&format!(
            "SELECT day, attached_hours, accepted FROM gold.data_completeness \
             WHERE CAST(day AS VARCHAR) IN {days} ORDER BY day"
        )),
        [
            "2026-03-29,23.0,69",
            "2026-03-30,24.0,72",
            "2026-10-25,25.0,75",
            "2026-10-26,24.0,72"
        ]
    );
    // Local midnight in summer is 23:00 UTC the day before; the hours are the instants
    // each local hour began.
    assert_eq!(
        london(
            "SELECT local_day_start(DATE '2026-03-30'), min(hour) FROM gold.news2_hourly \
             WHERE local_date(hour) = DATE '2026-03-30'"
        ),
        ["2026-03-29T23:00:00,2026-03-29T23:00:00"]
    );
    // Without a zone: UTC (the default). 23:30 UTC on 30 June is 00:30 on 1 July in London.
    let sql = "SELECT clinical_time_zone(), local_date(TIMESTAMP '2026-06-30 23:30:00'), \
               local_hour(TIMESTAMP '2026-06-30 23:30:00')";
    assert_eq!(csv(&wh, sql), ["UTC,2026-06-30,2026-06-30T23:00:00"]);
    assert_eq!(
        london(sql),
        ["Europe/London,2026-07-01,2026-06-30T23:00:00"]
    );
}

// ---------------------------------------------------------------------------------------------
// Every silver rule has a case that it quarantines.

/// The names of the expectations of sql/silver/*.sql.
fn silver_rules(project: &Path) -> BTreeSet<String> {
    let mut rules = BTreeSet::new();
    for entry in std::fs::read_dir(project.join("sql/silver")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "CONSTRAINT" {
                rules.insert(words.next().unwrap().to_string());
            }
        }
    }
    rules
}

#[test]
fn every_silver_rule_quarantines_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, project) = prepared(dir.path());
    let landing = dir.path().join("qs/landing");
    ok(
        &wh,
        &[
            "-c",
            "INSERT INTO ehr.patients VALUES (1, 'MRN1', 'A', 'B', DATE '1950-01-01', 'F', TIMESTAMP '2026-11-23 00:00:00'), (2, 'MRN2', 'C', 'D', DATE '1960-01-01', 'M', TIMESTAMP '2026-11-23 00:00:00')",
            "-c",
            "INSERT INTO ehr.devices VALUES ('dev-1', 'monitor', 'Acme', 'M', 'S', 1.0, TIMESTAMP '2026-11-23 00:00:00')",
            "-c",
            "INSERT INTO ehr.device_assignments VALUES (1, 'dev-1', 1, TIMESTAMP '2026-11-23 00:00:00', NULL, TIMESTAMP '2026-11-23 00:00:00')",
            "-c",
            "INSERT INTO ehr.encounters VALUES (1, 1, 'Ward 1', 'B1', TIMESTAMP '2026-11-23 00:00:00', NULL, TIMESTAMP '2026-11-23 00:00:00')",
        ],
    );
    // (rule, metric, value, unit, device, patient); each at its own minute.
    let readings: &[(&str, &str, &str, &str, &str, u32)] = &[
        ("ok", "heart_rate", "72", "bpm", "dev-1", 1),
        ("has_value", "heart_rate", "NULL", "bpm", "dev-1", 1),
        ("known_metric", "hemoglobin", "13", "g/dL", "dev-1", 1),
        ("standard_unit", "glucose", "101", "mg/L", "dev-1", 1),
        (
            "plausible_heart_rate",
            "heart_rate",
            "310",
            "bpm",
            "dev-1",
            1,
        ),
        ("plausible_spo2", "spo2", "127", "%", "dev-1", 1),
        (
            "plausible_respiration_rate",
            "respiration_rate",
            "99",
            "/min",
            "dev-1",
            1,
        ),
        (
            "plausible_temperature",
            "temperature",
            "122",
            "degF",
            "dev-1",
            1,
        ),
        (
            "plausible_systolic_bp",
            "systolic_bp",
            "40",
            "kPa",
            "dev-1",
            1,
        ),
        (
            "plausible_diastolic_bp",
            "diastolic_bp",
            "255",
            "mmHg",
            "dev-1",
            1,
        ),
        ("plausible_glucose", "glucose", "40", "mmol/L", "dev-1", 1),
        (
            "device_assigned",
            "heart_rate",
            "80",
            "bpm",
            "dev-unknown",
            1,
        ),
        (
            "patient_matches_assignment",
            "heart_rate",
            "80",
            "bpm",
            "dev-1",
            2,
        ),
    ];
    let values: Vec<String> = readings
        .iter()
        .enumerate()
        .map(|(i, (_, metric, value, unit, device, patient))| {
            format!(
                "('{device}', {patient}, '{metric}', {value}, '{unit}', TIMESTAMP '2026-11-23 10:{i:02}:00')"
            )
        })
        .collect();
    ok(
        &wh,
        &[
            "-c",
            &format!(
                "INSERT INTO bronze.readings_push VALUES {}",
                values.join(", ")
            ),
        ],
    );
    // The same rules hold for the other channels: a CSV upload and the device cloud.
    let batch = landing.join("readings/csv/batch=20261123T1100");
    std::fs::create_dir_all(&batch).unwrap();
    std::fs::write(
        batch.join("r.csv"),
        "device_id,patient_id,metric,value,unit,taken_at\n\
         dev-1,1,glucose,5.5,mmol/L,2026-11-23 11:00:00\n\
         dev-1,1,glucose,45.0,mmol/L,2026-11-23 11:01:00\n",
    )
    .unwrap();
    ok(
        &wh,
        &[
            "-c",
            "INSERT INTO telemetry.device_cloud VALUES \
             ('c1', 'dev-1', 1, 'systolic_bp', 16.0, 'kPa', TIMESTAMP '2026-11-23 11:10:00', TIMESTAMP '2026-11-23 11:11:00'), \
             ('c2', 'dev-1', 1, 'systolic_bp', 3.0, 'kPa', TIMESTAMP '2026-11-23 11:12:00', TIMESTAMP '2026-11-23 11:13:00')",
        ],
    );
    // Nursing observations: one good, one breaking each rule (respiration_rate, spo2,
    // on_oxygen, systolic_bp, heart_rate, consciousness, temperature).
    let observations: &[(&str, &str)] = &[
        ("ok", "18, 96, false, 120, 80, 'A', 37.0"),
        (
            "obs_plausible_respiration_rate",
            "0, 96, false, 120, 80, 'A', 37.0",
        ),
        ("obs_plausible_spo2", "18, 101, false, 120, 80, 'A', 37.0"),
        (
            "obs_plausible_systolic_bp",
            "18, 96, false, 12, 80, 'A', 37.0",
        ),
        (
            "obs_plausible_heart_rate",
            "18, 96, false, 120, 800, 'A', 37.0",
        ),
        (
            "obs_plausible_temperature",
            "18, 96, false, 120, 80, 'A', 98.6",
        ),
        (
            "obs_known_consciousness",
            "18, 96, false, 120, 80, 'X', 37.0",
        ),
    ];
    let values: Vec<String> = observations
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            format!(
                "({i}, 1, TIMESTAMP '2026-11-23 12:{i:02}:00', {v}, 'RN', TIMESTAMP '2026-11-23 13:00:00')"
            )
        })
        .collect();
    ok(
        &wh,
        &[
            "-c",
            &format!("INSERT INTO ehr.observations VALUES {}", values.join(", ")),
        ],
    );
    // SpO2 targets: one good, one breaking each rule (target_low, target_high, flagged_by).
    let targets: &[(&str, &str)] = &[
        ("ok", "88, 92, 'Dr A'"),
        ("target_range_plausible", "92, 88, 'Dr A'"),
        ("target_prescribed_by", "88, 92, NULL"),
    ];
    let values: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let (range, by) = v.rsplit_once(", ").unwrap();
            format!(
                "({i}, 1, {range}, 'COPD', {by}, TIMESTAMP '2026-11-23 09:00:00', NULL, TIMESTAMP '2026-11-23 09:00:00')"
            )
        })
        .collect();
    ok(
        &wh,
        &[
            "-c",
            &format!("INSERT INTO ehr.spo2_targets VALUES {}", values.join(", ")),
        ],
    );
    apply(&wh, &project);

    let mut covered = BTreeSet::new();
    for (i, (rule, ..)) in readings.iter().enumerate() {
        let at = format!("TIMESTAMP '2026-11-23 10:{i:02}:00'");
        let quarantined = csv(
            &wh,
            &format!("SELECT _medlake_rules FROM silver.readings_quarantine WHERE taken_at = {at}"),
        );
        let kept = count(
            &wh,
            &format!("SELECT count(*) FROM silver.readings WHERE taken_at = {at}"),
        );
        if *rule == "ok" {
            assert_eq!((kept, quarantined.len()), (1, 0), "the good reading");
        } else {
            assert_eq!(kept, 0, "{rule}: the reading reached silver.readings");
            assert!(
                quarantined.len() == 1 && quarantined[0].contains(rule),
                "{rule}: quarantined as {quarantined:?}"
            );
            covered.insert(rule.to_string());
        }
    }
    // CSV and device cloud: the good ones converted, the bad ones quarantined.
    assert_eq!(
        csv(
            &wh,
            "SELECT value, unit, source FROM silver.readings WHERE taken_at >= TIMESTAMP '2026-11-23 11:00:00' ORDER BY taken_at"
        ),
        ["99.1,mg/dL,file", "120.0,mmHg,rest"]
    );
    assert_eq!(
        csv(
            &wh,
            "SELECT _medlake_rules FROM silver.readings_quarantine WHERE taken_at >= TIMESTAMP '2026-11-23 11:00:00' ORDER BY taken_at"
        ),
        ["plausible_glucose", "plausible_systolic_bp"]
    );
    for (i, (rule, _)) in observations.iter().enumerate() {
        let quarantined = csv(
            &wh,
            &format!(
                "SELECT _medlake_rules FROM silver.nursing_observations_quarantine WHERE observation_id = {i}"
            ),
        );
        let kept = count(
            &wh,
            &format!("SELECT count(*) FROM silver.nursing_observations WHERE observation_id = {i}"),
        );
        if *rule == "ok" {
            assert_eq!((kept, quarantined.len()), (1, 0), "the good observation");
        } else {
            assert_eq!(kept, 0, "{rule}: the observation reached silver");
            assert!(
                quarantined.len() == 1 && quarantined[0].contains(rule),
                "{rule}: quarantined as {quarantined:?}"
            );
            covered.insert(rule.to_string());
        }
    }
    for (i, (rule, _)) in targets.iter().enumerate() {
        let quarantined = csv(
            &wh,
            &format!(
                "SELECT _medlake_rules FROM silver.spo2_targets_quarantine WHERE target_id = {i}"
            ),
        );
        let kept = count(
            &wh,
            &format!("SELECT count(*) FROM silver.spo2_targets WHERE target_id = {i}"),
        );
        if *rule == "ok" {
            assert_eq!((kept, quarantined.len()), (1, 0), "the good target");
        } else {
            assert_eq!(kept, 0, "{rule}: the target reached silver");
            assert!(
                quarantined.len() == 1 && quarantined[0].contains(rule),
                "{rule}: quarantined as {quarantined:?}"
            );
            covered.insert(rule.to_string());
        }
    }
    assert_eq!(
        covered,
        silver_rules(&project),
        "every rule of sql/silver has a case here"
    );
}

/// 1% more in every source of the quickstart (new rows; new versions of EHR, trial and
/// Cosmos rows, which silver resolves; new CSV, Parquet, DICOM and document files) and a
/// CASCADE refresh of every view: each view of sql/ refreshes incrementally, none fully, except
/// where REFRESH POLICY AUTO finds the incremental plan would read most of the inputs.
#[test]
fn every_view_refreshes_incrementally_after_one_percent_more_in_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    quickstart(
        &qs,
        &[
            "--patients",
            "10",
            "--hours",
            "3",
            "--rate",
            "0.2",
            "--once",
            "--live-seconds",
            "3",
        ],
    );
    let wh = qs.join("warehouse");
    let landing = qs.join("landing");
    // New files in every landing folder.
    for format in ["csv", "parquet"] {
        let folder = landing.join("readings").join(format);
        let mut batches: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        batches.sort();
        let latest = batches.last().expect("a batch folder").clone();
        let name = latest.file_name().unwrap().to_string_lossy().to_string();
        let next = folder.join(format!("{}59", &name[..name.len() - 2]));
        std::fs::create_dir_all(&next).unwrap();
        for file in std::fs::read_dir(&latest).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, next.join(file.file_name().unwrap())).unwrap();
        }
    }
    let documents = landing.join("documents");
    let document = std::fs::read_dir(&documents)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&document, documents.join("MRN0009999_discharge_letter.pdf")).unwrap();
    let pacs = landing.join("pacs-export");
    let study = std::fs::read_dir(&pacs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let image = std::fs::read_dir(&study)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::create_dir_all(pacs.join("second-export")).unwrap();
    std::fs::copy(&image, pacs.join("second-export").join("1.dcm")).unwrap();
    // 1% more rows in every stand-in source (the statements the `warehouse` benchmark runs).
    let append = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benches/warehouse/append.sql"
    );
    ok(&wh, &["-f", append]);
    let views = csv(
        &wh,
        "SELECT schema || '.' || name FROM system.materialized_views ORDER BY 1",
    );
    assert!(views.len() >= 25, "{views:?}");
    let before = count(&wh, "SELECT count(*) FROM system.refreshes");
    let out = Command::new(BIN)
        .args(["refresh", "--cascade", "--warehouse"])
        .arg(&wh)
        .args(&views)
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let refreshes = csv(
        &wh,
        &format!(
            "SELECT view, mode, reason FROM (SELECT *, row_number() OVER (ORDER BY started, refresh_id) AS n \
             FROM system.refreshes) WHERE n > {before} AND (mode <> 'none' \
             OR strpos(reason, 'only in columns the view does not read') > 0) ORDER BY view"
        ),
    );
    // (A view whose inputs changed only in columns it does not read is current without
    // a refresh: an EHR row's new version moves its modified_at, which most views ignore.)
    let refreshed: BTreeSet<String> = refreshes
        .iter()
        .map(|line| line.split(',').next().unwrap().to_string())
        .collect();
    // Code tables (VALUES, no input) have nothing to follow.
    let constant = ["silver.hl7_metric_codes", "silver.hl7_unit_codes"];
    for view in views.iter().filter(|v| !constant.contains(&v.as_str())) {
        assert!(
            refreshed.contains(view),
            "{view} was not refreshed:\n{}",
            refreshes.join("\n")
        );
    }
    // The two views of sql/alerts/operations.sql read the clock (now()): recomputed at every
    // refresh by design, and a FULL refresh a moment later may rightly differ.
    let clock = ["gold.silent_devices", "gold.unacknowledged_alarms"];
    // REFRESH POLICY AUTO may still recompute a view whose incremental plan would read most
    // of its inputs (its reason names the plan and what it would read), and then the views
    // over it, whose inputs changed everywhere (the change-volume rule): every other view
    // refreshes incrementally.
    let full: Vec<&String> = refreshes
        .iter()
        .filter(|l| l.contains(",full,") && !clock.iter().any(|c| l.starts_with(&format!("{c},"))))
        .filter(|l| !l.contains("so REFRESH POLICY AUTO recomputes the view"))
        .collect();
    assert!(full.is_empty(), "refreshed fully:\n{full:#?}");
    // And each view holds what a FULL refresh computes (floats to 6 decimals).
    let versions: BTreeMap<String, String> = csv(
        &wh,
        "SELECT schema || '.' || name, table_version FROM system.materialized_views",
    )
    .into_iter()
    .map(|line| {
        let (view, version) = line.split_once(',').unwrap();
        (view.to_string(), version.to_string())
    })
    .collect();
    let out = Command::new(BIN)
        .args(["refresh", "--full", "--cascade", "--warehouse"])
        .arg(&wh)
        .args(&views)
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for view in &views {
        let (schema, name) = view.split_once('.').unwrap();
        let columns: Vec<String> = csv(
            &wh,
            &format!(
                "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position"
            ),
        )
        .into_iter()
        .map(|line| {
            let (column, kind) = line.split_once(',').unwrap();
            if ["double precision", "real"].contains(&kind) {
                format!("round({column}, 6)")
            } else {
                column.to_string()
            }
        })
        .collect();
        let columns = columns.join(", ");
        let old = format!(
            "SELECT {columns} FROM {view} VERSION AS OF {}",
            versions[view]
        );
        let new = format!("SELECT {columns} FROM {view}");
        let differ = count(
            &wh,
            &format!(
                "SELECT (SELECT count(*) FROM ({old} EXCEPT ALL {new})) + \
                 (SELECT count(*) FROM ({new} EXCEPT ALL {old}))"
            ),
        );
        assert!(
            differ == 0 || clock.contains(&view.as_str()),
            "{view}: incremental and FULL results differ ({differ} rows)"
        );
    }
    erasure_leaves_no_trace_of_the_patient(&wh, &views);
}

/// `medlake erase patient 1001` (the first demo patient) on the quickstart's warehouse: afterwards no file under it holds
/// the patient's MRN (it did before: the check can fail), the silver and gold views hold none
/// of their rows, and every view still refreshes.
fn erasure_leaves_no_trace_of_the_patient(wh: &Path, views: &[String]) {
    const MRN: &str = "MRN0001001";
    let holding = || {
        let mut found = Vec::new();
        let mut stack = vec![wh.to_path_buf()];
        while let Some(next) = stack.pop() {
            for entry in std::fs::read_dir(&next).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if std::fs::read(&path)
                    .unwrap()
                    .windows(MRN.len())
                    .any(|w| w == MRN.as_bytes())
                {
                    found.push(path.display().to_string());
                }
            }
        }
        found
    };
    assert!(
        !holding().is_empty(),
        "the warehouse held no {MRN} to begin with"
    );
    let erase = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["erase", "patient", "1001", "--warehouse"])
            .arg(wh)
            .args(extra)
            .output()
            .expect("medlake runs");
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        stdout(&out)
    };
    let dry = erase(&["--dry-run"]);
    assert!(
        dry.contains("bronze.documents") && dry.contains("would be erased"),
        "{dry}"
    );
    let report = erase(&[]);
    assert!(report.contains("silver.patients"), "{report}");
    let left = holding();
    assert!(left.is_empty(), "{MRN} is still in:\n{left:#?}\n{report}");
    for sql in [
        "SELECT count(*) FROM silver.patients WHERE patient_id = 1001",
        "SELECT count(*) FROM silver.readings WHERE patient_id = 1001",
        "SELECT count(*) FROM gold.news2_hourly WHERE patient_id = 1001",
        "SELECT count(*) FROM gold.patient_daily_vitals WHERE patient_id = 1001",
    ] {
        assert_eq!(count(wh, sql), 0, "{sql}");
    }
    let out = Command::new(BIN)
        .args(["refresh", "--cascade", "--warehouse"])
        .arg(wh)
        .args(views)
        .output()
        .expect("medlake runs");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(holding().is_empty());
}
