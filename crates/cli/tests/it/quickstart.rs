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
        .args(["--http", "127.0.0.1:0"])
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
    assert_eq!(sources, ["file", "push", "rest"]);
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
}

const NORMAL: Obs = Obs {
    respiration_rate: 16.0,
    spo2: 97.0,
    oxygen: false,
    systolic: 120.0,
    pulse: 70.0,
    consciousness: "A",
    temperature: 37.0,
};

fn news2(o: &Obs) -> (u32, &'static str) {
    let scores = [
        chart(RESPIRATION, o.respiration_rate),
        chart(SPO2_SCALE_1, o.spo2),
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
        "SELECT patient_id, news2, risk, temperature, pulse FROM gold.news2_hourly \
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
    }
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
    assert_eq!(
        covered,
        silver_rules(&project),
        "every rule of sql/silver has a case here"
    );
}

/// 1% more in every source of the quickstart (new rows; new versions of EHR, trial and
/// Cosmos rows, which silver resolves; new CSV, Parquet, DICOM and document files) and a
/// CASCADE refresh of every view: each view of sql/ refreshes incrementally, none fully.
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
             FROM system.refreshes) WHERE n > {before} AND mode <> 'none' ORDER BY view"
        ),
    );
    let refreshed: BTreeSet<String> = refreshes
        .iter()
        .map(|line| line.split(',').next().unwrap().to_string())
        .collect();
    for view in &views {
        assert!(
            refreshed.contains(view),
            "{view} was not refreshed:\n{}",
            refreshes.join("\n")
        );
    }
    // The two views of sql/alerts/operations.sql read the clock (now()): recomputed at every
    // refresh by design, and a FULL refresh a moment later may rightly differ.
    let clock = ["gold.silent_devices", "gold.unacknowledged_alarms"];
    let full: Vec<&String> = refreshes
        .iter()
        .filter(|l| l.contains(",full,") && !clock.iter().any(|c| l.starts_with(&format!("{c},"))))
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
