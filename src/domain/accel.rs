//! Acceleration: from what the VMI asks for ([`crate::api::Acceleration`]) and a probe of
//! `/dev/kvm` to what the domain runs with ([`crate::control::Acceleration`]): KVM only when
//! it really works, otherwise TCG. Probes with ioctls only; never starts QEMU and never
//! changes the system.

use crate::api::Acceleration as AccelRequest;
use crate::control::Acceleration;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// Decide the acceleration from the request and the probe result (pure).
pub fn choose(request: AccelRequest, kvm: Result<(), String>) -> Result<Acceleration, KvmUnusable> {
    match (request, kvm) {
        (AccelRequest::Emulation, _) => Ok(Acceleration::Tcg),
        (AccelRequest::Auto | AccelRequest::Kvm, Ok(())) => Ok(Acceleration::Kvm),
        (AccelRequest::Auto, Err(why)) => {
            tracing::info!(%why, "KVM not usable, using TCG");
            Ok(Acceleration::Tcg)
        }
        (AccelRequest::Kvm, Err(why)) => Err(KvmUnusable(why)),
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
            choose(AccelRequest::Auto, Ok(())).unwrap(),
            Acceleration::Kvm
        );
        assert_eq!(
            choose(AccelRequest::Auto, bad()).unwrap(),
            Acceleration::Tcg
        );
        assert_eq!(
            choose(AccelRequest::Emulation, Ok(())).unwrap(),
            Acceleration::Tcg
        );
        assert_eq!(
            choose(AccelRequest::Kvm, Ok(())).unwrap(),
            Acceleration::Kvm
        );
        let e = choose(AccelRequest::Kvm, bad()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
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
