//! Pod conditions clients set through `pods/status` and readiness gates, as the kubelet
//! treats them: the kubelet owns a fixed set of condition types and keeps whatever other
//! conditions a client put on the pod; `Ready` is True only when the containers are ready
//! and every `spec.readinessGates` condition is True (`pkg/kubelet/status/generate.go`).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The condition types the kubelet computes itself; a client's write of one is ignored.
pub const KUBELET_OWNED: [&str; 5] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// The reason of a `Ready` condition held False by a readiness gate (the kubelet's).
pub const READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";

/// Whether the kubelet owns conditions of this type.
pub fn kubelet_owned(type_: &str) -> bool {
    KUBELET_OWNED.contains(&type_)
}

/// The conditions of a client's status write that it may set (the kubelet's own dropped).
pub fn client_conditions(written: &[PodCondition]) -> Vec<PodCondition> {
    written
        .iter()
        .filter(|c| !kubelet_owned(&c.type_))
        .cloned()
        .collect()
}

/// Lays `client` over the pod's conditions (replacing those of the same type, dropping those
/// of `dropped`, types a client set before and no longer sets) and holds `Ready` False
/// while a readiness gate is not True. `previous` is the status as served before, so a
/// `Ready` that does not change keeps its transition time.
pub fn merge(
    pod: &mut Pod,
    client: &[PodCondition],
    dropped: &[String],
    previous: Option<&PodStatus>,
) {
    let gates: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .map(|g| g.condition_type.clone())
        .collect();
    if client.is_empty() && dropped.is_empty() && gates.is_empty() {
        return;
    }
    let Some(status) = pod.status.as_mut() else {
        return;
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| kubelet_owned(&c.type_) || !dropped.contains(&c.type_));
    for c in client {
        match conditions.iter_mut().find(|o| o.type_ == c.type_) {
            Some(o) => *o = c.clone(),
            None => conditions.push(c.clone()),
        }
    }
    let unready = gate_messages(&gates, conditions);
    let Some(ready) = conditions.iter_mut().find(|c| c.type_ == "Ready") else {
        return;
    };
    // A Ready False for another reason (containers not ready, pod completed) keeps the
    // kubelet's; one this function set (a status already laid over) is the kubelet's True.
    let containers_ready =
        ready.status == "True" || ready.reason.as_deref() == Some(READINESS_GATES_NOT_READY);
    if containers_ready {
        let status = if unready.is_empty() { "True" } else { "False" };
        if ready.status != status {
            ready.last_transition_time = None;
        }
        ready.status = status.into();
        ready.reason = (!unready.is_empty()).then(|| READINESS_GATES_NOT_READY.into());
        ready.message = (!unready.is_empty()).then(|| unready.join(", "));
    }
    let before = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    ready.last_transition_time = match before {
        Some(b) if b.status == ready.status => b.last_transition_time.clone(),
        _ => ready
            .last_transition_time
            .clone()
            .or_else(|| Some(Time(Timestamp::now()))),
    };
}

/// Why each gate that is not True holds the pod unready, in the kubelet's words.
pub fn gate_messages(gates: &[String], conditions: &[PodCondition]) -> Vec<String> {
    gates
        .iter()
        .filter_map(|g| match conditions.iter().find(|c| &c.type_ == g) {
            None => Some(format!(
                "corresponding condition of pod readiness gate {g:?} does not exist."
            )),
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate {g:?} is not \"True\", but {}",
                c.status
            )),
            Some(_) => None,
        })
        .collect()
}

/// Checks a client's condition (the apiserver's validation): a type and one of the three
/// statuses. The error names the field, as in a 422's cause.
pub fn validate(i: usize, c: &PodCondition) -> Result<(), String> {
    if c.type_.is_empty() {
        return Err(format!("status.conditions[{i}].type: Required value"));
    }
    if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
        return Err(format!(
            "status.conditions[{i}].status: Unsupported value: {:?}: supported values: \"False\", \"True\", \"Unknown\"",
            c.status
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec};

    use super::*;

    fn cond(t: &str, s: &str) -> PodCondition {
        PodCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        }
    }

    fn pod(gates: &[&str], ready: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                readiness_gates: Some(
                    gates
                        .iter()
                        .map(|g| PodReadinessGate {
                            condition_type: g.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![
                    cond("Initialized", "True"),
                    cond("Ready", ready),
                    cond("ContainersReady", ready),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn get<'a>(p: &'a Pod, t: &str) -> Option<&'a PodCondition> {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == t)
    }

    #[test]
    fn a_missing_gate_holds_ready_false_in_the_kubelets_words() {
        let mut p = pod(&["example.com/lb"], "True");
        merge(&mut p, &[], &[], None);
        let r = get(&p, "Ready").unwrap();
        assert_eq!(r.status, "False");
        assert_eq!(r.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            r.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
            )
        );
        assert!(r.last_transition_time.is_some());
        // ContainersReady is the kubelet's and stays as it computed it.
        assert_eq!(get(&p, "ContainersReady").unwrap().status, "True");
    }

    #[test]
    fn a_false_gate_then_a_true_one() {
        let mut p = pod(&["a", "b"], "True");
        merge(&mut p, &[cond("a", "False"), cond("b", "True")], &[], None);
        let r = get(&p, "Ready").unwrap();
        assert_eq!(r.status, "False");
        assert_eq!(
            r.message.as_deref(),
            Some("the status of pod readiness gate \"a\" is not \"True\", but False")
        );
        let mut p = pod(&["a", "b"], "True");
        merge(&mut p, &[cond("a", "True"), cond("b", "True")], &[], None);
        assert_eq!(get(&p, "Ready").unwrap().status, "True");
        assert_eq!(get(&p, "a").unwrap().status, "True");
    }

    #[test]
    fn a_status_laid_over_before_is_gated_again() {
        let mut p = pod(&["a"], "True");
        merge(&mut p, &[], &[], None);
        let before = p.status.clone();
        merge(&mut p, &[cond("a", "False")], &[], before.as_ref());
        let r = get(&p, "Ready").unwrap();
        assert_eq!(
            r.message.as_deref(),
            Some("the status of pod readiness gate \"a\" is not \"True\", but False")
        );
        let before = p.status.clone();
        merge(&mut p, &[cond("a", "True")], &[], before.as_ref());
        let r = get(&p, "Ready").unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("True", None));
        assert!(r.message.is_none());
    }

    #[test]
    fn unready_containers_keep_the_kubelets_reason() {
        let mut p = pod(&["a"], "False");
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].reason =
            Some("ContainersNotReady".into());
        merge(&mut p, &[], &[], None);
        let r = get(&p, "Ready").unwrap();
        assert_eq!(r.reason.as_deref(), Some("ContainersNotReady"));
    }

    #[test]
    fn client_conditions_replace_by_type_and_can_be_dropped() {
        let mut p = pod(&[], "True");
        merge(&mut p, &[cond("x", "True")], &[], None);
        merge(&mut p, &[cond("x", "False")], &[], None);
        let xs: Vec<_> = p
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.type_ == "x")
            .collect();
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].status, "False");
        merge(&mut p, &[], &["x".to_string()], None);
        assert!(get(&p, "x").is_none());
        // The kubelet's types are never a client's.
        let kept = client_conditions(&[cond("Ready", "False"), cond("y", "True")]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].type_, "y");
    }

    #[test]
    fn ready_keeps_its_transition_time_while_unchanged() {
        let mut first = pod(&["a"], "True");
        merge(&mut first, &[], &[], None);
        let t0 = get(&first, "Ready").unwrap().last_transition_time.clone();
        // The kubelet publishes Ready True again (its own time); still gated, so unchanged.
        let mut again = pod(&["a"], "True");
        merge(&mut again, &[], &[], first.status.as_ref());
        assert_eq!(get(&again, "Ready").unwrap().last_transition_time, t0);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(0, &cond("x", "True")).is_ok());
        let e = validate(2, &cond("x", "yes")).unwrap_err();
        assert!(
            e.starts_with("status.conditions[2].status: Unsupported value"),
            "{e}"
        );
        assert_eq!(
            validate(0, &cond("", "True")).unwrap_err(),
            "status.conditions[0].type: Required value"
        );
    }
}
