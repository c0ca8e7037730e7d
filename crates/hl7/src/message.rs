//! Parsing a message: delimiters from MSH, character set from MSH-18, segments, the header.

use crate::charset::{self, TextEncoding};
use crate::error::{ParseError, Result};
use crate::escape::{Delims, Encoding};
use crate::segment::{Loc, Segment, number_and_index, valid_segment_id};
use crate::timestamp::Timestamp;

/// Bounds on what [`parse_with`] accepts; inputs past them are an error, never a long
/// computation or a large allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes (default 16 MiB).
    pub max_bytes: usize,
    /// Most segments in a message (default 100 000).
    pub max_segments: usize,
    /// Most fields in one segment (default 1 000; HL7 segments define fewer than 100).
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_segments: 100_000,
            max_fields: 1_000,
        }
    }
}

/// A parsed message: its header and its segments in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    header: Header,
    segments: Vec<Segment>,
}

/// The MSH segment read into named values. Text values are unescaped, in the text form of
/// [`crate::segment`] (`APP^1.2.3^ISO` for an HD with three components); numbers in the docs
/// are MSH field numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// MSH-1.
    pub field_separator: char,
    /// MSH-2.
    pub encoding: Encoding,
    /// MSH-3 (may be empty).
    pub sending_application: String,
    /// MSH-4 (may be empty).
    pub sending_facility: String,
    /// MSH-5 (may be empty).
    pub receiving_application: String,
    /// MSH-6 (may be empty).
    pub receiving_facility: String,
    /// MSH-7.1, when present.
    pub timestamp: Option<Timestamp>,
    /// MSH-9.1 (`ORU`, `ADT`, `ACK`); required.
    pub message_code: String,
    /// MSH-9.2 (`R01`, `A01`); may be empty (an `ACK` before v2.4 has none).
    pub trigger_event: String,
    /// MSH-9.3 (`ORU_R01`); may be empty.
    pub structure: String,
    /// MSH-10; required.
    pub control_id: String,
    /// MSH-11.1 (`P`, `T`, `D`); required.
    pub processing_id: String,
    /// MSH-12.1 (`2.5`, `2.6`); required.
    pub version: String,
    /// MSH-15 accept acknowledgement type (`AL`, `NE`, ...; empty in original mode).
    pub accept_ack_type: String,
    /// MSH-16 application acknowledgement type.
    pub application_ack_type: String,
    /// MSH-18, first repetition, as written (`UNICODE UTF-8`, `8859/1`).
    pub charset: Option<String>,
    /// How the bytes were decoded ([`crate::charset`]); ACKs are encoded the same way.
    pub text_encoding: TextEncoding,
}

impl Header {
    pub(crate) fn delims(&self) -> Delims {
        Delims {
            field: self.field_separator,
            enc: self.encoding,
            text: self.text_encoding,
        }
    }
}

/// Parses one message with the default [`Limits`].
pub fn parse(bytes: &[u8]) -> Result<Message> {
    parse_with(bytes, &Limits::default())
}

/// Parses one message: segments end at `\r`, `\n` or `\r\n`; empty lines are skipped; a
/// UTF-8 byte order mark and white space before `MSH` are skipped.
pub fn parse_with(bytes: &[u8], limits: &Limits) -> Result<Message> {
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(ParseError::Empty)?;
    let bytes = &bytes[start..];
    let (field, enc) = delimiters(bytes)?;
    let charset = raw_charset(bytes, field, enc);
    let (text, text_encoding) = charset::decode(bytes, charset.as_deref())?;
    let d = Delims {
        field,
        enc,
        text: text_encoding,
    };
    let segments = split_segments(&text, d, limits)?;
    let msh = segments.first().ok_or(ParseError::Empty)?;
    let header = read_header(msh, d, charset)?;
    Ok(Message { header, segments })
}

fn split_segments(text: &str, d: Delims, limits: &Limits) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for line in text.split(['\r', '\n']) {
        if line.trim().is_empty() {
            continue;
        }
        if segments.len() >= limits.max_segments {
            return Err(ParseError::TooMany {
                what: "segments",
                limit: limits.max_segments,
            });
        }
        let index = segments.len() + 1;
        if index > 1 && line.starts_with("MSH") {
            return Err(ParseError::RepeatedHeader { index });
        }
        segments.push(Segment::parse(line, index, d, limits.max_fields)?);
    }
    if segments.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(segments)
}

fn bad_delims(field: &'static str, name: &'static str, reason: &'static str) -> ParseError {
    ParseError::BadDelimiters {
        field,
        name,
        reason,
    }
}

/// A usable delimiter: printable ASCII, not a letter, digit or space.
fn delimiter_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

/// MSH-1 and MSH-2 from the raw bytes (they are ASCII, so this works before decoding).
fn delimiters(bytes: &[u8]) -> Result<(char, Encoding)> {
    if !bytes.starts_with(b"MSH") {
        let found: String = charset::latin1(&bytes[..bytes.len().min(3)]);
        return Err(ParseError::NoHeader {
            found: found.escape_debug().to_string(),
        });
    }
    let fs = *bytes
        .get(3)
        .ok_or_else(|| bad_delims("MSH-1", "field separator", "is missing"))?;
    if !delimiter_byte(fs) {
        return Err(bad_delims(
            "MSH-1",
            "field separator",
            "must be a printable ASCII character other than a letter or digit",
        ));
    }
    let rest = &bytes[4..];
    let end = rest
        .iter()
        .position(|&b| b == fs || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let chars = &rest[..end];
    const NAME: &str = "encoding characters";
    if chars.len() != 4 && chars.len() != 5 {
        return Err(bad_delims("MSH-2", NAME, "must have 4 or 5 characters"));
    }
    if !chars.iter().all(|&b| delimiter_byte(b)) {
        return Err(bad_delims(
            "MSH-2",
            NAME,
            "must be printable ASCII characters other than letters and digits",
        ));
    }
    let distinct = (0..chars.len()).all(|i| chars[i + 1..].iter().all(|&b| b != chars[i]));
    if !distinct {
        return Err(bad_delims("MSH-2", NAME, "must be distinct characters"));
    }
    let enc = Encoding {
        component: char::from(chars[0]),
        repetition: char::from(chars[1]),
        escape: char::from(chars[2]),
        subcomponent: char::from(chars[3]),
        truncation: chars.get(4).map(|&b| char::from(b)),
    };
    Ok((char::from(fs), enc))
}

/// MSH-18 (first repetition, first component) from the raw MSH bytes, when it is there.
fn raw_charset(bytes: &[u8], field: char, enc: Encoding) -> Option<String> {
    let (fs, rep, comp) = (field as u8, enc.repetition as u8, enc.component as u8);
    let msh_end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    // parts[0] is "MSH", parts[1] MSH-2, parts[n] MSH-(n+1).
    let msh18 = bytes[..msh_end].split(|&b| b == fs).nth(17)?;
    let first = msh18.split(|&b| b == rep).next()?;
    let value = first.split(|&b| b == comp).next()?;
    let value = charset::latin1(value);
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn required(seg: &Segment, f: usize, c: usize, name: &'static str) -> Result<String> {
    let v = seg.leaf(f, 1, c, 1);
    if v.is_empty() {
        let field = if c == 1 {
            format!("MSH-{f}")
        } else {
            format!("MSH-{f}.{c}")
        };
        return Err(ParseError::MissingField { field, name });
    }
    Ok(v)
}

fn read_header(msh: &Segment, d: Delims, charset: Option<String>) -> Result<Header> {
    let timestamp = crate::timestamp::field(msh, "MSH", 7, "date/time of message")?;
    required(msh, 9, 1, "message type")?;
    required(msh, 10, 1, "message control id")?;
    required(msh, 11, 1, "processing id")?;
    required(msh, 12, 1, "version id")?;
    Ok(Header {
        timestamp,
        ..header_of(msh, d, charset)
    })
}

/// The header as found, nothing required; an invalid MSH-7 is `None`.
fn header_of(msh: &Segment, d: Delims, charset: Option<String>) -> Header {
    let timestamp = crate::timestamp::field(msh, "MSH", 7, "date/time of message");
    Header {
        field_separator: d.field,
        encoding: d.enc,
        sending_application: msh.first_text(3),
        sending_facility: msh.first_text(4),
        receiving_application: msh.first_text(5),
        receiving_facility: msh.first_text(6),
        timestamp: timestamp.ok().flatten(),
        message_code: msh.leaf(9, 1, 1, 1),
        trigger_event: msh.leaf(9, 1, 2, 1),
        structure: msh.leaf(9, 1, 3, 1),
        control_id: msh.leaf(10, 1, 1, 1),
        processing_id: msh.leaf(11, 1, 1, 1),
        version: msh.leaf(12, 1, 1, 1),
        accept_ack_type: msh.leaf(15, 1, 1, 1),
        application_ack_type: msh.leaf(16, 1, 1, 1),
        charset,
        text_encoding: d.text,
    }
}

/// Best-effort reading of the MSH segment of bytes that [`parse`] rejected, to answer them
/// with the sender's control id, applications and delimiters ([`crate::ack::ack_error`]):
/// nothing is required (absent values are empty), an invalid MSH-7 is `None`, only the MSH
/// line is decoded, leniently: invalid UTF-8 with replacement characters, a character set
/// this crate does not know as ISO 8859-1 (and `charset` is then `None`). `None` when the
/// bytes do not start with an MSH segment with usable delimiters.
pub fn parse_header_lenient(bytes: &[u8]) -> Option<Header> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let bytes = &bytes[start..];
    let (field, enc) = delimiters(bytes).ok()?;
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    let mut charset = raw_charset(line, field, enc);
    let (text, text_encoding) = match charset::decode(line, charset.as_deref()) {
        Ok(decoded) => decoded,
        Err(ParseError::InvalidUtf8 { .. }) => (
            String::from_utf8_lossy(line).into_owned(),
            TextEncoding::Utf8,
        ),
        Err(_) => {
            charset = None;
            (charset::latin1(line), TextEncoding::Latin1)
        }
    };
    let d = Delims {
        field,
        enc,
        text: text_encoding,
    };
    let msh = Segment::parse(&text, 1, d, Limits::default().max_fields).ok()?;
    Some(header_of(&msh, d, charset))
}

impl Message {
    /// The MSH segment, read.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The segments with id `id`, in order.
    pub fn segments<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.id() == id)
    }

    /// The first segment with id `id`.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id() == id)
    }

    /// Every segment in order, MSH first.
    pub fn all_segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Terser-like access to one unescaped value: `SEG[(s)]-F[(r)][-C[-S]]`, for example
    /// `"PID-3"`, `"PID-3-1"`, `"PID-3(2)-1"`, `"OBX(2)-5"`, `"PV1-3-2"`; `.` may stand for
    /// `-` (`"PID.3.1"`). Every index is 1-based; the segment occurrence `s`, repetition `r`,
    /// component `C` and subcomponent `S` default to 1, so `"PID-5"` is the family name
    /// only (use [`Segment::field`] and its text forms for whole composites). `MSH-1` and
    /// `MSH-2` are the delimiters as written. `None` when the path is malformed or the value
    /// absent or empty; HL7's explicit null `""` is returned as the two characters.
    pub fn get(&self, path: &str) -> Option<String> {
        let (seg, rest) = path.split_once(['-', '.'])?;
        let (id, nth) = match seg.split_once('(') {
            Some((id, n)) => {
                let (_, nth) = number_and_index(&format!("1({n}"))?;
                (id, nth)
            }
            None => (seg, 1),
        };
        if !valid_segment_id(id) {
            return None;
        }
        let loc = Loc::parse(rest)?;
        self.segments(id).nth(nth - 1)?.at(&loc)
    }
}
