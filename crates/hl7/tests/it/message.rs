//! Parsing: header, paths, escapes, delimiters, character sets, errors and limits.

use medlake_hl7::{Encoding, Limits, ParseError, TextEncoding, parse, parse_with};

use crate::{LOINC, PCD01, msg, seg};

#[test]
fn header_of_a_pcd01_message() {
    let m = parse(&msg(PCD01)).unwrap();
    let h = m.header();
    assert_eq!(h.field_separator, '|');
    assert_eq!(h.encoding, Encoding::default());
    assert_eq!(h.sending_application, "ACME_GW^0123456789ABCDEF^EUI-64");
    assert_eq!(h.sending_facility, "ICU_WEST");
    assert_eq!(h.receiving_application, "MEDLAKE");
    assert_eq!(h.receiving_facility, "HOSP");
    assert_eq!(h.timestamp.unwrap().to_string(), "20240315103005+0100");
    assert_eq!(
        (
            h.message_code.as_str(),
            h.trigger_event.as_str(),
            h.structure.as_str()
        ),
        ("ORU", "R01", "ORU_R01")
    );
    assert_eq!(h.control_id, "PCD00001");
    assert_eq!(h.processing_id, "P");
    assert_eq!(h.version, "2.6");
    assert_eq!(
        (h.accept_ack_type.as_str(), h.application_ack_type.as_str()),
        ("NE", "AL")
    );
    assert_eq!(h.charset.as_deref(), Some("UNICODE UTF-8"));
    assert_eq!(h.text_encoding, TextEncoding::Utf8);
}

#[test]
fn terser_paths() {
    let m = parse(&msg(PCD01)).unwrap();
    let get = |p: &str| m.get(p);
    assert_eq!(get("MSH-1").as_deref(), Some("|"));
    assert_eq!(get("MSH-2").as_deref(), Some(r"^~\&"));
    assert_eq!(get("MSH-3").as_deref(), Some("ACME_GW"));
    assert_eq!(get("MSH-3-3").as_deref(), Some("EUI-64"));
    assert_eq!(get("MSH-9").as_deref(), Some("ORU"));
    assert_eq!(get("MSH-9-2").as_deref(), Some("R01"));
    assert_eq!(get("MSH.9.3").as_deref(), Some("ORU_R01"));
    assert_eq!(get("MSH-10").as_deref(), Some("PCD00001"));
    assert_eq!(get("PID-3").as_deref(), Some("12345678"));
    assert_eq!(get("PID-3-1").as_deref(), Some("12345678"));
    assert_eq!(get("PID-3(2)-1").as_deref(), Some("987654"));
    assert_eq!(get("PID-3(2)-5").as_deref(), Some("NI"));
    assert_eq!(get("PID-3(3)-1"), None);
    assert_eq!(get("PID-5").as_deref(), Some("Doe"));
    assert_eq!(get("PID-5-2").as_deref(), Some("John"));
    assert_eq!(get("PV1-3-2").as_deref(), Some("12"));
    assert_eq!(get("OBX-5"), None, "the first OBX (MDS row) has no value");
    assert_eq!(get("OBX(2)-5").as_deref(), Some("97"));
    assert_eq!(get("OBX(3)-3-2").as_deref(), Some("MDC_ECG_HEART_RATE"));
    assert_eq!(get("OBX(9)-5"), None);
    assert_eq!(get("OBX-99"), None);
    for bad in [
        "",
        "PID",
        "PID-",
        "PID-0",
        "PID-3(0)",
        "PID-3-1-1-1",
        "pid-3",
        "PID-x",
        "P-3",
    ] {
        assert_eq!(get(bad), None, "{bad:?}");
    }
}

#[test]
fn segment_views() {
    let m = parse(&msg(PCD01)).unwrap();
    assert_eq!(m.all_segments().len(), 8);
    assert_eq!(m.segments("OBX").count(), 4);
    let pid = m.segment("PID").unwrap();
    assert_eq!(pid.id(), "PID");
    assert_eq!(pid.field_count(), 8);
    assert_eq!(pid.raw(3), Some("12345678^^^HOSP^MR~987654^^^NATION^NI"));
    assert_eq!(pid.raw(0), None);
    assert_eq!(pid.raw(9), None);
    let ids = pid.field(3).unwrap();
    let reps: Vec<String> = ids.repetitions().map(|r| r.text()).collect();
    assert_eq!(reps, ["12345678^^^HOSP^MR", "987654^^^NATION^NI"]);
    assert_eq!(ids.text(), "12345678^^^HOSP^MR~987654^^^NATION^NI");
    assert_eq!(pid.field(5).unwrap().text(), "Doe^John^^^^^L");
    assert_eq!(pid.get("3(2)-4").as_deref(), Some("NATION"));
    let msh = m.segment("MSH").unwrap();
    assert_eq!(msh.field(2).unwrap().repetitions().count(), 1);
    assert_eq!(msh.field(2).unwrap().text(), r"^~\&");
    assert_eq!(msh.field_count(), 21);
    assert_eq!(msh.as_str(), PCD01[0]);
}

/// Every escape of the table, in a message.
pub fn escapes_sample() -> Vec<u8> {
    msg(&[
        r"MSH|^~\&#|SENDER|FAC|RCV|FAC|20240101||ADT^A08|ESC1|P|2.7",
        r"NTE|1||a\F\b\S\c\T\d\R\e\E\f\P\g\.br\h\X41C3A9\i\H\j\N\k\Zxx\l\X4\m\XZZ\n\",
        r"NTE|2||\E\\E\|C:\temp\new|\|trailing\",
        r"NTE|3||A&B&&~X^^",
    ])
}

#[test]
fn escape_sequences() {
    let m = parse(&escapes_sample()).unwrap();
    assert_eq!(m.header().encoding.truncation, Some('#'));
    assert_eq!(m.get("MSH-2").as_deref(), Some(r"^~\&#"));
    assert_eq!(
        m.get("NTE-3").as_deref(),
        Some("a|b^c&d~e\\f#g\nh\u{41}\u{e9}i\\H\\j\\N\\k\\Zxx\\l\\X4\\m\\XZZ\\n\\")
    );
    let nte2 = m.segments("NTE").nth(1).unwrap();
    assert_eq!(nte2.get("3").as_deref(), Some(r"\\"));
    assert_eq!(nte2.get("4").as_deref(), Some(r"C:\temp\new"));
    assert_eq!(
        nte2.get("5").as_deref(),
        Some(r"\"),
        "an unterminated escape is kept"
    );
    assert_eq!(nte2.get("6").as_deref(), Some(r"trailing\"));
    let nte3 = m.get("NTE(3)-3-1-2");
    assert_eq!(nte3.as_deref(), Some("B"));
    let f = m.segments("NTE").nth(2).unwrap().field(3).unwrap();
    assert_eq!(f.text(), "A&B~X", "trailing empty parts are dropped");
    let c = f.repetition(1).unwrap().component(1).unwrap();
    let subs: Vec<String> = c.subcomponents().map(|s| s.into_owned()).collect();
    assert_eq!(subs, ["A", "B", "", ""]);

    let h = m.header();
    let text = "x|y^z&w~v\\u#t\nr\rq";
    let escaped = medlake_hl7::escape_text(text, h);
    assert_eq!(escaped, r"x\F\y\S\z\T\w\R\v\E\u\P\t\.br\r\X0D\q");
    assert_eq!(medlake_hl7::unescape_text(&escaped, h), text);
}

#[test]
fn truncation_escape_needs_a_truncation_character() {
    let m = parse(&msg(&[
        r"MSH|^~\&|S|F|R|F|20240101||ADT^A08|T1|P|2.5",
        r"NTE|1||a\P\b#c",
    ]))
    .unwrap();
    assert_eq!(m.header().encoding.truncation, None);
    assert_eq!(m.get("NTE-3").as_deref(), Some(r"a\P\b#c"));
}

/// The same content as a small PCD message with `#$%&*` as delimiters: field `#`, component
/// `$`, repetition `%`, escape `&`, subcomponent `*`.
pub fn odd_delimiters_sample() -> Vec<u8> {
    msg(&[
        "MSH#$%&*#GW$EUI#F#R#F#20240315103000##ORU$R01$ORU_R01#ODD1#P#2.6",
        "PID###123$$$HOSP*1.2.3*ISO$MR%456$$$X$NI##Doe$Jane",
        "OBR#1##F1#CODE1",
        "OBX#1#NM#8867-4$Heart rate$LN##70#/min$$UCUM#####F",
        "OBX#2#ST#X$Note$L##a&F&b&S&c&T&d&R&e&E&f^|~\\##",
    ])
}

#[test]
fn non_default_delimiters() {
    let m = parse(&odd_delimiters_sample()).unwrap();
    let h = m.header();
    assert_eq!(h.field_separator, '#');
    assert_eq!(
        h.encoding,
        Encoding {
            component: '$',
            repetition: '%',
            escape: '&',
            subcomponent: '*',
            truncation: None
        }
    );
    assert_eq!(h.sending_application, "GW^EUI");
    assert_eq!(h.trigger_event, "R01");
    assert_eq!(h.control_id, "ODD1");
    assert_eq!(m.get("MSH-1").as_deref(), Some("#"));
    assert_eq!(m.get("MSH-2").as_deref(), Some("$%&*"));
    assert_eq!(m.get("PID-3(2)-1").as_deref(), Some("456"));
    assert_eq!(m.get("PID-3-4-2").as_deref(), Some("1.2.3"));
    assert_eq!(m.get("PID-5-2").as_deref(), Some("Jane"));
    assert_eq!(m.get("OBX(2)-5").as_deref(), Some("a#b$c*d%e&f^|~\\"));
    let obs = medlake_hl7::observations(&m).unwrap();
    assert_eq!(obs[0].code, "8867-4");
    assert_eq!(obs[0].numeric, Some(70.0));
    assert_eq!(obs[0].units_system, "UCUM");
    assert_eq!(obs[0].patient_id, "123");
    assert_eq!(obs[0].patient_id_authority, "HOSP");
    assert_eq!(obs[0].patient_name, "Doe^Jane");
    assert_eq!(obs[1].value, "a#b$c*d%e&f^|~\\");
}

/// A Latin-1 ADT (MSH-18 `8859/1`) with a name outside ASCII.
pub fn latin1_sample() -> Vec<u8> {
    let mut bytes = msg(&[
        r"MSH|^~\&|ADT1|HOSP|MEDLAKE|HOSP|20240315083000||ADT^A08^ADT_A01|L1|P|2.5||||||8859/1",
        "EVN|A08|20240315083000",
        "PID|||4711^^^HOSP^MR||M\u{fc}ller^J\u{f6}rg||19700101|M",
        "PV1||I|STATION^3^1^S\u{fc}d",
        r"NTE|1||\XFC\",
    ]);
    // The literal above is UTF-8; make it Latin-1 (each of these characters is one byte).
    let text = String::from_utf8(std::mem::take(&mut bytes)).unwrap();
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

#[test]
fn latin1_declared() {
    let bytes = latin1_sample();
    assert!(std::str::from_utf8(&bytes).is_err());
    let m = parse(&bytes).unwrap();
    assert_eq!(m.header().text_encoding, TextEncoding::Latin1);
    assert_eq!(m.header().charset.as_deref(), Some("8859/1"));
    assert_eq!(m.get("PID-5").as_deref(), Some("Müller"));
    assert_eq!(m.get("PID-5-2").as_deref(), Some("Jörg"));
    assert_eq!(m.get("PV1-3-4").as_deref(), Some("Süd"));
    assert_eq!(
        m.get("NTE-3").as_deref(),
        Some("ü"),
        "hex escapes are Latin-1 bytes too"
    );
    let e = medlake_hl7::adt(&m).unwrap();
    assert_eq!(e.patient_name, "Müller^Jörg");
}

#[test]
fn undeclared_charset_falls_back_to_latin1() {
    let mut bytes = b"MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rPID|||1^^^H^MR||M".to_vec();
    bytes.push(0xfc);
    bytes.extend_from_slice(b"ller\r");
    let m = parse(&bytes).unwrap();
    assert_eq!(m.header().charset, None);
    assert_eq!(m.header().text_encoding, TextEncoding::Latin1);
    assert_eq!(m.get("PID-5").as_deref(), Some("Müller"));

    let utf8 = "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5||||||ASCII\rPID|||1||Müller\r";
    let m = parse(utf8.as_bytes()).unwrap();
    assert_eq!(m.header().text_encoding, TextEncoding::Utf8);
    assert_eq!(m.get("PID-5").as_deref(), Some("Müller"));
}

#[test]
fn utf8_declared() {
    let text = "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5||||||UNICODE UTF-8\rPID|||1||Øster^Zoë\\X20E2\\\r";
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(m.get("PID-5").as_deref(), Some("Øster"));
    assert_eq!(
        m.get("PID-5-2").as_deref(),
        Some("Zoë\u{20E2}"),
        "hex that is not UTF-8 is read as a code point (python-hl7 writes those)"
    );

    let mut bad = text.as_bytes().to_vec();
    let at = bad.len() - 3;
    bad[at] = 0xff;
    let e = parse(&bad).unwrap_err();
    assert!(matches!(e, ParseError::InvalidUtf8 { .. }), "{e}");
    assert_eq!(e.hl7_code(), 102);
    assert!(e.to_string().contains("MSH-18"), "{e}");
}

#[test]
fn unsupported_charset() {
    let text = "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5||||||ISO IR87\rPID|||1\r";
    let e = parse(text.as_bytes()).unwrap_err();
    assert_eq!(
        e,
        ParseError::UnsupportedCharset {
            charset: "ISO IR87".into()
        }
    );
    assert_eq!(e.hl7_code(), 103);
}

#[test]
fn segment_terminators_are_lenient() {
    let base = msg(LOINC);
    let crlf = String::from_utf8(base.clone())
        .unwrap()
        .replace('\r', "\r\n");
    let lf = String::from_utf8(base.clone()).unwrap().replace('\r', "\n");
    let mut padded = b"\xEF\xBB\xBF\r\n  ".to_vec();
    padded.extend_from_slice(&base);
    padded.extend_from_slice(b"\r\n\r\n");
    let reference = parse(&base).unwrap();
    for bytes in [crlf.into_bytes(), lf.into_bytes(), padded] {
        let m = parse(&bytes).unwrap();
        assert_eq!(m.all_segments().len(), reference.all_segments().len());
        assert_eq!(m.get("OBX(4)-5"), reference.get("OBX(4)-5"));
        assert_eq!(m.header(), reference.header());
    }
    assert!(
        parse(b"MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5").is_ok(),
        "no final terminator"
    );
}

#[test]
fn header_errors_name_the_field() {
    let cases: &[(&str, &str, u16)] = &[
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08||P|2.5",
            "MSH-10 (message control id) is empty",
            101,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101|||C1|P|2.5",
            "MSH-9 (message type) is empty",
            101,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||^A08|C1|P|2.5",
            "MSH-9 (message type) is empty",
            101,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1||2.5",
            "MSH-11 (processing id) is empty",
            101,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P",
            "MSH-12 (version id) is empty",
            101,
        ),
        (
            "MSH|^~\\&|S|F|R|F|2024130||ADT^A08|C1|P|2.5",
            "MSH-7 (date/time of message) is not valid",
            102,
        ),
        (
            "MSH|^~|S",
            "MSH-2 (encoding characters) must have 4 or 5 characters",
            102,
        ),
        (
            "MSH|^~\\&#!|S",
            "MSH-2 (encoding characters) must have 4 or 5 characters",
            102,
        ),
        (
            "MSH|^^\\&|S",
            "MSH-2 (encoding characters) must be distinct characters",
            102,
        ),
        (
            "MSH|^~|&|S",
            "MSH-2 (encoding characters) must have 4 or 5 characters",
            102,
        ),
        (
            "MSHA^~\\&",
            "MSH-1 (field separator) must be a printable",
            102,
        ),
        ("MSH", "MSH-1 (field separator) is missing", 102),
        ("PID|1", "does not start with an MSH segment", 100),
        ("", "the message is empty", 100),
        ("\r\n \r", "the message is empty", 100),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rMSH|^~\\&|",
            "segment 2 is a second MSH",
            100,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rpid|1",
            "segment 2 has an invalid segment id",
            100,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rPIDX|1",
            "segment 2 has an invalid segment id",
            100,
        ),
        (
            "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\r1ID|1",
            "segment 2 has an invalid segment id",
            100,
        ),
    ];
    for &(text, want, code) in cases {
        let e = parse(text.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(want), "{text:?}: {e}");
        assert_eq!(e.hl7_code(), code, "{text:?}: {e}");
    }
}

#[test]
fn limits_are_errors() {
    let limits = Limits {
        max_bytes: 100,
        max_segments: 3,
        max_fields: 5,
    };
    let long = vec![b'x'; 101];
    assert_eq!(
        parse_with(&long, &limits).unwrap_err(),
        ParseError::TooLarge {
            bytes: 101,
            limit: 100
        }
    );
    let many = msg(&["MSH|^~\\&|S||||||A^B|1|P|2", "PID", "PV1", "OBX"]);
    let e = parse_with(
        &many,
        &Limits {
            max_bytes: 1000,
            max_fields: 20,
            ..limits
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        ParseError::TooMany {
            what: "segments",
            limit: 3
        }
    );
    let wide = msg(&["MSH|^~\\&|S", "PID|1|2|3|4|5|6"]);
    let e = parse_with(
        &wide,
        &Limits {
            max_bytes: 1000,
            ..limits
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        ParseError::TooMany {
            what: "fields in a segment",
            limit: 5
        }
    );
    assert_eq!(e.hl7_code(), 207);
    let exact = msg(&["MSH|^~\\&|S", "PID|1|2|3|4|5"]);
    let e = parse_with(
        &exact,
        &Limits {
            max_bytes: 1000,
            ..limits
        },
    )
    .unwrap_err();
    assert!(matches!(e, ParseError::MissingField { .. }), "{e}");
}

#[test]
fn absurd_inputs_fail_fast() {
    let start = std::time::Instant::now();
    let mut fields = b"MSH|^~\\&|".to_vec();
    fields.resize(16 << 20, b'|');
    assert!(matches!(parse(&fields), Err(ParseError::TooMany { .. })));
    let mut lines = b"MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\r".to_vec();
    while lines.len() < 16 << 20 {
        lines.extend_from_slice(b"Z\r");
    }
    assert!(matches!(
        parse(&lines),
        Err(ParseError::BadSegmentId { .. })
    ));
    let prefix = b"MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rNTE|1||";
    let mut escapes = prefix.to_vec();
    escapes.resize(8 << 20, b'\\');
    let m = parse(&escapes).unwrap();
    assert_eq!(
        m.get("NTE-3").map(|s| s.len()),
        Some(escapes.len() - prefix.len())
    );
    let mut reps = b"MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5\rPID|1||".to_vec();
    reps.resize(8 << 20, b'~');
    let m = parse(&reps).unwrap();
    assert_eq!(m.get("PID-3(999999)"), None);
    let mut many = b"MSH|^~\\&|S|F|R|F|20240101||ORU^R01|C1|P|2.5\r".to_vec();
    for i in 0..20_000 {
        many.extend_from_slice(format!("OBX|{i}|NM|8867-4^HR^LN||{i}|/min\r").as_bytes());
    }
    let m = parse(&many).unwrap();
    assert_eq!(medlake_hl7::observations(&m).unwrap().len(), 20_000);
    // Generous: this is about quadratic blow-ups (minutes), not speed.
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

#[test]
fn z_segments_and_helpers() {
    let m = parse(&msg(&[
        r"MSH|^~\&|S|F|R|F|20240101||ADT^A08|C1|P|2.5",
        &seg("ZPD", &[(1, "custom"), (4, "x^y")]),
    ]))
    .unwrap();
    assert_eq!(m.get("ZPD-1").as_deref(), Some("custom"));
    assert_eq!(m.get("ZPD-4-2").as_deref(), Some("y"));
    assert_eq!(m.get("ZPD-2"), None);
}

#[test]
fn hex_escapes_as_python_hl7_writes_them() {
    let text = "MSH|^~\\&|S|F|R|F|20240101||ADT^A08|C1|P|2.6||||||UNICODE UTF-8\rPID|||1||M\\Xfc\\ller \\T\\ S\\Xf6\\hne^Anna \\X20ac\\\r";
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(m.get("PID-5").as_deref(), Some("Müller & Söhne"));
    assert_eq!(m.get("PID-5-2").as_deref(), Some("Anna €"));
}
