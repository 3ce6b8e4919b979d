//! Jobs and CronJobs (batch/v1, issue 11) checked as the apiserver checks them, from a manifest
//! file or through the API: strict decode, the apiserver's defaults, the generated selector
//! (a Job's pods are selected by its UID), the batch validation of [`crate::controller::job`]
//! and [`crate::controller::cronjob`] in their words, and the pod template checked as a pod.
//!
//! A Job from the manifest directory gets its UID from the store, after this check: its
//! selector is generated there ([`with_identity`]); the check validates it with a stand-in.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::parse::{FieldValidation, ManifestError, decode};
use super::workload::validate_meta;
/// Moved into [`crate::kube::workload`]; the old path stays for existing imports.
pub use crate::kube::workload::with_identity;
use crate::workloads::{cronjob, job};

/// The UID a Job without one yet is validated with (the selector it generates is dropped).
const STAND_IN_UID: &str = "00000000-0000-0000-0000-000000000000";

fn fail(message: String) -> ManifestError {
    ManifestError {
        object: None,
        message,
    }
}

/// The apiserver's `field.ErrorList` as one message: the error, or `[a, b]` for several.
fn one_message(errs: Vec<String>) -> Result<(), ManifestError> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(fail(errs.into_iter().next().unwrap_or_default())),
        _ => Err(fail(format!("[{}]", errs.join(", ")))),
    }
}

/// A Job, defaulted, with its generated selector when it has a UID.
pub fn check_job(
    v: Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Job, ManifestError> {
    let mut j: Job = decode(v, mode, warnings)?;
    job::defaults(&mut j);
    validate_meta(&j.metadata).map_err(fail)?;
    let has_uid = j.metadata.uid.as_deref().is_some_and(|u| !u.is_empty());
    let mut checked = j.clone();
    if !has_uid {
        checked.metadata.uid = Some(STAND_IN_UID.into());
    }
    job::generate_selector(&mut checked);
    one_message(job::validate(&checked))?;
    let spec = checked.spec.clone().unwrap_or_default();
    check_pod_template(&j.metadata, &spec.template, "spec.template").map_err(fail)?;
    Ok(if has_uid { checked } else { j })
}

/// A CronJob, defaulted.
pub fn check_cronjob(
    v: Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<CronJob, ManifestError> {
    let mut cj: CronJob = decode(v, mode, warnings)?;
    cronjob::defaults(&mut cj);
    validate_meta(&cj.metadata).map_err(fail)?;
    one_message(cronjob::validate(&cj, None))?;
    let template = cj
        .spec
        .job_template
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    check_pod_template(&cj.metadata, &template, "spec.jobTemplate.spec.template").map_err(fail)?;
    Ok(cj)
}

/// The template must make a valid pod (checked as one, errors under `path`); the batch kinds'
/// own restartPolicy rule is in their validation.
fn check_pod_template(owner: &ObjectMeta, t: &PodTemplateSpec, path: &str) -> Result<(), String> {
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
    super::validate::validate_pod(pod).map(drop).map_err(|e| {
        if let Some(rest) = e.strip_prefix("spec") {
            format!("{path}.spec{rest}")
        } else {
            format!("{path}.{e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::manifest::workload::{WorkloadKind, check};

    fn job(extra: Value) -> Value {
        let mut j = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}],
            }}},
        });
        json_patch::merge(&mut j, &extra);
        j
    }

    fn cron(extra: Value) -> Value {
        let mut c = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}],
            }}}}},
        });
        json_patch::merge(&mut c, &extra);
        c
    }

    fn run(kind: WorkloadKind, v: Value) -> Result<Value, String> {
        check(kind, v, FieldValidation::Strict, &mut Vec::new()).map_err(|e| e.message)
    }

    #[test]
    fn a_job_gets_the_apiservers_defaults_and_generated_selector() {
        let j = run(WorkloadKind::Job, job(json!({}))).unwrap();
        let spec = &j["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert!(j["status"].is_null());
    }

    #[test]
    fn a_manifest_job_gets_its_selector_with_its_identity() {
        let mut v = job(json!({}));
        v["metadata"].as_object_mut().unwrap().remove("uid");
        let mut j = run(WorkloadKind::Job, v).unwrap();
        assert!(j["spec"]["selector"].is_null(), "{j}");
        j["metadata"]["uid"] = "from-store".into();
        with_identity("jobs", &mut j);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "from-store"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["controller-uid"],
            "from-store"
        );
    }

    #[test]
    fn a_cronjob_gets_the_apiservers_defaults() {
        let c = run(WorkloadKind::CronJob, cron(json!({}))).unwrap();
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["suspend"], false);
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
    }

    #[test]
    fn bad_batch_objects_get_the_apiservers_messages() {
        let cases: &[(WorkloadKind, Value, &str)] = &[
            (
                WorkloadKind::Job,
                job(json!({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}})),
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
            ),
            (
                WorkloadKind::Job,
                job(json!({"spec": {"completions": -1}})),
                "spec.completions: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                WorkloadKind::Job,
                job(
                    json!({"spec": {"completionMode": "Indexed", "completions": null, "parallelism": 2}}),
                ),
                "spec.completions: Required value: when completion mode is Indexed",
            ),
            (
                WorkloadKind::Job,
                job(json!({"spec": {"template": {"spec": {"containers": []}}}})),
                "spec.template.spec.containers: Required value",
            ),
            (
                WorkloadKind::Job,
                job(json!({"spec": {"backoffLimitt": 1}})),
                "unknown field \"spec.backoffLimitt\"",
            ),
            (
                WorkloadKind::Job,
                job(json!({"apiVersion": "batch/v1beta1"})),
                "apiVersion \"batch/v1beta1\" is not served for Job (use \"batch/v1\")",
            ),
            (
                WorkloadKind::CronJob,
                cron(json!({"spec": {"schedule": "not a schedule"}})),
                "spec.schedule: Invalid value: \"not a schedule\": expected exactly 5 fields, found 3: [not a schedule]",
            ),
            (
                WorkloadKind::CronJob,
                cron(json!({"spec": {"concurrencyPolicy": "Sometimes"}})),
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
            ),
            (
                WorkloadKind::CronJob,
                cron(
                    json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}}}),
                ),
                "spec.jobTemplate.spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
            ),
            (
                WorkloadKind::CronJob,
                cron(
                    json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}),
                ),
                "spec.jobTemplate.spec.template.spec.containers: Required value",
            ),
        ];
        for (kind, v, want) in cases {
            assert_eq!(run(*kind, v.clone()).unwrap_err(), *want, "{v}");
        }
    }

    #[test]
    fn several_errors_are_listed_as_the_apiserver_lists_them() {
        let e = run(
            WorkloadKind::Job,
            job(json!({"spec": {"parallelism": -1, "completions": -2}})),
        )
        .unwrap_err();
        assert!(e.starts_with("[spec.parallelism: Invalid value: -1"), "{e}");
        assert!(e.contains(", spec.completions: Invalid value: -2"), "{e}");
    }
}
