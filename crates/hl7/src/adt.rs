//! ADT events: admit (A01), transfer (A02), discharge (A03), register (A04), update (A08),
//! their cancellations (A11 cancel admit, A12 cancel transfer, A13 cancel discharge), and
//! patient merge (A40).
//!
//! Required: PID with PID-3.1, PV1 (except for A40), MRG with MRG-1.1 for A40. When a
//! message carries several PID (an A40 merging several patients), the first PID and the
//! first MRG are read.

use crate::error::{ParseError, Result};
use crate::message::Message;
use crate::oru::Patient;
use crate::timestamp::{self, Timestamp};

/// The events [`adt`] reads.
pub const ADT_EVENTS: [&str; 9] = [
    "A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13", "A40",
];

/// One ADT event. Text values are unescaped and in the text form of [`crate::segment`];
/// absent values are empty strings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdtEvent {
    /// The trigger event (`A01`, ...): MSH-9.2, else EVN-1.
    pub event: String,
    /// EVN-2 (recorded date/time), else MSH-7.
    pub recorded_at: Option<Timestamp>,
    /// EVN-6 (event occurred).
    pub occurred_at: Option<Timestamp>,
    /// PID-3.1 of the first repetition with identifier type `MR`, else of the first.
    pub patient_id: String,
    /// PID-3.4.1, else PID-3.4.2, of the same repetition.
    pub patient_id_authority: String,
    /// PID-5 `family^given`.
    pub patient_name: String,
    /// PID-7.1 as written (`19620315`).
    pub birth_date: String,
    /// PID-8 (`F`, `M`, `O`, `U`, ...).
    pub sex: String,
    /// PV1-2 (`I` inpatient, `O` outpatient, `E` emergency, ...).
    pub patient_class: String,
    /// PV1-3 assigned location (point of care^room^bed^facility...).
    pub location: String,
    /// PV1-6 prior location (a transfer's origin).
    pub prior_location: String,
    /// PV1-7, first repetition (id^family^given...).
    pub attending: String,
    /// PV1-19.1.
    pub visit_number: String,
    /// PV1-44.
    pub admitted_at: Option<Timestamp>,
    /// PV1-45, first repetition.
    pub discharged_at: Option<Timestamp>,
    /// MRG-1.1, the patient id merged into this one (A40); empty for other events.
    pub merged_patient_id: String,
    /// MRG-1.4.1, else MRG-1.4.2 (A40).
    pub merged_patient_id_authority: String,
}

fn missing_segment(event: &str, segment: &'static str) -> ParseError {
    ParseError::MissingSegment {
        message: format!("ADT^{event}"),
        segment,
    }
}

/// Reads an ADT event (see the module docs for what is required).
pub fn adt(msg: &Message) -> Result<AdtEvent> {
    let h = msg.header();
    if h.message_code != "ADT" {
        return Err(ParseError::UnsupportedMessageType {
            code: h.message_code.clone(),
            expected: "ADT",
        });
    }
    let evn = msg.segment("EVN");
    let event = match &h.trigger_event {
        t if t.is_empty() => evn.map(|e| e.leaf(1, 1, 1, 1)).unwrap_or_default(),
        t => t.clone(),
    };
    if !ADT_EVENTS.contains(&event.as_str()) {
        return Err(ParseError::UnsupportedEvent {
            code: "ADT".to_owned(),
            trigger: event,
            expected: "A01, A02, A03, A04, A08, A11, A12, A13 or A40",
        });
    }
    let pid = msg
        .segment("PID")
        .ok_or_else(|| missing_segment(&event, "PID"))?;
    let patient = Patient::from_pid(pid);
    if patient.id.is_empty() {
        return Err(ParseError::MissingField {
            field: "PID-3".to_owned(),
            name: "patient identifier list",
        });
    }
    let (mut recorded_at, mut occurred_at) = (None, None);
    if let Some(evn) = evn {
        recorded_at = timestamp::field(evn, "EVN", 2, "recorded date/time")?;
        occurred_at = timestamp::field(evn, "EVN", 6, "event occurred")?;
    }
    let mut out = AdtEvent {
        recorded_at: recorded_at.or(h.timestamp),
        occurred_at,
        patient_id: patient.id,
        patient_id_authority: patient.authority,
        patient_name: patient.name,
        birth_date: pid.leaf(7, 1, 1, 1),
        sex: pid.leaf(8, 1, 1, 1),
        patient_class: String::new(),
        location: String::new(),
        prior_location: String::new(),
        attending: String::new(),
        visit_number: String::new(),
        admitted_at: None,
        discharged_at: None,
        merged_patient_id: String::new(),
        merged_patient_id_authority: String::new(),
        event,
    };
    read_visit(msg, &mut out)?;
    if out.event == "A40" {
        read_merge(msg, &mut out)?;
    }
    Ok(out)
}

fn read_visit(msg: &Message, out: &mut AdtEvent) -> Result<()> {
    let Some(pv1) = msg.segment("PV1") else {
        return if out.event == "A40" {
            Ok(())
        } else {
            Err(missing_segment(&out.event, "PV1"))
        };
    };
    out.patient_class = pv1.leaf(2, 1, 1, 1);
    out.location = pv1.first_text(3);
    out.prior_location = pv1.first_text(6);
    out.attending = pv1.first_text(7);
    out.visit_number = pv1.leaf(19, 1, 1, 1);
    out.admitted_at = timestamp::field(pv1, "PV1", 44, "admit date/time")?;
    out.discharged_at = timestamp::field(pv1, "PV1", 45, "discharge date/time")?;
    Ok(())
}

fn read_merge(msg: &Message, out: &mut AdtEvent) -> Result<()> {
    let mrg = msg
        .segment("MRG")
        .ok_or_else(|| missing_segment("A40", "MRG"))?;
    out.merged_patient_id = mrg.leaf(1, 1, 1, 1);
    if out.merged_patient_id.is_empty() {
        return Err(ParseError::MissingField {
            field: "MRG-1".to_owned(),
            name: "prior patient identifier list",
        });
    }
    out.merged_patient_id_authority = match mrg.leaf(1, 1, 4, 1) {
        a if a.is_empty() => mrg.leaf(1, 1, 4, 2),
        a => a,
    };
    Ok(())
}
