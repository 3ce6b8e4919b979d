//! sha256 digests: parsing `sha256:<hex>` strings and hashing while reading or copying.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// Returns the hex part of a `sha256:<64 lowercase hex>` digest.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, Error> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(hex),
        _ => Err(Error::InvalidDigest(digest.to_owned())),
    }
}

/// Whether `s` is exactly 64 lowercase hex characters.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<hex>` of a byte slice.
pub(crate) fn of_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A reader that hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads the rest of the stream (a tar reader stops at the end-of-archive blocks and may
    /// leave padding behind) and returns `(sha256:<hex>, bytes read)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{}", hex(&self.hasher.finalize())), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Copies `reader` to `writer`, returning `(sha256:<hex>, bytes copied)`.
pub(crate) fn copy_hashed(reader: impl Read, writer: &mut impl Write) -> io::Result<(String, u64)> {
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, writer)?;
    hashing.finish()
}
