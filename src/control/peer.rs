//! Who answers on a control socket. A reader outside the pod (the node daemon, the local
//! runtime) checks the peer of every connection (SO_PEERCRED) before it sends a request:
//! the peer must be the launcher's pid as its own pid namespace numbers it, and it must
//! belong to the pod whose state directory is read, as the node knows that pod (its UID in
//! the peer's cgroup path, or the network namespace the local runtime made for it), not
//! as the directory says. A tenant who writes another pod's launcher pid into its own
//! `status.json` and gets its `control.sock` to lead to that pod's socket is refused.
//! This module owns that check and the parsing of `/proc/<pid>/status` and `cgroup`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use tokio::net::UnixStream;

/// The pod a state directory belongs to, as the reader knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodIdentity {
    /// A Kubernetes pod: its UID is in the peer's cgroup path, in kubelet's cgroupfs
    /// (`.../pod<uid>/<container>`) or systemd
    /// (`.../kubepods-<qos>-pod<uid with _>.slice/<container>.scope`) spelling.
    KubePod { uid: String },
    /// A local pod: the peer lives in this network namespace (`/run/netns/<name>`,
    /// made by the local runtime).
    Netns(PathBuf),
}

/// What the peer of a control connection must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The launcher's pid in its own pid namespace.
    pub pid: u32,
    /// The pod it must belong to.
    pub pod: PodIdentity,
}

/// The peer of `stream` is `want`: SO_PEERCRED gives its pid in our pid namespace,
/// `/proc/<pid>/status`'s `NSpid` its pid in its own, and `/proc/<pid>` which pod it is in.
pub fn check(stream: &UnixStream, want: &Peer) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let pid = cred
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or(
            "the peer process is not visible in this pid namespace (the node daemon needs hostPID)",
        )?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let own = innermost_pid(&status).ok_or(format!("/proc/{pid}/status has no NSpid"))?;
    if own != want.pid {
        return Err(format!(
            "the peer is pid {pid} (pid {own} in its namespace), not the launcher's pid {}",
            want.pid
        ));
    }
    belongs_to(pid, &want.pod)
}

/// Process `pid` (of our pid namespace) is in `pod`.
fn belongs_to(pid: u32, pod: &PodIdentity) -> Result<(), String> {
    match pod {
        PodIdentity::KubePod { uid } => {
            let path = format!("/proc/{pid}/cgroup");
            let cgroup = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
            match kube_pod_uids(&cgroup).as_slice() {
                [one] if one == uid => Ok(()),
                [] => Err(format!(
                    "the peer, pid {pid}, is not in pod {uid}: its cgroup names no pod ({})",
                    cgroup.trim().replace('\n', " ")
                )),
                others => Err(format!(
                    "the peer, pid {pid}, is not in pod {uid}: its cgroup names pod {}",
                    others.join(", ")
                )),
            }
        }
        PodIdentity::Netns(netns) => {
            let inode = |p: &std::path::Path| {
                std::fs::metadata(p)
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(|e| format!("{}: {e}", p.display()))
            };
            let theirs = inode(format!("/proc/{pid}/ns/net").as_ref())?;
            if theirs == inode(netns)? {
                Ok(())
            } else {
                Err(format!(
                    "the peer, pid {pid}, is not in the pod's network namespace {}",
                    netns.display()
                ))
            }
        }
    }
}

/// The last pid of the `NSpid:` line of a `/proc/<pid>/status` (pure).
pub fn innermost_pid(proc_status: &str) -> Option<u32> {
    proc_status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The pod UIDs named in the paths of a `/proc/<pid>/cgroup` (pure; each once, in order).
/// Under a cgroup namespace a path may start with `/..`; the pod's own component is what
/// counts, not the `kubepods` root.
pub fn kube_pod_uids(proc_cgroup: &str) -> Vec<String> {
    let mut uids: Vec<String> = Vec::new();
    let paths = proc_cgroup.lines().filter_map(|l| l.splitn(3, ':').nth(2));
    for uid in paths.flat_map(|p| p.split('/')).filter_map(pod_uid_of) {
        if !uids.contains(&uid) {
            uids.push(uid);
        }
    }
    uids
}

/// The pod UID a cgroup path component names: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd).
fn pod_uid_of(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods-") => slice
            .rsplit('-')
            .next()?
            .strip_prefix("pod")?
            .replace('_', "-"),
        Some(_) => return None,
        None => component.strip_prefix("pod")?.to_owned(),
    };
    is_uuid(&uid).then_some(uid)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";

    #[test]
    fn innermost_pid_is_the_last_nspid() {
        assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(innermost_pid("NSpid:\t77\n"), Some(77));
        assert_eq!(innermost_pid("Name:\tx\n"), None);
    }

    #[test]
    fn pod_uid_from_cgroupfs_and_systemd_paths() {
        let systemd_uid = UID.replace('-', "_");
        for cgroup in [
            // cgroup v2, cgroupfs driver.
            format!("0::/kubepods/burstable/pod{UID}/8f2d5c0e9a7b\n"),
            // Guaranteed QoS: no QoS level in the path.
            format!("0::/kubepods/pod{UID}/8f2d5c0e9a7b\n"),
            // cgroup v2, systemd driver.
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{systemd_uid}.slice/cri-containerd-8f2d.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-8f2d.scope\n"),
            // cgroup v1 (and hybrid): one line per hierarchy.
            format!(
                "12:memory:/kubepods/burstable/pod{UID}/8f2d\n\
                 11:cpu,cpuacct:/kubepods/burstable/pod{UID}/8f2d\n0::/\n"
            ),
            // Read from inside another cgroup namespace.
            format!("0::/../../burstable/pod{UID}/8f2d\n"),
        ] {
            assert_eq!(kube_pod_uids(&cgroup), [UID], "{cgroup}");
        }
    }

    #[test]
    fn no_pod_or_look_alikes_name_no_uid() {
        for cgroup in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/vmpod-handler.service\n",
            // Not UUIDs, or not kubelet's slice.
            "0::/kubepods/burstable/podnot-a-uid/x\n",
            &format!(
                "0::/pods.slice/other-pod{}.slice/x\n",
                UID.replace('-', "_")
            ),
            &format!("0::/kubepods/burstable/xpod{UID}/x\n"),
        ] {
            assert!(kube_pod_uids(cgroup).is_empty(), "{cgroup}");
        }
        // Two pods named (a process moved in one v1 hierarchy): both reported.
        let other = "ffffffff-4f50-4617-8293-a4b5c6d7e8f9";
        let mixed = format!("2:memory:/kubepods/pod{UID}/x\n1:cpu:/kubepods/pod{other}/x\n");
        assert_eq!(kube_pod_uids(&mixed), [UID, other]);
    }
}
