//! Acceleration: from what the VMI asks for ([`crate::api::AccelerationRequest`]), a probe of
//! `/dev/kvm` (ioctls, then QEMU for a moment) and what the node remembers to what the
//! domain runs with ([`crate::control::Acceleration`]): KVM only when it really works,
//! otherwise TCG.
//!
//! The probes can pass on a KVM that fails later, under a booting guest (a nested
//! `kvm-pvm` giving up with `KVM internal error ... emulation failure`). The launcher then
//! falls back to TCG and records a [`KvmFailure`] in the node's [`KvmVerdicts`] file,
//! beside the QEMU capabilities seed and keyed by [`KvmKey`] (kernel release, CPU model,
//! QEMU version), so the next pod on that node goes straight to TCG. Owns that file; does
//! not decide when KVM has failed (the launcher does).

use crate::api::AccelerationRequest;
use crate::control::Acceleration;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The libvirt `<domain type=...>` for an acceleration.
pub fn domain_type(accel: Acceleration) -> &'static str {
    match accel {
        Acceleration::Kvm => "kvm",
        Acceleration::Tcg => "qemu",
    }
}

/// The device the probe opens.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// KVM was asked for and does not work.
#[derive(Debug, thiserror::Error)]
#[error("acceleration kvm was requested but {KVM_DEVICE} is not usable: {0}")]
pub struct KvmUnusable(pub String);

/// What a remembered verdict on KVM is keyed by: a kernel upgrade, another CPU or another
/// QEMU may behave differently, so each gets its own verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvmKey {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// `/proc/cpuinfo`'s first `model name`.
    pub cpu: String,
    /// The first line of `qemu-system-x86_64 --version`.
    pub qemu: String,
}

impl KvmKey {
    /// This node's key, with `emulator`'s version.
    pub fn of_this_node(emulator: &Path) -> Result<KvmKey, String> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|e| format!("read /proc/sys/kernel/osrelease: {e}"))?
            .trim()
            .to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
            .map_err(|e| format!("read /proc/cpuinfo: {e}"))?;
        let cpu = cpu_model(&cpuinfo).unwrap_or("unknown").to_string();
        let out = std::process::Command::new(emulator)
            .arg("--version")
            .output()
            .map_err(|e| format!("run {} --version: {e}", emulator.display()))?;
        let qemu = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(KvmKey { kernel, cpu, qemu })
    }
}

/// The first `model name` in /proc/cpuinfo text.
fn cpu_model(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim())
    })
}

/// KVM that failed under a running guest on a node with `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvmFailure {
    pub key: KvmKey,
    /// What happened, in the launcher's words (e.g. the QEMU log's `KVM internal error`).
    pub reason: String,
    /// When it was recorded.
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The node's file of [`KvmFailure`]s: `kvm-verdicts.json` beside the capabilities seed.
pub struct KvmVerdicts {
    pub path: PathBuf,
}

/// The verdict file's name, in the directory of the capabilities seed.
pub const KVM_VERDICTS_FILE: &str = "kvm-verdicts.json";

impl KvmVerdicts {
    /// The verdicts kept beside `caps_seed` (the launcher's `--caps-seed`).
    pub fn beside(caps_seed: &Path) -> KvmVerdicts {
        KvmVerdicts {
            path: caps_seed.with_file_name(KVM_VERDICTS_FILE),
        }
    }

    /// Every recorded failure; none when the file does not exist.
    pub fn load(&self) -> Result<Vec<KvmFailure>, String> {
        match std::fs::read(&self.path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("read {}: {e}", self.path.display())),
        }
    }

    /// The failure recorded for `key`, if any.
    pub fn find(&self, key: &KvmKey) -> Result<Option<KvmFailure>, String> {
        Ok(self.load()?.into_iter().find(|f| &f.key == key))
    }

    /// Record that KVM failed on `key` (replacing an older verdict for the same key).
    pub fn record(&self, key: &KvmKey, reason: &str) -> Result<(), String> {
        let mut all = self.load().unwrap_or_default();
        all.retain(|f| &f.key != key);
        all.push(KvmFailure {
            key: key.clone(),
            reason: reason.to_string(),
            at: crate::control::types::now(),
        });
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        crate::control::write_json_atomic(&self.path, &all).map_err(|e| e.to_string())
    }
}

/// Decide the acceleration from the request and the probe result (pure).
pub fn choose(
    request: AccelerationRequest,
    kvm: Result<(), String>,
) -> Result<Acceleration, KvmUnusable> {
    match (request, kvm) {
        (AccelerationRequest::Emulation, _) => Ok(Acceleration::Tcg),
        (AccelerationRequest::Auto | AccelerationRequest::Kvm, Ok(())) => Ok(Acceleration::Kvm),
        (AccelerationRequest::Auto, Err(why)) => {
            tracing::info!(%why, "KVM not usable, using TCG");
            Ok(Acceleration::Tcg)
        }
        (AccelerationRequest::Kvm, Err(why)) => Err(KvmUnusable(why)),
    }
}

// ioctl numbers from <linux/kvm.h> (KVMIO = 0xAE).
nix::ioctl_write_int_bad!(kvm_get_api_version, nix::request_code_none!(0xAE, 0x00));
nix::ioctl_write_int_bad!(kvm_create_vm, nix::request_code_none!(0xAE, 0x01));
nix::ioctl_write_int_bad!(kvm_check_extension, nix::request_code_none!(0xAE, 0x03));
nix::ioctl_write_int_bad!(kvm_get_vcpu_mmap_size, nix::request_code_none!(0xAE, 0x04));
nix::ioctl_write_int_bad!(kvm_create_vcpu, nix::request_code_none!(0xAE, 0x41));

/// The stable KVM API version every KVM since Linux 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// Capabilities QEMU refuses to start without (`kvm_required_capabilites` plus x86's).
const REQUIRED_CAPS: [(i32, &str); 6] = [
    (3, "KVM_CAP_USER_MEMORY"),
    (21, "KVM_CAP_DESTROY_MEMORY_REGION_WORKS"),
    (30, "KVM_CAP_JOIN_MEMORY_REGIONS_WORKS"),
    (36, "KVM_CAP_IOEVENTFD"),
    (40, "KVM_CAP_INTERNAL_ERROR_DATA"),
    (122, "KVM_CAP_IOEVENTFD_ANY_LENGTH"),
];

/// Probe `device`: the API version, the capabilities QEMU needs, and that a VM with one
/// vCPU can be created. `Err` says why KVM is not usable.
pub fn probe_kvm(device: &Path) -> Result<(), String> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(device)
        .map_err(|e| format!("open {}: {e}", device.display()))?;
    let fd = dev.as_raw_fd();
    // SAFETY: `fd` is an open /dev/kvm descriptor; KVM_GET_API_VERSION takes no argument.
    let version =
        unsafe { kvm_get_api_version(fd, 0) }.map_err(|e| format!("KVM_GET_API_VERSION: {e}"))?;
    if version != KVM_API_VERSION {
        return Err(format!("KVM API version {version}, want {KVM_API_VERSION}"));
    }
    for (cap, name) in REQUIRED_CAPS {
        // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value.
        let has = unsafe { kvm_check_extension(fd, cap) }
            .map_err(|e| format!("KVM_CHECK_EXTENSION {name}: {e}"))?;
        if has <= 0 {
            return Err(format!("missing {name}"));
        }
    }
    // SAFETY: KVM_GET_VCPU_MMAP_SIZE takes no argument.
    let mmap = unsafe { kvm_get_vcpu_mmap_size(fd, 0) }
        .map_err(|e| format!("KVM_GET_VCPU_MMAP_SIZE: {e}"))?;
    if mmap <= 0 {
        return Err(format!("vCPU mmap size {mmap}"));
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0 = default) and returns a new fd.
    let vm = unsafe { kvm_create_vm(fd, 0) }.map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: `vm` was just returned by KVM_CREATE_VM and is owned by nobody else.
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };
    // SAFETY: KVM_CREATE_VCPU takes the vCPU id by value and returns a new fd.
    let vcpu = unsafe { kvm_create_vcpu(vm.as_raw_fd(), 0) }
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    // SAFETY: `vcpu` was just returned by KVM_CREATE_VCPU and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(vcpu) });
    Ok(())
}

/// How long the QEMU probe may take before KVM counts as unusable.
pub const QEMU_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Ask QEMU itself: create a stopped `pc` machine with `-accel kvm -cpu host` (what the
/// domain XML asks for) and quit at once. The ioctls can all pass while QEMU still fails
/// (e.g. a nested hypervisor refusing an MSR), so `auto` runs this after [`probe_kvm`].
/// Bounded by `timeout`; a QEMU that does not answer is killed and KVM counts as unusable.
pub fn probe_kvm_qemu(emulator: &Path, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(emulator)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "pc",
            "-nodefaults",
        ])
        .args(["-display", "none", "-S", "-monitor", "stdio", "-m", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", emulator.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n");
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("QEMU with KVM did not answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("wait for QEMU: {e}")),
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let err = err.trim();
    if status.success() && !err.contains("error") {
        Ok(())
    } else {
        Err(format!(
            "QEMU with KVM failed ({status}): {}",
            err.lines().next().unwrap_or("")
        ))
    }
}

/// Both probes: ioctls first (cheap), then QEMU.
pub fn kvm_usable(device: &Path, emulator: &Path) -> Result<(), String> {
    probe_kvm(device)?;
    probe_kvm_qemu(emulator, QEMU_PROBE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_follows_request_and_probe() {
        let bad = || Err("nope".to_string());
        assert_eq!(
            choose(AccelerationRequest::Auto, Ok(())).unwrap(),
            Acceleration::Kvm
        );
        assert_eq!(
            choose(AccelerationRequest::Auto, bad()).unwrap(),
            Acceleration::Tcg
        );
        assert_eq!(
            choose(AccelerationRequest::Emulation, Ok(())).unwrap(),
            Acceleration::Tcg
        );
        assert_eq!(
            choose(AccelerationRequest::Kvm, Ok(())).unwrap(),
            Acceleration::Kvm
        );
        let e = choose(AccelerationRequest::Kvm, bad()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) X\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(info), Some("Intel(R) Xeon(R) X"));
        assert_eq!(cpu_model("processor: 0\n"), None);
    }

    #[test]
    fn verdicts_are_kept_per_key_beside_the_caps_seed() {
        let dir = tempfile::tempdir().unwrap();
        let v = KvmVerdicts::beside(&dir.path().join("qemu-capabilities"));
        assert_eq!(v.path, dir.path().join(KVM_VERDICTS_FILE));
        let key = |k: &str| KvmKey {
            kernel: k.into(),
            cpu: "cpu".into(),
            qemu: "QEMU emulator version 7.2.0".into(),
        };
        assert_eq!(v.find(&key("6.1")).unwrap(), None, "no file: no verdict");
        v.record(&key("6.1"), "KVM internal error").unwrap();
        v.record(&key("6.2"), "other").unwrap();
        v.record(&key("6.1"), "KVM internal error again").unwrap();
        let all = v.load().unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            v.find(&key("6.1")).unwrap().unwrap().reason,
            "KVM internal error again"
        );
        assert_eq!(
            v.find(&key("6.3")).unwrap(),
            None,
            "another kernel: no verdict"
        );
        std::fs::write(&v.path, "not json").unwrap();
        let e = v.find(&key("6.1")).unwrap_err();
        assert!(e.contains(KVM_VERDICTS_FILE), "{e}");
    }

    #[test]
    fn this_nodes_key_names_kernel_cpu_and_qemu() {
        let e = KvmKey::of_this_node(Path::new("/nonexistent/qemu")).unwrap_err();
        assert!(e.contains("/nonexistent/qemu"), "{e}");
    }

    #[test]
    fn missing_device_is_unusable_with_reason() {
        let e = probe_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(e.contains("/nonexistent/kvm"), "{e}");
    }

    #[test]
    fn non_kvm_device_is_unusable() {
        let e = probe_kvm(Path::new("/dev/null")).unwrap_err();
        assert!(e.contains("KVM_GET_API_VERSION"), "{e}");
    }

    #[test]
    fn domain_types() {
        assert_eq!(domain_type(Acceleration::Kvm), "kvm");
        assert_eq!(domain_type(Acceleration::Tcg), "qemu");
    }

    /// A stand-in emulator that hangs (ignores `quit` on its monitor): the probe gives up
    /// after its timeout, says so, and the stand-in is killed and reaped.
    #[test]
    fn qemu_probe_gives_up_on_a_hanging_emulator_and_kills_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let emulator = dir.path().join("qemu-hangs");
        std::fs::write(
            &emulator,
            format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
                pid_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&emulator, std::fs::Permissions::from_mode(0o755)).unwrap();
        let timeout = std::time::Duration::from_secs(1);
        let started = std::time::Instant::now();
        let e = probe_kvm_qemu(&emulator, timeout).unwrap_err();
        let took = started.elapsed();
        assert_eq!(e, "QEMU with KVM did not answer within 1s");
        assert!(
            took >= timeout && took < std::time::Duration::from_secs(20),
            "{took:?}"
        );
        // (No pid file: it was killed before its first line ran.)
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            assert!(
                !Path::new("/proc").join(pid.trim()).exists(),
                "the hanging emulator (pid {}) is still there",
                pid.trim()
            );
        }
    }

    #[test]
    fn qemu_probe_reports_a_missing_emulator() {
        let e = probe_kvm_qemu(Path::new("/nonexistent/qemu"), QEMU_PROBE_TIMEOUT).unwrap_err();
        assert!(e.contains("/nonexistent/qemu"), "{e}");
    }
}
