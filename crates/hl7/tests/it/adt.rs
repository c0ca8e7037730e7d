//! ADT events: admit, transfer, discharge, update, cancel, merge.

use medlake_hl7::{ParseError, adt, parse};

use crate::{msg, seg};

fn msh(event: &str) -> String {
    format!(
        r"MSH|^~\&|ADT1|HOSP|MEDLAKE|HOSP|20240315083000||ADT^{event}^ADT_A01|CTRL{event}|P|2.5"
    )
}

fn pid() -> String {
    seg(
        "PID",
        &[
            (1, "1"),
            (3, "123-45-6789^^^SSA^SS~MRN001^^^HOSP^MR"),
            (5, "Smith^Anna^M^^Dr"),
            (7, "19800101"),
            (8, "F"),
            (11, "1 Main St^^Springfield^IL^62701"),
        ],
    )
}

fn pv1(extra: &[(usize, &str)]) -> String {
    let mut fields = vec![
        (1, "1"),
        (2, "I"),
        (3, "ICU^12^1^WEST"),
        (7, "1234^Welby^Marcus^^^Dr"),
        (10, "MED"),
        (19, "V1001"),
        (44, "20240315082500"),
    ];
    fields.extend_from_slice(extra);
    seg("PV1", &fields)
}

/// A01, A02, A03, A08, A11, A40 as sent by a hospital ADT system.
pub fn samples() -> Vec<Vec<u8>> {
    let evn = |e: &str| format!("EVN|{e}|20240315082900|||NURSE1|20240315082500");
    vec![
        msg(&[&msh("A01"), &evn("A01"), &pid(), &pv1(&[])]),
        msg(&[
            &msh("A02"),
            &evn("A02"),
            &pid(),
            &pv1(&[(6, "ER^1^2^EAST")]),
        ]),
        msg(&[
            &msh("A03"),
            &evn("A03"),
            &pid(),
            &pv1(&[(45, "20240320140000")]),
        ]),
        msg(&[&msh("A08"), &evn("A08"), &pid(), &pv1(&[])]),
        msg(&[&msh("A11"), &evn("A11"), &pid(), &pv1(&[])]),
        msg(&[
            &msh("A40").replace("ADT_A01", "ADT_A39"),
            &evn("A40"),
            &pid(),
            "MRG|MRN999^^^HOSP&1.2.3&ISO^MR",
        ]),
    ]
}

#[test]
fn admit() {
    let e = adt(&parse(&samples()[0]).unwrap()).unwrap();
    assert_eq!(e.event, "A01");
    assert_eq!(e.recorded_at.unwrap().to_string(), "20240315082900");
    assert_eq!(e.occurred_at.unwrap().to_string(), "20240315082500");
    assert_eq!(e.patient_id, "MRN001", "the MR identifier, not the first");
    assert_eq!(e.patient_id_authority, "HOSP");
    assert_eq!(e.patient_name, "Smith^Anna");
    assert_eq!(e.birth_date, "19800101");
    assert_eq!(e.sex, "F");
    assert_eq!(e.patient_class, "I");
    assert_eq!(e.location, "ICU^12^1^WEST");
    assert_eq!(e.prior_location, "");
    assert_eq!(e.attending, "1234^Welby^Marcus^^^Dr");
    assert_eq!(e.visit_number, "V1001");
    assert_eq!(e.admitted_at.unwrap().to_string(), "20240315082500");
    assert_eq!(e.discharged_at, None);
    assert_eq!(e.merged_patient_id, "");
}

#[test]
fn transfer_discharge_update_cancel() {
    let s = samples();
    let a02 = adt(&parse(&s[1]).unwrap()).unwrap();
    assert_eq!(
        (a02.event.as_str(), a02.prior_location.as_str()),
        ("A02", "ER^1^2^EAST")
    );
    let a03 = adt(&parse(&s[2]).unwrap()).unwrap();
    assert_eq!(a03.event, "A03");
    assert_eq!(a03.discharged_at.unwrap().to_string(), "20240320140000");
    let a08 = adt(&parse(&s[3]).unwrap()).unwrap();
    assert_eq!(a08.event, "A08");
    let a11 = adt(&parse(&s[4]).unwrap()).unwrap();
    assert_eq!(
        (a11.event.as_str(), a11.patient_id.as_str()),
        ("A11", "MRN001")
    );
}

#[test]
fn merge() {
    let e = adt(&parse(&samples()[5]).unwrap()).unwrap();
    assert_eq!(e.event, "A40");
    assert_eq!(e.patient_id, "MRN001");
    assert_eq!(e.merged_patient_id, "MRN999");
    assert_eq!(e.merged_patient_id_authority, "HOSP");
    assert_eq!(e.location, "", "no PV1");
    let no_mrg = msg(&[&msh("A40"), &pid()]);
    let err = adt(&parse(&no_mrg).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "the ADT^A40 message has no MRG segment");
    let empty_mrg = msg(&[&msh("A40"), &pid(), "MRG|^^^HOSP"]);
    let err = adt(&parse(&empty_mrg).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MRG-1 (prior patient identifier list) is empty"
    );
}

#[test]
fn trigger_from_evn_and_recorded_at_from_msh() {
    let m = msg(&[
        r"MSH|^~\&|ADT1|HOSP|||20240315083000+0100||ADT|C1|P|2.3",
        "EVN|A04",
        &pid(),
        &pv1(&[]),
    ]);
    let e = adt(&parse(&m).unwrap()).unwrap();
    assert_eq!(e.event, "A04");
    assert_eq!(e.recorded_at.unwrap().to_string(), "20240315083000+0100");
    assert_eq!(e.occurred_at, None);
}

#[test]
fn errors() {
    let check = |segments: &[&str], want: &str, code: u16| {
        let e: ParseError = adt(&parse(&msg(segments)).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), want);
        assert_eq!(e.hl7_code(), code, "{want}");
    };
    let (pid, pv1) = (pid(), pv1(&[]));
    check(
        &[&msh("A05"), &pid, &pv1],
        "event ADT^A05 is not supported (A01, A02, A03, A04, A08, A11, A12, A13 or A40 expected)",
        201,
    );
    check(
        &[r"MSH|^~\&|S||||20240101||ORU^R01|C1|P|2.5", &pid],
        "message type \"ORU\" is not supported here (ADT expected)",
        200,
    );
    check(
        &[&msh("A01"), &pv1],
        "the ADT^A01 message has no PID segment",
        100,
    );
    check(
        &[&msh("A01"), &pid],
        "the ADT^A01 message has no PV1 segment",
        100,
    );
    check(
        &[&msh("A01"), "PID|1||^^^HOSP^MR", &pv1],
        "PID-3 (patient identifier list) is empty",
        101,
    );
    check(
        &[&msh("A01"), "EVN|A01|2024031599", &pid, &pv1],
        "EVN-2 (recorded date/time) is not valid: there is no such time of day",
        102,
    );
    check(
        &[&msh("A03"), &pid, &seg("PV1", &[(45, "20240230")])],
        "PV1-45 (discharge date/time) is not valid: there is no such date",
        102,
    );
}
