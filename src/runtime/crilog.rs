//! The CRI container log format: `<RFC3339Nano> <stream> <P|F> <content>`, one
//! record per line, as written by containerd and CRI-O and read by the kubelet.

use std::io::{self, Write};

/// Longest record content before a line is split into partial (`P`) records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits a byte stream into CRI log records, keeping an unfinished line until
/// its newline arrives (or it grows past [`MAX_RECORD`]).
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the container and writes every complete record.
    pub fn feed(&mut self, out: &mut impl Write, data: &[u8], now: &str) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            write_records(out, now, self.stream, &self.pending[start..end], true)?;
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() >= MAX_RECORD {
            let chunk: Vec<u8> = self.pending.drain(..MAX_RECORD).collect();
            write_record(out, now, self.stream, b'P', &chunk)?;
        }
        Ok(())
    }

    /// Writes what is left when the stream ends, as a full record.
    pub fn finish(&mut self, out: &mut impl Write, now: &str) -> io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            write_records(out, now, self.stream, &rest, true)?;
        }
        Ok(())
    }
}

fn write_records(
    out: &mut impl Write,
    now: &str,
    stream: Stream,
    line: &[u8],
    last_full: bool,
) -> io::Result<()> {
    let mut chunks = line.chunks(MAX_RECORD).peekable();
    if chunks.peek().is_none() {
        return write_record(out, now, stream, b'F', b"");
    }
    while let Some(chunk) = chunks.next() {
        let tag = if chunks.peek().is_none() && last_full {
            b'F'
        } else {
            b'P'
        };
        write_record(out, now, stream, tag, chunk)?;
    }
    Ok(())
}

fn write_record(
    out: &mut impl Write,
    now: &str,
    stream: Stream,
    tag: u8,
    content: &[u8],
) -> io::Result<()> {
    let mut rec = Vec::with_capacity(content.len() + now.len() + 12);
    rec.extend_from_slice(now.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.push(b' ');
    rec.push(tag);
    rec.push(b' ');
    rec.extend_from_slice(content);
    rec.push(b'\n');
    out.write_all(&rec)
}

/// One parsed log record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line (without its trailing newline) of a CRI log file.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        stream,
        partial: tag == b"P",
        content,
    })
}

/// Turns the raw bytes of a CRI log file into what the container printed,
/// joining partial records; with `timestamps` each line is prefixed by its time,
/// like `kubectl logs --timestamps`.
pub fn render(raw: &[u8], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_partial = false;
    for line in raw.split(|&b| b == b'\n') {
        let Some(rec) = parse_record(line) else {
            continue;
        };
        if timestamps && !in_partial {
            out.extend_from_slice(rec.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(rec.content);
        if !rec.partial {
            out.push(b'\n');
        }
        in_partial = rec.partial;
    }
    out
}

/// Keeps only the last `n` lines of rendered output.
pub fn tail_lines(rendered: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &rendered[rendered.len()..];
    }
    let body = rendered.strip_suffix(b"\n").unwrap_or(rendered);
    let mut count = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            count += 1;
            if count == n {
                return &rendered[i + 1..];
            }
        }
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-01-02T03:04:05.123456789Z";

    #[test]
    fn splits_lines_and_keeps_partial_until_newline() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        s.feed(&mut out, b"hello\nwor", T).unwrap();
        s.feed(&mut out, b"ld\n\n", T).unwrap();
        s.feed(&mut out, b"tail", T).unwrap();
        s.finish(&mut out, T).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!("{T} stdout F hello\n{T} stdout F world\n{T} stdout F \n{T} stdout F tail\n")
        );
    }

    #[test]
    fn long_lines_become_partial_records_and_render_joined() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stderr);
        let long = vec![b'x'; MAX_RECORD * 2 + 5];
        s.feed(&mut out, &long, T).unwrap();
        s.feed(&mut out, b"\n", T).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, vec!["P", "P", "F"]);
        let rendered = render(&out, false);
        assert_eq!(rendered.len(), long.len() + 1);
    }

    #[test]
    fn render_with_timestamps_and_tail() {
        let raw = format!("{T} stdout F a\n{T} stderr F b\n{T} stdout F c\n");
        assert_eq!(render(raw.as_bytes(), false), b"a\nb\nc\n");
        assert_eq!(
            String::from_utf8(render(raw.as_bytes(), true)).unwrap(),
            format!("{T} a\n{T} b\n{T} c\n")
        );
        let r = render(raw.as_bytes(), false);
        assert_eq!(tail_lines(&r, 2), b"b\nc\n");
        assert_eq!(tail_lines(&r, 5), b"a\nb\nc\n");
        assert_eq!(tail_lines(&r, 0), b"");
    }
}
