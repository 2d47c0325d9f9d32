//! The launcher Pod on the runner: the test guest's VMI (kernelBoot.container and a
//! containerDisk from `localhost/vmpod-testguest:dev`, cloud-init, a macAddress, TCG),
//! booting it, reading its console from the scratch emptyDir, and checking that nothing
//! of the pod is left on the host afterwards. Shared by the render-pod path
//! (tests/cluster_launcher.rs) and the controller path (handler's cluster tests).

use super::{ClusterNode, RunningPod};
use crate::support::guest::GuestReport;
use k8s_openapi::api::core::v1::{Pod, Secret};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test guest image (manifests/build-image.sh).
pub const TESTGUEST_IMAGE: &str = "localhost/vmpod-testguest:dev";
/// The MAC the test VMIs ask for.
pub const GUEST_MAC: &str = "02:00:00:0a:58:11";
/// A guest boot under TCG on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(240);

/// The test guest's VMI booted from [`TESTGUEST_IMAGE`] (see
/// [`crate::support::launcher::guest_vmi`]), with `mac` as the interface's `macAddress`.
pub fn testguest_vmi(
    name: &str,
    user_data: &str,
    hold: bool,
    grace: u32,
    mac: Option<&str>,
) -> String {
    use crate::support::launcher::{GuestBoot, guest_vmi};
    guest_vmi(
        name,
        user_data,
        hold,
        grace,
        GuestBoot::Image(TESTGUEST_IMAGE),
        mac,
    )
}

impl crate::support::launcher::GuestHost for &LauncherPod {
    fn console(&self) -> String {
        LauncherPod::console(self)
    }

    fn diagnostics(&self) -> String {
        LauncherPod::diagnostics(self)
    }

    fn ended(&mut self) -> Option<String> {
        self.pod
            .pids("compute")
            .is_empty()
            .then(|| "the compute container ended".to_string())
    }
}

/// A launcher pod running on the runner, with where its files are on the node.
pub struct LauncherPod {
    pub pod: RunningPod,
    /// `<state root>/<pod uid>`: the hostPath state dir.
    pub state_dir: PathBuf,
}

impl LauncherPod {
    /// Run the Pod and Secrets the controller (or render-pod) produced, with the state
    /// hostPath rooted at `state_root`.
    pub fn start(node: &ClusterNode, pod: &Pod, secrets: &[Secret], state_root: &Path) -> Self {
        let running = node
            .run_pod(pod, secrets)
            .unwrap_or_else(|e| panic!("the launcher pod does not start: {e:#}"));
        LauncherPod {
            state_dir: state_root.join(&running.uid),
            pod: running,
        }
    }

    /// The scratch emptyDir on the node.
    pub fn scratch(&self) -> PathBuf {
        self.pod.dir.join("volumes/empty-dir/scratch")
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.scratch().join("console.log")).unwrap_or_default()
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "--- compute log ---\n{}\n--- console ---\n{}",
            crate::support::launcher::strip_ansi(&self.pod.logs("compute")),
            self.console()
        )
    }

    /// Wait until the guest's report satisfies `done`; panics with the logs on timeout or
    /// when the compute container exits first.
    pub fn wait_report(
        &self,
        timeout: Duration,
        done: impl Fn(&GuestReport) -> bool,
    ) -> GuestReport {
        crate::support::launcher::wait_report(&mut &*self, timeout, done)
    }

    /// The compute container's processes that are zombies (state Z) and stay so for a
    /// second: a process nobody reaps.
    pub fn lasting_zombies(&self) -> Vec<String> {
        let zombies = || -> Vec<(u32, String)> {
            self.pod
                .pids("compute")
                .into_iter()
                .filter_map(|pid| {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    let state = stat[stat.rfind(')')? + 2..].chars().next()?;
                    (state == 'Z').then_some((pid, stat))
                })
                .collect()
        };
        let first = zombies();
        if first.is_empty() {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_secs(1));
        let again = zombies();
        first
            .into_iter()
            .filter(|(p, _)| again.iter().any(|(q, _)| q == p))
            .map(|(_, stat)| stat)
            .collect()
    }
}

/// Boot the pod until the guest leases, then wait for the guest to power itself off: the
/// pod must end Succeeded, with status.json saying so, and leave nothing behind.
pub fn run_to_guest_power_off(
    node: &ClusterNode,
    pod: &Pod,
    secrets: &[Secret],
    state_root: &Path,
) -> crate::support::guest::GuestLease {
    let lp = LauncherPod::start(node, pod, secrets, state_root);
    let lease = lp
        .wait_report(BOOT, |r| r.lease.is_some() || r.lease_failed)
        .lease
        .unwrap_or_else(|| panic!("no lease\n{}", lp.diagnostics()));
    assert_eq!(lease.ip, lp.pod.pod_ip, "the VM has the pod IP");
    let pids = lp.pod.pids("compute");
    let exit = lp
        .pod
        .wait(BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lp.diagnostics()));
    assert_eq!(exit.phase, "Succeeded", "{exit:?}\n{}", lp.diagnostics());
    assert!(
        lp.console().contains("VMPOD-POWEROFF"),
        "{}",
        lp.diagnostics()
    );
    let status = vmpod::control::read_status(&lp.state_dir).unwrap();
    assert_eq!(status.phase, vmpod::control::Phase::Succeeded, "{status:?}");
    assert_nothing_left(node, lp.remove(pids));
    lease
}

/// `CapEff` of process `pid` as a bit set.
pub fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Ping `ip` once from the node's network namespace (busybox ping).
pub fn ping_from_node(node: &ClusterNode, ip: std::net::Ipv4Addr) -> Result<(), String> {
    let out = node
        .command("busybox")
        .args(["ping", "-c", "1", "-W", "3", &ip.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// After the pod is gone: none of `pids` runs, no mount mentions the pod's directory or
/// UID, neither the pod's namespace nor its node-side veth exists, the pod directory
/// (scratch, files) is gone, and the state dir holds only what the node daemon reads
/// (status.json, the network cache) until it removes it.
pub fn assert_nothing_left(node: &ClusterNode, gone: GonePod) {
    let alive: Vec<u32> = gone
        .pids
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&gone.uid) || l.contains(gone.dir.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(
        !gone.dir.exists(),
        "pod directory left: {}",
        gone.dir.display()
    );
    assert!(
        !Path::new("/run/netns").join(&gone.netns).exists(),
        "pod netns left: {}",
        gone.netns
    );
    let links = node
        .command("busybox")
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&format!(" {}@", gone.node_veth)),
        "node-side veth left: {links}"
    );
    let mut entries: Vec<String> = std::fs::read_dir(&gone.state_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    assert!(
        entries.iter().all(|e| e == "status.json" || e == "net"),
        "state dir {} holds more than the node daemon reads: {entries:?}",
        gone.state_dir.display()
    );
}

/// What identifies a pod on the host once its [`LauncherPod`] is dropped.
pub struct GonePod {
    pub uid: String,
    pub dir: PathBuf,
    pub netns: String,
    pub node_veth: String,
    pub state_dir: PathBuf,
    /// Host PIDs seen in its containers.
    pub pids: Vec<u32>,
}

impl LauncherPod {
    /// Drop the pod (as kubelet removes a finished pod) and say what to look for.
    pub fn remove(self, pids: Vec<u32>) -> GonePod {
        let gone = GonePod {
            uid: self.pod.uid.clone(),
            dir: self.pod.dir.clone(),
            netns: self.pod.sandbox.spec().netns_name(),
            node_veth: self.pod.sandbox.node_veth().to_string(),
            state_dir: self.state_dir.clone(),
            pids,
        };
        drop(self);
        gone
    }
}
