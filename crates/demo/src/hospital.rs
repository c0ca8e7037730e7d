//! The demo hospital of `medlake quickstart`, generated with the simulator's generator:
//! patients, devices and their assignments, ward stays, nursing observations, trials, alerts
//! and device events (into the stand-ins), device readings routed by channel as a hospital's
//! devices would send them, DICOM studies (a small explicit-VR encoder) and scanned documents.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use chrono::{TimeZone, Timelike, Utc};
use medlake_engine::{Engine, IfExists, Ingest, Output};

use crate::Failure;
use crate::project::{Progress, io_error};
use crate::simulate::{Plan, Reading, Rng, Simulation};

pub const WARDS: &[&str] = &[
    "Cardiology (Ward 3)",
    "Respiratory (Ward 5)",
    "General Medicine (Ward 7)",
    "Surgical (Ward 9)",
];
const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Khan", "Lewis", "Clarke", "Jackson", "Wood", "Harris", "Martin", "Cooper", "King", "Lee",
];
const GIVEN: &[&str] = &[
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo",
    "Lily", "Arthur", "Rosie", "Muhammad", "Grace", "Oscar", "Freya", "Charlie", "Sophia",
    "Margaret", "Peter", "Susan", "David", "Aisha", "Tomasz", "Mei", "Ana",
];
const NURSES: &[&str] = &[
    "RN Okafor",
    "RN Lindqvist",
    "RN Moreau",
    "RN Singh",
    "RN Byrne",
];

// ---------------------------------------------------------------------------------------------
// The demo hospital

/// What was generated.
#[derive(Default)]
pub struct Hospital {
    patients: usize,
    devices: usize,
    pushed: u64,
    cloud: u64,
    csv_rows: u64,
    csv_files: usize,
    parquet_rows: u64,
    parquet_files: usize,
    observations: usize,
    alerts: usize,
    device_events: usize,
    enrollments: usize,
    dicom_files: usize,
    documents: usize,
}

impl Hospital {
    /// One line: what was generated, by channel.
    pub fn summary(&self) -> String {
        format!(
            "demo hospital: {} patients on {} wards, {} devices; {} readings ({} pushed, {} from \
             the device cloud, {} in {} CSV and {} in {} Parquet uploads), {} nursing \
             observations, {} alerts, {} device events, {} trial enrollments, {} DICOM files, {} \
             documents",
            self.patients,
            WARDS.len() + 1,
            self.devices,
            self.pushed + self.cloud + self.csv_rows + self.parquet_rows,
            self.pushed,
            self.cloud,
            self.csv_rows,
            self.csv_files,
            self.parquet_rows,
            self.parquet_files,
            self.observations,
            self.alerts,
            self.device_events,
            self.enrollments,
            self.dicom_files,
            self.documents
        )
    }
}

/// Small random helpers over the simulator's generator.
struct Dice(Rng);

impl Dice {
    fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[((self.uniform() * items.len() as f64) as usize).min(items.len() - 1)]
    }
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn ts_sql(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => format!("TIMESTAMP '{}'", t.format("%Y-%m-%d %H:%M:%S%.3f")),
        None => "NULL".into(),
    }
}

fn ts_opt(ms: Option<i64>) -> String {
    ms.map_or("NULL".into(), ts_sql)
}

fn text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn num(v: Option<f64>) -> String {
    v.map_or("NULL".into(), |v| format!("{v}"))
}

/// Rows for one stand-in table, inserted in statements of 500 rows.
struct Rows {
    table: &'static str,
    rows: Vec<String>,
}

impl Rows {
    fn new(table: &'static str) -> Self {
        Rows {
            table,
            rows: Vec::new(),
        }
    }
    fn push(&mut self, values: &[String]) {
        self.rows.push(format!("({})", values.join(", ")));
    }
    async fn insert(&self, engine: &Engine) -> Result<(), Failure> {
        for chunk in self.rows.chunks(500) {
            engine
                .sql(&format!(
                    "INSERT INTO {} VALUES {}",
                    self.table,
                    chunk.join(",\n")
                ))
                .await?;
        }
        Ok(())
    }
}

/// Readings collected into Arrow columns and appended to a table in one commit per chunk.
struct ReadingColumns {
    table: &'static str,
    schema: SchemaRef,
    reading_id: StringBuilder,
    device_id: StringBuilder,
    patient_id: Int32Builder,
    metric: StringBuilder,
    value: Float64Builder,
    unit: StringBuilder,
    taken_at: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    rows: usize,
    total: u64,
}

const CHUNK: usize = 500_000;

impl ReadingColumns {
    async fn new(engine: &Engine, table: &'static str) -> Result<Self, Failure> {
        let statement = medlake_engine::parse(&format!("SELECT * FROM {table} LIMIT 0"))?
            .into_iter()
            .next()
            .ok_or_else(|| Failure::Usage("empty statement".into()))?;
        let schema = match engine.execute(statement).await? {
            Output::Rows(stream) => stream.schema(),
            Output::Command { .. } => {
                return Err(Failure::Usage(format!("{table} is not a table")));
            }
        };
        Ok(ReadingColumns {
            table,
            schema,
            reading_id: StringBuilder::new(),
            device_id: StringBuilder::new(),
            patient_id: Int32Builder::new(),
            metric: StringBuilder::new(),
            value: Float64Builder::new(),
            unit: StringBuilder::new(),
            taken_at: TimestampMicrosecondBuilder::new(),
            received_at: TimestampMicrosecondBuilder::new(),
            rows: 0,
            total: 0,
        })
    }

    fn push(&mut self, r: &Reading, value: Option<f64>, unit: &str, received_ms: Option<i64>) {
        self.device_id.append_value(&r.device_id);
        self.patient_id.append_value(r.patient_id);
        self.metric.append_value(r.metric.name());
        self.value.append_option(value);
        self.unit.append_value(unit);
        self.taken_at.append_value(r.taken_at_ms * 1000);
        if let Some(received) = received_ms {
            self.reading_id.append_value(format!(
                "{}-{}-{}",
                r.device_id,
                r.metric.name(),
                r.taken_at_ms
            ));
            self.received_at.append_value(received * 1000);
        }
        self.rows += 1;
    }

    async fn flush(&mut self, engine: &Engine, all: bool) -> Result<(), Failure> {
        if self.rows == 0 || (!all && self.rows < CHUNK) {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        for field in self.schema.fields() {
            let array: ArrayRef = match field.name().as_str() {
                "reading_id" => Arc::new(self.reading_id.finish()),
                "device_id" => Arc::new(self.device_id.finish()),
                "patient_id" => Arc::new(self.patient_id.finish()),
                "metric" => Arc::new(self.metric.finish()),
                "value" => Arc::new(self.value.finish()),
                "unit" => Arc::new(self.unit.finish()),
                "taken_at" => Arc::new(self.taken_at.finish()),
                "received_at" => Arc::new(self.received_at.finish()),
                other => {
                    return Err(Failure::Usage(format!(
                        "{}: unexpected column {other}",
                        self.table
                    )));
                }
            };
            let array = arrow::compute::cast(&array, field.data_type())
                .map_err(|e| Failure::Usage(format!("{}: {e}", self.table)))?;
            columns.push(array);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Failure::Usage(format!("{}: {e}", self.table)))?;
        engine
            .local_session()
            .ingest(
                self.table,
                self.schema.clone(),
                vec![batch],
                Ingest {
                    create: false,
                    exists: IfExists::Append,
                },
            )
            .await?;
        self.total += self.rows as u64;
        self.rows = 0;
        Ok(())
    }
}

/// The schema of the scratch table whose Parquet files become the Parquet uploads.
const STAGING: &str = "quickstart_staging";

/// Hourly Parquet uploads, written by the lake's own Parquet writer: each hour's readings go
/// into a scratch Delta table in one commit, and that commit's data files are copied into the
/// landing folder as `batch=<hour>/part-N.parquet` (the scratch table is dropped at the end).
struct ParquetUploads {
    columns: ReadingColumns,
    hour: Option<String>,
    scratch: PathBuf,
    taken: std::collections::BTreeSet<std::ffi::OsString>,
    target: PathBuf,
    files: usize,
}

impl ParquetUploads {
    async fn new(engine: &Engine, warehouse: &Path, landing: &Path) -> Result<Self, Failure> {
        engine
            .sql(&format!(
                "CREATE SCHEMA IF NOT EXISTS {STAGING}; \
                 CREATE TABLE {STAGING}.uploads (device_id VARCHAR NOT NULL, patient_id INT, \
                 metric VARCHAR, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP)"
            ))
            .await?;
        Ok(ParquetUploads {
            columns: ReadingColumns::new(engine, "quickstart_staging.uploads").await?,
            hour: None,
            scratch: warehouse.join(STAGING).join("uploads"),
            taken: std::collections::BTreeSet::new(),
            target: landing.join("readings/parquet"),
            files: 0,
        })
    }

    async fn push(&mut self, engine: &Engine, r: &Reading, hour: String) -> Result<(), Failure> {
        if self.hour.as_ref() != Some(&hour) {
            self.upload(engine).await?;
            self.hour = Some(hour);
        }
        self.columns.push(r, r.value, r.unit, None);
        Ok(())
    }

    async fn upload(&mut self, engine: &Engine) -> Result<(), Failure> {
        let Some(hour) = &self.hour else {
            return Ok(());
        };
        if self.columns.rows == 0 {
            return Ok(());
        }
        self.columns.flush(engine, true).await?;
        let folder = self.target.join(format!("batch={hour}"));
        std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
        let entries =
            std::fs::read_dir(&self.scratch).map_err(|e| io_error("list", &self.scratch, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| io_error("list", &self.scratch, e))?
                .path();
            let Some(name) = path.file_name().map(|n| n.to_os_string()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "parquet") && self.taken.insert(name) {
                self.files += 1;
                let to = folder.join(format!("part-{:05}.parquet", self.files));
                std::fs::copy(&path, &to).map_err(|e| io_error("copy", &path, e))?;
            }
        }
        Ok(())
    }
}

/// The NEWS2 vitals a nurse charts, in the order of `ehr.observations`' columns.
const CHARTED: [&str; 5] = [
    "respiration_rate",
    "spo2",
    "systolic_bp",
    "heart_rate",
    "temperature",
];

/// A patient as the generator tracks them.
struct PatientState {
    id: i32,
    /// The latest plausible device value of each charted vital (°C for temperature).
    latest: [Option<f64>; 5],
    next_observation_ms: i64,
    /// Last alert time per alert type (a device does not re-raise within 30 minutes).
    last_alert: BTreeMap<&'static str, i64>,
    /// Chronic hypercapnia: SpO2 88-92 % is the patient's normal (charted by nurses when no
    /// device measures it), and the oximeter alarms below 86 % instead of 90 % (alarm limits
    /// set to the prescribed target, as wards do).
    hypercapnic: bool,
}

fn plausible(metric: &str, v: f64) -> bool {
    match metric {
        "heart_rate" => (20.0..=250.0).contains(&v),
        "spo2" => (50.0..=100.0).contains(&v),
        "respiration_rate" => (4.0..=60.0).contains(&v),
        "temperature" => (30.0..=43.0).contains(&v),
        "systolic_bp" => (50.0..=250.0).contains(&v),
        "diastolic_bp" => (25.0..=150.0).contains(&v),
        "glucose" => (20.0..=600.0).contains(&v),
        _ => false,
    }
}

fn hour_key(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y%m%dT%H00").to_string(),
        None => "19700101T0000".into(),
    }
}
/// The last pushed, cloud and Parquet readings, loaded; the staging schema dropped.
async fn finish_channels(
    engine: &Engine,
    pushed: &mut ReadingColumns,
    cloud: &mut ReadingColumns,
    parquet: &mut ParquetUploads,
    hospital: &mut Hospital,
) -> Result<(), Failure> {
    pushed.flush(engine, true).await?;
    cloud.flush(engine, true).await?;
    parquet.upload(engine).await?;
    engine
        .sql(&format!("DROP SCHEMA {STAGING} CASCADE"))
        .await?;
    hospital.parquet_rows = parquet.columns.total;
    hospital.parquet_files = parquet.files;
    hospital.pushed = pushed.total;
    hospital.cloud = cloud.total;
    Ok(())
}

/// Loads the EHR stand-in's patients, ward stays, devices and assignments.
async fn insert_ehr(
    engine: &Engine,
    progress: &Progress,
    tables: [&Rows; 5],
) -> Result<(), Failure> {
    for rows in tables {
        rows.insert(engine).await?;
    }
    let [patients, encounters, register, ..] = tables;
    progress.say(format!(
        "EHR stand-in: {} patients, {} ward stays, {} devices and their assignments",
        patients.rows.len(),
        encounters.rows.len(),
        register.rows.len()
    ));
    Ok(())
}

/// A blood-pressure cuff's reading as the vendor's cloud syncs it: half of the cuffs in kPa,
/// received 20 s to 3 min after it was taken.
fn cuff_sync(r: &Reading, dice: &mut Dice) -> (Option<f64>, &'static str, i64) {
    let kpa = r.device_id.ends_with(['0', '2', '4', '6', '8']);
    let (value, unit) = match (kpa, r.value) {
        (true, Some(v)) => (Some((v / 7.50062 * 100.0).round() / 100.0), "kPa"),
        _ => (r.value, r.unit),
    };
    let received = r.taken_at_ms + (dice.range(20.0, 180.0) * 1000.0) as i64;
    (value, unit, received)
}

/// A glucometer's reading as a line of its hour's CSV upload, in mmol/L.
fn glucometer_line(csv: &mut BTreeMap<String, String>, r: &Reading) {
    let line = csv.entry(hour_key(r.taken_at_ms)).or_default();
    let value = r.value.map(|v| (v / 18.016 * 10.0).round() / 10.0);
    let _ = writeln!(
        line,
        "{},{},{},{},mmol/L,{}",
        r.device_id,
        r.patient_id,
        r.metric.name(),
        value.map_or(String::new(), |v| v.to_string()),
        Utc.timestamp_millis_opt(r.taken_at_ms)
            .single()
            .map_or(String::new(), |t| t
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string())
    );
}

/// Hourly CSV uploads of the glucometers, plus one from a glucometer the register does not
/// know and one whose patient disagrees with the EHR (silver quarantines both). Returns how
/// many files were written.
fn write_csv_uploads(
    csv: &mut BTreeMap<String, String>,
    devices: &[(Arc<str>, &'static str, i32)],
    end: i64,
    landing: &Path,
) -> Result<usize, Failure> {
    let last_hour = csv.keys().last().cloned();
    if let Some(hour) = last_hour
        && let Some(lines) = csv.get_mut(&hour)
    {
        let t = Utc
            .timestamp_millis_opt(end - 60_000)
            .single()
            .map_or(String::new(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let _ = writeln!(lines, "glucometer-999,1001,glucose,6.1,mmol/L,{t}");
        if let Some((id, _, patient)) = devices.iter().find(|d| d.1 == "glucometer") {
            let _ = writeln!(lines, "{id},{},glucose,5.9,mmol/L,{t}", patient + 1);
        }
    }
    for (hour, lines) in csv.iter() {
        let folder = landing.join("readings/csv").join(format!("batch={hour}"));
        std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
        let path = folder.join("glucometers.csv");
        let body = format!("device_id,patient_id,metric,value,unit,taken_at\n{lines}");
        std::fs::write(&path, body).map_err(|e| io_error("write", &path, e))?;
    }
    Ok(csv.len())
}

/// What a reading tells the ward: the latest charted value of its metric, and an alert when
/// it alarms (at most one per kind per patient every 30 minutes).
fn note_vitals(
    state: &mut PatientState,
    r: &Reading,
    alerts: &mut Rows,
    dice: &mut Dice,
    alert_id: &mut u64,
    end: i64,
) {
    let metric = r.metric.name();
    if let Some(v) = r.value {
        let celsius = if r.unit == "degF" {
            ((v - 32.0) * 5.0 / 9.0 * 10.0).round() / 10.0
        } else {
            v
        };
        if let Some(slot) = CHARTED.iter().position(|m| *m == metric)
            && plausible(metric, celsius)
        {
            state.latest[slot] = Some(celsius);
        }
        if let Some((kind, severity, message)) =
            alarm(metric, celsius, if state.hypercapnic { 86.0 } else { 90.0 })
        {
            let last = state.last_alert.get(kind).copied();
            if last.is_none_or(|t| r.taken_at_ms - t > 30 * 60_000) {
                state.last_alert.insert(kind, r.taken_at_ms);
                *alert_id += 1;
                push_alert(
                    alerts,
                    dice,
                    *alert_id,
                    r,
                    kind,
                    severity,
                    &format!("{message}: {celsius} {}", r.unit),
                    end,
                );
            }
        }
    }
}

/// Some devices go flat for a while (battery out, unplugged): no readings, events instead.
fn outages(
    dice: &mut Dice,
    devices: &[(Arc<str>, &'static str, i32)],
    start: i64,
    end: i64,
) -> BTreeMap<Arc<str>, (i64, i64)> {
    let mut outages = BTreeMap::new();
    for (id, _, _) in devices {
        if dice.chance(0.05) {
            let from = start + (dice.range(0.1, 0.8) * (end - start) as f64) as i64;
            let to = from + (dice.range(20.0, 90.0) * 60_000.0) as i64;
            outages.insert(id.clone(), (from, to.min(end)));
        }
    }
    outages
}

/// The NEWS2 observations a nurse charts for one patient up to `clock`, every four hours
/// (from the latest readings, worse in the second half for a deteriorating patient).
fn chart(
    state: &mut PatientState,
    worsening: bool,
    dice: &mut Dice,
    clock: i64,
    (start, end): (i64, i64),
    observations: &mut Rows,
    observation_id: &mut i64,
) {
    while state.next_observation_ms <= clock && state.next_observation_ms < end {
        let at = state.next_observation_ms;
        let worse = worsening && at > start + (end - start) / 2;
        let usual_spo2 = if state.hypercapnic { 90.0 } else { 97.0 };
        let defaults = [16.0, usual_spo2, 124.0, 78.0, 36.8];
        let sds = [2.0, 1.0, 12.0, 8.0, 0.3];
        let mut values = [0.0; 5];
        for k in 0..5 {
            let v = state.latest[k].unwrap_or_else(|| dice.normal(defaults[k], sds[k]));
            values[k] = if k == 4 {
                (v * 10.0).round() / 10.0
            } else {
                v.round()
            };
        }
        let on_oxygen = values[1] < 94.0 || (worse && dice.chance(0.7));
        let consciousness = if worse && dice.chance(0.4) {
            dice.pick(&["C", "V"])
        } else {
            "A"
        };
        let recorded = at + (dice.range(1.0, 15.0) * 60_000.0) as i64;
        observations.push(&[
            observation_id.to_string(),
            state.id.to_string(),
            ts_sql(at),
            num(Some(values[0])),
            num(Some(values[1])),
            on_oxygen.to_string(),
            num(Some(values[2])),
            num(Some(values[3])),
            text(consciousness),
            num(Some(values[4])),
            text(dice.pick(NURSES)),
            ts_sql(recorded),
        ]);
        *observation_id += 1;
        state.next_observation_ms += (dice.range(3.5, 4.5) * 3_600_000.0) as i64;
    }
}

/// The EHR's patients and their ward stays, with a few patients discharged earlier (whose
/// devices went on to the current patients: the as-of join must not give their readings to
/// them), and each current patient's simulation state.
fn ehr_people(
    dice: &mut Dice,
    simulation: &Simulation,
    start: i64,
    end: i64,
) -> (Rows, Rows, Vec<PatientState>) {
    let (patient_count, deteriorating, hypercapnic) = (
        simulation.patients(),
        simulation.deteriorating(),
        simulation.hypercapnic(),
    );
    // Patients, their ward stays, and a few discharged earlier (whose devices went on to the
    // current patients: the as-of join must not give their readings to them).
    let mut patients = Rows::new("ehr.patients");
    let mut encounters = Rows::new("ehr.encounters");
    let mut states = Vec::new();
    let admitted_ms = start - 2 * 3_600_000;
    let mut encounter_id = 1i64;
    for p in 0..patient_count {
        let id = 1001 + p as i32;
        let birth_year = 1930 + (dice.uniform() * 75.0) as i32;
        patients.push(&[
            id.to_string(),
            text(&format!("MRN{id:07}")),
            text(dice.pick(FAMILY)),
            text(dice.pick(GIVEN)),
            format!(
                "DATE '{birth_year}-{:02}-{:02}'",
                1 + (dice.uniform() * 12.0) as u32 % 12,
                1 + (dice.uniform() * 28.0) as u32 % 28
            ),
            text(if dice.chance(0.5) { "F" } else { "M" }),
            ts_sql(admitted_ms - 86_400_000),
        ]);
        let ward = if deteriorating.contains(&id) {
            WARDS[0]
        } else {
            WARDS[p % WARDS.len()]
        };
        let bed = format!("B{:02}", 1 + p / WARDS.len());
        // One patient in ten moves: to the ICU if deteriorating, else to another ward.
        let transfer = (deteriorating.contains(&id) || dice.chance(0.1))
            .then(|| start + (dice.range(0.5, 0.9) * (end - start) as f64) as i64);
        match transfer {
            Some(at) => {
                encounters.push(&[
                    encounter_id.to_string(),
                    id.to_string(),
                    text(ward),
                    text(&bed),
                    ts_sql(admitted_ms),
                    ts_sql(at),
                    ts_sql(at),
                ]);
                let to = if deteriorating.contains(&id) {
                    "Intensive Care Unit"
                } else {
                    WARDS[(p + 1) % WARDS.len()]
                };
                encounters.push(&[
                    (encounter_id + 1).to_string(),
                    id.to_string(),
                    text(to),
                    text(&format!("T{:02}", 1 + p % 20)),
                    ts_sql(at),
                    "NULL".into(),
                    ts_sql(at),
                ]);
                encounter_id += 2;
            }
            None => {
                encounters.push(&[
                    encounter_id.to_string(),
                    id.to_string(),
                    text(ward),
                    text(&bed),
                    ts_sql(admitted_ms),
                    "NULL".into(),
                    ts_sql(admitted_ms),
                ]);
                encounter_id += 1;
            }
        }
        states.push(PatientState {
            id,
            latest: [None; 5],
            next_observation_ms: start + (dice.uniform() * 50.0 * 60_000.0) as i64,
            last_alert: BTreeMap::new(),
            hypercapnic: hypercapnic.contains(&id),
        });
    }
    for k in 0..3 {
        let id = 9001 + k;
        patients.push(&[
            id.to_string(),
            text(&format!("MRN{id:07}")),
            text(dice.pick(FAMILY)),
            text(dice.pick(GIVEN)),
            "DATE '1948-03-14'".into(),
            text("F"),
            ts_sql(start - 3 * 86_400_000),
        ]);
        encounters.push(&[
            encounter_id.to_string(),
            id.to_string(),
            text(WARDS[k as usize % WARDS.len()]),
            text("B40"),
            ts_sql(start - 4 * 86_400_000),
            ts_sql(start - 2 * 86_400_000),
            ts_sql(start - 2 * 86_400_000),
        ]);
        encounter_id += 1;
    }

    (patients, encounters, states)
}

/// The SpO2 targets a respiratory physician prescribed: 88-92 % for each patient with chronic
/// hypercapnia, from shortly after admission (two hours before monitoring starts), which
/// puts them on NEWS2's SpO2 scale 2.
fn spo2_targets(hypercapnic: &[i32], start: i64) -> Rows {
    let mut targets = Rows::new("ehr.spo2_targets");
    let flagged = start - 2 * 3_600_000 + 20 * 60_000;
    for (i, id) in hypercapnic.iter().enumerate() {
        targets.push(&[
            (i + 1).to_string(),
            id.to_string(),
            num(Some(88.0)),
            num(Some(92.0)),
            text("COPD with chronic hypercapnic respiratory failure"),
            text("Dr A. Okafor (respiratory)"),
            ts_sql(flagged),
            "NULL".into(),
            ts_sql(flagged),
        ]);
    }
    targets
}

/// The device register and who each device is attached to (the first three were on a
/// discharged patient before).
fn device_rows(devices: &[(Arc<str>, &'static str, i32)], rate: f64, start: i64) -> (Rows, Rows) {
    // The device register and who each device is attached to.
    let mut register = Rows::new("ehr.devices");
    let mut assignments = Rows::new("ehr.device_assignments");
    for (i, (id, kind, patient)) in devices.iter().enumerate() {
        let (manufacturer, model) = match *kind {
            "monitor" => ("Philips", "IntelliVue MX450"),
            "oximeter" => ("Masimo", "Radical-7"),
            "thermo" => ("Welch Allyn", "SureTemp Plus 692"),
            "bpcuff" => ("Omron", "HBP-1320"),
            _ => ("Roche", "Accu-Chek Inform II"),
        };
        register.push(&[
            text(id),
            text(kind),
            text(manufacturer),
            text(model),
            text(&format!("SN{:08}", 40_000 + i * 37)),
            num(Some(rate)),
            ts_sql(start - 30 * 86_400_000),
        ]);
        let assignment = (i + 1) as i64;
        if i < 3 {
            // Before the current patient, this device was on a patient discharged since.
            assignments.push(&[
                (100_000 + assignment).to_string(),
                text(id),
                (9001 + i as i32).to_string(),
                ts_sql(start - 4 * 86_400_000),
                ts_sql(start - 2 * 86_400_000 - 3_600_000),
                ts_sql(start - 2 * 86_400_000 - 3_600_000),
            ]);
        }
        assignments.push(&[
            assignment.to_string(),
            text(id),
            patient.to_string(),
            // Attached when monitoring starts (the patient was admitted two hours earlier).
            ts_sql(start),
            "NULL".into(),
            ts_sql(start),
        ]);
    }
    (register, assignments)
}

pub async fn generate(
    engine: &Engine,
    plan: &Plan,
    warehouse: &Path,
    landing: &Path,
    progress: &Progress,
) -> Result<Hospital, Failure> {
    let mut dice = Dice(Rng::new(plan.seed ^ 0x5EED_0F40_517A));
    let mut simulation = Simulation::new(plan);
    let devices = simulation.device_list();
    let deteriorating = simulation.deteriorating();
    let start = plan.start_ms;
    let end = start + (plan.duration_s * 1000.0) as i64;
    let mut hospital = Hospital {
        patients: simulation.patients(),
        devices: devices.len(),
        ..Hospital::default()
    };

    let (patients, encounters, mut states) = ehr_people(&mut dice, &simulation, start, end);
    let (register, assignments) = device_rows(&devices, plan.rate, start);
    let targets = spo2_targets(&simulation.hypercapnic(), start);
    insert_ehr(
        engine,
        progress,
        [&patients, &encounters, &register, &assignments, &targets],
    )
    .await?;

    let outages = outages(&mut dice, &devices, start, end);

    // The readings, routed by channel as a hospital's devices would be: bedside monitors,
    // oximeters and thermometers push through their gateways; blood-pressure cuffs sync to
    // the vendor's cloud (half of them in kPa); glucometers are docked and uploaded hourly as
    // CSV in mmol/L; the spot-check thermometers of odd number export hourly Parquet files.
    let mut pushed = ReadingColumns::new(engine, "bronze.readings_push").await?;
    let mut parquet = ParquetUploads::new(engine, warehouse, landing).await?;
    let mut cloud = ReadingColumns::new(engine, "telemetry.device_cloud").await?;
    let mut csv: BTreeMap<String, String> = BTreeMap::new();
    let mut observations = Rows::new("ehr.observations");
    let mut alerts = Rows::new("events.alerts");
    let mut alert_id = 0u64;
    let mut reported = 0u64;
    let total_expected = (plan.devices as f64 * plan.rate * plan.duration_s).max(1.0) as u64;
    let mut next_report = total_expected / 4;
    let mut observation_id = 1i64;
    for batch in simulation.by_ref() {
        let clock = start + batch.due_ms as i64;
        for r in &batch.readings {
            if outages
                .get(&r.device_id)
                .is_some_and(|(from, to)| (*from..*to).contains(&r.taken_at_ms))
            {
                continue;
            }
            let p = (r.patient_id - 1001) as usize;
            note_vitals(
                &mut states[p],
                r,
                &mut alerts,
                &mut dice,
                &mut alert_id,
                end,
            );
            if r.device_id.starts_with("bpcuff") {
                let (value, unit, received) = cuff_sync(r, &mut dice);
                cloud.push(r, value, unit, Some(received));
            } else if r.device_id.starts_with("glucometer") {
                glucometer_line(&mut csv, r);
                hospital.csv_rows += 1;
            } else if r.device_id.starts_with("thermo")
                && r.device_id.ends_with(['1', '3', '5', '7', '9'])
            {
                parquet.push(engine, r, hour_key(clock)).await?;
            } else {
                pushed.push(r, r.value, r.unit, None);
            }
        }
        // Nurses chart the NEWS2 set every four hours.
        let span = (start, end);
        for state in states.iter_mut() {
            let worsening = deteriorating.contains(&state.id);
            chart(
                state,
                worsening,
                &mut dice,
                clock,
                span,
                &mut observations,
                &mut observation_id,
            );
        }
        pushed.flush(engine, false).await?;
        cloud.flush(engine, false).await?;
        let done =
            pushed.total + pushed.rows as u64 + cloud.total + cloud.rows as u64 + hospital.csv_rows;
        if done >= next_report && reported < 3 {
            (reported, next_report) = (reported + 1, next_report + total_expected / 4);
            progress.say(format!(
                "  readings: {done} of about {total_expected} loaded"
            ));
        }
    }
    finish_channels(engine, &mut pushed, &mut cloud, &mut parquet, &mut hospital).await?;

    hospital.csv_files = write_csv_uploads(&mut csv, &devices, end, landing)?;
    hospital.observations = observations.rows.len();
    observations.insert(engine).await?;
    standards_feeds(engine).await?;
    hospital.alerts = alert_id as usize;
    alerts.insert(engine).await?;

    hospital.device_events =
        device_events(engine, &mut dice, &devices, &outages, start, end).await?;
    hospital.enrollments = trials(engine, &mut dice, simulation.patients(), start, end).await?;
    (hospital.dicom_files, hospital.documents) =
        files(landing, &mut dice, simulation.patients(), start)?;
    Ok(hospital)
}

/// The same EHR as a FHIR server would export it (the stand-in fhir.* tables), and its stays
/// as an ADT interface would have sent them (bronze.hl7_adt).
async fn standards_feeds(engine: &Engine) -> Result<(), Failure> {
    engine
        .sql(include_str!("../../../catalog/quickstart/fhir_export.sql"))
        .await?;
    engine
        .sql(include_str!("../../../catalog/quickstart/adt_feed.sql"))
        .await?;
    Ok(())
}

/// An alert a device raises for a reading: (type, severity, message).
fn alarm(
    metric: &str,
    v: f64,
    spo2_below: f64,
) -> Option<(&'static str, &'static str, &'static str)> {
    if !plausible(metric, v) {
        return Some(("technical", "low", "implausible value, check the sensor"));
    }
    match metric {
        "heart_rate" if v > 130.0 => Some(("tachycardia", "high", "heart rate high")),
        "heart_rate" if v < 45.0 => Some(("bradycardia", "high", "heart rate low")),
        "spo2" if v < spo2_below => Some(("desaturation", "high", "SpO2 low")),
        "systolic_bp" if v < 90.0 => Some(("hypotension", "medium", "systolic BP low")),
        "temperature" if v >= 39.0 => Some(("fever", "medium", "temperature high")),
        "respiration_rate" if v >= 25.0 => Some(("tachypnoea", "medium", "respiration rate high")),
        _ => None,
    }
}

/// An alert document as Cosmos holds it: written when raised, written again when
/// acknowledged (a second version with a later `_ts`); now and then delivered twice.
#[allow(clippy::too_many_arguments)]
fn push_alert(
    alerts: &mut Rows,
    dice: &mut Dice,
    id: u64,
    r: &Reading,
    kind: &str,
    severity: &str,
    message: &str,
    end: i64,
) {
    let raised = r.taken_at_ms + (dice.range(1.0, 5.0) * 1000.0) as i64;
    let wait_s = match severity {
        "high" => dice.range(15.0, 300.0),
        "medium" => dice.range(60.0, 900.0),
        _ => dice.range(120.0, 3600.0),
    };
    let acknowledged = raised + (wait_s * 1000.0) as i64;
    let doc = |ack: Option<i64>, ts: i64| -> Vec<String> {
        vec![
            text(&format!("alert-{id:06}")),
            text(&r.device_id),
            r.patient_id.to_string(),
            text(kind),
            text(severity),
            text(message),
            ts_sql(raised),
            ts_opt(ack),
            ack.map_or("NULL".into(), |_| text(dice_nurse(id))),
            (ts / 1000).to_string(),
        ]
    };
    alerts.push(&doc(None, raised));
    if acknowledged < end && !dice.chance(0.04) {
        alerts.push(&doc(Some(acknowledged), acknowledged));
        if dice.chance(0.05) {
            alerts.push(&doc(Some(acknowledged), acknowledged));
        }
    }
}

fn dice_nurse(id: u64) -> &'static str {
    NURSES[(id % NURSES.len() as u64) as usize]
}

async fn device_events(
    engine: &Engine,
    dice: &mut Dice,
    devices: &[(Arc<str>, &'static str, i32)],
    outages: &BTreeMap<Arc<str>, (i64, i64)>,
    start: i64,
    end: i64,
) -> Result<usize, Failure> {
    let mut events = Rows::new("events.device_events");
    let mut n = 0u64;
    let mut event = |events: &mut Rows,
                     device: &str,
                     kind: &str,
                     battery: Option<f64>,
                     detail: Option<&str>,
                     at: i64| {
        n += 1;
        events.push(&[
            text(&format!("evt-{n:07}")),
            text(device),
            text(kind),
            num(battery.map(|b| b.round())),
            detail.map_or("NULL".into(), text),
            ts_sql(at),
            (at / 1000).to_string(),
        ]);
    };
    for (id, _, _) in devices {
        let mut battery = dice.range(55.0, 100.0);
        let outage = outages.get(id).copied();
        let mut t = start;
        event(&mut events, id, "connected", Some(battery), None, start);
        while t < end {
            t += 3_600_000;
            if let Some((from, to)) = outage
                && (t - 3_600_000..t).contains(&from)
            {
                event(
                    &mut events,
                    id,
                    "battery",
                    Some(4.0),
                    Some("battery critical"),
                    from - 300_000,
                );
                event(
                    &mut events,
                    id,
                    "disconnected",
                    Some(2.0),
                    Some("no power"),
                    from,
                );
                event(
                    &mut events,
                    id,
                    "connected",
                    Some(100.0),
                    Some("charged"),
                    to,
                );
                battery = 100.0;
            }
            if t >= end {
                break;
            }
            battery -= dice.range(2.0, 6.0);
            if battery < 20.0 {
                event(&mut events, id, "charging", Some(battery), None, t);
                battery = 100.0;
            }
            event(&mut events, id, "battery", Some(battery), None, t);
            if dice.chance(0.01) {
                event(
                    &mut events,
                    id,
                    "error",
                    Some(battery),
                    Some("sensor fault, self-test passed"),
                    t + 60_000,
                );
            }
        }
    }
    let count = events.rows.len();
    events.insert(engine).await?;
    Ok(count)
}

async fn trials(
    engine: &Engine,
    dice: &mut Dice,
    patients: usize,
    start: i64,
    end: i64,
) -> Result<usize, Failure> {
    let mut trials = Rows::new("trials.trials");
    let list = [
        (
            "NCT-HF-REMOTE",
            "Remote monitoring after heart-failure admission",
            "III",
            "British Heart Foundation",
        ),
        (
            "NCT-SEPSIS-EWS",
            "Automated early warning for sepsis on general wards",
            "II",
            "NIHR",
        ),
        (
            "NCT-GLUCOSE-CTL",
            "Tight glucose control in non-ICU inpatients",
            "IV",
            "Diabetes UK",
        ),
    ];
    for (id, title, phase, sponsor) in list {
        trials.push(&[
            text(id),
            text(title),
            text(phase),
            text(sponsor),
            text("recruiting"),
            "DATE '2025-01-15'".into(),
            ts_sql(start - 60 * 86_400_000),
        ]);
    }
    let mut enrollments = Rows::new("trials.enrollments");
    let mut logs = Rows::new("trials.research_logs");
    let mut enrollment = 0i64;
    let mut log = 0i64;
    for p in 0..patients {
        // One patient in five (deterministic, so that every scale has a cohort).
        if p % 5 != 1 {
            continue;
        }
        enrollment += 1;
        let trial = list[p % list.len()].0;
        let consented = start - (dice.range(0.5, 10.0) * 86_400_000.0) as i64;
        let withdrawn = dice
            .chance(0.05)
            .then(|| start + (dice.range(0.3, 0.9) * (end - start) as f64) as i64);
        enrollments.push(&[
            enrollment.to_string(),
            text(trial),
            (1001 + p).to_string(),
            text(if dice.chance(0.5) {
                "intervention"
            } else {
                "control"
            }),
            ts_sql(consented),
            ts_opt(withdrawn),
            ts_sql(withdrawn.unwrap_or(consented)),
        ]);
        for (category, entry) in [
            ("visit", "study visit completed, vitals reviewed"),
            ("consent", "consent form scanned to documents"),
        ] {
            log += 1;
            let at = consented + (dice.range(0.0, 1.0) * 86_400_000.0) as i64;
            logs.push(&[
                log.to_string(),
                text(trial),
                (1001 + p).to_string(),
                ts_sql(at),
                text(category),
                text(entry),
                ts_sql(at),
            ]);
        }
    }
    trials.insert(engine).await?;
    enrollments.insert(engine).await?;
    logs.insert(engine).await?;
    Ok(enrollment as usize)
}

/// DICOM studies (one in ten patients: a chest X-ray, sometimes a CT) and scanned consent
/// forms, in the landing folder.
fn files(
    landing: &Path,
    dice: &mut Dice,
    patients: usize,
    start: i64,
) -> Result<(usize, usize), Failure> {
    let mut dicom = 0;
    let mut documents = 0;
    let day = Utc
        .timestamp_millis_opt(start)
        .single()
        .unwrap_or_else(Utc::now);
    for p in 0..patients {
        let id = 1001 + p;
        if p % 10 == 3 {
            let ct = dice.chance(0.3);
            let study = format!("1.2.826.0.1.3680043.10.543.{id}.1");
            let instances = if ct { 3 } else { 1 };
            for i in 1..=instances {
                let sop = format!("{study}.1.{i}");
                let header = DicomHeader {
                    sop_class_uid: if ct {
                        "1.2.840.10008.5.1.4.1.1.2"
                    } else {
                        "1.2.840.10008.5.1.4.1.1.1.1"
                    },
                    sop_instance_uid: &sop,
                    study_date: &day.format("%Y%m%d").to_string(),
                    study_time: &format!("{:02}{:02}00", day.hour(), day.minute()),
                    accession_number: &format!("ACC{id:06}"),
                    modality: if ct { "CT" } else { "DX" },
                    manufacturer: "GE Healthcare",
                    institution_name: "Medlake General Hospital",
                    study_description: if ct {
                        "CT CHEST W/O CONTRAST"
                    } else {
                        "XR CHEST PA"
                    },
                    series_description: if ct { "AXIAL 5MM" } else { "PA" },
                    patient_name: &format!("PATIENT^{id}"),
                    patient_id: &format!("MRN{id:07}"),
                    body_part_examined: "CHEST",
                    study_instance_uid: &study,
                    series_instance_uid: &format!("{study}.1"),
                    rows: 8,
                    columns: 8,
                };
                let folder = landing.join("pacs-export").join(&study);
                std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
                let path = folder.join(format!("{i}.dcm"));
                std::fs::write(&path, dicom_file(&header))
                    .map_err(|e| io_error("write", &path, e))?;
                dicom += 1;
            }
        }
        if p % 5 == 0 {
            let path = landing
                .join("documents")
                .join(format!("MRN{id:07}_admission_form.pdf"));
            let body = format!(
                "%PDF-1.4\n% scanned admission form of MRN{id:07}\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
            );
            std::fs::write(&path, body).map_err(|e| io_error("write", &path, e))?;
            documents += 1;
        }
    }
    Ok((dicom, documents))
}

/// The attributes of a demo DICOM instance.
pub struct DicomHeader<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub study_date: &'a str,
    pub study_time: &'a str,
    pub accession_number: &'a str,
    pub modality: &'a str,
    pub manufacturer: &'a str,
    pub institution_name: &'a str,
    pub study_description: &'a str,
    pub series_description: &'a str,
    pub patient_name: &'a str,
    pub patient_id: &'a str,
    pub body_part_examined: &'a str,
    pub study_instance_uid: &'a str,
    pub series_instance_uid: &'a str,
    pub rows: u16,
    pub columns: u16,
}

/// One explicit-VR little-endian data element (short VRs have a 2-byte length; OB/OW/SQ/UN/UT
/// a reserved 2 bytes and a 4-byte length). Text values are padded to even length.
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
}

/// A minimal valid DICOM Part-10 file: preamble, `DICM`, the file meta group (explicit VR
/// little endian) and a dataset with the header attributes and a small 16-bit image.
pub fn dicom_file(h: &DicomHeader<'_>) -> Vec<u8> {
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    element(&mut meta, 0x0002, 0x0002, b"UI", h.sop_class_uid.as_bytes());
    element(
        &mut meta,
        0x0002,
        0x0003,
        b"UI",
        h.sop_instance_uid.as_bytes(),
    );
    element(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_LE.as_bytes());
    element(
        &mut meta,
        0x0002,
        0x0012,
        b"UI",
        b"1.2.826.0.1.3680043.10.543",
    );
    element(&mut meta, 0x0002, 0x0013, b"SH", b"MEDLAKE_QS");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(
        &mut out,
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    );
    out.extend_from_slice(&meta);
    let d = &mut out;
    element(d, 0x0008, 0x0016, b"UI", h.sop_class_uid.as_bytes());
    element(d, 0x0008, 0x0018, b"UI", h.sop_instance_uid.as_bytes());
    element(d, 0x0008, 0x0020, b"DA", h.study_date.as_bytes());
    element(d, 0x0008, 0x0030, b"TM", h.study_time.as_bytes());
    element(d, 0x0008, 0x0050, b"SH", h.accession_number.as_bytes());
    element(d, 0x0008, 0x0060, b"CS", h.modality.as_bytes());
    element(d, 0x0008, 0x0070, b"LO", h.manufacturer.as_bytes());
    element(d, 0x0008, 0x0080, b"LO", h.institution_name.as_bytes());
    element(d, 0x0008, 0x1030, b"LO", h.study_description.as_bytes());
    element(d, 0x0008, 0x103E, b"LO", h.series_description.as_bytes());
    element(d, 0x0010, 0x0010, b"PN", h.patient_name.as_bytes());
    element(d, 0x0010, 0x0020, b"LO", h.patient_id.as_bytes());
    element(d, 0x0018, 0x0015, b"CS", h.body_part_examined.as_bytes());
    element(d, 0x0020, 0x000D, b"UI", h.study_instance_uid.as_bytes());
    element(d, 0x0020, 0x000E, b"UI", h.series_instance_uid.as_bytes());
    element(d, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    element(d, 0x0028, 0x0004, b"CS", b"MONOCHROME2");
    element(d, 0x0028, 0x0010, b"US", &h.rows.to_le_bytes());
    element(d, 0x0028, 0x0011, b"US", &h.columns.to_le_bytes());
    element(d, 0x0028, 0x0100, b"US", &16u16.to_le_bytes());
    element(d, 0x0028, 0x0101, b"US", &12u16.to_le_bytes());
    element(d, 0x0028, 0x0102, b"US", &11u16.to_le_bytes());
    element(d, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
    let pixels: Vec<u8> = (0..u32::from(h.rows) * u32::from(h.columns))
        .flat_map(|i| ((i * 64) as u16 & 0x0FFF).to_le_bytes())
        .collect();
    element(d, 0x7FE0, 0x0010, b"OW", &pixels);
    out
}
