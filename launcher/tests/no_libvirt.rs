//! The launcher cannot load libvirt by construction: no crate it is built from links it.
//! libvirt's client is the vmpod-virt crate (launcher/virt), a child process the launcher
//! starts; the library's `runtime` feature does not pull the virt crate either.

use std::process::Command;

#[test]
fn the_launcher_is_built_without_the_virt_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "vmpod-launcher",
            "-e",
            "normal,build",
        ])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"vmpod"),
        "not the launcher's tree:\n{tree}"
    );
    for linked in ["virt", "virt-sys", "vmpod-virt"] {
        assert!(
            !crates.contains(&linked),
            "the launcher is built with {linked}:\n{tree}"
        );
    }
}
