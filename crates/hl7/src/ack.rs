//! Original-mode acknowledgements (ACK): MSH, MSA, and ERR for errors.
//!
//! ```text
//! MSH|^~\&|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|<now>||ACK^<trigger>^ACK|<control id>|<MSH-11>|<MSH-12>||||||<MSH-18>
//! MSA|AE|<original MSH-10>|<text>
//! ERR|||<code>^<table 0357 text>^HL70357|E||||<text>
//! ```
//!
//! Every segment ends with `\r`. Values are escaped with the original message's delimiters,
//! and the bytes are in its character set ([`crate::Header::text_encoding`]; ISO 8859-1
//! writes `?` for characters it lacks). The time is UTC with offset `+0000`.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::charset::{TextEncoding, encode};
use crate::error::{ParseError, error_code_text};
use crate::escape::{Delims, Encoding, escape};
use crate::message::{Header, parse_header_lenient};

/// MSA-1 in original mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// `AA`: accepted.
    Accept,
    /// `AE`: application error (the message was read; its content could not be used).
    Error,
    /// `AR`: rejected (unreadable, or a message type, event, version or processing id the
    /// receiver does not take).
    Reject,
}

impl AckCode {
    /// `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }

    /// Reads MSA-1: `AA`/`AE`/`AR`, and the enhanced-mode commit codes `CA`/`CE`/`CR` as
    /// the same three.
    pub fn from_code(s: &str) -> Option<AckCode> {
        match s {
            "AA" | "CA" => Some(AckCode::Accept),
            "AE" | "CE" => Some(AckCode::Error),
            "AR" | "CR" => Some(AckCode::Reject),
            _ => None,
        }
    }
}

/// MSH-12 of [`reject_unparsed`], whose message's version is unknown.
pub const UNPARSED_ACK_VERSION: &str = "2.5";

/// Builds one segment: fields are appended after the id, separated by the field separator.
struct Seg<'a> {
    out: &'a mut String,
    d: Delims,
}

impl Seg<'_> {
    /// An unescaped text value.
    fn text(&mut self, value: &str) -> &mut Self {
        self.out.push(self.d.field);
        self.out.push_str(&escape(value, &self.d));
        self
    }

    /// A value in text form (`a^b&c`), split at the default delimiters and written with the
    /// message's.
    fn composite(&mut self, value: &str) -> &mut Self {
        self.out.push(self.d.field);
        for (i, comp) in value.split('^').enumerate() {
            if i > 0 {
                self.out.push(self.d.enc.component);
            }
            for (j, sub) in comp.split('&').enumerate() {
                if j > 0 {
                    self.out.push(self.d.enc.subcomponent);
                }
                self.out.push_str(&escape(sub, &self.d));
            }
        }
        self
    }

    /// Unescaped components, escaped and joined with the component separator.
    fn components(&mut self, parts: &[&str]) -> &mut Self {
        self.out.push(self.d.field);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.out.push(self.d.enc.component);
            }
            self.out.push_str(&escape(p, &self.d));
        }
        self
    }

    /// MSH-18 as it was read (raw, so that it reads back the same), escaped only if it
    /// holds a delimiter or a line break.
    fn charset(&mut self, value: &str) -> &mut Self {
        let e = &self.d.enc;
        let plain = !value.contains(|c| {
            c == self.d.field || c == e.component || c == e.repetition || c == '\r' || c == '\n'
        });
        if !plain {
            return self.text(value);
        }
        self.out.push(self.d.field);
        self.out.push_str(value);
        self
    }

    fn empty(&mut self, n: usize) -> &mut Self {
        for _ in 0..n {
            self.out.push(self.d.field);
        }
        self
    }

    fn end(&mut self) {
        self.out.push('\r');
    }

    /// MSA (MSA-3 only when there is a text).
    fn msa(&mut self, code: AckCode, original: &str, text: &str) {
        self.out.push_str("MSA");
        self.text(code.as_str()).text(original);
        if !text.is_empty() {
            self.text(text);
        }
        self.end();
    }
}

fn hl7_time(now: DateTime<Utc>) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// An original-mode ACK for the message whose header is `header` (see the module docs):
/// sender and receiver swapped, the same delimiters, MSH-9 `ACK^<trigger>^ACK` (`ACK` when
/// the original has no trigger), MSH-10 `control_id`, MSH-11, MSH-12 and MSH-18 echoed (`P`
/// and [`UNPARSED_ACK_VERSION`] for an empty MSH-11 or MSH-12),
/// MSA-1 `code`, MSA-2 the original control id, MSA-3 the error text. An ERR segment
/// (ERR-3 `<code>^<text>^HL70357`, ERR-4 severity, ERR-8 the text) follows when `error` is
/// given or `code` is not `AA`: severity `E` for AE/AR (code 207 when no `error` is given),
/// `W` for an AA with an `error`.
pub fn ack(
    header: &Header,
    code: AckCode,
    error: Option<(u16, &str)>,
    control_id: &str,
    now: DateTime<Utc>,
) -> Vec<u8> {
    let d = header.delims();
    let mut out = String::with_capacity(256);
    out.push_str("MSH");
    out.push(d.field);
    out.push_str(&d.enc.to_msh2());
    let mut msh = Seg { out: &mut out, d };
    msh.composite(&header.receiving_application)
        .composite(&header.receiving_facility)
        .composite(&header.sending_application)
        .composite(&header.sending_facility)
        .text(&hl7_time(now))
        .empty(1);
    if header.trigger_event.is_empty() {
        msh.text("ACK");
    } else {
        msh.components(&["ACK", &header.trigger_event, "ACK"]);
    }
    let or = |default: &str, given: &str| if given.is_empty() { default } else { given }.to_owned();
    let processing_id = or("P", &header.processing_id);
    let version = or(UNPARSED_ACK_VERSION, &header.version);
    msh.text(control_id).text(&processing_id).text(&version);
    if let Some(charset) = &header.charset {
        msh.empty(5).charset(charset);
    }
    msh.end();
    let text = error.map(|(_, t)| t).unwrap_or_default();
    Seg { out: &mut out, d }.msa(code, &header.control_id, text);
    let err = match (code, error) {
        (AckCode::Accept, None) => None,
        (AckCode::Accept, Some((c, t))) => Some((c, t, "W")),
        (_, Some((c, t))) => Some((c, t, "E")),
        (_, None) => Some((207, "", "E")),
    };
    if let Some((c, t, severity)) = err {
        out.push_str("ERR");
        Seg { out: &mut out, d }
            .empty(2)
            .components(&[&c.to_string(), error_code_text(c), "HL70357"])
            .text(severity)
            .empty(3)
            .text(t)
            .end();
    }
    encode(&out, header.text_encoding)
}

/// A header for answering bytes that are not a readable message.
fn unparsed_header() -> Header {
    Header {
        field_separator: '|',
        encoding: Encoding::default(),
        sending_application: String::new(),
        sending_facility: String::new(),
        receiving_application: String::new(),
        receiving_facility: String::new(),
        timestamp: None,
        message_code: String::new(),
        trigger_event: String::new(),
        structure: String::new(),
        control_id: String::new(),
        processing_id: "P".to_owned(),
        version: UNPARSED_ACK_VERSION.to_owned(),
        accept_ack_type: String::new(),
        application_ack_type: String::new(),
        charset: None,
        text_encoding: TextEncoding::Utf8,
    }
}

/// An ACK for bytes that could not be read into a header: a minimal MSH (default delimiters,
/// MSH-9 `ACK`, MSH-10 `control_id`, MSH-11 `P`, MSH-12 [`UNPARSED_ACK_VERSION`], no MSH-18;
/// the bytes are UTF-8), `MSA|AR||<reason>` and ERR with code 100 (segment sequence error).
pub fn reject_unparsed(reason: &str, control_id: &str, now: DateTime<Utc>) -> Vec<u8> {
    reject_unparsed_code(100, reason, control_id, now)
}

/// [`reject_unparsed`] with the ERR-3 code given.
pub fn reject_unparsed_code(
    code: u16,
    reason: &str,
    control_id: &str,
    now: DateTime<Utc>,
) -> Vec<u8> {
    ack(
        &unparsed_header(),
        AckCode::Reject,
        Some((code, reason)),
        control_id,
        now,
    )
}

/// [`reject_unparsed`] for a [`ParseError`] of [`crate::parse`]: its code and its message.
pub fn reject_parse_error(err: &ParseError, control_id: &str, now: DateTime<Utc>) -> Vec<u8> {
    reject_unparsed_code(err.hl7_code(), &err.to_string(), control_id, now)
}

/// The answer to bytes that [`crate::parse`] rejected with `err`: an ACK with the code
/// [`ParseError::ack_code`] suggests, ERR-3 [`ParseError::hl7_code`] and the error's text,
/// built on as much of the original header as can be read ([`parse_header_lenient`]: the
/// sender's delimiters, applications, control id in MSA-2, version); [`reject_parse_error`]
/// when not even that can be read.
pub fn ack_error(bytes: &[u8], err: &ParseError, control_id: &str, now: DateTime<Utc>) -> Vec<u8> {
    match parse_header_lenient(bytes) {
        Some(header) => ack(
            &header,
            err.ack_code(),
            Some((err.hl7_code(), &err.to_string())),
            control_id,
            now,
        ),
        None => reject_parse_error(err, control_id, now),
    }
}
