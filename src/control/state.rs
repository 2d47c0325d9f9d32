//! What the control API does with a launcher's state-dir files (their names are
//! [`crate::statedir`]'s): writing and reading status.json, the local runtime's root
//! (`/run/vmpod/vms/<name>/`), and reading a launcher's status through its socket with
//! status.json as the fallback. The console log is [`super::console_log`]'s.

use super::client::ControlClient;
use super::types::LauncherStatus;
use crate::file::{Durability, write_atomic};
use crate::statedir::{DEFAULT_LOCAL_ROOT, LOCAL_ROOT_ENV, StateDir};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The console log is rotated when it would pass this (virtlogd's default is 2 MiB
/// with three backups; one backup of a larger file keeps the same bound, 8 MiB).
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

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
    StateDir::local(root, name)
        .map(|d| d.path().to_path_buf())
        .ok_or_else(|| StateError::BadName(name.to_string()))
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
    write_json_atomic(&StateDir::new(state_dir).status_file(), status)
}

/// Write `value` as JSON to `path` atomically, fsynced
/// ([`write_atomic`](crate::file::write_atomic) with [`Durability::File`]): readers see
/// the old or the new content, never half of it.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    json.push(b'\n');
    write_atomic(path, &json, Durability::File).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Read `<state-dir>/status.json`.
pub fn read_status(state_dir: &Path) -> Result<LauncherStatus, StateError> {
    let path = StateDir::new(state_dir).status_file();
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
    let client = ControlClient::new(StateDir::new(state_dir).control_socket());
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

        std::fs::write(StateDir::new(dir.path()).status_file(), b"{").unwrap();
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
