//! DICOM files: one row per file with the header's main attributes, read with dicom-rs.
//!
//! Only the header is read where possible: the first `header_bytes` (64 KiB by default) by a
//! ranged read, parsed up to (not including) Pixel Data; a header that does not fit is read
//! again with sixteen times the bytes, up to the whole file. A file that is not DICOM, or is
//! damaged, is listed with its `error` instead of failing the scan.
//!
//! What is read matches pydicom's `dcmread(f, stop_before_pixels=True)` (checked against every
//! file of pydicom's test set by `tests/interop/test_dicom_parity.py`):
//! - the file meta group is read by us (explicit VR little endian, as the standard says), with
//!   or without its group length; without a Transfer Syntax UID the data set's encoding is
//!   guessed from its first element (explicit VR if a VR is there, else implicit), as pydicom
//!   does; a data set that contradicts its transfer syntax (implicit VR under an explicit UID)
//!   is read as it is (dicom-rs's flexible decoding);
//! - the data set is read by dicom-rs's token reader (deflated explicit VR little endian
//!   through its `deflate` feature, odd lengths accepted); only top-level elements become
//!   columns, so nothing nested in a sequence (a private one, an `UN` one) can stand for a
//!   top-level attribute;
//! - an attribute stored as `UN` whose tag the standard dictionary knows is decoded with the
//!   dictionary's VR (text as text, `US` as a number), as pydicom's `replace_un_with_known_vr`;
//! - a file cut short is read up to the cut: the attributes before it are returned, and
//!   `error` says where it ends (pydicom returns them without a word).
//!
//! dicom-rs is re-exported ([`dicom_object`], [`dicom_core`], [`dicom_dictionary_std`]) so that
//! callers write files with the very version that reads them.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::rc::Rc;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Int32Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntaxIndex};
use dicom_parser::dataset::DataToken;
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions, OddLengthStrategy};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use object_store::ObjectStoreExt;

pub use dicom_core;
pub use dicom_dictionary_std;
pub use dicom_object;

use super::{Listed, Shared, file_fields};
use medlake_source::{Error, Result};

/// The options of `STORED AS DICOM` (besides the common ones).
pub const OPTIONS: &[&str] = &["tags", "header_bytes"];

/// Default bytes read first for the header.
pub const DEFAULT_HEADER_BYTES: u64 = 64 * 1024;

/// The fixed attribute columns: (column, tag, type).
const ATTRIBUTES: &[(&str, Tag, Attr)] = &[
    ("patient_id", tags::PATIENT_ID, Attr::Text),
    ("patient_name", tags::PATIENT_NAME, Attr::Text),
    ("study_instance_uid", tags::STUDY_INSTANCE_UID, Attr::Text),
    ("series_instance_uid", tags::SERIES_INSTANCE_UID, Attr::Text),
    ("sop_instance_uid", tags::SOP_INSTANCE_UID, Attr::Text),
    ("sop_class_uid", tags::SOP_CLASS_UID, Attr::Text),
    ("modality", tags::MODALITY, Attr::Text),
    ("study_date", tags::STUDY_DATE, Attr::Date),
    ("study_time", tags::STUDY_TIME, Attr::Time),
    ("study_description", tags::STUDY_DESCRIPTION, Attr::Text),
    ("series_description", tags::SERIES_DESCRIPTION, Attr::Text),
    ("body_part_examined", tags::BODY_PART_EXAMINED, Attr::Text),
    ("manufacturer", tags::MANUFACTURER, Attr::Text),
    (
        "manufacturer_model_name",
        tags::MANUFACTURER_MODEL_NAME,
        Attr::Text,
    ),
    ("rows", tags::ROWS, Attr::Int),
    ("columns", tags::COLUMNS, Attr::Int),
    ("number_of_frames", tags::NUMBER_OF_FRAMES, Attr::Int),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Text,
    Int,
    /// DA `YYYYMMDD` as a date.
    Date,
    /// TM `HHMMSS.FFFFFF` as `HH:MM:SS.FFFFFF` text.
    Time,
}

/// What was read of one file: its attribute values by column, or why it could not be read.
#[derive(Debug)]
pub enum Parsed {
    Header {
        values: Vec<Option<String>>,
        transfer_syntax: String,
    },
    /// A file cut short: the attributes before the cut, and where it ends.
    Partial {
        values: Vec<Option<String>>,
        transfer_syntax: String,
        error: String,
    },
    Failed(String),
}

/// Reads DICOM headers into rows.
#[derive(Clone, Debug)]
pub struct DicomReader {
    /// Further attributes asked for by keyword: (column, keyword, tag).
    extra: Vec<(String, String, Tag)>,
    header_bytes: u64,
}

/// `AccessionNumber` → `accession_number`.
fn snake_case(keyword: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = keyword.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if i > 0 && (prev_lower || (next_lower && chars[i - 1].is_ascii_uppercase())) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

impl DicomReader {
    pub fn new(options: &BTreeMap<String, String>) -> Result<Self> {
        let mut extra = Vec::new();
        if let Some(list) = options.get("tags") {
            for keyword in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let entry = StandardDataDictionary.by_name(keyword).ok_or_else(|| {
                    Error::InvalidOption {
                        option: "tags".into(),
                        reason: format!(
                            "'{keyword}' is not a DICOM keyword of the standard dictionary (e.g. AccessionNumber, InstitutionName)"
                        ),
                    }
                })?;
                let column = snake_case(keyword);
                let taken = ATTRIBUTES.iter().any(|(c, _, _)| *c == column)
                    || extra.iter().any(|(c, _, _)| *c == column)
                    || ["path", "size", "modified", "transfer_syntax_uid", "error"]
                        .contains(&column.as_str());
                if taken {
                    return Err(Error::InvalidOption {
                        option: "tags".into(),
                        reason: format!("'{keyword}' is already a column ({column})"),
                    });
                }
                extra.push((column, keyword.to_string(), entry.tag()));
            }
        }
        let header_bytes = medlake_source::options::Options(options).number(
            "header_bytes",
            DEFAULT_HEADER_BYTES,
            1024..=1 << 30,
            "a number of bytes",
        )?;
        Ok(Self {
            extra,
            header_bytes,
        })
    }

    /// The columns of a DICOM table (before partition columns).
    pub fn fields(&self) -> Vec<Field> {
        let mut fields = file_fields();
        for (name, _, attr) in ATTRIBUTES {
            let data_type = match attr {
                Attr::Text | Attr::Time => DataType::Utf8,
                Attr::Int => DataType::Int32,
                Attr::Date => DataType::Date32,
            };
            fields.push(Field::new(*name, data_type, true));
        }
        fields.push(Field::new("transfer_syntax_uid", DataType::Utf8, true));
        for (name, _, _) in &self.extra {
            fields.push(Field::new(name, DataType::Utf8, true));
        }
        fields.push(Field::new("error", DataType::Utf8, true));
        fields
    }

    /// Reads a file's header: a ranged read first, more when the header does not fit.
    pub(crate) async fn read(&self, shared: &Shared, file: &Listed) -> Result<Parsed> {
        let size = file.meta.size;
        let mut want = self.header_bytes.min(size);
        loop {
            let bytes = if want >= size {
                shared
                    .place
                    .store
                    .get(&file.meta.location)
                    .await
                    .map_err(|e| shared.place.error(e))?
                    .bytes()
                    .await
                    .map_err(|e| shared.place.error(e))?
            } else {
                shared
                    .place
                    .store
                    .get_range(&file.meta.location, 0..want)
                    .await
                    .map_err(|e| shared.place.error(e))?
            };
            let complete = want >= size || (bytes.len() as u64) < want;
            match self.parse(&bytes, complete) {
                Some(parsed) => return Ok(parsed),
                None => want = want.saturating_mul(16).min(size),
            }
        }
    }

    /// Parses a file's first bytes (`complete`: the whole file). `None`: the header goes on
    /// past these bytes; read more.
    fn parse(&self, bytes: &[u8], complete: bool) -> Option<Parsed> {
        let header = match read_header(bytes, complete, self.wanted()) {
            Ok(header) => header,
            Err(Cut::More) => return None,
            Err(Cut::Failed(message)) => return Some(Parsed::Failed(message)),
        };
        Some(self.values(&header))
    }

    /// The tags whose values become columns.
    fn wanted(&self) -> Vec<Tag> {
        ATTRIBUTES
            .iter()
            .map(|(_, tag, _)| *tag)
            .chain(self.extra.iter().map(|(_, _, tag)| *tag))
            .collect()
    }

    fn values(&self, header: &Header) -> Parsed {
        let mut values: Vec<Option<String>> = ATTRIBUTES
            .iter()
            .map(|(_, tag, attr)| {
                let text = header.text(*tag)?;
                match attr {
                    // IS / US: the first value as a number.
                    Attr::Int => text
                        .split('\\')
                        .next()
                        .and_then(|v| v.trim().parse::<i32>().ok())
                        .map(|v| v.to_string()),
                    _ => Some(text),
                }
            })
            .collect();
        // The SOP instance UID may only be in the file meta group.
        if values[4].is_none() {
            values[4] = header.media_sop_instance_uid.clone();
        }
        for (_, _, tag) in &self.extra {
            values.push(header.text(*tag));
        }
        match &header.cut {
            Some(message) => Parsed::Partial {
                values,
                transfer_syntax: header.transfer_syntax.clone(),
                error: message.clone(),
            },
            None => Parsed::Header {
                values,
                transfer_syntax: header.transfer_syntax.clone(),
            },
        }
    }

    /// The array of table column `index` (a DICOM column, past path/size/modified).
    pub(crate) fn column(&self, index: usize, parsed: &[Option<&Parsed>]) -> Result<ArrayRef> {
        let attribute = index - 3;
        fn header<'a>(p: &Option<&'a Parsed>) -> Option<(&'a Vec<Option<String>>, &'a String)> {
            match p {
                Some(Parsed::Header {
                    values,
                    transfer_syntax,
                })
                | Some(Parsed::Partial {
                    values,
                    transfer_syntax,
                    ..
                }) => Some((values, transfer_syntax)),
                _ => None,
            }
        }
        if let Some((_, _, attr)) = ATTRIBUTES.get(attribute) {
            let raw = parsed
                .iter()
                .map(|p| header(p).and_then(|(v, _)| v[attribute].clone()));
            return Ok(match attr {
                Attr::Text => Arc::new(StringArray::from_iter(raw)),
                Attr::Time => Arc::new(StringArray::from_iter(raw.map(|v| v.map(|t| time(&t))))),
                Attr::Int => Arc::new(Int32Array::from_iter(
                    raw.map(|v| v.and_then(|s| s.parse::<i32>().ok())),
                )),
                Attr::Date => Arc::new(Date32Array::from_iter(
                    raw.map(|v| v.and_then(|d| date(&d))),
                )),
            });
        }
        let after = attribute - ATTRIBUTES.len();
        if after == 0 {
            return Ok(Arc::new(StringArray::from_iter(parsed.iter().map(|p| {
                header(p)
                    .map(|(_, ts)| ts.clone())
                    .filter(|ts| !ts.is_empty())
            }))));
        }
        let extra = after - 1;
        if extra < self.extra.len() {
            let at = ATTRIBUTES.len() + extra;
            return Ok(Arc::new(StringArray::from_iter(
                parsed
                    .iter()
                    .map(|p| header(p).and_then(|(v, _)| v[at].clone())),
            )));
        }
        if extra == self.extra.len() {
            return Ok(Arc::new(StringArray::from_iter(parsed.iter().map(
                |p| match p {
                    Some(Parsed::Failed(message))
                    | Some(Parsed::Partial { error: message, .. }) => Some(message.clone()),
                    _ => None,
                },
            ))));
        }
        Err(Error::Data {
            what: "DICOM table".into(),
            message: format!("no column {index}"),
        })
    }
}

/// Why a header could not be read from the bytes at hand.
enum Cut {
    /// They end before the header does: read more of the file.
    More,
    /// The file is not DICOM, or is damaged.
    Failed(String),
}

/// What was read of a file's header.
struct Header {
    transfer_syntax: String,
    media_sop_instance_uid: Option<String>,
    /// Top-level elements of the wanted tags.
    elements: Elements,
    endianness: Endianness,
    /// The file ends before its data set does: what the error column says.
    cut: Option<String>,
}

impl Header {
    /// An attribute as text (values joined by `\`, each trimmed), `None` when absent or empty.
    fn text(&self, tag: Tag) -> Option<String> {
        let (vr, value) = self.elements.get(&tag)?;
        let parts: Vec<String> = if *vr == VR::UN {
            // Decode with the dictionary's VR, as pydicom does for known tags.
            let bytes = value.to_bytes();
            match StandardDataDictionary
                .by_tag(tag)
                .map(|e| e.vr().relaxed())
                .unwrap_or(VR::UN)
            {
                VR::US => bytes
                    .chunks_exact(2)
                    .map(|b| {
                        let b = [b[0], b[1]];
                        match self.endianness {
                            Endianness::Little => u16::from_le_bytes(b),
                            Endianness::Big => u16::from_be_bytes(b),
                        }
                        .to_string()
                    })
                    .collect(),
                VR::AE
                | VR::AS
                | VR::CS
                | VR::DA
                | VR::DS
                | VR::DT
                | VR::IS
                | VR::LO
                | VR::LT
                | VR::PN
                | VR::SH
                | VR::ST
                | VR::TM
                | VR::UC
                | VR::UI
                | VR::UR
                | VR::UT => String::from_utf8_lossy(&bytes)
                    .split('\\')
                    .map(str::to_string)
                    .collect(),
                _ => value.to_multi_str().into_owned(),
            }
        } else {
            value.to_multi_str().into_owned()
        };
        let parts: Vec<&str> = parts
            .iter()
            .map(|p| p.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
            .collect();
        let text = parts.join("\\");
        (!parts.iter().all(|p| p.is_empty())).then_some(text)
    }
}

/// A reader that notes when it has run out of bytes.
struct Noting<R> {
    inner: R,
    ended: Rc<Cell<bool>>,
}

impl<R: Read> Read for Noting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.set(true);
        }
        Ok(n)
    }
}

const PIXEL_TAGS_FROM: Tag = Tag(0x7FE0, 0x0008);

/// VRs whose explicit encoding has a 2-byte reserved field and a 4-byte length.
fn long_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

fn is_vr(vr: &[u8]) -> bool {
    vr.len() == 2 && std::str::from_utf8(vr).is_ok_and(|v| v.parse::<VR>().is_ok())
}

fn u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn uid_text(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_string())
}

const UNDEFINED: u32 = u32::MAX;

/// An explicit VR little endian data set without its top-level `UN` elements of undefined
/// length; `None` when there are none or the data set cannot be walked (it is then read as
/// it is, and dicom-rs reports what it finds).
fn strip_un_sequences(data: &[u8]) -> Option<Vec<u8>> {
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let group = u16_le(data, at)?;
        let element = u16_le(data, at + 2)?;
        if group == 0xFFFE || Tag(group, element) >= PIXEL_TAGS_FROM {
            break;
        }
        let vr = data.get(at + 4..at + 6)?;
        if !is_vr(vr) {
            return None;
        }
        let (length, header) = if long_vr(vr) {
            (u32_le(data, at + 8)?, 12)
        } else {
            (u32::from(u16_le(data, at + 6)?), 8)
        };
        let end = if length == UNDEFINED {
            let end = skip_undefined(data, at + header, vr == b"UN")?;
            if vr == b"UN" {
                cuts.push(at..end);
            }
            end
        } else {
            at.checked_add(header)?
                .checked_add(usize::try_from(length).ok()?)?
        };
        at = end;
    }
    if cuts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut from = 0;
    for cut in cuts {
        out.extend_from_slice(data.get(from..cut.start)?);
        from = cut.end;
    }
    out.extend_from_slice(data.get(from..)?);
    Some(out)
}

/// The position after the sequence delimiter that closes the items starting at `at`, in
/// implicit (an `UN` sequence) or explicit VR little endian.
fn skip_undefined(data: &[u8], mut at: usize, implicit: bool) -> Option<usize> {
    // Open items and nested sequences of undefined length inside the sequence.
    let mut depth = 0usize;
    loop {
        let group = u16_le(data, at)?;
        let element = u16_le(data, at + 2)?;
        if group == 0xFFFE {
            let length = u32_le(data, at + 4)?;
            at = at.checked_add(8)?;
            match element {
                0xE000 if length == UNDEFINED => depth += 1,
                0xE000 => at = at.checked_add(usize::try_from(length).ok()?)?,
                0xE00D => depth = depth.checked_sub(1)?,
                0xE0DD if depth == 0 => return Some(at),
                0xE0DD => depth -= 1,
                _ => return None,
            }
            continue;
        }
        let (length, header, nested_implicit) = if implicit {
            (u32_le(data, at + 4)?, 8, true)
        } else {
            let vr = data.get(at + 4..at + 6)?;
            if !is_vr(vr) {
                return None;
            }
            if long_vr(vr) {
                (u32_le(data, at + 8)?, 12, vr == b"UN")
            } else {
                (u32::from(u16_le(data, at + 6)?), 8, false)
            }
        };
        at = at.checked_add(header)?;
        if length == UNDEFINED {
            if nested_implicit && !implicit {
                at = skip_undefined(data, at, true)?;
            } else {
                depth += 1;
            }
        } else {
            at = at.checked_add(usize::try_from(length).ok()?)?;
        }
    }
}

/// Reads the header of a DICOM file from its first bytes (`complete`: all of them).
fn read_header(bytes: &[u8], complete: bool, wanted: Vec<Tag>) -> Result<Header, Cut> {
    let (at, transfer_syntax, media_sop_instance_uid) = file_meta(bytes, complete)?;
    let data = &bytes[at..];
    // Without a transfer syntax, pydicom reads little endian and looks at the first element
    // for a VR.
    let uid = match &transfer_syntax {
        Some(uid) => uid.clone(),
        None if data.len() < 6 && !complete => return Err(Cut::More),
        None if data.get(4..6).is_some_and(is_vr) => "1.2.840.10008.1.2.1".to_string(),
        None => "1.2.840.10008.1.2".to_string(),
    };
    let ts = TransferSyntaxRegistry
        .get(&uid)
        .ok_or_else(|| Cut::Failed(format!("unknown transfer syntax {uid}")))?;
    // dicom-rs reads the items of an `UN` element of undefined length in the data set's
    // explicit VR; they are implicit VR little endian (PS3.5 6.2.2, as pydicom reads them).
    // They are never a column: drop such top-level elements before reading.
    let stripped = if ts.uid() == "1.2.840.10008.1.2.1"
        || matches!(ts.codec(), Codec::EncapsulatedPixelData(..))
            && ts.endianness() == Endianness::Little
    {
        strip_un_sequences(data)
    } else {
        None
    };
    let data: &[u8] = stripped.as_deref().unwrap_or(data);
    let ended = Rc::new(Cell::new(false));
    let source = Noting {
        inner: Cursor::new(data),
        ended: ended.clone(),
    };
    let source: Box<dyn Read + '_> = match ts.codec() {
        Codec::Dataset(Some(adapter)) => adapter.adapt_reader(Box::new(source)),
        Codec::Dataset(None) => {
            return Err(Cut::Failed(format!(
                "transfer syntax {} ({}) is not supported",
                ts.uid(),
                ts.name()
            )));
        }
        _ => Box::new(source),
    };
    let mut options = DataSetReaderOptions::default();
    options.odd_length = OddLengthStrategy::Accept;
    // A data set in implicit VR under an explicit VR little endian UID (pydicom: "Expected
    // explicit VR, but found implicit VR"): dicom-rs's flexible decoding reads it. Only then:
    // its probe takes an explicit `UN` first element for implicit VR.
    options.flexible_decoding =
        matches!(ts.codec(), Codec::None | Codec::EncapsulatedPixelData(..))
            && ts.endianness() == Endianness::Little
            && ts.uid() != "1.2.840.10008.1.2"
            && data.get(4..6).is_some_and(|vr| !is_vr(vr));
    let reader = DataSetReader::new_with_ts_options(source, ts, options)
        .map_err(|e| Cut::Failed(medlake_common::error_chain(&e)))?;
    let (elements, cut) = data_set(reader, &ended, complete, &wanted)?;
    if cut.is_none() && ended.get() && !complete {
        // The bytes at hand ended exactly between elements: the header may go on.
        return Err(Cut::More);
    }
    Ok(Header {
        transfer_syntax: transfer_syntax.unwrap_or_default(),
        media_sop_instance_uid,
        elements,
        endianness: ts.endianness(),
        cut,
    })
}

/// The file meta group after the `DICM` prefix: where the data set starts, its transfer
/// syntax and the media SOP instance UID.
fn file_meta(bytes: &[u8], complete: bool) -> Result<(usize, Option<String>, Option<String>), Cut> {
    let more = |what: &str| {
        if complete {
            Cut::Failed(format!("the file ends {what}"))
        } else {
            Cut::More
        }
    };
    // "DICM" after the 128-byte preamble, or (some files) at the start.
    let mut at = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
    } else if bytes.len() < 132 && !complete {
        return Err(Cut::More);
    } else {
        return Err(Cut::Failed(
            "not a DICOM file: no 'DICM' prefix after the 128-byte preamble (a file without the File Meta Information header is not read, as pydicom does without force)".into(),
        ));
    };
    // The file meta group: explicit VR little endian, with or without its group length.
    let mut transfer_syntax = None;
    let mut media_sop_instance_uid = None;
    loop {
        let Some(group) = u16_le(bytes, at) else {
            if bytes.len() > at || !complete {
                return Err(more("inside the file meta group"));
            }
            break; // a file of its meta group alone
        };
        if group != 0x0002 {
            break;
        }
        let element = u16_le(bytes, at + 2).ok_or_else(|| more("inside the file meta group"))?;
        let vr = bytes
            .get(at + 4..at + 6)
            .ok_or_else(|| more("inside the file meta group"))?;
        if !is_vr(vr) {
            return Err(Cut::Failed(format!(
                "the file meta group is not in explicit VR (element (0002,{element:04X}))"
            )));
        }
        let (length, value_at) = if long_vr(vr) {
            (u32_le(bytes, at + 8), at + 12)
        } else {
            (u16_le(bytes, at + 6).map(u32::from), at + 8)
        };
        let length = length.ok_or_else(|| more("inside the file meta group"))?;
        if length == u32::MAX {
            return Err(Cut::Failed(format!(
                "element (0002,{element:04X}) of the file meta group has an undefined length"
            )));
        }
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| value_at.checked_add(l))
            .ok_or_else(|| more("inside the file meta group"))?;
        let value = bytes
            .get(value_at..end)
            .ok_or_else(|| more("inside the file meta group"))?;
        match element {
            0x0003 => media_sop_instance_uid = uid_text(value),
            0x0010 => transfer_syntax = uid_text(value),
            _ => {}
        }
        at = end;
    }
    Ok((at, transfer_syntax, media_sop_instance_uid))
}

/// Top-level elements by tag: (VR as stored, value).
type Elements = HashMap<Tag, (VR, PrimitiveValue)>;

/// The top-level elements of the data set that are `wanted`, up to the pixel data, and why
/// reading stopped early (a damaged element, a file cut short).
fn data_set(
    reader: impl Iterator<Item = std::result::Result<DataToken, dicom_parser::dataset::read::Error>>,
    ended: &Cell<bool>,
    complete: bool,
    wanted: &[Tag],
) -> Result<(Elements, Option<String>), Cut> {
    let mut elements = HashMap::new();
    let mut depth = 0usize;
    let mut pending: Option<(Tag, VR)> = None;
    let mut cut = None;
    for token in reader {
        match token {
            Err(e) => {
                if ended.get() && !complete {
                    return Err(Cut::More);
                }
                let message = medlake_common::error_chain(&e);
                cut = Some(if ended.get() {
                    format!("the file is cut short; read up to the cut: {message}")
                } else {
                    format!("read up to a damaged element: {message}")
                });
                break;
            }
            Ok(DataToken::ElementHeader(header)) => {
                if depth == 0 && header.tag >= PIXEL_TAGS_FROM {
                    break;
                }
                pending = (depth == 0).then_some((header.tag, header.vr));
            }
            Ok(DataToken::PrimitiveValue(value)) => {
                if let Some((tag, vr)) = pending.take()
                    && wanted.contains(&tag)
                {
                    elements.insert(tag, (vr, value));
                }
            }
            Ok(DataToken::SequenceStart { tag, .. }) => {
                if depth == 0 && tag >= PIXEL_TAGS_FROM {
                    break;
                }
                depth += 1;
            }
            Ok(DataToken::PixelSequenceStart) => {
                if depth == 0 {
                    break;
                }
                depth += 1;
            }
            Ok(DataToken::SequenceEnd) => depth = depth.saturating_sub(1),
            Ok(_) => {}
        }
    }
    Ok((elements, cut))
}

/// DA `YYYYMMDD` (or `YYYY.MM.DD`) as days since the epoch.
fn date(value: &str) -> Option<i32> {
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    let date = chrono::NaiveDate::parse_from_str(digits.get(..8)?, "%Y%m%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// TM `HHMMSS.FFFFFF` (any prefix of it) as `HH:MM:SS.FFFFFF`; other text as written.
fn time(value: &str) -> String {
    let (main, fraction) = value.split_once('.').unwrap_or((value, ""));
    if main.contains(':') || !main.chars().all(|c| c.is_ascii_digit()) || main.len() % 2 != 0 {
        return value.to_string();
    }
    let parts: Vec<&str> = (0..main.len() / 2)
        .map(|i| &main[2 * i..2 * i + 2])
        .collect();
    let mut out = parts.join(":");
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit VR little endian element.
    fn explicit(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        if long_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn header_of(bytes: &[u8], complete: bool) -> std::result::Result<Header, Cut> {
        let reader = DicomReader::new(&BTreeMap::new()).unwrap();
        read_header(bytes, complete, reader.wanted())
    }

    /// A file pydicom reads and dicom-rs's own file reader does not: a meta group without
    /// group length or transfer syntax, a private `UN` sequence of undefined length (implicit
    /// VR items) holding a SOP Instance UID of its own, a Patient ID stored as `UN`.
    #[test]
    fn reads_headers_as_pydicom_does() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend(explicit(0x0002, 0x0003, b"UI", b"1.2.3.4\0"));
        let mut data = explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        // (0009,1010) UN, undefined length: one item, undefined length, implicit VR inside.
        data.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0]);
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 8, 0, 0, 0]);
        data.extend_from_slice(b"9.9.9.9\0");
        data.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        data.extend(explicit(0x0010, 0x0020, b"UN", b"id11111 "));
        data.extend(explicit(0x0028, 0x0010, b"UN", &512u16.to_le_bytes()));
        data.extend(explicit(0x0028, 0x0011, b"US", &256u16.to_le_bytes()));
        data.extend(explicit(0x7FE0, 0x0010, b"OW", &[0; 16]));
        file.extend_from_slice(&data);

        let header = header_of(&file, true).unwrap_or_else(|_| panic!("read"));
        assert!(header.cut.is_none());
        // No transfer syntax in the meta group: the VR of the first element says explicit.
        assert_eq!(header.transfer_syntax, "");
        assert_eq!(
            header.text(tags::SOP_INSTANCE_UID).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(header.text(tags::PATIENT_ID).as_deref(), Some("id11111"));
        assert_eq!(header.text(tags::ROWS).as_deref(), Some("512"));
        assert_eq!(header.text(tags::COLUMNS).as_deref(), Some("256"));

        // The first 64 KiB of a longer file, cut in the middle of an element: read more.
        let cut = file.len() - 30;
        assert!(matches!(header_of(&file[..cut], false), Err(Cut::More)));
        // The whole file, cut there: the attributes before the cut, and an error.
        let header = header_of(&file[..cut], true).unwrap_or_else(|_| panic!("partial"));
        assert_eq!(header.text(tags::PATIENT_ID).as_deref(), Some("id11111"));
        assert!(
            header
                .cut
                .as_deref()
                .is_some_and(|c| c.starts_with("the file is cut short"))
        );
        // Not DICOM at all.
        assert!(matches!(header_of(&[7u8; 300], true), Err(Cut::Failed(_))));
        assert!(matches!(header_of(&[7u8; 30], false), Err(Cut::More)));
        // Damaged lengths never panic.
        for n in (0..file.len()).step_by(7) {
            let mut broken = file.clone();
            broken[n] = 0xFF;
            let _ = header_of(&broken, true);
        }
    }

    #[test]
    fn keywords_become_columns_and_values_are_typed() {
        assert_eq!(snake_case("AccessionNumber"), "accession_number");
        assert_eq!(snake_case("SOPInstanceUID"), "sop_instance_uid");
        assert_eq!(snake_case("PatientAge"), "patient_age");
        assert_eq!(time("142530.123"), "14:25:30.123");
        assert_eq!(time("1425"), "14:25");
        assert_eq!(date("20260115"), Some(20468));
        assert_eq!(date("2026"), None);
        let options: BTreeMap<String, String> = [(
            "tags".to_string(),
            "AccessionNumber, InstitutionName".to_string(),
        )]
        .into();
        let reader = DicomReader::new(&options).unwrap();
        let names: Vec<String> = reader.fields().iter().map(|f| f.name().clone()).collect();
        assert!(names.contains(&"accession_number".to_string()));
        assert_eq!(names.last().map(String::as_str), Some("error"));
        let bad: BTreeMap<String, String> =
            [("tags".to_string(), "NoSuchKeyword".to_string())].into();
        assert!(DicomReader::new(&bad).is_err());
    }
}
