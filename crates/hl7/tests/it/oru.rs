//! ORU^R01 observations: IHE PCD-01 (MDC) and LOINC.

use chrono::{TimeZone, Utc};
use chrono_tz::Europe::London;
use medlake_hl7::{ParseError, observations, parse};

use crate::{LOINC, PCD01, msg, seg};

#[test]
fn pcd01_from_a_bedside_monitor() {
    let m = parse(&msg(PCD01)).unwrap();
    let obs = observations(&m).unwrap();
    assert_eq!(obs.len(), 4);

    let mds = &obs[0];
    assert_eq!(mds.index, 1);
    assert_eq!(mds.set_id, Some(1));
    assert_eq!(mds.value_type, "");
    assert_eq!(
        (
            mds.code.as_str(),
            mds.code_text.as_str(),
            mds.coding_system.as_str()
        ),
        ("69965", "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS", "MDC")
    );
    assert_eq!(mds.sub_id, "1");
    assert_eq!((mds.value.as_str(), mds.numeric), ("", None));
    assert_eq!(mds.status, "X");
    assert_eq!(mds.equipment, "1122334455667788");
    assert_eq!(
        mds.observed_at.unwrap().to_string(),
        "20240315103000+0100",
        "OBR-7"
    );

    let spo2 = &obs[1];
    assert_eq!(spo2.value_type, "NM");
    assert_eq!(
        (
            spo2.code.as_str(),
            spo2.code_text.as_str(),
            spo2.coding_system.as_str()
        ),
        ("150456", "MDC_PULS_OXIM_SAT_O2", "MDC")
    );
    assert_eq!(spo2.sub_id, "1.2.1.1");
    assert_eq!((spo2.value.as_str(), spo2.numeric), ("97", Some(97.0)));
    assert_eq!(
        (
            spo2.units.as_str(),
            spo2.units_text.as_str(),
            spo2.units_system.as_str()
        ),
        ("262688", "MDC_DIM_PERCENT", "MDC")
    );
    assert_eq!(spo2.reference_range, "90-100");
    assert_eq!(spo2.abnormal_flags, "N");
    assert_eq!(spo2.status, "F");
    let at = spo2.observed_at.unwrap().to_utc_micros(London).unwrap();
    assert_eq!(
        at,
        Utc.with_ymd_and_hms(2024, 3, 15, 9, 30, 0)
            .unwrap()
            .timestamp_micros()
    );
    assert_eq!(spo2.equipment, "1122334455667788");
    assert_eq!(spo2.patient_id, "12345678");
    assert_eq!(spo2.patient_id_authority, "HOSP");
    assert_eq!(spo2.patient_name, "Doe^John");
    assert_eq!(spo2.location, "ICU^12^1^WEST");
    assert_eq!(spo2.visit_number, "");
    assert_eq!(spo2.order_id, "FILL1");
    assert_eq!(spo2.order_code, "182777000");

    let hr = &obs[2];
    assert_eq!(
        (hr.code.as_str(), hr.code_text.as_str()),
        ("147842", "MDC_ECG_HEART_RATE")
    );
    assert_eq!(hr.numeric, Some(72.0));
    assert_eq!(
        (hr.units.as_str(), hr.units_text.as_str()),
        ("264864", "MDC_DIM_BEAT_PER_MIN")
    );
    assert_eq!(hr.observed_at.unwrap().to_string(), "20240315103001+0100");

    let nibp = &obs[3];
    assert_eq!(nibp.numeric, Some(-0.5));
    assert_eq!(
        (nibp.status.as_str(), nibp.abnormal_flags.as_str()),
        ("R", "L")
    );
    assert_eq!(nibp.equipment, "");
    assert_eq!(nibp.observed_at.unwrap().to_string(), "20240315103000+0100");
}

#[test]
fn loinc_lab_result() {
    let m = parse(&msg(LOINC)).unwrap();
    let obs = observations(&m).unwrap();
    assert_eq!(obs.len(), 5);
    let hr = &obs[0];
    assert_eq!(
        (
            hr.code.as_str(),
            hr.code_text.as_str(),
            hr.coding_system.as_str()
        ),
        ("8867-4", "Heart rate", "LN")
    );
    assert_eq!(hr.numeric, Some(88.0));
    assert_eq!(
        (
            hr.units.as_str(),
            hr.units_text.as_str(),
            hr.units_system.as_str()
        ),
        ("/min", "beats per minute", "UCUM")
    );
    assert_eq!(hr.patient_id, "MRN001");
    assert_eq!(hr.patient_id_authority, "HOSP");
    assert_eq!(hr.patient_name, "Smith^Anna");
    assert_eq!(hr.location, "CLINIC^^^MAIN");
    assert_eq!(hr.visit_number, "V777");
    assert_eq!(
        (hr.order_id.as_str(), hr.order_code.as_str()),
        ("FL1", "85353-1")
    );
    let t = hr.observed_at.unwrap();
    assert_eq!(
        (t.to_string().as_str(), t.offset_minutes()),
        ("20240315115500", None)
    );
    assert_eq!(
        t.to_utc_micros(chrono_tz::America::New_York).unwrap(),
        Utc.with_ymd_and_hms(2024, 3, 15, 15, 55, 0)
            .unwrap()
            .timestamp_micros(),
        "EDT is UTC-4 on 15 March 2024"
    );

    let creat = &obs[1];
    assert_eq!((creat.value.as_str(), creat.numeric), ("=^1.1", Some(1.1)));
    assert_eq!(
        creat.observed_at.unwrap().to_string(),
        "20240315115000",
        "OBX-14 first"
    );
    let plt = &obs[2];
    assert_eq!((plt.value.as_str(), plt.numeric), (">^500", None));
    let ekg = &obs[3];
    assert_eq!(ekg.value, "Normal\nsinus rhythm~second line");
    assert_eq!(ekg.numeric, None);
    let height = &obs[4];
    assert_eq!(height.value, "175^cm&centimetre^UCUM");
    assert_eq!(height.status, "F");
}

#[test]
fn context_follows_segment_order() {
    let m = parse(&msg(&[
        r"MSH|^~\&|GW||||20240101120000+0000||ORU^R01|C1|P|2.6",
        r"OBX|1|NM|1^A^L||1",
        r"PID|||P1^^^H^MR",
        r"PV1||I|BED1",
        r"OBR|1||O1|X|||20240101110000+0000",
        r"OBX|2|NM|2^B^L||2",
        r"PID|||NI1^^^H^NI~P2^^^H2^MR||Two",
        r"OBX|3|NM|3^C^L||3",
    ]))
    .unwrap();
    let obs = observations(&m).unwrap();
    let summary: Vec<_> = obs
        .iter()
        .map(|o| {
            (
                o.patient_id.as_str(),
                o.patient_id_authority.as_str(),
                o.location.as_str(),
                o.order_id.as_str(),
                o.observed_at.unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("", "", "", "", "20240101120000+0000".to_owned()),
            ("P1", "H", "BED1", "O1", "20240101110000+0000".to_owned()),
            ("P2", "H2", "", "", "20240101120000+0000".to_owned()),
        ]
    );
    assert_eq!(obs[2].patient_name, "Two");
}

fn oru(obx: &[&str]) -> Result<Vec<medlake_hl7::Observation>, ParseError> {
    let mut segments = vec![
        r"MSH|^~\&|GW||||20240101||ORU^R01|C1|P|2.6",
        "PID|||1",
        "OBR|1",
    ];
    segments.extend_from_slice(obx);
    observations(&parse(&msg(&segments))?)
}

#[test]
fn numbers() {
    let value = |t: &str, v: &str| {
        let obx = seg("OBX", &[(1, "1"), (2, t), (3, "X^Y^L"), (5, v)]);
        oru(&[&obx]).map(|o| o[0].numeric)
    };
    assert_eq!(value("NM", "42"), Ok(Some(42.0)));
    assert_eq!(value("NM", " +3.25 "), Ok(Some(3.25)));
    assert_eq!(value("NM", "-.5"), Ok(Some(-0.5)));
    assert_eq!(value("NM", "007"), Ok(Some(7.0)));
    assert_eq!(value("NM", "1."), Ok(Some(1.0)));
    assert_eq!(value("NM", ""), Ok(None));
    assert_eq!(value("SN", "^12"), Ok(Some(12.0)));
    assert_eq!(value("SN", "<^12"), Ok(None));
    assert_eq!(value("SN", "^10^-^20"), Ok(None));
    assert_eq!(value("SN", "^1^:^128"), Ok(None));
    assert_eq!(value("ST", "12"), Ok(None));
    for bad in [
        "abc", "1e5", "inf", "NaN", "1.2.3", "-", ".", "1,5", "12^3", "1~2",
    ] {
        let e = value("NM", bad).unwrap_err();
        assert_eq!(e.hl7_code(), 102, "{bad}: {e}");
        assert!(
            e.to_string()
                .starts_with("OBX(1)-5 (observation value) is not valid"),
            "{e}"
        );
    }
    assert_eq!(value("SN", "^x").unwrap_err().hl7_code(), 102);
}

#[test]
fn errors() {
    let ok = "OBX|1|NM|1^A^L||1";
    let e = oru(&[ok, "OBX|2|NM|^only text^L||1"]).unwrap_err();
    assert_eq!(e.to_string(), "OBX(2)-3 (observation identifier) is empty");
    assert_eq!(e.hl7_code(), 101);
    let e = oru(&[]).unwrap_err();
    assert_eq!(e.to_string(), "the ORU^R01 message has no OBX segment");
    assert_eq!(e.hl7_code(), 100);
    let bad_time = seg(
        "OBX",
        &[
            (1, "1"),
            (2, "NM"),
            (3, "1^A^L"),
            (5, "1"),
            (14, "2024-01-01"),
        ],
    );
    let e = oru(&[&bad_time]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("OBX(1)-14 (date/time of the observation) is not valid"),
        "{e}"
    );
    let e = oru(&["OBX|x|NM|1^A^L||1"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "OBX(1)-1 (set id) is not valid: not an integer"
    );
    let e = observations(
        &parse(&msg(&[
            r"MSH|^~\&|GW||||20240101||ORU^R01|C1|P|2.6",
            "OBR|1||||||20241301",
            ok,
        ]))
        .unwrap(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("OBR(1)-7 (observation date/time) is not valid"),
        "{e}"
    );

    let adt = parse(&msg(&[r"MSH|^~\&|S||||20240101||ADT^A01|C1|P|2.5", ok])).unwrap();
    let e = observations(&adt).unwrap_err();
    assert_eq!(e.hl7_code(), 200);
    assert_eq!(
        e.to_string(),
        "message type \"ADT\" is not supported here (ORU^R01 expected)"
    );
    let r30 = parse(&msg(&[r"MSH|^~\&|S||||20240101||ORU^R30|C1|P|2.5", ok])).unwrap();
    let e = observations(&r30).unwrap_err();
    assert_eq!(e.hl7_code(), 201);
    assert_eq!(
        e.to_string(),
        "event ORU^R30 is not supported (ORU^R01 expected)"
    );
}
