//! DaemonSets and ControllerRevisions (apps/v1, issue 11) checked as the apiserver checks them,
//! from a manifest file or through the API: strict decode, the apiserver's defaults
//! (`RollingUpdate` with `maxUnavailable: 1` and `maxSurge: 0`, `revisionHistoryLimit: 10`)
//! and its validation messages; the pod template is checked as a pod.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::parse::{FieldValidation, ManifestError, decode};
use super::workload::{check_selector, check_template, validate_meta};
/// Moved into [`crate::kube::workload`] (the store sets it on manifest DaemonSets); the old
/// paths stay for existing imports.
pub use crate::kube::workload::{TEMPLATE_GENERATION, set_template_generation};

fn fail(message: String) -> ManifestError {
    ManifestError {
        object: None,
        message,
    }
}

/// The apiserver's `SetDefaults_DaemonSet`.
fn defaults(ds: &mut DaemonSet) {
    let spec = &mut ds.spec;
    spec.revision_history_limit.get_or_insert(10);
    let strategy = spec.update_strategy.get_or_insert_with(Default::default);
    let t = strategy
        .type_
        .get_or_insert_with(|| "RollingUpdate".into())
        .clone();
    if t == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
}

/// A DaemonSet, defaulted and validated.
pub fn check_daemonset(
    v: serde_json::Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<DaemonSet, ManifestError> {
    let mut ds: DaemonSet = decode(v, mode, warnings)?;
    defaults(&mut ds);
    validate_meta(&ds.metadata).map_err(fail)?;
    let spec = &ds.spec;
    check_selector(&spec.selector, spec.template.metadata.as_ref(), "daemonset").map_err(fail)?;
    check_template(&ds.metadata, &spec.template).map_err(fail)?;
    for (field, n) in [
        ("spec.minReadySeconds", spec.min_ready_seconds),
        ("spec.revisionHistoryLimit", spec.revision_history_limit),
    ] {
        if let Some(n) = n.filter(|n| *n < 0) {
            return Err(fail(format!(
                "{field}: Invalid value: {n}: must be greater than or equal to 0"
            )));
        }
    }
    let strategy = serde_json::to_value(&spec.update_strategy).unwrap_or_default();
    crate::workloads::daemonset::validate_strategy(&strategy).map_err(fail)?;
    if strategy["type"] == "OnDelete" && !strategy["rollingUpdate"].is_null() {
        return Err(fail(
            "spec.updateStrategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'OnDelete'".into(),
        ));
    }
    Ok(ds)
}

/// A ControllerRevision (made by the DaemonSet controller, or by a client).
pub fn check_controller_revision(
    v: serde_json::Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<ControllerRevision, ManifestError> {
    let cr: ControllerRevision = decode(v, mode, warnings)?;
    validate_meta(&cr.metadata).map_err(fail)?;
    if let Some(n) = cr.revision.filter(|n| *n < 0) {
        return Err(fail(format!(
            "revision: Invalid value: {n}: must be greater than or equal to 0"
        )));
    }
    Ok(cr)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::manifest::workload::{WorkloadKind, check};

    fn ds(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
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
    fn a_daemonset_gets_the_apiservers_defaults() {
        let d = run(WorkloadKind::DaemonSet, ds(json!({}))).unwrap();
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert!(d["status"].is_null());
        let o = run(
            WorkloadKind::DaemonSet,
            ds(json!({"spec": {"updateStrategy": {"type": "OnDelete"}}})),
        )
        .unwrap();
        assert_eq!(o["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    }

    #[test]
    fn bad_daemonsets_get_the_apiservers_messages() {
        let cases: &[(Value, &str)] = &[
            (
                ds(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}})),
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"agent\"}: `selector` does not match template `labels`",
            ),
            (
                ds(json!({"spec": {"selector": {"matchLabels": null}}})),
                "spec.selector: Invalid value: \"null\": empty selector is invalid for daemonset",
            ),
            (
                ds(json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}})),
                "spec.template.spec.restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
            ),
            (
                ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}}),
                ),
                "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
            ),
            (
                ds(json!({"spec": {"updateStrategy": {"type": "Sometimes"}}})),
                "spec.updateStrategy: Unsupported value: \"Sometimes\": supported values: \"OnDelete\", \"RollingUpdate\"",
            ),
            (
                ds(json!({"spec": {"minReadySeconds": -1}})),
                "spec.minReadySeconds: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                ds(json!({"spec": {"template": {"spec": {"containers": []}}}})),
                "spec.template.spec.containers: Required value",
            ),
            (
                ds(json!({"spec": {"updateStratgy": {}}})),
                "unknown field \"spec.updateStratgy\"",
            ),
            (
                ds(json!({"apiVersion": "extensions/v1beta1"})),
                "apiVersion \"extensions/v1beta1\" is not served for DaemonSet (use \"apps/v1\")",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                run(WorkloadKind::DaemonSet, v.clone()).unwrap_err(),
                *want,
                "{v}"
            );
        }
    }

    #[test]
    fn the_template_generation_counts_template_changes() {
        let mut d = ds(json!({}));
        set_template_generation(None, &mut d);
        assert_eq!(d["metadata"]["annotations"][TEMPLATE_GENERATION], "1");
        let mut same = d.clone();
        same["spec"]["minReadySeconds"] = 5.into();
        same["metadata"]["annotations"][TEMPLATE_GENERATION] = "9".into();
        set_template_generation(Some(&d), &mut same);
        assert_eq!(same["metadata"]["annotations"][TEMPLATE_GENERATION], "1");
        let mut changed = same.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = "other".into();
        set_template_generation(Some(&same), &mut changed);
        assert_eq!(changed["metadata"]["annotations"][TEMPLATE_GENERATION], "2");
    }

    #[test]
    fn controller_revisions_are_checked() {
        let cr = json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": "agent-abc"}, "revision": 2,
            "data": {"spec": {"template": {"$patch": "replace"}}},
        });
        let v = run(WorkloadKind::ControllerRevision, cr.clone()).unwrap();
        assert_eq!(v["revision"], 2);
        assert_eq!(v["data"]["spec"]["template"]["$patch"], "replace");
        let mut bad = cr;
        bad["revision"] = json!(-1);
        assert_eq!(
            run(WorkloadKind::ControllerRevision, bad).unwrap_err(),
            "revision: Invalid value: -1: must be greater than or equal to 0"
        );
    }
}
