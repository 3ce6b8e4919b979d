//! Workload kinds (issue 11): Deployments, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs (the batch kinds' checks are in [`super::batch`]), DaemonSets and their
//! ControllerRevisions ([`super::daemonset`]), checked and
//! defaulted as the apiserver does, whether they come from a manifest file or through the API.
//! They are kept as JSON (the form the store, the watch and the controllers use), after a
//! strict decode into the typed object has proved their shape.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::parse::{FieldValidation, ManifestError, decode};
use crate::selector::Selector;

/// A kind run by a controller in skiffd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    ReplicationController,
    HorizontalPodAutoscaler,
    Job,
    CronJob,
    DaemonSet,
    /// A DaemonSet's revisions (no controller of its own).
    ControllerRevision,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Deployment,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::HorizontalPodAutoscaler,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::DaemonSet,
        WorkloadKind::ControllerRevision,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ControllerRevision => "ControllerRevision",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::ReplicaSet => "replicasets",
            WorkloadKind::ReplicationController => "replicationcontrollers",
            WorkloadKind::HorizontalPodAutoscaler => "horizontalpodautoscalers",
            WorkloadKind::Job => "jobs",
            WorkloadKind::CronJob => "cronjobs",
            WorkloadKind::DaemonSet => "daemonsets",
            WorkloadKind::ControllerRevision => "controllerrevisions",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            WorkloadKind::ReplicationController => "v1",
            WorkloadKind::HorizontalPodAutoscaler => "autoscaling/v2",
            WorkloadKind::Job | WorkloadKind::CronJob => "batch/v1",
            _ => "apps/v1",
        }
    }

    /// Whether the kind has a `/scale` subresource (the HPA, the batch kinds, DaemonSets and
    /// ControllerRevisions have none).
    pub fn has_scale(self) -> bool {
        !matches!(
            self,
            WorkloadKind::HorizontalPodAutoscaler
                | WorkloadKind::Job
                | WorkloadKind::CronJob
                | WorkloadKind::DaemonSet
                | WorkloadKind::ControllerRevision
        )
    }

    /// Whether the kind has a `/status` subresource (a ControllerRevision has none).
    pub fn has_status(self) -> bool {
        self != WorkloadKind::ControllerRevision
    }

    pub fn from_name(kind: &str) -> Option<WorkloadKind> {
        Self::ALL.into_iter().find(|k| k.name() == kind)
    }

    pub fn from_plural(plural: &str) -> Option<WorkloadKind> {
        Self::ALL.into_iter().find(|k| k.plural() == plural)
    }
}

/// A checked workload object.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub value: Value,
}

impl Workload {
    pub fn meta(&self) -> (&str, &str) {
        let m = &self.value["metadata"];
        (
            m["namespace"].as_str().unwrap_or("default"),
            m["name"].as_str().unwrap_or_default(),
        )
    }
}

/// Strict decode, defaults and the apiserver's checks; `Err` is `field: reason`.
pub fn check(
    kind: WorkloadKind,
    mut v: Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Value, ManifestError> {
    let fail = |message: String| ManifestError {
        object: None,
        message,
    };
    let want = kind.api_version();
    let got = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if got != want {
        return Err(fail(format!(
            "apiVersion {got:?} is not served for {} (use {want:?})",
            kind.name()
        )));
    }
    if let Some(o) = v.as_object_mut() {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
    }
    // Decoding proves the shape (and finds unknown fields); the JSON is what is kept, with the
    // unknown fields dropped by the round trip.
    let value = match kind {
        WorkloadKind::Deployment => {
            let mut d: Deployment = decode(v, mode, warnings)?;
            default_deployment(&mut d);
            validate_meta(&d.metadata).map_err(fail)?;
            let spec = &d.spec;
            let sel = spec.selector.clone();
            check_selector(&sel, spec.template.metadata.as_ref(), "deployment").map_err(fail)?;
            check_replicas(spec.replicas).map_err(fail)?;
            check_template(&d.metadata, &spec.template).map_err(fail)?;
            if let Some(ru) = spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
            {
                crate::workloads::deployment::validate_rolling_update(
                    ru.max_surge.as_ref(),
                    ru.max_unavailable.as_ref(),
                )
                .map_err(fail)?;
            }
            let strategy = spec
                .strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                .unwrap_or("RollingUpdate");
            if !["RollingUpdate", "Recreate"].contains(&strategy) {
                return Err(fail(format!(
                    "spec.strategy.type: Unsupported value: {strategy:?}: supported values: \"Recreate\", \"RollingUpdate\""
                )));
            }
            if strategy == "Recreate"
                && spec
                    .strategy
                    .as_ref()
                    .is_some_and(|s| s.rolling_update.is_some())
            {
                return Err(fail(
                    "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'".into(),
                ));
            }
            for (field, n) in [
                ("spec.minReadySeconds", spec.min_ready_seconds),
                ("spec.revisionHistoryLimit", spec.revision_history_limit),
                (
                    "spec.progressDeadlineSeconds",
                    spec.progress_deadline_seconds,
                ),
            ] {
                if let Some(n) = n.filter(|n| *n < 0) {
                    return Err(fail(format!(
                        "{field}: Invalid value: {n}: must be greater than or equal to 0"
                    )));
                }
            }
            if let (Some(p), Some(m)) = (spec.progress_deadline_seconds, spec.min_ready_seconds)
                && p <= m
            {
                return Err(fail(format!(
                    "spec.progressDeadlineSeconds: Invalid value: {p}: must be greater than minReadySeconds"
                )));
            }
            serde_json::to_value(d)
        }
        WorkloadKind::ReplicaSet => {
            let mut rs: ReplicaSet = decode(v, mode, warnings)?;
            let spec = &mut rs.spec;
            spec.replicas.get_or_insert(1);
            spec.min_ready_seconds.get_or_insert(0);
            validate_meta(&rs.metadata).map_err(fail)?;
            let spec = &rs.spec;
            let template = spec
                .template
                .as_ref()
                .ok_or_else(|| fail("spec.template: Required value".into()))?;
            check_selector(&spec.selector, template.metadata.as_ref(), "replicaset")
                .map_err(fail)?;
            check_replicas(spec.replicas).map_err(fail)?;
            check_template(&rs.metadata, template).map_err(fail)?;
            serde_json::to_value(rs)
        }
        WorkloadKind::ReplicationController => {
            let mut rc: ReplicationController = decode(v, mode, warnings)?;
            let spec = rc
                .spec
                .as_mut()
                .ok_or_else(|| fail("spec: Required value".into()))?;
            spec.replicas.get_or_insert(1);
            spec.min_ready_seconds.get_or_insert(0);
            // An RC's selector defaults to its template's labels, and its labels to those.
            let template_labels = spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
                spec.selector = Some(template_labels.clone());
            }
            if rc.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
                rc.metadata.labels = Some(template_labels.clone());
            }
            validate_meta(&rc.metadata).map_err(fail)?;
            let spec = rc.spec.as_ref().expect("checked above");
            let template = spec
                .template
                .as_ref()
                .ok_or_else(|| fail("spec.template: Required value".into()))?;
            let selector = spec.selector.clone().unwrap_or_default();
            if selector.is_empty() {
                return Err(fail("spec.selector: Required value".into()));
            }
            let labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return Err(fail(format!(
                    "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
                    go_map(&labels)
                )));
            }
            check_replicas(spec.replicas).map_err(fail)?;
            check_template(&rc.metadata, template).map_err(fail)?;
            serde_json::to_value(rc)
        }
        WorkloadKind::HorizontalPodAutoscaler => {
            let mut h: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
                decode(v, mode, warnings)?;
            validate_meta(&h.metadata).map_err(fail)?;
            crate::workloads::hpa::defaults(&mut h);
            if let Some(first) = crate::workloads::hpa::validate(&h).into_iter().next() {
                return Err(fail(first));
            }
            serde_json::to_value(h)
        }
        WorkloadKind::Job => serde_json::to_value(super::batch::check_job(v, mode, warnings)?),
        WorkloadKind::CronJob => {
            serde_json::to_value(super::batch::check_cronjob(v, mode, warnings)?)
        }
        WorkloadKind::DaemonSet => {
            serde_json::to_value(super::daemonset::check_daemonset(v, mode, warnings)?)
        }
        WorkloadKind::ControllerRevision => serde_json::to_value(
            super::daemonset::check_controller_revision(v, mode, warnings)?,
        ),
    };
    let mut value = value.map_err(|e| fail(e.to_string()))?;
    // What the apiserver never keeps from a client.
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
    }
    Ok(value)
}

fn default_deployment(d: &mut Deployment) {
    let spec = &mut d.spec;
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(Default::default);
    let t = strategy
        .type_
        .get_or_insert_with(|| "RollingUpdate".into())
        .clone();
    if t == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
}

pub(super) fn validate_meta(m: &ObjectMeta) -> Result<(), String> {
    let name = m.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name: Required value: name or generateName is required".into());
    }
    super::validate::check_dns1123_subdomain(name)
        .map_err(|e| format!("metadata.name: Invalid value: {name:?}: {e}"))?;
    if let Some(ns) = m.namespace.as_deref() {
        super::validate::check_dns1123_label(ns)
            .map_err(|e| format!("metadata.namespace: Invalid value: {ns:?}: {e}"))?;
    }
    Ok(())
}

fn check_replicas(replicas: Option<i32>) -> Result<(), String> {
    match replicas {
        Some(n) if n < 0 => Err(format!(
            "spec.replicas: Invalid value: {n}: must be greater than or equal to 0"
        )),
        _ => Ok(()),
    }
}

/// Go's `%#v` of a label map, as the apiserver prints it in this message.
fn go_map(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

pub(super) fn check_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    template: Option<&ObjectMeta>,
    what: &str,
) -> Result<(), String> {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if empty {
        return Err(format!(
            "spec.selector: Invalid value: \"null\": empty selector is invalid for {what}"
        ));
    }
    let sel = Selector::from_label_selector(selector)
        .map_err(|e| format!("spec.selector: Invalid value: {e}"))?;
    let labels = template.and_then(|m| m.labels.clone()).unwrap_or_default();
    if !sel.matches(&labels) {
        return Err(format!(
            "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
            go_map(&labels)
        ));
    }
    Ok(())
}

/// The template must make a valid pod (checked as one, errors under `spec.template`).
pub(super) fn check_template(owner: &ObjectMeta, t: &PodTemplateSpec) -> Result<(), String> {
    let mut meta = t.metadata.clone().unwrap_or_default();
    meta.name = Some(format!(
        "{}-check",
        owner.name.as_deref().unwrap_or("template")
    ));
    meta.namespace = owner.namespace.clone();
    let pod = Pod {
        metadata: meta,
        spec: t.spec.clone(),
        ..Default::default()
    };
    let checked = super::validate::validate_pod(pod).map_err(|e| {
        if let Some(rest) = e.strip_prefix("spec") {
            format!("spec.template.spec{rest}")
        } else {
            format!("spec.template.{e}")
        }
    })?;
    let policy = checked
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    if policy != "Always" {
        return Err(format!(
            "spec.template.spec.restartPolicy: Unsupported value: {policy:?}: supported values: \"Always\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                },
            },
        });
        json_patch::merge(&mut d, &extra);
        d
    }

    fn run(kind: WorkloadKind, v: Value) -> Result<Value, String> {
        check(kind, v, FieldValidation::Strict, &mut Vec::new()).map_err(|e| e.message)
    }

    #[test]
    fn deployments_get_the_apiservers_defaults() {
        let d = run(WorkloadKind::Deployment, deployment(json!({}))).unwrap();
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            "25%"
        );
        // The template is kept as given (the hash of it names the ReplicaSets).
        assert!(d["spec"]["template"]["spec"]["restartPolicy"].is_null());
    }

    #[test]
    fn bad_workloads_get_the_apiservers_messages() {
        let cases: &[(WorkloadKind, Value, &str)] = &[
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}})),
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"replicas": -1}})),
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                WorkloadKind::Deployment,
                deployment(
                    json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}}),
                ),
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"selector": {"matchLabels": null}}})),
                "spec.selector: Invalid value: \"null\": empty selector is invalid for deployment",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}})),
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"template": {"spec": {"containers": []}}}})),
                "spec.template.spec.containers: Required value",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"apiVersion": "extensions/v1beta1"})),
                "apiVersion \"extensions/v1beta1\" is not served for Deployment (use \"apps/v1\")",
            ),
            (
                WorkloadKind::Deployment,
                deployment(json!({"spec": {"replica": 3}})),
                "unknown field \"spec.replica\"",
            ),
        ];
        for (kind, v, want) in cases {
            assert_eq!(run(*kind, v.clone()).unwrap_err(), *want, "{v}");
        }
    }

    #[test]
    fn a_replication_controller_defaults_its_selector_to_the_template_labels() {
        let rc = json!({
            "apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": "rc"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }},
        });
        let v = run(WorkloadKind::ReplicationController, rc.clone()).unwrap();
        assert_eq!(v["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(v["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(v["spec"]["replicas"], 1);
        let mut bad = rc;
        bad["spec"]["selector"] = json!({"app": "y"});
        assert!(
            run(WorkloadKind::ReplicationController, bad)
                .unwrap_err()
                .contains("`selector` does not match template `labels`")
        );
    }
}
