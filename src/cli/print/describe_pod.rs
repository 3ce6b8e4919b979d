//! `skiff describe pod`: kubectl's `describePod` layout.
//!
//! The text is built tab-separated with kubectl's indent levels and aligned at the end with
//! the describe tabwriter, so consecutive `Key:\tvalue` lines line up the way kubectl's do.

use std::collections::BTreeMap;
use std::fmt::Write;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, EnvVar, Event, Pod, ResourceRequirements,
    Toleration, Volume,
};

use super::ts;
use crate::cli::humanize::rfc1123z_in;
use crate::cli::print::events::describe_events;
use crate::cli::tabwriter::{self, KUBECTL_DESCRIBE};

const L1: &str = "  ";
const L2: &str = "    ";
const L3: &str = "      ";

/// Renders `kubectl describe pod`-style text for `pod` and its `events`.
pub fn describe_pod(pod: &Pod, events: &[Event], now: Timestamp, tz: &TimeZone) -> String {
    let mut w = String::new();
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let time = |t: Timestamp| rfc1123z_in(t, tz);

    let _ = writeln!(w, "Name:\t{}", meta.name.as_deref().unwrap_or_default());
    let _ = writeln!(
        w,
        "Namespace:\t{}",
        meta.namespace.as_deref().unwrap_or_default()
    );
    if let Some(p) = spec.priority {
        let _ = writeln!(w, "Priority:\t{p}");
    }
    if let Some(p) = spec
        .priority_class_name
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let _ = writeln!(w, "Priority Class Name:\t{p}");
    }
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let _ = writeln!(w, "Service Account:\t{sa}");
    }
    match spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        Some(node) => {
            let _ = writeln!(
                w,
                "Node:\t{node}/{}",
                status.host_ip.as_deref().unwrap_or_default()
            );
        }
        None => w.push_str("Node:\t<none>\n"),
    }
    if let Some(t) = ts(status.start_time.as_ref()) {
        let _ = writeln!(w, "Start Time:\t{}", time(t));
    }
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "Annotations", meta.annotations.as_ref());
    match ts(meta.deletion_timestamp.as_ref()) {
        Some(t) => {
            let left = crate::cli::humanize::kube_duration(t.duration_since(now));
            let _ = writeln!(w, "Status:\tTerminating (lasts {left})");
            if let Some(g) = meta.deletion_grace_period_seconds {
                let _ = writeln!(w, "Termination Grace Period:\t{g}s");
            }
        }
        None => {
            let _ = writeln!(
                w,
                "Status:\t{}",
                status.phase.as_deref().unwrap_or_default()
            );
        }
    }
    if let Some(r) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = writeln!(w, "Reason:\t{r}");
    }
    if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
        let _ = writeln!(w, "Message:\t{m}");
    }
    let _ = writeln!(w, "IP:\t{}", status.pod_ip.as_deref().unwrap_or_default());
    match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => {
            w.push_str("IPs:\n");
            for ip in ips {
                let _ = writeln!(w, "{L1}IP:\t{}", ip.ip);
            }
        }
        _ => w.push_str("IPs:\t<none>\n"),
    }
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        let _ = writeln!(w, "Controlled By:\t{}/{}", owner.kind, owner.name);
    }

    let ctx = EnvContext { pod };
    if let Some(init) = spec.init_containers.as_deref().filter(|c| !c.is_empty()) {
        let statuses = status
            .init_container_statuses
            .as_deref()
            .unwrap_or_default();
        describe_containers(&mut w, "Init Containers", init, statuses, &ctx, &time);
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    describe_containers(
        &mut w,
        "Containers",
        &spec.containers,
        statuses,
        &ctx,
        &time,
    );

    if let Some(conds) = status.conditions.as_deref().filter(|c| !c.is_empty()) {
        w.push_str("Conditions:\n  Type\tStatus\n");
        for c in conds {
            let _ = writeln!(w, "{L1}{} \t{} ", c.type_, c.status);
        }
    }
    describe_volumes(&mut w, spec.volumes.as_deref().unwrap_or_default());
    let qos = status
        .qos_class
        .clone()
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| qos_class(&spec.containers));
    let _ = writeln!(w, "QoS Class:\t{qos}");
    labels_multiline(&mut w, "", "Node-Selectors", spec.node_selector.as_ref());
    tolerations_multiline(&mut w, spec.tolerations.as_deref().unwrap_or_default());
    w.push_str(&describe_events(events, now));
    tabwriter::align(&w, KUBECTL_DESCRIBE)
}

/// Writes `Title:\tk=v` lines, one label per line, sorted; `<none>` when empty.
pub(crate) fn labels_multiline(
    w: &mut String,
    indent: &str,
    title: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    let _ = write!(w, "{indent}{title}:\t");
    match labels.filter(|l| !l.is_empty()) {
        None => w.push_str("<none>\n"),
        Some(labels) => {
            for (i, (k, v)) in labels.iter().enumerate() {
                if i != 0 {
                    let _ = write!(w, "{indent}\t");
                }
                let _ = writeln!(w, "{k}={v}");
            }
        }
    }
}

/// Writes `Title:\tk: v` lines for annotations; multi-line values are folded onto one line.
pub(crate) fn annotations_multiline(
    w: &mut String,
    title: &str,
    annotations: Option<&BTreeMap<String, String>>,
) {
    let _ = write!(w, "{title}:\t");
    match annotations.filter(|a| !a.is_empty()) {
        None => w.push_str("<none>\n"),
        Some(annotations) => {
            for (i, (k, v)) in annotations.iter().enumerate() {
                if i != 0 {
                    w.push('\t');
                }
                let v = v.trim().replace('\n', " ");
                let _ = writeln!(w, "{k}: {v}");
            }
        }
    }
}

/// Resolves `valueFrom.fieldRef` environment values that are known from the pod itself.
struct EnvContext<'a> {
    pod: &'a Pod,
}

impl EnvContext<'_> {
    fn field(&self, path: &str) -> String {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let status = self.pod.status.as_ref();
        let v = match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
            "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
            _ => None,
        };
        v.unwrap_or_default()
    }
}

fn describe_containers(
    w: &mut String,
    label: &str,
    containers: &[Container],
    statuses: &[ContainerStatus],
    ctx: &EnvContext<'_>,
    time: &dyn Fn(Timestamp) -> String,
) {
    let _ = writeln!(w, "{label}:");
    for c in containers {
        let status = statuses.iter().find(|s| s.name == c.name);
        let _ = writeln!(w, "{L1}{}:", c.name);
        if let Some(s) = status {
            let _ = writeln!(
                w,
                "{L2}Container ID:\t{}",
                s.container_id.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(w, "{L2}Image:\t{}", c.image.as_deref().unwrap_or_default());
        if let Some(s) = status {
            let _ = writeln!(w, "{L2}Image ID:\t{}", s.image_id);
        }
        let ports = c.ports.as_deref().unwrap_or_default();
        let port_list = |host: bool| {
            ports
                .iter()
                .filter_map(|p| {
                    let n = if host { p.host_port? } else { p.container_port };
                    Some(format!("{n}/{}", p.protocol.as_deref().unwrap_or("TCP")))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (title, list) in [("Port", port_list(false)), ("Host Port", port_list(true))] {
            let title = if list.contains(',') {
                format!("{title}s")
            } else {
                title.to_owned()
            };
            let list = if list.is_empty() {
                "<none>".to_owned()
            } else {
                list
            };
            let _ = writeln!(w, "{L2}{title}:\t{list}");
        }
        for (title, items) in [("Command", &c.command), ("Args", &c.args)] {
            if let Some(items) = items.as_deref().filter(|i| !i.is_empty()) {
                let _ = writeln!(w, "{L2}{title}:");
                for line in items.iter().flat_map(|i| i.split('\n')) {
                    let _ = writeln!(w, "{L3}{line}");
                }
            }
        }
        if let Some(s) = status {
            describe_state(w, "State", s.state.as_ref(), time);
            if let Some(last) = s.last_state.as_ref().filter(|l| l.terminated.is_some()) {
                describe_state(w, "Last State", Some(last), time);
            }
            let _ = writeln!(w, "{L2}Ready:\t{}", if s.ready { "True" } else { "False" });
            let _ = writeln!(w, "{L2}Restart Count:\t{}", s.restart_count);
        }
        describe_resources(w, c.resources.as_ref());
        describe_env(w, c.env.as_deref().unwrap_or_default(), ctx);
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if mounts.is_empty() {
            let _ = writeln!(w, "{L2}Mounts:\t<none>");
        } else {
            let _ = writeln!(w, "{L2}Mounts:");
            let mut mounts = mounts.to_vec();
            mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
            for m in mounts {
                let mut flags = vec![if m.read_only == Some(true) {
                    "ro".to_owned()
                } else {
                    "rw".to_owned()
                }];
                if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    flags.push(format!("path={sub:?}"));
                }
                let _ = writeln!(
                    w,
                    "{L3}{} from {} ({})",
                    m.mount_path,
                    m.name,
                    flags.join(",")
                );
            }
        }
    }
}

fn describe_state(
    w: &mut String,
    name: &str,
    state: Option<&ContainerState>,
    time: &dyn Fn(Timestamp) -> String,
) {
    let fmt_time = |t: Option<Timestamp>| t.map(time).unwrap_or_default();
    let state = state.cloned().unwrap_or_default();
    if let Some(r) = state.running {
        let _ = writeln!(w, "{L2}{name}:\tRunning");
        let _ = writeln!(w, "{L3}Started:\t{}", fmt_time(ts(r.started_at.as_ref())));
    } else if let Some(t) = state.terminated {
        let _ = writeln!(w, "{L2}{name}:\tTerminated");
        if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
            let _ = writeln!(w, "{L3}Reason:\t{r}");
        }
        if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
            let _ = writeln!(w, "{L3}Message:\t{}", m.trim().replace('\n', " "));
        }
        let _ = writeln!(w, "{L3}Exit Code:\t{}", t.exit_code);
        if let Some(sig) = t.signal.filter(|s| *s > 0) {
            let _ = writeln!(w, "{L3}Signal:\t{sig}");
        }
        let _ = writeln!(w, "{L3}Started:\t{}", fmt_time(ts(t.started_at.as_ref())));
        let _ = writeln!(w, "{L3}Finished:\t{}", fmt_time(ts(t.finished_at.as_ref())));
    } else {
        let _ = writeln!(w, "{L2}{name}:\tWaiting");
        if let Some(r) = state
            .waiting
            .and_then(|wt| wt.reason)
            .filter(|r| !r.is_empty())
        {
            let _ = writeln!(w, "{L3}Reason:\t{r}");
        }
    }
}

fn describe_resources(w: &mut String, resources: Option<&ResourceRequirements>) {
    let Some(res) = resources else { return };
    for (title, list) in [("Limits", &res.limits), ("Requests", &res.requests)] {
        if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
            let _ = writeln!(w, "{L2}{title}:");
            for (name, q) in list {
                let _ = writeln!(w, "{L3}{name}:\t{}", q.0);
            }
        }
    }
}

fn describe_env(w: &mut String, env: &[EnvVar], ctx: &EnvContext<'_>) {
    if env.is_empty() {
        let _ = writeln!(w, "{L2}Environment:\t<none>");
        return;
    }
    let _ = writeln!(w, "{L2}Environment:");
    for e in env {
        let Some(from) = e.value_from.as_ref() else {
            for (i, line) in e
                .value
                .as_deref()
                .unwrap_or_default()
                .split('\n')
                .enumerate()
            {
                if i == 0 {
                    let _ = writeln!(w, "{L3}{}:\t{line}", e.name);
                } else {
                    let _ = writeln!(w, "{L3}\t{line}");
                }
            }
            continue;
        };
        if let Some(f) = &from.field_ref {
            let api = f.api_version.as_deref().unwrap_or("v1");
            let value = ctx.field(&f.field_path);
            let _ = writeln!(w, "{L3}{}:\t{value} ({api}:{})", e.name, f.field_path);
        } else if let Some(r) = &from.resource_field_ref {
            let _ = writeln!(
                w,
                "{L3}{}:\t{} ({})",
                e.name,
                r.container_name.as_deref().unwrap_or_default(),
                r.resource
            );
        } else if let Some(s) = &from.secret_key_ref {
            let _ = writeln!(
                w,
                "{L3}{}:\t<set to the key '{}' in secret '{}'>\tOptional: {}",
                e.name,
                s.key,
                s.name,
                s.optional.unwrap_or(false)
            );
        } else if let Some(c) = &from.config_map_key_ref {
            let _ = writeln!(
                w,
                "{L3}{}:\t<set to the key '{}' of config map '{}'>\tOptional: {}",
                e.name,
                c.key,
                c.name,
                c.optional.unwrap_or(false)
            );
        } else {
            let _ = writeln!(w, "{L3}{}:\t<unknown source>", e.name);
        }
    }
}

fn describe_volumes(w: &mut String, volumes: &[Volume]) {
    if volumes.is_empty() {
        w.push_str("Volumes:\t<none>\n");
        return;
    }
    w.push_str("Volumes:\n");
    for v in volumes {
        let _ = writeln!(w, "{L1}{}:", v.name);
        if let Some(h) = &v.host_path {
            let _ = writeln!(w, "{L2}Type:\tHostPath (bare host directory volume)");
            let _ = writeln!(w, "{L2}Path:\t{}", h.path);
            let _ = writeln!(
                w,
                "{L2}HostPathType:\t{}",
                h.type_.as_deref().unwrap_or_default()
            );
        } else if let Some(e) = &v.empty_dir {
            let _ = writeln!(
                w,
                "{L2}Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)"
            );
            let _ = writeln!(
                w,
                "{L2}Medium:\t{}",
                e.medium.as_deref().unwrap_or_default()
            );
            let limit = e.size_limit.as_ref().map_or("<unset>", |q| q.0.as_str());
            let _ = writeln!(w, "{L2}SizeLimit:\t{limit}");
        } else if let Some(c) = &v.config_map {
            let _ = writeln!(
                w,
                "{L2}Type:\tConfigMap (a volume populated by a ConfigMap)"
            );
            let _ = writeln!(w, "{L2}Name:\t{}", c.name);
            let _ = writeln!(w, "{L2}Optional:\t{}", c.optional.unwrap_or(false));
        } else if let Some(s) = &v.secret {
            let _ = writeln!(w, "{L2}Type:\tSecret (a volume populated by a Secret)");
            let _ = writeln!(
                w,
                "{L2}SecretName:\t{}",
                s.secret_name.as_deref().unwrap_or_default()
            );
            let _ = writeln!(w, "{L2}Optional:\t{}", s.optional.unwrap_or(false));
        } else if v.projected.is_some() {
            let _ = writeln!(
                w,
                "{L2}Type:\tProjected (a volume that contains injected data from multiple sources)"
            );
        } else {
            let _ = writeln!(w, "{L2}<unknown>");
        }
    }
}

fn tolerations_multiline(w: &mut String, tolerations: &[Toleration]) {
    w.push_str("Tolerations:\t");
    if tolerations.is_empty() {
        w.push_str("<none>\n");
        return;
    }
    for (i, t) in tolerations.iter().enumerate() {
        if i != 0 {
            w.push('\t');
        }
        w.push_str(t.key.as_deref().unwrap_or_default());
        if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
            let _ = write!(w, "={v}");
        }
        if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
            let _ = write!(w, ":{e}");
        }
        if t.operator.as_deref() == Some("Exists")
            && t.value.as_deref().unwrap_or_default().is_empty()
        {
            w.push_str(" op=Exists");
        }
        if let Some(s) = t.toleration_seconds {
            let _ = write!(w, " for {s}s");
        }
        w.push('\n');
    }
}

/// The pod's QoS class from its containers' cpu/memory requests and limits (a
/// simplification of kubelet's `GetPodQOS`, used only when status.qosClass is unset).
pub fn qos_class(containers: &[Container]) -> String {
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let res = c.resources.clone().unwrap_or_default();
        let limits = res.limits.unwrap_or_default();
        // Requests default to limits when only limits are given.
        let requests = res.requests.unwrap_or_else(|| limits.clone());
        for name in ["cpu", "memory"] {
            let (req, lim) = (requests.get(name), limits.get(name));
            any |= req.is_some() || lim.is_some();
            if lim.is_none() || req.map(|q| &q.0) != lim.map(|q| &q.0) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PodCondition, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::cli::print::events::tests::event;
    use crate::cli::print::pods::tests::{ago, now, pod, running, terminated, waiting};

    fn sample() -> Pod {
        let mut app = waiting("app", "CrashLoopBackOff", 4);
        app.container_id = Some("skiff://0123abcd".into());
        app.image = "docker.io/library/busybox:latest".into();
        app.image_id = "sha256:aaaa".into();
        app.last_state = terminated("app", 1, Some("Error")).state;
        let mut init = terminated("setup", 0, Some("Completed"));
        init.image_id = "sha256:bbbb".into();
        let mut p = pod(
            "web",
            &["app"],
            &["setup"],
            "Running",
            vec![app],
            vec![init],
        );
        p.metadata.labels = Some(BTreeMap::from([
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]));
        let spec = p.spec.as_mut().expect("spec");
        spec.containers[0].command = Some(vec!["sh".into(), "-c".into()]);
        spec.containers[0].args = Some(vec!["echo hi; exit 1".into()]);
        spec.containers[0].env = Some(vec![
            EnvVar {
                name: "MODE".into(),
                value: Some("prod".into()),
                value_from: None,
            },
            EnvVar {
                name: "POD_NAME".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.name".into(),
                    }),
                    ..Default::default()
                }),
            },
        ]);
        spec.containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            read_only: Some(true),
            ..Default::default()
        }]);
        spec.volumes = Some(vec![Volume {
            name: "data".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/srv/data".into(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        }]);
        let status = p.status.as_mut().expect("status");
        status.host_ip = Some("192.168.1.10".into());
        status.start_time = Some(ago(600));
        status.conditions = Some(vec![
            PodCondition {
                type_: "Initialized".into(),
                status: "True".into(),
                ..Default::default()
            },
            PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                ..Default::default()
            },
        ]);
        p
    }

    #[test]
    fn full_describe() {
        let events = [event(
            "BackOff",
            "Warning",
            3,
            60,
            10,
            "Back-off restarting failed container",
        )];
        let text = describe_pod(&sample(), &events, now(), &TimeZone::UTC);
        let expected = "\
Name:         web
Namespace:    default
Node:         node1/192.168.1.10
Start Time:   Wed, 01 May 2024 11:50:00 +0000
Labels:       app=web
              tier=front
Annotations:  <none>
Status:       Running
IP:           10.88.0.5
IPs:
  IP:  10.88.0.5
Init Containers:
  setup:
    Container ID:   
    Image:          busybox
    Image ID:       sha256:bbbb
    Port:           <none>
    Host Port:      <none>
    State:          Terminated
      Reason:       Completed
      Exit Code:    0
      Started:      Wed, 01 May 2024 11:58:00 +0000
      Finished:     Wed, 01 May 2024 11:59:30 +0000
    Ready:          False
    Restart Count:  0
    Environment:    <none>
    Mounts:         <none>
Containers:
  app:
    Container ID:  skiff://0123abcd
    Image:         busybox
    Image ID:      sha256:aaaa
    Port:          <none>
    Host Port:     <none>
    Command:
      sh
      -c
    Args:
      echo hi; exit 1
    State:          Waiting
      Reason:       CrashLoopBackOff
    Last State:     Terminated
      Reason:       Error
      Exit Code:    1
      Started:      Wed, 01 May 2024 11:58:00 +0000
      Finished:     Wed, 01 May 2024 11:59:30 +0000
    Ready:          False
    Restart Count:  4
    Environment:
      MODE:      prod
      POD_NAME:  web (v1:metadata.name)
    Mounts:
      /data from data (ro)
Conditions:
  Type          Status
  Initialized   True 
  Ready         False 
Volumes:
  data:
    Type:          HostPath (bare host directory volume)
    Path:          /srv/data
    HostPathType:  Directory
QoS Class:         BestEffort
Node-Selectors:    <none>
Tolerations:       <none>
Events:
  Type     Reason   Age                From    Message
  ----     ------   ----               ----    -------
  Warning  BackOff  10s (x3 over 60s)  skiffd  Back-off restarting failed container
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn terminating_pod_and_qos() {
        let mut p = pod(
            "web",
            &["app"],
            &[],
            "Running",
            vec![running("app", true, 0)],
            vec![],
        );
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            now() + jiff::SignedDuration::from_secs(25),
        ));
        p.metadata.deletion_grace_period_seconds = Some(30);
        let text = describe_pod(&p, &[], now(), &TimeZone::UTC);
        assert!(
            text.contains("Status:                    Terminating (lasts 25s)\n"),
            "{text}"
        );
        assert!(text.contains("Termination Grace Period:  30s\n"), "{text}");
        assert!(
            text.ends_with("Tolerations:        <none>\nEvents:             <none>\n"),
            "{text}"
        );

        let q = |cpu_req: &str, cpu_lim: Option<&str>| {
            let c = Container {
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_owned(), Quantity(cpu_req.into())),
                        ("memory".to_owned(), Quantity("64Mi".into())),
                    ])),
                    limits: cpu_lim.map(|l| {
                        BTreeMap::from([
                            ("cpu".to_owned(), Quantity(l.into())),
                            ("memory".to_owned(), Quantity("64Mi".into())),
                        ])
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            qos_class(&[c])
        };
        assert_eq!(q("100m", Some("100m")), "Guaranteed");
        assert_eq!(q("100m", Some("200m")), "Burstable");
        assert_eq!(q("100m", None), "Burstable");
        assert_eq!(qos_class(&[Container::default()]), "BestEffort");
    }
}
