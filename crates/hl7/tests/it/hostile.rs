//! Hostile input: random bytes, every truncation and many mutations of real messages, random
//! DTM strings and MLLP streams. Whatever the bytes, the result is `Ok` or `Err`, never a
//! panic; what is accepted behaves (an ACK for any parsed header parses back, timestamps
//! print back to themselves, MLLP output does not depend on how reads split the stream).
//! A fixed-seed PRNG keeps the runs reproducible.

use chrono::{TimeZone, Utc};
use medlake_hl7::mllp::{Decoder, FrameError, START, frame};
use medlake_hl7::{
    AckCode, Message, Timestamp, ack, ack_error, adt, observations, parse, parse_header_lenient,
    reject_parse_error,
};

use crate::samples;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING: &[u8] =
    b"|^~\\&#$%*\r\n\x0b\x1c\x0d0123456789.+-MSHPIDOBXVREN \xff\xc3\xa9\x00XFSTP";

const PATHS: &[&str] = &[
    "MSH-1",
    "MSH-2",
    "MSH-3",
    "MSH-9-2",
    "MSH-18",
    "PID-3",
    "PID-3(2)-4-2",
    "PID-5-2",
    "PV1-3",
    "OBX-5",
    "OBX(2)-5-1-1",
    "OBX(999999)-1",
    "NTE-3(999999)-999999-999999",
    "ZZZ-1",
];

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(400);
    let mut out: Vec<u8> = if rng.below(2) == 0 {
        b"MSH|^~\\&|".to_vec()
    } else {
        Vec::new()
    };
    for _ in 0..len {
        let b = if rng.below(3) == 0 {
            rng.next() as u8
        } else {
            *rng.pick(INTERESTING)
        };
        out.push(b);
    }
    out
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(m.len() + 1);
        let b = if rng.below(2) == 0 {
            rng.next() as u8
        } else {
            *rng.pick(INTERESTING)
        };
        match rng.below(5) {
            0 if at < m.len() => m[at] = b,
            1 => m.insert(at, b),
            2 if at < m.len() => {
                m.remove(at);
            }
            3 => {
                let end = (at + rng.below(40)).min(m.len());
                let slice = m[at..end].to_vec();
                let to = rng.below(m.len() + 1);
                m.splice(to..to, slice);
            }
            _ => m.truncate(at),
        }
    }
    m
}

/// Everything the crate offers on one input; panics only on a broken property.
fn exercise(bytes: &[u8]) {
    let now = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let m = match parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let _ = (e.hl7_code(), e.ack_code());
            parse(&reject_parse_error(&e, "R", now)).expect("a reject parses");
            let back = parse(&ack_error(bytes, &e, "R", now))
                .unwrap_or_else(|x| panic!("ack_error of {bytes:?} does not parse: {x}"));
            if let Some(h) = parse_header_lenient(bytes)
                && h.control_id.is_ascii()
            {
                assert_eq!(
                    back.get("MSA-2"),
                    Some(h.control_id).filter(|c| !c.is_empty())
                );
            }
            return;
        }
    };
    walk(&m);
    for p in PATHS {
        let _ = m.get(p);
    }
    if let Ok(obs) = observations(&m) {
        assert!(!obs.is_empty());
    }
    let _ = adt(&m);
    let h = m.header();
    for code in [AckCode::Accept, AckCode::Error, AckCode::Reject] {
        let a = ack(h, code, Some((102, "x|^~\\&#\r\n")), "ACKID", now);
        let back = parse(&a).unwrap_or_else(|e| panic!("ACK of {bytes:?} does not parse: {e}"));
        assert_eq!(back.get("MSA-1").as_deref(), Some(code.as_str()));
        if h.control_id.is_ascii() {
            assert_eq!(back.get("MSA-2").as_deref(), Some(h.control_id.as_str()));
        }
        assert_eq!(back.header().encoding, h.encoding);
    }
    if let Some(t) = h.timestamp {
        assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        let _ = t.to_utc_micros(chrono_tz::Europe::London);
    }
}

fn walk(m: &Message) {
    for s in m.all_segments() {
        for n in 0..=s.field_count() + 1 {
            let Some(f) = s.field(n) else { continue };
            let _ = f.text();
            for r in f.repetitions() {
                let _ = r.text();
                for c in r.components() {
                    let _ = c.text();
                    for sub in c.subcomponents() {
                        let _ = sub.len();
                    }
                }
            }
        }
    }
}

#[test]
fn hostile_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        exercise(&random_bytes(&mut rng));
    }
}

#[test]
fn hostile_truncations_never_panic() {
    for sample in samples() {
        for end in 0..=sample.len() {
            exercise(&sample[..end]);
            exercise(&sample[end..]);
        }
    }
}

#[test]
fn hostile_mutations_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for sample in samples() {
        exercise(&sample);
        for _ in 0..2_000 {
            exercise(&mutate(&mut rng, &sample));
        }
    }
}

#[test]
fn hostile_timestamps_never_panic() {
    let mut rng = Rng(42);
    let alphabet: Vec<char> = "0123456789012345678901234567890123456789.+- 5x"
        .chars()
        .collect();
    let zones = [
        chrono_tz::Europe::London,
        chrono_tz::America::Santiago,
        chrono_tz::Pacific::Auckland,
        chrono_tz::Pacific::Kiritimati,
        chrono_tz::UTC,
    ];
    for _ in 0..50_000 {
        let len = rng.below(26);
        let s: String = (0..len).map(|_| *rng.pick(&alphabet)).collect();
        if let Ok(t) = Timestamp::parse(&s) {
            assert_eq!(t.to_string(), s, "valid values print back as written");
            let _ = t.to_utc_micros(*rng.pick(&zones));
        }
    }
    for y in ["0000", "0001", "9999"] {
        for rest in ["", "1231235959.999999+1800", "1231235959-1800", "0101"] {
            let t = Timestamp::parse(&format!("{y}{rest}")).unwrap();
            for z in zones {
                let _ = t.to_utc_micros(z);
            }
        }
    }
}

/// A stream of frames (payloads without START or 0x1C) and garbage (without START).
fn stream(rng: &mut Rng, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(8) {
        if rng.below(3) == 0 {
            for _ in 0..rng.below(20) {
                let b = rng.next() as u8;
                out.push(if b == START { b'.' } else { b });
            }
        }
        let p: Vec<u8> = if rng.below(2) == 0 {
            rng.pick(payloads).clone()
        } else {
            (0..rng.below(50))
                .map(|_| match rng.next() as u8 {
                    START | 0x1c => b'x',
                    b => b,
                })
                .collect()
        };
        out.extend(frame(&p));
    }
    out
}

fn decode_in_chunks(
    rng: &mut Rng,
    bytes: &[u8],
    max: usize,
    chunked: bool,
) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut d = Decoder::new(max);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = if chunked {
            1 + rng.below(rest.len().min(64))
        } else {
            rest.len()
        };
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.decode(&mut buf) {
                Ok(None) => break,
                r => out.push(r.map(|f| f.unwrap_or_default())),
            }
        }
        assert!(buf.len() <= max + 2, "buffer {} for limit {max}", buf.len());
    }
    out
}

#[test]
fn hostile_mllp_streams_never_panic() {
    let mut rng = Rng(7);
    let payloads = samples();
    for _ in 0..3_000 {
        let bytes = stream(&mut rng, &payloads);
        let max = *rng.pick(&[0, 1, 10, 100, 400, 1 << 20]);
        let whole = decode_in_chunks(&mut rng, &bytes, max, false);
        let chunked = decode_in_chunks(&mut rng, &bytes, max, true);
        assert_eq!(
            whole, chunked,
            "the way reads split the stream does not matter"
        );
        for r in whole.iter().flatten() {
            assert!(r.len() <= max);
        }
        // Any bytes at all: no panic, bounded buffer.
        let noise = mutate(&mut rng, &bytes);
        decode_in_chunks(&mut rng, &noise, max, true);
    }
}
