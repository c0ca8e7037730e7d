//! Character sets (MSH-18): which bytes-to-text decoding a message gets, and the way back for
//! ACKs.
//!
//! | MSH-18 | decoding |
//! |---|---|
//! | `UNICODE UTF-8` (also `UTF-8`, `UTF8`) | UTF-8; invalid UTF-8 is [`ParseError::InvalidUtf8`] |
//! | `8859/1` (also `ISO IR100`, `ISO-8859-1`, `LATIN1`) | ISO 8859-1: each byte is the char of that code point |
//! | absent, empty, `ASCII` | UTF-8 if the whole message is valid UTF-8, else ISO 8859-1 |
//! | anything else | [`ParseError::UnsupportedCharset`] |
//!
//! The fallback for undeclared messages exists because many senders put 8-bit text
//! (usually Latin-1 names) into messages without MSH-18; a valid UTF-8 reading is taken
//! first because a Latin-1 text that happens to be valid UTF-8 is very rare. Names are
//! compared ignoring ASCII case and surrounding spaces.

use crate::error::{ParseError, Result};

/// How the message bytes were turned into text (and how an ACK for it is encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TextEncoding {
    /// UTF-8.
    #[default]
    Utf8,
    /// ISO 8859-1: byte `b` is `char::from(b)`.
    Latin1,
}

/// What MSH-18 asks for.
enum Declared {
    Utf8,
    Latin1,
    /// Nothing, or ASCII: UTF-8 if valid, else Latin-1.
    Auto,
}

fn declared(charset: Option<&str>) -> Result<Declared> {
    let Some(name) = charset.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Declared::Auto);
    };
    let upper = name.to_ascii_uppercase();
    match upper.as_str() {
        "ASCII" | "US-ASCII" => Ok(Declared::Auto),
        "UNICODE UTF-8" | "UTF-8" | "UTF8" => Ok(Declared::Utf8),
        "8859/1" | "ISO IR100" | "ISO-8859-1" | "ISO8859-1" | "LATIN1" => Ok(Declared::Latin1),
        _ => Err(ParseError::UnsupportedCharset {
            charset: name.chars().take(40).collect(),
        }),
    }
}

/// Decodes the message `bytes` as MSH-18 (`charset`, already read from the raw MSH) says.
pub(crate) fn decode(bytes: &[u8], charset: Option<&str>) -> Result<(String, TextEncoding)> {
    match declared(charset)? {
        Declared::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => Ok((s.to_owned(), TextEncoding::Utf8)),
            Err(e) => Err(ParseError::InvalidUtf8 {
                charset: charset.unwrap_or_default().trim().to_owned(),
                offset: e.valid_up_to(),
            }),
        },
        Declared::Latin1 => Ok((latin1(bytes), TextEncoding::Latin1)),
        Declared::Auto => match std::str::from_utf8(bytes) {
            Ok(s) => Ok((s.to_owned(), TextEncoding::Utf8)),
            Err(_) => Ok((latin1(bytes), TextEncoding::Latin1)),
        },
    }
}

/// Bytes as ISO 8859-1.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decodes the bytes of a `\Xhh..\` escape in the message's encoding; `None` when they are not
/// valid in it (the escape is then kept as written).
pub(crate) fn decode_escaped(bytes: Vec<u8>, encoding: TextEncoding) -> Option<String> {
    match encoding {
        TextEncoding::Utf8 => String::from_utf8(bytes).ok(),
        TextEncoding::Latin1 => Some(latin1(&bytes)),
    }
}

/// Encodes text for the wire: UTF-8, or ISO 8859-1 with `?` for characters it lacks.
pub(crate) fn encode(text: &str, encoding: TextEncoding) -> Vec<u8> {
    match encoding {
        TextEncoding::Utf8 => text.as_bytes().to_vec(),
        TextEncoding::Latin1 => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect(),
    }
}
