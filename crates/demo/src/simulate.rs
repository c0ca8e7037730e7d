//! `medlake simulate`: a ward of bedside devices (monitors, pulse oximeters, thermometers, blood
//! pressure cuffs, glucometers) posting vital signs to the HTTP ingest API of `medlake serve
//! --http` (`POST /v1/ingest/{schema}.{table}`, NDJSON), for demos, soak tests and the ingest
//! benchmark.
//!
//! Two halves. [`Simulation`] is the generator: patients with their own baselines and slow
//! trends (circadian drift, one or two deteriorating), devices attached to them, gateways that
//! batch their devices' readings, and the flaws real feeds have: sensor glitches, readings
//! without a value, exact duplicates, late readings, dropouts followed by a burst. Given a seed
//! and a start time it is a pure function: the same readings in the same batches, at the same
//! offsets from the start. The poster sends those batches when they are due, with bounded
//! requests in flight, one `Idempotency-Key` per batch reused on every retry (429/503 with
//! `Retry-After`, other 5xx, connection errors), and stops on any other 4xx.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use medlake_common::error_chain;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use crate::Failure;

mod hl7;

/// How often a gateway posts what its devices measured (simulated time).
const FLUSH_US: u64 = 1_000_000;
/// Devices per gateway (a bedside hub of one bay).
const DEVICES_PER_GATEWAY: usize = 16;
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest backoff between two attempts without `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long one request may take before it counts as a connection error (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// How often each flaw appears, per reading.
const P_GLITCH: f64 = 0.003;
const P_MISSING: f64 = 0.001;
const P_LATE: f64 = 0.005;
const P_DUPLICATE: f64 = 0.01;
/// Share of devices that drop out once during a run (at least one device does).
const P_DROPOUT: f64 = 0.15;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The server's HTTP address (`medlake serve --http`), e.g. http://127.0.0.1:8080; the
    /// readings go to URL/v1/ingest/TABLE (a URL that already holds /v1/ingest/ is used as is).
    #[arg(long, value_name = "URL", required_unless_present = "output")]
    target: Option<String>,
    /// The table the readings go to; its columns are those of the demo's bronze.readings:
    /// device_id, patient_id, metric, value, unit, taken_at.
    #[arg(long, value_name = "SCHEMA.TABLE", default_value = "bronze.readings")]
    table: String,
    /// How many devices (two per patient, sixteen per gateway).
    #[arg(long, value_name = "N", default_value_t = 10)]
    devices: u32,
    /// Readings per device per second.
    #[arg(long, value_name = "HZ", default_value_t = 1.0)]
    rate: f64,
    /// How long the devices measure, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    duration: f64,
    /// The most rows in one POST.
    #[arg(long, value_name = "ROWS", default_value_t = 500)]
    batch: usize,
    /// The most requests in flight at once, over all gateways.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: usize,
    /// Send `Authorization: Bearer <token>` with the token read from this environment variable.
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Seed of the generated data (printed when not given): the same seed and --start give the
    /// same readings in the same batches.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The simulated clock's start (RFC 3339, e.g. 2026-11-23T08:00:00Z); default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_start)]
    start: Option<DateTime<Utc>>,
    /// Compress each batch (Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Retries of one batch before giving up on it.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_retries: u32,
    /// Write the readings as NDJSON to FILE ('-' for stdout) instead of posting them, as fast
    /// as they are generated.
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    output: Option<PathBuf>,
    /// Send the readings of every fourth gateway as HL7 v2 ORU^R01 messages over MLLP to ADDR
    /// (`medlake serve --mllp`) instead of posting them (readings without a value still go
    /// over HTTP: a monitor does not send an OBX without a value).
    #[arg(long, value_name = "ADDR")]
    mllp: Option<std::net::SocketAddr>,
    /// Set by `medlake quickstart`: no progress lines and no summary (errors still print).
    #[arg(skip)]
    quiet: bool,
}

fn parse_start(text: &str) -> Result<DateTime<Utc>, String> {
    let start = DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-11-23T08:00:00Z"))?
        .with_timezone(&Utc);
    if !(1971..2200).contains(&start.year()) {
        return Err("choose a start between 1971 and 2199".into());
    }
    Ok(start)
}

/// What the generator is asked for.
#[derive(Clone, Debug)]
pub struct Plan {
    pub devices: u32,
    pub rate: f64,
    pub duration_s: f64,
    pub batch: usize,
    pub seed: u64,
    pub start_ms: i64,
}

impl SimulateArgs {
    /// What `medlake quickstart` posts: `devices` devices at 1 Hz from `start` for `duration`
    /// seconds to `target`'s bronze.readings_push, quietly.
    pub fn quickstart(
        target: String,
        devices: u32,
        duration: f64,
        seed: u64,
        start: DateTime<Utc>,
    ) -> Self {
        SimulateArgs {
            target: Some(target),
            table: "bronze.readings_push".into(),
            devices,
            rate: 1.0,
            duration,
            batch: 500,
            concurrency: 4,
            token_env: None,
            seed: Some(seed),
            start: Some(start),
            gzip: false,
            max_retries: 10,
            output: None,
            mllp: None,
            quiet: true,
        }
    }

    /// [`Self::quickstart`] with every fourth gateway speaking HL7 v2 to the MLLP door.
    pub fn with_mllp(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.mllp = addr;
        self
    }

    fn plan(&self) -> Result<Plan, String> {
        if self.devices == 0 || self.devices > 1_000_000 {
            return Err("--devices must be between 1 and 1000000".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000.0) {
            return Err("--rate must be above 0 and at most 10000 readings per second".into());
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 31_536_000.0) {
            return Err("--duration must be above 0 and at most a year of seconds".into());
        }
        if self.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        let valid_part =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match self.table.split_once('.') {
            Some((schema, table)) if valid_part(schema) && valid_part(table) => {}
            _ => return Err(format!("--table '{}' is not SCHEMA.TABLE", self.table)),
        }
        let seed = self.seed.unwrap_or_else(|| {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
            Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000
        });
        let start = self.start.unwrap_or_else(Utc::now);
        Ok(Plan {
            devices: self.devices,
            rate: self.rate,
            duration_s: self.duration,
            batch: self.batch,
            seed,
            start_ms: start.timestamp_millis(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The generator

/// SplitMix64: small, fast, and the same on every platform (the data must not depend on a
/// crate's choice of algorithm).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn derive(seed: u64, stream: u64) -> Self {
        let mut mix = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Normal (Box-Muller).
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    HeartRate,
    Spo2,
    RespirationRate,
    Temperature,
    SystolicBp,
    DiastolicBp,
    Glucose,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::HeartRate => "heart_rate",
            Metric::Spo2 => "spo2",
            Metric::RespirationRate => "respiration_rate",
            Metric::Temperature => "temperature",
            Metric::SystolicBp => "systolic_bp",
            Metric::DiastolicBp => "diastolic_bp",
            Metric::Glucose => "glucose",
        }
    }

    fn unit(self, fahrenheit: bool) -> &'static str {
        match self {
            Metric::HeartRate => "bpm",
            Metric::Spo2 => "%",
            Metric::RespirationRate => "/min",
            Metric::Temperature if fahrenheit => "degF",
            Metric::Temperature => "degC",
            Metric::SystolicBp | Metric::DiastolicBp => "mmHg",
            Metric::Glucose => "mg/dL",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Values a clinician would believe (in the metric's SI unit; °C for temperature). Glitches
    /// are outside; a deteriorating patient stays inside.
    #[cfg(test)]
    pub fn plausible(self) -> std::ops::RangeInclusive<f64> {
        match self {
            Metric::HeartRate => 20.0..=250.0,
            Metric::Spo2 => 50.0..=100.0,
            Metric::RespirationRate => 4.0..=60.0,
            Metric::Temperature => 30.0..=43.0,
            Metric::SystolicBp => 50.0..=250.0,
            Metric::DiastolicBp => 25.0..=150.0,
            Metric::Glucose => 20.0..=600.0,
        }
    }

    /// Random-walk step of a patient's slow drift, and measurement noise.
    fn drift_and_noise(self) -> (f64, f64) {
        match self {
            Metric::HeartRate => (0.8, 2.0),
            Metric::Spo2 => (0.2, 0.6),
            Metric::RespirationRate => (0.3, 1.0),
            Metric::Temperature => (0.02, 0.08),
            Metric::SystolicBp => (1.2, 4.0),
            Metric::DiastolicBp => (0.8, 3.0),
            Metric::Glucose => (2.0, 5.0),
        }
    }

    /// A sensor glitch: a value no patient has (a loose lead, a cuff off the arm).
    fn glitch(self, rng: &mut Rng) -> f64 {
        let choices: &[f64] = match self {
            Metric::HeartRate => &[310.0, 0.0, 288.0, 255.0 + rng.range(1.0, 60.0).round()],
            Metric::Spo2 => &[0.0, 127.0, 12.0],
            Metric::RespirationRate => &[0.0, 99.0, 88.0],
            Metric::Temperature => &[0.0, 45.9, 51.2, 24.0],
            Metric::SystolicBp => &[0.0, 300.0, 288.0],
            Metric::DiastolicBp => &[0.0, 255.0, 190.0],
            Metric::Glucose => &[0.0, 999.0, 5.0],
        };
        choices[rng.below(choices.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Monitor,
    Oximeter,
    Thermometer,
    BpCuff,
    Glucometer,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Monitor,
        Kind::Oximeter,
        Kind::Thermometer,
        Kind::BpCuff,
        Kind::Glucometer,
    ];

    fn prefix(self) -> &'static str {
        match self {
            Kind::Monitor => "monitor",
            Kind::Oximeter => "oximeter",
            Kind::Thermometer => "thermo",
            Kind::BpCuff => "bpcuff",
            Kind::Glucometer => "glucometer",
        }
    }

    /// What the device measures, in turn (a cuff gives systolic and diastolic together).
    fn metrics(self) -> &'static [Metric] {
        match self {
            Kind::Monitor => &[Metric::HeartRate, Metric::Spo2, Metric::RespirationRate],
            Kind::Oximeter => &[Metric::Spo2, Metric::HeartRate],
            Kind::Thermometer => &[Metric::Temperature],
            Kind::BpCuff => &[Metric::SystolicBp, Metric::DiastolicBp],
            Kind::Glucometer => &[Metric::Glucose],
        }
    }

    fn pick(rng: &mut Rng) -> Kind {
        let p = rng.uniform();
        if p < 0.30 {
            Kind::Monitor
        } else if p < 0.50 {
            Kind::Oximeter
        } else if p < 0.70 {
            Kind::Thermometer
        } else if p < 0.90 {
            Kind::BpCuff
        } else {
            Kind::Glucometer
        }
    }
}

/// One row of the target table.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub device_id: Arc<str>,
    pub patient_id: i32,
    pub metric: Metric,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub taken_at_ms: i64,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    device_id: &'a str,
    patient_id: i32,
    metric: &'a str,
    value: Option<f64>,
    unit: &'a str,
    taken_at: String,
}

impl Reading {
    /// One NDJSON line (with its newline).
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        let row = Row {
            device_id: &self.device_id,
            patient_id: self.patient_id,
            metric: self.metric.name(),
            value: self.value,
            unit: self.unit,
            taken_at: rfc3339_millis(self.taken_at_ms),
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *out, &row).is_ok() {
            out.push(b'\n');
        }
    }
}

fn rfc3339_millis(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        // Start times are checked (1971..2200), so this is out of reach.
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Rows one gateway posts in one request.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Position in the run (unique).
    pub seq: u64,
    pub gateway: usize,
    /// When it is to be posted, counted from the start of the run.
    pub due_ms: u64,
    pub readings: Vec<Reading>,
}

impl Batch {
    pub fn ndjson(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.readings.len() * 140);
        for r in &self.readings {
            r.write_ndjson(&mut out);
        }
        out
    }
}

/// What the generator made, flaws counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Readings measured (each once; duplicates not counted).
    pub readings: u64,
    /// Rows that repeat an earlier row exactly (a device resending).
    pub duplicates: u64,
    pub out_of_range: u64,
    pub missing: u64,
    /// Readings whose taken_at lies 1 to 10 minutes before they were sent.
    pub late: u64,
    /// Devices that went silent once, and the readings they sent in a burst afterwards.
    pub dropouts: u64,
    pub held: u64,
    pub batches: u64,
}

impl Counts {
    pub fn rows(&self) -> u64 {
        self.readings + self.duplicates
    }
}

struct Patient {
    id: i32,
    baseline: [f64; 7],
    drift: [f64; 7],
    /// Onset and ramp of a deterioration (sepsis-like), in seconds from the start.
    deterioration: Option<(f64, f64)>,
    /// Chronic hypercapnic respiratory failure (COPD): saturations of 88-92 % are this
    /// patient's normal, the target a clinician prescribes (NEWS2 SpO2 scale 2).
    hypercapnic: bool,
    circadian_shift_h: f64,
}

impl Patient {
    fn new(id: i32, rng: &mut Rng) -> Self {
        let mut baseline = [0.0; 7];
        baseline[Metric::HeartRate.index()] = rng.normal(76.0, 9.0).clamp(52.0, 110.0);
        baseline[Metric::Spo2.index()] = rng.normal(97.3, 1.0).clamp(93.0, 99.5);
        baseline[Metric::RespirationRate.index()] = rng.normal(15.0, 2.0).clamp(10.0, 22.0);
        baseline[Metric::Temperature.index()] = rng.normal(36.8, 0.25).clamp(36.1, 37.5);
        let systolic = rng.normal(124.0, 14.0).clamp(95.0, 170.0);
        baseline[Metric::SystolicBp.index()] = systolic;
        baseline[Metric::DiastolicBp.index()] =
            (0.55 * systolic + rng.normal(12.0, 5.0)).clamp(55.0, 100.0);
        baseline[Metric::Glucose.index()] = if rng.chance(0.25) {
            rng.normal(165.0, 30.0).clamp(110.0, 260.0)
        } else {
            rng.normal(100.0, 12.0).clamp(75.0, 130.0)
        };
        Patient {
            id,
            baseline,
            drift: [0.0; 7],
            deterioration: None,
            hypercapnic: false,
            circadian_shift_h: rng.normal(0.0, 1.0),
        }
    }

    /// How far the deterioration has gone at `t` seconds: 0 (not begun) to 1.
    fn severity(&self, t: f64) -> f64 {
        match self.deterioration {
            Some((onset, ramp)) => ((t - onset) / ramp).clamp(0.0, 1.0),
            None => 0.0,
        }
    }

    /// The true value (in °C for temperature) at `t` seconds into the run, `hour` (UTC hour of
    /// day, fractional) on the wall clock. Advances the patient's slow drift.
    fn measure(&mut self, metric: Metric, t: f64, hour: f64, rng: &mut Rng) -> f64 {
        let i = metric.index();
        let (step, noise) = metric.drift_and_noise();
        self.drift[i] = 0.98 * self.drift[i] + rng.normal(0.0, step);
        // Circadian: highest in the late afternoon, lowest before dawn.
        let c = (std::f64::consts::TAU * (hour - 16.0 - self.circadian_shift_h) / 24.0).cos();
        let s = self.severity(t);
        let v = self.baseline[i] + self.drift[i] + rng.normal(0.0, noise);
        match metric {
            Metric::HeartRate => (v + 5.0 * c + 38.0 * s).round().clamp(30.0, 220.0),
            Metric::Spo2 => (v + 0.3 * c - 9.0 * s).round().clamp(70.0, 100.0),
            Metric::RespirationRate => (v + 1.0 * c + 12.0 * s).round().clamp(6.0, 45.0),
            Metric::Temperature => {
                ((v + 0.3 * c + 1.9 * s) * 10.0).round().clamp(340.0, 420.0) / 10.0
            }
            Metric::SystolicBp => (v + 6.0 * c - 32.0 * s).round().clamp(60.0, 220.0),
            Metric::DiastolicBp => (v + 4.0 * c - 18.0 * s).round().clamp(35.0, 130.0),
            Metric::Glucose => {
                // Meals: a rise every few hours.
                let meals = 18.0 * (std::f64::consts::TAU * hour / 5.0).sin().max(0.0);
                (v + meals + 20.0 * s).round().clamp(40.0, 450.0)
            }
        }
    }
}

struct Device {
    id: Arc<str>,
    kind: Kind,
    patient: usize,
    fahrenheit: bool,
    gateway: usize,
    phase_us: f64,
    emitted: u64,
    /// Silent from .0 to .1 (µs from the start); what it measures meanwhile waits in `held`.
    dropout: Option<(u64, u64)>,
    held: Vec<Reading>,
    /// The taken_at of the last systolic reading (a cuff's pair share one time).
    pair_ms: i64,
    rng: Rng,
}

#[derive(Default)]
struct Gateway {
    buffer: Vec<Reading>,
    /// Rows a device sends again, with the gateway's next request.
    resend: Vec<Reading>,
}

/// With three patients or more, one who does not deteriorate has chronic hypercapnia: the
/// last one whose devices measure SpO2 (else the last one). Chosen without drawing from the
/// generator: everyone else's readings stay the same.
fn mark_hypercapnic(patients: &mut [Patient], devices: &[Device]) {
    if patients.len() < 3 {
        return;
    }
    let measured = |i: usize| {
        devices
            .iter()
            .any(|d| d.patient == i && d.kind.metrics().contains(&Metric::Spo2))
    };
    let candidates: Vec<usize> = (0..patients.len())
        .filter(|i| patients[*i].deterioration.is_none())
        .collect();
    let chosen = candidates
        .iter()
        .rev()
        .find(|i| measured(**i))
        .or(candidates.last());
    if let Some(&i) = chosen {
        patients[i].hypercapnic = true;
        patients[i].baseline[Metric::Spo2.index()] = 90.0;
    }
}

/// The deterministic generator: an iterator of batches in the order they are due.
pub struct Simulation {
    plan: Plan,
    duration_us: u64,
    period_us: f64,
    patients: Vec<Patient>,
    devices: Vec<Device>,
    gateways: Vec<Gateway>,
    /// Next reading of each device: (due µs, device).
    queue: BinaryHeap<Reverse<(u64, usize)>>,
    next_flush_us: u64,
    ready: VecDeque<Batch>,
    finished: bool,
    counts: Counts,
}

impl Simulation {
    pub fn new(plan: &Plan) -> Self {
        let mut rng = Rng::derive(plan.seed, 0);
        let devices_n = plan.devices as usize;
        let patients_n = devices_n.div_ceil(2).max(1);
        let mut patients: Vec<Patient> = (0..patients_n)
            .map(|p| Patient::new(1001 + p as i32, &mut rng))
            .collect();
        let deteriorating = (1 + patients_n / 25).min(patients_n);
        let mut chosen = 0;
        while chosen < deteriorating {
            let p = &mut patients[rng.below(patients_n)];
            if p.deterioration.is_none() {
                let onset = rng.range(0.10, 0.35) * plan.duration_s;
                let ramp = rng.range(0.40, 0.60) * plan.duration_s;
                p.deterioration = Some((onset, ramp));
                chosen += 1;
            }
        }
        // One device of each kind first (in a seeded order), then a hospital's mix.
        let mut first = Kind::ALL.to_vec();
        for i in (1..first.len()).rev() {
            first.swap(i, rng.below(i + 1));
        }
        let duration_us = (plan.duration_s * 1e6) as u64;
        let period_us = 1e6 / plan.rate;
        let gateways_n = devices_n.div_ceil(DEVICES_PER_GATEWAY).max(1);
        let mut thermometers = 0;
        let mut devices = Vec::with_capacity(devices_n);
        for i in 0..devices_n {
            let kind = first
                .get(i)
                .copied()
                .unwrap_or_else(|| Kind::pick(&mut rng));
            let fahrenheit = kind == Kind::Thermometer && {
                thermometers += 1;
                // A few thermometers (the second, fifth, ...) report in °F.
                thermometers % 3 == 2
            };
            let dropout = rng
                .chance(P_DROPOUT)
                .then(|| dropout_window(&mut rng, duration_us));
            devices.push(Device {
                id: Arc::from(format!("{}-{:03}", kind.prefix(), i + 1)),
                kind,
                patient: i % patients_n,
                fahrenheit,
                gateway: i % gateways_n,
                phase_us: rng.range(0.0, period_us),
                emitted: 0,
                dropout,
                held: Vec::new(),
                pair_ms: plan.start_ms,
                rng: Rng::derive(plan.seed, 1 + i as u64),
            });
        }
        if devices_n >= 2 && devices.iter().all(|d| d.dropout.is_none()) {
            let d = rng.below(devices_n);
            devices[d].dropout = Some(dropout_window(&mut rng, duration_us));
        }
        mark_hypercapnic(&mut patients, &devices);
        let counts = Counts {
            dropouts: devices.iter().filter(|d| d.dropout.is_some()).count() as u64,
            ..Counts::default()
        };
        let mut queue = BinaryHeap::with_capacity(devices_n);
        for (i, d) in devices.iter().enumerate() {
            let due = d.phase_us as u64;
            if due < duration_us {
                queue.push(Reverse((due, i)));
            }
        }
        Simulation {
            plan: plan.clone(),
            duration_us,
            period_us,
            patients,
            devices,
            gateways: (0..gateways_n).map(|_| Gateway::default()).collect(),
            queue,
            next_flush_us: FLUSH_US,
            ready: VecDeque::new(),
            finished: false,
            counts,
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn patients(&self) -> usize {
        self.patients.len()
    }

    pub fn gateways(&self) -> usize {
        self.gateways.len()
    }

    /// Each device's id, kind (`monitor`, `oximeter`, `thermo`, `bpcuff`, `glucometer`) and
    /// patient, for `medlake quickstart`'s device register.
    pub fn device_list(&self) -> Vec<(Arc<str>, &'static str, i32)> {
        self.devices
            .iter()
            .map(|d| (d.id.clone(), d.kind.prefix(), self.patients[d.patient].id))
            .collect()
    }

    /// Patients who deteriorate during the run.
    pub fn deteriorating(&self) -> Vec<i32> {
        self.patients
            .iter()
            .filter(|p| p.deterioration.is_some())
            .map(|p| p.id)
            .collect()
    }

    /// Patients with chronic hypercapnic respiratory failure (SpO2 88-92 % is their normal).
    pub fn hypercapnic(&self) -> Vec<i32> {
        self.patients
            .iter()
            .filter(|p| p.hypercapnic)
            .map(|p| p.id)
            .collect()
    }

    /// Measures the next reading of device `i`, due at `due_us`.
    fn measure(&mut self, i: usize, due_us: u64) {
        let start_ms = self.plan.start_ms;
        let device = &mut self.devices[i];
        let metrics = device.kind.metrics();
        let metric = metrics[(device.emitted % metrics.len() as u64) as usize];
        let now_ms = start_ms + (due_us / 1000) as i64;
        let mut taken_at_ms = now_ms;
        match metric {
            Metric::SystolicBp => device.pair_ms = now_ms,
            Metric::DiastolicBp => taken_at_ms = device.pair_ms,
            _ => {}
        }
        let t = due_us as f64 / 1e6;
        let hour = (taken_at_ms as f64 / 3_600_000.0).rem_euclid(24.0);
        let rng = &mut device.rng;
        let true_value = self.patients[device.patient].measure(metric, t, hour, rng);
        let mut value = Some(if device.fahrenheit {
            (true_value * 9.0 / 5.0 + 32.0) * 10.0
        } else {
            true_value * 10.0
        })
        .map(|v| v.round() / 10.0);
        if rng.chance(P_GLITCH) {
            value = Some(metric.glitch(rng));
            self.counts.out_of_range += 1;
        } else if rng.chance(P_MISSING) {
            value = None;
            self.counts.missing += 1;
        }
        if rng.chance(P_LATE) {
            // Stored on the device and forwarded minutes later.
            taken_at_ms -= (rng.range(60.0, 600.0) * 1000.0) as i64;
            self.counts.late += 1;
        }
        let duplicate = rng.chance(P_DUPLICATE);
        let reading = Reading {
            device_id: device.id.clone(),
            patient_id: self.patients[device.patient].id,
            metric,
            value,
            unit: metric.unit(device.fahrenheit),
            taken_at_ms,
        };
        self.counts.readings += 1;
        device.emitted += 1;
        let next = (device.phase_us + device.emitted as f64 * self.period_us) as u64;
        if next < self.duration_us {
            self.queue.push(Reverse((next, i)));
        }
        let gateway = device.gateway;
        let silent = device
            .dropout
            .is_some_and(|(from, to)| (from..to).contains(&due_us));
        if duplicate {
            self.counts.duplicates += 1;
            self.gateways[gateway].resend.push(reading.clone());
        }
        match silent {
            true => {
                self.counts.held += 1;
                device.held.push(reading);
            }
            false => {
                self.gateways[gateway].buffer.push(reading);
                if self.gateways[gateway].buffer.len() >= self.plan.batch {
                    self.cut(gateway, due_us);
                }
            }
        }
    }

    /// Turns a gateway's buffer into batches due at `at_us`.
    fn cut(&mut self, gateway: usize, at_us: u64) {
        let buffer = std::mem::take(&mut self.gateways[gateway].buffer);
        let mut rest = buffer.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(self.plan.batch));
            self.ready.push_back(Batch {
                seq: self.counts.batches,
                gateway,
                due_ms: at_us / 1000,
                readings: now.to_vec(),
            });
            self.counts.batches += 1;
            rest = later;
        }
    }

    /// Every gateway posts what it holds, at `at_us`; devices back from a dropout first hand
    /// over what they kept (all of it if `end`).
    fn flush(&mut self, at_us: u64, end: bool) {
        for d in 0..self.devices.len() {
            let back = match self.devices[d].dropout {
                Some((_, to)) => end || to <= at_us,
                None => false,
            };
            if back && !self.devices[d].held.is_empty() {
                let held = std::mem::take(&mut self.devices[d].held);
                let gateway = self.devices[d].gateway;
                self.gateways[gateway].buffer.extend(held);
            }
        }
        for g in 0..self.gateways.len() {
            self.cut(g, at_us);
            let resend = std::mem::take(&mut self.gateways[g].resend);
            self.gateways[g].buffer.extend(resend);
            if end {
                self.cut(g, at_us);
            }
        }
    }
}

fn dropout_window(rng: &mut Rng, duration_us: u64) -> (u64, u64) {
    let d = duration_us as f64;
    let from = rng.range(0.15, 0.6) * d;
    let length = rng.range(30e6, 180e6).min(0.25 * d);
    (from as u64, (from + length) as u64)
}

impl Iterator for Simulation {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Some(batch);
            }
            if self.finished {
                return None;
            }
            match self.queue.peek() {
                Some(Reverse((due, _))) if *due < self.next_flush_us => {
                    let Some(Reverse((due, i))) = self.queue.pop() else {
                        continue;
                    };
                    self.measure(i, due);
                }
                Some(_) => {
                    self.flush(self.next_flush_us, false);
                    self.next_flush_us += FLUSH_US;
                }
                None => {
                    // Every reading is due before the end, so no flush has passed it.
                    self.flush(self.duration_us, true);
                    self.finished = true;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The poster

#[derive(Default)]
struct Stats {
    sent_rows: AtomicU64,
    sent_batches: AtomicU64,
    acked_rows: AtomicU64,
    acked_batches: AtomicU64,
    duplicate_rows: AtomicU64,
    duplicate_batches: AtomicU64,
    retries: AtomicU64,
    failed_batches: AtomicU64,
    in_flight: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Stats {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn latency(&self, took: Duration) {
        if let Ok(mut l) = self.latencies_us.lock() {
            l.push(took.as_micros() as u64);
        }
    }
}

struct Poster {
    client: reqwest::Client,
    url: reqwest::Url,
    table: String,
    token: Option<String>,
    gzip: bool,
    max_retries: u32,
    stats: Stats,
    /// Set on the first refusal (a 4xx other than 429): no new batches, no more retries.
    stop: CancellationToken,
    refusal: Mutex<Option<String>>,
    /// A row count in an acknowledgement that differs from the batch's is reported once.
    warned_count: std::sync::atomic::AtomicBool,
}

/// How one batch ended.
enum Outcome {
    Acknowledged {
        duplicate: bool,
        server_rows: Option<u64>,
    },
    Refused(String),
    GaveUp(String),
    Abandoned,
}

/// Sends `readings` as HL7 v2 over MLLP (see [`hl7`]), counted like a posted batch.
fn spawn_hl7(
    tasks: &mut tokio::task::JoinSet<()>,
    poster: &Arc<Poster>,
    addr: std::net::SocketAddr,
    readings: Vec<Reading>,
    key: &str,
    mut jitter: Rng,
    max_retries: u32,
) {
    if readings.is_empty() {
        return;
    }
    let rows = readings.len() as u64;
    let refs: Vec<&Reading> = readings.iter().collect();
    let messages = hl7::messages(&refs, key);
    Stats::add(&poster.stats.sent_rows, rows);
    Stats::add(&poster.stats.sent_batches, 1);
    let poster = poster.clone();
    tasks.spawn(async move {
        let started = std::time::Instant::now();
        match hl7::send(addr, messages, max_retries, &mut jitter).await {
            hl7::Sent::Acknowledged => {
                poster.stats.latency(started.elapsed());
                Stats::add(&poster.stats.acked_rows, rows);
                Stats::add(&poster.stats.acked_batches, 1);
            }
            hl7::Sent::GaveUp(message) => {
                Stats::add(&poster.stats.failed_batches, 1);
                eprintln!("warning: {message}");
            }
        }
    });
}

/// Where the readings go: URL/v1/ingest/TABLE, or URL itself when it names an ingest path.
pub fn ingest_url(target: &str, table: &str) -> Result<reqwest::Url, String> {
    let base = target.trim_end_matches('/');
    let full = if base.contains("/v1/ingest/") {
        base.to_string()
    } else {
        format!("{base}/v1/ingest/{table}")
    };
    let url = reqwest::Url::parse(&full).map_err(|e| format!("--target '{target}': {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "--target '{target}': scheme {other}: is not http: or https:"
        )),
    }
}

/// `Retry-After` in seconds (the only form the ingest API sends; an HTTP date is ignored).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with jitter: ~250 ms, 500 ms, 1 s, ... at most `MAX_BACKOFF`.
pub fn backoff(attempt: u32, jitter: &mut Rng) -> Duration {
    let ceiling = Duration::from_millis(250)
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(jitter.range(0.5, 1.0))
}

/// The server's own words from an error body: `{"error": ...}` (with the first refused rows of
/// a 422), or the text itself.
fn server_message(body: &str) -> String {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body)
        && let Some(error) = json.get("error").and_then(|e| e.as_str())
    {
        let mut message = error.to_string();
        if let Some(rows) = json.get("rows").and_then(|r| r.as_array()) {
            for row in rows.iter().take(3) {
                let i = row.get("row").map(|r| r.to_string()).unwrap_or_default();
                let reason = row.get("reason").and_then(|r| r.as_str()).unwrap_or("");
                message.push_str(&format!("; row {i}: {reason}"));
            }
            if rows.len() > 3 {
                message.push_str(&format!("; and {} more rows", rows.len() - 3));
            }
        }
        return message;
    }
    let text = body.trim();
    if text.is_empty() {
        "(no message)".to_string()
    } else {
        text.chars().take(300).collect()
    }
}

/// The message for a refusal: what happened and what to do about it.
fn refusal(status: StatusCode, body: &str, table: &str, rows: usize, bytes: usize) -> String {
    let said = server_message(body);
    match status.as_u16() {
        400 => format!("the server could not read a batch ({status}): {said}"),
        401 => format!(
            "the server refused the credentials ({status}): {said}; give --token-env VAR \
             naming an environment variable that holds a valid bearer token"
        ),
        403 => format!("the token may not write to {table} ({status}): {said}"),
        404 => format!(
            "the server has no table {table} ({status}): {said}; create it first (medlake \
             quickstart does) or name another with --table"
        ),
        413 => format!(
            "a batch of {rows} rows ({bytes} bytes) is larger than the server takes \
             ({status}): lower --batch or add --gzip"
        ),
        422 => format!("the server refused a batch's rows, none was written ({status}): {said}"),
        _ => format!("the server refused a batch ({status}): {said}"),
    }
}

impl Poster {
    fn refuse(&self, message: String) {
        if let Ok(mut r) = self.refusal.lock() {
            r.get_or_insert(message);
        }
        self.stop.cancel();
    }

    /// Posts one batch until it is acknowledged, refused or given up, with the same key.
    async fn post(&self, key: &str, body: Bytes, rows: usize) -> Outcome {
        let mut jitter = Rng::new(key.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        }));
        let mut attempt = 0u32;
        loop {
            let mut request = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/x-ndjson")
                .header("Idempotency-Key", key)
                .body(body.clone());
            if self.gzip {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(token) = &self.token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            let started = std::time::Instant::now();
            let (wait, problem) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let asked = retry_after(
                        response
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()),
                    );
                    match response.text().await {
                        Err(e) => (
                            backoff(attempt, &mut jitter),
                            format!("reading the answer: {e}"),
                        ),
                        Ok(text) => {
                            self.stats.latency(started.elapsed());
                            if status.is_success() {
                                let json: Option<serde_json::Value> =
                                    serde_json::from_str(&text).ok();
                                let field =
                                    |name: &str| json.as_ref().and_then(|j| j.get(name).cloned());
                                return Outcome::Acknowledged {
                                    duplicate: field("duplicate")
                                        .and_then(|d| d.as_bool())
                                        .unwrap_or(false),
                                    server_rows: field("rows").and_then(|r| r.as_u64()),
                                };
                            }
                            if status == StatusCode::TOO_MANY_REQUESTS
                                || status == StatusCode::SERVICE_UNAVAILABLE
                            {
                                (
                                    asked.unwrap_or_else(|| backoff(attempt, &mut jitter)),
                                    format!("{status} (backpressure)"),
                                )
                            } else if status.is_server_error() {
                                (
                                    backoff(attempt, &mut jitter),
                                    format!("{status}: {}", server_message(&text)),
                                )
                            } else {
                                return Outcome::Refused(refusal(
                                    status,
                                    &text,
                                    &self.table,
                                    rows,
                                    body.len(),
                                ));
                            }
                        }
                    }
                }
                Err(e) => (backoff(attempt, &mut jitter), error_chain(&e)),
            };
            if attempt >= self.max_retries {
                return Outcome::GaveUp(format!(
                    "batch {key} ({rows} rows) not acknowledged after {} attempts; last: {problem}",
                    attempt + 1
                ));
            }
            attempt += 1;
            Stats::add(&self.stats.retries, 1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return Outcome::Abandoned,
            }
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(data)?;
    encoder.finish()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub async fn run(args: SimulateArgs) -> Result<(), Failure> {
    let plan = args.plan().map_err(Failure::Usage)?;
    let simulation = Simulation::new(&plan);
    if let Some(path) = &args.output {
        return write_output(simulation, &plan, path);
    }
    let Some(target) = &args.target else {
        return Err(Failure::Usage("give --target URL or --output FILE".into()));
    };
    let url = ingest_url(target, &args.table).map_err(Failure::Usage)?;
    let token = match &args.token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
            _ => {
                return Err(Failure::Usage(format!(
                    "--token-env {var}: the environment variable {var} is not set or empty"
                )));
            }
        },
    };
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .user_agent(concat!("medlake-simulate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::Usage(format!("cannot set up the HTTP client: {e}")))?;
    let poster = Arc::new(Poster {
        client,
        url,
        table: args.table.clone(),
        token,
        gzip: args.gzip,
        max_retries: args.max_retries,
        stats: Stats::default(),
        stop: CancellationToken::new(),
        refusal: Mutex::new(None),
        warned_count: std::sync::atomic::AtomicBool::new(false),
    });
    post_all(simulation, &plan, &args, poster).await
}

fn write_output(
    simulation: Simulation,
    plan: &Plan,
    path: &std::path::Path,
) -> Result<(), Failure> {
    let to_stdout = path.as_os_str() == "-";
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).map_err(|e| {
            eprintln!("error: cannot create {}: {e}", path.display());
            Failure::Reported
        })?)
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let mut simulation = simulation;
    let mut lines = Vec::new();
    for batch in simulation.by_ref() {
        lines.clear();
        for r in &batch.readings {
            r.write_ndjson(&mut lines);
        }
        out.write_all(&lines).map_err(|e| {
            eprintln!("error: cannot write {}: {e}", path.display());
            Failure::Reported
        })?;
    }
    out.flush().map_err(|e| {
        eprintln!("error: cannot write {}: {e}", path.display());
        Failure::Reported
    })?;
    let counts = simulation.counts();
    eprintln!(
        "medlake simulate: wrote {} rows to {} ({})",
        counts.rows(),
        if to_stdout {
            "stdout".to_string()
        } else {
            path.display().to_string()
        },
        describe_data(&simulation, plan)
    );
    Ok(())
}

fn describe_data(simulation: &Simulation, plan: &Plan) -> String {
    let c = simulation.counts();
    format!(
        "seed {}: {} readings from {} devices on {} patients (deteriorating: {:?}), {} exact \
         duplicates, {} out of range, {} without a value, {} late, {} after {} dropouts",
        plan.seed,
        c.readings,
        plan.devices,
        simulation.patients(),
        simulation.deteriorating(),
        c.duplicates,
        c.out_of_range,
        c.missing,
        c.late,
        c.held,
        c.dropouts
    )
}

async fn post_all(
    mut simulation: Simulation,
    plan: &Plan,
    args: &SimulateArgs,
    poster: Arc<Poster>,
) -> Result<(), Failure> {
    if !args.quiet {
        eprintln!(
            "medlake simulate: {} devices on {} patients behind {} gateways, {} readings/s each for \
         {} s, batches of up to {} rows, {} in flight, to {} (seed {})",
            plan.devices,
            simulation.patients(),
            simulation.gateways(),
            plan.rate,
            plan.duration_s,
            plan.batch,
            args.concurrency,
            poster.url,
            plan.seed
        );
    }
    let run_id = Rng::new(
        Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64
            ^ (u64::from(std::process::id()) << 32),
    )
    .next_u64();
    let started = tokio::time::Instant::now();
    let progress = (!args.quiet).then(|| {
        let poster = poster.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let s = &poster.stats;
                eprintln!(
                    "medlake simulate: {:>5.0} s: {} readings sent, {} acknowledged, {} requests \
                     in flight, {} retries",
                    started.elapsed().as_secs_f64(),
                    Stats::get(&s.sent_rows),
                    Stats::get(&s.acked_rows),
                    Stats::get(&s.in_flight),
                    Stats::get(&s.retries)
                );
            }
        })
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    'batches: for batch in simulation.by_ref() {
        let due = started + Duration::from_millis(batch.due_ms);
        let slot = tokio::select! {
            biased;
            _ = poster.stop.cancelled() => break 'batches,
            _ = &mut ctrl_c => { interrupted = true; break 'batches }
            slot = async {
                tokio::time::sleep_until(due).await;
                slots.clone().acquire_owned().await
            } => slot,
        };
        let Ok(slot) = slot else { break };
        while tasks.try_join_next().is_some() {}
        let key = format!("sim-{run_id:016x}-g{}-{}", batch.gateway, batch.seq);
        let mut batch = batch;
        if let Some(addr) = args.mllp.filter(|_| batch.gateway % 4 == 1) {
            let (valued, rest): (Vec<Reading>, Vec<Reading>) =
                batch.readings.drain(..).partition(|r| r.value.is_some());
            batch.readings = rest;
            let jitter = Rng::new(batch.seq ^ run_id);
            spawn_hl7(
                &mut tasks,
                &poster,
                addr,
                valued,
                &key,
                jitter,
                args.max_retries,
            );
            if batch.readings.is_empty() {
                drop(slot);
                continue;
            }
        }
        let rows = batch.readings.len();
        let ndjson = batch.ndjson();
        let body = if poster.gzip {
            match gzip(&ndjson) {
                Ok(body) => body,
                Err(e) => {
                    poster.refuse(format!("cannot compress a batch: {e}"));
                    break;
                }
            }
        } else {
            ndjson
        };
        let stats = &poster.stats;
        Stats::add(&stats.sent_rows, rows as u64);
        Stats::add(&stats.sent_batches, 1);
        Stats::add(&stats.in_flight, 1);
        let poster = poster.clone();
        tasks.spawn(async move {
            let outcome = poster.post(&key, Bytes::from(body), rows).await;
            drop(slot);
            let stats = &poster.stats;
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Outcome::Acknowledged {
                    duplicate,
                    server_rows,
                } => {
                    Stats::add(&stats.acked_rows, rows as u64);
                    Stats::add(&stats.acked_batches, 1);
                    if duplicate {
                        Stats::add(&stats.duplicate_rows, rows as u64);
                        Stats::add(&stats.duplicate_batches, 1);
                    }
                    if let Some(n) = server_rows.filter(|n| *n != rows as u64)
                        && !poster.warned_count.swap(true, Ordering::Relaxed)
                    {
                        eprintln!(
                            "warning: batch {key} had {rows} rows, the server acknowledged {n}"
                        );
                    }
                }
                Outcome::Refused(message) => poster.refuse(message),
                Outcome::GaveUp(message) => {
                    Stats::add(&stats.failed_batches, 1);
                    eprintln!("warning: {message}");
                }
                Outcome::Abandoned => {}
            }
        });
    }
    // Everything posted is waited for (retries included) unless a refusal stopped the run.
    while tasks.join_next().await.is_some() {}
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = started.elapsed();
    let s = &poster.stats;
    let mut latencies = s.latencies_us.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    let ms = |p: f64| {
        percentile(&latencies, p).map_or("-".to_string(), |us| format!("{:.1}", us as f64 / 1000.0))
    };
    let sent = Stats::get(&s.sent_rows);
    let acked = Stats::get(&s.acked_rows);
    if !args.quiet {
        println!(
            "data:                      {}",
            describe_data(&simulation, plan)
        );
        println!(
            "readings sent:             {sent} in {} batches",
            Stats::get(&s.sent_batches)
        );
        println!(
            "readings acknowledged:     {acked} in {} batches",
            Stats::get(&s.acked_batches)
        );
        println!(
            "acknowledged as duplicate: {} in {} batches (already committed, not written twice)",
            Stats::get(&s.duplicate_rows),
            Stats::get(&s.duplicate_batches)
        );
        println!("retries:                   {}", Stats::get(&s.retries));
        println!(
            "throughput:                {:.1} readings/s acknowledged over {:.1} s",
            acked as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed.as_secs_f64()
        );
        println!(
            "request latency:           p50 {} ms, p99 {} ms over {} requests",
            ms(0.50),
            ms(0.99),
            latencies.len()
        );
    }
    let refused = poster.refusal.lock().ok().and_then(|r| r.clone());
    if let Some(message) = refused {
        eprintln!("error: {message}");
        return Err(Failure::Reported);
    }
    if acked < sent {
        eprintln!(
            "error: {} of {sent} readings were not acknowledged ({} batches gave up after {} \
             retries)",
            sent - acked,
            Stats::get(&s.failed_batches),
            args.max_retries
        );
        return Err(Failure::Reported);
    }
    if interrupted {
        eprintln!("medlake simulate: interrupted; everything sent was acknowledged");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// 2026-11-23T08:00:00Z
    const START_MS: i64 = 1_795_420_800_000;

    fn plan(devices: u32, rate: f64, duration_s: f64, seed: u64) -> Plan {
        Plan {
            devices,
            rate,
            duration_s,
            batch: 200,
            seed,
            start_ms: START_MS,
        }
    }

    fn all(plan: &Plan) -> (Vec<Batch>, Counts) {
        let mut sim = Simulation::new(plan);
        let batches: Vec<Batch> = sim.by_ref().collect();
        (batches, sim.counts().clone())
    }

    fn ndjson(batches: &[Batch]) -> Vec<u8> {
        batches.iter().flat_map(Batch::ndjson).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_batches_and_another_seed_does_not() {
        let (a, counts_a) = all(&plan(40, 2.0, 120.0, 7));
        let (b, counts_b) = all(&plan(40, 2.0, 120.0, 7));
        let (c, _) = all(&plan(40, 2.0, 120.0, 8));
        assert_eq!(ndjson(&a), ndjson(&b));
        assert_eq!(counts_a, counts_b);
        let shape = |x: &[Batch]| {
            x.iter()
                .map(|b| (b.seq, b.gateway, b.due_ms, b.readings.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&a), shape(&b));
        assert_ne!(ndjson(&a), ndjson(&c));
    }

    #[test]
    fn every_device_measures_rate_times_duration_readings_and_batches_stay_bounded() {
        let p = plan(37, 3.0, 50.0, 1);
        let (batches, counts) = all(&p);
        assert_eq!(counts.readings, 37 * 3 * 50);
        let rows: usize = batches.iter().map(|b| b.readings.len()).sum();
        assert_eq!(rows as u64, counts.rows());
        assert_eq!(batches.len() as u64, counts.batches);
        assert!(
            batches
                .iter()
                .all(|b| !b.readings.is_empty() && b.readings.len() <= 200)
        );
        let seqs: HashSet<u64> = batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs.len(), batches.len(), "sequence numbers are unique");
        assert!(
            batches.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
            "batches come in the order they are due"
        );
        assert!(batches.last().is_some_and(|b| b.due_ms <= 50_000));
        // Each device posts through one gateway.
        let mut gateway_of: HashMap<Arc<str>, usize> = HashMap::new();
        for b in &batches {
            for r in &b.readings {
                assert_eq!(
                    *gateway_of.entry(r.device_id.clone()).or_insert(b.gateway),
                    b.gateway
                );
            }
        }
        assert_eq!(gateway_of.len(), 37);
    }

    #[test]
    fn vital_signs_are_mostly_plausible_with_some_glitches_and_flaws() {
        let p = plan(60, 2.0, 300.0, 42);
        let (batches, counts) = all(&p);
        let readings: Vec<&Reading> = batches.iter().flat_map(|b| &b.readings).collect();
        let mut by_metric: HashMap<Metric, Vec<f64>> = HashMap::new();
        let mut implausible = 0;
        for r in &readings {
            let expected_unit = match (r.metric, r.unit) {
                (Metric::Temperature, "degF") => "degF",
                (m, _) => m.unit(false),
            };
            assert_eq!(r.unit, expected_unit, "{r:?}");
            let Some(v) = r.value else { continue };
            let celsius = if r.unit == "degF" {
                (v - 32.0) * 5.0 / 9.0
            } else {
                v
            };
            if !r.metric.plausible().contains(&celsius) {
                implausible += 1;
            }
            by_metric.entry(r.metric).or_default().push(celsius);
        }
        let share = implausible as f64 / readings.len() as f64;
        assert!(
            implausible > 0 && share < 0.01,
            "{implausible} of {}",
            readings.len()
        );
        assert!(implausible as u64 <= counts.out_of_range + counts.duplicates);
        assert!(implausible as u64 >= counts.out_of_range);
        let median = |m: Metric| {
            let mut v = by_metric[&m].clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        assert_eq!(by_metric.len(), 7, "every metric appears");
        for (metric, low, high) in [
            (Metric::HeartRate, 60.0, 100.0),
            (Metric::Spo2, 94.0, 100.0),
            (Metric::RespirationRate, 12.0, 20.0),
            (Metric::Temperature, 36.3, 37.5),
            (Metric::SystolicBp, 105.0, 145.0),
            (Metric::DiastolicBp, 65.0, 95.0),
            (Metric::Glucose, 80.0, 170.0),
        ] {
            let m = median(metric);
            assert!((low..=high).contains(&m), "median {} {m}", metric.name());
        }
        // Some thermometers report °F, with °F values.
        let fahrenheit: Vec<f64> = readings
            .iter()
            .filter(|r| r.unit == "degF")
            .filter_map(|r| r.value)
            .collect();
        assert!(!fahrenheit.is_empty());
        assert!(
            fahrenheit
                .iter()
                .filter(|v| (95.0..=108.0).contains(*v))
                .count()
                * 100
                >= fahrenheit.len() * 98
        );
        // Exact duplicates, readings without a value, late readings.
        let mut seen = HashSet::new();
        let lines: Vec<Vec<u8>> = readings
            .iter()
            .map(|r| {
                let mut l = Vec::new();
                r.write_ndjson(&mut l);
                l
            })
            .collect();
        let duplicated = lines.iter().filter(|l| !seen.insert(*l)).count();
        assert!(duplicated > 0 && duplicated as u64 <= counts.duplicates);
        assert!((counts.duplicates as f64 / counts.readings as f64) < 0.02);
        assert!(readings.iter().any(|r| r.value.is_none()));
        assert!(counts.late > 0);
        let late = batches
            .iter()
            .flat_map(|b| b.readings.iter().map(move |r| (b.due_ms, r)))
            .filter(|(due, r)| p.start_ms + *due as i64 - r.taken_at_ms >= 60_000)
            .count();
        assert!(
            late as u64 >= counts.late,
            "{late} readings sent a minute late or more"
        );
    }

    #[test]
    fn dropouts_go_silent_then_send_a_burst_of_old_readings() {
        let p = plan(30, 1.0, 400.0, 3);
        let (batches, counts) = all(&p);
        assert!(counts.dropouts > 0 && counts.held > 0);
        // The longest silence of a device in send time, and what it sent when back.
        let mut last_seen: HashMap<Arc<str>, u64> = HashMap::new();
        let mut longest = (0u64, 0usize);
        for b in &batches {
            let mut here: HashMap<Arc<str>, usize> = HashMap::new();
            for r in &b.readings {
                *here.entry(r.device_id.clone()).or_default() += 1;
            }
            for (device, n) in here {
                if let Some(prev) = last_seen.insert(device, b.due_ms)
                    && b.due_ms - prev > longest.0
                {
                    longest = (b.due_ms - prev, n);
                }
            }
        }
        assert!(
            longest.0 >= 30_000,
            "a device is silent for 30 s or more: {longest:?}"
        );
        assert!(
            longest.1 >= 30,
            "then sends its backlog at once: {longest:?}"
        );
        // Readings out of order: taken_at goes backwards within a device's stream.
        let mut previous: HashMap<Arc<str>, i64> = HashMap::new();
        let backwards = batches
            .iter()
            .flat_map(|b| &b.readings)
            .filter(|r| {
                let before = previous.insert(r.device_id.clone(), r.taken_at_ms);
                before.is_some_and(|t| r.taken_at_ms < t)
            })
            .count();
        assert!(backwards > 0);
    }

    #[test]
    fn a_deteriorating_patient_trends_towards_sepsis_and_the_others_stay_level() {
        let p = plan(20, 2.0, 600.0, 11);
        let sim = Simulation::new(&p);
        let sick = sim.deteriorating();
        assert!(!sick.is_empty() && sick.len() <= 2, "{sick:?}");
        let (batches, _) = all(&p);
        let mean_hr = |patient: i32, from: f64, to: f64| {
            let v: Vec<f64> = batches
                .iter()
                .flat_map(|b| &b.readings)
                .filter(|r| r.patient_id == patient && r.metric == Metric::HeartRate)
                .filter(|r| {
                    let t = (r.taken_at_ms - p.start_ms) as f64 / 1000.0;
                    t >= from * 600.0 && t < to * 600.0
                })
                .filter_map(|r| r.value)
                .filter(|v| Metric::HeartRate.plausible().contains(v))
                .collect();
            (v.iter().sum::<f64>() / v.len().max(1) as f64, v.len())
        };
        let (mut compared, mut sick_compared) = (0, 0);
        for patient in 1001..=1010 {
            let (early, n1) = mean_hr(patient, 0.0, 0.1);
            let (late, n2) = mean_hr(patient, 0.95, 1.0);
            if n1 < 10 || n2 < 10 {
                continue; // this patient has no heart-rate device
            }
            compared += 1;
            if sick.contains(&patient) {
                sick_compared += 1;
                assert!(late - early > 25.0, "patient {patient}: {early} -> {late}");
            } else {
                assert!(
                    (late - early).abs() < 20.0,
                    "patient {patient}: {early} -> {late}"
                );
            }
        }
        assert!(
            compared >= 3 && sick_compared >= 1,
            "{compared} {sick_compared}"
        );
    }

    #[test]
    fn one_patient_lives_at_88_to_92_percent_and_the_others_do_not() {
        let p = plan(20, 2.0, 600.0, 11);
        let sim = Simulation::new(&p);
        let copd = sim.hypercapnic();
        assert_eq!(copd.len(), 1, "{copd:?}");
        assert!(!sim.deteriorating().contains(&copd[0]));
        let (batches, _) = all(&p);
        let mean_spo2 = |patient: i32| {
            let v: Vec<f64> = batches
                .iter()
                .flat_map(|b| &b.readings)
                .filter(|r| r.patient_id == patient && r.metric == Metric::Spo2)
                .filter_map(|r| r.value)
                .filter(|v| Metric::Spo2.plausible().contains(v))
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        // Measured by a device of theirs (a monitor or an oximeter).
        let copd_mean = mean_spo2(copd[0]);
        assert!((88.0..=92.0).contains(&copd_mean), "{copd_mean}");
        let others: Vec<f64> = (1001..=1010)
            .filter(|p| *p != copd[0] && !sim.deteriorating().contains(p))
            .map(mean_spo2)
            .filter(|m| *m > 0.0)
            .collect();
        assert!(
            !others.is_empty() && others.iter().all(|m| *m > 93.0),
            "{others:?}"
        );
        assert!(
            Simulation::new(&plan(4, 1.0, 10.0, 1))
                .hypercapnic()
                .is_empty()
        );
    }

    #[test]
    fn deterioration_raises_heart_and_breathing_rates_and_lowers_spo2_and_pressure() {
        let mut rng = Rng::new(9);
        let mut patient = Patient::new(1001, &mut rng);
        patient.deterioration = Some((100.0, 100.0));
        let mut mean = |metric: Metric, t: f64| {
            (0..400)
                .map(|_| patient.measure(metric, t, 12.0, &mut rng))
                .sum::<f64>()
                / 400.0
        };
        for (metric, change) in [
            (Metric::HeartRate, 38.0_f64),
            (Metric::RespirationRate, 12.0),
            (Metric::Spo2, -9.0),
            (Metric::SystolicBp, -32.0),
            (Metric::Temperature, 1.9),
        ] {
            let before = mean(metric, 50.0);
            let after = mean(metric, 250.0);
            let tolerance = change.abs() * 0.35;
            assert!(
                (after - before - change).abs() < tolerance,
                "{}: {before} -> {after}",
                metric.name()
            );
        }
    }

    #[test]
    fn rows_are_ndjson_with_the_columns_of_bronze_readings() {
        let (batches, _) = all(&plan(5, 1.0, 10.0, 5));
        let text = String::from_utf8(batches[0].ndjson()).unwrap();
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = row.as_object().unwrap();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "device_id",
                    "metric",
                    "patient_id",
                    "taken_at",
                    "unit",
                    "value"
                ]
            );
            let taken_at = object["taken_at"].as_str().unwrap();
            assert!(
                taken_at.starts_with("2026-11-23T0") && taken_at.ends_with('Z'),
                "{taken_at}"
            );
            assert_eq!(taken_at.len(), "2026-11-23T08:00:00.000Z".len());
            let t = DateTime::parse_from_rfc3339(taken_at)
                .unwrap()
                .timestamp_millis();
            assert!(
                (START_MS - 600_000..START_MS + 10_000).contains(&t),
                "{taken_at}"
            );
            assert!(object["patient_id"].as_i64().is_some_and(|p| p >= 1001));
        }
    }

    #[test]
    fn retry_after_backoff_urls_and_percentiles() {
        assert_eq!(retry_after(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(Some("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
        let mut rng = Rng::new(1);
        for attempt in 0..40 {
            let wait = backoff(attempt, &mut rng);
            let ceiling = Duration::from_millis(250 << attempt.min(10)).min(MAX_BACKOFF);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{attempt}: {wait:?}"
            );
        }
        assert_eq!(
            ingest_url("http://127.0.0.1:8080", "bronze.readings")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/v1/ingest/bronze.readings"
        );
        assert_eq!(
            ingest_url("https://lake.example/medlake/", "bronze.readings")
                .unwrap()
                .as_str(),
            "https://lake.example/medlake/v1/ingest/bronze.readings"
        );
        assert_eq!(
            ingest_url("http://h:1/v1/ingest/bronze.x", "bronze.readings")
                .unwrap()
                .as_str(),
            "http://h:1/v1/ingest/bronze.x"
        );
        assert!(ingest_url("ftp://h/", "bronze.readings").is_err());
        assert!(ingest_url("not a url", "bronze.readings").is_err());
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let body = r#"{"error":"2 rows are invalid","rows":[{"row":3,"reason":"patient_id is null"},{"row":9,"reason":"taken_at is not a timestamp"}]}"#;
        let m = refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            body,
            "bronze.readings",
            10,
            999,
        );
        assert!(
            m.contains("422") && m.contains("row 3: patient_id is null") && m.contains("row 9"),
            "{m}"
        );
        let m = refusal(StatusCode::UNAUTHORIZED, "", "bronze.readings", 10, 999);
        assert!(m.contains("401") && m.contains("--token-env"), "{m}");
        let m = refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            "bronze.readings",
            10,
            999,
        );
        assert!(m.contains("lower --batch"), "{m}");
        let m = refusal(
            StatusCode::NOT_FOUND,
            r#"{"error":"no table"}"#,
            "bronze.x",
            1,
            1,
        );
        assert!(
            m.contains("no table bronze.x") && m.contains("no table"),
            "{m}"
        );
    }
}
