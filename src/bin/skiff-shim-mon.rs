//! The long-lived half of `skiff-shim`: see `skiff::runtime::supervise`.
//!
//! Deliberately not linked against the `skiff` library: it includes the two
//! std/libc-only modules it needs by path, so the process that lives as long
//! as its container maps a small binary.

#[allow(dead_code)]
#[path = "../../hostkit/src/atomic.rs"]
mod atomic;
#[allow(dead_code)]
#[path = "../runtime/attach.rs"]
mod attach;
#[allow(dead_code)]
#[path = "../runtime/crilog.rs"]
mod crilog;
#[allow(dead_code)]
#[path = "../runtime/supervise.rs"]
mod supervise;

fn main() {
    std::process::exit(supervise::monitor_main());
}
