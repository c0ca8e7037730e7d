//! Delimiters and escape sequences.
//!
//! Unescaping (`E` is the escape character of MSH-2, `\` by default):
//!
//! | sequence | becomes |
//! |---|---|
//! | `EFE` `ESE` `ETE` `ERE` `EEE` | the field, component, subcomponent, repetition, escape character |
//! | `EPE` | the truncation character (MSH-2 of 5 characters, v2.7); kept as written without one |
//! | `EXhh..E` | the bytes `hh..` (an even number of hex digits), decoded in the message's character set; when they are not text in it, the hex number as one Unicode code point (`EXfcE` = `ü`, as python-hl7 writes it) |
//! | `E.brE` | a line feed (`\n`) |
//! | anything else (`EHE`, `ENE`, `E.spE`, `ECxxyyE`, ...), an `EX..E` that is not hex or not valid text, an escape character without a closing one | kept as written |

use std::borrow::Cow;

use crate::charset::{TextEncoding, decode_escaped};

/// The encoding characters of MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoding {
    /// Component separator (`^`).
    pub component: char,
    /// Repetition separator (`~`).
    pub repetition: char,
    /// Escape character (`\`).
    pub escape: char,
    /// Subcomponent separator (`&`).
    pub subcomponent: char,
    /// Truncation character (`#`), the optional fifth character of v2.7.
    pub truncation: Option<char>,
}

impl Default for Encoding {
    /// `^~\&`, without truncation character.
    fn default() -> Self {
        Encoding {
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Encoding {
    /// MSH-2 as written: component, repetition, escape, subcomponent[, truncation].
    pub fn to_msh2(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component);
        s.push(self.repetition);
        s.push(self.escape);
        s.push(self.subcomponent);
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }
}

/// Everything needed to split and unescape the text of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delims {
    pub field: char,
    pub enc: Encoding,
    pub text: TextEncoding,
}

/// `raw` with its escape sequences replaced (see the module docs).
pub(crate) fn unescape<'a>(raw: &'a str, d: &Delims) -> Cow<'a, str> {
    let esc = d.enc.escape;
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let w = esc.len_utf8();
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + w..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let seq = &after[..end];
        if !expand(seq, d, &mut out) {
            out.push(esc);
            out.push_str(seq);
            out.push(esc);
        }
        rest = &after[end + w..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends what the escape sequence `seq` (without its escape characters) stands for;
/// `false` when it is not one this crate replaces.
fn expand(seq: &str, d: &Delims, out: &mut String) -> bool {
    let c = match seq {
        "F" => d.field,
        "S" => d.enc.component,
        "T" => d.enc.subcomponent,
        "R" => d.enc.repetition,
        "E" => d.enc.escape,
        "P" => match d.enc.truncation {
            Some(t) => t,
            None => return false,
        },
        ".br" => '\n',
        _ => {
            let Some(hex) = seq.strip_prefix('X') else {
                return false;
            };
            let text = hex_bytes(hex)
                .and_then(|b| decode_escaped(b, d.text))
                .or_else(|| code_point(hex));
            return match text {
                Some(s) => {
                    out.push_str(&s);
                    true
                }
                None => false,
            };
        }
    };
    out.push(c);
    true
}

/// `\Xhh..\` whose bytes are not text in the message's character set, read as one Unicode
/// code point: what some senders write (python-hl7's `escape` writes `\Xfc\` for `ü` and
/// `\X20ac\` for `€`, whatever MSH-18 says). At most six hex digits; anything else is kept.
fn code_point(hex: &str) -> Option<String> {
    if hex.len() > 6 {
        return None;
    }
    let n = u32::from_str_radix(hex, 16).ok()?;
    char::from_u32(n)
        .filter(|c| !c.is_control())
        .map(String::from)
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let b = hex.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|pair| Some(hex_digit(*pair.first()?)? * 16 + hex_digit(*pair.get(1)?)?))
        .collect()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `text` with every delimiter, the escape character and line breaks escaped, ready to be
/// put into one field, component or subcomponent. A line feed is `E.brE`, or `EX0AE` when
/// `.` is one of the message's delimiters or its escape character (it would split, or
/// end, `.br`).
pub(crate) fn escape(text: &str, d: &Delims) -> String {
    let mut out = String::with_capacity(text.len());
    let e = d.enc.escape;
    let dot_is_special = [
        d.field,
        d.enc.component,
        d.enc.repetition,
        d.enc.subcomponent,
        d.enc.escape,
    ]
    .contains(&'.')
        || d.enc.truncation == Some('.');
    let line_feed = if dot_is_special { "X0A" } else { ".br" };
    for c in text.chars() {
        let seq = if c == d.field {
            "F"
        } else if c == d.enc.component {
            "S"
        } else if c == d.enc.subcomponent {
            "T"
        } else if c == d.enc.repetition {
            "R"
        } else if c == e {
            "E"
        } else if Some(c) == d.enc.truncation {
            "P"
        } else if c == '\n' {
            line_feed
        } else if c == '\r' {
            "X0D"
        } else {
            out.push(c);
            continue;
        };
        out.push(e);
        out.push_str(seq);
        out.push(e);
    }
    out
}
