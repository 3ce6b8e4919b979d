//! SPDY/3.1 framing, as much as `kubectl port-forward` needs (its client, `moby/spdystream`,
//! speaks it inside the WebSocket tunnel `SPDY/3.1+portforward.k8s.io` or over a plain SPDY
//! upgrade). Frames are parsed from and written to a byte stream; header blocks are zlib
//! streams (one per direction for the whole session) primed with the SPDY/3 dictionary.
//!
//! Every length is checked before anything is allocated: a frame above [`MAX_FRAME`] or a
//! header block above [`MAX_HEADERS`] is an error that ends the session.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;

/// The largest frame payload accepted (kubectl's data frames are at most 32 KiB).
pub const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block accepted.
pub const MAX_HEADERS: usize = 64 * 1024;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): the
/// length-prefixed words below, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Name/value pairs of a header block (names lower-case, values as sent).
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// Settings are read and ignored (nothing here depends on them).
    Settings,
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame of a type this codec does not know; ignored, as the spec says.
    Unknown(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading the SPDY stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed SPDY frame: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> SpdyError {
    SpdyError::Malformed(what.into())
}

/// The header block (de)compression state of one direction of a session.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(Decompress::new(true))
    }
}

impl Inflater {
    /// Decompresses one header block and parses its pairs.
    pub fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADERS {
                    return Err(malformed("header block too large"));
                }
                out.reserve(out.len().min(MAX_HEADERS - out.len()).max(1024));
            }
            let (in0, out0) = (self.0.total_in(), self.0.total_out());
            let r = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let status = match r {
                Ok(s) => s,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| malformed(format!("header dictionary: {e}")))?;
                    let used = (self.0.total_in() - in0) as usize;
                    input = &input[used..];
                    continue;
                }
                Err(e) => return Err(malformed(format!("header block: {e}"))),
            };
            let used = (self.0.total_in() - in0) as usize;
            input = &input[used..];
            let produced = self.0.total_out() - out0;
            if status == Status::StreamEnd {
                return Err(malformed("header block ended the zlib stream"));
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && produced == 0 && out.len() < out.capacity() {
                return Err(malformed("truncated header block"));
            }
        }
        parse_pairs(&out)
    }
}

fn parse_pairs(mut b: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
        if b.len() < n {
            return Err(malformed("header block shorter than its lengths"));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, SpdyError> {
        let v = take(b, 4)?;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    }
    let n = u32_of(&mut b)?;
    if n > b.len() / 8 {
        return Err(malformed("header count above the block's size"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kl = u32_of(&mut b)?;
        let k = take(&mut b, kl)?;
        let vl = u32_of(&mut b)?;
        let v = take(&mut b, vl)?;
        if k.is_empty() {
            return Err(malformed("empty header name"));
        }
        let k = std::str::from_utf8(k)
            .map_err(|_| malformed("header name not UTF-8"))?
            .to_ascii_lowercase();
        let v = String::from_utf8_lossy(v);
        // Several values of one name are joined by NULs.
        for v in v.split('\0') {
            out.push((k.clone(), v.to_string()));
        }
    }
    if !b.is_empty() {
        return Err(malformed("bytes after the header pairs"));
    }
    Ok(out)
}

/// The compressing side.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Deflater(c)
    }
}

impl Deflater {
    pub fn block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            let before = self.0.total_in();
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflating into memory");
            input = &input[(self.0.total_in() - before) as usize..];
            // A sync flush is complete once it left room in the output.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the next frame; `Ok(None)` at a clean end of the stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    inflate: &mut Inflater,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = (u32::from_be_bytes([0, head[5], head[6], head[7]])) as usize;
    if len > MAX_FRAME {
        return Err(malformed(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(head, &body, inflate).map(Some)
}

/// Decodes one frame from its 8-byte head and its payload.
pub fn decode(head: [u8; 8], body: &[u8], inflate: &mut Inflater) -> Result<Frame, SpdyError> {
    let flags = head[4];
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        return Ok(Frame::Data {
            stream: be32(&head[..4]) & 0x7fff_ffff,
            fin,
            data: body.to_vec(),
        });
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    if version != 3 {
        return Err(malformed(format!("SPDY version {version}, not 3")));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let need = |n: usize| {
        if body.len() < n {
            Err(malformed(format!(
                "control frame {kind} of {} bytes, needs {n}",
                body.len()
            )))
        } else {
            Ok(())
        }
    };
    let id = |b: &[u8]| be32(b) & 0x7fff_ffff;
    Ok(match kind {
        SYN_STREAM => {
            need(10)?;
            let stream = id(body);
            if stream == 0 {
                return Err(malformed("SYN_STREAM for stream 0"));
            }
            Frame::SynStream {
                stream,
                fin,
                headers: inflate.headers(&body[10..])?,
            }
        }
        SYN_REPLY => {
            need(4)?;
            Frame::SynReply {
                stream: id(body),
                fin,
                headers: inflate.headers(&body[4..])?,
            }
        }
        HEADERS => {
            need(4)?;
            Frame::Headers {
                stream: id(body),
                headers: inflate.headers(&body[4..])?,
            }
        }
        RST_STREAM => {
            need(8)?;
            Frame::RstStream {
                stream: id(body),
                status: be32(&body[4..]),
            }
        }
        SETTINGS => {
            need(4)?;
            let n = be32(body) as usize;
            if body.len() != 4 + n.saturating_mul(8) {
                return Err(malformed("SETTINGS size does not match its count"));
            }
            Frame::Settings
        }
        PING => {
            need(4)?;
            Frame::Ping(be32(body))
        }
        GOAWAY => {
            need(8)?;
            Frame::GoAway {
                last: id(body),
                status: be32(&body[4..]),
            }
        }
        WINDOW_UPDATE => {
            need(8)?;
            Frame::WindowUpdate {
                stream: id(body),
                delta: be32(&body[4..]) & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown(other),
    })
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(0x8003u16).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

/// Encodes a frame (header blocks through `deflate`, which must be the session's one).
pub fn encode(frame: &Frame, deflate: &mut Deflater) -> Vec<u8> {
    let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
    match frame {
        Frame::Data { stream, fin, data } => {
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.push(fin_flag(*fin));
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
            out
        }
        Frame::SynStream {
            stream,
            fin,
            headers,
        } => {
            let mut body = Vec::new();
            body.extend_from_slice(&stream.to_be_bytes());
            body.extend_from_slice(&[0; 6]);
            body.extend_from_slice(&deflate.block(headers));
            control(SYN_STREAM, fin_flag(*fin), &body)
        }
        Frame::SynReply {
            stream,
            fin,
            headers,
        } => {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&deflate.block(headers));
            control(SYN_REPLY, fin_flag(*fin), &body)
        }
        Frame::Headers { stream, headers } => {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&deflate.block(headers));
            control(HEADERS, 0, &body)
        }
        Frame::RstStream { stream, status } => {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &body)
        }
        Frame::Settings => control(SETTINGS, 0, &0u32.to_be_bytes()),
        Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => {
            let mut body = last.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &body)
        }
        Frame::WindowUpdate { stream, delta } => {
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&delta.to_be_bytes());
            control(WINDOW_UPDATE, 0, &body)
        }
        Frame::Unknown(kind) => control(*kind, 0, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let mut deflate = Deflater::default();
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|f| encode(f, &mut deflate))
            .collect();
        let mut inflate = Inflater::default();
        let mut r = &wire[..];
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut inflate).await.unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",enq=0."));
    }

    #[tokio::test]
    async fn frames_round_trip_with_compressed_headers() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            // The second block uses the same zlib stream (it refers to the first's strings).
            Frame::SynStream {
                stream: 3,
                fin: false,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream: 3,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            },
            Frame::Data {
                stream: 5,
                fin: false,
                data: vec![],
            },
            Frame::RstStream {
                stream: 3,
                status: REFUSED_STREAM,
            },
            Frame::Settings,
            Frame::Ping(7),
            Frame::GoAway { last: 5, status: 0 },
            Frame::Headers {
                stream: 1,
                headers: h(&[("x", "y")]),
            },
            Frame::WindowUpdate {
                stream: 1,
                delta: 65536,
            },
        ];
        assert_eq!(round_trip(&frames).await, frames);
    }

    #[tokio::test]
    async fn header_names_are_lower_case_and_nul_joined_values_split() {
        let mut deflate = Deflater::default();
        let wire = encode(
            &Frame::SynReply {
                stream: 1,
                fin: false,
                headers: h(&[("Port", "80\u{0}81")]),
            },
            &mut deflate,
        );
        let mut r = &wire[..];
        let f = read_frame(&mut r, &mut Inflater::default())
            .await
            .unwrap()
            .unwrap();
        let Frame::SynReply { headers, .. } = f else {
            panic!("{f:?}")
        };
        assert_eq!(headers, h(&[("port", "80"), ("port", "81")]));
    }

    #[tokio::test]
    async fn malformed_frames_are_rejected() {
        let bad: Vec<Vec<u8>> = vec![
            // SPDY/2
            vec![0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
            // PING without its id
            vec![0x80, 0x03, 0, 6, 0, 0, 0, 2, 0, 0],
            // a frame above the limit
            {
                let n = (MAX_FRAME + 1) as u32;
                let mut v = vec![0, 0, 0, 1, 0];
                v.extend_from_slice(&n.to_be_bytes()[1..]);
                v
            },
            // SYN_STREAM whose header block is not zlib
            {
                let mut v = vec![0x80, 0x03, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                v.extend_from_slice(b"junk");
                v
            },
            // SETTINGS whose count does not match its size
            vec![0x80, 0x03, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9],
            // truncated in the middle of a frame
            vec![0x80, 0x03, 0, 6, 0, 0, 0, 4, 0],
        ];
        for b in bad {
            let mut r = &b[..];
            let got = read_frame(&mut r, &mut Inflater::default()).await;
            assert!(got.is_err(), "{b:?} gave {got:?}");
        }
        // A header count larger than the block.
        let mut plain = 1000u32.to_be_bytes().to_vec();
        plain.extend_from_slice(&[0, 0, 0, 1, b'a']);
        assert!(parse_pairs(&plain).is_err());
        // A value length past the end.
        let mut plain = 1u32.to_be_bytes().to_vec();
        plain.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 9, b'b']);
        assert!(parse_pairs(&plain).is_err());
    }
}
