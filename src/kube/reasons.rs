//! Container waiting reasons as the kubelet reports them, and which of them mean "setup
//! failed" (an image or config problem) rather than a crash.

/// The image is being pulled or the container created.
pub const CONTAINER_CREATING: &str = "ContainerCreating";
/// The container crashed and waits for its restart back-off.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
/// The last pull failed.
pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
/// The pull policy is Never and the image is not present.
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
/// A pull failed and the next waits for its back-off.
pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
/// The image reference does not parse.
pub const INVALID_IMAGE_NAME: &str = "InvalidImageName";
/// A referenced ConfigMap, Secret or key is missing.
pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// Creating the container failed.
pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";

/// Waiting reasons that are not a crash: the container never ran because its image or
/// config is not usable (every `Err*` and `Create*` reason skiff reports, and
/// `InvalidImageName`).
pub const SETUP_ERRORS: [&str; 5] = [
    ERR_IMAGE_PULL,
    ERR_IMAGE_NEVER_PULL,
    INVALID_IMAGE_NAME,
    CREATE_CONTAINER_CONFIG_ERROR,
    CREATE_CONTAINER_ERROR,
];

/// Whether a waiting reason is a setup error (see [`SETUP_ERRORS`]), not a crash.
pub fn is_setup_error(reason: &str) -> bool {
    SETUP_ERRORS.contains(&reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_are_not_crashes() {
        for r in SETUP_ERRORS {
            assert!(is_setup_error(r), "{r}");
        }
        for r in [
            CRASH_LOOP_BACK_OFF,
            CONTAINER_CREATING,
            IMAGE_PULL_BACK_OFF,
            "Error",
        ] {
            assert!(!is_setup_error(r), "{r}");
        }
    }
}
