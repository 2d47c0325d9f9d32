//! The JSON bodies of the control API. Plain data, no I/O. Field names are camelCase and
//! follow KubeVirt's VMI status where it has the same field (`interfaces[].ipAddress`).

use super::action::LifecycleAction;
use crate::dhcp::DhcpStats;
pub use crate::net::antispoof::AntiSpoofReport;
use crate::net::{Binding, CachedInterface, InterfaceFacts, MacAddr, NetOp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Where the VM is in its life, as the launcher sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The launcher is preparing the network, DHCP and libvirt.
    Pending,
    /// The domain is defined and being started.
    Scheduled,
    /// The domain runs.
    Running,
    /// The domain is paused (its vCPUs are stopped).
    Paused,
    /// The guest powered off (or was shut down) cleanly.
    Succeeded,
    /// The domain crashed, was killed, or the launcher could not start it.
    Failed,
}

impl Phase {
    /// True once the VM will not run again under this launcher.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// The name as it appears in JSON and in `vmpodctl get`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduled => "Scheduled",
            Phase::Running => "Running",
            Phase::Paused => "Paused",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action the VM's phase forbids; the control API answers it with 409.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a VM in phase {phase}", action.name())]
pub struct Conflict {
    pub phase: Phase,
    pub action: LifecycleAction,
}

impl Phase {
    /// The lifecycle state machine, the one table of it: the phase `action` leads to from
    /// this one once the domain has done it, or the [`Conflict`] that refuses it.
    ///
    /// Pause needs a running VM, resume a paused one. Shutdown and kill apply to a VM
    /// whose domain exists (scheduled, running or paused) and end it `Succeeded`: libvirt
    /// reports a destroyed domain as stopped by request, not as a failure. A pending VM
    /// (no domain yet) and a terminal one refuse everything.
    pub fn apply(self, action: LifecycleAction) -> Result<Phase, Conflict> {
        use LifecycleAction::*;
        match (self, action) {
            (Phase::Running, Pause) => Ok(Phase::Paused),
            (Phase::Paused, Resume) => Ok(Phase::Running),
            (Phase::Scheduled | Phase::Running | Phase::Paused, Shutdown { .. } | Kill) => {
                Ok(Phase::Succeeded)
            }
            (phase, action) => Err(Conflict { phase, action }),
        }
    }
}

/// How QEMU runs the guest's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceleration {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl fmt::Display for Acceleration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Acceleration::Kvm => "kvm",
            Acceleration::Tcg => "tcg",
        })
    }
}

/// Why the VM is paused. Names follow KubeVirt's `Paused` condition reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PauseReason {
    /// Someone asked: the control API's pause (or libvirt's suspend).
    User,
    /// A disk I/O error stopped the vCPUs.
    #[serde(rename = "IOError")]
    IoError,
    /// KVM gave up on the guest: QEMU's log says `KVM internal error`.
    #[serde(rename = "KVMInternalError")]
    KvmInternalError,
    /// Nobody asked, and neither libvirt nor QEMU's log says why.
    Unknown,
}

impl PauseReason {
    /// The name as it appears in JSON and in `vmpodctl get`.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::User => "User",
            PauseReason::IoError => "IOError",
            PauseReason::KvmInternalError => "KVMInternalError",
            PauseReason::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM interface, shaped like KubeVirt's `status.interfaces[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    /// The VMI's interface name (`spec.domain.devices.interfaces[].name`).
    pub name: String,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The pod interface behind it, e.g. `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// The first address in `ip_addresses`, for KubeVirt compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,
    /// Every address the guest holds on this interface (the pod's, with the bridge binding).
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
}

/// `GET /v1/status`: the launcher's view of its VM. Also written to `status.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherStatus {
    /// The VMI's `metadata.name`.
    pub name: String,
    /// The VMI's `metadata.namespace`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub phase: Phase,
    /// Why the phase is what it is, in words (e.g. the crash reason for `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the launcher started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the domain first reached `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<Time>,
    /// When the domain reached `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// `kvm` or `tcg`, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<Acceleration>,
    /// Why the VM runs under TCG although KVM was allowed (`auto`): the probe's
    /// refusal, KVM failing under the running guest, or the node's remembered verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration_reason: Option<String>,
    /// Why the VM is paused, while the phase is `Paused` (`reason` says it in words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<PauseReason>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    /// The launcher's process id.
    pub pid: u32,
    /// QEMU's process id, while the domain runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
    /// The libvirt domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl LauncherStatus {
    /// A fresh `Pending` status for VMI `name`, started now by this process.
    pub fn pending(name: impl Into<String>) -> Self {
        LauncherStatus {
            name: name.into(),
            namespace: None,
            phase: Phase::Pending,
            reason: None,
            started_at: Some(now()),
            running_at: None,
            finished_at: None,
            acceleration: None,
            acceleration_reason: None,
            pause_reason: None,
            interfaces: Vec::new(),
            pid: std::process::id(),
            qemu_pid: None,
            domain: None,
        }
    }

    /// Move to `phase` and stamp `running_at` / `finished_at` the first time it applies.
    /// Leaving `Paused` clears the pause reason.
    pub fn set_phase(&mut self, phase: Phase, reason: Option<String>) {
        self.phase = phase;
        self.reason = reason;
        if phase != Phase::Paused {
            self.pause_reason = None;
        }
        if phase == Phase::Running && self.running_at.is_none() {
            self.running_at = Some(now());
        }
        if phase.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(now());
        }
    }

    /// The first guest address over all interfaces, for one-line displays.
    pub fn first_ip(&self) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .find_map(|i| i.ip_address.or_else(|| i.ip_addresses.first().copied()))
    }
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `GET /v1/network`: per pod interface, what was found, what was done and DHCP's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkReport {
    pub interfaces: Vec<InterfaceReport>,
}

/// One pod interface in [`NetworkReport`]: the net module's cache entry as the report
/// sees it, plus the DHCP server's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceReport {
    /// The VMI network name (`spec.networks[].name`).
    pub name: String,
    pub binding: Binding,
    /// What discovery found on the pod interface before the rewire (the cached facts).
    pub facts: InterfaceFacts,
    /// The operations applied to the pod interface, in order; empty until an apply
    /// completed.
    pub plan: Vec<NetOp>,
    /// The DHCP server's lease and counters; absent when no server runs for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpStats>,
    /// The DHCPv6 server's lease and counters and the router advertisements sent;
    /// absent in an IPv4-only pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<crate::dhcp::v6::service::Ipv6Report>,
    /// Why the pod has IPv6 but the VM gets none ([`CachedInterface::ipv6_off`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_off: Option<String>,
    /// The tap's anti-spoofing rules and what they dropped; absent when the plan
    /// installed none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_spoofing: Option<AntiSpoofReport>,
}

impl InterfaceReport {
    /// The anti-spoofing table the applied plan installed, if any.
    pub fn anti_spoof_table(&self) -> Option<&str> {
        self.plan.iter().find_map(|op| match op {
            NetOp::AntiSpoof(a) => Some(a.table.as_str()),
            _ => None,
        })
    }

    /// The report for VMI network `name` from its cache entry and DHCP stats.
    pub fn new(name: impl Into<String>, cached: &CachedInterface, dhcp: Option<DhcpStats>) -> Self {
        InterfaceReport {
            name: name.into(),
            binding: cached.binding,
            facts: cached.facts.clone(),
            plan: cached.applied.clone(),
            dhcp,
            ipv6: None,
            ipv6_off: cached.ipv6_off.clone(),
            anti_spoofing: None,
        }
    }
}

/// The body of every error response: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The optional body of `POST /v1/shutdown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Seconds to wait for the guest's ACPI power-off before destroying the domain;
    /// the VMI's `terminationGracePeriodSeconds` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table: every (phase, action) pair and what it gives.
    #[test]
    fn phase_apply_table() {
        use LifecycleAction::*;
        use Phase::*;
        let shutdown = Shutdown {
            grace_period_seconds: Some(3),
        };
        let table: [(Phase, [Option<Phase>; 4]); 6] = [
            //          pause         resume         shutdown         kill
            (Pending, [None, None, None, None]),
            (Scheduled, [None, None, Some(Succeeded), Some(Succeeded)]),
            (
                Running,
                [Some(Paused), None, Some(Succeeded), Some(Succeeded)],
            ),
            (
                Paused,
                [None, Some(Running), Some(Succeeded), Some(Succeeded)],
            ),
            (Succeeded, [None, None, None, None]),
            (Failed, [None, None, None, None]),
        ];
        for (phase, expected) in table {
            for (action, want) in [Pause, Resume, shutdown, Kill].into_iter().zip(expected) {
                let got = phase.apply(action);
                match want {
                    Some(next) => assert_eq!(got, Ok(next), "{phase} + {}", action.name()),
                    None => assert_eq!(
                        got,
                        Err(Conflict { phase, action }),
                        "{phase} + {}",
                        action.name()
                    ),
                }
            }
        }
    }

    #[test]
    fn conflict_names_the_action_and_the_phase() {
        let e = Phase::Running.apply(LifecycleAction::Resume).unwrap_err();
        assert_eq!(e.to_string(), "cannot resume a VM in phase Running");
        let e = Phase::Pending.apply(LifecycleAction::Kill).unwrap_err();
        assert_eq!(e.to_string(), "cannot kill a VM in phase Pending");
    }

    #[test]
    fn set_phase_stamps_running_and_finished_once() {
        let mut s = LauncherStatus::pending("vm1");
        assert!(s.running_at.is_none() && s.finished_at.is_none());
        s.set_phase(Phase::Running, None);
        let running = s.running_at.clone().expect("running_at set");
        s.set_phase(Phase::Paused, None);
        s.pause_reason = Some(PauseReason::KvmInternalError);
        s.set_phase(Phase::Running, None);
        assert_eq!(s.pause_reason, None, "running again: no pause reason");
        assert_eq!(s.running_at, Some(running));
        s.set_phase(Phase::Failed, Some("crashed".into()));
        assert!(s.finished_at.is_some());
        assert_eq!(s.reason.as_deref(), Some("crashed"));
    }

    #[test]
    fn status_json_uses_kubevirt_field_names() {
        let mut s = LauncherStatus::pending("vm1");
        s.acceleration = Some(Acceleration::Tcg);
        s.interfaces.push(InterfaceStatus {
            name: "default".into(),
            mac: "02:00:00:aa:bb:cc".parse().unwrap(),
            interface_name: Some("eth0".into()),
            ip_address: Some("10.0.0.5".parse().unwrap()),
            ip_addresses: vec!["10.0.0.5".parse().unwrap()],
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Pending");
        assert_eq!(v["acceleration"], "tcg");
        assert_eq!(v["interfaces"][0]["ipAddress"], "10.0.0.5");
        assert_eq!(v["interfaces"][0]["interfaceName"], "eth0");
        assert!(v.get("pauseReason").is_none(), "absent unless paused: {v}");
        s.phase = Phase::Paused;
        s.pause_reason = Some(PauseReason::KvmInternalError);
        s.acceleration_reason = Some("KVM failed late".into());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["pauseReason"], "KVMInternalError");
        assert_eq!(v["accelerationReason"], "KVM failed late");
        assert!(v["startedAt"].as_str().unwrap().ends_with('Z'));
        let back: LauncherStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back.first_ip(), Some("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn shutdown_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<ShutdownRequest>(r#"{"grace": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `grace`"), "{err}");
        let ok: ShutdownRequest = serde_json::from_str(r#"{"gracePeriodSeconds": 3}"#).unwrap();
        assert_eq!(ok.grace_period_seconds, Some(3));
    }
}
