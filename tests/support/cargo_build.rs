//! Building this workspace's binaries from a test or a bench: a nested `cargo build` in
//! the profile and target directory of the running test binary, so a test never runs a
//! stale or differently built binary. Standalone (benches include it by `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `bins` of `packages` (a no-op when fresh) and return the directory they are in
/// (`target/<profile>/`, the running test binary's).
pub fn build_bins(packages: &[&str], bins: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test binary");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => panic!("no profile directory above {}", exe.display()),
    };
    let mut cargo = Command::new(env!("CARGO"));
    // What cargo sets for this test process would make the nested build look like a
    // different configuration and rebuild dependencies: drop it.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "OUT_DIR"
        {
            cargo.env_remove(&*k);
        }
    }
    cargo.args(["build", "--quiet", "--profile", profile]);
    for package in packages {
        cargo.args(["-p", package]);
    }
    for bin in bins {
        cargo.args(["--bin", bin]);
    }
    let st = cargo
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p {packages:?} {bins:?}: {st}");
    profile_dir
}
