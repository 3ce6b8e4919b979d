//! The CronJob controller's decisions (kube-controller-manager's `cronjob_controllerv2.go` and
//! `utils.go`, batch/v1), without I/O: the cron schedule language exactly as the apiserver and
//! the controller parse it (robfig/cron v3's `ParseStandard`: five fields, names, ranges, steps,
//! lists, `@hourly`-style descriptors, `@every <duration>`, a `TZ=`/`CRON_TZ=` prefix, with the
//! same error messages), the next activation after a time in a time zone, which scheduled time
//! is due (missed starts, `startingDeadlineSeconds`), `concurrencyPolicy`, `suspend`, the Job to
//! create (`<cronjob>-<minutes since the epoch>`), history cleanup and the status. The caller
//! lists the CronJob's Jobs, calls [`plan`], creates/deletes what it says, records the created
//! Job with [`record_created`], writes the status and syncs again after `requeue_after`.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned, civil};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::event::Event;
use super::field;
use super::job;

/// The annotation on a created Job with its scheduled time (RFC 3339, in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed starts than this since the last one draw the `TooManyMissedTimes` warning.
pub const MAX_MISSED_STARTS: i64 = 100;
/// The padding added to every requeue, against clock skew (`nextScheduleDelta`).
pub const NEXT_SCHEDULE_DELTA: SignedDuration = SignedDuration::from_millis(100);
/// `successfulJobsHistoryLimit` when unset (the apiserver's default).
pub const DEFAULT_SUCCESSFUL_JOBS_HISTORY: i32 = 3;
/// `failedJobsHistoryLimit` when unset.
pub const DEFAULT_FAILED_JOBS_HISTORY: i32 = 1;
/// Longest CronJob name: the controller appends `-` and up to 10 digits to name its Jobs.
pub const MAX_NAME_LENGTH: usize = 52;

const STAR: u64 = 1 << 63;

/// The range of one cron field and its names.
struct Bounds {
    min: u64,
    max: u64,
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// The five fields as bit sets (bit n = value n; bit 63 = written as `*` or `?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every <duration>`: whole seconds, at least one.
    Every(i64),
}

/// A parsed cron schedule and the zone its fields are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    zone: TimeZone,
}

/// Go's `strconv.Atoi`: an optional sign and decimal digits.
fn atoi(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.Atoi: parsing {s:?}: invalid syntax"));
    }
    s.parse()
        .map_err(|_| format!("strconv.Atoi: parsing {s:?}: value out of range"))
}

fn must_parse_int(expr: &str) -> Result<u64, String> {
    let n = atoi(expr).map_err(|e| format!("failed to parse int from {expr}: {e}"))?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {expr}"));
    }
    Ok(n as u64)
}

fn parse_int_or_name(expr: &str, b: &Bounds) -> Result<u64, String> {
    let lower = expr.to_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    must_parse_int(expr)
}

fn bits(min: u64, max: u64, step: u64) -> u64 {
    let mut out = 0;
    let mut i = min;
    while i <= max {
        out |= 1 << i;
        match i.checked_add(step) {
            Some(n) => i = n,
            None => break,
        }
    }
    out
}

/// One range: `*`, `?`, `n`, `a-b`, any of them with `/step` (`n/step` means `n-max/step`).
fn get_range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_high.len() == 1;
    let (start, mut end, mut extra);
    if low_high[0] == "*" || low_high[0] == "?" {
        // robfig/cron ignores anything after `*-`, and so does the apiserver.
        (start, end, extra) = (b.min, b.max, STAR);
    } else {
        start = parse_int_or_name(low_high[0], b)?;
        end = match low_high.len() {
            1 => start,
            2 => parse_int_or_name(low_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        extra = 0;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = must_parse_int(range_and_step[1])?;
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(bits(start, end, step) | extra)
}

/// A comma-separated list of ranges (empty items are skipped, as robfig/cron does).
fn get_field(field: &str, b: &Bounds) -> Result<u64, String> {
    let mut out = 0;
    for expr in field.split(',').filter(|e| !e.is_empty()) {
        out |= get_range(expr, b)?;
    }
    Ok(out)
}

/// Go's `time.ParseDuration`, in nanoseconds, with its error messages.
fn go_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u128 = 0;
        for b in s[..int_len].bytes() {
            v = v * 10 + u128::from(b - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        s = &s[int_len..];
        let (mut frac, mut scale, mut post) = (0u128, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let n = s.bytes().take_while(u8::is_ascii_digit).count();
            post = n > 0;
            for b in s[..n].bytes() {
                // Go stops taking digits once they would overflow; they no longer matter.
                if frac < LIMIT / 10 {
                    frac = frac * 10 + u128::from(b - b'0');
                    scale *= 10.0;
                }
            }
            s = &s[n..];
        }
        if int_len == 0 && !post {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit_name = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u128 = match unit_name {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {unit_name:?} in duration {orig:?}"
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if frac > 0 {
            v += (frac as f64 * (unit as f64 / scale)) as u128;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        return Ok(-(total as i128));
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i128)
}

/// Go's `time.LoadLocation` over jiff's copy of the tz database: `""` and `UTC` are UTC,
/// `Local` is the controller's own zone, anything else must be an IANA name spelt exactly
/// (Go opens the zoneinfo file by that name; jiff alone would accept any case).
pub fn load_location(name: &str, local: &TimeZone) -> Result<TimeZone, String> {
    match name {
        "" | "UTC" => return Ok(TimeZone::UTC),
        "Local" => return Ok(local.clone()),
        _ => {}
    }
    if name.contains("..") || name.starts_with(['/', '\\']) {
        return Err("time: invalid location name".into());
    }
    match TimeZone::get(name) {
        Ok(tz) if tz.iana_name() == Some(name) => Ok(tz),
        _ => Err(format!("unknown time zone {name}")),
    }
}

impl Schedule {
    /// Parses a schedule as `cron.ParseStandard` does, reading it in UTC unless it names a zone.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        Schedule::parse_in(spec, &TimeZone::UTC)
    }

    /// Parses a schedule whose fields, without a `TZ=`/`CRON_TZ=` prefix, are read in `local`
    /// (kube-controller-manager reads them in its own local zone).
    pub fn parse_in(spec: &str, local: &TimeZone) -> Result<Schedule, String> {
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        let mut spec = spec;
        let mut zone = local.clone();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let eq = spec.find('=').unwrap_or(0);
            let end = spec.find(' ').unwrap_or(spec.len());
            let name = &spec[eq + 1..end];
            zone = load_location(name, local)
                .map_err(|e| format!("provided bad location {name}: {e}"))?;
            spec = spec[end..].trim();
        }
        if spec.starts_with('@') {
            return Ok(Schedule {
                kind: descriptor(spec)?,
                zone,
            });
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            ));
        }
        let fields = Fields {
            minute: get_field(fields[0], &MINUTES)?,
            hour: get_field(fields[1], &HOURS)?,
            dom: get_field(fields[2], &DAYS_OF_MONTH)?,
            month: get_field(fields[3], &MONTHS)?,
            dow: get_field(fields[4], &DAYS_OF_WEEK)?,
        };
        Ok(Schedule {
            kind: Kind::Fields(fields),
            zone,
        })
    }

    /// The zone the schedule is read in.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first activation strictly after `after`, on a whole second; `None` when there is
    /// none within five years (robfig/cron's limit: `0 0 30 2 *` never comes).
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        let start = Timestamp::from_second(after.as_second().checked_add(1)?).ok()?;
        match &self.kind {
            Kind::Every(secs) => Timestamp::from_second(after.as_second().checked_add(*secs)?).ok(),
            Kind::Fields(f) => next_fields(f, start.to_zoned(self.zone.clone())),
        }
    }
}

fn descriptor(spec: &str) -> Result<Kind, String> {
    let f = |minute, hour, dom, month, dow| {
        Kind::Fields(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    let all = |b: &Bounds| bits(b.min, b.max, 1) | STAR;
    Ok(match spec {
        "@yearly" | "@annually" => f(1, 1, 1 << 1, 1 << 1, all(&DAYS_OF_WEEK)),
        "@monthly" => f(1, 1, 1 << 1, all(&MONTHS), all(&DAYS_OF_WEEK)),
        "@weekly" => f(1, 1, all(&DAYS_OF_MONTH), all(&MONTHS), 1),
        "@daily" | "@midnight" => f(1, 1, all(&DAYS_OF_MONTH), all(&MONTHS), all(&DAYS_OF_WEEK)),
        "@hourly" => f(
            1,
            all(&HOURS),
            all(&DAYS_OF_MONTH),
            all(&MONTHS),
            all(&DAYS_OF_WEEK),
        ),
        _ => match spec.strip_prefix("@every ") {
            Some(d) => {
                let nanos =
                    go_duration(d).map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
                // Every() rounds up to one second and drops fractions of a second.
                Kind::Every((nanos / 1_000_000_000).max(1) as i64)
            }
            None => return Err(format!("unrecognized descriptor: {spec}")),
        },
    })
}

fn day_matches(f: &Fields, t: &Zoned) -> bool {
    let dom = f.dom & (1 << t.day()) != 0;
    let dow = f.dow & (1 << t.weekday().to_sunday_zero_offset()) != 0;
    // Either field written as `*` makes both count; otherwise either one may match.
    if f.dom & STAR != 0 || f.dow & STAR != 0 {
        dom && dow
    } else {
        dom || dow
    }
}

/// Midnight (or `hour:00`) of a civil date in the schedule's zone; a time in a DST gap moves
/// forward, as Go's `time.Date` does.
fn civil_at(zone: &TimeZone, date: civil::Date, hour: i8, minute: i8) -> Option<Zoned> {
    date.at(hour, minute, 0, 0).to_zoned(zone.clone()).ok()
}

/// robfig/cron's `SpecSchedule.Next`: walk month, day, hour, minute forward to the first match,
/// restarting from the month whenever a field wraps; civil steps for months and days, absolute
/// steps for hours and minutes (so an hourly job runs in both copies of a repeated DST hour).
fn next_fields(f: &Fields, mut t: Zoned) -> Option<Timestamp> {
    let zone = t.time_zone().clone();
    let hours = |n: i64| SignedDuration::from_hours(n);
    let mut added = false;
    let year_limit = t.year() + 5;
    // A guard against zones whose clocks skip the wrap points the walk relies on.
    let mut steps = 0u32;
    'wrap: loop {
        steps += 1;
        if t.year() > year_limit || steps > 200_000 {
            return None;
        }
        while f.month & (1 << t.month()) == 0 {
            if !added {
                added = true;
                t = civil_at(&zone, t.date().first_of_month(), 0, 0)?;
            }
            let next = t.date().checked_add(1.month()).ok()?;
            t = civil_at(&zone, next, t.hour(), t.minute())?;
            if t.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(f, &t) {
            if !added {
                added = true;
                t = civil_at(&zone, t.date(), 0, 0)?;
            }
            t = civil_at(&zone, t.date().tomorrow().ok()?, t.hour(), t.minute())?;
            // Midnight may not exist (DST at 00:00): get back to the day's start.
            let h = i64::from(t.hour());
            if h != 0 {
                t = t
                    .checked_add(if h > 12 { hours(24 - h) } else { hours(-h) })
                    .ok()?;
            }
            if t.day() == 1 {
                continue 'wrap;
            }
        }
        while f.hour & (1 << t.hour()) == 0 {
            if !added {
                added = true;
                t = civil_at(&zone, t.date(), t.hour(), 0)?;
            }
            t = t.checked_add(hours(1)).ok()?;
            if t.hour() == 0 {
                continue 'wrap;
            }
        }
        while f.minute & (1 << t.minute()) == 0 {
            if !added {
                added = true;
                let ts = t.timestamp().as_second();
                t = Timestamp::from_second(ts - ts.rem_euclid(60))
                    .ok()?
                    .to_zoned(zone.clone());
            }
            t = t.checked_add(SignedDuration::from_mins(1)).ok()?;
            if t.minute() == 0 {
                continue 'wrap;
            }
        }
        while t.second() != 0 {
            t = t.checked_add(SignedDuration::from_secs(1)).ok()?;
            if t.second() == 0 {
                continue 'wrap;
            }
        }
        return Some(t.timestamp());
    }
}

/// How many starts were missed since the last one (`missedSchedulesType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    /// More than [`MAX_MISSED_STARTS`].
    Many,
}

const BAD_INTERVAL: &str = "time difference between two schedules is less than 1 second";

/// `mostRecentScheduleTime`: from `earliest` (the last scheduled time, else the creation time;
/// raised to `now - startingDeadlineSeconds` when `deadline` is given), the most recent
/// activation not after `now`, and how many were missed. The count is the controller's
/// estimate: elapsed time over the interval between the first two activations.
pub fn most_recent(
    schedule: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
    deadline: Option<i64>,
) -> Result<(Timestamp, Option<Timestamp>, Missed), String> {
    let mut earliest = earliest;
    if let Some(secs) = deadline {
        let cutoff = now - SignedDuration::from_secs(secs);
        if cutoff > earliest {
            earliest = cutoff;
        }
    }
    let t1 = schedule.next(earliest);
    let (Some(t1), Some(t2)) = (t1, t1.and_then(|t| schedule.next(t))) else {
        return Err(BAD_INTERVAL.into());
    };
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    let between = t2
        .duration_since(t1)
        .round(jiff::Unit::Second)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if between < 1 {
        return Err(BAD_INTERVAL.into());
    }
    let missed = now.duration_since(t1).as_secs() / between + 1;
    let potential = t1 + SignedDuration::from_secs((missed - 2) * between);
    let mut recent = None;
    let mut t = schedule.next(potential);
    while let Some(at) = t.filter(|at| *at <= now) {
        recent = Some(at);
        t = schedule.next(at);
    }
    let level = match missed {
        n if n > MAX_MISSED_STARTS => Missed::Many,
        n if n > 0 => Missed::Few,
        _ => Missed::None,
    };
    Ok((earliest, recent, level))
}

/// How long until the next activation after the last one due, plus [`NEXT_SCHEDULE_DELTA`]
/// (`nextScheduleTimeDuration`).
pub fn requeue_after(
    schedule: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
) -> Option<SignedDuration> {
    let base = match most_recent(schedule, earliest, now, None) {
        Err(_) => now,
        Ok((_, Some(t), _)) => t,
        Ok((e, None, Missed::None)) => e,
        Ok((_, None, _)) => now,
    };
    Some((schedule.next(base)? + NEXT_SCHEDULE_DELTA).duration_since(now))
}

/// A created Job's name: the CronJob's name and the scheduled time in minutes since the epoch,
/// the same for every controller that sees the same time, so no time gets two Jobs.
pub fn job_name(cron_job: &str, scheduled: Timestamp) -> String {
    format!("{cron_job}-{}", scheduled.as_second() / 60)
}

/// RFC 3339 as Go prints `time.RFC3339`: `Z` for a zero offset.
fn rfc3339(t: &Zoned) -> String {
    if t.offset().seconds() == 0 {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The zone of the scheduled-time annotation: `spec.timeZone`, else UTC (Go's
/// `LoadLocation("")`), whatever zone the schedule itself is read in.
fn spec_zone(cj: &CronJob, local: &TimeZone) -> Result<TimeZone, String> {
    load_location(cj.spec.time_zone.as_deref().unwrap_or(""), local)
}

/// The Job for one scheduled time (`getJobFromTemplate2`): the template's labels, annotations
/// and spec, the deterministic name, the scheduled-time annotation, and the CronJob as
/// controller owner.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, local: &TimeZone) -> Result<Job, String> {
    let spec = cj.spec.clone();
    let meta = spec.job_template.metadata.clone().unwrap_or_default();
    let zone = spec_zone(cj, local)?;
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        rfc3339(&scheduled.to_zoned(zone)),
    );
    let name = cj.metadata.name.clone().unwrap_or_default();
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            creation_timestamp: Some(Time(scheduled)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: spec.job_template.spec,
        status: None,
    })
}

/// The reference to a created Job that `status.active` lists.
pub fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// After creating the planned Job (or finding it already created by this CronJob): list it as
/// active and move `lastScheduleTime` to its scheduled time.
pub fn record_created(status: &mut CronJobStatus, job: &Job, scheduled: Timestamp) {
    let active = status.active.get_or_insert_with(Vec::new);
    if !active
        .iter()
        .any(|r| r.uid.is_some() && r.uid == job.metadata.uid)
    {
        active.push(job_reference(job));
    }
    status.last_schedule_time = Some(Time(scheduled));
}

/// One sync's decisions.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The Job to create now; on success call [`record_created`] with it.
    pub create: Option<Job>,
    /// The scheduled time `create` stands for.
    pub scheduled: Option<Timestamp>,
    /// Jobs to delete, by name (background propagation, as the controller deletes them):
    /// active ones replaced under `Replace`, then finished ones past the history limits.
    pub delete: Vec<String>,
    /// The status to write (active list already without the deleted and finished Jobs).
    pub status: CronJobStatus,
    pub events: Vec<Event>,
    /// When to sync again (the next activation), if ever.
    pub requeue_after: Option<SignedDuration>,
}

fn uid_of(job: &Job) -> Option<&str> {
    job.metadata.uid.as_deref()
}

fn controlled_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

fn rfc1123z_utc(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC)
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// The schedule the controller runs (`formatSchedule`): a `TZ` in the schedule wins (with a
/// warning), else `spec.timeZone`, else the controller's zone.
fn effective_schedule(
    cj: &CronJob,
    local: &TimeZone,
    events: &mut Vec<Event>,
) -> Result<Schedule, String> {
    let spec = cj.spec.clone();
    if spec.schedule.contains("TZ") {
        events.push(Event::warning(
            "UnsupportedSchedule",
            format!(
                "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                spec.schedule
            ),
        ));
        return Schedule::parse_in(&spec.schedule, local);
    }
    match spec.time_zone.as_deref() {
        Some(tz) => Schedule::parse_in(&format!("TZ={tz} {}", spec.schedule), local),
        None => Schedule::parse_in(&spec.schedule, local),
    }
}

/// One sync of a CronJob (`syncCronJob` + `cleanupFinishedJobs`). `jobs` are the Jobs in its
/// namespace (only those it controls count); `local` is the zone schedules without `timeZone`
/// are read in.
pub fn plan(cj: &CronJob, jobs: &[Job], local: &TimeZone, now: Timestamp) -> Plan {
    let mut p = Plan {
        status: cj.status.clone().unwrap_or_default(),
        ..Plan::default()
    };
    let spec = &cj.spec;
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let mine: Vec<&Job> = jobs.iter().filter(|j| controlled_by(j, &uid)).collect();
    let in_active = |status: &CronJobStatus, uid: Option<&str>| {
        status
            .active
            .iter()
            .flatten()
            .any(|r| uid.is_some() && r.uid.as_deref() == uid)
    };

    for j in &mine {
        let name = j.metadata.name.clone().unwrap_or_default();
        let found = in_active(&p.status, uid_of(j));
        let finished = job::finished(j);
        match finished {
            None if !found => p.events.push(Event::warning(
                "UnexpectedJob",
                format!("Saw a job that the controller did not create or forgot: {name}"),
            )),
            Some(kind) if found => {
                remove_active(&mut p.status, uid_of(j));
                p.events.push(Event::normal(
                    "SawCompletedJob",
                    format!("Saw completed job: {name}, status: {kind}"),
                ));
            }
            _ => {}
        }
        if finished == Some("Complete") {
            let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
            let last = p.status.last_successful_time.as_ref().map(|t| t.0);
            if let Some(done) = done
                && last.is_none_or(|l| done.0 > l)
            {
                p.status.last_successful_time = Some(done);
            }
        }
    }
    // References to Jobs that no longer exist would keep the CronJob "active" forever.
    let existing: Vec<&str> = mine.iter().filter_map(|j| uid_of(j)).collect();
    let missing: Vec<ObjectReference> = p
        .status
        .active
        .iter()
        .flatten()
        .filter(|r| !r.uid.as_deref().is_some_and(|u| existing.contains(&u)))
        .cloned()
        .collect();
    for r in missing {
        p.events.push(Event::normal(
            "MissingJob",
            format!(
                "Active job went missing: {}",
                r.name.clone().unwrap_or_default()
            ),
        ));
        remove_active(&mut p.status, r.uid.as_deref());
    }
    if cj.metadata.deletion_timestamp.is_some() {
        return p;
    }
    schedule_step(cj, spec, local, now, &mut p);
    cleanup_history(cj, &mine, &mut p);
    p
}

fn remove_active(status: &mut CronJobStatus, uid: Option<&str>) {
    if let Some(active) = status.active.as_mut() {
        active.retain(|r| r.uid.as_deref() != uid);
    }
}

fn schedule_step(
    cj: &CronJob,
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    local: &TimeZone,
    now: Timestamp,
    p: &mut Plan,
) {
    if let Some(tz) = spec.time_zone.as_deref()
        && let Err(e) = load_location(tz, local)
    {
        p.events.push(Event::warning(
            "UnknownTimeZone",
            format!("invalid timeZone: {tz:?}: {e}"),
        ));
        return;
    }
    if spec.suspend == Some(true) {
        return;
    }
    let schedule = match effective_schedule(cj, local, &mut p.events) {
        Ok(s) => s,
        Err(e) => {
            p.events.push(Event::warning(
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return;
        }
    };
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let earliest = p
        .status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(created);
    let due = match most_recent(&schedule, earliest, now, spec.starting_deadline_seconds) {
        Err(e) => {
            p.events.push(Event::warning(
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            ));
            return;
        }
        Ok((_, recent, missed)) => {
            if recent.is_some() && missed == Missed::Many {
                p.events.push(Event::warning(
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                ));
            }
            recent
        }
    };
    p.requeue_after = requeue_after(&schedule, earliest, now);
    let Some(scheduled) = due else {
        return;
    };
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled + SignedDuration::from_secs(deadline) < now
    {
        p.events.push(Event::warning(
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                rfc1123z_utc(scheduled)
            ),
        ));
        return;
    }
    let name = job_name(cj.metadata.name.as_deref().unwrap_or(""), scheduled);
    let listed = p
        .status
        .active
        .iter()
        .flatten()
        .any(|r| r.name.as_deref() == Some(name.as_str()));
    if listed || p.status.last_schedule_time.as_ref().map(|t| t.0) == Some(scheduled) {
        return;
    }
    let active = p.status.active.as_ref().is_some_and(|a| !a.is_empty());
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if active => {
            p.events.push(Event::normal(
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
            ));
            return;
        }
        Some("Replace") => {
            for r in p.status.active.take().unwrap_or_default() {
                let n = r.name.unwrap_or_default();
                p.events.push(Event::normal(
                    "SuccessfulDelete",
                    format!("Deleted job {n}"),
                ));
                p.delete.push(n);
            }
            p.status.active = Some(Vec::new());
        }
        _ => {}
    }
    match job_for(cj, scheduled, local) {
        Ok(job) => {
            p.events.push(Event::normal(
                "SuccessfulCreate",
                format!("Created job {name}"),
            ));
            p.create = Some(job);
            p.scheduled = Some(scheduled);
            p.requeue_after = requeue_after(&schedule, scheduled, now);
        }
        Err(e) => p.events.push(Event::warning(
            "FailedCreate",
            format!("Error creating job: {e}"),
        )),
    }
}

/// `cleanupFinishedJobs`: beyond each history limit, the finished Jobs that started first go
/// (no start time counts as newest; names break ties).
fn cleanup_history(cj: &CronJob, mine: &[&Job], p: &mut Plan) {
    let spec = cj.spec.clone();
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = mine
            .iter()
            .copied()
            .filter(|j| job::finished(j) == Some(kind))
            .collect();
        let excess = finished.len().saturating_sub(limit.max(0) as usize);
        if excess == 0 {
            continue;
        }
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        finished.sort_by(|a, b| match (start(a), start(b)) {
            (Some(x), Some(y)) if x != y => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => a.metadata.name.cmp(&b.metadata.name),
        });
        for j in finished.into_iter().take(excess) {
            let name = j.metadata.name.clone().unwrap_or_default();
            if p.delete.contains(&name) {
                continue;
            }
            p.events.push(Event::normal(
                "SuccessfulDelete",
                format!("Deleted job {name}"),
            ));
            remove_active(&mut p.status, uid_of(j));
            p.delete.push(name);
        }
    }
}

/// The apiserver's defaults for a CronJob (`SetDefaults_CronJob`).
pub fn defaults(cj: &mut CronJob) {
    let spec = &mut cj.spec;
    if spec.concurrency_policy.as_deref().is_none_or(str::is_empty) {
        spec.concurrency_policy = Some("Allow".into());
    }
    spec.suspend.get_or_insert(false);
    spec.successful_jobs_history_limit
        .get_or_insert(DEFAULT_SUCCESSFUL_JOBS_HISTORY);
    spec.failed_jobs_history_limit
        .get_or_insert(DEFAULT_FAILED_JOBS_HISTORY);
}

/// The IANA naming rules the apiserver checks before looking a zone up.
fn valid_zone_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 14
        && part != "."
        && part != ".."
        && !part.starts_with('-')
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// The apiserver's checks of a CronJob (`ValidateCronJobCreate`, or `ValidateCronJobUpdate`
/// with `old`), in its order and words; empty when valid. The job template's pod template is
/// left to the pod validation.
pub fn validate(cj: &CronJob, old: Option<&CronJob>) -> Vec<String> {
    let mut errs = Vec::new();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let spec = &cj.spec;
    let old_spec = old.map(|o| &o.spec);
    if spec.schedule.is_empty() {
        errs.push(field::required("spec.schedule", ""));
    } else {
        let allow_tz = old_spec.is_some_and(|o| o.schedule.contains("TZ"));
        let q = field::quoted(&spec.schedule);
        if let Err(e) = Schedule::parse(&spec.schedule) {
            errs.push(field::invalid("spec.schedule", &q, &e));
        }
        if allow_tz && spec.schedule.contains("TZ") && spec.time_zone.is_some() {
            errs.push(field::invalid(
                "spec.schedule",
                &q,
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            ));
        } else if !allow_tz && spec.schedule.contains("TZ") {
            errs.push(field::invalid(
                "spec.schedule",
                &q,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        }
    }
    field::nonnegative(
        &mut errs,
        "spec.startingDeadlineSeconds",
        spec.starting_deadline_seconds,
    );
    if old_spec.is_none_or(|o| o.time_zone != spec.time_zone)
        && let Some(tz) = spec.time_zone.as_deref()
    {
        let q = field::quoted(tz);
        if tz.is_empty() {
            errs.push(field::invalid(
                "spec.timeZone",
                &q,
                "timeZone must be nil or non-empty string",
            ));
        } else if !tz.split('/').all(valid_zone_part) {
            errs.push(field::invalid(
                "spec.timeZone",
                &q,
                &format!("unknown time zone {tz}"),
            ));
        } else {
            if tz.eq_ignore_ascii_case("Local") {
                errs.push(field::invalid(
                    "spec.timeZone",
                    &q,
                    "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                ));
            }
            if let Err(e) = load_location(tz, &TimeZone::UTC) {
                errs.push(field::invalid("spec.timeZone", &q, &e));
            }
        }
    }
    match spec.concurrency_policy.as_deref() {
        None | Some("Allow" | "Forbid" | "Replace") => {}
        Some("") => errs.push(field::required("spec.concurrencyPolicy", "")),
        Some(other) => errs.push(field::not_supported(
            "spec.concurrencyPolicy",
            other,
            &["Allow", "Forbid", "Replace"],
        )),
    }
    if let Some(template) = spec.job_template.spec.as_ref() {
        errs.extend(job::validate_spec(template, "spec.jobTemplate.spec"));
        if template.selector.is_some() {
            errs.push(format!(
                "spec.jobTemplate.spec.selector: Invalid value: {}: `selector` will be auto-generated",
                job::selector_text(template.selector.as_ref())
            ));
        }
        if template.manual_selector == Some(true) {
            errs.push(field::not_supported(
                "spec.jobTemplate.spec.manualSelector",
                "true",
                &["nil", "false"],
            ));
        }
    }
    field::nonnegative(
        &mut errs,
        "spec.successfulJobsHistoryLimit",
        spec.successful_jobs_history_limit.map(i64::from),
    );
    field::nonnegative(
        &mut errs,
        "spec.failedJobsHistoryLimit",
        spec.failed_jobs_history_limit.map(i64::from),
    );
    if old.is_none() && name.len() > MAX_NAME_LENGTH {
        errs.push(field::invalid(
            "metadata.name",
            field::quoted(&name),
            "must be no more than 52 characters",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn schedules_that_do_not_parse_give_robfig_crons_messages() {
        let cases = [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            (
                "0 0 * * * *",
                "expected exactly 5 fields, found 6: [0 0 * * * *]",
            ),
            ("61 * * * *", "end of range (61) above maximum (59): 61"),
            ("* 24 * * *", "end of range (24) above maximum (23): 24"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("* * * 13 *", "end of range (13) above maximum (12): 13"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("*/2/3 * * * *", "too many slashes: */2/3"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            (
                "* * * FOO *",
                "failed to parse int from FOO: strconv.Atoi: parsing \"FOO\": invalid syntax",
            ),
            ("*/-1 * * * *", "negative number (-1) not allowed: -1"),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@daily ", "unrecognized descriptor: @daily "),
            (
                "@every 1d",
                "failed to parse duration @every 1d: time: unknown unit \"d\" in duration \"1d\"",
            ),
            (
                "@every 5",
                "failed to parse duration @every 5: time: missing unit in duration \"5\"",
            ),
            (
                "@every x",
                "failed to parse duration @every x: time: invalid duration \"x\"",
            ),
            (
                "TZ=Mars/Olympus * * * * *",
                "provided bad location Mars/Olympus: unknown time zone Mars/Olympus",
            ),
            (
                "CRON_TZ=america/new_york * * * * *",
                "provided bad location america/new_york: unknown time zone america/new_york",
            ),
            ("TZ=UTC", "expected exactly 5 fields, found 0: []"),
        ];
        for (spec, want) in cases {
            assert_eq!(Schedule::parse(spec).unwrap_err(), want, "{spec:?}");
        }
        for ok in [
            "* * * * *",
            "*/5 * * * ?",
            "0 9 * * MON-FRI",
            "0 0 1 jan,Jul *",
            "5/20 * * * *",
            "1,,2 * * * *",
            "@hourly",
            "@every 1h30m",
            "@every 1.5h",
            "CRON_TZ=Europe/Paris 0 3 * * *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn the_next_activation_follows_fields_names_steps_and_descriptors() {
        let cases = [
            (
                "*/15 * * * *",
                "2026-01-01T00:07:30Z",
                Some("2026-01-01T00:15:00Z"),
            ),
            // Strictly after: a time on the schedule gives the following one.
            (
                "0 * * * *",
                "2026-01-01T00:00:00Z",
                Some("2026-01-01T01:00:00Z"),
            ),
            (
                "@hourly",
                "2026-01-01T00:00:00Z",
                Some("2026-01-01T01:00:00Z"),
            ),
            (
                "* * * * ?",
                "2026-01-01T00:00:30Z",
                Some("2026-01-01T00:01:00Z"),
            ),
            (
                "@daily",
                "2026-01-01T05:00:00Z",
                Some("2026-01-02T00:00:00Z"),
            ),
            // 2026-01-01 is a Thursday; @weekly is Sunday midnight.
            (
                "@weekly",
                "2026-01-01T00:00:00Z",
                Some("2026-01-04T00:00:00Z"),
            ),
            (
                "@monthly",
                "2026-01-15T00:00:00Z",
                Some("2026-02-01T00:00:00Z"),
            ),
            (
                "@yearly",
                "2026-03-01T00:00:00Z",
                Some("2027-01-01T00:00:00Z"),
            ),
            (
                "30 9 * * MON-FRI",
                "2026-01-02T10:00:00Z",
                Some("2026-01-05T09:30:00Z"),
            ),
            (
                "0 12 * JAN,jul *",
                "2026-02-01T00:00:00Z",
                Some("2026-07-01T12:00:00Z"),
            ),
            (
                "5/20 * * * *",
                "2026-01-01T00:30:00Z",
                Some("2026-01-01T00:45:00Z"),
            ),
            (
                "1-10/3 * * * *",
                "2026-01-01T00:04:00Z",
                Some("2026-01-01T00:07:00Z"),
            ),
            // Day of month or day of week when neither is `*`: Friday the 2nd comes first.
            (
                "0 0 13 * FRI",
                "2026-01-01T00:00:00Z",
                Some("2026-01-02T00:00:00Z"),
            ),
            (
                "0 0 13 * *",
                "2026-01-01T00:00:00Z",
                Some("2026-01-13T00:00:00Z"),
            ),
            (
                "0 0 29 2 *",
                "2026-03-01T00:00:00Z",
                Some("2028-02-29T00:00:00Z"),
            ),
            ("0 0 31 2 *", "2026-01-01T00:00:00Z", None),
            (
                "@every 90m",
                "2026-01-01T00:00:10.5Z",
                Some("2026-01-01T01:30:10Z"),
            ),
            (
                "@every 300ms",
                "2026-01-01T00:00:10Z",
                Some("2026-01-01T00:00:11Z"),
            ),
            (
                "CRON_TZ=America/New_York 0 9 * * *",
                "2026-01-01T00:00:00Z",
                Some("2026-01-01T14:00:00Z"),
            ),
            (
                "TZ=America/New_York 0 9 * * *",
                "2026-07-01T00:00:00Z",
                Some("2026-07-01T13:00:00Z"),
            ),
            // robfig/cron walks hours in absolute time: 02:30 does not exist on the day
            // clocks spring forward, and that day gets no run.
            (
                "TZ=America/New_York 30 2 * * *",
                "2026-03-07T12:00:00Z",
                Some("2026-03-09T06:30:00Z"),
            ),
            // ...and an hourly job runs in both copies of the hour repeated in autumn.
            (
                "TZ=America/New_York 0 * * * *",
                "2026-11-01T05:00:00Z",
                Some("2026-11-01T06:00:00Z"),
            ),
        ];
        for (spec, after, want) in cases {
            let s = Schedule::parse(spec).unwrap();
            assert_eq!(s.next(ts(after)), want.map(ts), "{spec:?} after {after}");
        }
        // Without a prefix the fields are read in the controller's own zone.
        let paris = Schedule::parse_in("0 9 * * *", &tz("Europe/Paris")).unwrap();
        assert_eq!(
            paris.next(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T08:00:00Z"))
        );
    }

    #[test]
    fn the_most_recent_due_time_and_the_missed_count() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        let t0 = ts("2026-01-01T00:00:00Z");
        let cases = [
            // (now, deadline, most recent, missed)
            ("2026-01-01T00:04:00Z", None, None, Missed::None),
            (
                "2026-01-01T00:05:30Z",
                None,
                Some("2026-01-01T00:05:00Z"),
                Missed::None,
            ),
            (
                "2026-01-01T00:17:00Z",
                None,
                Some("2026-01-01T00:15:00Z"),
                Missed::Few,
            ),
            // A deadline moves the start: 00:05 and 00:10 are out of the last 200 s.
            ("2026-01-01T00:12:30Z", Some(100), None, Missed::None),
            (
                "2026-01-01T00:12:30Z",
                Some(200),
                Some("2026-01-01T00:10:00Z"),
                Missed::None,
            ),
            (
                "2026-01-02T00:00:30Z",
                None,
                Some("2026-01-02T00:00:00Z"),
                Missed::Many,
            ),
        ];
        for (now, deadline, want, missed) in cases {
            let (_, recent, level) = most_recent(&every5, t0, ts(now), deadline).unwrap();
            assert_eq!(recent, want.map(ts), "now {now}");
            assert_eq!(level, missed, "now {now}");
        }
        let never = Schedule::parse("0 0 31 2 *").unwrap();
        assert_eq!(
            most_recent(&never, t0, ts("2026-06-01T00:00:00Z"), None).unwrap_err(),
            "time difference between two schedules is less than 1 second"
        );
        assert_eq!(
            requeue_after(&every5, t0, ts("2026-01-01T00:04:00Z")),
            Some(SignedDuration::from_millis(60_100))
        );
    }

    fn cron_job(extra: serde_json::Value) -> CronJob {
        let mut v = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "hello", "namespace": "default", "uid": "cj-uid",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedule": "*/5 * * * *",
                     "jobTemplate": {"metadata": {"labels": {"app": "hello"}},
                                     "spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                                         "containers": [{"name": "c", "image": "busybox"}]}}}}}
        });
        merge(&mut v, extra);
        let mut cj: CronJob = serde_json::from_value(v).unwrap();
        defaults(&mut cj);
        cj
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn owned_job(name: &str, uid: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "hello",
                                     "uid": "cj-uid", "controller": true}]},
            "status": status
        }))
        .unwrap()
    }

    fn active(name: &str, uid: &str) -> serde_json::Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": "default", "uid": uid})
    }

    fn done(kind: &str, start: &str, end: &str) -> serde_json::Value {
        json!({"startTime": start, "completionTime": end,
               "conditions": [{"type": kind, "status": "True", "lastTransitionTime": end}]})
    }

    fn reasons(p: &Plan) -> Vec<&str> {
        p.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_due_time_creates_its_job_once() {
        let utc = TimeZone::UTC;
        struct Case {
            name: &'static str,
            extra: serde_json::Value,
            jobs: Vec<Job>,
            now: &'static str,
            create: Option<&'static str>,
            delete: Vec<&'static str>,
            events: Vec<&'static str>,
            requeue_ms: Option<i64>,
        }
        let cases = vec![
            Case {
                name: "not due yet",
                extra: json!({}),
                jobs: vec![],
                now: "2026-01-01T00:04:00Z",
                create: None,
                delete: vec![],
                events: vec![],
                requeue_ms: Some(60_100),
            },
            Case {
                name: "due: the job is named after the minute",
                extra: json!({}),
                jobs: vec![],
                now: "2026-01-01T00:05:30Z",
                create: Some("hello-29453765"),
                delete: vec![],
                events: vec!["SuccessfulCreate"],
                requeue_ms: Some(270_100),
            },
            Case {
                name: "already scheduled",
                extra: json!({"status": {"lastScheduleTime": "2026-01-01T00:05:00Z"}}),
                jobs: vec![],
                now: "2026-01-01T00:07:00Z",
                create: None,
                delete: vec![],
                events: vec![],
                requeue_ms: Some(180_100),
            },
            Case {
                name: "Forbid with a job running",
                extra: json!({"spec": {"concurrencyPolicy": "Forbid"},
                    "status": {"lastScheduleTime": "2026-01-01T00:05:00Z",
                               "active": [active("hello-29453765", "j1")]}}),
                jobs: vec![owned_job("hello-29453765", "j1", json!({}))],
                now: "2026-01-01T00:10:10Z",
                create: None,
                delete: vec![],
                events: vec!["JobAlreadyActive"],
                requeue_ms: Some(290_100),
            },
            Case {
                name: "Allow runs them side by side",
                extra: json!({"status": {"lastScheduleTime": "2026-01-01T00:05:00Z",
                               "active": [active("hello-29453765", "j1")]}}),
                jobs: vec![owned_job("hello-29453765", "j1", json!({}))],
                now: "2026-01-01T00:10:10Z",
                create: Some("hello-29453770"),
                delete: vec![],
                events: vec!["SuccessfulCreate"],
                requeue_ms: Some(290_100),
            },
            Case {
                name: "Replace deletes the running one",
                extra: json!({"spec": {"concurrencyPolicy": "Replace"},
                    "status": {"lastScheduleTime": "2026-01-01T00:05:00Z",
                               "active": [active("hello-29453765", "j1")]}}),
                jobs: vec![owned_job("hello-29453765", "j1", json!({}))],
                now: "2026-01-01T00:10:10Z",
                create: Some("hello-29453770"),
                delete: vec!["hello-29453765"],
                events: vec!["SuccessfulDelete", "SuccessfulCreate"],
                requeue_ms: Some(290_100),
            },
            Case {
                name: "suspended",
                extra: json!({"spec": {"suspend": true}}),
                jobs: vec![],
                now: "2026-01-01T00:05:30Z",
                create: None,
                delete: vec![],
                events: vec![],
                requeue_ms: None,
            },
            Case {
                name: "the deadline leaves the missed start out",
                extra: json!({"spec": {"startingDeadlineSeconds": 100},
                    "status": {"lastScheduleTime": "2026-01-01T00:05:00Z"}}),
                jobs: vec![],
                now: "2026-01-01T00:12:30Z",
                create: None,
                delete: vec![],
                events: vec![],
                requeue_ms: Some(150_100),
            },
            Case {
                name: "a long deadline still starts it late",
                extra: json!({"spec": {"startingDeadlineSeconds": 200},
                    "status": {"lastScheduleTime": "2026-01-01T00:05:00Z"}}),
                jobs: vec![],
                now: "2026-01-01T00:12:30Z",
                create: Some("hello-29453770"),
                delete: vec![],
                events: vec!["SuccessfulCreate"],
                requeue_ms: Some(150_100),
            },
            Case {
                name: "more than 100 missed: warned, and only the latest starts",
                extra: json!({"spec": {"schedule": "* * * * *"}}),
                jobs: vec![],
                now: "2026-01-02T00:00:30Z",
                create: Some("hello-29455200"),
                delete: vec![],
                events: vec!["TooManyMissedTimes", "SuccessfulCreate"],
                requeue_ms: Some(30_100),
            },
            Case {
                name: "an unknown time zone starts nothing",
                extra: json!({"spec": {"timeZone": "Mars/Base"}}),
                jobs: vec![],
                now: "2026-01-01T00:05:30Z",
                create: None,
                delete: vec![],
                events: vec!["UnknownTimeZone"],
                requeue_ms: None,
            },
            Case {
                name: "a schedule that does not parse starts nothing",
                extra: json!({"spec": {"schedule": "61 * * * *"}}),
                jobs: vec![],
                now: "2026-01-01T00:05:30Z",
                create: None,
                delete: vec![],
                events: vec!["UnparseableSchedule"],
                requeue_ms: None,
            },
            Case {
                name: "being deleted",
                extra: json!({"metadata": {"deletionTimestamp": "2026-01-01T00:05:00Z"}}),
                jobs: vec![],
                now: "2026-01-01T00:05:30Z",
                create: None,
                delete: vec![],
                events: vec![],
                requeue_ms: None,
            },
        ];
        for c in cases {
            let cj = cron_job(c.extra);
            let p = plan(&cj, &c.jobs, &utc, ts(c.now));
            assert_eq!(
                p.create.as_ref().and_then(|j| j.metadata.name.as_deref()),
                c.create,
                "{}",
                c.name
            );
            assert_eq!(p.delete, c.delete, "{}", c.name);
            assert_eq!(reasons(&p), c.events, "{}", c.name);
            assert_eq!(
                p.requeue_after,
                c.requeue_ms.map(SignedDuration::from_millis),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn event_messages_read_as_the_controllers() {
        let utc = TimeZone::UTC;
        let p = plan(
            &cron_job(json!({"spec": {"timeZone": "Mars/Base"}})),
            &[],
            &utc,
            ts("2026-01-01T00:05:30Z"),
        );
        assert_eq!(
            p.events[0].message,
            "invalid timeZone: \"Mars/Base\": unknown time zone Mars/Base"
        );
        let p = plan(
            &cron_job(json!({"spec": {"schedule": "61 * * * *"}})),
            &[],
            &utc,
            ts("2026-01-01T00:05:30Z"),
        );
        assert_eq!(
            p.events[0].message,
            "unparseable schedule: \"61 * * * *\" : end of range (61) above maximum (59): 61"
        );
        let p = plan(
            &cron_job(json!({"spec": {"schedule": "* * * * *"}})),
            &[],
            &utc,
            ts("2026-01-02T00:00:30Z"),
        );
        assert_eq!(
            p.events[0].message,
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
        );
        assert!(p.events[0].warning);
        assert_eq!(p.events[1].message, "Created job hello-29455200");
    }

    #[test]
    fn the_created_job_carries_template_owner_and_scheduled_time() {
        let cj = cron_job(
            json!({"spec": {"schedule": "0 9 * * *", "timeZone": "America/New_York",
            "jobTemplate": {"metadata": {"annotations": {"team": "batch"}}}}}),
        );
        let p = plan(&cj, &[], &TimeZone::UTC, ts("2026-01-01T14:00:30Z"));
        let job = p.create.expect("due at 09:00 New York time");
        assert_eq!(p.scheduled, Some(ts("2026-01-01T14:00:00Z")));
        let ann = job.metadata.annotations.clone().unwrap();
        assert_eq!(ann[SCHEDULED_TIMESTAMP], "2026-01-01T09:00:00-05:00");
        assert_eq!(ann["team"], "batch");
        assert_eq!(job.metadata.labels.clone().unwrap()["app"], "hello");
        let owner = &job.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("CronJob", "cj-uid", Some(true))
        );
        assert_eq!(
            job.spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .restart_policy
                .as_deref(),
            Some("OnFailure")
        );
        // Without timeZone it is UTC, ending in Z as Go prints RFC 3339, even when the
        // controller's own zone is another.
        let utc_job = job_for(
            &cron_job(json!({})),
            ts("2026-01-01T00:05:00Z"),
            &tz("Europe/Paris"),
        )
        .unwrap();
        assert_eq!(
            utc_job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP],
            "2026-01-01T00:05:00Z"
        );
        // Recording the created Job lists it and moves lastScheduleTime.
        let mut status = CronJobStatus::default();
        let mut created = job_for(&cj, ts("2026-01-01T14:00:00Z"), &TimeZone::UTC).unwrap();
        created.metadata.uid = Some("new-uid".into());
        record_created(&mut status, &created, ts("2026-01-01T14:00:00Z"));
        record_created(&mut status, &created, ts("2026-01-01T14:00:00Z"));
        let refs = status.active.unwrap();
        assert_eq!(refs.len(), 1, "recorded once");
        assert_eq!(refs[0].uid.as_deref(), Some("new-uid"));
        assert_eq!(
            status.last_schedule_time,
            Some(Time(ts("2026-01-01T14:00:00Z")))
        );
    }

    #[test]
    fn finished_missing_and_unexpected_jobs_update_the_status() {
        let cj = cron_job(
            json!({"status": {"lastScheduleTime": "2026-01-01T00:05:00Z",
            "active": [active("hello-29453760", "j0"), active("hello-29453765", "j1")]}}),
        );
        let jobs = vec![
            owned_job(
                "hello-29453765",
                "j1",
                done("Complete", "2026-01-01T00:05:01Z", "2026-01-01T00:06:00Z"),
            ),
            owned_job("stray", "j9", json!({})),
        ];
        let p = plan(&cj, &jobs, &TimeZone::UTC, ts("2026-01-01T00:07:00Z"));
        assert_eq!(
            reasons(&p),
            ["SawCompletedJob", "UnexpectedJob", "MissingJob"],
            "{:?}",
            p.events
        );
        assert_eq!(
            p.events[0].message,
            "Saw completed job: hello-29453765, status: Complete"
        );
        assert_eq!(
            p.events[2].message,
            "Active job went missing: hello-29453760"
        );
        assert_eq!(p.status.active, Some(vec![]));
        assert_eq!(
            p.status.last_successful_time,
            Some(Time(ts("2026-01-01T00:06:00Z")))
        );
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let cj = cron_job(json!({"status": {"lastScheduleTime": "2026-01-01T00:05:00Z"}}));
        let mut jobs = Vec::new();
        for (i, minute) in [1, 2, 3, 4, 5].iter().enumerate() {
            let start = format!("2026-01-01T00:0{minute}:00Z");
            let end = format!("2026-01-01T00:0{minute}:30Z");
            jobs.push(owned_job(
                &format!("ok-{i}"),
                &format!("ok{i}"),
                done("Complete", &start, &end),
            ));
        }
        jobs.push(owned_job(
            "bad-old",
            "b0",
            done("Failed", "2026-01-01T00:01:00Z", "2026-01-01T00:01:30Z"),
        ));
        jobs.push(owned_job(
            "bad-new",
            "b1",
            done("Failed", "2026-01-01T00:02:00Z", "2026-01-01T00:02:30Z"),
        ));
        let p = plan(&cj, &jobs, &TimeZone::UTC, ts("2026-01-01T00:07:00Z"));
        assert_eq!(p.delete, ["ok-0", "ok-1", "bad-old"]);
        // No limits, no cleanup.
        let mut unlimited = cj.clone();
        unlimited.spec.successful_jobs_history_limit = None;
        unlimited.spec.failed_jobs_history_limit = None;
        assert!(
            plan(
                &unlimited,
                &jobs,
                &TimeZone::UTC,
                ts("2026-01-01T00:07:00Z")
            )
            .delete
            .is_empty()
        );
    }

    #[test]
    fn validation_refuses_with_the_apiservers_messages() {
        let with = |spec: serde_json::Value| cron_job(json!({"spec": spec}));
        let cases = [
            (json!({}), vec![]),
            (
                json!({"schedule": "61 * * * *"}),
                vec![
                    "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
                ],
            ),
            (
                json!({"schedule": "CRON_TZ=UTC * * * * *"}),
                vec![
                    "spec.schedule: Invalid value: \"CRON_TZ=UTC * * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ],
            ),
            (
                json!({"timeZone": "Europe/Pariss"}),
                vec![
                    "spec.timeZone: Invalid value: \"Europe/Pariss\": unknown time zone Europe/Pariss",
                ],
            ),
            (
                json!({"timeZone": "Local"}),
                vec![
                    "spec.timeZone: Invalid value: \"Local\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                ],
            ),
            (
                json!({"timeZone": "../etc/passwd"}),
                vec![
                    "spec.timeZone: Invalid value: \"../etc/passwd\": unknown time zone ../etc/passwd",
                ],
            ),
            (
                json!({"concurrencyPolicy": "Sometimes"}),
                vec![
                    "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
                ],
            ),
            (
                json!({"startingDeadlineSeconds": -1, "successfulJobsHistoryLimit": -2}),
                vec![
                    "spec.startingDeadlineSeconds: Invalid value: -1: must be greater than or equal to 0",
                    "spec.successfulJobsHistoryLimit: Invalid value: -2: must be greater than or equal to 0",
                ],
            ),
            (
                json!({"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}}),
                vec![
                    "spec.jobTemplate.spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
                ],
            ),
        ];
        for (spec, want) in cases {
            let cj = with(spec.clone());
            assert_eq!(validate(&cj, None), want, "{spec}");
        }
        // A schedule that already had TZ may keep it on update, but not with timeZone.
        let old = with(json!({"schedule": "TZ=UTC * * * * *"}));
        assert!(validate(&old, Some(&old)).is_empty());
        let both = with(json!({"schedule": "TZ=UTC * * * * *", "timeZone": "UTC"}));
        assert_eq!(
            validate(&both, Some(&old)),
            [
                "spec.schedule: Invalid value: \"TZ=UTC * * * * *\": cannot use both timeZone field and TZ or CRON_TZ in schedule"
            ]
        );
        // Names leave room for the 11-character suffix, on create only.
        let mut long = with(json!({}));
        long.metadata.name = Some("a".repeat(53));
        assert_eq!(validate(&long, None).len(), 1);
        assert!(validate(&long, Some(&long)).is_empty());
    }

    #[test]
    fn defaults_fill_policy_and_history() {
        let cj = cron_job(json!({}));
        assert_eq!(cj.spec.concurrency_policy.as_deref(), Some("Allow"));
        assert_eq!(cj.spec.suspend, Some(false));
        assert_eq!(cj.spec.successful_jobs_history_limit, Some(3));
        assert_eq!(cj.spec.failed_jobs_history_limit, Some(1));
    }
}
