//! A pod's `restartPolicy` as an enum instead of string compares.

/// The pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The spec's default.
    pub const DEFAULT: &str = "Always";

    /// The policy named in the spec (validated; anything else is the default, Always).
    pub fn parse(s: &str) -> Self {
        match s {
            "OnFailure" => RestartPolicy::OnFailure,
            "Never" => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }
}
