//! A kubelet-shaped runner for privileged tests: runs a Pod (and the Secrets it mounts)
//! with podman on a real OCI runtime (runc: namespaces, cgroups, seccomp, capability sets,
//! the device cgroup). Include with `mod cluster;` (it uses `mod support;`).
//!
//! What kubelet + a bridge CNI would do, and nothing it would not:
//! - the pod network: a namespace with `eth0` on a node bridge (the sandbox of
//!   `vmpod::sandbox`), the node living in a namespace of its own; IPv4, or dual-stack
//!   ([`ClusterNode::create_dual_stack`]);
//! - volumes under a pod directory keyed by the pod's UID: hostPath (DirectoryOrCreate
//!   creates it; a CharDevice is bind-mounted like any hostPath, so the device cgroup
//!   refuses it to an unprivileged container unless the runtime allows it by default, as
//!   runc does /dev/net/tun and not /dev/kvm), emptyDir (a tmpfs of `sizeLimit` bytes when given: the limit is enforced, not
//!   watched as kubelet does; unlike a node-disk emptyDir, its pages are charged to the
//!   writing container's memory cgroup), downwardAPI and Secret files (mounted read-only),
//!   image volumes as
//!   read-only image mounts, subPath and subPathExpr;
//! - init containers in order, each to a zero exit, then the containers;
//! - the Pod's `securityContext.sysctls` (network ones: safe, or in the node's
//!   `allowed_unsafe_sysctls` as kubelet's `--allowed-unsafe-sysctls`), written in the
//!   pod's network namespace before any container starts;
//! - securityContext, env (values, `$(VAR)`, fieldRef), command/args, memory and CPU limits,
//!   extended resources as kubelet's device manager does: the node offers what its
//!   [`DeviceManager`] has healthy, and before the pod's containers are created each
//!   container's devices are asked of the resource's device plugin (its `Allocate`) and
//!   added to the container (`--device host:container:permissions`);
//! - stop: SIGTERM, then SIGKILL after `terminationGracePeriodSeconds` (`podman stop -t`).
//!
//! Every other field of the Pod is an error naming its path ([`spec::plan_pod`]).
//! `localhost/` images must already be in podman's storage: nothing is ever pulled.
//! podman runs with tests/cluster/containers.conf (runc, explicit rlimits).
#![allow(dead_code)]

pub mod launcher;
pub mod spec;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::Value;
use spec::{ContainerPlan, NodeFacts, PodFacts, PodPlan, VolumePlan, plan_pod};
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use vmpod::net::IpCidr;
use vmpod::sandbox::{Node, NodeSpec, PodSandbox, PodSpec};

/// Where the runner keeps pod directories (kubelet's /var/lib/kubelet/pods).
pub const KUBELET_ROOT: &str = "/var/lib/vmpod-test-kubelet";

/// The repository root: the package's directory, or its parent for a member crate that
/// includes this runner (the handler's tests do).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("tests/cluster/containers.conf").exists())
        .expect("tests/cluster/containers.conf above the package")
}

/// `podman` with this runner's containers.conf.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        repo_root().join("tests/cluster/containers.conf"),
    );
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {:?} {}: {}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The node of a privileged runner test, made by `create` once the images are in podman's
/// storage; `None` where [`crate::support::privileged_test`] skips the test.
pub fn privileged_node(create: fn() -> ClusterNode) -> Option<ClusterNode> {
    if !crate::support::privileged_test() {
        return None;
    }
    ensure_images();
    Some(create())
}

/// Build the images (`manifests/build-image.sh`, a no-op when they are up to date) from this
/// test profile's binaries, once per test process.
pub fn ensure_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The profile of the running test binary: target/<profile>/deps/<test>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(p) => p.to_string(),
            None => panic!("no profile directory above {}", exe.display()),
        };
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("manifests/build-image.sh"))
            .args(["--profile", &profile])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        // What cargo sets for this test process would make the nested build look like a
        // different configuration (see support::cargo_build).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || k.starts_with("RUSTC")
                || k == "OUT_DIR"
            {
                cmd.env_remove(&*k);
            }
        }
        let st = cmd.status().expect("run manifests/build-image.sh");
        assert!(st.success(), "manifests/build-image.sh: {st}");
    });
}

/// YAML documents (what `vmpod-handler render-pod` prints) -> the Pod and the Secrets.
pub fn parse_documents(yaml: &str) -> Result<(Pod, Vec<Secret>)> {
    let mut pod = None;
    let mut secrets = Vec::new();
    let docs: Vec<Value> = vmpod::api::yaml::documents(yaml).context("YAML documents")?;
    for v in docs {
        match v["kind"].as_str() {
            Some("Pod") if pod.is_none() => pod = Some(serde_json::from_value(v)?),
            Some("Secret") => secrets.push(serde_json::from_value(v)?),
            other => bail!("unexpected document kind {other:?}"),
        }
    }
    Ok((pod.context("no Pod document")?, secrets))
}

/// A device as a device plugin's `Allocate` hands it out (its DeviceSpec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGrant {
    pub host_path: String,
    pub container_path: String,
    /// Device cgroup permissions: any of `r`, `w`, `m`.
    pub permissions: String,
}

/// Kubelet's device manager: the node's device plugins as kubelet sees them.
pub trait DeviceManager: Send + Sync {
    /// Healthy devices per extended resource (what the node can allocate).
    fn allocatable(&self) -> BTreeMap<String, u64>;
    /// `count` devices of `resource` for one container, from the plugin's `Allocate`.
    fn allocate(&self, resource: &str, count: u64) -> Result<Vec<DeviceGrant>>;
}

/// The pods' IPv6 gateway on a dual-stack node, in the pods' fd88::/64.
pub const NODE_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);
/// The cluster DNS service's IPv6 address (a service address, like 10.96.0.10) that a
/// dual-stack pod's resolv.conf names.
pub const CLUSTER_DNS6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0xa);

/// The node: a bridge in a network namespace of its own holding the pods' gateway.
pub struct ClusterNode {
    pub name: String,
    node: Arc<Node>,
    pub gateway: std::net::Ipv4Addr,
    /// The pods' IPv6 gateway on a dual-stack node ([`ClusterNode::create_dual_stack`]).
    pub gateway6: Option<Ipv6Addr>,
    next_host: AtomicU8,
    pub facts: NodeFacts,
    /// The node's device plugins (none: no extended resources).
    pub devices: Option<Arc<dyn DeviceManager>>,
}

impl ClusterNode {
    /// A node with pod subnet 10.88.0.0/24 (the node namespace is private, so nodes of
    /// concurrent tests do not collide) and no device plugins.
    pub fn create() -> ClusterNode {
        Self::with_gateway6(None)
    }

    /// [`ClusterNode::create`], dual-stack: pods also get `fd88::<n>/64` (`n` as in their
    /// IPv4 address) with the IPv6 default route via [`NODE_GATEWAY6`], and the IPv6
    /// nameserver [`CLUSTER_DNS6`] after the IPv4 one.
    pub fn create_dual_stack() -> ClusterNode {
        Self::with_gateway6(Some(NODE_GATEWAY6))
    }

    fn with_gateway6(gateway6: Option<Ipv6Addr>) -> ClusterNode {
        let gw = IpCidr::new("10.88.0.1".parse().unwrap(), 24);
        let gws = std::iter::once(gw)
            .chain(gateway6.map(|g| IpCidr::new(g.into(), 64)))
            .collect();
        let node = Node::create(&NodeSpec::isolated(gws)).expect("create the node netns");
        let name = format!("node-{}", vmpod::sandbox::unique_id());
        ClusterNode {
            facts: NodeFacts {
                extended_resources: BTreeMap::new(),
                labels: BTreeMap::from([("kubernetes.io/hostname".into(), name.clone())]),
                allowed_unsafe_sysctls: Vec::new(),
            },
            devices: None,
            name,
            node,
            gateway: "10.88.0.1".parse().unwrap(),
            gateway6,
            next_host: AtomicU8::new(10),
        }
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &Path {
        self.node.netns_path().expect("an isolated node")
    }

    /// `program` run in the node's network namespace.
    pub fn command(&self, program: &str) -> Command {
        vmpod::sandbox::command_in(self.netns(), program).unwrap()
    }

    /// Run `pod`: check it, make its network and volumes, run its init containers to
    /// completion and start its containers.
    pub fn run_pod(&self, pod: &Pod, secrets: &[Secret]) -> Result<RunningPod> {
        let doc = serde_json::to_value(pod)?;
        let meta = &doc["metadata"];
        let name = meta["name"].as_str().context("metadata.name")?.to_string();
        let uid = match meta["uid"].as_str() {
            Some(u) => u.to_string(),
            None => std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
                .trim()
                .to_string(),
        };
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let pod_ip = std::net::Ipv4Addr::new(10, 88, 0, host);
        let facts = PodFacts {
            uid: uid.clone(),
            namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
            labels: serde_json::from_value(meta["labels"].clone()).unwrap_or_default(),
            annotations: serde_json::from_value(meta["annotations"].clone()).unwrap_or_default(),
            node_name: self.name.clone(),
            pod_ip: pod_ip.to_string(),
            name: name.clone(),
        };
        let mut secret_data = BTreeMap::new();
        for s in secrets {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in s.string_data.iter().flatten() {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            secret_data.insert(s.metadata.name.clone().unwrap_or_default(), data);
        }
        let mut node_facts = self.facts.clone();
        if let Some(dm) = &self.devices {
            node_facts.extended_resources = dm.allocatable();
        }
        let plan = plan_pod(&doc, &facts, &node_facts, &secret_data)?;
        // Admission: every container's devices, before anything is created.
        let mut grants: BTreeMap<String, Vec<DeviceGrant>> = BTreeMap::new();
        for c in plan.init_containers.iter().chain(&plan.containers) {
            for (resource, count) in &c.devices {
                let dm = self.devices.as_ref().context("no device manager")?;
                let got = dm
                    .allocate(resource, *count)
                    .with_context(|| format!("container {}: allocate {resource}", c.name))?;
                grants.entry(c.name.clone()).or_default().extend(got);
            }
        }

        let mut spec = PodSpec::new("cl", IpCidr::new(pod_ip.into(), 24), self.gateway);
        spec.hostname = name.clone();
        spec.dns = vec!["10.96.0.10".parse().unwrap()];
        spec.search = vec![format!("{}.svc.cluster.local", facts.namespace)];
        let pod_ip6 = self.gateway6.map(|_| {
            let n = NODE_GATEWAY6.segments();
            Ipv6Addr::new(n[0], n[1], n[2], n[3], 0, 0, 0, host.into())
        });
        if let Some(ip6) = pod_ip6 {
            spec.ipv6 = Some(IpCidr::new(ip6.into(), 64));
            spec.gateway6 = self.gateway6;
            spec.dns.push(CLUSTER_DNS6.into());
        }
        let sandbox = PodSandbox::create_on(&self.node, &spec)?;
        // The pod's sysctls, in its network namespace before any container runs (the
        // containers see /proc/sys read-only).
        for (name, value) in &plan.sysctls {
            let path = Path::new("/proc/sys").join(name.replace('.', "/"));
            vmpod::net::netns::run_in(Some(sandbox.netns_path()), || std::fs::write(&path, value))?
                .with_context(|| format!("sysctl {name}={value} in the pod's namespace"))?;
        }
        let mut running = RunningPod {
            uid: uid.clone(),
            name,
            pod_ip,
            pod_ip6,
            dir: Path::new(KUBELET_ROOT).join("pods").join(&uid),
            tmpfs: Vec::new(),
            created: Vec::new(),
            containers: Vec::new(),
            grace: Duration::from_secs(plan.grace_seconds),
            sandbox,
            volumes: BTreeMap::new(),
            plan_volumes: BTreeMap::new(),
        };
        running.make_volumes(&plan)?;
        for c in &plan.init_containers {
            let name = running.start(c, grants.get(&c.name))?;
            let code = running.wait_container(&name, Duration::from_secs(300))?;
            if code != 0 {
                bail!(
                    "init container {} exited {code}; its log:\n{}",
                    c.name,
                    running.logs_of(&name)
                );
            }
        }
        for c in &plan.containers {
            let name = running.start(c, grants.get(&c.name))?;
            running.containers.push((c.name.clone(), name));
        }
        Ok(running)
    }
}

/// A pod that runs (or ran) on a [`ClusterNode`]. Dropping it removes its containers,
/// volumes, pod directory and network, as kubelet does for a deleted pod; hostPath
/// directories stay.
pub struct RunningPod {
    pub uid: String,
    pub name: String,
    pub pod_ip: std::net::Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack node.
    pub pod_ip6: Option<Ipv6Addr>,
    /// The pod directory (kubelet's /var/lib/kubelet/pods/<uid>).
    pub dir: PathBuf,
    tmpfs: Vec<PathBuf>,
    /// podman container names, init containers included.
    created: Vec<String>,
    /// (container name in the Pod, podman name) of the running containers.
    containers: Vec<(String, String)>,
    grace: Duration,
    pub sandbox: PodSandbox,
    /// Volume name -> node path (hostPath, emptyDir, files).
    volumes: BTreeMap<String, PathBuf>,
    plan_volumes: BTreeMap<String, VolumePlan>,
}

/// How the pod's containers ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodExit {
    /// Exit code per container, in the Pod's order.
    pub codes: Vec<(String, i32)>,
    /// `Succeeded` when every container exited 0 (restartPolicy Never), else `Failed`.
    pub phase: &'static str,
}

impl RunningPod {
    fn make_volumes(&mut self, plan: &PodPlan) -> Result<()> {
        for (name, v) in &plan.volumes {
            let path = match v {
                VolumePlan::HostPath {
                    path,
                    create,
                    char_device,
                } => {
                    let p = PathBuf::from(path);
                    if *create {
                        std::fs::create_dir_all(&p)
                            .with_context(|| format!("volume {name}: create {path}"))?;
                    }
                    let meta = std::fs::metadata(&p)
                        .with_context(|| format!("volume {name}: hostPath {path}"))?;
                    if *char_device && !meta.file_type().is_char_device() {
                        bail!("volume {name}: hostPath {path} is not a character device");
                    }
                    if !*char_device && !meta.is_dir() {
                        bail!("volume {name}: hostPath {path} is not a directory");
                    }
                    p
                }
                VolumePlan::EmptyDir { size_limit } => {
                    let p = self.dir.join("volumes/empty-dir").join(name);
                    std::fs::create_dir_all(&p)
                        .with_context(|| format!("volume {name}: create {}", p.display()))?;
                    if let Some(bytes) = size_limit {
                        nix::mount::mount(
                            Some("tmpfs"),
                            &p,
                            Some("tmpfs"),
                            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                            Some(format!("size={bytes},mode=0777").as_str()),
                        )
                        .with_context(|| {
                            format!("volume {name}: mount a tmpfs on {}", p.display())
                        })?;
                        self.tmpfs.push(p.clone());
                    }
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))?;
                    p
                }
                VolumePlan::Files { files } => {
                    let p = self.dir.join("volumes/files").join(name);
                    std::fs::create_dir_all(&p)?;
                    for (file, data, mode) in files {
                        let f = p.join(file);
                        if let Some(parent) = f.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        std::fs::write(&f, data)
                            .with_context(|| format!("volume {name}: write {}", f.display()))?;
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
                    }
                    p
                }
                VolumePlan::Image { reference } => {
                    let mut cmd = podman();
                    cmd.args(["image", "exists", reference]);
                    if !cmd.status()?.success() {
                        bail!(
                            "volume {name}: image {reference} is not present and the runner never pulls"
                        );
                    }
                    continue;
                }
            };
            self.volumes.insert(name.clone(), path);
        }
        self.plan_volumes = plan.volumes.clone();
        Ok(())
    }

    /// Create and start one container; returns its podman name.
    fn start(&mut self, c: &ContainerPlan, devices: Option<&Vec<DeviceGrant>>) -> Result<String> {
        let name = format!("{}-{}-{}", self.name, c.name, &self.uid[..8]);
        let mut cmd = podman();
        cmd.args(["run", "--detach", "--pull=never", "--name", &name])
            .arg(format!(
                "--network=ns:{}",
                self.sandbox.netns_path().display()
            ))
            .args(["--hostname", &self.name]);
        for dns in &self.sandbox.spec().dns {
            cmd.arg(format!("--dns={dns}"));
        }
        for s in &self.sandbox.spec().search {
            cmd.arg(format!("--dns-search={s}"));
        }
        cmd.args(&c.flags);
        for d in devices.into_iter().flatten() {
            cmd.arg(format!(
                "--device={}:{}:{}",
                d.host_path, d.container_path, d.permissions
            ));
        }
        for m in &c.mounts {
            let plan = &self.plan_volumes[&m.volume];
            match plan {
                VolumePlan::Image { reference } => {
                    cmd.arg(format!(
                        "--mount=type=image,source={reference},destination={}",
                        m.mount_path
                    ));
                }
                VolumePlan::Files { .. }
                | VolumePlan::HostPath { .. }
                | VolumePlan::EmptyDir { .. } => {
                    let mut src = self.volumes[&m.volume].clone();
                    if let Some(sub) = &m.sub_path {
                        src = src.join(sub);
                        std::fs::create_dir_all(&src)
                            .with_context(|| format!("{}: sub path {}", c.name, src.display()))?;
                    }
                    // Kubernetes mounts downward-API and Secret volumes read-only always.
                    let ro = m.read_only || matches!(plan, VolumePlan::Files { .. });
                    cmd.arg(format!(
                        "--mount=type=bind,source={},destination={},ro={ro}",
                        src.display(),
                        m.mount_path
                    ));
                }
            }
        }
        cmd.arg(&c.image).args(&c.args);
        self.created.push(name.clone());
        run(cmd, &format!("start container {}", c.name))?;
        Ok(name)
    }

    /// The podman name of the Pod's container `container`.
    pub fn podman_name(&self, container: &str) -> &str {
        &self
            .containers
            .iter()
            .find(|(c, _)| c == container)
            .unwrap_or_else(|| panic!("no container {container}"))
            .1
    }

    fn wait_container(&self, name: &str, timeout: Duration) -> Result<i32> {
        let mut child = podman()
            .args(["wait", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("container {name} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| {
                format!(
                    "podman wait {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    fn exit(&self, codes: Vec<(String, i32)>) -> PodExit {
        let phase = if codes.iter().all(|(_, c)| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        };
        PodExit { codes, phase }
    }

    /// Wait (at most `timeout`) until every container has exited.
    pub fn wait(&self, timeout: Duration) -> Result<PodExit> {
        let mut codes = Vec::new();
        for (c, name) in &self.containers {
            codes.push((c.clone(), self.wait_container(name, timeout)?));
        }
        Ok(self.exit(codes))
    }

    /// Stop the pod as kubelet does on deletion: SIGTERM to every container, SIGKILL
    /// after the grace period. Returns how they ended and how long it took.
    pub fn stop(&self) -> Result<(PodExit, Duration)> {
        let started = Instant::now();
        let grace = self.grace.as_secs().to_string();
        let stops: Vec<_> = self
            .containers
            .iter()
            .map(|(_, name)| {
                podman()
                    .args(["stop", "-t", &grace, name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        for s in stops {
            let out = s.wait_with_output()?;
            if !out.status.success() {
                bail!("podman stop: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let took = started.elapsed();
        Ok((self.wait(Duration::from_secs(10))?, took))
    }

    /// The log of the Pod's container `container`.
    pub fn logs(&self, container: &str) -> String {
        self.logs_of(self.podman_name(container))
    }

    fn logs_of(&self, name: &str) -> String {
        podman()
            .args(["logs", name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("(podman logs {name}: {e})"))
    }

    /// Host PIDs of the processes in container `container` (empty once it exited).
    pub fn pids(&self, container: &str) -> Vec<u32> {
        let out = podman()
            .args(["top", self.podman_name(container), "hpid"])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .skip(1)
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Run `argv` inside container `container` (`podman exec`); stdout on success.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Result<String> {
        let mut cmd = podman();
        cmd.args(["exec", self.podman_name(container)]).args(argv);
        let out = run(cmd, &format!("exec in {container}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        if !self.created.is_empty() {
            let mut cmd = podman();
            cmd.args(["rm", "--force", "--time", "0"])
                .args(&self.created);
            if let Err(e) = run(cmd, "remove containers") {
                eprintln!("runner: {e:#}");
            }
        }
        for t in &self.tmpfs {
            if let Err(e) = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("runner: unmount {}: {e}", t.display());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("runner: remove {}: {e}", self.dir.display());
        }
    }
}
