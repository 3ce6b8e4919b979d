//! A Deployment's rolling update arithmetic, as kube-controller-manager does it
//! (`pkg/controller/deployment/rolling.go` and `util/deployment_util.go`), without I/O:
//! `maxSurge`/`maxUnavailable` from numbers or percentages, how far the new ReplicaSet may
//! scale up, and how far the old ones may scale down without going under the availability the
//! Deployment promises. The controller loop reads ReplicaSets and pods, asks these functions,
//! and writes the replica counts they give.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `maxSurge` and `maxUnavailable` of the defaults (25 % each).
pub const DEFAULT_FRACTION: &str = "25%";

/// A number or a percentage of `total`, rounded up or down (the apiserver's
/// `GetScaledValueFromIntOrPercent`).
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            let v = pct * i64::from(total);
            let r = if round_up {
                (v + 99).div_euclid(100)
            } else {
                v.div_euclid(100)
            };
            Ok(r as i32)
        }
    }
}

/// `(maxSurge, maxUnavailable)` as pod counts for `replicas` (the controller's
/// `ResolveFenceposts`): surge rounds up, unavailable down, and when both come to 0 one pod may
/// be unavailable, or the rollout could never move.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), String> {
    let default = IntOrString::String(DEFAULT_FRACTION.into());
    let surge = scaled(max_surge.unwrap_or(&default), replicas, true)?;
    let unavailable = scaled(max_unavailable.unwrap_or(&default), replicas, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// The apiserver's check of a RollingUpdate strategy: both may not be 0 (as given, before
/// rounding), neither may be negative, and `maxUnavailable` may not pass 100 %.
pub fn validate_rolling_update(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
) -> Result<(), String> {
    let field = "spec.strategy.rollingUpdate";
    let check = |name: &str, v: &IntOrString| -> Result<(), String> {
        match v {
            IntOrString::Int(n) if *n < 0 => Err(format!(
                "{field}.{name}: Invalid value: {n}: must be greater than or equal to 0"
            )),
            IntOrString::String(s) => {
                let pct: i64 = s.strip_suffix('%').and_then(|n| n.parse().ok()).ok_or_else(|| {
                    format!("{field}.{name}: Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")
                })?;
                if pct < 0 {
                    return Err(format!(
                        "{field}.{name}: Invalid value: {s:?}: must be greater than or equal to 0"
                    ));
                }
                if name == "maxUnavailable" && pct > 100 {
                    return Err(format!(
                        "{field}.{name}: Invalid value: {s:?}: must not be greater than 100%"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    if let Some(v) = max_surge {
        check("maxSurge", v)?;
    }
    if let Some(v) = max_unavailable {
        check("maxUnavailable", v)?;
    }
    let zero = |v: Option<&IntOrString>| match v {
        Some(IntOrString::Int(0)) => true,
        Some(IntOrString::String(s)) => s == "0%",
        _ => false,
    };
    if zero(max_surge) && zero(max_unavailable) {
        let shown = match max_unavailable {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => format!("{s:?}"),
            None => String::new(),
        };
        return Err(format!(
            "{field}.maxUnavailable: Invalid value: {shown}: may not be 0 when `maxSurge` is 0"
        ));
    }
    Ok(())
}

/// What the rollout knows of one ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rs {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// Creation order: older first when scaling old ReplicaSets down.
    pub created: jiff::Timestamp,
}

/// The new ReplicaSet's replicas for a rolling update step (`NewRSNewReplicas`): up to
/// `replicas + maxSurge` pods in all, never more than `replicas` in the new one.
pub fn new_rs_replicas(replicas: i32, max_surge: i32, all: &[Rs], new: &Rs) -> i32 {
    let total: i32 = all.iter().map(|r| r.replicas).sum();
    let max_total = replicas + max_surge;
    if total >= max_total {
        return new.replicas;
    }
    let up = (max_total - total).min(replicas - new.replicas).max(0);
    new.replicas + up
}

/// How the old ReplicaSets scale down in one step (`reconcileOldReplicaSets`): first their
/// unavailable pods (no loss of availability), then available ones while at least
/// `replicas - maxUnavailable` stay available, oldest ReplicaSet first. Returns the new
/// replica count of each old ReplicaSet whose count changes.
pub fn old_rs_scale_down(
    replicas: i32,
    max_unavailable: i32,
    old: &[Rs],
    new: &Rs,
) -> Vec<(String, i32)> {
    let old_total: i32 = old.iter().map(|r| r.replicas).sum();
    if old_total == 0 {
        return Vec::new();
    }
    let all_pods = old_total + new.replicas;
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let mut max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sorted: Vec<Rs> = old.to_vec();
    sorted.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    let mut changed: Vec<(String, i32)> = Vec::new();
    // 1. Unhealthy pods of old ReplicaSets go first: removing them costs no availability.
    for rs in sorted.iter_mut() {
        if max_scaled_down <= 0 {
            break;
        }
        let unhealthy = (rs.replicas - rs.available).max(0);
        if rs.replicas == 0 || unhealthy == 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down);
        rs.replicas -= down;
        max_scaled_down -= down;
        changed.push((rs.name.clone(), rs.replicas));
    }
    // 2. Then available ones, keeping `min_available` across all ReplicaSets.
    let available: i32 = sorted
        .iter()
        .map(|r| r.available.min(r.replicas))
        .sum::<i32>()
        + new.available;
    let mut budget = available - min_available;
    for rs in sorted.iter_mut() {
        if budget <= 0 {
            break;
        }
        if rs.replicas == 0 {
            continue;
        }
        let down = rs.replicas.min(budget);
        rs.replicas -= down;
        budget -= down;
        match changed.iter_mut().find(|(n, _)| *n == rs.name) {
            Some(entry) => entry.1 = rs.replicas,
            None => changed.push((rs.name.clone(), rs.replicas)),
        }
    }
    changed
}

/// The `pod-template-hash` label of a Deployment's ReplicaSet: FNV-32a of the template (here of
/// its canonical JSON, keys sorted: Kubernetes hashes Go's printed struct, which no other
/// program can reproduce, and compares templates rather than hashes to find the new
/// ReplicaSet, as skiff does too), then the collision count's 4 bytes little-endian, printed in
/// decimal and each digit mapped into the apiserver's safe alphabet (`SafeEncodeString`).
pub fn pod_template_hash(template: &serde_json::Value, collision_count: Option<u32>) -> String {
    fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }
    // serde_json's maps are sorted (no preserve_order), so this text is canonical.
    let text = template.to_string();
    let mut h = fnv1a(0x811c_9dc5, text.as_bytes());
    if let Some(c) = collision_count {
        h = fnv1a(h, &c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Whether a rollout is complete (`DeploymentComplete`): every replica updated and available
/// and no old pods left.
pub fn complete(replicas: i32, updated: i32, total: i32, available: i32) -> bool {
    updated == replicas && total == replicas && available == replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, available: i32, minute: i64) -> Rs {
        Rs {
            name: name.into(),
            replicas,
            available,
            created: jiff::Timestamp::from_second(minute * 60).unwrap(),
        }
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        // The defaults on 10 replicas: 3 surge (2.5 up), 2 unavailable (2.5 down).
        assert_eq!(fenceposts(None, None, 10), Ok((3, 2)));
        assert_eq!(
            fenceposts(Some(&pct("50%")), Some(&pct("10%")), 3),
            Ok((2, 0))
        );
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(1)), 5),
            Ok((2, 1))
        );
        // Both 0 after rounding: one may be unavailable.
        assert_eq!(
            fenceposts(Some(&pct("0%")), Some(&pct("10%")), 3),
            Ok((0, 1))
        );
        assert!(fenceposts(Some(&pct("x")), None, 3).is_err());
    }

    #[test]
    fn both_zero_and_bad_percentages_are_refused_as_the_apiserver_does() {
        let zero = IntOrString::Int(0);
        let e = validate_rolling_update(Some(&zero), Some(&zero)).unwrap_err();
        assert_eq!(
            e,
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        );
        assert!(validate_rolling_update(Some(&pct("0%")), Some(&pct("0%"))).is_err());
        assert!(
            validate_rolling_update(None, Some(&pct("120%")))
                .unwrap_err()
                .contains("must not be greater than 100%")
        );
        assert!(
            validate_rolling_update(Some(&IntOrString::Int(-1)), None)
                .unwrap_err()
                .contains("maxSurge: Invalid value: -1")
        );
        assert!(validate_rolling_update(Some(&pct("25%")), Some(&zero)).is_ok());
        assert!(validate_rolling_update(None, None).is_ok());
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge() {
        // 3 replicas, surge 1: the old RS has 3, the new one may get 1.
        let old = rs("old", 3, 3, 0);
        let new = rs("new", 0, 0, 1);
        assert_eq!(new_rs_replicas(3, 1, &[old.clone(), new.clone()], &new), 1);
        // Already at replicas + surge: no growth.
        let new = rs("new", 1, 0, 1);
        assert_eq!(new_rs_replicas(3, 1, &[old, new.clone()], &new), 1);
        // Never past replicas in the new one.
        let old = rs("old", 0, 0, 0);
        let new = rs("new", 3, 3, 1);
        assert_eq!(new_rs_replicas(3, 5, &[old, new.clone()], &new), 3);
    }

    #[test]
    fn old_replicasets_scale_down_keeping_the_promised_availability() {
        // The guide's nginx rollout: 3 replicas, 25 % -> surge 1, unavailable 0.
        let (surge, unavailable) = fenceposts(None, None, 3).unwrap();
        assert_eq!((surge, unavailable), (1, 0));
        let old = rs("old", 3, 3, 0);
        // The new pod is not available yet: nothing of the old may go.
        let new = rs("new", 1, 0, 1);
        assert_eq!(
            old_rs_scale_down(3, unavailable, std::slice::from_ref(&old), &new),
            vec![]
        );
        // Once it is available, one old pod goes.
        let new = rs("new", 1, 1, 1);
        assert_eq!(
            old_rs_scale_down(3, unavailable, std::slice::from_ref(&old), &new),
            vec![("old".to_string(), 2)]
        );
    }

    #[test]
    fn unhealthy_old_pods_go_first_and_oldest_replicasets_before_newer() {
        // 4 replicas, unavailable 1. Two old RSs: the oldest has an unavailable pod.
        let a = rs("a", 2, 1, 0);
        let b = rs("b", 2, 2, 1);
        let new = rs("new", 1, 1, 2);
        // all = 5, min available = 3, new unavailable 0 -> max scaled down 2.
        // Step 1: a's unhealthy pod (a: 1). Step 2: available = 1 + 2 + 1 = 4, budget 1:
        // a's last pod (a: 0).
        assert_eq!(
            old_rs_scale_down(4, 1, &[b.clone(), a.clone()], &new),
            vec![("a".to_string(), 0)]
        );
    }

    #[test]
    fn template_hashes_are_stable_safe_and_change_with_the_template_or_collisions() {
        let t = serde_json::json!({"metadata": {"labels": {"app": "nginx"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.14.2"}]}});
        let h = pod_template_hash(&t, None);
        assert_eq!(h, pod_template_hash(&t.clone(), None));
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        let mut t2 = t.clone();
        t2["spec"]["containers"][0]["image"] = "nginx:1.16.1".into();
        assert_ne!(pod_template_hash(&t2, None), h);
        assert_ne!(pod_template_hash(&t, Some(1)), h);
        // FNV-32a itself: the empty input's hash is the offset basis, 2166136261.
        assert_eq!(
            pod_template_hash(&serde_json::Value::String(String::new()), None),
            pod_template_hash(&serde_json::json!(""), None)
        );
    }

    #[test]
    fn a_rollout_is_complete_when_everything_is_updated_and_available() {
        assert!(complete(3, 3, 3, 3));
        assert!(!complete(3, 3, 4, 3), "an old pod is still there");
        assert!(!complete(3, 3, 3, 2));
    }
}
