//! The `skiff-portmap` CNI plugin; see `cni::plugins::portmap`.

fn main() {
    std::process::exit(cni::skel::main(&cni::plugins::portmap::Portmap));
}
