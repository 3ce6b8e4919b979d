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

/// Splits a byte stream into CRI log records as containerd does: a line longer
/// than [`MAX_RECORD`] goes out as partial (`P`) records of that size, the rest
/// of it as a full (`F`) record once its newline arrives. At most one record's
/// worth of bytes is ever kept, however long the line: the shim's memory stays
/// flat under a container that prints one endless line.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    /// Start of the current line, never more than [`MAX_RECORD`] bytes.
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::with_capacity(MAX_RECORD),
        }
    }

    /// Feeds bytes read from the container and writes every complete record.
    pub fn feed(&mut self, out: &mut impl Write, data: &[u8], now: &str) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_RECORD - self.pending.len();
            match rest.iter().position(|&b| b == b'\n') {
                // The line ends within one record.
                Some(pos) if pos <= room => {
                    write_record(out, now, self.stream, b'F', &self.pending, &rest[..pos])?;
                    self.pending.clear();
                    rest = &rest[pos + 1..];
                }
                // More than a record's worth without a newline: a partial record. A
                // line of exactly MAX_RECORD bytes waits for its newline (one F record).
                _ if rest.len() > room => {
                    write_record(out, now, self.stream, b'P', &self.pending, &rest[..room])?;
                    self.pending.clear();
                    rest = &rest[room..];
                }
                _ => {
                    self.pending.extend_from_slice(rest);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Writes what is left when the stream ends, as a full record.
    pub fn finish(&mut self, out: &mut impl Write, now: &str) -> io::Result<()> {
        if !self.pending.is_empty() {
            write_record(out, now, self.stream, b'F', &self.pending, b"")?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Writes one record whose content is `head` followed by `tail`, with a single
/// `write_all` (a [`RotatingLog`] rotates only between records).
fn write_record(
    out: &mut impl Write,
    now: &str,
    stream: Stream,
    tag: u8,
    head: &[u8],
    tail: &[u8],
) -> io::Result<()> {
    let mut rec = Vec::with_capacity(head.len() + tail.len() + now.len() + 12);
    rec.extend_from_slice(now.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.push(b' ');
    rec.push(tag);
    rec.push(b' ');
    rec.extend_from_slice(head);
    rec.extend_from_slice(tail);
    rec.push(b'\n');
    out.write_all(&rec)
}

/// A container's log file, written by its shim and rotated by it as the kubelet
/// does (`--container-log-max-size`, `--container-log-max-files`): once the next
/// record would take `0.log` past the maximum size, it is renamed to
/// `0.log.<YYYYMMDD-hhmmss.nnnnnnnnn>` and a new `0.log` started; the oldest
/// rotated files go so that at most `max_files` files (the current one
/// included) are left. Each `write` call is one whole record.
#[derive(Debug)]
pub struct RotatingLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    /// 0: never rotate.
    max_size: u64,
    max_files: usize,
}

impl RotatingLog {
    /// Opens (appends to) the log at `path`.
    pub fn open(
        path: &std::path::Path,
        max_size: u64,
        max_files: usize,
    ) -> io::Result<RotatingLog> {
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // `2026-12-04T17:09:51Z` -> `20261204-170951`, plus fixed-width nanoseconds
        // so that the names sort in time order.
        let day_time: String = super::supervise::format_rfc3339(d.as_secs() as i64, 0)
            .chars()
            .filter_map(|c| match c {
                'T' => Some('-'),
                '-' | ':' | 'Z' => None,
                c => Some(c),
            })
            .collect();
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(format!(".{day_time}.{:09}", d.subsec_nanos()));
        std::fs::rename(&self.path, &rotated)?;
        self.file = open_log(&self.path)?;
        self.size = 0;
        let old = rotated_files(&self.path);
        let excess = (old.len() + 1).saturating_sub(self.max_files);
        for f in &old[..excess] {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.max_size > 0 && self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            // A failed rotation (disk full, say) keeps writing to the current file:
            // losing the size bound for a while beats losing the log.
            let _ = self.rotate();
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl RotatingLog {
    /// Flushes the current file to disk.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn open_log(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The rotated files of the log at `path` (`<name>.<stamp>`), oldest first.
pub fn rotated_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let mut prefix = name.to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes().to_vec();
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.as_encoded_bytes();
            // The stamp starts with a digit; `.0.log.tmp` or the like are not rotations.
            n.len() > prefix.len() && n.starts_with(&prefix) && n[prefix.len()].is_ascii_digit()
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Every file of the log at `path` in the order written: rotated ones oldest
/// first, then the current one (if it exists).
pub fn log_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut all = rotated_files(path);
    if path.exists() {
        all.push(path.to_path_buf());
    }
    all
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
    fn an_endless_line_is_cut_into_partial_records_with_bounded_memory() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        // 100 reads of 32 KiB without a newline: every byte goes out as soon as a
        // record is full, nothing piles up.
        let chunk = vec![b'y'; 32 * 1024];
        for _ in 0..100 {
            s.feed(&mut out, &chunk, T).unwrap();
            assert!(
                s.pending.len() <= MAX_RECORD,
                "pending grew to {}",
                s.pending.len()
            );
            assert!(
                s.pending.capacity() <= MAX_RECORD,
                "buffer grew to {}",
                s.pending.capacity()
            );
        }
        let text = String::from_utf8(out.clone()).unwrap();
        // The last full record's worth waits: its newline may be next.
        assert_eq!(text.lines().count(), 100 * 2 - 1);
        for line in text.lines() {
            let rec = parse_record(line.as_bytes()).unwrap();
            assert!(rec.partial);
            assert_eq!(rec.content.len(), MAX_RECORD);
        }
    }

    #[test]
    fn a_line_of_exactly_one_record_is_one_full_record() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        let line = vec![b'z'; MAX_RECORD];
        s.feed(&mut out, &line[..100], T).unwrap();
        s.feed(&mut out, &line[100..], T).unwrap();
        s.feed(&mut out, b"\nnext\n", T).unwrap();
        let text = String::from_utf8(out).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, vec!["F", "F"]);
    }

    #[test]
    fn rotating_log_keeps_files_under_the_limits_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = RotatingLog::open(&path, 1000, 3).unwrap();
        let mut s = LineSplitter::new(Stream::Stdout);
        for i in 0..200 {
            s.feed(&mut log, format!("line {i:04}\n").as_bytes(), T)
                .unwrap();
        }
        let files = log_files(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files.last().unwrap(), &path);
        let mut raw = Vec::new();
        for f in &files {
            let len = std::fs::metadata(f).unwrap().len();
            assert!(len <= 1000, "{} is {len} bytes", f.display());
            raw.extend(std::fs::read(f).unwrap());
        }
        let text = String::from_utf8(render(&raw, false)).unwrap();
        let nums: Vec<u32> = text.lines().map(|l| l[5..].parse().unwrap()).collect();
        assert_eq!(*nums.last().unwrap(), 199);
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "lines out of order: {nums:?}"
        );
        // A temp file next to the log is no rotation.
        std::fs::write(dir.path().join("0.log.tmp"), b"x").unwrap();
        assert_eq!(log_files(&path), files);
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
