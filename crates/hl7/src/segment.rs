//! One segment and the views into it: [`Field`] → [`Repetition`] → [`Component`] →
//! subcomponents.
//!
//! A segment keeps its text as received (decoded, still escaped) and where its fields start
//! and end; repetitions, components and subcomponents are split when asked for, and leaves
//! are unescaped then. Numbers are 1-based as in HL7 (`PID-3` is [`Segment::field`]`(3)`).
//! In `MSH`, field 1 is the field separator itself and field 2 the encoding characters: both
//! are returned as written, never split or unescaped.
//!
//! **Text forms.** [`Component::text`], [`Repetition::text`] and [`Field::text`] give the
//! unescaped leaves joined with the *default* delimiters `&`, `^` and `~` (whatever the
//! message used), without trailing empty parts: `Smith^John`, `ICU^12^1^WEST`. A delimiter
//! that was escaped in a value shows as the same character, so these forms are for
//! display and storage, not for splitting again; use the views for that.

use std::borrow::Cow;

use crate::error::{ParseError, Result};
use crate::escape::{Delims, unescape};

/// One segment of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    text: String,
    /// Byte ranges in `text`: `[0]` the segment id, `[n]` field n.
    fields: Vec<(usize, usize)>,
    d: Delims,
}

/// The first character of a segment id is an upper-case letter, the others upper-case
/// letters or digits.
pub(crate) fn valid_segment_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 3
        && b[0].is_ascii_uppercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl Segment {
    /// Splits one segment line into fields. `index` (1-based) is for errors.
    pub(crate) fn parse(line: &str, index: usize, d: Delims, max_fields: usize) -> Result<Segment> {
        let id_end = line.find(d.field).unwrap_or(line.len());
        if !valid_segment_id(&line[..id_end]) {
            return Err(ParseError::BadSegmentId { index });
        }
        let mut fields = vec![(0, id_end)];
        if id_end < line.len() {
            let mut start = id_end + d.field.len_utf8();
            if &line[..id_end] == "MSH" {
                fields.push((id_end, start));
            }
            let base = start;
            for (pos, sep) in line[base..].match_indices(d.field) {
                if fields.len() > max_fields {
                    return Err(ParseError::TooMany {
                        what: "fields in a segment",
                        limit: max_fields,
                    });
                }
                fields.push((start, base + pos));
                start = base + pos + sep.len();
            }
            fields.push((start, line.len()));
        }
        if fields.len() > max_fields + 1 {
            return Err(ParseError::TooMany {
                what: "fields in a segment",
                limit: max_fields,
            });
        }
        Ok(Segment {
            text: line.to_owned(),
            fields,
            d,
        })
    }

    /// The segment id (`MSH`, `PID`, `OBX`, `ZPD`, ...).
    pub fn id(&self) -> &str {
        self.slice(0)
    }

    /// The segment as received (decoded into text, escapes kept), without its terminator.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The number of the last field present (trailing empty fields that were written count).
    pub fn field_count(&self) -> usize {
        self.fields.len() - 1
    }

    fn slice(&self, n: usize) -> &str {
        self.fields
            .get(n)
            .and_then(|&(a, b)| self.text.get(a..b))
            .unwrap_or_default()
    }

    /// Field `n` (1-based) as written: escaped, delimiters kept. `None` for 0 and past the end.
    pub fn raw(&self, n: usize) -> Option<&str> {
        (n >= 1 && n < self.fields.len()).then(|| self.slice(n))
    }

    /// Field `n` (1-based); `None` for 0 and past the end.
    pub fn field(&self, n: usize) -> Option<Field<'_>> {
        let raw = self.raw(n)?;
        let literal = n <= 2 && self.id() == "MSH";
        Some(Field {
            raw,
            d: &self.d,
            literal,
        })
    }

    /// The unescaped text at `path` within this segment: `"3"`, `"3-1"`, `"3(2)-1-2"` (also
    /// `"3.1"`); repetition, component and subcomponent default to 1 (so `"5"` of a PID is
    /// the family name). `None` when absent or empty.
    pub fn get(&self, path: &str) -> Option<String> {
        let loc = Loc::parse(path)?;
        self.at(&loc)
    }

    pub(crate) fn at(&self, loc: &Loc) -> Option<String> {
        let s = self
            .field(loc.field)?
            .repetition(loc.rep)?
            .component(loc.comp)?
            .subcomponent(loc.sub)?;
        (!s.is_empty()).then_some(s)
    }

    /// The unescaped subcomponent `s` of component `c` of repetition `r` of field `f`; empty
    /// when absent.
    pub(crate) fn leaf(&self, f: usize, r: usize, c: usize, s: usize) -> String {
        self.at(&Loc {
            field: f,
            rep: r,
            comp: c,
            sub: s,
        })
        .unwrap_or_default()
    }

    /// Component `c` of the first repetition of field `f` in text form; empty when absent.
    pub(crate) fn component_text(&self, f: usize, c: usize) -> String {
        self.field(f)
            .and_then(|x| x.repetition(1))
            .and_then(|x| x.component(c))
            .map(|x| x.text())
            .unwrap_or_default()
    }

    /// The first repetition of field `f` in text form; empty when absent.
    pub(crate) fn first_text(&self, f: usize) -> String {
        self.field(f)
            .and_then(|x| x.repetition(1))
            .map(|x| x.text())
            .unwrap_or_default()
    }

    /// All repetitions of field `f` in text form; empty when absent.
    pub(crate) fn field_text(&self, f: usize) -> String {
        self.field(f).map(|x| x.text()).unwrap_or_default()
    }
}

/// A position within a segment, 1-based throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub field: usize,
    pub rep: usize,
    pub comp: usize,
    pub sub: usize,
}

/// Reads `"n"` or `"n(r)"`: the number and the optional parenthesised index (default 1).
/// Both must be at least 1.
pub(crate) fn number_and_index(s: &str) -> Option<(usize, usize)> {
    let (n, idx) = match s.split_once('(') {
        Some((n, rest)) => (n, rest.strip_suffix(')')?),
        None => (s, "1"),
    };
    let n = small_number(n)?;
    let idx = small_number(idx)?;
    Some((n, idx))
}

fn small_number(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n >= 1)
}

impl Loc {
    /// `"3"`, `"3(2)"`, `"3-1"`, `"3(2)-1-2"`, `"3.1.2"`.
    pub(crate) fn parse(path: &str) -> Option<Loc> {
        let mut parts = path.split(['-', '.']);
        let (field, rep) = number_and_index(parts.next()?)?;
        let comp = parts.next().map_or(Some(1), small_number)?;
        let sub = parts.next().map_or(Some(1), small_number)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Loc {
            field,
            rep,
            comp,
            sub,
        })
    }
}

/// Splits `raw` at `sep`, or not at all for literal fields (MSH-1, MSH-2).
fn pieces(raw: &str, sep: char, literal: bool) -> std::str::SplitN<'_, char> {
    raw.splitn(if literal { 1 } else { usize::MAX }, sep)
}

/// Joins `parts` with `sep`, dropping trailing empty parts.
fn join_trimmed<S: AsRef<str>>(parts: impl Iterator<Item = S>, sep: char) -> String {
    let mut out = String::new();
    let mut keep = 0;
    for (i, p) in parts.enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(p.as_ref());
        if !p.as_ref().is_empty() {
            keep = out.len();
        }
    }
    out.truncate(keep);
    out
}

/// One field of a segment: its repetitions, separated by the repetition character.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    d: &'a Delims,
    literal: bool,
}

impl<'a> Field<'a> {
    /// The field as written: escaped, delimiters kept.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether nothing was written in the field.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The repetitions (at least one, possibly empty).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let (d, literal) = (self.d, self.literal);
        pieces(self.raw, d.enc.repetition, literal).map(move |raw| Repetition { raw, d, literal })
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Repetition<'a>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    /// All repetitions in text form joined with `~` (see the module docs).
    pub fn text(&self) -> String {
        if self.literal {
            return self.raw.to_owned();
        }
        join_trimmed(self.repetitions().map(|r| r.text()), '~')
    }
}

/// One repetition of a field: its components.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    d: &'a Delims,
    literal: bool,
}

impl<'a> Repetition<'a> {
    /// The repetition as written.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The components (at least one, possibly empty).
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let (d, literal) = (self.d, self.literal);
        pieces(self.raw, d.enc.component, literal).map(move |raw| Component { raw, d, literal })
    }

    /// Component `n` (1-based).
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.components().nth(n.checked_sub(1)?)
    }

    /// The components in text form joined with `^` (see the module docs).
    pub fn text(&self) -> String {
        if self.literal {
            return self.raw.to_owned();
        }
        join_trimmed(self.components().map(|c| c.text()), '^')
    }
}

/// One component of a repetition: its subcomponents.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    d: &'a Delims,
    literal: bool,
}

impl<'a> Component<'a> {
    /// The component as written.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The subcomponents, unescaped (at least one, possibly empty).
    pub fn subcomponents(&self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let (d, literal) = (self.d, self.literal);
        pieces(self.raw, d.enc.subcomponent, literal).map(move |raw| {
            if literal {
                Cow::Borrowed(raw)
            } else {
                unescape(raw, d)
            }
        })
    }

    /// Subcomponent `n` (1-based), unescaped.
    pub fn subcomponent(&self, n: usize) -> Option<String> {
        self.subcomponents()
            .nth(n.checked_sub(1)?)
            .map(Cow::into_owned)
    }

    /// The subcomponents, unescaped, joined with `&` (see the module docs).
    pub fn text(&self) -> String {
        join_trimmed(self.subcomponents(), '&')
    }
}
