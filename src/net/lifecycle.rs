//! The network phase end to end: facts (from the cache, else discovered and cached
//! before anything is changed) -> plan -> apply -> record; and teardown from the cache.
//! Everything for one interface runs on one thread inside the pod's namespace with one
//! netlink socket.

use super::apply::{IPV6_FORWARDING, apply_with, read_sysctl, sysctl_writable};
use super::cache::{self, CachedInterface};
use super::discover::{discover_with, with_handle};
use super::error::NetError;
use super::facts::Binding;
use super::plan::AddrGenMode;
use super::plan::{NetOp, OriginalSettings, PlanOptions, plan, plan_teardown};
use std::path::{Path, PathBuf};

/// What `net setup` works on.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    /// The pod's namespace; `None` for the one we run in (the launcher inside the pod).
    pub netns: Option<PathBuf>,
    pub interface: String,
    pub binding: Binding,
    pub state_dir: PathBuf,
    pub resolv_conf: PathBuf,
    /// The pod's hostname; `None` reads the one of our UTS namespace.
    pub hostname: Option<String>,
    pub plan: PlanOptions,
}

impl SetupOptions {
    /// Defaults for the launcher inside a pod: current namespace, bridge binding,
    /// `/var/run/vmpod`, `/etc/resolv.conf`.
    pub fn new(interface: impl Into<String>) -> Self {
        SetupOptions {
            netns: None,
            interface: interface.into(),
            binding: Binding::default(),
            state_dir: PathBuf::from(crate::statedir::DEFAULT_STATE_DIR),
            resolv_conf: PathBuf::from(super::discover::DEFAULT_RESOLV_CONF),
            hostname: None,
            plan: PlanOptions::default(),
        }
    }
}

/// What setup (or a dry run) found and did.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupOutcome {
    /// The facts, the binding and (after setup) the applied ops, as cached.
    pub cached: CachedInterface,
    /// The plan.
    pub ops: Vec<NetOp>,
    /// The facts came from the cache, not from discovery.
    pub from_cache: bool,
    /// A completed setup was found cached and nothing was applied
    /// ([`setup_or_reuse`]): whoever did the setup tears it down.
    #[serde(default)]
    pub reused: bool,
    pub cache_path: PathBuf,
}

impl SetupOutcome {
    /// The bridge the VM's tap is on.
    pub fn bridge_name(&self) -> String {
        self.cached.bridge_name()
    }

    /// The VM's tap, which the domain XML names.
    pub fn tap_name(&self) -> String {
        self.cached.tap_name()
    }
}

/// Rewire the pod interface for the VM. Idempotent: run it again on a rewired or
/// half-rewired pod and it converges, reading the facts from the cache.
pub fn setup(o: &SetupOptions) -> Result<SetupOutcome, NetError> {
    plan_and_apply(o, true)
}

/// Discover (or read the cached facts) and plan; with `apply`, rewire and cache what
/// was applied. [`setup`] and [`dry_run`] differ only in `apply`.
fn plan_and_apply(o: &SetupOptions, apply: bool) -> Result<SetupOutcome, NetError> {
    with_handle(o.netns.as_deref(), |h| async move {
        let (mut entry, from_cache) = facts_for(&h, o).await?;
        let ops = entry_plan(&entry)?;
        if apply {
            if !from_cache {
                // Before the first destructive op: after it the pod IP is gone from the link.
                cache::store(&o.state_dir, &entry)?;
            }
            apply_with(&h, &ops).await?;
            entry.applied.clone_from(&ops);
            cache::store(&o.state_dir, &entry)?;
            tracing::info!(interface = %o.interface, ops = ops.len(), from_cache, "pod network rewired");
        }
        Ok(SetupOutcome {
            cached: entry,
            ops,
            from_cache,
            reused: false,
            cache_path: cache::path(&o.state_dir, &o.interface),
        })
    })
}

/// The launcher's network phase: when a completed setup is cached for this namespace
/// (an init container did it, or an earlier launcher of this pod), use it and change
/// nothing, so the launcher needs no NET_ADMIN; otherwise [`setup`].
pub fn setup_or_reuse(o: &SetupOptions) -> Result<SetupOutcome, NetError> {
    let here = cache::current_netns_id();
    if let Some(entry) = cache::load(&o.state_dir, &o.interface)?
        && (entry.netns_id.is_none() || entry.netns_id == here)
        && !entry.applied.is_empty()
        && entry.binding == o.binding
    {
        tracing::info!(interface = %o.interface, "pod network already rewired (cached); not touching it");
        return Ok(SetupOutcome {
            ops: entry.applied.clone(),
            cached: entry,
            from_cache: true,
            reused: true,
            cache_path: cache::path(&o.state_dir, &o.interface),
        });
    }
    setup(o)
}

/// What [`setup`] would do, changing nothing (no cache written either).
pub fn dry_run(o: &SetupOptions) -> Result<SetupOutcome, NetError> {
    plan_and_apply(o, false)
}

fn entry_plan(e: &CachedInterface) -> Result<Vec<NetOp>, NetError> {
    Ok(plan(&e.planned_facts(), e.binding, &e.options, e.original)?)
}

/// The cached entry, or a fresh one from discovery. A cache made for another binding or
/// other options is an error: tear down first.
async fn facts_for(
    h: &rtnetlink::Handle,
    o: &SetupOptions,
) -> Result<(CachedInterface, bool), NetError> {
    let here = cache::current_netns_id();
    let cached = cache::load(&o.state_dir, &o.interface)?;
    let cached = cached.filter(|e| {
        let stale = e.netns_id.is_some() && e.netns_id != here;
        if stale {
            tracing::warn!(
                interface = %o.interface,
                "net cache was written in another network namespace (pod sandbox recreated); discovering again"
            );
        }
        !stale
    });
    if let Some(entry) = cached {
        if entry.binding != o.binding || entry.options != o.plan {
            return Err(NetError::CacheMismatch {
                path: cache::path(&o.state_dir, &o.interface),
                cached: format!("{} {:?}", entry.binding, entry.options),
                asked: format!("{} {:?}", o.binding, o.plan),
            });
        }
        return Ok((entry, true));
    }
    let facts = discover_with(
        h,
        o.netns.as_deref(),
        &o.interface,
        &o.resolv_conf,
        o.hostname.as_deref(),
    )
    .await?;
    // Reading /proc/sys works in a container too (it is mounted read-only).
    let conf = |name: &str| read_sysctl(&format!("net/ipv6/conf/{}/{name}", o.interface));
    let original = OriginalSettings {
        ipv6_disabled: conf("disable_ipv6")?.as_deref() != Some("0"),
        addr_gen_mode: conf("addr_gen_mode")?
            .and_then(|n| n.parse().ok())
            .and_then(AddrGenMode::from_kernel)
            .unwrap_or_default(),
        ipv4_forwarding: read_sysctl(&format!("net/ipv4/conf/{}/forwarding", o.interface))?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        ipv6_forwarding: read_sysctl(IPV6_FORWARDING)?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    };
    let ipv6_off = super::masquerade::ipv6_off(
        &facts,
        o.binding,
        original.ipv6_forwarding,
        sysctl_writable(IPV6_FORWARDING),
    );
    if let Some(why) = &ipv6_off {
        tracing::warn!(interface = %o.interface, "the VM's IPv6 side is off: {why}");
    }
    let entry = CachedInterface {
        facts,
        binding: o.binding,
        options: o.plan.clone(),
        original,
        applied: Vec::new(),
        netns_id: here,
        ipv6_off,
    };
    Ok((entry, false))
}

/// Restore every cached pod interface in `netns` and forget it. Returns the interfaces
/// restored. With nothing cached there is nothing to do; entries cached in another
/// namespace (stale) are left alone.
pub fn teardown(netns: Option<&Path>, state_dir: &Path) -> Result<Vec<String>, NetError> {
    let entries = cache::load_all(state_dir)?;
    with_handle(netns, |h| async move {
        let mut done = Vec::new();
        let here = cache::current_netns_id();
        for e in &entries {
            if e.netns_id.is_some() && e.netns_id != here {
                tracing::warn!(interface = %e.facts.interface, "net cache is from another network namespace; not restoring it here");
                continue;
            }
            let ops = plan_teardown(&e.facts, e.binding, e.original)?;
            apply_with(&h, &ops).await?;
            cache::remove(state_dir, &e.facts.interface)?;
            tracing::info!(interface = %e.facts.interface, "pod interface restored");
            done.push(e.facts.interface.clone());
        }
        Ok(done)
    })
}
