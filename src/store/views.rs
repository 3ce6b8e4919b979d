//! What the service controller publishes into the store (kept here, below both, so the
//! store does not import the service controller).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Service};

use crate::manifest::source::PodKey;

/// What the controller publishes for one Service.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub services: BTreeMap<PodKey, Service>,
    pub endpoints: BTreeMap<PodKey, Endpoints>,
    /// Services refused (bad allocation), with the reason.
    pub rejected: BTreeMap<PodKey, String>,
}
