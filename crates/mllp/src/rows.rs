//! The bronze tables of the MLLP door and the rows one message becomes: one row per OBX of an
//! `ORU^R01` in `hl7_observations`, one row per ADT event in `hl7_adt`, one row per refused
//! message in `hl7_quarantine`. Every row keeps the message it came from (`raw`, the decoded
//! text with `\r` between segments), so nothing the sender said is lost.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder};
use arrow::array::{TimestampMicrosecondArray, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono_tz::Tz;
use medlake_hl7::{AdtEvent, Header, Message, Observation, Timestamp};

/// The tables of the door, in its schema (`bronze` unless configured).
pub const OBSERVATIONS: &str = "hl7_observations";
pub const ADT: &str = "hl7_adt";
pub const QUARANTINE: &str = "hl7_quarantine";

/// Times are UTC instants stored as `TIMESTAMP` (no zone), as every table of the warehouse
/// keeps them (`sql/bronze/hl7.sql` declares the same columns).
fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// The columns every row of a read message starts with: where it came from and when.
fn message_columns() -> Vec<Field> {
    vec![
        Field::new("message_id", DataType::Utf8, false),
        Field::new("sending_application", DataType::Utf8, false),
        Field::new("sending_facility", DataType::Utf8, false),
        Field::new("message_type", DataType::Utf8, false),
        Field::new("message_time", utc(), true),
        Field::new("received_at", utc(), false),
        Field::new("sender", DataType::Utf8, false),
    ]
}

/// `hl7_observations`: one row per OBX.
pub static OBSERVATIONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = message_columns();
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    fields.extend([
        text("patient_id"),
        text("patient_id_authority"),
        text("patient_name"),
        text("location"),
        text("visit_number"),
        text("order_id"),
        text("order_code"),
        Field::new("set_id", DataType::Int64, true),
        text("value_type"),
        text("code"),
        text("code_text"),
        text("coding_system"),
        text("sub_id"),
        text("value"),
        Field::new("numeric_value", DataType::Float64, true),
        text("units"),
        text("units_system"),
        text("reference_range"),
        text("abnormal_flags"),
        text("status"),
        Field::new("observed_at", utc(), true),
        text("equipment"),
        text("raw"),
    ]);
    Arc::new(Schema::new(fields))
});

/// `hl7_adt`: one row per ADT message.
pub static ADT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = message_columns();
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    fields.extend([
        text("event"),
        Field::new("recorded_at", utc(), true),
        Field::new("occurred_at", utc(), true),
        text("patient_id"),
        text("patient_id_authority"),
        text("patient_name"),
        text("birth_date"),
        text("sex"),
        text("patient_class"),
        text("location"),
        text("prior_location"),
        text("attending"),
        text("visit_number"),
        Field::new("admitted_at", utc(), true),
        Field::new("discharged_at", utc(), true),
        text("merged_patient_id"),
        text("merged_patient_id_authority"),
        text("raw"),
    ]);
    Arc::new(Schema::new(fields))
});

/// `hl7_quarantine`: messages answered AE or AR, with the reason given to the sender.
pub static QUARANTINE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("received_at", utc(), false),
        text("sender"),
        text("peer"),
        text("sending_application"),
        text("sending_facility"),
        text("message_id"),
        text("message_type"),
        text("ack_code"),
        Field::new("error_code", DataType::Int64, false),
        text("reason"),
        text("raw"),
    ]))
});

/// What every row of one message shares.
pub struct Context<'a> {
    pub header: &'a Header,
    pub raw: &'a str,
    pub sender: &'a str,
    pub received_at: i64,
    pub zone: Tz,
}

impl Context<'_> {
    fn time(&self, ts: Option<&Timestamp>) -> Result<Option<i64>, String> {
        ts.map(|t| t.to_utc_micros(self.zone).map_err(|e| e.to_string()))
            .transpose()
    }

    fn message_type(&self) -> String {
        let h = self.header;
        if h.trigger_event.is_empty() {
            h.message_code.clone()
        } else {
            format!("{}^{}", h.message_code, h.trigger_event)
        }
    }

    /// The message columns for `n` rows.
    fn columns(&self, n: usize) -> Result<Vec<ArrayRef>, String> {
        let h = self.header;
        let message_time = self.time(h.timestamp.as_ref())?;
        Ok(vec![
            repeat(&h.control_id, n),
            repeat(&h.sending_application, n),
            repeat(&h.sending_facility, n),
            repeat(&self.message_type(), n),
            utc_array(vec![message_time; n]),
            utc_array(vec![Some(self.received_at); n]),
            repeat(self.sender, n),
        ])
    }
}

/// The text a message's rows keep: its segments, decoded, each ended by `\r`.
pub fn raw_text(msg: &Message) -> String {
    let mut raw = String::new();
    for segment in msg.all_segments() {
        raw.push_str(segment.as_str());
        raw.push('\r');
    }
    raw
}

fn repeat(value: &str, n: usize) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(n, value.len() * n);
    for _ in 0..n {
        b.append_value(value);
    }
    Arc::new(b.finish())
}

fn utc_array(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// The rows of an `ORU^R01`'s observations. `Err` with a reason when a timestamp cannot be
/// placed in time (a local time that does not exist in the receiver's zone).
pub fn observation_rows(ctx: &Context, obs: &[Observation]) -> Result<RecordBatch, String> {
    let n = obs.len();
    let mut columns = ctx.columns(n)?;
    let text = |f: fn(&Observation) -> &str| strings(obs.iter().map(f));
    columns.extend([
        text(|o| &o.patient_id),
        text(|o| &o.patient_id_authority),
        text(|o| &o.patient_name),
        text(|o| &o.location),
        text(|o| &o.visit_number),
        text(|o| &o.order_id),
        text(|o| &o.order_code),
    ]);
    let mut set_id = Int64Builder::with_capacity(n);
    let mut numeric = Float64Builder::with_capacity(n);
    let mut observed = TimestampMicrosecondBuilder::with_capacity(n);
    for o in obs {
        set_id.append_option(o.set_id);
        numeric.append_option(o.numeric.filter(|v| v.is_finite()));
        observed.append_option(ctx.time(o.observed_at.as_ref())?);
    }
    columns.push(Arc::new(set_id.finish()));
    columns.extend([
        text(|o| &o.value_type),
        text(|o| &o.code),
        text(|o| &o.code_text),
        text(|o| &o.coding_system),
        text(|o| &o.sub_id),
        text(|o| &o.value),
    ]);
    columns.push(Arc::new(numeric.finish()));
    columns.extend([
        text(|o| &o.units),
        text(|o| &o.units_system),
        text(|o| &o.reference_range),
        text(|o| &o.abnormal_flags),
        text(|o| &o.status),
    ]);
    columns.push(Arc::new(observed.finish()));
    columns.push(text(|o| &o.equipment));
    columns.push(repeat(ctx.raw, n));
    RecordBatch::try_new(OBSERVATIONS_SCHEMA.clone(), columns).map_err(|e| e.to_string())
}

/// The row of an ADT event.
pub fn adt_rows(ctx: &Context, event: &AdtEvent) -> Result<RecordBatch, String> {
    let mut columns = ctx.columns(1)?;
    let one = |v: &str| repeat(v, 1);
    let time = |t: Option<&Timestamp>| ctx.time(t).map(|t| utc_array(vec![t]));
    columns.extend([
        one(&event.event),
        time(event.recorded_at.as_ref())?,
        time(event.occurred_at.as_ref())?,
        one(&event.patient_id),
        one(&event.patient_id_authority),
        one(&event.patient_name),
        one(&event.birth_date),
        one(&event.sex),
        one(&event.patient_class),
        one(&event.location),
        one(&event.prior_location),
        one(&event.attending),
        one(&event.visit_number),
        time(event.admitted_at.as_ref())?,
        time(event.discharged_at.as_ref())?,
        one(&event.merged_patient_id),
        one(&event.merged_patient_id_authority),
        one(ctx.raw),
    ]);
    RecordBatch::try_new(ADT_SCHEMA.clone(), columns).map_err(|e| e.to_string())
}

/// One refused message, as `hl7_quarantine` keeps it.
pub struct Refusal<'a> {
    pub received_at: i64,
    pub sender: &'a str,
    pub peer: &'a str,
    pub header: Option<&'a Header>,
    pub ack_code: &'a str,
    pub error_code: u16,
    pub reason: &'a str,
    pub raw: &'a str,
}

/// `raw` cut to `max` bytes (on a character boundary), with its full length and SHA-256 noted.
fn bounded(raw: &str, max: usize) -> String {
    if raw.len() <= max {
        return raw.to_string();
    }
    let mut end = max;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    use sha2::Digest as _;
    let digest: String = sha2::Sha256::digest(raw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}\n[cut: {} bytes in all, sha256 {digest}]",
        &raw[..end],
        raw.len()
    )
}

/// The quarantine row of a refused message (`raw` kept up to `max_raw` bytes).
pub fn quarantine_row(r: &Refusal, max_raw: usize) -> RecordBatch {
    let h = |f: fn(&Header) -> &str| r.header.map_or("", f);
    let message_type = r.header.map_or(String::new(), |h| {
        format!("{}^{}", h.message_code, h.trigger_event)
    });
    let columns: Vec<ArrayRef> = vec![
        utc_array(vec![Some(r.received_at)]),
        repeat(r.sender, 1),
        repeat(r.peer, 1),
        repeat(h(|h| &h.sending_application), 1),
        repeat(h(|h| &h.sending_facility), 1),
        repeat(h(|h| &h.control_id), 1),
        repeat(&message_type, 1),
        repeat(r.ack_code, 1),
        Arc::new(arrow::array::Int64Array::from(vec![i64::from(
            r.error_code,
        )])),
        repeat(r.reason, 1),
        repeat(&bounded(r.raw, max_raw), 1),
    ];
    // The columns are built from the schema's own list, in its order.
    RecordBatch::try_new(QUARANTINE_SCHEMA.clone(), columns)
        .unwrap_or_else(|_| RecordBatch::new_empty(QUARANTINE_SCHEMA.clone()))
}
