//! DICOM files: one row per file with the header's main attributes, read with dicom-rs.
//!
//! Only the header is read where possible: the first `header_bytes` (64 KiB by default) by a
//! ranged read, parsed up to (not including) Pixel Data; a header that does not fit is read
//! again with sixteen times the bytes, up to the whole file. A file that is not DICOM, or is
//! damaged, is listed with its `error` instead of failing the scan.
//!
//! What is read (as pydicom's `dcmread(f, stop_before_pixels=True)` reads it) is
//! `medlake-dicom`'s business ([`medlake_dicom::read_header`]): this module reads the bytes
//! from the store and turns the attribute values into columns.
//!
//! dicom-rs is re-exported ([`dicom_object`], [`dicom_core`], [`dicom_dictionary_std`]) so that
//! callers write files with the very version that reads them.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Int32Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field};
use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use medlake_dicom::{Cut, Header, read_header};
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
        let header = match read_header(bytes, complete, &self.wanted()) {
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
