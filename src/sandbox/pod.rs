//! The effects: create the node and the pods, tear them down on drop.

use super::SandboxError;
use super::nl;
use super::spec::{NodeSide, NodeSpec, PodSpec, node_additions, unique_link_name};
use crate::file::io_err;
use crate::net::{IpCidr, Route, netns};
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

type Result<T> = std::result::Result<T, SandboxError>;

/// The pod end of the veth, as kubelet names it.
pub const POD_INTERFACE: &str = "eth0";

/// Run an async netlink job inside `ns` (the current namespace when `None`).
fn in_netns<T: Send>(
    ns: Option<&Path>,
    job: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T> + Send,
) -> Result<T> {
    let where_ = ns.unwrap_or(Path::new("/proc/thread-self/ns/net"));
    netns::block_on_in(ns, async move || {
        let h = nl::connect().map_err(io_err("open netlink socket in", where_))?;
        job(&h).await
    })
    .map_err(io_err("run netlink job in", where_))?
}

/// `program` as a command whose process enters the network namespace at `netns` (e.g.
/// `/run/netns/NAME`) before it executes.
pub fn command_in(netns: &Path, program: impl AsRef<std::ffi::OsStr>) -> std::io::Result<Command> {
    let ns = File::open(netns)?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
    // which is async-signal-safe; the fd was opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// The node side: a bridge holding the gateway addresses, in its own namespace or the
/// host. Shared by its pods through an `Arc`; dropped after the last pod. A host bridge
/// is deleted by the node that created it, and only once no ports are left on it.
#[derive(Debug)]
pub struct Node {
    spec: NodeSpec,
    /// `Some` when the node lives in a namespace of its own (which this value owns).
    netns: Option<PathBuf>,
    owns_bridge: bool,
    bridge_index: u32,
}

impl Node {
    /// Create the node namespace (if any), the bridge (adopted if it exists in the host),
    /// its addresses, and bring lo and the bridge up.
    pub fn create(spec: &NodeSpec) -> Result<Arc<Node>> {
        let netns = match &spec.side {
            NodeSide::Netns(name) => {
                Some(netns::create(name).map_err(io_err("create node netns", netns::path(name)))?)
            }
            NodeSide::Host => None,
        };
        // From here on, Drop cleans up whatever part was made.
        let mut node = Node {
            spec: spec.clone(),
            netns,
            owns_bridge: false,
            bridge_index: 0,
        };
        let (bridge, in_own_ns) = (&spec.bridge, node.netns.is_some());
        let (index, created) = in_netns(node.netns.as_deref(), async |h| {
            if in_own_ns {
                nl::set_up(h, "lo").await?;
            }
            nl::ensure_bridge(h, bridge).await
        })?;
        node.owns_bridge = created;
        node.bridge_index = index;
        in_netns(node.netns.as_deref(), async |h| {
            nl::set_up(h, bridge).await?;
            for a in &spec.addresses {
                nl::add_address(h, index, bridge, *a, !created).await?;
            }
            Ok(())
        })?;
        Ok(Arc::new(node))
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// The node's namespace (`/run/netns/NAME`), or `None` when the node is the host.
    pub fn netns_path(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    pub fn bridge(&self) -> &str {
        &self.spec.bridge
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let NodeSide::Netns(name) = &self.spec.side {
            if self.netns.is_some()
                && let Err(e) = netns::delete(name)
            {
                tracing::warn!(netns = %name, error = %e, "cannot delete node netns");
            }
        } else if self.owns_bridge {
            // Another process may have put its pods on the host bridge meanwhile: only an
            // empty bridge is deleted.
            let bridge = self.spec.bridge.clone();
            let index = self.bridge_index;
            let deleted = in_netns(None, async |h| {
                if nl::has_ports(h, index).await? {
                    return Ok(false);
                }
                nl::del_link(h, &bridge).await.map(|()| true)
            });
            match deleted {
                Ok(true) => {}
                Ok(false) => tracing::info!(%bridge, "node bridge still has ports: left in place"),
                Err(e) => tracing::warn!(%bridge, error = %e, "cannot delete node bridge"),
            }
        }
    }
}

/// One pod: its namespace with `eth0`, its node-side veth, its resolv.conf and hostname.
#[derive(Debug)]
pub struct PodSandbox {
    spec: PodSpec,
    node: Arc<Node>,
    netns: PathBuf,
    node_veth: String,
    /// Routes added on the node bridge for this pod (removed on drop).
    node_routes: Vec<Route>,
    state_dir: PathBuf,
    owns_state_dir: bool,
    /// False once [`PodSandbox::leave_in_place`] handed the cleanup to someone else.
    armed: bool,
}

impl PodSandbox {
    /// Create a node of its own for this pod (deleted with the pod), then the pod.
    pub fn create(node: &NodeSpec, pod: &PodSpec) -> Result<PodSandbox> {
        pod.validate()?;
        PodSandbox::create_on(&Node::create(node)?, pod)
    }

    /// Create the pod on an existing node.
    pub fn create_on(node: &Arc<Node>, pod: &PodSpec) -> Result<PodSandbox> {
        pod.validate()?;
        let (state_dir, owns_state_dir) = match &pod.state_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("vmpod-sandbox-{}", pod.name)),
                true,
            ),
        };
        let name = pod.netns_name();
        let netns = netns::create(&name).map_err(io_err("create pod netns", netns::path(&name)))?;
        // From here on, Drop cleans up whatever part was made.
        let mut sb = PodSandbox {
            spec: pod.clone(),
            node: Arc::clone(node),
            netns,
            node_veth: unique_link_name("vp"),
            node_routes: Vec::new(),
            state_dir,
            owns_state_dir,
            armed: true,
        };
        sb.write_files()?;
        sb.wire_node()?;
        sb.wire_pod()?;
        tracing::debug!(pod = %sb.spec.name, netns = %sb.netns.display(), veth = %sb.node_veth, "pod sandbox ready");
        Ok(sb)
    }

    fn write_files(&self) -> Result<()> {
        fs::create_dir_all(&self.state_dir)
            .map_err(io_err("create pod state dir", &self.state_dir))?;
        let resolv = self.resolv_conf_path();
        fs::write(&resolv, self.spec.resolv_conf()).map_err(io_err("write", &resolv))?;
        let host = self.hostname_path();
        fs::write(&host, format!("{}\n", self.spec.hostname)).map_err(io_err("write", &host))?;
        Ok(())
    }

    /// Node side: the veth (peer moved into the pod), enslaved; gateway addresses and
    /// routes back to off-subnet pod addresses.
    fn wire_node(&mut self) -> Result<()> {
        let add = node_additions(self.node.spec(), &self.spec);
        let routes: Vec<Route> = add
            .routes
            .iter()
            .map(|d| Route {
                destination: *d,
                gateway: None,
                metric: None,
            })
            .collect();
        let pod_ns = File::open(&self.netns).map_err(io_err("open pod netns", &self.netns))?;
        let (veth, peer) = (self.node_veth.clone(), format!("{}p", self.node_veth));
        let (bridge, bridge_index, mtu) = (
            self.node.bridge().to_string(),
            self.node.bridge_index,
            self.spec.mtu,
        );
        let added = &mut self.node_routes;
        in_netns(self.node.netns_path(), async |h| {
            nl::add_veth_to(h, &veth, &peer, mtu, bridge_index, pod_ns.as_raw_fd()).await?;
            for a in &add.addresses {
                nl::add_address(h, bridge_index, &bridge, *a, true).await?;
            }
            for r in &routes {
                nl::add_route(h, bridge_index, &bridge, r).await?;
                added.push(r.clone());
            }
            Ok(())
        })
    }

    /// Pod side: lo up, `eth0` with MAC, MTU, addresses and routes.
    fn wire_pod(&self) -> Result<()> {
        let spec = &self.spec;
        let peer = format!("{}p", self.node_veth);
        in_netns(Some(&self.netns), async |h| {
            nl::set_up(h, "lo").await?;
            let i = nl::configure_link(h, &peer, POD_INTERFACE, spec.mac.0, spec.mtu).await?;
            for a in std::iter::once(spec.ipv4).chain(spec.ipv6) {
                nl::add_address(h, i, POD_INTERFACE, a, false).await?;
            }
            for r in spec.routes() {
                nl::add_route(h, i, POD_INTERFACE, &r).await?;
            }
            Ok(())
        })
    }

    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The pod's network namespace, `/run/netns/vmpod-pod-<name>`.
    pub fn netns_path(&self) -> &Path {
        &self.netns
    }

    /// The node's namespace, or `None` when the node is the host.
    pub fn node_netns_path(&self) -> Option<&Path> {
        self.node.netns_path()
    }

    /// The node end of the pod's veth (on the node bridge).
    pub fn node_veth(&self) -> &str {
        &self.node_veth
    }

    /// The pod's resolv.conf (what discovery reads through its path override).
    pub fn resolv_conf_path(&self) -> PathBuf {
        crate::statedir::PodDir::new(&self.state_dir).resolv_conf()
    }

    /// A file holding the pod's hostname and a newline.
    pub fn hostname_path(&self) -> PathBuf {
        crate::statedir::PodDir::new(&self.state_dir).hostname()
    }

    pub fn hostname(&self) -> &str {
        &self.spec.hostname
    }

    /// `program` as a command that runs inside the pod's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::io::Result<Command> {
        command_in(&self.netns, program)
    }

    /// `program` as one of the pod's processes, the way a container sees the pod: inside
    /// the pod's network namespace, with a private mount namespace where the pod's
    /// resolv.conf is bind-mounted on /etc/resolv.conf (which must exist) and a UTS
    /// namespace holding the pod's hostname. Nothing propagates back to the host.
    pub fn pod_command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::io::Result<Command> {
        use nix::mount::{MsFlags, mount};
        use nix::sched::{CloneFlags, unshare};
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = self.command(program)?;
        let resolv = CString::new(self.resolv_conf_path().as_os_str().as_bytes())?;
        let hostname = self.spec.hostname.clone();
        let none = None::<&CStr>;
        // SAFETY: runs in the forked child before exec, after the setns of `command`; it
        // only makes syscalls (unshare, mount, sethostname) on data prepared before the
        // fork, without allocating.
        unsafe {
            cmd.pre_exec(move || {
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
                mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
                mount(
                    Some(resolv.as_c_str()),
                    c"/etc/resolv.conf",
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
                nix::unistd::sethostname(&hostname)?;
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Run an async job on a thread inside the pod's namespace (netlink and packet
    /// sockets it opens belong to the pod).
    pub fn block_on<T: Send, Fut: Future<Output = T>>(
        &self,
        f: impl FnOnce() -> Fut + Send,
    ) -> std::io::Result<T> {
        netns::block_on_in(Some(&self.netns), f)
    }

    /// The pod's addresses as the spec gave them.
    pub fn addresses(&self) -> Vec<IpCidr> {
        std::iter::once(self.spec.ipv4)
            .chain(self.spec.ipv6)
            .collect()
    }
}

impl PodSandbox {
    /// Keep the pod's namespace, veth and files after this value is gone: whoever calls
    /// this takes over the cleanup (e.g. the local runtime, which records the names and
    /// removes them with [`remove_host_pod`] even after a restart of its own).
    pub fn leave_in_place(mut self) {
        self.armed = false;
    }
}

/// Remove a pod whose node side is the host and whose addresses lie inside the node
/// bridge's subnet (no node routes): its node-side veth and its namespace. What is gone
/// already is fine.
pub fn remove_host_pod(node_veth: &str, netns_name: &str) -> Result<()> {
    in_netns(None, async |h| nl::del_link(h, node_veth).await)?;
    netns::delete(netns_name).map_err(io_err("delete pod netns", netns::path(netns_name)))?;
    Ok(())
}

impl Drop for PodSandbox {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (veth, routes, bridge) = (&self.node_veth, &self.node_routes, self.node.bridge());
        let index = self.node.bridge_index;
        let node_side = in_netns(self.node.netns_path(), async |h| {
            nl::del_link(h, veth).await?;
            for r in routes {
                nl::del_route(h, index, bridge, r).await?;
            }
            Ok(())
        });
        if let Err(e) = node_side {
            tracing::warn!(pod = %self.spec.name, error = %e, "cannot clean the node side");
        }
        let name = self.spec.netns_name();
        if let Err(e) = netns::delete(&name) {
            tracing::warn!(netns = %name, error = %e, "cannot delete pod netns");
        }
        if self.owns_state_dir
            && let Err(e) = fs::remove_dir_all(&self.state_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.state_dir.display(), error = %e, "cannot remove pod state dir");
        }
    }
}
