//! `vmpod-handler local --manifests DIR`: no cluster. Keeps the VMIs whose manifests are in
//! DIR running on this machine through the library's local runtime (the same code path as
//! `vmpodctl run`): a file added is started, a file changed is stopped and started again,
//! a file removed is stopped. Each manifest's status is written beside it as
//! `<stem>.status.json` (the launcher's status; `Failed` with the reason for a manifest
//! that does not validate). SIGTERM or SIGINT stops every VM gracefully, then exits.
//!
//! A restarted handler adopts the launchers still running for the VMIs in DIR (their
//! records are under the local root) instead of starting them again.
//!
//! Boots are admitted node-wide: the launchers share K boot slots, lock files in the local
//! root (`--max-concurrent-boots`; see the launcher's `boot_slots`), passed to them as
//! arguments.
//!
//! Owns the directory scan, the per-manifest tasks and the status files. Everything about
//! pods and launchers is the runtime's.

use anyhow::Context;
use clap::Args;
use std::collections::{BTreeMap, hash_map::DefaultHasher};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vmpod::control::{LauncherStatus, Phase};
use vmpod::file::{Durability, write_atomic};
use vmpod::sandbox::{
    LocalConfig, LocalPod, LocalRuntime, RuntimeError, StopLevel, load_manifest, supervise,
};

#[derive(Args)]
pub struct LocalArgs {
    /// The directory of VirtualMachineInstance manifests (`*.yaml`, `*.yml`, `*.json`);
    /// hostDisk volumes may always be in it.
    #[arg(long)]
    pub manifests: PathBuf,
    /// How often the directory is scanned, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    #[command(flatten)]
    pub host_disks: vmpod::domain::HostDiskDirArgs,
    /// How many guests may boot at once, from their domain's start to their first DHCP
    /// lease: the other launchers wait for a boot slot (status reason "waiting for a boot
    /// slot"). Default: the node's CPU count (under TCG a boot is CPU-bound). 0: no limit.
    #[arg(long, env = "VMPOD_MAX_CONCURRENT_BOOTS")]
    pub max_concurrent_boots: Option<u32>,
}

impl LocalArgs {
    /// `vmpod-launcher run`'s arguments for every VM: where hostDisk volumes may be (the
    /// manifests directory and `--host-disk-dir`s) and the node's `boots` boot slots in
    /// `root`.
    fn launcher_args(&self, root: &Path, boots: u32) -> Vec<OsString> {
        let manifests = std::path::absolute(&self.manifests).unwrap_or(self.manifests.clone());
        let dirs: Vec<PathBuf> = std::iter::once(manifests)
            .chain(self.host_disks.host_disk_dirs.iter().cloned())
            .collect();
        let mut args = vmpod::domain::HostDiskDirArgs::to_args(&dirs);
        args.extend(["--boot-slots-dir".into(), root.into()]);
        args.extend(["--boot-slots".into(), boots.to_string().into()]);
        args
    }
}

/// The status file beside a manifest: `<dir>/<stem>.status.json`.
pub fn status_path(manifest: &Path) -> PathBuf {
    let stem = manifest.file_stem().unwrap_or_default().to_string_lossy();
    manifest.with_file_name(format!("{stem}.status.json"))
}

/// Pure: is this directory entry a manifest (not a status file, not hidden)?
pub fn is_manifest(file_name: &str) -> bool {
    !file_name.starts_with('.')
        && !file_name.ends_with(".status.json")
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|e| file_name.ends_with(e))
}

/// Pure: what to do, given the manifests seen now and the digests tracked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<PathBuf>,
    pub changed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

pub fn diff(tracked: &BTreeMap<PathBuf, u64>, seen: &BTreeMap<PathBuf, u64>) -> Changes {
    let mut c = Changes::default();
    for (path, digest) in seen {
        match tracked.get(path) {
            None => c.added.push(path.clone()),
            Some(d) if d != digest => c.changed.push(path.clone()),
            Some(_) => {}
        }
    }
    c.removed = tracked
        .keys()
        .filter(|p| !seen.contains_key(*p))
        .cloned()
        .collect();
    c
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The manifests in `dir` with a digest of their content.
fn scan(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, u64>> {
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !name.to_str().is_some_and(is_manifest) {
            continue;
        }
        // A file removed between listing and reading is seen at the next scan.
        if let Ok(bytes) = std::fs::read(entry.path()) {
            seen.insert(entry.path(), digest(&bytes));
        }
    }
    Ok(seen)
}

/// Write a status file atomically (rename only: the next status rewrites it).
fn write_status_file(path: &Path, status: &LauncherStatus) {
    let written = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|json| write_atomic(path, &json, Durability::Rename));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot write status");
    }
}

struct Tracked {
    digest: u64,
    stop: watch::Sender<StopLevel>,
    task: JoinHandle<()>,
}

pub fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let cfg = LocalConfig::from_env()?;
    anyhow::ensure!(
        cfg.launcher.is_file(),
        "launcher binary {} not found (build the workspace, or set VMPOD_LAUNCHER)",
        cfg.launcher.display()
    );
    anyhow::ensure!(
        args.manifests.is_dir(),
        "{} is not a directory",
        args.manifests.display()
    );
    let boots = args.max_concurrent_boots.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().try_into().unwrap_or(u32::MAX))
    });
    tracing::info!(max_concurrent_boots = boots, slots = %cfg.root.display(), "boot slots");
    let launcher_args: Arc<[OsString]> = args.launcher_args(&cfg.root, boots).into();
    let runtime = Arc::new(LocalRuntime::new(cfg)?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tokio.block_on(reconcile_loop(Arc::clone(&runtime), args, launcher_args))?;
    drop(tokio);
    drop(runtime);
    Ok(ExitCode::SUCCESS)
}

async fn reconcile_loop(
    runtime: Arc<LocalRuntime>,
    args: LocalArgs,
    launcher_args: Arc<[OsString]>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tracked: BTreeMap<PathBuf, Tracked> = BTreeMap::new();
    let mut draining: Vec<JoinHandle<()>> = Vec::new();
    tracing::info!(dir = %args.manifests.display(), "watching manifests");
    loop {
        let seen = scan(&args.manifests)?;
        let digests = tracked.iter().map(|(p, t)| (p.clone(), t.digest)).collect();
        let changes = diff(&digests, &seen);
        for path in changes.removed {
            let t = tracked.remove(&path).expect("removed paths are tracked");
            tracing::info!(manifest = %path.display(), "manifest removed: stopping its VM");
            let _ = t.stop.send(StopLevel::Graceful);
            let status = status_path(&path);
            draining.push(tokio::spawn(async move {
                let _ = t.task.await;
                let _ = std::fs::remove_file(&status);
            }));
        }
        for path in changes.changed {
            let old = tracked.remove(&path).expect("changed paths are tracked");
            tracing::info!(manifest = %path.display(), "manifest changed: restarting its VM");
            let _ = old.stop.send(StopLevel::Graceful);
            let t = start(&runtime, &launcher_args, &path, seen[&path], Some(old.task));
            tracked.insert(path, t);
        }
        for path in changes.added {
            tracing::info!(manifest = %path.display(), "manifest added: starting its VM");
            let t = start(&runtime, &launcher_args, &path, seen[&path], None);
            tracked.insert(path, t);
        }
        draining.retain(|t| !t.is_finished());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.poll_ms)) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(vms = tracked.len(), "stopping every VM gracefully");
    for t in tracked.values() {
        let _ = t.stop.send(StopLevel::Graceful);
    }
    for t in tracked.into_values().map(|t| t.task).chain(draining) {
        let _ = t.await;
    }
    Ok(())
}

/// Start the task that runs one manifest's VM (after `after`, the previous VM of the same
/// file, has stopped).
fn start(
    runtime: &Arc<LocalRuntime>,
    launcher_args: &Arc<[OsString]>,
    manifest: &Path,
    digest: u64,
    after: Option<JoinHandle<()>>,
) -> Tracked {
    let (stop, stop_rx) = watch::channel(StopLevel::Run);
    let (runtime, manifest) = (Arc::clone(runtime), manifest.to_path_buf());
    let launcher_args = Arc::clone(launcher_args);
    let task = tokio::spawn(async move {
        if let Some(previous) = after {
            let _ = previous.await;
        }
        let status_file = status_path(&manifest);
        if let Err(e) =
            run_manifest(&runtime, &launcher_args, &manifest, &status_file, stop_rx).await
        {
            tracing::warn!(manifest = %manifest.display(), error = %e, "VM failed");
            let mut s =
                LauncherStatus::pending(manifest.file_stem().unwrap_or_default().to_string_lossy());
            s.set_phase(Phase::Failed, Some(format!("{e:#}")));
            write_status_file(&status_file, &s);
        }
    });
    Tracked { digest, stop, task }
}

/// One VM from start (or adoption) to teardown, its status mirrored into `status_file`.
async fn run_manifest(
    runtime: &Arc<LocalRuntime>,
    launcher_args: &[OsString],
    manifest: &Path,
    status_file: &Path,
    stop: watch::Receiver<StopLevel>,
) -> anyhow::Result<()> {
    let vmi = load_manifest(manifest)?;
    let name = vmi.name().to_string();
    let rt = Arc::clone(runtime);
    let found = tokio::task::spawn_blocking(move || rt.find(&name)).await??;
    let (pod, child) = match found.filter(|p| p.launcher_alive()) {
        Some(pod) => {
            tracing::info!(vmi = %pod.name(), "adopting the running launcher");
            (pod, None)
        }
        None => {
            let rt = Arc::clone(runtime);
            let created = tokio::task::spawn_blocking(move || rt.create_pod(&vmi)).await?;
            let mut pod = match created {
                Ok(pod) => pod,
                // The first look missed a launcher that is running (its pod record was
                // being rewritten, or /proc was read mid-change): adopt it, never fail it.
                Err(RuntimeError::AlreadyRunning { name, pid }) => {
                    let rt = Arc::clone(runtime);
                    let again = name.clone();
                    let found = tokio::task::spawn_blocking(move || rt.find(&again)).await??;
                    let pod = found.filter(|p| p.launcher_alive()).with_context(|| {
                        format!("VMI {name}: launcher pid {pid} runs but its pod cannot be adopted")
                    })?;
                    tracing::info!(vmi = %pod.name(), "adopting the running launcher (second look)");
                    return finish(pod, None, stop, status_file).await;
                }
                Err(e) => return Err(e.into()),
            };
            // No PR_SET_PDEATHSIG: VMs outlive a handler restart, which adopts them.
            let child = match pod.spawn_launcher(&runtime.config().launcher, launcher_args, false) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::task::spawn_blocking(move || pod.teardown()).await;
                    return Err(e.into());
                }
            };
            write_status_file(status_file, &LauncherStatus::pending(pod.name()));
            (pod, Some(child))
        }
    };
    finish(pod, child, stop, status_file).await
}

/// Supervise the pod's launcher (our child, or adopted) to its end and report it.
async fn finish(
    pod: LocalPod,
    child: Option<tokio::process::Child>,
    stop: watch::Receiver<StopLevel>,
    status_file: &Path,
) -> anyhow::Result<()> {
    let name = pod.name().to_string();
    // Each change of phase or reason in the handler's log (with its time): what a person
    // reading it, or a benchmark, needs to follow every VMI without polling its file.
    let mut shown: Option<(Phase, Option<String>)> = None;
    let exit = supervise(pod, child, stop, |s| {
        if shown.as_ref() != Some(&(s.phase, s.reason.clone())) {
            tracing::info!(vmi = %s.name, phase = %s.phase, reason = s.reason.as_deref().unwrap_or(""), "status");
            shown = Some((s.phase, s.reason.clone()));
        }
        write_status_file(status_file, s)
    })
    .await?;
    if let Some(t) = &exit.log_tail {
        tracing::warn!(vmi = %name, code = exit.code(), "launcher failed; its log ends with:\n{t}");
    }
    tracing::info!(vmi = %name, code = exit.code(), "VM ended; pod removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_status_files() {
        assert!(is_manifest("a.yaml") && is_manifest("b.yml") && is_manifest("c.json"));
        assert!(!is_manifest("a.status.json") && !is_manifest(".a.yaml") && !is_manifest("a.txt"));
        assert_eq!(
            status_path(Path::new("/d/web.yaml")),
            PathBuf::from("/d/web.status.json")
        );
    }

    #[test]
    fn diff_finds_added_changed_removed() {
        let tracked = BTreeMap::from([(PathBuf::from("a"), 1), (PathBuf::from("b"), 2)]);
        let seen = BTreeMap::from([(PathBuf::from("b"), 3), (PathBuf::from("c"), 4)]);
        assert_eq!(
            diff(&tracked, &seen),
            Changes {
                added: vec!["c".into()],
                changed: vec!["b".into()],
                removed: vec!["a".into()],
            }
        );
        assert_eq!(diff(&seen, &seen), Changes::default());
    }
}
