//! skiff's host toolkit: what the node agent, the CNI plugins and the overlay share to act on
//! the host, one copy each (as Kubernetes' `utiliptables` and `utilexec` serve both the kubelet
//! and kube-proxy):
//!
//! - [`cmd`]: running a program (optionally inside a network namespace) with one error shape;
//! - [`iptables`]: applying and reading iptables rules (`iptables-restore`/`-save`, `-C`/`-A`);
//! - [`atomic`]: writing a file whole, durably or not.
//!
//! No Kubernetes meaning here, and nothing above it: the crate depends on std, libc and
//! logging only.

pub mod atomic;
pub mod cmd;
pub mod iptables;
