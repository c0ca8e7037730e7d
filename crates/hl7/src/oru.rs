//! Observations of an ORU^R01 (unsolicited observation result), one per OBX, each with its
//! patient, visit and order context: the segments are read in order and every OBX takes
//! the PID, PV1 and OBR that came before it (a PID starts a new patient: its PV1 and OBR
//! are forgotten; an OBR starts a new order). An OBX before any OBR is accepted with an
//! empty order. The group structure of ORU_R01 is not checked further.

use crate::error::{ParseError, Result};
use crate::message::Message;
use crate::segment::Segment;
use crate::timestamp::{self, Timestamp};

/// One OBX of an ORU^R01 with its context. Text values are unescaped and in the text form
/// of [`crate::segment`] (default delimiters, trailing empty parts dropped); absent values
/// are empty strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Which OBX of the message this is (1-based), for error messages and stable keys.
    pub index: usize,
    /// OBX-1, when present.
    pub set_id: Option<i64>,
    /// OBX-2 (`NM`, `SN`, `ST`, `CWE`, ...).
    pub value_type: String,
    /// OBX-3.1 identifier (`150456`, `8867-4`); required.
    pub code: String,
    /// OBX-3.2 text (`MDC_PULS_OXIM_SAT_O2`, `Heart rate`).
    pub code_text: String,
    /// OBX-3.3 coding system (`MDC`, `LN`).
    pub coding_system: String,
    /// OBX-4 sub-id (IHE PCD-01: the containment path `1.2.1.3`).
    pub sub_id: String,
    /// OBX-5: every repetition in text form, joined with `~`.
    pub value: String,
    /// OBX-5 as a number: for `NM`, and for `SN` without comparator (or `=`) and without a
    /// second number. `None` for other types and empty values.
    pub numeric: Option<f64>,
    /// OBX-6.1 units identifier (`262688`, `/min`).
    pub units: String,
    /// OBX-6.2 units text (`MDC_DIM_PERCENT`).
    pub units_text: String,
    /// OBX-6.3 units coding system (`MDC`, `UCUM`).
    pub units_system: String,
    /// OBX-7.
    pub reference_range: String,
    /// OBX-8, repetitions joined with `~`.
    pub abnormal_flags: String,
    /// OBX-11 result status (`F`, `R`, `X`, ...).
    pub status: String,
    /// OBX-14, else OBR-7 of the order, else MSH-7.
    pub observed_at: Option<Timestamp>,
    /// OBX-18, first repetition: entity identifier (component 1), or the universal id
    /// (component 3) when that is empty; IHE PCD-01 puts the device's EUI-64 there.
    pub equipment: String,
    /// PID-3.1 of the first repetition whose identifier type (PID-3.5) is `MR`, else of the
    /// first repetition; empty without PID.
    pub patient_id: String,
    /// PID-3.4.1 (assigning authority namespace), else PID-3.4.2 (universal id), of the same
    /// repetition.
    pub patient_id_authority: String,
    /// PID-5.1 and PID-5.2 of the first repetition: `family^given`.
    pub patient_name: String,
    /// PV1-3 (point of care^room^bed^facility...) in text form.
    pub location: String,
    /// PV1-19.1 visit number.
    pub visit_number: String,
    /// OBR-3.1 filler order number, else OBR-2.1 placer order number.
    pub order_id: String,
    /// OBR-4.1 universal service identifier.
    pub order_code: String,
}

/// The patient a PID identifies, as observations and ADT events report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Patient {
    pub id: String,
    pub authority: String,
    pub name: String,
}

impl Patient {
    pub(crate) fn from_pid(pid: &Segment) -> Patient {
        let reps: Vec<_> = pid
            .field(3)
            .map(|f| f.repetitions().collect())
            .unwrap_or_default();
        let chosen = reps
            .iter()
            .find(|r| r.component(5).is_some_and(|c| c.text() == "MR"))
            .or(reps.first());
        let sub = |c: usize, s: usize| {
            chosen
                .and_then(|r| r.component(c))
                .and_then(|c| c.subcomponent(s))
                .unwrap_or_default()
        };
        let authority = match sub(4, 1) {
            a if a.is_empty() => sub(4, 2),
            a => a,
        };
        Patient {
            id: sub(1, 1),
            authority,
            name: family_given(pid, 5),
        }
    }
}

/// `family^given` from components 1 and 2 of the first repetition of an XPN/XCN-like field.
pub(crate) fn family_given(seg: &Segment, f: usize) -> String {
    let family = seg.component_text(f, 1);
    let given = seg.component_text(f, 2);
    if given.is_empty() {
        family
    } else {
        format!("{family}^{given}")
    }
}

#[derive(Default)]
struct Context {
    patient: Patient,
    location: String,
    visit_number: String,
    order_id: String,
    order_code: String,
    order_time: Option<Timestamp>,
}

/// Reads every OBX of an ORU^R01. Errors: another message type or event, no OBX, an OBX
/// without OBX-3.1, an invalid OBX-1, OBX-14 or OBR-7, a `NM` (or simple `SN`) value that is
/// not a number.
pub fn observations(msg: &Message) -> Result<Vec<Observation>> {
    let h = msg.header();
    if h.message_code != "ORU" {
        return Err(ParseError::UnsupportedMessageType {
            code: h.message_code.clone(),
            expected: "ORU^R01",
        });
    }
    if h.trigger_event != "R01" {
        return Err(ParseError::UnsupportedEvent {
            code: h.message_code.clone(),
            trigger: h.trigger_event.clone(),
            expected: "ORU^R01",
        });
    }
    let mut ctx = Context::default();
    let mut out = Vec::new();
    let mut obr_count = 0;
    for seg in msg.all_segments() {
        match seg.id() {
            "PID" => {
                ctx = Context {
                    patient: Patient::from_pid(seg),
                    ..Context::default()
                }
            }
            "PV1" => {
                ctx.location = seg.first_text(3);
                ctx.visit_number = seg.leaf(19, 1, 1, 1);
            }
            "OBR" => {
                obr_count += 1;
                let label = format!("OBR({obr_count})");
                ctx.order_time = timestamp::field(seg, &label, 7, "observation date/time")?;
                ctx.order_id = match seg.leaf(3, 1, 1, 1) {
                    id if id.is_empty() => seg.leaf(2, 1, 1, 1),
                    id => id,
                };
                ctx.order_code = seg.leaf(4, 1, 1, 1);
            }
            "OBX" => out.push(observation(seg, out.len() + 1, &ctx, h.timestamp)?),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(ParseError::MissingSegment {
            message: "ORU^R01".to_owned(),
            segment: "OBX",
        });
    }
    Ok(out)
}

fn observation(
    obx: &Segment,
    index: usize,
    ctx: &Context,
    msh_time: Option<Timestamp>,
) -> Result<Observation> {
    let label = format!("OBX({index})");
    let code = obx.leaf(3, 1, 1, 1);
    if code.is_empty() {
        return Err(ParseError::MissingField {
            field: format!("{label}-3"),
            name: "observation identifier",
        });
    }
    let set_id = match obx.leaf(1, 1, 1, 1) {
        s if s.is_empty() => None,
        s => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| ParseError::InvalidField {
                    field: format!("{label}-1"),
                    name: "set id",
                    reason: "not an integer".to_owned(),
                })?,
        ),
    };
    let value_type = obx.leaf(2, 1, 1, 1);
    let observed_at = timestamp::field(obx, &label, 14, "date/time of the observation")?;
    let equipment = match obx.leaf(18, 1, 1, 1) {
        e if e.is_empty() => obx.leaf(18, 1, 3, 1),
        e => e,
    };
    Ok(Observation {
        index,
        set_id,
        numeric: numeric(obx, &value_type, &label)?,
        value_type,
        code,
        code_text: obx.component_text(3, 2),
        coding_system: obx.component_text(3, 3),
        sub_id: obx.leaf(4, 1, 1, 1),
        value: obx.field_text(5),
        units: obx.component_text(6, 1),
        units_text: obx.component_text(6, 2),
        units_system: obx.component_text(6, 3),
        reference_range: obx.first_text(7),
        abnormal_flags: obx.field_text(8),
        status: obx.leaf(11, 1, 1, 1),
        observed_at: observed_at.or(ctx.order_time).or(msh_time),
        equipment,
        patient_id: ctx.patient.id.clone(),
        patient_id_authority: ctx.patient.authority.clone(),
        patient_name: ctx.patient.name.clone(),
        location: ctx.location.clone(),
        visit_number: ctx.visit_number.clone(),
        order_id: ctx.order_id.clone(),
        order_code: ctx.order_code.clone(),
    })
}

/// OBX-5 as a number for `NM` and simple `SN` values.
fn numeric(obx: &Segment, value_type: &str, label: &str) -> Result<Option<f64>> {
    let Some(field) = obx.field(5) else {
        return Ok(None);
    };
    let text = match value_type {
        "NM" => {
            if field.repetitions().nth(1).is_some() || !obx.leaf(5, 1, 2, 1).is_empty() {
                return Err(not_a_number(
                    label,
                    "a NM value has one repetition and one component",
                ));
            }
            obx.leaf(5, 1, 1, 1)
        }
        "SN" => {
            let comparator = obx.leaf(5, 1, 1, 1);
            let simple = (comparator.is_empty() || comparator == "=")
                && obx.leaf(5, 1, 3, 1).is_empty()
                && obx.leaf(5, 1, 4, 1).is_empty();
            if !simple {
                return Ok(None);
            }
            obx.leaf(5, 1, 2, 1)
        }
        _ => return Ok(None),
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse_nm(text)
        .map(Some)
        .ok_or_else(|| not_a_number(label, "not a number"))
}

fn not_a_number(label: &str, reason: &str) -> ParseError {
    ParseError::InvalidField {
        field: format!("{label}-5"),
        name: "observation value",
        reason: reason.to_owned(),
    }
}

/// HL7 NM: an optional sign, digits, an optional decimal point with digits (`-1.5`, `+.5`,
/// `007`); no exponent, no `inf`/`NaN`.
pub(crate) fn parse_nm(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok || s.len() > 64 {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}
