//! `vmpodctl get | status | console | stop | pause | resume | kill | domain | network`:
//! the remote for a launcher's control socket, in the way `ch-remote` is for Cloud
//! Hypervisor. A VMI is named by its local name (its state dir under the local root,
//! `$VMPOD_LOCAL_ROOT` or /run/vmpod/vms) or by `--state-dir`. Every control-API endpoint
//! has a verb here; all of them go through `vmpod::control::ControlClient`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmpod::control::{
    ControlClient, LauncherStatus, StatusSource, list_local, local_root, local_state_dir, status_of,
};
use vmpod::statedir::StateDir;

/// How long `get` and `status` wait for a launcher before reading its status.json.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Ctrl-]: detaches an interactive console.
const ESCAPE: u8 = 0x1d;
/// After stdin ends (non-interactive attach), output is read until it is quiet this long.
const QUIET_AFTER_EOF: Duration = Duration::from_secs(1);

/// Which launcher: a local VMI name, or a state dir.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The local VMI's name (its state dir is <local root>/NAME).
    name: Option<String>,
    /// The launcher's state directory (holding control.sock).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl Target {
    fn state_dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.state_dir, &self.name) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(name)) => {
                let dir = local_state_dir(&local_root(), name)?;
                if !dir.is_dir() {
                    bail!(
                        "no local VMI named {name:?} (no directory {})",
                        dir.display()
                    );
                }
                Ok(dir)
            }
            (None, None) => bail!("name a VMI or give --state-dir"),
        }
    }

    fn client(&self) -> anyhow::Result<ControlClient> {
        Ok(ControlClient::new(
            StateDir::new(self.state_dir()?).control_socket(),
        ))
    }

    fn label(&self) -> String {
        match (&self.name, &self.state_dir) {
            (Some(n), _) => n.clone(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => String::new(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// List the local VMIs with their phase and address.
    Get {
        #[arg(long)]
        json: bool,
    },
    /// Show a VMI's phase, timestamps, addresses and acceleration.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Attach to a VMI's serial console (when stdin is a terminal; escape with Ctrl-]),
    /// or print its console log.
    Console {
        #[command(flatten)]
        target: Target,
        /// Print the log and keep printing new output until the VM stops.
        #[arg(long, conflicts_with = "attach")]
        follow: bool,
        /// Attach even when stdin is not a terminal: send stdin, print the output.
        #[arg(long)]
        attach: bool,
    },
    /// Shut a VMI down (ACPI power-off, destroyed after the grace period).
    Stop {
        #[command(flatten)]
        target: Target,
        /// Destroy the VM at once instead (like `kill`).
        #[arg(long)]
        force: bool,
        /// Seconds the guest gets to power off (default: the VMI's grace period).
        #[arg(long, conflicts_with = "force")]
        grace_period: Option<u32>,
        /// Wait until the VM has stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Pause a VMI's vCPUs.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Resume a paused VMI.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Destroy a VMI at once.
    Kill {
        #[command(flatten)]
        target: Target,
    },
    /// Print a VMI's libvirt domain XML.
    Domain {
        #[command(flatten)]
        target: Target,
    },
    /// Print a VMI's network report (facts, applied plan, DHCP lease and counters) as JSON.
    Network {
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(cmd: RemoteCommand) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(cmd))
}

async fn run_async(cmd: RemoteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RemoteCommand::Get { json } => get(json).await?,
        RemoteCommand::Status { target, json } => {
            let dir = target.state_dir()?;
            let (status, source) = status_of(&dir, ANSWER_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", describe(&status, source));
            }
        }
        RemoteCommand::Console {
            target,
            follow,
            attach,
        } => {
            let client = target.client()?;
            if follow {
                follow_console(&client).await?;
            } else if attach || std::io::stdin().is_terminal() {
                attach_console(&client, &target.label()).await?;
            } else {
                std::io::stdout().write_all(&client.console_log().await?)?;
            }
        }
        RemoteCommand::Stop {
            target,
            force,
            grace_period,
            wait,
        } => {
            let dir = target.state_dir()?;
            let client = ControlClient::new(StateDir::new(&dir).control_socket());
            if force {
                client.kill().await?;
                eprintln!("{}: killed", target.label());
            } else {
                client.shutdown(grace_period).await?;
                eprintln!("{}: shutdown requested", target.label());
            }
            if wait {
                match wait_stopped(&dir).await {
                    Some(status) => eprintln!("{}: {}", target.label(), status.phase),
                    None => eprintln!("{}: gone", target.label()),
                }
            }
        }
        RemoteCommand::Pause { target } => {
            target.client()?.pause().await?;
            eprintln!("{}: paused", target.label());
        }
        RemoteCommand::Resume { target } => {
            target.client()?.resume().await?;
            eprintln!("{}: resumed", target.label());
        }
        RemoteCommand::Kill { target } => {
            target.client()?.kill().await?;
            eprintln!("{}: killed", target.label());
        }
        RemoteCommand::Domain { target } => print!("{}", target.client()?.domain_xml().await?),
        RemoteCommand::Network { target } => {
            let report = target.client()?.network().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmpodctl get`: one line per local VMI; those without any status say why on stderr.
async fn get(json: bool) -> anyhow::Result<()> {
    let root = local_root();
    let mut rows = Vec::new();
    for (name, dir) in list_local(&root)? {
        match status_of(&dir, ANSWER_TIMEOUT).await {
            Ok((status, source)) => rows.push((name, Some((status, source)))),
            Err(e) => {
                eprintln!("vmpodctl: {name}: {e}");
                rows.push((name, None));
            }
        }
    }
    if rows.is_empty() && !json {
        eprintln!("no local VMIs under {}", root.display());
        return Ok(());
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|(s, _)| s))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", table(&rows, k8s_openapi::jiff::Timestamp::now()));
    }
    Ok(())
}

type Row = (String, Option<(LauncherStatus, StatusSource)>);

/// The `get` table, kubectl style. A non-final phase read from status.json is marked
/// stale: the launcher that wrote it is not answering.
fn table(rows: &[Row], now: k8s_openapi::jiff::Timestamp) -> String {
    let mut lines = vec![["NAME", "PHASE", "IP", "ACCEL", "AGE"].map(String::from)];
    for (name, status) in rows {
        let line = match status {
            None => [
                name.clone(),
                "Unknown".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            Some((s, source)) => {
                let stale = *source == StatusSource::File && !s.phase.is_terminal();
                let mut phase = s.phase.to_string();
                if let Some(why) = s.pause_reason {
                    phase.push_str(&format!(" ({why})"));
                }
                if stale {
                    phase.push_str(" (stale)");
                }
                let mut accel = s.acceleration.map_or("-".into(), |a| a.to_string());
                if s.acceleration_reason.is_some() {
                    accel.push_str(" (no kvm)");
                }
                [
                    name.clone(),
                    phase,
                    s.first_ip().map_or("-".into(), |ip| ip.to_string()),
                    accel,
                    s.started_at.as_ref().map_or("-".into(), |t| age(now, t.0)),
                ]
            }
        };
        lines.push(line);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// kubectl-style age: 45s, 12m, 5h, 3d.
fn age(now: k8s_openapi::jiff::Timestamp, then: k8s_openapi::jiff::Timestamp) -> String {
    let secs = now.duration_since(then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `vmpodctl status`, for people.
fn describe(s: &LauncherStatus, source: StatusSource) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        opt(t.as_ref().map(|t| t.0.to_string()))
    };
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    field("Name:", s.name.clone());
    field("Namespace:", opt(s.namespace.clone()));
    field("Phase:", s.phase.to_string());
    field("Reason:", opt(s.reason.clone()));
    if let Some(why) = s.pause_reason {
        field("Paused by:", why.to_string());
    }
    field(
        "Acceleration:",
        match (s.acceleration, &s.acceleration_reason) {
            (Some(a), Some(why)) => format!("{a} ({why})"),
            (a, _) => opt(a.map(|a| a.to_string())),
        },
    );
    field("Domain:", opt(s.domain.clone()));
    field("Launcher PID:", s.pid.to_string());
    field("QEMU PID:", opt(s.qemu_pid.map(|p| p.to_string())));
    field("Started:", time(&s.started_at));
    field("Running since:", time(&s.running_at));
    field("Finished:", time(&s.finished_at));
    field(
        "Source:",
        match source {
            StatusSource::Socket => "control socket".into(),
            StatusSource::File => "status.json (the launcher is not answering)".into(),
        },
    );
    out.push_str("Interfaces:\n");
    for i in &s.interfaces {
        let ips: Vec<String> = i.ip_addresses.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "  {:<12}{}  {:<8}{}\n",
            i.name,
            i.mac,
            i.interface_name.as_deref().unwrap_or("-"),
            if ips.is_empty() {
                "-".into()
            } else {
                ips.join(",")
            }
        ));
    }
    out
}

async fn follow_console(client: &ControlClient) -> anyhow::Result<()> {
    let mut follow = client.console_follow().await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = follow.next_chunk().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Poll the launcher until the VM is down or the launcher is gone. `None`: it left no
/// status behind (its state dir was cleaned up).
async fn wait_stopped(state_dir: &std::path::Path) -> Option<LauncherStatus> {
    loop {
        match status_of(state_dir, ANSWER_TIMEOUT).await {
            Ok((status, source)) if status.phase.is_terminal() || source == StatusSource::File => {
                return Some(status);
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return None,
        }
    }
}

/// Interactive (or piped) attach to the serial console through the HTTP upgrade.
/// On a terminal, stdin is put in raw mode and Ctrl-] detaches. Otherwise stdin is sent
/// as is, and after it ends the output is printed until the console is quiet.
async fn attach_console(client: &ControlClient, label: &str) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let stream = client.console_attach().await?;
    let _raw = if interactive {
        eprint!("Connected to {label}'s console. Escape character is ^]\r\n");
        Some(RawMode::enter(libc::STDIN_FILENO).context("putting the terminal in raw mode")?)
    } else {
        None
    };
    let (mut from_vm, mut to_vm) = tokio::io::split(stream);
    let mut input = stdin_chunks();
    let mut buf = vec![0u8; 8192];
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    loop {
        let quiet = tokio::time::sleep(if stdin_open {
            Duration::MAX
        } else {
            QUIET_AFTER_EOF
        });
        tokio::select! {
            n = from_vm.read(&mut buf) => {
                let n = n.context("reading from the console")?;
                if n == 0 {
                    break;
                }
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
            chunk = input.recv(), if stdin_open => match chunk {
                Some(chunk) => {
                    let escape_at = interactive.then(|| chunk.iter().position(|&b| b == ESCAPE)).flatten();
                    let send = escape_at.map_or(&chunk[..], |i| &chunk[..i]);
                    to_vm.write_all(send).await.context("writing to the console")?;
                    if escape_at.is_some() {
                        break;
                    }
                }
                None => {
                    stdin_open = false;
                    if interactive {
                        break;
                    }
                }
            },
            () = quiet, if !stdin_open => break,
        }
    }
    if interactive {
        eprint!("\r\n[detached from {label}]\r\n");
    }
    Ok(())
}

/// Stdin in chunks as they arrive, read by a plain thread (stdin reads block).
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A terminal in raw mode until dropped.
struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: libc::c_int) -> std::io::Result<Self> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr writes a termios into the valid pointer we pass; `fd` is
        // checked by the kernel and a failure is reported through the return value.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so it initialized `saved`.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the termios struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the terminal's own settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same fd in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod::control::Phase;
    use vmpod::control::fake::sample_status;

    #[test]
    fn age_is_kubectl_style() {
        let now: k8s_openapi::jiff::Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let ago = |s: i64| {
            now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        assert_eq!(age(now, ago(45)), "45s");
        assert_eq!(age(now, ago(600)), "10m");
        assert_eq!(age(now, ago(3 * 3600)), "3h");
        assert_eq!(age(now, ago(3 * 86400)), "3d");
        assert_eq!(age(ago(5), now), "0s");
    }

    #[test]
    fn table_marks_stale_and_unknown() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut done = sample_status("done");
        done.set_phase(Phase::Succeeded, None);
        let rows = vec![
            (
                "live".to_string(),
                Some((sample_status("live"), StatusSource::Socket)),
            ),
            (
                "gone".to_string(),
                Some((sample_status("gone"), StatusSource::File)),
            ),
            ("done".to_string(), Some((done, StatusSource::File))),
            ("broken".to_string(), None),
        ];
        let t = table(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("PHASE"),
            "{t}"
        );
        assert!(
            lines[1].contains("Running") && lines[1].contains("10.22.0.5"),
            "{t}"
        );
        assert!(
            !lines[1].contains("stale") && lines[1].contains("tcg"),
            "{t}"
        );
        assert!(lines[2].contains("Running (stale)"), "{t}");
        assert!(
            lines[3].contains("Succeeded") && !lines[3].contains("stale"),
            "{t}"
        );
        assert!(lines[4].contains("Unknown"), "{t}");
    }

    #[test]
    fn describe_names_the_source() {
        let s = sample_status("vm1");
        let d = describe(&s, StatusSource::File);
        assert!(d.contains("Phase:          Running"), "{d}");
        assert!(d.contains("status.json"), "{d}");
        assert!(
            d.contains("02:00:00:0a:16:05") && d.contains("10.22.0.5"),
            "{d}"
        );
        assert!(!d.contains("Paused by:"), "{d}");
    }

    /// A pause nobody asked for and a KVM abandoned for TCG show in `get` and `status`.
    #[test]
    fn pause_and_acceleration_reasons_show() {
        let mut s = sample_status("vm1");
        s.set_phase(Phase::Paused, Some("paused by QEMU: KVM gave up".into()));
        s.pause_reason = Some(vmpod::control::PauseReason::KvmInternalError);
        s.acceleration_reason = Some("KVM failed on this node before".into());
        let d = describe(&s, StatusSource::Socket);
        assert!(d.contains("Paused by:      KVMInternalError"), "{d}");
        assert!(
            d.contains("Reason:         paused by QEMU: KVM gave up"),
            "{d}"
        );
        assert!(
            d.contains("Acceleration:   tcg (KVM failed on this node before)"),
            "{d}"
        );
        let t = table(
            &[("vm1".into(), Some((s, StatusSource::Socket)))],
            k8s_openapi::jiff::Timestamp::now(),
        );
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.contains("Paused (KVMInternalError)") && row.contains("tcg (no kvm)"),
            "{t}"
        );
    }
}
