//! Events: the `skiff get events` table and the Events section of `skiff describe`.

use std::fmt::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;

use super::ts;
use crate::cli::humanize::age;

/// When the event was first seen: `firstTimestamp`, else `eventTime`.
fn first_seen(e: &Event) -> Option<Timestamp> {
    ts(e.first_timestamp.as_ref()).or(e.event_time.as_ref().map(|t| t.0))
}

/// When the event was last seen: the series' last observation, `lastTimestamp`, else first.
pub fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or(ts(e.last_timestamp.as_ref()))
        .or_else(|| first_seen(e))
}

/// How many times the event happened (1 for a singleton).
fn count(e: &Event) -> i32 {
    match e.series.as_ref().and_then(|s| s.count) {
        Some(n) => n,
        None => e.count.filter(|n| *n > 0).unwrap_or(1),
    }
}

/// Sorts events oldest first by when they were last seen, as kubectl does.
pub fn sort_events(events: &mut [Event]) {
    events.sort_by_key(last_seen);
}

/// Renders the `skiff get events` table (events should be sorted already).
pub fn events_table(events: &[Event], all_namespaces: bool, now: Timestamp) -> String {
    super::super::table::render(
        &super::super::table::events(events, now),
        all_namespaces,
        false,
    )
}

/// A message trimmed and kept on one line so it cannot break the table.
fn one_line(message: &str) -> String {
    message.trim().replace(['\n', '\t'], " ")
}

/// The Events section of describe output, tab-separated for the describe tabwriter:
/// `Events:  <none>` or a `Type Reason Age From Message` table.
pub fn describe_events(events: &[Event], now: Timestamp) -> String {
    if events.is_empty() {
        return "Events:\t<none>\n".to_owned();
    }
    let mut sorted = events.to_vec();
    sort_events(&mut sorted);
    let mut text = String::from("Events:\n  Type\tReason\tAge\tFrom\tMessage\n");
    text.push_str("  ----\t------\t----\t----\t-------\n");
    for e in &sorted {
        let first = age(first_seen(e), now);
        let n = count(e);
        let interval = if e.series.is_some() || n > 1 {
            format!("{} (x{n} over {first})", age(last_seen(e), now))
        } else {
            first
        };
        let from = e
            .source
            .as_ref()
            .and_then(|s| s.component.as_deref())
            .filter(|c| !c.is_empty())
            .or(e.reporting_component.as_deref())
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "  {}\t{}\t{}\t{}\t{}",
            e.type_.as_deref().unwrap_or_default(),
            e.reason.as_deref().unwrap_or_default(),
            interval,
            from,
            one_line(e.message.as_deref().unwrap_or_default()),
        );
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::cli::print::pods::tests::{ago, now};
    use crate::cli::tabwriter::{self, KUBECTL_DESCRIBE};

    pub(crate) fn event(
        reason: &str,
        type_: &str,
        count: i32,
        first: i64,
        last: i64,
        msg: &str,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!("web.{reason}")),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            type_: Some(type_.into()),
            count: Some(count),
            first_timestamp: Some(ago(first)),
            last_timestamp: Some(ago(last)),
            message: Some(msg.into()),
            source: Some(EventSource {
                component: Some("skiffd".into()),
                host: Some("node1".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn get_events_table() {
        let mut events = vec![
            event(
                "BackOff",
                "Warning",
                3,
                60,
                10,
                "Back-off restarting failed container app\n",
            ),
            event(
                "Pulled",
                "Normal",
                1,
                90,
                90,
                "Container image \"busybox\" already present",
            ),
        ];
        sort_events(&mut events);
        assert_eq!(
            events_table(&events, false, now()),
            "LAST SEEN   TYPE      REASON    OBJECT    MESSAGE\n\
             90s         Normal    Pulled    pod/web   Container image \"busybox\" already present\n\
             10s         Warning   BackOff   pod/web   Back-off restarting failed container app\n"
        );
    }

    #[test]
    fn describe_events_section() {
        assert_eq!(describe_events(&[], now()), "Events:\t<none>\n");
        let events = [
            event("BackOff", "Warning", 3, 60, 10, "Back-off restarting"),
            event("Started", "Normal", 1, 70, 70, "Started container app"),
        ];
        assert_eq!(
            tabwriter::align(&describe_events(&events, now()), KUBECTL_DESCRIBE),
            "Events:\n  \
             Type     Reason   Age                From    Message\n  \
             ----     ------   ----               ----    -------\n  \
             Normal   Started  70s                skiffd  Started container app\n  \
             Warning  BackOff  10s (x3 over 60s)  skiffd  Back-off restarting\n"
        );
    }
}
