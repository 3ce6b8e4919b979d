//! The `skiff-bridge` CNI plugin; see `cni::plugins::bridge`.

fn main() {
    std::process::exit(cni::skel::main(&cni::plugins::bridge::Bridge));
}
