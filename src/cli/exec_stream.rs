//! Framing of the `exec` answer body (`application/vnd.skiff.exec-stream`).
//!
//! A frame is 1 byte of stream id, 4 bytes of big-endian payload length, then the payload.
//! Streams: [`STDOUT`] and [`STDERR`] carry raw output bytes; [`EXIT`] comes last and carries
//! JSON [`ExitStatus`]. skiffd encodes with [`encode_frame`]/[`encode_exit`], the CLI decodes
//! with [`FrameDecoder`].

use serde::{Deserialize, Serialize};

/// Content type of an exec answer body.
pub const CONTENT_TYPE: &str = "application/vnd.skiff.exec-stream";
/// Stream id of the command's standard output.
pub const STDOUT: u8 = 1;
/// Stream id of the command's standard error.
pub const STDERR: u8 = 2;
/// Stream id of the final frame, whose payload is JSON [`ExitStatus`].
pub const EXIT: u8 = 3;
/// Bytes before the payload: stream id and length.
pub const HEADER_LEN: usize = 5;
/// Largest payload one frame may carry; the decoder refuses longer ones so a corrupt length
/// cannot make it buffer gigabytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// How the exec'd command ended; the payload of the [`EXIT`] frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code of the command; 126 when it could not be executed, 127 when not found.
    #[serde(rename = "exitCode")]
    pub exit_code: i32,
    /// Why the command could not be run or was cut short, for the user's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Encodes `payload` as frames of `stream`. A payload longer than [`MAX_PAYLOAD`] is split
/// into several frames of the same stream; an empty payload gives one empty frame.
pub fn encode_frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        push_frame(&mut out, stream, &[]);
    }
    for chunk in chunks {
        push_frame(&mut out, stream, chunk);
    }
    out
}

fn push_frame(out: &mut Vec<u8>, stream: u8, chunk: &[u8]) {
    // chunk.len() <= MAX_PAYLOAD, far below u32::MAX.
    let len = chunk.len() as u32;
    out.push(stream);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(chunk);
}

/// Encodes the final [`EXIT`] frame.
pub fn encode_exit(status: &ExitStatus) -> Vec<u8> {
    let json = serde_json::to_vec(status).unwrap_or_else(|_| {
        // Serializing an i32 and a string cannot fail; keep the code if it ever did.
        format!("{{\"exitCode\":{}}}", status.exit_code).into_bytes()
    });
    encode_frame(EXIT, &json)
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// [`STDOUT`], [`STDERR`] or [`EXIT`].
    pub stream: u8,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Parses the payload of an [`EXIT`] frame.
    pub fn exit_status(&self) -> Result<ExitStatus, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|e| FrameError::BadExitStatus(e.to_string()))
    }
}

/// A malformed exec stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream id is not one of [`STDOUT`], [`STDERR`], [`EXIT`].
    #[error("frame on unknown stream {0}")]
    UnknownStream(u8),
    /// The length field exceeds [`MAX_PAYLOAD`].
    #[error("frame of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge { len: usize },
    /// The body ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes left over)")]
    Truncated { buffered: usize },
    /// The exit frame's payload is not `{"exitCode": N}`.
    #[error("invalid exit status: {0}")]
    BadExitStatus(String),
}

/// Incremental decoder: [`push`](Self::push) bytes as they arrive, then take complete frames
/// with [`next_frame`](Self::next_frame) until it returns `None`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let stream = header[0];
        if !matches!(stream, STDOUT | STDERR | EXIT) {
            return Err(FrameError::UnknownStream(stream));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { stream, payload }))
    }

    /// Checks, at the end of the body, that no partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut dec = FrameDecoder::new();
        dec.push(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.next_frame().expect("valid") {
            frames.push(f);
        }
        dec.finish().expect("complete");
        frames
    }

    #[test]
    fn frame_layout() {
        assert_eq!(encode_frame(STDOUT, b"hi"), [1, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(encode_frame(STDERR, b""), [2, 0, 0, 0, 0]);
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = encode_frame(STDOUT, b"hello\n");
        wire.extend(encode_frame(STDERR, &[0xff, 0, 1]));
        wire.extend(encode_exit(&ExitStatus {
            exit_code: 127,
            error: Some("exec: \"nope\": not found".into()),
        }));

        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().expect("valid") {
                frames.push(f);
            }
        }
        dec.finish().expect("complete");
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[0],
            Frame {
                stream: STDOUT,
                payload: b"hello\n".to_vec()
            }
        );
        assert_eq!(
            frames[1],
            Frame {
                stream: STDERR,
                payload: vec![0xff, 0, 1]
            }
        );
        assert_eq!(frames[2].stream, EXIT);
        let status = frames[2].exit_status().expect("exit json");
        assert_eq!(status.exit_code, 127);
        assert_eq!(status.error.as_deref(), Some("exec: \"nope\": not found"));
    }

    #[test]
    fn exit_json_shape() {
        let frame = encode_exit(&ExitStatus {
            exit_code: 0,
            error: None,
        });
        assert_eq!(&frame[HEADER_LEN..], br#"{"exitCode":0}"#);
        let f = Frame {
            stream: EXIT,
            payload: br#"{"exitCode": 3, "error": "x"}"#.to_vec(),
        };
        assert_eq!(
            f.exit_status(),
            Ok(ExitStatus {
                exit_code: 3,
                error: Some("x".into())
            })
        );
        let bad = Frame {
            stream: EXIT,
            payload: b"3".to_vec(),
        };
        assert!(matches!(
            bad.exit_status(),
            Err(FrameError::BadExitStatus(_))
        ));
    }

    #[test]
    fn large_payload_is_split() {
        let data = vec![7u8; MAX_PAYLOAD * 2 + 3];
        let frames = decode_all(&encode_frame(STDOUT, &data));
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].payload.len(), 3);
        let joined: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn rejects_bad_streams() {
        let mut dec = FrameDecoder::new();
        dec.push(&[9, 0, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(FrameError::UnknownStream(9)));

        let mut dec = FrameDecoder::new();
        dec.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));

        let mut dec = FrameDecoder::new();
        dec.push(&[1, 0, 0, 0, 4, b'a']);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated { buffered: 6 }));
    }
}
