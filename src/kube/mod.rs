//! Pure Kubernetes semantics with no I/O, the bottom layer with `util` (apimachinery's
//! `util/validation` and `pkg/fieldpath` are the model): nothing here imports the rest of the
//! crate except `util`.

pub mod env;
pub mod events;
pub mod expand;
pub mod name;
pub mod pod_conditions;
pub mod pod_resources;
pub mod podspec;
pub mod quantity;
pub mod reasons;
pub mod resources;
pub mod restart;
pub mod validation;
pub mod workload;
