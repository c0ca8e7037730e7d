//! MLLP framing: split reads, garbage, several frames per read, limits, resynchronisation.

use medlake_hl7::mllp::{Decoder, END, FrameError, START, frame};

use crate::{LOINC, PCD01, msg};

fn drain(d: &mut Decoder, buf: &mut Vec<u8>) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    loop {
        match d.decode(buf) {
            Ok(Some(f)) => out.push(Ok(f)),
            Ok(None) => return out,
            Err(e) => out.push(Err(e)),
        }
    }
}

#[test]
fn frame_layout() {
    assert_eq!(frame(b"MSH|x"), b"\x0bMSH|x\x1c\x0d");
    assert_eq!(START, 0x0b);
    assert_eq!(END, [0x1c, 0x0d]);
}

#[test]
fn split_reads_of_every_size() {
    let payload = msg(PCD01);
    let framed = frame(&payload);
    for chunk in 1..=framed.len() {
        let mut d = Decoder::new(1 << 20);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for part in framed.chunks(chunk) {
            buf.extend_from_slice(part);
            got.extend(drain(&mut d, &mut buf));
        }
        assert_eq!(got, [Ok(payload.clone())], "chunk {chunk}");
        assert!(buf.is_empty());
    }
}

#[test]
fn end_block_split_across_reads() {
    let mut d = Decoder::new(100);
    let mut buf = b"\x0bABC\x1c".to_vec();
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(
        buf, b"\x0bABC\x1c",
        "an incomplete frame stays in the buffer"
    );
    buf.push(0x0d);
    assert_eq!(d.decode(&mut buf), Ok(Some(b"ABC".to_vec())));
    assert!(buf.is_empty());
    let mut buf = b"\x0bA\x1cB\x1c\x0d".to_vec();
    assert_eq!(
        d.decode(&mut buf),
        Ok(Some(b"A\x1cB".to_vec())),
        "0x1C alone is payload"
    );
}

#[test]
fn garbage_before_start_and_between_frames() {
    let (a, b) = (msg(PCD01), msg(LOINC));
    let mut buf = b"\r\n\x00junk".to_vec();
    buf.extend(frame(&a));
    buf.extend_from_slice(b"\r\n");
    buf.extend(frame(&b));
    buf.extend_from_slice(b"\n\x0bMSH|partial");
    let mut d = Decoder::new(1 << 20);
    assert_eq!(drain(&mut d, &mut buf), [Ok(a), Ok(b)]);
    assert_eq!(buf, b"\x0bMSH|partial");
    let mut junk = b"no frame here \x1c\x0d".to_vec();
    assert_eq!(d.decode(&mut junk), Ok(None));
    assert!(junk.is_empty(), "garbage is dropped");
}

#[test]
fn two_frames_in_one_read() {
    let mut buf = frame(b"first");
    buf.extend(frame(b"second"));
    let mut d = Decoder::new(10);
    assert_eq!(d.decode(&mut buf), Ok(Some(b"first".to_vec())));
    assert_eq!(d.decode(&mut buf), Ok(Some(b"second".to_vec())));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn too_large_frames_are_dropped_and_decoding_goes_on() {
    // Complete in one read.
    let mut buf = frame(b"0123456789A");
    buf.extend(frame(b"ok"));
    let mut d = Decoder::new(10);
    assert_eq!(
        drain(&mut d, &mut buf),
        [Err(FrameError::TooLarge { limit: 10 }), Ok(b"ok".to_vec())]
    );
    // Exactly the limit is fine.
    let mut buf = frame(b"0123456789");
    assert_eq!(d.decode(&mut buf), Ok(Some(b"0123456789".to_vec())));

    // Arriving slowly: reported as soon as it is too large, never buffered beyond that.
    let mut d = Decoder::new(10);
    let mut buf = vec![START];
    let mut errors = 0;
    for _ in 0..10_000 {
        buf.extend_from_slice(b"xxxxxxx");
        for r in drain(&mut d, &mut buf) {
            assert_eq!(r, Err(FrameError::TooLarge { limit: 10 }));
            errors += 1;
        }
        assert!(buf.len() <= 12, "{}", buf.len());
    }
    assert_eq!(errors, 1);
    buf.push(END[0]);
    assert!(drain(&mut d, &mut buf).is_empty());
    buf.push(END[1]);
    buf.extend(frame(b"next"));
    assert_eq!(drain(&mut d, &mut buf), [Ok(b"next".to_vec())]);
    assert!(
        FrameError::TooLarge { limit: 10 }
            .to_string()
            .contains("10 bytes")
    );
}

#[test]
fn a_new_start_interrupts_a_frame() {
    let mut buf = b"\x0bpartial\x0bwhole\x1c\x0d".to_vec();
    let mut d = Decoder::new(100);
    assert_eq!(
        drain(&mut d, &mut buf),
        [
            Err(FrameError::Interrupted { discarded: 7 }),
            Ok(b"whole".to_vec())
        ]
    );
}

/// Found by fuzzing (fuzz/light, `hl7_mllp`): a frame past the limit that a new start block
/// interrupts. Read in one piece it was `Interrupted` and the next frame was delivered; read
/// in small pieces it was `TooLarge`, and dropping it up to an end block swallowed the next
/// frame. Now both ways: `TooLarge`, then the next frame.
#[test]
fn a_too_large_frame_interrupted_by_a_new_start_is_read_the_same_way_however_split() {
    let mut stream = b"\x0b0123456789ABCDEF".to_vec();
    stream.extend(frame(b"next"));
    stream.extend(frame(b"0123456789ABCDEF"));
    stream.extend(frame(b"last"));
    let want = [
        Err(FrameError::TooLarge { limit: 10 }),
        Ok(b"next".to_vec()),
        Err(FrameError::TooLarge { limit: 10 }),
        Ok(b"last".to_vec()),
    ];
    for chunk in 1..=stream.len() {
        let mut d = Decoder::new(10);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for part in stream.chunks(chunk) {
            buf.extend_from_slice(part);
            got.extend(drain(&mut d, &mut buf));
        }
        assert_eq!(got, want, "reads of {chunk} bytes");
        assert!(buf.is_empty());
    }
    // Within the limit, a new start block is an interruption, however the bytes arrive.
    let stream = b"\x0b0123456789\x0bnext\x1c\x0d";
    for chunk in 1..=stream.len() {
        let mut d = Decoder::new(10);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for part in stream.chunks(chunk) {
            buf.extend_from_slice(part);
            got.extend(drain(&mut d, &mut buf));
        }
        assert_eq!(
            got,
            [
                Err(FrameError::Interrupted { discarded: 10 }),
                Ok(b"next".to_vec())
            ],
            "reads of {chunk} bytes"
        );
    }
}

#[test]
fn many_tiny_frames_take_linear_time() {
    let mut buf = Vec::new();
    for _ in 0..200_000 {
        buf.extend(frame(b"x"));
    }
    let start = std::time::Instant::now();
    let mut d = Decoder::new(10);
    let mut n = 0;
    while let Ok(Some(_)) = d.decode(&mut buf) {
        n += 1;
    }
    assert_eq!(n, 200_000);
    assert!(buf.is_empty());
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

#[test]
fn reset_forgets_everything() {
    let mut buf = frame(b"a");
    buf.extend(frame(b"b"));
    let mut d = Decoder::new(10);
    assert_eq!(d.decode(&mut buf), Ok(Some(b"a".to_vec())));
    d.reset();
    assert_eq!(d.max_frame(), 10);
    buf.extend(frame(b"c"));
    assert_eq!(d.decode(&mut buf), Ok(Some(b"c".to_vec())));
}
