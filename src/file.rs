//! Atomic file replacement, the one implementation: [`write_atomic`] writes a temporary
//! file beside the target (mode 0600: state files are for root and the pod's own user)
//! and renames it over the target, so a reader sees the old content or the new, never
//! half of it. How much of it a crash keeps is the caller's [`Durability`]. And
//! [`PathIoError`], an I/O failure named by what was done on which path.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An I/O failure naming what was being done and on which file, namespace or directory:
/// `read manifest /x/vm.yaml: No such file or directory`. Error enums wrap it
/// (`Io(#[from] PathIoError)`) rather than repeat its fields and message.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct PathIoError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The error mapper for doing `what` on `path`: `.map_err(io_err("read manifest", file))?`.
pub fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> PathIoError {
    let path = path.into();
    move |source| PathIoError { what, path, source }
}

/// What survives a crash (a power loss; a process crash keeps the rename in every case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Rename only: after a crash the file may be the old one or empty-new. For files
    /// rewritten often whose loss is harmless (status snapshots, records a restart redoes).
    Rename,
    /// The content is fsynced before the rename: never an empty new file after a crash.
    File,
    /// The content and the directory entry are fsynced: after return the new file
    /// survives a crash (the net cache, which must outlive a rewired interface).
    FileAndDir,
}

/// Replace `path` with `bytes` atomically (see the module doc). On failure the temporary
/// file is removed and the target is untouched; the error is the I/O error alone, the
/// caller names the file.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file path"))?
        .to_string_lossy();
    // Two writers of one file never share a temporary file: the pid alone is not enough,
    // since launchers in different pods (pid namespaces) share node files (the
    // capabilities seed) and usually have the same pid.
    let tmp = path.with_file_name(format!(
        ".{name}.{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if durability != Durability::Rename {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::FileAndDir {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_with_mode_0600_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, "old").unwrap();
        for d in [Durability::Rename, Durability::File, Durability::FileAndDir] {
            write_atomic(&path, format!("{d:?}").as_bytes(), d).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{d:?}"));
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let path = dir.path().join("target");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "x").unwrap();
        assert!(write_atomic(&path, b"new", Durability::File).is_err());
        assert!(path.join("keep").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["target"]);
    }
}
