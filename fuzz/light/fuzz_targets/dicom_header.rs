//! A DICOM file's header as the blob connector reads it (`STORED AS DICOM`): the first bytes
//! of the file (a ranged read), then all of it when the header goes on past them. The input
//! is a 16-bit little-endian split point and the file's bytes. Nothing may panic, and the
//! answer may not depend on how much was read first: when the first bytes give a header, the
//! whole file gives the same one (the connector would otherwise list other values for the
//! same file depending on `header_bytes`); when they say the file is not DICOM or damaged,
//! so does the whole file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medlake_dicom::dicom_core::Tag;
use medlake_dicom::dicom_dictionary_std::tags;
use medlake_dicom::{Cut, Header, read_header};

/// The connector's attribute columns, and a few tags asked for with `tags`.
const WANTED: &[Tag] = &[
    tags::PATIENT_ID,
    tags::PATIENT_NAME,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::SOP_CLASS_UID,
    tags::MODALITY,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_DESCRIPTION,
    tags::SERIES_DESCRIPTION,
    tags::BODY_PART_EXAMINED,
    tags::MANUFACTURER,
    tags::MANUFACTURER_MODEL_NAME,
    tags::ROWS,
    tags::COLUMNS,
    tags::NUMBER_OF_FRAMES,
    tags::ACCESSION_NUMBER,
    tags::INSTITUTION_NAME,
    tags::PIXEL_SPACING,
    tags::WINDOW_CENTER,
];

fuzz_target!(|data: &[u8]| {
    let [a, b, file @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([*a, *b])) % (file.len() + 1);
    let whole = read_header(file, true, WANTED);
    assert!(
        !matches!(whole, Err(Cut::More)),
        "the whole file cannot ask for more"
    );
    let whole_values = whole.as_ref().ok().map(values);
    match read_header(&file[..split], split == file.len(), WANTED) {
        Err(Cut::More) => {}
        Err(Cut::Failed(first)) => assert!(
            matches!(whole, Err(Cut::Failed(_))),
            "the first {split} bytes failed ({first}), the whole file did not"
        ),
        Ok(header) => assert_eq!(
            Some(values(&header)),
            whole_values,
            "the first {split} bytes and the whole file give other headers"
        ),
    }
});

/// Everything the connector takes from a header.
fn values(header: &Header) -> (String, Option<String>, Option<String>, Vec<Option<String>>) {
    (
        header.transfer_syntax.clone(),
        header.media_sop_instance_uid.clone(),
        header.cut.clone(),
        WANTED.iter().map(|t| header.text(*t)).collect(),
    )
}
