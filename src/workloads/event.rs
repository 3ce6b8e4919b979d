//! The events a controller decision asks for, as kube-controller-manager records them: the
//! executor turns each into a core/v1 Event on the object it concerns (`kubectl describe`).

/// One event to record on the object being synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The machine-readable reason (`SuccessfulCreate`, `BackoffLimitExceeded`, ...).
    pub reason: &'static str,
    /// The human-readable message, worded as the real controller words it.
    pub message: String,
}

impl Event {
    /// A `Normal` event.
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Event {
        Event {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    /// A `Warning` event.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Event {
        Event {
            warning: true,
            reason,
            message: message.into(),
        }
    }

    /// `Normal` or `Warning`, as the event's `type` field.
    pub fn type_(&self) -> &'static str {
        if self.warning { "Warning" } else { "Normal" }
    }
}
