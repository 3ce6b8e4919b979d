//! What the apiserver derives from a workload object on create and update, pure so that
//! the store can apply it to manifest workloads too: a Job's generated selector and pod
//! labels, a DaemonSet's template generation.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use serde_json::Value;

/// The label the generated selector selects on.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The label with the Job's name.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The generated selector's label before the prefixed one.
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
/// The Job name label before the prefixed one.
pub const LEGACY_JOB_NAME: &str = "job-name";

/// The apiserver's generated selector (unless `manualSelector`): the template is labelled
/// with the Job's uid and name (prefixed and legacy labels) and the selector matches the uid.
pub fn generate_selector(job: &mut Job) {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.get_or_insert_with(Default::default);
    if spec.manual_selector == Some(true) {
        return;
    }
    let labels = spec
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (LEGACY_JOB_NAME, &name),
        (JOB_NAME, &name),
        (LEGACY_CONTROLLER_UID, &uid),
        (CONTROLLER_UID, &uid),
    ] {
        labels.entry(key.into()).or_insert_with(|| value.clone());
    }
    spec.selector
        .get_or_insert_with(Default::default)
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .entry(CONTROLLER_UID.into())
        .or_insert(uid);
}

/// What depends on the UID the store gives a manifest object: a Job's generated selector and
/// the labels its pods carry.
pub fn with_identity(plural: &str, v: &mut Value) {
    if plural != "jobs" {
        return;
    }
    let Ok(mut j) = serde_json::from_value::<Job>(v.clone()) else {
        return;
    };
    generate_selector(&mut j);
    if let Ok(done) = serde_json::to_value(&j) {
        *v = done;
    }
}

/// Drops nulls and empty maps and lists: a template sent back by a client is the same one.
pub fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), normalized(x)))
                .filter(|(_, x)| match x {
                    Value::Null => false,
                    Value::Object(o) => !o.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// The annotation with a DaemonSet's template generation (what its pods'
/// `pod-template-generation` label says).
pub const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// Sets a DaemonSet's template generation as the apiserver does: 1 when created, one more
/// whenever an update changes the template, whatever the client sent.
pub fn set_template_generation(old: Option<&serde_json::Value>, new: &mut serde_json::Value) {
    let generation = match old {
        None => 1,
        Some(o) => {
            let before = o["metadata"]["annotations"][TEMPLATE_GENERATION]
                .as_str()
                .and_then(|g| g.parse::<i64>().ok())
                .unwrap_or(1);
            let changed =
                normalized(&o["spec"]["template"]) != normalized(&new["spec"]["template"]);
            before + i64::from(changed)
        }
    };
    if !new["metadata"]["annotations"].is_object() {
        new["metadata"]["annotations"] = serde_json::json!({});
    }
    new["metadata"]["annotations"][TEMPLATE_GENERATION] = generation.to_string().into();
}

/// Whether an object has a controller owner reference (a controller made it).
pub fn controlled(v: &Value) -> bool {
    v["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true))
}
