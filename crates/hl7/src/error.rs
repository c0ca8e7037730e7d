//! Errors of the HL7 parser and the one table that maps each of them to an HL7 error code
//! (table 0357, sent in ERR-3 of an ACK) and to an acknowledgement code (AE or AR).
//!
//! No error carries a patient value: they name the segment and field (`PID-3`, `OBX(2)-14`)
//! and say what is wrong, so they can go into logs and into ACKs unchanged. Header values
//! that identify no one (message type, character set) are quoted.

use crate::ack::AckCode;

/// Result of a parse.
pub type Result<T, E = ParseError> = std::result::Result<T, E>;

/// Why bytes are not an HL7 message this crate can read, or why a message is not the kind
/// asked for ([`crate::observations`], [`crate::adt()`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No segment at all (empty input, or only white space).
    #[error("the message is empty")]
    Empty,

    /// More bytes than [`crate::Limits::max_bytes`].
    #[error("the message is {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of the input.
        bytes: usize,
        /// The limit.
        limit: usize,
    },

    /// More segments, or more fields in one segment, than [`crate::Limits`] allows.
    #[error("the message has more than {limit} {what}")]
    TooMany {
        /// `segments` or `fields in a segment`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },

    /// The first segment is not `MSH` (batches, `FHS`/`BHS`, are not read either).
    #[error("the message does not start with an MSH segment (it starts with {found:?})")]
    NoHeader {
        /// The first three bytes, as ISO 8859-1 and escaped for display.
        found: String,
    },

    /// MSH-1 or MSH-2 cannot be used as delimiters.
    #[error("{field} ({name}) {reason}")]
    BadDelimiters {
        /// `MSH-1` or `MSH-2`.
        field: &'static str,
        /// The field's name.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// A segment whose id is not three upper-case letters or digits starting with a letter.
    #[error(
        "segment {index} has an invalid segment id (three upper-case letters or digits expected)"
    )]
    BadSegmentId {
        /// The segment's position in the message, 1-based (MSH is 1).
        index: usize,
    },

    /// A second `MSH` segment in one message.
    #[error("segment {index} is a second MSH segment (batches are not supported)")]
    RepeatedHeader {
        /// The segment's position in the message, 1-based.
        index: usize,
    },

    /// A required field (or component) is empty or absent.
    #[error("{field} ({name}) is empty")]
    MissingField {
        /// Where: `MSH-10`, `PID-3`, `OBX(2)-3` (the second OBX).
        field: String,
        /// The field's name in the standard.
        name: &'static str,
    },

    /// A field whose value does not fit its data type (a timestamp, a number).
    #[error("{field} ({name}) is not valid: {reason}")]
    InvalidField {
        /// Where: `MSH-7`, `OBX(2)-14`.
        field: String,
        /// The field's name in the standard.
        name: &'static str,
        /// What is wrong (never the value itself).
        reason: String,
    },

    /// A segment the message kind requires is missing.
    #[error("the {message} message has no {segment} segment")]
    MissingSegment {
        /// The message type, `ORU^R01`, `ADT^A40`.
        message: String,
        /// The missing segment's id.
        segment: &'static str,
    },

    /// A DTM value ([`crate::Timestamp::parse`]) that is not valid.
    #[error("invalid timestamp: {reason}")]
    InvalidTimestamp {
        /// What is wrong.
        reason: &'static str,
    },

    /// A local time without offset that falls into a daylight saving gap of the zone.
    #[error("the local time {local} does not exist in {zone} (daylight saving gap)")]
    NonexistentLocalTime {
        /// The wall-clock time, `2024-03-31 01:30:00`.
        local: String,
        /// The zone's IANA name.
        zone: String,
    },

    /// MSH-18 declares UTF-8 but the bytes are not UTF-8.
    #[error(
        "MSH-18 (character set) declares {charset:?} but the message is not valid UTF-8 (at byte {offset})"
    )]
    InvalidUtf8 {
        /// MSH-18 as written.
        charset: String,
        /// Where the first invalid byte is (after a byte order mark and leading white space).
        offset: usize,
    },

    /// MSH-18 names a character set this crate does not decode.
    #[error(
        "MSH-18 (character set) {charset:?} is not supported (UNICODE UTF-8, 8859/1 and ASCII are)"
    )]
    UnsupportedCharset {
        /// MSH-18 as written (at most 40 characters).
        charset: String,
    },

    /// MSH-9.1 is not the message code asked for.
    #[error("message type {code:?} is not supported here ({expected} expected)")]
    UnsupportedMessageType {
        /// MSH-9.1.
        code: String,
        /// What the function reads.
        expected: &'static str,
    },

    /// MSH-9.2 (or EVN-1) is not an event this crate reads for the message code.
    #[error("event {code}^{trigger} is not supported ({expected} expected)")]
    UnsupportedEvent {
        /// MSH-9.1.
        code: String,
        /// MSH-9.2, or EVN-1 for an ADT without it.
        trigger: String,
        /// What the function reads.
        expected: &'static str,
    },
}

impl ParseError {
    /// The HL7 error code (table 0357) for ERR-3: 100 segment sequence error, 101 required
    /// field missing, 102 data type error, 103 table value not found, 200 unsupported message
    /// type, 201 unsupported event code, 207 application internal error (used for inputs over
    /// this receiver's [`crate::Limits`]).
    pub fn hl7_code(&self) -> u16 {
        match self {
            ParseError::Empty
            | ParseError::NoHeader { .. }
            | ParseError::BadSegmentId { .. }
            | ParseError::RepeatedHeader { .. }
            | ParseError::MissingSegment { .. } => 100,
            ParseError::MissingField { .. } => 101,
            ParseError::BadDelimiters { .. }
            | ParseError::InvalidField { .. }
            | ParseError::InvalidTimestamp { .. }
            | ParseError::NonexistentLocalTime { .. }
            | ParseError::InvalidUtf8 { .. } => 102,
            ParseError::UnsupportedCharset { .. } => 103,
            ParseError::UnsupportedMessageType { .. } => 200,
            ParseError::UnsupportedEvent { .. } => 201,
            ParseError::TooLarge { .. } | ParseError::TooMany { .. } => 207,
        }
    }

    /// The acknowledgement this error calls for in original mode: [`AckCode::Reject`] (AR)
    /// when the message cannot be read as HL7 or its type/event is not accepted at all,
    /// [`AckCode::Error`] (AE) when it was read but its content is wrong.
    pub fn ack_code(&self) -> AckCode {
        match self {
            ParseError::Empty
            | ParseError::TooLarge { .. }
            | ParseError::TooMany { .. }
            | ParseError::NoHeader { .. }
            | ParseError::BadDelimiters { .. }
            | ParseError::BadSegmentId { .. }
            | ParseError::RepeatedHeader { .. }
            | ParseError::InvalidUtf8 { .. }
            | ParseError::UnsupportedCharset { .. }
            | ParseError::UnsupportedMessageType { .. }
            | ParseError::UnsupportedEvent { .. } => AckCode::Reject,
            ParseError::MissingField { .. }
            | ParseError::InvalidField { .. }
            | ParseError::MissingSegment { .. }
            | ParseError::InvalidTimestamp { .. }
            | ParseError::NonexistentLocalTime { .. } => AckCode::Error,
        }
    }
}

/// The text of an HL7 error code (table 0357), for ERR-3.2; `"Unknown error"` for codes not
/// in the table.
pub fn error_code_text(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        207 => "Application internal error",
        _ => "Unknown error",
    }
}
