//! A launcher stand-in serving the real control API with the recording fake backend, for
//! trying vmpodctl and curl without a VM and for measuring the control server alone:
//!
//! ```text
//! cargo run --release --example fake_launcher -- /tmp/vmpod-vms/vm1
//! curl --unix-socket /tmp/vmpod-vms/vm1/control.sock http://localhost/v1/status
//! VMPOD_LOCAL_ROOT=/tmp/vmpod-vms vmpodctl get
//! ```
//!
//! Runs on a current-thread runtime, as the launcher's control server would, until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;
use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("usage: fake_launcher STATE_DIR"))?;
    std::fs::create_dir_all(&dir)?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vm1")
        .to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let fake = FakeLauncher::start(&dir, sample_status(&name), sample_network())?;
            eprintln!(
                "serving {} (pid {})",
                fake.socket.display(),
                std::process::id()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            fake.stop().await?;
            Ok(())
        })
}
