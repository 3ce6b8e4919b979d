//! Per-container supervisor; see `skiff::runtime::shim`.
fn main() {
    // `skiff-shim pause <dir>`: the infra process of a pod's shared PID namespace. It must
    // fork before anything starts a thread, so it is dispatched first.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "pause" {
        std::process::exit(skiff::runtime::pidns::pause_main(std::path::Path::new(
            &args[2],
        )));
    }
    std::process::exit(skiff::runtime::shim::main());
}
