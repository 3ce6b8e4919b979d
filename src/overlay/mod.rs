//! The multi-host overlay: flannel's etcd layout, a small etcd v3 client, the VXLAN data path
//! and the agent that runs them inside skiffd.

pub mod agent;
pub mod datapath;
pub mod etcd;
pub mod lease;
pub mod registry;
pub mod state;
pub mod vxlan;
