//! `medlake-dicom`: DICOM file headers read from a file's first bytes, with dicom-rs, into
//! attribute values. It owns reading bytes into a [`Header`]; it does no I/O and builds no
//! Arrow arrays (the blob connector, `medlake-source-blob`'s `dicom` module, reads the bytes
//! and turns values into columns), and it must not depend on the engine or DataFusion, so that
//! its fuzz target builds in minutes (`fuzz/light/`, `dicom_header`).
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
//!   values, so nothing nested in a sequence (a private one, an `UN` one) can stand for a
//!   top-level attribute;
//! - an attribute stored as `UN` whose tag the standard dictionary knows is decoded with the
//!   dictionary's VR (text as text, `US` as a number), as pydicom's `replace_un_with_known_vr`;
//! - a file cut short is read up to the cut: the attributes before it are returned, and
//!   [`Header::cut`] says where it ends (pydicom returns them without a word).
//!
//! Whatever the bytes, [`read_header`] returns a header or a [`Cut`], never panics.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::rc::Rc;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntaxIndex};
use dicom_parser::dataset::DataToken;
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions, OddLengthStrategy};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub use dicom_core;
pub use dicom_dictionary_std;

/// Why a header could not be read from the bytes at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// They end before the header does: read more of the file.
    More,
    /// The file is not DICOM, or is damaged.
    Failed(String),
}

/// What was read of a file's header.
#[derive(Debug)]
pub struct Header {
    /// The Transfer Syntax UID of the file meta group, as written (empty without one).
    pub transfer_syntax: String,
    /// The Media Storage SOP Instance UID of the file meta group.
    pub media_sop_instance_uid: Option<String>,
    /// Top-level elements of the wanted tags.
    elements: Elements,
    endianness: Endianness,
    /// The file ends before its data set does, or an element is damaged: where reading
    /// stopped (the attributes before it are read).
    pub cut: Option<String>,
}

impl Header {
    /// An attribute as text (values joined by `\`, each trimmed), `None` when absent or empty.
    pub fn text(&self, tag: Tag) -> Option<String> {
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

/// Why a walk over a data set's elements stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The bytes end first (a file's first bytes, or a file cut short).
    Short,
    /// An element that is not one (no VR where one must be, a stray delimiter, a length that
    /// overflows).
    Invalid,
}

/// The top-level `UN` elements of undefined length of an explicit VR little endian data set,
/// as byte ranges, up to the pixel data; and why the walk stopped early, if it did (the
/// elements after that point are read as they are, and dicom-rs reports what it finds).
fn un_sequences(data: &[u8]) -> (Vec<std::ops::Range<usize>>, Option<Walk>) {
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let (Some(group), Some(element), Some(vr)) = (
            u16_le(data, at),
            u16_le(data, at + 2),
            data.get(at + 4..at + 6),
        ) else {
            return (cuts, Some(Walk::Short));
        };
        if group == 0xFFFE || Tag(group, element) >= PIXEL_TAGS_FROM {
            break;
        }
        if !is_vr(vr) {
            return (cuts, Some(Walk::Invalid));
        }
        let (length, header) = if long_vr(vr) {
            (u32_le(data, at + 8), 12)
        } else {
            (u16_le(data, at + 6).map(u32::from), 8)
        };
        let Some(length) = length else {
            return (cuts, Some(Walk::Short));
        };
        let end = if length == UNDEFINED {
            match skip_undefined(data, at + header, vr == b"UN") {
                Ok(end) => end,
                Err(stop) => return (cuts, Some(stop)),
            }
        } else {
            match at
                .checked_add(header)
                .and_then(|v| v.checked_add(usize::try_from(length).ok()?))
            {
                Some(end) => end,
                None => return (cuts, Some(Walk::Invalid)),
            }
        };
        if length == UNDEFINED && vr == b"UN" {
            cuts.push(at..end);
        }
        at = end;
    }
    let stop = (at > data.len()).then_some(Walk::Short);
    (cuts, stop)
}

/// `data` without the byte ranges `cuts` (in order, not overlapping, within `data`).
fn without(data: &[u8], cuts: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut from = 0;
    for cut in cuts {
        out.extend_from_slice(&data[from..cut.start]);
        from = cut.end;
    }
    out.extend_from_slice(&data[from..]);
    out
}

/// The position after the sequence delimiter that closes the items starting at `at`, in
/// implicit (an `UN` sequence) or explicit VR little endian.
fn skip_undefined(data: &[u8], mut at: usize, implicit: bool) -> Result<usize, Walk> {
    let short = Walk::Short;
    let invalid = Walk::Invalid;
    // Open items and nested sequences of undefined length inside the sequence.
    let mut depth = 0usize;
    loop {
        let group = u16_le(data, at).ok_or(short)?;
        let element = u16_le(data, at + 2).ok_or(short)?;
        if group == 0xFFFE {
            let length = u32_le(data, at + 4).ok_or(short)?;
            at = at.checked_add(8).ok_or(invalid)?;
            match element {
                0xE000 if length == UNDEFINED => depth += 1,
                0xE000 => {
                    at = usize::try_from(length)
                        .ok()
                        .and_then(|l| at.checked_add(l))
                        .ok_or(invalid)?;
                }
                0xE00D => depth = depth.checked_sub(1).ok_or(invalid)?,
                0xE0DD if depth == 0 => return Ok(at),
                0xE0DD => depth -= 1,
                _ => return Err(invalid),
            }
            continue;
        }
        let (length, header, nested_implicit) = if implicit {
            (u32_le(data, at + 4).ok_or(short)?, 8, true)
        } else {
            let vr = data.get(at + 4..at + 6).ok_or(short)?;
            if !is_vr(vr) {
                return Err(invalid);
            }
            if long_vr(vr) {
                (u32_le(data, at + 8).ok_or(short)?, 12, vr == b"UN")
            } else {
                (u32::from(u16_le(data, at + 6).ok_or(short)?), 8, false)
            }
        };
        at = at.checked_add(header).ok_or(invalid)?;
        if length == UNDEFINED {
            if nested_implicit && !implicit {
                at = skip_undefined(data, at, true)?;
            } else {
                depth += 1;
            }
        } else {
            at = usize::try_from(length)
                .ok()
                .and_then(|l| at.checked_add(l))
                .ok_or(invalid)?;
        }
    }
}

/// Reads the header of a DICOM file from its first bytes (`complete`: all of them): the
/// top-level elements of the `wanted` tags, up to the pixel data.
pub fn read_header(bytes: &[u8], complete: bool, wanted: &[Tag]) -> Result<Header, Cut> {
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
        let (cuts, stop) = un_sequences(data);
        // Where the first bytes end before the walk does, only more of them tell what to drop
        // (found by fuzzing, `dicom_header`: an `UN` sequence whose end was past the first
        // bytes was read as it is, damaged, while the whole file dropped it).
        if stop == Some(Walk::Short) && !complete {
            return Err(Cut::More);
        }
        (!cuts.is_empty()).then(|| without(data, &cuts))
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
    // dicom-rs allocates the length an element declares before it reads the value: a file of
    // 300 bytes declaring a 4 GiB value took 4 GiB (found by fuzzing, `dicom_header`). No
    // value can be longer than the bytes it is read from; inflated, no more than DEFLATE's
    // 1032:1 of them.
    let bytes_at_most = match ts.codec() {
        Codec::Dataset(Some(_)) => data.len().saturating_mul(1032),
        _ => data.len(),
    };
    let (elements, cut) = data_set(reader, &ended, complete, wanted, bytes_at_most)?;
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
    // "DICM" after the 128-byte preamble, or (some files) at the start. Which one needs the
    // first 132 bytes: a preamble may begin with "DICM" too (found by fuzzing, `dicom_header`:
    // the first 99 bytes of such a file were read from offset 4, the whole file from 132).
    let mut at = if bytes.len() < 132 && !complete {
        return Err(Cut::More);
    } else if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
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
/// reading stopped early (a damaged element, a file cut short). An element or item that
/// declares more than `bytes_at_most` bytes ends the read before its value is read (and
/// allocated): it cannot be in the file.
fn data_set(
    reader: impl Iterator<Item = std::result::Result<DataToken, dicom_parser::dataset::read::Error>>,
    ended: &Cell<bool>,
    complete: bool,
    wanted: &[Tag],
    bytes_at_most: usize,
) -> Result<(Elements, Option<String>), Cut> {
    // `get` is `None` for an undefined length (a sequence or item ended by a delimiter).
    let too_long = |len: dicom_core::Length| len.get().is_some_and(|n| n as usize > bytes_at_most);
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
                if too_long(header.len) {
                    if !complete {
                        return Err(Cut::More);
                    }
                    cut = Some(format!(
                        "the file is cut short; read up to the cut: element {} declares {} bytes, more than the file holds",
                        header.tag, header.len
                    ));
                    break;
                }
                pending = (depth == 0).then_some((header.tag, header.vr));
            }
            Ok(DataToken::ItemStart { len }) if too_long(len) => {
                if !complete {
                    return Err(Cut::More);
                }
                cut = Some(format!(
                    "the file is cut short; read up to the cut: an item declares {len} bytes, more than the file holds"
                ));
                break;
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

#[cfg(test)]
mod tests {
    use dicom_dictionary_std::tags;

    use super::*;

    /// The tags the blob connector asks for, and a few more.
    const WANTED: &[Tag] = &[
        tags::PATIENT_ID,
        tags::SOP_INSTANCE_UID,
        tags::ROWS,
        tags::COLUMNS,
        tags::STUDY_DATE,
    ];

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
        read_header(bytes, complete, WANTED)
    }

    /// Found by fuzzing (fuzz/light, `dicom_header`): a 290-byte file whose `UN` element
    /// declares 4 GiB. dicom-rs allocates (and zero-fills) the declared length before reading
    /// the value, so reading this header took 4 GiB of memory; now it stops at that element,
    /// the attributes before it read, as for any file cut short.
    #[test]
    fn a_length_past_the_end_of_the_file_is_a_cut_not_an_allocation() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0"));
        file.extend(explicit(0x0010, 0x0020, b"LO", b"id11111 "));
        // (0028,0010) UN, declaring 0xFFFFFFF6 bytes, followed by 4.
        file.extend_from_slice(&[0x28, 0x00, 0x10, 0x00, b'U', b'N', 0, 0]);
        file.extend_from_slice(&0xFFFF_FFF6u32.to_le_bytes());
        file.extend_from_slice(&[1, 2, 3, 4]);
        let header = header_of(&file, true).unwrap_or_else(|_| panic!("read"));
        assert_eq!(header.text(tags::PATIENT_ID).as_deref(), Some("id11111"));
        assert_eq!(header.text(tags::ROWS), None);
        assert_eq!(
            header.cut.as_deref(),
            Some(
                "the file is cut short; read up to the cut: element (0028,0010) declares 4294967286 bytes, more than the file holds"
            )
        );
        // The first bytes of a longer file: read more.
        assert_eq!(header_of(&file, false).err(), Some(Cut::More));
        // Implicit VR, and an item of a sequence.
        let mut implicit = vec![0u8; 128];
        implicit.extend_from_slice(b"DICM");
        implicit.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2\0"));
        implicit.extend_from_slice(&[0x10, 0x00, 0x20, 0x00]);
        implicit.extend_from_slice(&0x8000_0000u32.to_le_bytes());
        let header = header_of(&implicit, true).unwrap_or_else(|_| panic!("read"));
        assert!(
            header
                .cut
                .as_deref()
                .is_some_and(|c| c.contains("declares 2147483648 bytes"))
        );
        let mut item = vec![0u8; 128];
        item.extend_from_slice(b"DICM");
        item.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0"));
        item.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
        item.extend_from_slice(&u32::MAX.to_le_bytes());
        item.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        item.extend_from_slice(&0x7FFF_0000u32.to_le_bytes());
        let header = header_of(&item, true).unwrap_or_else(|_| panic!("read"));
        assert!(
            header
                .cut
                .as_deref()
                .is_some_and(|c| c.contains("an item declares")),
            "{:?}",
            header.cut
        );
    }

    /// Found by fuzzing (fuzz/light, `dicom_header`): a preamble that begins with "DICM". The
    /// first 99 bytes were read as a file without preamble (and failed on its "transfer
    /// syntax"), the whole file after the preamble: the answer depended on how much was read.
    #[test]
    fn a_preamble_starting_with_dicm_is_read_the_same_way_from_any_prefix() {
        let mut file = b"DICM".to_vec();
        file.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.3.1\0"));
        file.resize(128, 0);
        file.extend_from_slice(b"DICM");
        file.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0"));
        file.extend(explicit(0x0010, 0x0020, b"LO", b"P1"));
        let whole = header_of(&file, true).unwrap_or_else(|_| panic!("read"));
        assert_eq!(whole.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(whole.text(tags::PATIENT_ID).as_deref(), Some("P1"));
        for end in 0..132 {
            assert_eq!(
                header_of(&file[..end], false).err(),
                Some(Cut::More),
                "{end} bytes"
            );
        }
        // A file of fewer than 132 bytes with "DICM" at the start is read from there.
        let mut short = b"DICM".to_vec();
        short.extend(explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0"));
        short.extend(explicit(0x0010, 0x0020, b"LO", b"P2"));
        let header = header_of(&short, true).unwrap_or_else(|_| panic!("read"));
        assert_eq!(header.text(tags::PATIENT_ID).as_deref(), Some("P2"));
    }

    /// A file pydicom reads and dicom-rs's own file reader does not: a meta group without
    /// group length or transfer syntax, a private `UN` sequence of undefined length (implicit
    /// VR items) holding a SOP Instance UID of its own, a Patient ID stored as `UN`.
    fn pydicom_like_file() -> Vec<u8> {
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
        file
    }

    /// What the connector takes from a header.
    fn summary(h: &Header) -> (String, Option<String>, Option<String>, Vec<Option<String>>) {
        let texts = WANTED.iter().map(|t| h.text(*t)).collect();
        (
            h.transfer_syntax.clone(),
            h.media_sop_instance_uid.clone(),
            h.cut.clone(),
            texts,
        )
    }

    /// Found by fuzzing (fuzz/light, `dicom_header`): the first bytes of a file whose private
    /// `UN` sequence ends past them. The walk that drops such sequences gave up, the bytes
    /// were read as they are, and dicom-rs (reading the sequence's implicit VR items as
    /// explicit) called the file damaged, while the whole file was read without a fault. Now
    /// first bytes that end inside the walk ask for more.
    #[test]
    fn every_prefix_asks_for_more_or_gives_the_whole_files_header() {
        let file = pydicom_like_file();
        // The same with the item tag (FFFE,E000) of the UN sequence written (FEFE,E000), as
        // the fuzzer did: read as an implicit VR element of undefined length inside it.
        let mut bent = file.clone();
        assert_eq!(bent[176..180], [0xFE, 0xFF, 0x00, 0xE0]);
        bent[177] = 0xFE;
        for file in [file, bent] {
            let whole = header_of(&file, true).unwrap_or_else(|_| panic!("read"));
            for end in 0..=file.len() {
                match header_of(&file[..end], false) {
                    Err(Cut::More) => {}
                    Ok(first) => assert_eq!(summary(&first), summary(&whole), "{end} bytes"),
                    Err(Cut::Failed(m)) => panic!("{end} bytes: {m}"),
                }
            }
        }
    }

    /// [`pydicom_like_file`], read.
    #[test]
    fn reads_headers_as_pydicom_does() {
        let file = pydicom_like_file();

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
}
