//! MLLP framing as the door reads a socket: bytes arrive in reads of any size and the
//! decoder takes frames out of the buffer. The first two bytes choose the frame limit and
//! how the rest is split into reads. Nothing may panic, and the decoder's promises hold:
//! the frames and errors do not depend on how the reads split the stream, no frame is
//! longer than the limit, the buffer never holds more than one frame's worth of bytes, and
//! a framed payload (without the block characters) comes back as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medlake_hl7::mllp::{Decoder, END, FrameError, START, frame};

const LIMITS: [usize; 8] = [0, 1, 2, 7, 64, 400, 4096, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let [choice, split, stream @ ..] = data else {
        return;
    };
    let max = LIMITS[usize::from(choice & 7)];
    let whole = decode(stream, max, &[stream.len().max(1)]);
    // Reads of 1..=16 bytes, in a pattern the second byte chooses.
    let sizes: Vec<usize> = (0..8)
        .map(|i| 1 + usize::from((split >> i) & 1) * (i + 8))
        .collect();
    let chunked = decode(stream, max, &sizes);
    assert_eq!(
        whole, chunked,
        "the way reads split the stream changed the frames"
    );
    let single = decode(stream, max, &[1]);
    assert_eq!(whole, single, "byte-by-byte reads changed the frames");
    for frame in whole.iter().flatten() {
        assert!(
            frame.len() <= max,
            "a frame of {} bytes past the limit {max}",
            frame.len()
        );
    }
    // A payload without block characters, framed, decodes to itself.
    let payload: Vec<u8> = stream
        .iter()
        .map(|&b| if b == START || b == END[0] { b'.' } else { b })
        .collect();
    let framed = frame(&payload);
    let back = decode(&framed, usize::MAX, &[framed.len()]);
    assert_eq!(back, vec![Ok(payload)]);
});

/// The frames of `bytes` read in pieces of the given sizes (cycled), checking the buffer
/// bound after each read.
fn decode(bytes: &[u8], max: usize, sizes: &[usize]) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut decoder = Decoder::new(max);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut size = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*size.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(frame)) => out.push(Ok(frame)),
                Err(e) => out.push(Err(e)),
            }
        }
        assert!(
            buf.len() <= max.saturating_add(2),
            "the buffer holds {} bytes for a limit of {max}",
            buf.len()
        );
    }
    out
}
