//! `vmpodctl run FILE [--console]`: one VMI in a local pod, in the foreground, through the
//! library's local runtime (the same code path as `vmpod-handler local`).
//!
//! Status lines go to standard error (`vmpodctl: <name>: ...`), the console (with
//! `--console`) to standard output. Ctrl-C or SIGTERM asks for a graceful stop, a second
//! Ctrl-C kills. The exit status is the launcher's.

use anyhow::Context;
use clap::Args;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use vmpod::control::{ControlClient, LauncherStatus};
use vmpod::sandbox::{LocalConfig, LocalPod, LocalRuntime, StopLevel, load_manifest, supervise};

#[derive(Args)]
pub struct RunArgs {
    /// The VirtualMachineInstance manifest (YAML or JSON).
    pub file: PathBuf,
    /// Stream the VM's serial console to standard output.
    #[arg(long)]
    pub console: bool,
    /// Another node directory hostDisk volumes may be in (repeatable); the manifest's own
    /// directory always is.
    #[arg(long = "host-disk-dir")]
    pub host_disk_dirs: Vec<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Validate before touching the system.
    let vmi = load_manifest(&args.file)?;
    let name = vmi.name().to_string();
    let cfg = LocalConfig::from_env()?;
    anyhow::ensure!(
        cfg.launcher.is_file(),
        "launcher binary {} not found (build the workspace, or set VMPOD_LAUNCHER)",
        cfg.launcher.display()
    );
    let launcher = cfg.launcher.clone();
    let manifest_dir = std::path::absolute(&args.file)
        .context("the manifest's directory")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let host_disk_dirs: Vec<PathBuf> = std::iter::once(manifest_dir)
        .chain(args.host_disk_dirs)
        .collect();
    let launcher_args = vmpod::domain::HostDiskDirArgs::to_args(&host_disk_dirs);
    let runtime = LocalRuntime::new(cfg)?;
    let pod = runtime.create_pod(&vmi)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The launcher dies with this thread (PR_SET_PDEATHSIG): it is spawned from here.
    let code = tokio.block_on(foreground(
        pod,
        &launcher,
        &launcher_args,
        name,
        args.console,
    ));
    drop(runtime); // deletes the bridge when this run created it and no pod is left on it
    code
}

async fn foreground(
    mut pod: LocalPod,
    launcher: &Path,
    launcher_args: &[OsString],
    name: String,
    console: bool,
) -> anyhow::Result<ExitCode> {
    let r = pod.record().clone();
    say(
        &name,
        &format!(
            "pod IP {} gateway {} on bridge {} (netns {}, veth {})",
            r.ip, r.gateway, r.bridge, r.netns, r.node_veth
        ),
    );
    let child = match pod.spawn_launcher(launcher, launcher_args, true) {
        Ok(c) => c,
        Err(e) => {
            let _ = pod.teardown();
            return Err(e.into());
        }
    };
    let (stop_tx, stop_rx) = watch::channel(StopLevel::Run);
    let signals = tokio::spawn(forward_signals(name.clone(), stop_tx));
    let console_task = console.then(|| tokio::spawn(stream_console(pod.client())));
    let mut shown: Option<(vmpod::control::Phase, Option<std::net::IpAddr>)> = None;
    let mut shown_accel = None;
    let exit = supervise(pod, Some(child), stop_rx, |s: &LauncherStatus| {
        if s.acceleration.is_some() && s.acceleration != shown_accel {
            let why = s
                .acceleration_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let accel = s.acceleration.map(|a| a.to_string()).unwrap_or_default();
            say(&s.name, &format!("acceleration {accel}{why}"));
            shown_accel = s.acceleration;
        }
        let now = (s.phase, s.first_ip());
        if shown != Some(now) {
            let ip = s
                .first_ip()
                .map(|ip| format!(", VM IP {ip}"))
                .unwrap_or_default();
            let why = s
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            say(&s.name, &format!("{}{why}{ip}", s.phase));
            shown = Some(now);
        }
    })
    .await;
    signals.abort();
    if let Some(t) = console_task {
        // The follow stream ends with the launcher; give it a moment to drain.
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    let exit = exit?;
    if let Some(t) = &exit.log_tail {
        eprintln!("vmpodctl: {name}: launcher log (last lines):\n{t}");
    }
    let code = exit.code();
    say(
        &name,
        &format!("launcher exited with status {code}; pod removed"),
    );
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn say(name: &str, what: &str) {
    eprintln!("vmpodctl: {name}: {what}");
}

/// Ctrl-C / SIGTERM: graceful stop; again: kill.
async fn forward_signals(name: String, stop: watch::Sender<StopLevel>) -> anyhow::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let next = if *stop.borrow() == StopLevel::Run {
            say(&name, "stopping gracefully (Ctrl-C again to kill)");
            StopLevel::Graceful
        } else {
            say(&name, "killing");
            StopLevel::Kill
        };
        let _ = stop.send(next);
    }
}

/// Follow the console once the control socket answers; copy it to standard output.
async fn stream_console(client: ControlClient) {
    let mut follow = loop {
        match client.console_follow().await {
            Ok(f) => break f,
            Err(e) => {
                tracing::debug!("console not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut out = std::io::stdout();
    while let Some(chunk) = follow.next_chunk().await {
        match chunk {
            Ok(bytes) => {
                let _ = out.write_all(&bytes).and_then(|()| out.flush());
            }
            Err(e) => {
                tracing::warn!("console stream: {e}");
                break;
            }
        }
    }
}
