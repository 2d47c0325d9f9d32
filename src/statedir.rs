//! The layout of a launcher's per-pod directories: every path under a state dir
//! ([`StateDir`]), under the scratch dir beside it ([`ScratchDir`]) and under a local pod's
//! `pod/` directory ([`PodDir`]), and the default roots they live in. Other modules ask
//! here for a path and never join a file name onto a state dir themselves.
//!
//! ```text
//! <state dir>/            0700, the node daemon's view (a hostPath in a cluster)
//!   control.sock          control API
//!   status.json           last status written, for readers without the socket
//!   net/<iface>.json      cached InterfaceFacts
//!   container-disks/      default mount point of containerDisk images
//!   kernel-boot/          kernelBoot files extracted from a container image
//!   secrets/              local mode: Secrets a cloudInitNoCloud volume names
//!   pod/                  local mode only: the sandbox's record, the VMI, launcher.log
//! <scratch dir>/          0770, QEMU's (an emptyDir in a cluster; default: the state dir)
//!   console.log[.1]       serial console log (and its one rotated copy)
//!   console.sock          serial console socket
//!   cloud-init.img        NoCloud disk
//!   container-disks/      containerDisk overlays
//!   disks/                emptyDisk images
//!   libvirt/              the pod libvirtd's tree (its inner layout: domain::daemons)
//! ```
//!
//! Owns names only: it creates, reads and writes nothing, and sits below every module
//! (net included) so each of them can use it.

use std::path::{Path, PathBuf};

/// The launcher's state dir unless `--state-dir` / `VMPOD_STATE_DIR` says otherwise; also
/// where a launcher Pod mounts its state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/run/vmpod";
/// Where the node daemon keeps launcher Pods' state dirs, one per pod UID.
pub const DEFAULT_NODE_STATE_ROOT: &str = "/var/run/vmpod/pods";
/// Where launcher Pods share the node's boot slots (the launcher's `boot_slots`) when the
/// controller limits boots: beside the state root, never in it, since the node daemon
/// removes what there names no pod.
pub const DEFAULT_NODE_BOOT_SLOTS_DIR: &str = "/var/run/vmpod/boot-slots";

/// Where local VMIs keep their state dirs unless [`LOCAL_ROOT_ENV`] says otherwise (see
/// `control::local_root`); [`StateDir::local`] names one in it.
pub const DEFAULT_LOCAL_ROOT: &str = "/run/vmpod/vms";
pub const LOCAL_ROOT_ENV: &str = "VMPOD_LOCAL_ROOT";

/// The two names the node daemon opens relative to a state dir's descriptor
/// (`control::guarded`): the control API socket and the last status written.
pub const CONTROL_SOCKET: &str = "control.sock";
pub const STATUS_FILE: &str = "status.json";
const CONTAINER_DISKS: &str = "container-disks";

/// A launcher's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir(path.into())
    }

    /// [`DEFAULT_STATE_DIR`].
    pub fn default_dir() -> Self {
        StateDir::new(DEFAULT_STATE_DIR)
    }

    /// The local VMI `name`'s state dir under `root`; `None` for a name that would leave
    /// `root` (empty, `.`, `..`, with `/` or NUL).
    pub fn local(root: &Path, name: &str) -> Option<Self> {
        let valid = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.contains('\0');
        valid.then(|| StateDir(root.join(name)))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `control.sock`
    pub fn control_socket(&self) -> PathBuf {
        self.0.join(CONTROL_SOCKET)
    }

    /// `status.json`
    pub fn status_file(&self) -> PathBuf {
        self.0.join(STATUS_FILE)
    }

    /// `net/`
    pub fn net_dir(&self) -> PathBuf {
        self.0.join("net")
    }

    /// `net/<interface>.json`
    pub fn net_cache(&self, interface: &str) -> PathBuf {
        self.net_dir().join(format!("{interface}.json"))
    }

    /// `container-disks/`: where containerDisk images are mounted, unless told otherwise.
    pub fn container_disks(&self) -> PathBuf {
        self.0.join(CONTAINER_DISKS)
    }

    /// `secrets/`: the Secrets a cloudInitNoCloud volume names, when they are kept under
    /// the state dir (local mode, tests).
    pub fn secrets(&self) -> PathBuf {
        self.0.join("secrets")
    }

    /// `kernel-boot/`: kernelBoot files taken out of a container image.
    pub fn kernel_boot(&self) -> PathBuf {
        self.0.join("kernel-boot")
    }

    /// `pod/`: the local sandbox's files.
    pub fn pod(&self) -> PodDir {
        PodDir(self.0.join("pod"))
    }

    /// The scratch dir: `scratch` when given, else this state dir.
    pub fn scratch(&self, scratch: Option<&Path>) -> ScratchDir {
        ScratchDir(scratch.unwrap_or(&self.0).to_path_buf())
    }
}

/// A launcher's scratch directory (QEMU's files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ScratchDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `console.log`
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }

    /// `console.log.1`
    pub fn console_log_previous(&self) -> PathBuf {
        self.0.join("console.log.1")
    }

    /// `console.fifo`: QEMU writes the console there; the launcher copies it to
    /// [`Self::console_log`].
    pub fn console_fifo(&self) -> PathBuf {
        self.0.join("console.fifo")
    }

    /// `console.sock`
    pub fn console_socket(&self) -> PathBuf {
        self.0.join("console.sock")
    }

    /// `cloud-init.img`
    pub fn cloud_init_image(&self) -> PathBuf {
        self.0.join("cloud-init.img")
    }

    /// `container-disks/<volume>.qcow2`: a containerDisk's writable overlay.
    pub fn container_disk_overlay(&self, volume: &str) -> PathBuf {
        self.0.join(CONTAINER_DISKS).join(format!("{volume}.qcow2"))
    }

    /// `disks/`: emptyDisk images.
    pub fn empty_disks(&self) -> PathBuf {
        self.0.join("disks")
    }

    /// `libvirt/`: the root of `domain::daemons::LibvirtLayout`.
    pub fn libvirt(&self) -> PathBuf {
        self.0.join("libvirt")
    }
}

/// A local pod's directory (`<state dir>/pod/`): what the local sandbox keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDir(PathBuf);

impl PodDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PodDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `pod.json`: the sandbox's record.
    pub fn record(&self) -> PathBuf {
        self.0.join("pod.json")
    }

    /// `vmi.json`: the VMI as handed to the launcher.
    pub fn vmi(&self) -> PathBuf {
        self.0.join("vmi.json")
    }

    /// `launcher.log`: the launcher's standard output and error.
    pub fn launcher_log(&self) -> PathBuf {
        self.0.join("launcher.log")
    }

    /// `resolv.conf`: bound over the pod's /etc/resolv.conf.
    pub fn resolv_conf(&self) -> PathBuf {
        self.0.join("resolv.conf")
    }

    /// `hostname`: bound over the pod's /etc/hostname.
    pub fn hostname(&self) -> PathBuf {
        self.0.join("hostname")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_documented_ones() {
        let s = StateDir::new("/s");
        assert_eq!(s.control_socket(), Path::new("/s/control.sock"));
        assert_eq!(s.status_file(), Path::new("/s/status.json"));
        assert_eq!(s.net_cache("eth0"), Path::new("/s/net/eth0.json"));
        assert_eq!(s.container_disks(), Path::new("/s/container-disks"));
        assert_eq!(s.kernel_boot(), Path::new("/s/kernel-boot"));
        assert_eq!(s.pod().record(), Path::new("/s/pod/pod.json"));
        assert_eq!(s.pod().vmi(), Path::new("/s/pod/vmi.json"));
        assert_eq!(s.pod().launcher_log(), Path::new("/s/pod/launcher.log"));
        let own = s.scratch(None);
        assert_eq!(own.console_log(), Path::new("/s/console.log"));
        let x = s.scratch(Some(Path::new("/x")));
        assert_eq!(x.console_log_previous(), Path::new("/x/console.log.1"));
        assert_eq!(x.console_socket(), Path::new("/x/console.sock"));
        assert_eq!(x.cloud_init_image(), Path::new("/x/cloud-init.img"));
        assert_eq!(
            x.container_disk_overlay("d"),
            Path::new("/x/container-disks/d.qcow2")
        );
        assert_eq!(x.libvirt(), Path::new("/x/libvirt"));
        assert_eq!(
            Path::new(DEFAULT_NODE_STATE_ROOT).parent(),
            Some(Path::new(DEFAULT_STATE_DIR))
        );
    }

    #[test]
    fn local_names_stay_under_the_root() {
        let root = Path::new("/r");
        assert_eq!(
            StateDir::local(root, "vm").map(|s| s.0),
            Some(PathBuf::from("/r/vm"))
        );
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(StateDir::local(root, bad).is_none(), "{bad:?}");
        }
    }
}
