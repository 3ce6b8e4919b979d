//! Name and path validation with the API server's messages (apimachinery's
//! `util/validation`): DNS-1123 labels and subdomains, ConfigMap keys, paths below a volume.

/// Checks a DNS-1123 label (container names, namespaces): at most 63
/// characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            value.len()
        ));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    if !ok_chars || !ends_ok {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (object names): at most 253 characters,
/// dot-separated labels of `[a-z0-9-]`.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (is {})",
            value.len()
        ));
    }
    for part in value.split('.') {
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || !part.as_bytes()[0].is_ascii_alphanumeric()
            || !part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        {
            return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    Ok(())
}

/// Checks a ConfigMap/Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn check_config_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!(
            "{key:?}: a valid config key must be 1 to 253 characters"
        ));
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err(format!(
            "{key:?}: must not be '.' or '..' or start with '..'"
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// A path below a volume (`items[].path`, `subPath`): relative and without a
/// `..` element, so nothing can be written or mounted from outside the volume
/// (the API server's `validateLocalDescendingPath`). Key paths also must not
/// start with `..`, which the atomic writer reserves.
pub fn check_local_path(path: &str, reserved_dots: bool) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("must not contain '..'".into());
    }
    if reserved_dots && path.starts_with("..") {
        return Err("must not start with '..'".into());
    }
    Ok(())
}
