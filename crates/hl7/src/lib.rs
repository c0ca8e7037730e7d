//! `medlake-hl7`: HL7 v2 messages and MLLP framing, in pure Rust, for the MLLP door
//! (`medlake-mllp`). It owns reading bytes into messages and building acknowledgements; it
//! does no I/O, keeps no state between messages and must not depend on the engine or the
//! lake.
//!
//! # What it reads
//!
//! - **MLLP** ([`mllp`]): an incremental [`mllp::Decoder`] over a buffer of socket reads
//!   (garbage between frames skipped, a size limit, resynchronisation on a new start
//!   block), and [`mllp::frame`].
//! - **Messages** ([`parse`], [`parse_with`] and [`Limits`]): segments ended by `\r` (`\n`
//!   and `\r\n` are accepted too, empty lines skipped); delimiters from MSH-1 and MSH-2
//!   (any printable non-alphanumeric ASCII characters, 4 or 5 encoding characters: v2.7's
//!   truncation character); fields, repetitions, components and subcomponents
//!   ([`Segment`], [`Field`], [`Repetition`], [`Component`]); escape sequences
//!   ([`escape`]); the character set of MSH-18 ([`charset`]: UTF-8, ISO 8859-1, and
//!   UTF-8-else-Latin-1 when undeclared); Terser-like paths ([`Message::get`]).
//! - **The header** ([`Header`]): MSH-9 message type, MSH-10 control id, MSH-11 processing
//!   id and MSH-12 version are required; the rest is returned as found.
//! - **Date/times** ([`Timestamp`]): DTM with its precision and optional offset, converted to
//!   UTC in a zone that is DST-correct.
//! - **Observations** ([`observations`]): every OBX of an ORU^R01 with its patient, visit
//!   and order (IHE PCD-01 from bedside monitors: MDC codes, EUI-64 equipment ids; LOINC).
//! - **ADT events** ([`adt()`]): A01, A02, A03, A04, A08, A11, A12, A13, A40.
//! - **Acknowledgements** ([`ack()`], [`ack_error`], [`reject_unparsed`]): original-mode ACK
//!   with MSA and ERR; every [`ParseError`] has an HL7 error code ([`ParseError::hl7_code`])
//!   and a suggested acknowledgement ([`ParseError::ack_code`]). For bytes [`parse`] rejects,
//!   [`ack_error`] answers with whatever of the MSH could be read ([`parse_header_lenient`]),
//!   so the sender gets its control id back in MSA-2 whenever it was readable.
//!
//! # A door's loop, in short
//!
//! ```
//! use medlake_hl7::{AckCode, ack, ack_error, mllp, observations, parse};
//!
//! let now = chrono::Utc::now();
//! let mut decoder = mllp::Decoder::new(1 << 20);
//! let mut buf = mllp::frame(
//!     b"MSH|^~\\&|MON|ICU|LAKE|HOSP|20240315103000+0100||ORU^R01|M1|P|2.6\r\
//!       OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|262688^MDC_DIM_PERCENT^MDC|||||F\r",
//! );
//! while let Some(payload) = decoder.decode(&mut buf).expect("frame within the limit") {
//!     let reply = match parse(&payload) {
//!         Ok(msg) => match observations(&msg) {
//!             Ok(obs) => {
//!                 assert_eq!((obs[0].code.as_str(), obs[0].numeric), ("150456", Some(97.0)));
//!                 ack(msg.header(), AckCode::Accept, None, "A1", now)
//!             }
//!             Err(e) => ack(msg.header(), e.ack_code(), Some((e.hl7_code(), &e.to_string())), "A1", now),
//!         },
//!         Err(e) => ack_error(&payload, &e, "A1", now),
//!     };
//!     let framed = mllp::frame(&reply); // written back to the socket
//!     assert!(framed.starts_with(b"\x0bMSH|^~\\&|LAKE|HOSP|MON|ICU|"));
//! }
//! ```
//!
//! # What it does not do
//!
//! - No validation against the HL7 message structure tables beyond what is listed above
//!   (segment order and groups, cardinalities, data types of other fields, table values
//!   are not checked); unknown and Z segments are kept and can be read like any other.
//! - No batches (FHS/BHS), no enhanced-mode acknowledgement logic, no ISO 2022 character
//!   set switching (`\C..\`, `\M..\` escapes are kept as written), no character sets other
//!   than UTF-8, ISO 8859-1 and ASCII, no formatted-text rendering (`\H\`, `\N\`, `.sp` ...
//!   are kept as written; only `\.br\` becomes a line feed).
//! - No panics on input: every byte sequence gives `Ok` or `Err`, in time linear in its
//!   length (a test feeds random and mutated messages).

#![warn(clippy::print_stdout, missing_docs)]

pub mod ack;
pub mod adt;
pub mod charset;
pub mod error;
pub mod escape;
pub mod message;
pub mod mllp;
pub mod oru;
pub mod segment;
pub mod timestamp;

pub use ack::{
    AckCode, UNPARSED_ACK_VERSION, ack, ack_error, reject_parse_error, reject_unparsed,
    reject_unparsed_code,
};
pub use adt::{ADT_EVENTS, AdtEvent, adt};
pub use charset::TextEncoding;
pub use error::{ParseError, Result, error_code_text};
pub use escape::Encoding;
pub use message::{Header, Limits, Message, parse, parse_header_lenient, parse_with};
pub use oru::{Observation, observations};
pub use segment::{Component, Field, Repetition, Segment};
pub use timestamp::{Precision, Timestamp};

/// Escapes `text` for one HL7 value with the delimiters of `header` (field, component,
/// repetition, subcomponent, escape and truncation characters; `\n` as `\.br\` (`\X0A\`
/// when `.` is a delimiter or the escape character), `\r` as `\X0D\`).
pub fn escape_text(text: &str, header: &Header) -> String {
    escape::escape(text, &header.delims())
}

/// Unescapes one HL7 value written with the delimiters of `header` (see [`escape`]).
pub fn unescape_text(raw: &str, header: &Header) -> String {
    escape::unescape(raw, &header.delims()).into_owned()
}
