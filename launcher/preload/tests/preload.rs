//! The preloaded library takes libvirt's call: libvirtd (which runs `virInitialize`
//! before it parses its options) started with it binds `curl_global_init` to it, and
//! without it to libcurl. The dynamic linker says where each symbol bound
//! (`LD_DEBUG=bindings`, at the first call: binding is lazy). Needs libvirtd
//! (`tests/setup.sh` installs it).

use std::path::PathBuf;
use std::process::Command;

const LIBVIRTD: &str = "/usr/sbin/libvirtd";

/// The library cargo built with this test: beside it (`target/<profile>/deps/`), or in
/// `target/<profile>/` after a plain build.
fn built_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join("libvmpod_preload.so"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libvmpod_preload.so not built beside {}", exe.display()))
}

/// Where libvirt's `curl_global_init` bound in `libvirtd --version` with `env`.
fn curl_binding(env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = Command::new(LIBVIRTD)
        .arg("--version")
        .env("LD_DEBUG", "bindings")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find(|l| l.contains("libvirt.so") && l.contains("`curl_global_init'"))
        .unwrap_or_else(|| panic!("no binding of curl_global_init:\n{stderr}"))
        .to_string()
}

#[test]
fn libvirt_s_curl_init_lands_in_the_preload() {
    let lib = built_library();
    let with = curl_binding(&[("LD_PRELOAD", lib.as_os_str())]);
    assert!(with.contains("libvmpod_preload.so"), "{with}");
    let without = curl_binding(&[]);
    assert!(without.contains("libcurl"), "{without}");
}
