//! `medlake-hl7` end to end: real-looking messages through the public API.

mod ack;
mod adt;
mod hostile;
mod message;
mod mllp;
mod oru;
mod timestamp;

/// Segments joined with `\r`, the last one terminated too.
pub fn msg(segments: &[&str]) -> Vec<u8> {
    let mut out = segments.join("\r");
    out.push('\r');
    out.into_bytes()
}

/// A segment with the given field values at their (1-based) numbers, `|`-delimited; not for
/// MSH.
pub fn seg(id: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|&(n, _)| n).max().unwrap_or(0);
    let mut values = vec![""; last + 1];
    values[0] = id;
    for &(n, v) in fields {
        values[n] = v;
    }
    values.join("|")
}

/// An IHE PCD-01 ORU^R01 from a bedside monitor behind a gateway: MDC codes, containment
/// sub-ids, EUI-64 equipment ids, UTF-8 declared.
pub const PCD01: &[&str] = &[
    r"MSH|^~\&|ACME_GW^0123456789ABCDEF^EUI-64|ICU_WEST|MEDLAKE|HOSP|20240315103005+0100||ORU^R01^ORU_R01|PCD00001|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    r"PID|||12345678^^^HOSP^MR~987654^^^NATION^NI||Doe^John^^^^^L||19620315|M",
    r"PV1||I|ICU^12^1^WEST",
    r"OBR|1|ORD1^ACME_GW^0123456789ABCDEF^EUI-64|FILL1^ACME_GW^0123456789ABCDEF^EUI-64|182777000^monitoring of patient^SNOMED-CT|||20240315103000+0100",
    r"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1|||||||X|||||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100|N|||F|||20240315103000+0100||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.2|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120|N|||F|||20240315103001+0100||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|-0.5|266016^MDC_DIM_MMHG^MDC||L|||R||||||||",
];

/// A lab result with LOINC codes, numbers, structured numerics and formatted text, no
/// character set, no offsets.
pub const LOINC: &[&str] = &[
    r"MSH|^~\&|LAB|HOSP|MEDLAKE|HOSP|20240315120000||ORU^R01|LAB123|P|2.5.1",
    r"PID|1||MRN001^^^HOSP&1.2.3.4&ISO^MR||Smith^Anna||19800101|F",
    r"PV1|1|O|CLINIC^^^MAIN||||||||||||||||V777",
    r"OBR|1|PL1|FL1|85353-1^Vital signs panel^LN|||20240315115500",
    r"OBX|1|NM|8867-4^Heart rate^LN||88|/min^beats per minute^UCUM|60-100|N|||F",
    r"OBX|2|SN|2160-0^Creatinine^LN||=^1.1|mg/dL^^UCUM|0.6-1.2||||F|||20240315115000",
    r"OBX|3|SN|777-3^Platelets^LN||>^500|10*3/uL^^UCUM|||||F",
    r"OBX|4|ST|8601-7^EKG impression^LN||Normal\.br\sinus rhythm~second line||||||F",
    r"OBX|5|CWE|8302-2^Body height^LN||175^cm&centimetre^UCUM||||||F",
];

/// Every sample message, for the hostile-input tests.
pub fn samples() -> Vec<Vec<u8>> {
    let mut out = vec![msg(PCD01), msg(LOINC)];
    out.extend(adt::samples());
    out.push(message::escapes_sample());
    out.push(message::odd_delimiters_sample());
    out.push(message::latin1_sample());
    out
}
