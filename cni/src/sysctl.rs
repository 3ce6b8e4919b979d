//! Writing `/proc/sys` values. Network sysctls are per network namespace:
//! the value written is the one of the netns the calling thread is in.

use std::io;
use std::path::PathBuf;

/// Errors name the sysctl concerned.
#[derive(Debug, thiserror::Error)]
#[error("setting sysctl {key}={value}: {source}")]
pub struct Error {
    /// Dotted or slashed key, e.g. `net.ipv4.ip_forward`.
    pub key: String,
    /// Value written.
    pub value: String,
    /// Cause.
    pub source: io::Error,
}

/// Sets `key` (dots or slashes) to `value` unless it already has it.
pub fn set(key: &str, value: &str) -> Result<(), Error> {
    let path = path(key);
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| Error {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Reads `key`.
pub fn get(key: &str) -> io::Result<String> {
    std::fs::read_to_string(path(key)).map(|s| s.trim().to_string())
}

fn path(key: &str) -> PathBuf {
    // Interface names may contain dots, so only the well-known prefix is converted.
    let key = key.trim_start_matches('/');
    let slashed = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(slashed)
}
