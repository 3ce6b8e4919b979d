//! Pure Kubernetes semantics with no I/O, the bottom layer with `util` (apimachinery's
//! `util/validation` and `pkg/fieldpath` are the model): nothing here imports the rest of the
//! crate except `util`.

pub mod events;
pub mod expand;
pub mod reasons;
pub mod resources;
pub mod restart;
