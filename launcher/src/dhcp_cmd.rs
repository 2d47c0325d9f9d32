//! `vmpod-launcher dhcp serve`: serve DHCP for the cached interfaces in the foreground,
//! until SIGTERM or Ctrl-C. Reads `<state-dir>/net/<iface>.json`, written by the net phase.

use anyhow::Context;
use clap::Subcommand;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use vmpod::dhcp::{DEFAULT_SERVER_IP, DhcpConfig, DhcpExtras, DhcpServer};
use vmpod::net::InterfaceFacts;

#[derive(Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCP for the cached interfaces in the foreground.
    Serve {
        /// The pod's state directory (holds net/<iface>.json).
        #[arg(long, env = "VMPOD_STATE_DIR", default_value = "/var/run/vmpod")]
        state_dir: PathBuf,
        /// The bridge's link-local address the server speaks from.
        #[arg(long, default_value_t = DEFAULT_SERVER_IP)]
        server_ip: Ipv4Addr,
    },
}

pub fn run(cmd: DhcpCommand) -> anyhow::Result<ExitCode> {
    let DhcpCommand::Serve {
        state_dir,
        server_ip,
    } = cmd;
    let facts = cached_facts(&state_dir)?;
    anyhow::ensure!(
        !facts.is_empty(),
        "no cached interfaces in {}: run `vmpod-launcher net setup` first",
        state_dir.join("net").display()
    );
    let servers = facts
        .iter()
        .map(|f| {
            let config = DhcpConfig::from_facts(
                f,
                &bridge_name(&f.interface),
                server_ip,
                &DhcpExtras::default(),
            )?;
            Ok(DhcpServer::bind(config)?)
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

/// The bridge the net phase creates for a pod interface.
// TODO(net): use the net module's name and cache reader once branch `net` lands.
fn bridge_name(interface: &str) -> String {
    format!("k6t-{interface}")
}

/// Every `<state-dir>/net/*.json`, sorted by file name.
fn cached_facts(state_dir: &Path) -> anyhow::Result<Vec<InterfaceFacts>> {
    let dir = state_dir.join("net");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    files.sort();
    files
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parse cached facts {}", p.display()))
        })
        .collect()
}
