//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`).

/// Parses a quantity into its value in base units (cores for cpu, bytes for memory).
pub fn parse(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("quantity {s:?}: invalid number {num:?}"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| format!("quantity {s:?}: invalid exponent {e:?}"))?;
            10f64.powi(exp)
        }
        other => return Err(format!("quantity {s:?}: unknown suffix {other:?}")),
    };
    if value < 0.0 {
        return Err(format!("quantity {s:?} must not be negative"));
    }
    Ok(value * factor)
}

/// Rounds up, ignoring the binary floating point noise of decimal suffixes
/// (`0.7 * 1000` is `700.0000000000001`, which must stay 700).
pub fn ceil(v: f64) -> i64 {
    let r = v.round();
    if (v - r).abs() <= 1e-9 * r.abs().max(1.0) {
        r as i64
    } else {
        v.ceil() as i64
    }
}

/// CPU in millicores, rounded up as the kubelet does.
pub fn millicores(s: &str) -> Result<i64, String> {
    Ok(ceil(parse(s)? * 1000.0))
}

/// Memory in bytes.
/// A byte count as Kubernetes prints a quantity: the largest binary suffix that divides it.
pub fn format_bytes(n: u64) -> String {
    for (suffix, unit) in [
        ("Ei", 1u64 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}

pub fn bytes(s: &str) -> Result<i64, String> {
    Ok(ceil(parse(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(millicores("100m").unwrap(), 100);
        assert_eq!(
            millicores("110m").unwrap(),
            110,
            "float noise must not round up"
        );
        assert_eq!(millicores("0.7").unwrap(), 700);
        assert_eq!(millicores("1001u").unwrap(), 2, "a real fraction rounds up");
        assert_eq!(bytes("1.1k").unwrap(), 1100);
        assert_eq!(millicores("1.5").unwrap(), 1500);
        assert_eq!(millicores("2").unwrap(), 2000);
        assert_eq!(bytes("128Mi").unwrap(), 134_217_728);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("1e3").unwrap(), 1000);
        assert_eq!(bytes("64Ki").unwrap(), 65536);
        assert!(parse("12Q").is_err());
        assert!(parse("").is_err());
        assert!(parse("abc").is_err());
    }
}
