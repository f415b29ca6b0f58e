//! With the `rdma` feature, checks that rdma-core's development files and libclang (which
//! rdma-sys's bindgen needs) are installed, and says how to get them if not; without the
//! feature it does nothing.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_RDMA").is_none() {
        return;
    }
    let mut missing = Vec::new();
    for lib in ["libibverbs", "librdmacm"] {
        let ok = Command::new("pkg-config").args(["--exists", lib]).status();
        if !ok.is_ok_and(|s| s.success()) {
            missing.push(format!("{lib} (pkg-config --exists {lib} failed)"));
        }
    }
    let clang =
        Command::new("sh").args(["-c", "ldconfig -p | grep -q 'libclang[-.0-9]*\\.so'"]).status();
    if !clang.is_ok_and(|s| s.success()) && std::env::var_os("LIBCLANG_PATH").is_none() {
        missing.push("libclang (for bindgen; or set LIBCLANG_PATH)".into());
    }
    if !missing.is_empty() {
        panic!(
            "\n\nthe `rdma` feature needs rdma-core's development files and libclang; missing: {}.\n\
             On Debian: apt-get install libibverbs-dev librdmacm-dev clang libclang-dev pkg-config\n\
             (rxe-setup/install.sh installs them, with a SoftRoCE VM to test on). Without the \
             feature, rdmq builds and serves TCP and shared memory.\n",
            missing.join(", ")
        );
    }
}
