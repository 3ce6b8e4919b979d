//! The `skiff-host-local` CNI plugin; see `cni::plugins::host_local`.

fn main() {
    std::process::exit(cni::skel::main(&cni::plugins::host_local::HostLocal));
}
