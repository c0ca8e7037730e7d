//! MLLP (Minimal Lower Layer Protocol) framing: `<VT> payload <FS><CR>`, that is
//! `0x0B payload 0x1C 0x0D`.
//!
//! [`Decoder`] reads frames out of a byte buffer the caller appends socket reads to. It
//! works in time linear in the bytes received, however the reads split the frames, and
//! never holds more than one frame's worth of bytes beyond what the caller appended:
//!
//! - bytes before a start block (garbage, CR/LF between frames) are dropped;
//! - a frame whose payload is longer than the limit is [`FrameError::TooLarge`]; its bytes
//!   are dropped as they arrive, up to its end block or a new start block, and decoding
//!   goes on after it (with the new frame);
//! - a start block inside a frame within the limit means the sender gave up on that frame:
//!   [`FrameError::Interrupted`], and decoding goes on with the new frame;
//! - `0x1C` not followed by `0x0D` is payload.
//!
//! Errors are about one frame: the decoder can be called again after any of them.

use std::collections::VecDeque;

/// Start block (VT).
pub const START: u8 = 0x0b;
/// End block (FS CR).
pub const END: [u8; 2] = [0x1c, 0x0d];

/// A frame that cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload is longer than the decoder's limit.
    #[error("MLLP frame larger than {limit} bytes")]
    TooLarge {
        /// The decoder's limit.
        limit: usize,
    },
    /// A new start block arrived before the end block; the partial frame is dropped.
    #[error("MLLP frame interrupted by a new start block after {discarded} bytes")]
    Interrupted {
        /// Payload bytes of the dropped frame.
        discarded: usize,
    },
}

/// Incremental frame decoder over a byte buffer (a `Vec<u8>` the caller appends socket
/// reads to).
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
    /// Frames (and frame errors) already taken out of the buffer, in order.
    ready: VecDeque<Result<Vec<u8>, FrameError>>,
    /// Bytes after the start block at the front of the buffer already searched for the end.
    scanned: usize,
    /// Dropping the rest of a frame that was too large, up to its end block.
    skipping: bool,
}

/// What the search from a frame's start found.
enum Scan {
    /// The end block at this index.
    End(usize),
    /// A start block at this index.
    Start(usize),
    /// Neither, up to this index (excluding a `0x1C` that may begin the end block).
    Incomplete(usize),
}

fn scan(buf: &[u8], from: usize, stop_at_start: bool) -> Scan {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            START if stop_at_start => return Scan::Start(i),
            b if b == END[0] => match buf.get(i + 1) {
                Some(&n) if n == END[1] => return Scan::End(i),
                Some(_) => {}
                None => return Scan::Incomplete(i),
            },
            _ => {}
        }
        i += 1;
    }
    Scan::Incomplete(buf.len())
}

impl Decoder {
    /// A decoder for payloads of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            max_frame,
            ready: VecDeque::new(),
            scanned: 0,
            skipping: false,
        }
    }

    /// The payload limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Forgets all state (frames taken out of the buffer but not returned yet included);
    /// call it when the buffer is replaced or cleared by the caller.
    pub fn reset(&mut self) {
        *self = Decoder::new(self.max_frame);
    }

    /// Takes the next complete frame's payload: `Ok(None)` when no frame is complete yet.
    ///
    /// Consumed bytes are removed from `buf`: every complete frame found in it is taken out
    /// at once (and returned by this and the following calls, in order), so that many small
    /// frames in one read cost linear time. After `Ok(None)`, `buf` holds only the start of
    /// an incomplete frame, or nothing. Between calls the caller may only append to `buf`
    /// (or clear it and call [`Decoder::reset`]).
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, FrameError> {
        if self.ready.is_empty() {
            self.fill(buf);
        }
        self.ready.pop_front().transpose()
    }

    /// Moves every complete frame (or frame error) of `buf` into `ready`.
    fn fill(&mut self, buf: &mut Vec<u8>) {
        let mut pos = 0;
        loop {
            if self.skipping {
                // A new start block ends a frame being dropped as surely as its end block:
                // the sender gave up on it (as in `Scan::Start` below, which sees the same
                // bytes when they arrive in one read).
                match scan(buf, pos + self.scanned, true) {
                    Scan::End(i) => {
                        pos = i + END.len();
                        self.skipping = false;
                        self.scanned = 0;
                    }
                    Scan::Start(i) => {
                        pos = i;
                        self.skipping = false;
                        self.scanned = 0;
                    }
                    Scan::Incomplete(_) => {
                        // Drop all but a 0x1C that may begin the end block.
                        let keep = usize::from(buf.last() == Some(&END[0]));
                        pos = buf.len() - keep;
                        self.scanned = 0;
                        break;
                    }
                }
            }
            let Some(s) = buf[pos..].iter().position(|&b| b == START) else {
                pos = buf.len();
                self.scanned = 0;
                break;
            };
            if s > 0 {
                self.scanned = 0;
            }
            pos += s;
            let from = (pos + self.scanned.max(1)).min(buf.len());
            match scan(buf, from, true) {
                Scan::End(i) => {
                    let payload = &buf[pos + 1..i];
                    self.ready.push_back(if payload.len() > self.max_frame {
                        Err(self.too_large())
                    } else {
                        Ok(payload.to_vec())
                    });
                    pos = i + END.len();
                    self.scanned = 0;
                }
                Scan::Start(i) => {
                    let discarded = i - pos - 1;
                    // Too large whatever ends it: read in smaller pieces, these bytes would
                    // have been reported (and dropped) as too large before the start block.
                    self.ready.push_back(if discarded > self.max_frame {
                        Err(self.too_large())
                    } else {
                        Err(FrameError::Interrupted { discarded })
                    });
                    pos = i;
                    self.scanned = 0;
                }
                Scan::Incomplete(stop) => {
                    self.scanned = stop - pos;
                    if stop - pos - 1 <= self.max_frame {
                        break;
                    }
                    self.ready.push_back(Err(self.too_large()));
                    self.skipping = true;
                }
            }
        }
        buf.drain(..pos);
    }

    fn too_large(&self) -> FrameError {
        FrameError::TooLarge {
            limit: self.max_frame,
        }
    }
}

/// `payload` framed: `0x0B payload 0x1C 0x0D`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.extend_from_slice(&END);
    out
}
