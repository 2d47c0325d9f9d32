//! `vmpod-launcher net setup | teardown`: the network phase alone, e.g. as an init
//! container holding NET_ADMIN (and nothing else) so the main launcher needs none.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmpod::net::masquerade::MasqueradeArgs;
use vmpod::net::{self, Binding, MacAddr, PlanOptions, SetupOptions};

#[derive(Subcommand)]
pub enum NetCommand {
    /// Discover the pod interface, cache its facts and rewire it for the VM.
    Setup(SetupArgs),
    /// Restore the pod interfaces from the cache and remove bridges and taps.
    Teardown(CommonArgs),
}

#[derive(Args)]
pub struct CommonArgs {
    /// Where the per-pod state (net/<iface>.json) lives.
    #[arg(long, default_value = vmpod::statedir::DEFAULT_STATE_DIR, env = "VMPOD_STATE_DIR")]
    state_dir: PathBuf,
    /// Work in this network namespace (a name under /run/netns or a path) instead of
    /// the current one.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Args)]
pub struct SetupArgs {
    /// The pod interface to hand to the VM.
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// How the VM is wired to it.
    #[arg(long, default_value_t = Binding::Bridge)]
    binding: Binding,
    #[command(flatten)]
    common: CommonArgs,
    /// The pod's resolv.conf (nameservers and search domains for the VM).
    #[arg(long, default_value = net::discover::DEFAULT_RESOLV_CONF)]
    resolv_conf: PathBuf,
    /// The pod's hostname; default: the hostname of this UTS namespace.
    #[arg(long)]
    hostname: Option<String>,
    /// The uid QEMU runs as (owner of the tap).
    #[arg(long, default_value_t = net::plan::DEFAULT_TAP_OWNER)]
    tap_owner: u32,
    /// The gid allowed to use the tap.
    #[arg(long)]
    tap_group: Option<u32>,
    /// Create a multiqueue tap.
    #[arg(long)]
    multiqueue: bool,
    /// The VM NIC's MAC when the VMI sets `interfaces[].macAddress` (default: the VM
    /// takes over the pod's MAC). Cached, so the DHCP server answers this MAC.
    #[arg(long)]
    vm_mac: Option<MacAddr>,
    #[command(flatten)]
    masquerade: MasqueradeArgs,
    /// Print the cached facts and applied ops as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: NetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NetCommand::Setup(a) => {
            let opts = SetupOptions {
                netns: a.common.netns.as_deref().map(net::netns::resolve),
                interface: a.interface,
                binding: a.binding,
                state_dir: a.common.state_dir,
                resolv_conf: a.resolv_conf,
                hostname: a.hostname,
                plan: PlanOptions {
                    tap_owner: a.tap_owner,
                    tap_group: a.tap_group,
                    multiqueue: a.multiqueue,
                    vm_mac: a.vm_mac,
                    masquerade: a.masquerade.into(),
                    ..PlanOptions::default()
                },
            };
            let out = net::setup(&opts)
                .with_context(|| format!("net setup of pod interface {}", opts.interface))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        NetCommand::Teardown(a) => {
            let ns = a.netns.as_deref().map(net::netns::resolve);
            let done = net::teardown(ns.as_deref(), &a.state_dir).context("net teardown")?;
            if done.is_empty() {
                tracing::info!(state_dir = %a.state_dir.display(), "nothing cached; nothing to restore");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
