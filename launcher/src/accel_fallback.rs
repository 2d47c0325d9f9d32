//! What the launcher makes of a domain that pauses or stops on its own, as pure
//! functions: why it paused (the launcher's own request, libvirt's reason, QEMU's log)
//! and whether that means KVM failed, so that `auto` boots the guest again under TCG and
//! `kvm` fails the VMI. The probes in `vmpod::domain::accel` decide before boot; this
//! decides after. No I/O: run.rs reads the log and acts.

use vmpod::api::AccelerationRequest;
use vmpod::control::{Acceleration, PauseReason};
use vmpod::domain::{PausedReason, StopReason};

/// What QEMU writes to its log when KVM fails: under the guest (`kvm_cpu_exec`), `KVM
/// internal error. Suberror: 1` then `emulation failure`; at start, an assertion or
/// error in its KVM code (`../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion`,
/// `accel/kvm/kvm-all.c`), which the probe normally catches first. libvirt refusing the
/// domain type (`Emulator ... does not support virt type 'kvm'`: its daemon, QEMU's
/// user, cannot open `/dev/kvm`) says the same before QEMU runs.
const KVM_FAILURE_MARKS: [&str; 5] = [
    "KVM internal error",
    "emulation failure",
    "kvm.c:",
    "kvm-all.c:",
    "does not support virt type 'kvm'",
];

/// The lines of QEMU's log (since the domain's start) that say KVM gave up, joined.
pub fn kvm_failure_in(qemu_log: &str) -> Option<String> {
    let lines: Vec<&str> = qemu_log
        .lines()
        .map(str::trim)
        .filter(|l| KVM_FAILURE_MARKS.iter().any(|m| l.contains(m)))
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// A pause, classified: the reason the status carries and the words for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    pub reason: PauseReason,
    pub message: String,
}

impl Pause {
    /// The pause the launcher asked for (the control API's).
    pub fn requested() -> Pause {
        Pause {
            reason: PauseReason::User,
            message: "paused on request".to_string(),
        }
    }
}

/// Why the domain paused: `requested` when the launcher asked for it (the control API's
/// pause), `libvirt` is libvirt's reason, `qemu_log` QEMU's log since the domain started.
pub fn classify_pause(requested: bool, libvirt: PausedReason, qemu_log: &str) -> Pause {
    if requested || libvirt == PausedReason::User {
        return Pause::requested();
    }
    let (reason, message) = if libvirt == PausedReason::IoError {
        (
            PauseReason::IoError,
            "paused by a disk I/O error (libvirt: ioerror)".to_string(),
        )
    } else if let Some(lines) = kvm_failure_in(qemu_log) {
        (
            PauseReason::KvmInternalError,
            format!("paused by QEMU: KVM gave up on the guest (QEMU log: {lines})"),
        )
    } else {
        (
            PauseReason::Unknown,
            format!("paused, nobody asked (libvirt's reason: {libvirt:?}; nothing in QEMU's log)"),
        )
    };
    Pause { reason, message }
}

/// The domain left `Running` on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interruption {
    Paused(Pause),
    /// QEMU ended; `kvm_failure` holds QEMU's log lines when they say KVM gave up.
    Stopped {
        reason: StopReason,
        kvm_failure: Option<String>,
    },
    /// The domain did not start (`error`, libvirt's words).
    StartFailed {
        error: String,
        kvm_failure: Option<String>,
    },
}

/// What the launcher does about an interruption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing: report it (a user's pause, an I/O error, the guest's own end).
    CarryOn,
    /// `auto` under KVM: destroy the domain, remember the verdict, boot it under TCG.
    BootUnderTcg { why: String },
    /// `kvm` was required and failed: the VMI fails with `why`.
    Fail { why: String },
}

/// Decide, from what was requested and what runs now (pure). Under KVM, a pause nobody
/// asked for that is not an I/O error (TCG would not fix a disk) counts as KVM failing,
/// and so do QEMU ending or failing to start when its log says KVM gave up; a QEMU
/// killed from outside or a start failing for another reason (a missing disk) does not.
pub fn after(request: AccelerationRequest, running: Acceleration, what: &Interruption) -> Next {
    if running != Acceleration::Kvm {
        return Next::CarryOn;
    }
    let why = match what {
        Interruption::Paused(Pause {
            reason: PauseReason::KvmInternalError | PauseReason::Unknown,
            message,
        }) => format!("KVM failed under the running guest: {message}"),
        Interruption::Stopped {
            reason,
            kvm_failure: Some(lines),
        } => format!("KVM failed under the running guest: QEMU stopped ({reason:?}): {lines}"),
        Interruption::StartFailed {
            error,
            kvm_failure: Some(lines),
        } => format!(
            "KVM failed as the domain started: {lines} ({})",
            error.lines().next().unwrap_or_default()
        ),
        Interruption::Paused(_)
        | Interruption::Stopped { .. }
        | Interruption::StartFailed { .. } => {
            return Next::CarryOn;
        }
    };
    match request {
        AccelerationRequest::Auto => Next::BootUnderTcg { why },
        AccelerationRequest::Kvm => Next::Fail { why },
        AccelerationRequest::Emulation => Next::CarryOn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVM_LOG: &str = "2026-11-30 16:01:02.123+0000: starting up libvirt version: 9.0.0\n\
        KVM internal error. Suberror: 1\n\
        extra data[0]: 0x0000000000000000\n\
        emulation failure\n\
        RAX=0000000000000000 RBX=ffffffff82a03e58\n";

    #[test]
    fn pause_reasons() {
        let c = classify_pause;
        assert_eq!(
            c(true, PausedReason::Unknown, KVM_LOG).reason,
            PauseReason::User
        );
        assert_eq!(c(false, PausedReason::User, "").reason, PauseReason::User);
        assert_eq!(
            c(false, PausedReason::IoError, "").reason,
            PauseReason::IoError
        );
        let kvm = c(false, PausedReason::Unknown, KVM_LOG);
        assert_eq!(kvm.reason, PauseReason::KvmInternalError);
        assert!(
            kvm.message
                .contains("KVM internal error. Suberror: 1; emulation failure"),
            "{}",
            kvm.message
        );
        // libvirt may call it crashed; QEMU's log still says what happened.
        assert_eq!(
            c(false, PausedReason::Crashed, KVM_LOG).reason,
            PauseReason::KvmInternalError
        );
        let unknown = c(false, PausedReason::Unknown, "starting up\n");
        assert_eq!(unknown.reason, PauseReason::Unknown);
        assert!(
            unknown.message.contains("nobody asked"),
            "{}",
            unknown.message
        );
    }

    fn paused(reason: PauseReason) -> Interruption {
        Interruption::Paused(Pause {
            reason,
            message: format!("{reason}"),
        })
    }

    /// QEMU 7.2 on a nested hypervisor that refuses an MSR the probe did not touch.
    const START_LOG: &str = "2026-11-30T16:41:27.584542Z qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
        qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";

    fn start_failed(log: &str) -> Interruption {
        Interruption::StartFailed {
            error: "libvirt: start domain d: qemu unexpectedly closed the monitor".into(),
            kvm_failure: kvm_failure_in(log),
        }
    }

    #[test]
    fn which_interruptions_abandon_kvm_per_request() {
        use AccelerationRequest::*;
        let stopped = |reason, log: &str| Interruption::Stopped {
            reason,
            kvm_failure: kvm_failure_in(log),
        };
        let kvm_failures = [
            paused(PauseReason::KvmInternalError),
            paused(PauseReason::Unknown),
            stopped(StopReason::Crashed, KVM_LOG),
            stopped(StopReason::Failed, KVM_LOG),
            start_failed(START_LOG),
        ];
        for what in &kvm_failures {
            match after(Auto, Acceleration::Kvm, what) {
                Next::BootUnderTcg { why } => assert!(why.contains("KVM failed"), "{why}"),
                other => panic!("{what:?}: {other:?}"),
            }
            match after(Kvm, Acceleration::Kvm, what) {
                Next::Fail { why } => assert!(why.contains("KVM failed"), "{why}"),
                other => panic!("{what:?}: {other:?}"),
            }
            // Already under TCG (emulation requested, or after the fallback): nothing.
            for request in [Auto, Emulation] {
                assert_eq!(after(request, Acceleration::Tcg, what), Next::CarryOn);
            }
        }
        let not_kvm = [
            paused(PauseReason::User),
            paused(PauseReason::IoError),
            stopped(StopReason::Shutdown, ""),
            stopped(StopReason::Destroyed, ""),
            // QEMU killed from outside: not KVM's doing.
            stopped(StopReason::Crashed, "starting up\n"),
            stopped(StopReason::Failed, ""),
            start_failed("Could not open '/nonexistent.img': No such file or directory\n"),
        ];
        for what in &not_kvm {
            for request in [Auto, Kvm] {
                assert_eq!(
                    after(request, Acceleration::Kvm, what),
                    Next::CarryOn,
                    "{what:?}"
                );
            }
        }
    }
}
