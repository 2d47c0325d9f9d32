//! `vmpodctl dhcp probe`: see exactly what the VM would get from a pod's DHCP server
//! (`--v6`: from its DHCPv6 server).

use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;
use std::time::Duration;
use vmpod::dhcp::probe::{ProbeOptions, probe};
use vmpod::dhcp::v6::probe::probe_v6;
use vmpod::net::{MacAddr, netns};

#[derive(Subcommand)]
pub enum DhcpCommand {
    /// Run DISCOVER/OFFER/REQUEST/ACK against a DHCP server (with --v6:
    /// SOLICIT/ADVERTISE/REQUEST/REPLY against a DHCPv6 server) and print what it
    /// offers. Configures nothing.
    Probe {
        /// The interface to send from (e.g. a veth on the VM's bridge).
        #[arg(long)]
        interface: String,
        /// The client MAC to ask as (default: the interface's own).
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Run inside this named network namespace (`ip netns` name).
        #[arg(long)]
        netns: Option<String>,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Probe DHCPv6 instead, as a client with the DUID-LL of --mac (the interface
        /// needs a usable link-local address).
        #[arg(long)]
        v6: bool,
    },
}

pub fn run(cmd: DhcpCommand) -> anyhow::Result<ExitCode> {
    let DhcpCommand::Probe {
        interface,
        mac,
        netns: ns,
        timeout,
        json,
        v6,
    } = cmd;
    let ns_path = ns.as_deref().map(netns::path);
    let timeout = Duration::try_from_secs_f64(timeout).context("--timeout")?;
    let report = netns::block_on_in(ns_path.as_deref(), || async {
        let mac = match mac {
            Some(m) => m,
            None => interface_mac(&interface)?,
        };
        // (JSON, text) of either report.
        let shown = |json: serde_json::Result<serde_json::Value>, text: String| {
            Ok::<_, anyhow::Error>((json?, text))
        };
        let opts = ProbeOptions {
            interface: interface.clone(),
            mac,
            timeout,
        };
        if v6 {
            let r = probe_v6(&opts).await?;
            shown(serde_json::to_value(&r), r.to_string())
        } else {
            let r = probe(&opts).await?;
            shown(serde_json::to_value(&r), r.to_string())
        }
    })
    .with_context(|| {
        format!(
            "enter network namespace {}",
            ns.as_deref().unwrap_or("(current)")
        )
    })??;
    let (report, text) = report;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The interface's own MAC, asked of the kernel (getifaddrs speaks netlink in the
/// thread's current network namespace; sysfs would show the mount's namespace).
fn interface_mac(interface: &str) -> anyhow::Result<MacAddr> {
    nix::ifaddrs::getifaddrs()
        .context("list interfaces")?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .map(MacAddr)
        .with_context(|| format!("interface {interface}: no such interface or no MAC address"))
}
