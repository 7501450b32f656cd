//! MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): each message travels as
//! `0x0B`, the message, `0x1C 0x0D`.
//!
//! The decoder is written for what integration engines actually send:
//! - bytes before a start block (keep-alive newlines, noise after a broken frame) are discarded;
//! - a frame split across reads is reassembled, and several frames in one read are split;
//! - a start block inside an unfinished frame begins a new frame: the unfinished one was broken
//!   (its sender gave up on it) and is dropped, never joined to the next;
//! - a frame longer than the limit is an error, and the connection is closed, before the frame is
//!   buffered in full (a sender cannot make the listener hold more than the limit).
//!
//! Scanning resumes where the last read stopped, so a large frame arriving in many reads costs time
//! linear in its size.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const START: u8 = 0x0B;
/// End block, followed by [`CR`].
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// The default largest message a listener accepts.
pub const DEFAULT_MAX_FRAME: usize = 10 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame is longer than the {max} bytes allowed")]
    TooLarge { max: usize },
    #[error("the connection closed inside a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The MLLP codec: decodes frames into message bytes, encodes message bytes into frames.
#[derive(Debug, Clone)]
pub struct Mllp {
    max_frame: usize,
    /// Inside a frame: how far the buffer has been searched for its end (the start block is at 0).
    scanned: Option<usize>,
}

impl Mllp {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame, scanned: None }
    }
}

impl Default for Mllp {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for Mllp {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let from = match self.scanned {
                Some(from) => from,
                None => {
                    // Outside a frame: everything before the next start block is noise.
                    match buffer.iter().position(|&b| b == START) {
                        Some(at) => {
                            buffer.advance(at);
                            self.scanned = Some(1);
                            1
                        }
                        None => {
                            buffer.clear();
                            return Ok(None);
                        }
                    }
                }
            };
            // Inside a frame (start block at 0): find its end, or a new start.
            let rest = &buffer[from..];
            let found = rest.iter().position(|&b| b == END || b == START);
            // What precedes the block character found (or all that was read) is the frame so far.
            self.check_size(found.map_or(buffer.len(), |offset| from + offset))?;
            match found {
                Some(offset) if rest[offset] == START => {
                    // A new frame begins before this one ended: this one is dropped.
                    buffer.advance(from + offset);
                    self.scanned = Some(1);
                }
                Some(offset) => {
                    let end = from + offset;
                    match buffer.get(end + 1) {
                        None => {
                            // The end block is the last byte read: wait for what follows it.
                            self.scanned = Some(end);
                            return Ok(None);
                        }
                        Some(&CR) => {
                            let mut frame = buffer.split_to(end + 2);
                            frame.advance(1);
                            frame.truncate(frame.len() - 2);
                            self.scanned = None;
                            return Ok(Some(frame.freeze()));
                        }
                        Some(_) => {
                            // An end block not followed by CR is not the frame's end.
                            self.scanned = Some(end + 1);
                        }
                    }
                }
                None => {
                    self.scanned = Some(buffer.len());
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buffer)? {
            Some(frame) => Ok(Some(frame)),
            None if self.scanned.is_some() => {
                buffer.clear();
                self.scanned = None;
                Err(FrameError::Truncated)
            }
            None => Ok(None),
        }
    }
}

impl Mllp {
    /// A frame whose bytes up to `position` (the start block at 0) are past the limit is refused,
    /// however its bytes arrived: before more of it is buffered.
    fn check_size(&self, position: usize) -> Result<(), FrameError> {
        if position.saturating_sub(1) > self.max_frame {
            return Err(FrameError::TooLarge { max: self.max_frame });
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for Mllp {
    type Error = FrameError;

    fn encode(&mut self, message: T, buffer: &mut BytesMut) -> Result<(), FrameError> {
        let message = message.as_ref();
        buffer.reserve(message.len() + 3);
        buffer.put_u8(START);
        buffer.put_slice(message);
        buffer.put_slice(&[END, CR]);
        Ok(())
    }
}

/// `message` framed, as one buffer (for senders that write whole frames).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(START);
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[END, CR]);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut Mllp, input: &[u8]) -> Vec<Vec<u8>> {
        let mut buffer = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            out.push(frame.to_vec());
        }
        out
    }

    #[test]
    fn frames_noise_and_broken_frames() {
        let mut codec = Mllp::default();
        let mut input = b"\r\n  ".to_vec();
        input.extend(frame(b"MSH|one"));
        input.extend(b"\x0bMSH|broken, never ended");
        input.extend(frame(b"MSH|two"));
        input.extend(frame(b"MSH|three\x1cnot an end"));
        assert_eq!(decode_all(&mut codec, &input), vec![b"MSH|one".to_vec(), b"MSH|two".to_vec(), b"MSH|three\x1cnot an end".to_vec()]);
    }

    #[test]
    fn an_end_block_split_from_its_cr_waits_for_it() {
        let mut codec = Mllp::default();
        let mut buffer = BytesMut::from(&b"\x0bMSH|x\x1c"[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        buffer.put_u8(CR);
        assert_eq!(codec.decode(&mut buffer).unwrap().unwrap().as_ref(), b"MSH|x");
    }

    #[test]
    fn an_over_size_frame_is_refused_before_it_is_buffered() {
        let mut codec = Mllp::new(10);
        let mut buffer = BytesMut::from(&b"\x0b0123456789"[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        buffer.put_slice(b"A");
        assert!(matches!(codec.decode(&mut buffer), Err(FrameError::TooLarge { max: 10 })));
        let mut codec = Mllp::new(10);
        assert!(decode_all(&mut codec, &frame(b"0123456789")) == vec![b"0123456789".to_vec()]);
    }

    #[test]
    fn the_connection_closing_inside_a_frame_is_an_error() {
        let mut codec = Mllp::default();
        let mut buffer = BytesMut::from(&b"\x0bMSH|half"[..]);
        assert!(matches!(codec.decode_eof(&mut buffer), Err(FrameError::Truncated)));
        let mut buffer = BytesMut::from(&b"\r\n"[..]);
        assert!(codec.decode_eof(&mut buffer).unwrap().is_none());
    }
}
