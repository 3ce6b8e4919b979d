//! Human-readable durations, sizes and dates, matching kubectl and docker.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// kubectl's `duration.HumanDuration` (the AGE column): `45s`, `3m12s`, `5h`, `2d`.
pub fn kube_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        // Allow 2 seconds of clock skew, as kubectl does.
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// Time since `t` as kubectl prints it, `<unknown>` when there is no timestamp.
pub fn age(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => kube_duration(now.duration_since(t)),
        None => "<unknown>".to_owned(),
    }
}

/// docker's `units.HumanDuration` (the CREATED column, without " ago").
pub fn docker_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".to_owned();
    }
    if seconds == 1 {
        return "1 second".to_owned();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".to_owned();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Rounded to the nearest hour, as docker does.
    let hours = (seconds + 1800) / 3600;
    if hours == 1 {
        return "About an hour".to_owned();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", seconds / 3600 / 24 / 365)
}

/// docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units, 3 significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit + 1 < UNITS.len() {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", three_significant(size), UNITS[unit])
}

/// Go's `%.3g` for 0 <= v < 1000: three significant digits, trailing zeros dropped.
fn three_significant(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let int_digits = if v >= 100.0 {
        3
    } else if v >= 10.0 {
        2
    } else {
        1
    };
    let text = format!("{:.*}", 3 - int_digits, v);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// RFC 1123 with numeric zone in the local time zone, as `kubectl describe` prints times:
/// `Mon, 02 Jan 2006 15:04:05 -0700`.
pub fn rfc1123z(t: Timestamp) -> String {
    rfc1123z_in(t, &TimeZone::system())
}

/// [`rfc1123z`] in a given time zone.
pub fn rfc1123z_in(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    #[test]
    fn kubectl_ages() {
        assert_eq!(kube_duration(secs(-5)), "<invalid>");
        assert_eq!(kube_duration(secs(-1)), "0s");
        assert_eq!(kube_duration(secs(45)), "45s");
        assert_eq!(kube_duration(secs(119)), "119s");
        assert_eq!(kube_duration(secs(120)), "2m");
        assert_eq!(kube_duration(secs(3 * 60 + 12)), "3m12s");
        assert_eq!(kube_duration(secs(15 * 60 + 12)), "15m");
        assert_eq!(kube_duration(secs(5 * 3600)), "5h");
        assert_eq!(kube_duration(secs(5 * 3600 + 7 * 60)), "5h7m");
        assert_eq!(kube_duration(secs(20 * 3600)), "20h");
        assert_eq!(kube_duration(secs(2 * 86400)), "2d");
        assert_eq!(kube_duration(secs(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(kube_duration(secs(100 * 86400)), "100d");
        assert_eq!(kube_duration(secs(800 * 86400)), "2y70d");
        assert_eq!(kube_duration(secs(3000 * 86400)), "8y");
    }

    #[test]
    fn age_without_timestamp() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        assert_eq!(age(None, now), "<unknown>");
        let t = Timestamp::from_second(1_000_000 - 75).expect("ts");
        assert_eq!(age(Some(t), now), "75s");
    }

    #[test]
    fn docker_durations() {
        assert_eq!(docker_duration(secs(0)), "Less than a second");
        assert_eq!(docker_duration(secs(30)), "30 seconds");
        assert_eq!(docker_duration(secs(90)), "About a minute");
        assert_eq!(docker_duration(secs(50 * 60)), "50 minutes");
        assert_eq!(docker_duration(secs(80 * 60)), "About an hour");
        assert_eq!(docker_duration(secs(5 * 3600)), "5 hours");
        assert_eq!(docker_duration(secs(3 * 86400)), "3 days");
        assert_eq!(docker_duration(secs(20 * 86400)), "2 weeks");
        assert_eq!(docker_duration(secs(90 * 86400)), "3 months");
        assert_eq!(docker_duration(secs(800 * 86400)), "2 years");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_574), "4.26MB");
        assert_eq!(human_size(1_230_000), "1.23MB");
        assert_eq!(human_size(77_812_345), "77.8MB");
        assert_eq!(human_size(142_000_000), "142MB");
        assert_eq!(human_size(5_000), "5kB");
        assert_eq!(human_size(1_200_000_000), "1.2GB");
    }

    #[test]
    fn describe_time_format() {
        let t: Timestamp = "2024-03-05T07:08:09Z".parse().expect("ts");
        assert_eq!(
            rfc1123z_in(t, &TimeZone::UTC),
            "Tue, 05 Mar 2024 07:08:09 +0000"
        );
    }
}
