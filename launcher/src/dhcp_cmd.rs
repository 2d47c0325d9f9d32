//! `vmpod-launcher dhcp serve`: serve DHCP for the cached interfaces in the foreground,
//! until SIGTERM or Ctrl-C. Reads `<state-dir>/net/<iface>.json`, written by `net setup`;
//! the bridge and its address are the ones the net phase recorded there.

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use vmpod::dhcp::{DhcpConfig, DhcpExtras, DhcpServer};
use vmpod::net::cache;

#[derive(Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCP for the cached interfaces in the foreground.
    Serve {
        /// The pod's state directory (holds net/<iface>.json).
        #[arg(long, env = "VMPOD_STATE_DIR", default_value = vmpod::statedir::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

pub fn run(cmd: DhcpCommand) -> anyhow::Result<ExitCode> {
    let DhcpCommand::Serve { state_dir } = cmd;
    let cached = cache::load_all(&state_dir)?;
    anyhow::ensure!(
        !cached.is_empty(),
        "no cached interfaces in {}: run `vmpod-launcher net setup` first",
        vmpod::statedir::StateDir::new(&state_dir)
            .net_dir()
            .display()
    );
    let servers = cached
        .iter()
        .map(|entry| {
            Ok(DhcpServer::bind(DhcpConfig::for_cached(
                entry,
                &DhcpExtras::default(),
            )?)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut tasks = tokio::task::JoinSet::new();
        for s in servers {
            tasks.spawn(s.run());
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: DHCP servers stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: DHCP servers stopping"),
            Some(done) = tasks.join_next() => done.context("DHCP server task")??,
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
