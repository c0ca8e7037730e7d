//! One HL7 v2 message as the MLLP door (`medlake-mllp`'s `handle`) treats it: parsed (with
//! the character set of MSH-18 and escape sequences), then its observations (ORU) and ADT
//! event read, and an acknowledgement built; bytes that do not parse are answered from
//! whatever of their MSH is readable. Nothing may panic (overflow checks and debug
//! assertions are on), and what is built must parse back: every ACK is a message whose
//! MSA-1 is its code, MSA-2 the sender's control id and ERR-8 the error text, escaped and
//! unescaped without loss.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use medlake_hl7::{
    AckCode, Message, TextEncoding, Timestamp, ack, ack_error, adt, escape_text, observations,
    parse, parse_header_lenient, reject_parse_error, reject_unparsed_code, unescape_text,
};

/// Terser paths the door and the views read, and some past every bound.
const PATHS: &[&str] = &[
    "MSH-1",
    "MSH-2",
    "MSH-9-2",
    "MSH-18",
    "PID-3",
    "PID-3(2)-4-2",
    "PID-5-2",
    "PV1-3",
    "OBX-5",
    "OBX(2)-5-1-1",
    "OBX(999999)-1",
    "NTE-3(999999)-999999-999999",
    "OBX(18446744073709551615)-1",
    "ZZZ-1",
];

fuzz_target!(|data: &[u8]| {
    let now = Utc.with_ymd_and_hms(2024, 3, 15, 10, 30, 0).unwrap();
    let msg = match parse(data) {
        Ok(msg) => msg,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let _ = (e.hl7_code(), e.ack_code());
            let reject = reject_parse_error(&e, "R1", now);
            parse(&reject).unwrap_or_else(|x| panic!("the reject of {e} does not parse: {x}"));
            let header = parse_header_lenient(data);
            let answer = ack_error(data, &e, "R1", now);
            let back =
                parse(&answer).unwrap_or_else(|x| panic!("ack_error's answer does not parse: {x}"));
            assert_eq!(back.get("MSA-1").as_deref(), Some(e.ack_code().as_str()));
            if let Some(h) = header {
                if h.control_id.is_ascii() {
                    assert_eq!(
                        back.get("MSA-2"),
                        Some(h.control_id.clone()).filter(|c| !c.is_empty())
                    );
                }
                let retry = ack(&h, AckCode::Reject, Some((207, "send it again")), "R2", now);
                parse(&retry).unwrap_or_else(|x| panic!("a retry AR does not parse: {x}"));
            }
            let unparsed = reject_unparsed_code(207, &e.to_string(), "R3", now);
            parse(&unparsed).unwrap_or_else(|x| panic!("reject_unparsed does not parse: {x}"));
            return;
        }
    };
    walk(&msg);
    for p in PATHS {
        let _ = msg.get(p);
    }
    if let Ok(obs) = observations(&msg) {
        assert!(!obs.is_empty(), "an ORU without observations is an error");
        for o in &obs {
            if let Some(t) = &o.observed_at {
                let _ = t.to_utc_micros(chrono_tz::Europe::London);
            }
        }
    }
    let _ = adt(&msg);
    let h = msg.header();
    // The error text of an ACK is read from the message itself (any field's text), so that
    // escaping meets every character the message's delimiters and character set allow.
    let texts: Vec<String> = msg
        .all_segments()
        .iter()
        .take(4)
        .filter_map(|s| s.field(3).map(|f| f.text()))
        .chain(["x|^~\\&#\r\n".to_owned()])
        .collect();
    for text in &texts {
        let escaped = escape_text(text, h);
        assert_eq!(
            &unescape_text(&escaped, h),
            text,
            "escape then unescape: {escaped:?}"
        );
    }
    for code in [AckCode::Accept, AckCode::Error, AckCode::Reject] {
        for text in &texts {
            let a = ack(h, code, Some((102, text)), "ACKID", now);
            let back = parse(&a).unwrap_or_else(|e| panic!("the ACK does not parse: {e}"));
            assert_eq!(back.get("MSA-1").as_deref(), Some(code.as_str()));
            if h.control_id.is_ascii() {
                assert_eq!(back.get("MSA-2").as_deref(), Some(h.control_id.as_str()));
            }
            assert_eq!(back.header().encoding, h.encoding);
            assert_eq!(back.header().field_separator, h.field_separator);
            // An ACK to an undeclared (MSH-18 empty) message is written in the encoding the
            // message was read in; read back, it is UTF-8 whenever its bytes are valid UTF-8
            // (the rule for undeclared messages), so the text comes back only when both
            // readings agree, as they do for the sender, who knows its own encoding.
            if encodable(text, h.text_encoding) && back.header().text_encoding == h.text_encoding {
                assert_eq!(
                    back.get("ERR-8").unwrap_or_default(),
                    *text,
                    "the error text comes back from the ACK"
                );
            }
        }
    }
    if let Some(t) = h.timestamp {
        assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        let _ = t.to_utc_micros(chrono_tz::America::Santiago);
    }
});

/// Whether an ACK in `encoding` can carry `text` unchanged (ISO 8859-1 has no other
/// characters: the rest become `?`).
fn encodable(text: &str, encoding: TextEncoding) -> bool {
    match encoding {
        TextEncoding::Utf8 => true,
        TextEncoding::Latin1 => text.chars().all(|c| u32::from(c) <= 0xFF),
    }
}

/// Every field, repetition, component and subcomponent, unescaped.
fn walk(m: &Message) {
    for s in m.all_segments() {
        for n in 0..=s.field_count() + 1 {
            let Some(f) = s.field(n) else { continue };
            let _ = f.text();
            for r in f.repetitions() {
                let _ = r.text();
                for c in r.components() {
                    let _ = c.text();
                    for sub in c.subcomponents() {
                        let _ = sub.len();
                    }
                }
            }
        }
    }
}
