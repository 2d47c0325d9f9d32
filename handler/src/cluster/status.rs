//! VMI status from what the cluster and the launcher say, as pure functions.
//!
//! Two writers share `status`, as in KubeVirt: the controller (from the launcher pod:
//! Pending -> Scheduling -> Scheduled, and the pod's final phase) and the node daemon (from
//! the launcher's own status: Running, Succeeded, Failed, interfaces, conditions). Both go
//! through [`advance`], which never moves the phase backwards and never leaves a final
//! phase, so the two cannot undo each other; and both patch with the resourceVersion they
//! read, so a stale writer gets a 409 and recomputes.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use vmpod::api::{
    FieldError, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiCondition,
    VmiInterfaceStatus, VmiPhase,
};
use vmpod::control::{LauncherStatus, PauseReason, Phase};

/// Condition: the VM runs and the launcher answers.
pub const READY: &str = "Ready";
/// Condition: the VM's vCPUs are paused.
pub const PAUSED: &str = "Paused";
/// Condition: the VMI could be turned into a launcher pod (False with the spec errors).
pub const SYNCHRONIZED: &str = "Synchronized";

fn rank(p: VmiPhase) -> u8 {
    match p {
        VmiPhase::Pending => 0,
        VmiPhase::Scheduling => 1,
        VmiPhase::Scheduled => 2,
        VmiPhase::Running => 3,
        VmiPhase::Succeeded | VmiPhase::Failed => 4,
    }
}

/// True when `phase` is `min` or later.
pub fn at_least(phase: Option<VmiPhase>, min: VmiPhase) -> bool {
    phase.is_some_and(|p| rank(p) >= rank(min))
}

/// The later of `current` and `proposed`; a final phase never changes.
pub fn advance(current: Option<VmiPhase>, proposed: VmiPhase) -> VmiPhase {
    match current {
        Some(c) if c.is_final() => c,
        Some(c) if rank(c) > rank(proposed) => c,
        _ => proposed,
    }
}

fn set_phase(
    status: &mut VirtualMachineInstanceStatus,
    proposed: VmiPhase,
    reason: Option<String>,
) {
    let next = advance(status.phase, proposed);
    if status.phase != Some(next) {
        status.reason = if next == proposed { reason } else { None };
    }
    status.phase = Some(next);
}

/// Set condition `kind`, keeping `lastTransitionTime` when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<VmiCondition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: Option<String>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.condition_type == kind);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    let cond = VmiCondition {
        condition_type: kind.to_string(),
        status,
        last_probe_time: None,
        last_transition_time: transition,
        reason: Some(reason.to_string()),
        message,
    };
    match existing {
        Some(c) => *c = cond,
        None => conditions.push(cond),
    }
}

fn remove_condition(conditions: &mut Vec<VmiCondition>, kind: &str) {
    conditions.retain(|c| c.condition_type != kind);
}

/// The controller's view: the VMI's phase follows its launcher pod. `pod` is `None` before
/// the pod exists, or when it vanished (a VMI already Scheduled then fails).
pub fn controller_status(
    vmi: &VirtualMachineInstance,
    pod_name: &str,
    pod: Option<&Pod>,
) -> VirtualMachineInstanceStatus {
    let mut st = vmi.status.clone().unwrap_or_default();
    st.launcher_pod = Some(pod_name.to_string());
    let Some(pod) = pod else {
        match st.phase {
            p if at_least(p, VmiPhase::Scheduled) => {
                set_phase(&mut st, VmiPhase::Failed, Some("LauncherPodLost".into()))
            }
            _ => set_phase(&mut st, VmiPhase::Pending, None),
        }
        return st;
    };
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        st.node_name = Some(node);
    }
    let pod_status = pod.status.as_ref();
    match pod_status.and_then(|s| s.phase.as_deref()) {
        None | Some("Pending") => set_phase(&mut st, VmiPhase::Scheduling, None),
        Some("Running") => set_phase(&mut st, VmiPhase::Scheduled, None),
        Some("Succeeded") => set_phase(&mut st, VmiPhase::Succeeded, None),
        Some("Failed") => {
            let reason = pod_status
                .and_then(|s| s.reason.clone())
                .unwrap_or_else(|| "LauncherPodFailed".into());
            set_phase(&mut st, VmiPhase::Failed, Some(reason));
        }
        Some(_) => {} // Unknown: the node is unreachable; keep what we had.
    }
    if st.phase.is_some_and(VmiPhase::is_final) {
        remove_condition(&mut st.conditions, READY);
    }
    st
}

/// The controller's verdict on a VMI that cannot become a pod: Failed, with every spec
/// error in the `Synchronized` condition.
pub fn invalid_status(
    vmi: &VirtualMachineInstance,
    errors: &[FieldError],
    now: &Time,
) -> VirtualMachineInstanceStatus {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    failed_status(vmi, "InvalidSpec", message, now)
}

/// Failed for `reason`, with `message` in the `Synchronized` condition: the controller
/// cannot make the VMI's objects and retrying will not change that.
pub fn failed_status(
    vmi: &VirtualMachineInstance,
    reason: &str,
    message: String,
    now: &Time,
) -> VirtualMachineInstanceStatus {
    let mut st = vmi.status.clone().unwrap_or_default();
    set_phase(&mut st, VmiPhase::Failed, Some(reason.into()));
    set_condition(
        &mut st.conditions,
        SYNCHRONIZED,
        false,
        reason,
        Some(message),
        now,
    );
    st
}

/// The node daemon's view: the launcher's status (or why it could not be read) on top of the
/// current VMI status.
pub fn node_status(
    vmi: &VirtualMachineInstance,
    pod: &Pod,
    launcher: Result<&LauncherStatus, &str>,
    now: &Time,
) -> VirtualMachineInstanceStatus {
    let mut st = vmi.status.clone().unwrap_or_default();
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        st.node_name = Some(node);
    }
    if let Some(name) = &pod.metadata.name {
        st.launcher_pod = Some(name.clone());
    }
    let ls = match launcher {
        Ok(ls) => ls,
        Err(why) => {
            if !st.phase.is_some_and(VmiPhase::is_final) {
                set_condition(
                    &mut st.conditions,
                    READY,
                    false,
                    "LauncherUnreachable",
                    Some(why.to_string()),
                    now,
                );
            }
            return st;
        }
    };
    let proposed = match ls.phase {
        Phase::Pending | Phase::Scheduled => VmiPhase::Scheduled,
        Phase::Running | Phase::Paused => VmiPhase::Running,
        Phase::Succeeded => VmiPhase::Succeeded,
        Phase::Failed => VmiPhase::Failed,
    };
    let reason = (ls.phase == Phase::Failed).then(|| {
        ls.reason
            .clone()
            .unwrap_or_else(|| "LauncherReportsFailed".into())
    });
    set_phase(&mut st, proposed, reason);
    st.interfaces = ls
        .interfaces
        .iter()
        .map(|i| VmiInterfaceStatus {
            name: Some(i.name.clone()),
            mac: Some(i.mac.to_string()),
            ip_address: i
                .ip_address
                .or_else(|| i.ip_addresses.first().copied())
                .map(|a| a.to_string()),
            ip_addresses: i.ip_addresses.iter().map(ToString::to_string).collect(),
        })
        .collect();
    if st.phase.is_some_and(VmiPhase::is_final) {
        remove_condition(&mut st.conditions, READY);
        remove_condition(&mut st.conditions, PAUSED);
        return st;
    }
    let running = ls.phase == Phase::Running;
    set_condition(
        &mut st.conditions,
        READY,
        running,
        if running {
            "LauncherReportsRunning"
        } else {
            "LauncherNotRunning"
        },
        (!running).then(|| format!("launcher phase {}", ls.phase)),
        now,
    );
    if ls.phase == Phase::Paused {
        let reason = paused_condition_reason(ls.pause_reason);
        set_condition(
            &mut st.conditions,
            PAUSED,
            true,
            reason,
            ls.reason.clone(),
            now,
        );
    } else {
        remove_condition(&mut st.conditions, PAUSED);
    }
    st
}

/// The `Paused` condition's reason for why the launcher says the VM is paused (KubeVirt's
/// `PausedByUser` and `PausedIOError`, and the same shape for the others).
pub fn paused_condition_reason(why: Option<PauseReason>) -> &'static str {
    match why {
        Some(PauseReason::User) => "PausedByUser",
        Some(PauseReason::IoError) => "PausedIOError",
        Some(PauseReason::KvmInternalError) => "PausedKVMInternalError",
        Some(PauseReason::Unknown) | None => "PausedUnknown",
    }
}

/// A JSON merge patch turning `current` into `desired`, guarded by `resource_version`
/// (the API server answers 409 when the object changed since it was read). Top-level
/// status fields that `desired` drops are set to null so they are removed.
pub fn status_patch(
    current: Option<&VirtualMachineInstanceStatus>,
    desired: &VirtualMachineInstanceStatus,
    resource_version: Option<&str>,
) -> Value {
    let mut status = serde_json::to_value(desired).expect("a status serialises");
    if let (Some(cur), Value::Object(map)) = (current, &mut status)
        && let Value::Object(cur) = serde_json::to_value(cur).expect("a status serialises")
    {
        for key in cur.keys() {
            map.entry(key.clone()).or_insert(Value::Null);
        }
    }
    let mut patch = json!({ "status": status });
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod::control::InterfaceStatus;

    fn time(s: &str) -> Time {
        serde_json::from_value(json!(s)).unwrap()
    }

    fn vmi_with(phase: Option<VmiPhase>) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm1", Default::default());
        v.status = phase.map(|p| VirtualMachineInstanceStatus {
            phase: Some(p),
            ..Default::default()
        });
        v
    }

    fn pod(phase: Option<&str>, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "vmpod-launcher-vm1"},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "reason": phase.filter(|p| *p == "Failed").map(|_| "Evicted")},
        }))
        .unwrap()
    }

    fn launcher(phase: Phase) -> LauncherStatus {
        let mut ls = LauncherStatus::pending("vm1");
        ls.phase = phase;
        ls.interfaces = vec![InterfaceStatus {
            name: "default".into(),
            mac: "02:00:00:00:00:07".parse().unwrap(),
            interface_name: Some("eth0".into()),
            ip_address: None,
            ip_addresses: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
        }];
        ls
    }

    #[test]
    fn phases_never_go_backwards_and_final_is_final() {
        use VmiPhase::*;
        assert_eq!(advance(None, Pending), Pending);
        assert_eq!(advance(Some(Pending), Scheduled), Scheduled);
        assert_eq!(advance(Some(Running), Scheduled), Running);
        assert_eq!(advance(Some(Failed), Running), Failed);
        assert_eq!(advance(Some(Succeeded), Failed), Succeeded);
        assert_eq!(advance(Some(Running), Failed), Failed);
    }

    #[test]
    fn controller_phase_follows_the_pod() {
        use VmiPhase::*;
        let cases = [
            (None, None, None, Pending),
            (None, Some(None), None, Scheduling),
            (None, Some(Some("Pending")), Some("n1"), Scheduling),
            (
                Some(Scheduling),
                Some(Some("Running")),
                Some("n1"),
                Scheduled,
            ),
            (Some(Running), Some(Some("Running")), Some("n1"), Running),
            (
                Some(Running),
                Some(Some("Succeeded")),
                Some("n1"),
                Succeeded,
            ),
            (Some(Running), Some(Some("Failed")), Some("n1"), Failed),
            (
                Some(Scheduled),
                Some(Some("Unknown")),
                Some("n1"),
                Scheduled,
            ),
            (Some(Running), None, None, Failed),
        ];
        for (current, pod_phase, node, want) in cases {
            let p = pod_phase.map(|ph| pod(ph, node));
            let st = controller_status(&vmi_with(current), "vmpod-launcher-vm1", p.as_ref());
            assert_eq!(st.phase, Some(want), "{current:?} + pod {pod_phase:?}");
            assert_eq!(st.launcher_pod.as_deref(), Some("vmpod-launcher-vm1"));
            assert_eq!(st.node_name.as_deref(), node);
        }
        let st = controller_status(&vmi_with(Some(VmiPhase::Running)), "p", None);
        assert_eq!(st.reason.as_deref(), Some("LauncherPodLost"));
        let failed = pod(Some("Failed"), Some("n1"));
        let st = controller_status(&vmi_with(Some(VmiPhase::Running)), "p", Some(&failed));
        assert_eq!(st.reason.as_deref(), Some("Evicted"));
    }

    #[test]
    fn node_status_reports_interfaces_and_ready() {
        let now = time("2026-11-23T12:00:00Z");
        let vmi = vmi_with(Some(VmiPhase::Scheduled));
        let p = pod(Some("Running"), Some("n1"));
        let st = node_status(&vmi, &p, Ok(&launcher(Phase::Running)), &now);
        assert_eq!(st.phase, Some(VmiPhase::Running));
        assert_eq!(st.node_name.as_deref(), Some("n1"));
        let i = &st.interfaces[0];
        assert_eq!(i.name.as_deref(), Some("default"));
        assert_eq!(i.mac.as_deref(), Some("02:00:00:00:00:07"));
        assert_eq!(i.ip_address.as_deref(), Some("10.0.0.7"));
        assert_eq!(i.ip_addresses, ["10.0.0.7", "fd00::7"]);
        let ready = &st.conditions[0];
        assert_eq!(
            (ready.condition_type.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready.last_transition_time, Some(now.clone()));

        // Same status later: the transition time stays.
        let mut vmi = vmi;
        vmi.status = Some(st.clone());
        let later = time("2026-11-23T12:05:00Z");
        let again = node_status(&vmi, &p, Ok(&launcher(Phase::Running)), &later);
        assert_eq!(again, st, "nothing changed, nothing to patch");

        // Paused: still Running, Ready False, Paused True.
        let paused = node_status(&vmi, &p, Ok(&launcher(Phase::Paused)), &later);
        assert_eq!(paused.phase, Some(VmiPhase::Running));
        let kinds: Vec<_> = paused
            .conditions
            .iter()
            .map(|c| (c.condition_type.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(kinds, [("Ready", "False"), ("Paused", "True")]);
        assert_eq!(
            paused.conditions[0].last_transition_time,
            Some(later.clone())
        );
        assert_eq!(
            paused.conditions[1].reason.as_deref(),
            Some("PausedUnknown")
        );
        // A pause nobody asked for carries its reason and the launcher's words.
        let mut kvm = launcher(Phase::Paused);
        kvm.pause_reason = Some(PauseReason::KvmInternalError);
        kvm.reason = Some("paused by QEMU: KVM gave up on the guest".into());
        let paused = node_status(&vmi, &p, Ok(&kvm), &later);
        assert_eq!(
            paused.conditions[1].reason.as_deref(),
            Some("PausedKVMInternalError")
        );
        assert_eq!(paused.conditions[1].message, kvm.reason);
        kvm.pause_reason = Some(PauseReason::User);
        let paused = node_status(&vmi, &p, Ok(&kvm), &later);
        assert_eq!(paused.conditions[1].reason.as_deref(), Some("PausedByUser"));
        assert_eq!(
            paused_condition_reason(Some(PauseReason::IoError)),
            "PausedIOError"
        );

        // Unreachable: phase and interfaces kept, Ready False with the reason.
        let lost = node_status(&vmi, &p, Err("connection refused"), &later);
        assert_eq!(lost.phase, Some(VmiPhase::Running));
        assert_eq!(lost.interfaces, st.interfaces);
        assert_eq!(
            lost.conditions[0].reason.as_deref(),
            Some("LauncherUnreachable")
        );
        assert_eq!(
            lost.conditions[0].message.as_deref(),
            Some("connection refused")
        );

        // The VM stopped: Succeeded, no Ready condition.
        let done = node_status(&vmi, &p, Ok(&launcher(Phase::Succeeded)), &later);
        assert_eq!(done.phase, Some(VmiPhase::Succeeded));
        assert!(done.conditions.is_empty());
    }

    #[test]
    fn launcher_pending_is_scheduled_and_never_regresses_running() {
        let now = time("2026-11-23T12:00:00Z");
        let p = pod(Some("Running"), Some("n1"));
        for (current, want) in [
            (VmiPhase::Scheduling, VmiPhase::Scheduled),
            (VmiPhase::Running, VmiPhase::Running),
        ] {
            let pending = launcher(Phase::Pending);
            let st = node_status(&vmi_with(Some(current)), &p, Ok(&pending), &now);
            assert_eq!(
                st.phase,
                Some(want),
                "{current:?} with the launcher pending"
            );
        }
        let mut failed = launcher(Phase::Failed);
        failed.reason = Some("qemu crashed".into());
        let st = node_status(&vmi_with(Some(VmiPhase::Running)), &p, Ok(&failed), &now);
        assert_eq!(
            (st.phase, st.reason.as_deref()),
            (Some(VmiPhase::Failed), Some("qemu crashed"))
        );
    }

    #[test]
    fn invalid_spec_fails_with_every_error() {
        let now = time("2026-11-23T12:00:00Z");
        let errors = [
            FieldError::new("spec.domain.memory.guest", r#""lots" is not a quantity"#),
            FieldError::new("spec.volumes[0]", "x"),
        ];
        let st = invalid_status(&vmi_with(None), &errors, &now);
        assert_eq!(st.phase, Some(VmiPhase::Failed));
        assert_eq!(st.reason.as_deref(), Some("InvalidSpec"));
        assert_eq!(
            st.conditions[0].message.as_deref(),
            Some(r#"spec.domain.memory.guest: "lots" is not a quantity; spec.volumes[0]: x"#)
        );
    }

    #[test]
    fn patch_carries_resource_version_and_nulls_dropped_fields() {
        let current = VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Running),
            reason: Some("x".into()),
            ..Default::default()
        };
        let desired = VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Failed),
            node_name: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(
            status_patch(Some(&current), &desired, Some("42")),
            json!({"metadata": {"resourceVersion": "42"},
                   "status": {"phase": "Failed", "nodeName": "n1", "reason": null}})
        );
        assert_eq!(
            status_patch(None, &desired, None),
            json!({"status": {"phase": "Failed", "nodeName": "n1"}})
        );
    }
}
