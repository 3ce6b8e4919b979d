//! Per-container supervisor; see `skiff::runtime::shim`.
fn main() {
    std::process::exit(skiff::runtime::shim::main());
}
