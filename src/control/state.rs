//! Files in a launcher's state directory that the control API reads or writes
//! (control.sock, console.log, console.fifo, console.sock, status.json), the local runtime's root
//! (`/run/vmpod/vms/<name>/`), and reading a launcher's status through its socket with
//! status.json as the fallback. Other state-dir files belong to net, dhcp and domain.

use super::client::ControlClient;
use super::types::LauncherStatus;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The control API socket, in the state dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The serial console log, in the state dir.
pub const CONSOLE_LOG: &str = "console.log";
/// Where a rotation moves the console log (see [`super::console_log`]), replacing what
/// was there.
pub const CONSOLE_LOG_PREVIOUS: &str = "console.log.1";
/// The FIFO QEMU writes the console log to; the launcher copies it to [`CONSOLE_LOG`].
pub const CONSOLE_FIFO: &str = "console.fifo";
/// The console log is rotated when it would pass this (virtlogd's default is 2 MiB
/// with three backups; one backup of a larger file keeps the same bound, 8 MiB).
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;
/// The serial console's unix socket (libvirt binds it), in the state dir.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The last status written, for readers without the socket.
pub const STATUS_FILE: &str = "status.json";
/// Where local VMIs keep their state dirs unless `VMPOD_LOCAL_ROOT` says otherwise.
pub const DEFAULT_LOCAL_ROOT: &str = "/run/vmpod/vms";
/// The environment variable overriding [`DEFAULT_LOCAL_ROOT`].
pub const LOCAL_ROOT_ENV: &str = "VMPOD_LOCAL_ROOT";

/// `<state-dir>/control.sock`
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

/// The local runtime's root: `$VMPOD_LOCAL_ROOT` or `/run/vmpod/vms`.
pub fn local_root() -> PathBuf {
    local_root_from(std::env::var_os(LOCAL_ROOT_ENV).as_deref())
}

fn local_root_from(env: Option<&std::ffi::OsStr>) -> PathBuf {
    match env {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_LOCAL_ROOT),
    }
}

/// The state dir of local VMI `name` under `root`. Refuses names that would leave it.
pub fn local_state_dir(root: &Path, name: &str) -> Result<PathBuf, StateError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if !valid {
        return Err(StateError::BadName(name.to_string()));
    }
    Ok(root.join(name))
}

/// Failures reading or writing state-dir files, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0:?} is not a VMI name")]
    BadName(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Write `<state-dir>/status.json` atomically (see [`write_json_atomic`]).
pub fn write_status(state_dir: &Path, status: &LauncherStatus) -> Result<(), StateError> {
    write_json_atomic(&state_dir.join(STATUS_FILE), status)
}

/// Write `value` as JSON to `path` atomically: a temp file in the same dir, fsync'ed,
/// renamed over the old one. Readers see the old or the new content, never half of it.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    // 0600: the state dir is for the node daemon (root) only.
    let written = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        0o600,
    )
    .open(&tmp)
    .and_then(|mut f| {
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()
    })
    .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Read `<state-dir>/status.json`.
pub fn read_status(state_dir: &Path) -> Result<LauncherStatus, StateError> {
    let path = state_dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Json { path, source })
}

/// Where a status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusSource {
    /// The launcher answered on its control socket.
    Socket,
    /// The launcher did not answer; this is the last status it wrote.
    File,
}

/// Why neither the socket nor status.json gave a status.
#[derive(Debug, thiserror::Error)]
#[error("no status for {state_dir}: {socket}; and {file}")]
pub struct NoStatus {
    pub state_dir: PathBuf,
    pub socket: String,
    pub file: StateError,
}

/// A launcher's status: from its control socket when it answers within `timeout`,
/// otherwise from the status.json it last wrote.
pub async fn status_of(
    state_dir: &Path,
    timeout: Duration,
) -> Result<(LauncherStatus, StatusSource), NoStatus> {
    let client = ControlClient::new(control_socket(state_dir));
    let socket_err = match tokio::time::timeout(timeout, client.status()).await {
        Ok(Ok(s)) => return Ok((s, StatusSource::Socket)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "{} did not answer within {timeout:?}",
            client.socket().display()
        ),
    };
    read_status(state_dir)
        .map(|s| (s, StatusSource::File))
        .map_err(|file| NoStatus {
            state_dir: state_dir.to_path_buf(),
            socket: socket_err,
            file,
        })
}

/// The local VMIs: every directory under `root`, sorted by name. A missing root is an
/// empty list.
pub fn list_local(root: &Path) -> Result<Vec<(String, PathBuf)>, StateError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StateError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::types::Phase;

    #[test]
    fn local_root_env_override() {
        assert_eq!(local_root_from(None), PathBuf::from("/run/vmpod/vms"));
        assert_eq!(
            local_root_from(Some("".as_ref())),
            PathBuf::from("/run/vmpod/vms")
        );
        assert_eq!(
            local_root_from(Some("/tmp/x".as_ref())),
            PathBuf::from("/tmp/x")
        );
    }

    #[test]
    fn local_state_dir_refuses_escapes() {
        let root = Path::new("/r");
        assert_eq!(
            local_state_dir(root, "vm1").unwrap(),
            PathBuf::from("/r/vm1")
        );
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(local_state_dir(root, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_file_round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LauncherStatus::pending("vm1");
        s.set_phase(Phase::Running, None);
        write_status(dir.path(), &s).unwrap();
        let back = read_status(dir.path()).unwrap();
        assert_eq!(back.phase, Phase::Running);
        assert_eq!(back.name, "vm1");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");

        std::fs::write(dir.path().join(STATUS_FILE), b"{").unwrap();
        let e = read_status(dir.path()).unwrap_err().to_string();
        assert!(e.contains("status.json"), "{e}");
        let e = write_status(&dir.path().join("missing"), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing/status.json"), "{e}");
    }

    #[test]
    fn list_local_lists_dirs_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["b", "a"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let names: Vec<_> = list_local(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(list_local(&dir.path().join("none")).unwrap().is_empty());
    }
}
