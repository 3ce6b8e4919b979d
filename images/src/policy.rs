//! `imagePullPolicy`, decided the way the kubelet does.

use crate::reference::{Reference, ReferenceError};

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull (ask the registry) every time a container starts.
    Always,
    /// Pull only if the image is not in the store.
    IfNotPresent,
    /// Never pull; fail if the image is not in the store.
    Never,
}

/// What to do for one container start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullDecision {
    /// Ask the registry (the layers already stored are not downloaded again).
    Pull,
    /// Use the stored image.
    UseLocal,
    /// The image is absent and the policy forbids pulling: the kubelet's `ErrImageNeverPull`.
    NeverPull,
}

/// An `imagePullPolicy` value that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid imagePullPolicy {0:?} (must be Always, IfNotPresent or Never)")]
pub struct InvalidPullPolicy(pub String);

impl PullPolicy {
    /// Kubernetes' default for an image: `Always` if the tag is `latest` or there is neither
    /// tag nor digest, else `IfNotPresent` (a digest counts as pinned even with `:latest`).
    pub fn default_for(image: &str) -> Result<PullPolicy, ReferenceError> {
        let r = Reference::parse_normalized(image)?;
        Ok(match (&r.tag, &r.digest) {
            (_, Some(_)) => PullPolicy::IfNotPresent,
            (None, None) => PullPolicy::Always,
            (Some(tag), None) if tag == "latest" => PullPolicy::Always,
            (Some(_), None) => PullPolicy::IfNotPresent,
        })
    }

    /// The policy for a container: `policy` as written in the manifest (empty or absent means
    /// the default for `image`).
    pub fn for_container(policy: Option<&str>, image: &str) -> Result<PullPolicy, PolicyError> {
        match policy.map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(PullPolicy::default_for(image)?),
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(InvalidPullPolicy(other.to_owned()).into()),
        }
    }

    /// Whether to pull, given whether the image is present in the store.
    pub fn decide(self, present: bool) -> PullDecision {
        match (self, present) {
            (PullPolicy::Always, _) => PullDecision::Pull,
            (_, true) => PullDecision::UseLocal,
            (PullPolicy::IfNotPresent, false) => PullDecision::Pull,
            (PullPolicy::Never, false) => PullDecision::NeverPull,
        }
    }
}

/// Why a container's pull policy cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The image reference is invalid.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The policy is not a known value.
    #[error(transparent)]
    Policy(#[from] InvalidPullPolicy),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_like_kubernetes() {
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox", PullPolicy::Always),
            ("busybox:latest", PullPolicy::Always),
            ("busybox:1.36", PullPolicy::IfNotPresent),
            ("localhost:5000/a", PullPolicy::Always),
            ("localhost:5000/a:v1", PullPolicy::IfNotPresent),
            (d.as_str(), PullPolicy::IfNotPresent),
        ];
        for (image, want) in cases {
            assert_eq!(PullPolicy::default_for(image).unwrap(), want, "{image}");
        }
        assert_eq!(
            PullPolicy::for_container(Some("Never"), "busybox").unwrap(),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::for_container(Some(""), "busybox:1").unwrap(),
            PullPolicy::IfNotPresent
        );
        assert!(PullPolicy::for_container(Some("Sometimes"), "busybox").is_err());
        assert!(PullPolicy::for_container(None, "Bad").is_err());
    }

    #[test]
    fn decisions() {
        use PullDecision::*;
        assert_eq!(PullPolicy::Always.decide(true), Pull);
        assert_eq!(PullPolicy::IfNotPresent.decide(true), UseLocal);
        assert_eq!(PullPolicy::IfNotPresent.decide(false), Pull);
        assert_eq!(PullPolicy::Never.decide(true), UseLocal);
        assert_eq!(PullPolicy::Never.decide(false), NeverPull);
    }
}
