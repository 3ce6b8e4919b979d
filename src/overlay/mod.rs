//! The multi-host overlay (issue #6): flannel's etcd layout, a small etcd v3 client, and the
//! VXLAN data path. Not wired into skiffd yet.

pub mod etcd;
pub mod lease;
pub mod vxlan;
