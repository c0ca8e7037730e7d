//! Acknowledgements: built, then parsed back.

use chrono::{TimeZone, Utc};
use medlake_hl7::{
    AckCode, ParseError, TextEncoding, ack, ack_error, parse, parse_header_lenient,
    reject_parse_error, reject_unparsed,
};

use crate::{PCD01, message, msg};

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 15, 9, 30, 6).unwrap()
}

#[test]
fn accept_round_trip() {
    let original = parse(&msg(PCD01)).unwrap();
    let bytes = ack(original.header(), AckCode::Accept, None, "ACK0001", now());
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(
        text,
        "MSH|^~\\&|MEDLAKE|HOSP|ACME_GW^0123456789ABCDEF^EUI-64|ICU_WEST|20240315093006+0000||\
         ACK^R01^ACK|ACK0001|P|2.6||||||UNICODE UTF-8\rMSA|AA|PCD00001\r"
    );
    let a = parse(&bytes).unwrap();
    let h = a.header();
    assert_eq!(
        (h.message_code.as_str(), h.trigger_event.as_str()),
        ("ACK", "R01")
    );
    assert_eq!(h.control_id, "ACK0001");
    assert_eq!(h.receiving_application, "ACME_GW^0123456789ABCDEF^EUI-64");
    assert_eq!(h.sending_application, "MEDLAKE");
    assert_eq!(h.version, "2.6");
    assert_eq!(h.charset.as_deref(), Some("UNICODE UTF-8"));
    assert_eq!(a.get("MSA-1").as_deref(), Some("AA"));
    assert_eq!(a.get("MSA-2").as_deref(), Some("PCD00001"));
    assert_eq!(a.segment("ERR"), None);
    assert_eq!(AckCode::from_code("AA"), Some(AckCode::Accept));
}

#[test]
fn error_with_err_segment() {
    let original = parse(&msg(PCD01)).unwrap();
    let text = "OBX(2)-5 (observation value) is not valid: not a number | see ^ \\ & ~";
    let bytes = ack(
        original.header(),
        AckCode::Error,
        Some((102, text)),
        "A2",
        now(),
    );
    let a = parse(&bytes).unwrap();
    assert_eq!(a.get("MSA-1").as_deref(), Some("AE"));
    assert_eq!(a.get("MSA-2").as_deref(), Some("PCD00001"));
    assert_eq!(
        a.get("MSA-3").as_deref(),
        Some(text),
        "escaped, then unescaped"
    );
    assert_eq!(a.get("ERR-3-1").as_deref(), Some("102"));
    assert_eq!(a.get("ERR-3-2").as_deref(), Some("Data type error"));
    assert_eq!(a.get("ERR-3-3").as_deref(), Some("HL70357"));
    assert_eq!(a.get("ERR-4").as_deref(), Some("E"));
    assert_eq!(a.get("ERR-8").as_deref(), Some(text));
    let raw = String::from_utf8(bytes).unwrap();
    assert!(raw.ends_with("\r"));
    assert_eq!(raw.matches('\r').count(), 3);

    let bytes = ack(original.header(), AckCode::Reject, None, "A3", now());
    let a = parse(&bytes).unwrap();
    assert_eq!(a.get("MSA-1").as_deref(), Some("AR"));
    assert_eq!(a.get("ERR-3").as_deref(), Some("207"));
    let bytes = ack(
        original.header(),
        AckCode::Accept,
        Some((0, "noted")),
        "A4",
        now(),
    );
    let a = parse(&bytes).unwrap();
    assert_eq!(a.get("ERR-4").as_deref(), Some("W"));
}

#[test]
fn same_delimiters_and_charset_as_the_original() {
    let original = parse(&message::odd_delimiters_sample()).unwrap();
    let bytes = ack(
        original.header(),
        AckCode::Error,
        Some((101, "a#b$c")),
        "X1",
        now(),
    );
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with("MSH#$%&*#R#F#GW$EUI#F#20240315093006+0000##ACK$R01$ACK#X1#P#2.6\r"),
        "{text}"
    );
    let a = parse(&bytes).unwrap();
    assert_eq!(a.header().field_separator, '#');
    assert_eq!(a.get("MSA-2").as_deref(), Some("ODD1"));
    assert_eq!(a.get("MSA-3").as_deref(), Some("a#b$c"));
    assert_eq!(a.get("ERR-3-2").as_deref(), Some("Required field missing"));

    let original = parse(&message::latin1_sample()).unwrap();
    let header = original.header();
    let bytes = ack(
        header,
        AckCode::Error,
        Some((207, "Müller: ¿€?")),
        "L2",
        now(),
    );
    assert!(std::str::from_utf8(&bytes).is_err(), "ISO 8859-1 bytes");
    let a = parse(&bytes).unwrap();
    assert_eq!(a.header().text_encoding, TextEncoding::Latin1);
    assert_eq!(a.header().charset.as_deref(), Some("8859/1"));
    assert_eq!(
        a.get("MSA-3").as_deref(),
        Some("Müller: ¿??"),
        "no euro sign in 8859-1"
    );
}

#[test]
fn reject_unparsed_bytes() {
    let e = parse(b"garbage").unwrap_err();
    let bytes = reject_unparsed(&e.to_string(), "R1", now());
    let a = parse(&bytes).unwrap();
    assert_eq!(a.header().message_code, "ACK");
    assert_eq!(a.header().trigger_event, "");
    assert_eq!(a.header().control_id, "R1");
    assert_eq!(a.header().version, "2.5");
    assert_eq!(a.get("MSA-1").as_deref(), Some("AR"));
    assert_eq!(a.get("MSA-2"), None);
    assert_eq!(a.get("MSA-3").as_deref(), Some(e.to_string().as_str()));
    assert_eq!(a.get("ERR-3").as_deref(), Some("100"));
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "MSH|^~\\&|||||20240315093006+0000||ACK|R1|P|2.5\rMSA|AR||the message does not start with \
         an MSH segment (it starts with \"gar\")\rERR|||100^Segment sequence error^HL70357|E||||the \
         message does not start with an MSH segment (it starts with \"gar\")\r"
    );

    let e = ParseError::UnsupportedCharset {
        charset: "ISO IR87".into(),
    };
    let a = parse(&reject_parse_error(&e, "R2", now())).unwrap();
    assert_eq!(a.get("ERR-3").as_deref(), Some("103"));
    assert_eq!(e.ack_code(), AckCode::Reject);
}

#[test]
fn errors_are_answered_with_the_senders_control_id() {
    let cases: &[(&[u8], &str, u16)] = &[
        (
            b"MSH|^~\\&|GW|F|R|F|2024131||ORU^R01|C7|P|2.6\rPID|1\r",
            "AE",
            102,
        ),
        (
            b"MSH|^~\\&|GW|F|R|F|20240101||ORU^R01|C7|P|2.6||||||ISO IR87\r",
            "AR",
            103,
        ),
        (
            b"MSH|^~\\&|GW|F|R|F|20240101||ORU^R01|C7|P|2.6||||||UNICODE UTF-8\rPID|\xff\r",
            "AR",
            102,
        ),
        (b"MSH|^~\\&|GW|F|R|F|20240101||ORU^R01|C7\rPID|1", "AE", 101),
        (
            b"MSH|^~\\&|GW|F|R|F|20240101||ORU^R01|C7|P|2.6\rpid|1",
            "AR",
            100,
        ),
    ];
    for &(bytes, code, err3) in cases {
        let e = parse(bytes).unwrap_err();
        let h = parse_header_lenient(bytes).unwrap();
        assert_eq!(
            (h.control_id.as_str(), h.sending_application.as_str()),
            ("C7", "GW")
        );
        let a = parse(&ack_error(bytes, &e, "N1", now())).unwrap();
        assert_eq!(a.get("MSA-1").as_deref(), Some(code), "{e}");
        assert_eq!(a.get("MSA-2").as_deref(), Some("C7"), "{e}");
        assert_eq!(a.get("MSA-3"), Some(e.to_string()));
        assert_eq!(
            a.get("ERR-3").as_deref(),
            Some(err3.to_string().as_str()),
            "{e}"
        );
        assert_eq!(a.header().receiving_application, "GW");
        assert_eq!(a.header().control_id, "N1");
    }
    let charset = parse_header_lenient(cases[1].0).unwrap().charset;
    assert_eq!(charset, None, "an unknown character set is not echoed");
    let e = parse(b"\x00\x01").unwrap_err();
    assert_eq!(parse_header_lenient(b"\x00\x01"), None);
    let a = parse(&ack_error(b"\x00\x01", &e, "N2", now())).unwrap();
    assert_eq!(
        (a.get("MSA-1").as_deref(), a.get("MSA-2")),
        (Some("AR"), None)
    );
}

/// Found by fuzzing (fuzz/light, `hl7_message`): with `.` as a delimiter (here the
/// subcomponent separator, MSH-2 `^~\.&`), a line feed escaped as `\.br\` was split at the
/// `.` and an ACK's error text lost everything from its first line break on; with `.` as the
/// escape character (MSH-2 `^~.\&`), `..br.` was no escape sequence at all. It is `\X0A\`
/// then.
#[test]
fn a_line_break_survives_a_dot_delimiter() {
    for msh in [
        r"MSH|^~\.&|LAB|HOSP|MEDLAKE|HOSP|20240315120000||ORU^R01|LAB123|P|2.5.1",
        r"MSH.^~\&.LAB.HOSP.MEDLAKE.HOSP.20240315120000..ORU^R01.LAB123.P.2.5.1",
        r"MSH|^.\&|LAB|HOSP|MEDLAKE|HOSP|20240315120000||ORU^R01|LAB123|P|2.5.1",
        r"MSH|^~.\&|LAB|HOSP|MEDLAKE|HOSP|20240315120000||ORU^R01|LAB123|P|2.5.1",
    ] {
        let original = parse(&msg(&[msh])).unwrap();
        let h = original.header();
        let text = "first line\nsecond. line\r\nthird";
        let escaped = medlake_hl7::escape_text(text, h);
        assert_eq!(medlake_hl7::unescape_text(&escaped, h), text);
        let back = parse(&ack(h, AckCode::Error, Some((102, text)), "A1", now())).unwrap();
        assert_eq!(back.get("ERR-8").as_deref(), Some(text), "{msh}");
        assert_eq!(back.get("MSA-2").as_deref(), Some("LAB123"));
        let e = h.encoding.escape;
        assert!(escaped.contains(&format!("{e}X0A{e}")), "{escaped}");
    }
    // Without a `.` delimiter, the usual formatting escape.
    let original = parse(&msg(PCD01)).unwrap();
    assert_eq!(
        medlake_hl7::escape_text("a\nb", original.header()),
        r"a\.br\b"
    );
}
