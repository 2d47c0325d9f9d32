//! Which node directories a VMI's `hostDisk` volumes may be in: the node's allow list
//! (`vmpod-launcher run --host-disk-dir`, `VMPOD_HOST_DISK_DIRS`). A path is allowed when,
//! resolved through symlinks as far as it exists, it lies under one of the directories
//! (also resolved). Validation has already made it absolute and free of `..`; this is the
//! node's own limit on top. An empty list allows no hostDisk at all.

use crate::api::{FieldError, VirtualMachineInstance};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment form of the allow list: directories separated by `:`.
pub const HOST_DISK_DIRS_ENV: &str = "VMPOD_HOST_DISK_DIRS";

/// The node's allow list as the launcher and the handler's local mode take it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HostDiskDirArgs {
    /// A node directory hostDisk volumes may be in (repeatable; VMPOD_HOST_DISK_DIRS holds
    /// them ':'-separated). A hostDisk volume outside every allowed directory is refused.
    #[arg(long = "host-disk-dir", env = HOST_DISK_DIRS_ENV, value_delimiter = ':')]
    pub host_disk_dirs: Vec<PathBuf>,
}

impl HostDiskDirArgs {
    /// `vmpod-launcher run`'s arguments for the allow list `dirs`.
    pub fn to_args(dirs: &[PathBuf]) -> Vec<OsString> {
        dirs.iter()
            .flat_map(|d| [OsString::from("--host-disk-dir"), d.into()])
            .collect()
    }
}

/// `path` through symlinks: the file itself if it exists, else its directory (a
/// DiskOrCreate file yet to be made) joined with its name; as written when neither exists.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent().map(Path::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// One error per hostDisk volume whose path is outside `allowed`, at
/// `spec.volumes[i].hostDisk.path`.
pub fn host_disks_outside(vmi: &VirtualMachineInstance, allowed: &[PathBuf]) -> Vec<FieldError> {
    let dirs: Vec<PathBuf> = allowed.iter().map(|d| resolved(d)).collect();
    let list = || {
        let names: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
        names.join(", ")
    };
    let mut errors = Vec::new();
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        let Some(h) = &vol.host_disk else { continue };
        let path = resolved(Path::new(&h.path));
        if dirs.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let message = if allowed.is_empty() {
            format!(
                "{} is refused: this node allows hostDisk in no directory \
                 (--host-disk-dir, {HOST_DISK_DIRS_ENV})",
                h.path
            )
        } else if path != Path::new(&h.path) {
            format!(
                "{} (which is {}) is outside the node's hostDisk directories: {}",
                h.path,
                path.display(),
                list()
            )
        } else {
            format!(
                "{} is outside the node's hostDisk directories: {}",
                h.path,
                list()
            )
        };
        errors.push(FieldError::new(
            format!("spec.volumes[{i}].hostDisk.path"),
            message,
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HostDisk, Volume};

    fn vmi_with_host_disks(paths: &[&Path]) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm1", Default::default());
        vmi.spec.volumes = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Volume {
                name: format!("h{i}"),
                host_disk: Some(HostDisk {
                    path: p.to_string_lossy().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        vmi
    }

    #[test]
    fn only_paths_under_an_allowed_directory_pass() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("disks");
        let other = root.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret.img"), b"x").unwrap();
        // A symlink inside the allowed directory to a file outside it.
        std::os::unix::fs::symlink(other.join("secret.img"), allowed.join("link.img")).unwrap();
        let inside = allowed.join("new.img"); // DiskOrCreate, not there yet
        let vmi = vmi_with_host_disks(&[
            &inside,
            &other.join("secret.img"),
            &allowed.join("link.img"),
            Path::new("/dev/sda"),
        ]);
        let errors = host_disks_outside(&vmi, std::slice::from_ref(&allowed));
        let fields: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[1].hostDisk.path",
                "spec.volumes[2].hostDisk.path",
                "spec.volumes[3].hostDisk.path"
            ],
            "{errors:?}"
        );
        assert!(errors[1].message.contains("which is"), "{}", errors[1]);
        let none = host_disks_outside(&vmi_with_host_disks(&[&inside]), &[]);
        assert!(
            none[0].message.contains("allows hostDisk in no directory"),
            "{none:?}"
        );
    }
}
