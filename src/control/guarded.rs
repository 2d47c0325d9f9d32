//! Reading a launcher's status from outside its pod (the node daemon), where everything in
//! the state directory is the tenant's to replace: the directory is opened `O_DIRECTORY |
//! O_NOFOLLOW`; `status.json` is opened relative to it with `O_NOFOLLOW | O_NONBLOCK`,
//! must be a regular file and is read up to [`STATUS_MAX`], on a blocking thread and within
//! a time bound; `control.sock` must be a socket (not followed) and is reached through the
//! directory's descriptor, and its peer must be the launcher pid `status.json` names and
//! belong to the pod the caller knows the directory to be (see [`super::peer`]). A FIFO, a
//! symlink (to /dev/zero, to another pod's socket), another pod's launcher pid with a way to
//! its socket, or a huge file gives an error for that pod and nothing else.

use super::client::{ClientError, ControlClient};
use super::peer::{Peer, PodIdentity};
use super::state::StatusSource;
use super::types::LauncherStatus;
use crate::statedir::{CONTROL_SOCKET, STATUS_FILE, StateDir};
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most of `status.json` that is read: a real one is a few KiB.
pub const STATUS_MAX: u64 = 64 << 10;

/// The state directory is not one the node daemon reads: what, and where.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Refused {
    pub path: PathBuf,
    pub why: String,
}

fn refused(path: &Path, why: impl std::fmt::Display) -> Refused {
    Refused {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn is(mode: u32, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == kind
}

/// Open the state directory itself, not a symlink to one.
fn open_dir(dir: &Path) -> Result<OwnedFd, Refused> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    open(dir, flags, Mode::empty()).map_err(|e| refused(dir, format!("open directory: {e}")))
}

/// `status.json` under the directory open as `dir`: a regular file of at most
/// [`STATUS_MAX`] bytes, opened without following a symlink or blocking on a FIFO.
fn read_status_at(dir: &OwnedFd, dir_path: &Path) -> Result<LauncherStatus, Refused> {
    let path = dir_path.join(STATUS_FILE);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, STATUS_FILE, flags, Mode::empty())
        .map_err(|e| refused(&path, format!("open: {e}")))?;
    let st = fstat(&fd).map_err(|e| refused(&path, format!("fstat: {e}")))?;
    if !is(st.st_mode, SFlag::S_IFREG) {
        return Err(refused(&path, "is not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(STATUS_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(&path, format!("read: {e}")))?;
    if bytes.len() as u64 > STATUS_MAX {
        return Err(refused(&path, format!("is larger than {STATUS_MAX} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| refused(&path, e))
}

/// A launcher's status for a reader outside its pod: from its control socket when that is
/// a socket whose peer is the launcher `status.json` names, in `pod` (the pod the caller
/// knows `state_dir` to be), and it answers within `timeout`; otherwise (no socket yet or
/// any more, no answer) the `status.json` it last wrote. Anything in the directory that is
/// not what it should be is [`Refused`].
pub async fn status_from_dir(
    state_dir: &Path,
    pod: &PodIdentity,
    timeout: Duration,
) -> Result<(LauncherStatus, StatusSource), Refused> {
    let dir_path = state_dir.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let dir = open_dir(&dir_path)?;
        let status = read_status_at(&dir, &dir_path)?;
        Ok::<_, Refused>((dir, status))
    });
    let file = StateDir::new(state_dir).status_file();
    let (dir, written) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| refused(&file, format!("not read within {timeout:?}")))?
        .map_err(|e| refused(&file, format!("reader thread: {e}")))??;
    let socket = StateDir::new(state_dir).control_socket();
    match fstatat(
        &dir,
        CONTROL_SOCKET,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if is(st.st_mode, SFlag::S_IFSOCK) => {}
        Ok(_) => return Err(refused(&socket, "is not a socket")),
        Err(nix::errno::Errno::ENOENT) => return Ok((written, StatusSource::File)),
        Err(e) => return Err(refused(&socket, format!("lstat: {e}"))),
    }
    // Through the directory's descriptor: the directory checked above, not whatever its
    // path leads to now. The peer check covers a socket swapped since the lstat.
    let via = format!("/proc/self/fd/{}/{CONTROL_SOCKET}", dir.as_raw_fd());
    let client = ControlClient::new(via).with_peer(Peer {
        pid: written.pid,
        pod: pod.clone(),
    });
    let answer = tokio::time::timeout(timeout, client.status()).await;
    drop(dir);
    match answer {
        Ok(Ok(status)) => Ok((status, StatusSource::Socket)),
        Ok(Err(ClientError::Peer { why, .. })) => Err(refused(&socket, why)),
        Ok(Err(_)) | Err(_) => Ok((written, StatusSource::File)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::write_status;

    /// This process's pod, for the local runtime's check: its network namespace.
    fn here() -> PodIdentity {
        PodIdentity::Netns("/proc/self/ns/net".into())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn status_json_must_be_a_small_regular_file() {
        let rt = runtime();
        let t = Duration::from_secs(5);
        let root = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let good = make("good");
        write_status(&good, &LauncherStatus::pending("vm1")).unwrap();
        let (s, from) = rt.block_on(status_from_dir(&good, &here(), t)).unwrap();
        assert_eq!((s.name.as_str(), from), ("vm1", StatusSource::File));

        let fifo = make("fifo");
        nix::unistd::mkfifo(&fifo.join(STATUS_FILE), Mode::S_IRWXU).unwrap();
        let e = rt.block_on(status_from_dir(&fifo, &here(), t)).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("status.json: is not a regular file"),
            "{e}"
        );

        let zero = make("zero");
        std::os::unix::fs::symlink("/dev/zero", zero.join(STATUS_FILE)).unwrap();
        let e = rt.block_on(status_from_dir(&zero, &here(), t)).unwrap_err();
        assert!(e.to_string().contains("status.json: open: ELOOP"), "{e}");

        let big = make("big");
        std::fs::write(big.join(STATUS_FILE), vec![b' '; (64 << 10) + 1]).unwrap();
        let e = rt.block_on(status_from_dir(&big, &here(), t)).unwrap_err();
        assert!(e.to_string().contains("is larger than 65536 bytes"), "{e}");

        let linked = root.path().join("linked");
        std::os::unix::fs::symlink(&good, &linked).unwrap();
        let e = rt
            .block_on(status_from_dir(&linked, &here(), t))
            .unwrap_err();
        assert!(e.to_string().contains("open directory: ENOTDIR"), "{e}");

        let sock = make("sock");
        write_status(&sock, &LauncherStatus::pending("vm1")).unwrap();
        std::fs::write(sock.join(CONTROL_SOCKET), b"").unwrap();
        let e = rt.block_on(status_from_dir(&sock, &here(), t)).unwrap_err();
        assert!(
            e.to_string().ends_with("control.sock: is not a socket"),
            "{e}"
        );
    }

    #[test]
    fn the_socket_must_be_a_socket_whose_peer_is_the_named_launcher() {
        use crate::control::fake::{FakeLauncher, sample_network, sample_status};
        let rt = runtime();
        let t = Duration::from_secs(5);
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        rt.block_on(async {
            let live = FakeLauncher::start(&a, sample_status("vm-a"), sample_network()).unwrap();
            let mut written = LauncherStatus::pending("vm-a");
            write_status(&a, &written).unwrap();
            let (s, from) = status_from_dir(&a, &here(), t).await.unwrap();
            assert_eq!(
                from,
                StatusSource::Socket,
                "the peer is the pid status.json names"
            );
            assert_eq!(s.interfaces.len(), 1);

            // The right launcher pid, but the reader knows this directory as another pod's.
            let elsewhere = PodIdentity::KubePod {
                uid: "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9".into(),
            };
            let e = status_from_dir(&a, &elsewhere, t).await.unwrap_err();
            assert!(
                e.to_string()
                    .contains("is not in pod 0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9: its cgroup"),
                "{e}"
            );

            // status.json names another launcher than the socket's peer.
            written.pid = 1;
            write_status(&a, &written).unwrap();
            let e = status_from_dir(&a, &here(), t)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("control.sock: the peer is pid"), "{e}");
            assert!(e.ends_with("not the launcher's pid 1"), "{e}");

            // b's socket is a symlink to a's.
            write_status(&b, &LauncherStatus::pending("vm-b")).unwrap();
            std::os::unix::fs::symlink(&live.socket, b.join(CONTROL_SOCKET)).unwrap();
            let e = status_from_dir(&b, &here(), t)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.ends_with("b/control.sock: is not a socket"), "{e}");
            live.stop().await.unwrap();
        });
    }
}
