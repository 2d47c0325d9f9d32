//! What a libvirt domain does, as the launcher sees it: lifecycle events
//! ([`DomainEvent`]), why it paused or stopped, and the state those events lead to
//! ([`DomainState`], a pure state machine). Plain data, no libvirt: the vmpod-virt crate
//! (launcher/virt) maps libvirt's events onto these and sends them to the launcher.

use serde::{Deserialize, Serialize};

/// Why a domain stopped (libvirt's `VIR_DOMAIN_EVENT_STOPPED_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopReason {
    /// The guest powered off.
    Shutdown,
    /// Destroyed from the host.
    Destroyed,
    /// QEMU died.
    Crashed,
    Migrated,
    Saved,
    /// The emulator failed.
    Failed,
    FromSnapshot,
    Unknown,
}

/// Why libvirt says the domain is paused: its `VIR_DOMAIN_PAUSED_*` state reason, read
/// with `virDomainGetState` when the suspended event arrives. A KVM internal error
/// (QEMU stops the VM after `KVM internal error. Suberror: ...`) shows as `Unknown`:
/// libvirt sees QEMU's STOP without a cause of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PausedReason {
    /// `virDomainSuspend` (the launcher's pause action, or `virsh suspend`).
    User,
    /// A disk I/O error with `error_policy` stop.
    IoError,
    /// The guest panicked or QEMU stopped the VM on an internal error it reported.
    Crashed,
    /// A libvirt operation paused it (save, dump, snapshot, migration, start-up, ...).
    Operation,
    /// libvirt does not know why QEMU stopped (also: the domain was no longer paused
    /// when asked).
    Unknown,
}

/// A domain lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DomainEvent {
    Defined,
    Undefined,
    Started,
    /// Suspended; the reason is filled in from libvirt's state reason (the lifecycle
    /// event's own detail says `PAUSED` both for a user's pause and a KVM failure).
    Paused(PausedReason),
    Resumed,
    /// The guest began to shut down (ACPI power button seen, or guest-initiated).
    ShuttingDown,
    Stopped(StopReason),
    /// The guest crashed (panic device); QEMU may still be running.
    Crashed,
    Other {
        event: i32,
        detail: i32,
    },
}

/// Where the domain is, as the status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DomainState {
    Pending,
    Running,
    Paused,
    ShuttingDown,
    Stopped(StopReason),
    Crashed,
}

impl DomainState {
    /// The state after `event` (pure).
    pub fn after(self, event: DomainEvent) -> Self {
        match event {
            DomainEvent::Started | DomainEvent::Resumed => DomainState::Running,
            DomainEvent::Paused(_) => DomainState::Paused,
            DomainEvent::ShuttingDown => DomainState::ShuttingDown,
            DomainEvent::Stopped(r) => DomainState::Stopped(r),
            DomainEvent::Crashed => DomainState::Crashed,
            DomainEvent::Defined | DomainEvent::Undefined | DomainEvent::Other { .. } => self,
        }
    }

    /// True once the domain is gone for good.
    pub fn is_final(self) -> bool {
        matches!(self, DomainState::Stopped(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        let s = DomainState::Pending.after(DomainEvent::Started);
        assert_eq!(s, DomainState::Running);
        assert_eq!(
            s.after(DomainEvent::Paused(PausedReason::User)),
            DomainState::Paused
        );
        assert_eq!(
            s.after(DomainEvent::Other {
                event: 0,
                detail: 0
            }),
            DomainState::Running
        );
        let end = s.after(DomainEvent::Stopped(StopReason::Shutdown));
        assert!(end.is_final());
        assert!(!s.after(DomainEvent::ShuttingDown).is_final());
    }
}
