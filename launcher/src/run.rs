//! `vmpod-launcher [run]`: the whole acquired. Load and validate the VMI, rewire the pod
//! network (or reuse the cached rewire), serve DHCP to the VM, start the pod's own
//! libvirtd, define and start the domain, serve the control API, and own the
//! lifecycle: SIGTERM -> ACPI shutdown -> grace period -> destroy; when the domain is
//! gone, tear everything down in reverse and exit (0 for a clean stop, 1 with the reason
//! otherwise). When KVM fails under the guest (see `accel_fallback`), `auto` boots the
//! domain again under TCG in the same pod and remembers the verdict on the node. Every
//! process started here is a child of the launcher.

use crate::accel_fallback::{self, Interruption, Next, classify_pause, kvm_failure_in};
use crate::backend::{ActionRequest, LauncherBackend, Shared, lock};
use crate::boot_slots::{BootSlotArgs, Slot};
use crate::decide;
use crate::lifecycle::{self, PhaseOwner, StatusBoard, phase_of, reason_of};
use crate::status_file::StatusWriter;
use anyhow::{Context, bail};
use clap::Args;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vmpod::api::{self, AccelerationRequest, ValidVmi};
use vmpod::control::{
    self, Acceleration, BackendError, ControlServer, LauncherStatus, LifecycleAction,
    NetworkReport, PauseReason, Phase, StatusVersion,
};
use vmpod::dhcp::{DhcpConfig, DhcpServer, StatsHandle};
use vmpod::domain::agent::{self, Events, Request, VirtAgent};
use vmpod::domain::daemons::{self, Daemons, LibvirtLayout, RunAs};
use vmpod::domain::volumes::VolumeDirs;
use vmpod::domain::{
    Attachment, DomainEnv, DomainEvent, DomainState, DomainXml, KvmKey, KvmVerdicts, domain_name,
    domain_xml, prepare_volumes,
};
use vmpod::net;
use vmpod::statedir::{ScratchDir, StateDir};

#[derive(Args)]
pub struct RunArgs {
    /// The VirtualMachineInstance: a YAML or JSON file, `-` for standard input. VMPOD_VMI
    /// may hold a path or the manifest itself.
    #[arg(long, env = "VMPOD_VMI")]
    pub vmi: Option<String>,
    /// Per-pod state directory, what the node daemon reads: control socket, status.json,
    /// cached network facts (mode 0700).
    #[arg(long, env = "VMPOD_STATE_DIR", default_value = vmpod::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Per-VM scratch (an emptyDir in a cluster): disks, containerDisk overlays,
    /// cloud-init.img, console log and socket, libvirt/. Default: the state directory.
    #[arg(long, env = "VMPOD_SCRATCH_DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Where the pod mounts each containerDisk image, as `<dir>/<volume>/`. Default:
    /// `<state-dir>/container-disks`.
    #[arg(long, env = "VMPOD_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Where the pod mounts each Secret a cloudInitNoCloud `secretRef` names, as
    /// `<dir>/<secret name>/`.
    #[arg(long, env = "VMPOD_SECRETS_DIR", default_value = "/etc/vmpod/secrets")]
    pub secrets_dir: PathBuf,
    /// Force the accelerator (auto, kvm, emulation); default: the VMI's
    /// `vmpod.io/acceleration` annotation, else auto.
    #[arg(long, value_parser = parse_accel)]
    pub accel: Option<AccelerationRequest>,
    /// The pod interface the VMI's pod network is on.
    #[arg(long, default_value = "eth0")]
    pub pod_interface: String,
    /// The pod's resolv.conf (DNS servers and search domains served to the VM).
    #[arg(long, default_value = net::discover::DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,
    /// Per-node seed of libvirt's QEMU capabilities cache (copied in at start, refreshed
    /// after the domain runs): saves libvirtd seconds of probing QEMU.
    #[arg(long, env = "VMPOD_CAPS_SEED", default_value = daemons::DEFAULT_CAPS_SEED)]
    pub caps_seed: PathBuf,
    /// The node's file of KVM failures (the next pod on a node where KVM failed under a
    /// guest goes straight to TCG); default: `kvm-verdicts.json` beside `--caps-seed`.
    /// A pod whose seed lives in its image needs a node directory here.
    #[arg(long, env = "VMPOD_KVM_VERDICTS")]
    pub kvm_verdicts: Option<PathBuf>,
    /// Take /dev/kvm as usable without probing it (for tests whose libvirt client is a
    /// stand-in); a remembered KVM failure on the node still counts.
    #[arg(long, hide = true)]
    pub skip_kvm_probe: bool,
    // None: every hostDisk volume is refused.
    #[command(flatten)]
    pub host_disks: vmpod::domain::HostDiskDirArgs,
    #[command(flatten)]
    pub boot_slots: BootSlotArgs,
}

impl RunArgs {
    fn verdicts(&self) -> KvmVerdicts {
        match &self.kvm_verdicts {
            Some(path) => KvmVerdicts { path: path.clone() },
            None => KvmVerdicts::beside(&self.caps_seed),
        }
    }
}

fn parse_accel(s: &str) -> Result<AccelerationRequest, String> {
    AccelerationRequest::parse(s).ok_or_else(|| format!("{s:?}: want auto, kvm or emulation"))
}

/// The manifest text: `-` is stdin, something that looks like a manifest is taken as is
/// (VMPOD_VMI may carry the manifest), anything else is a path.
fn read_vmi_text(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("read the VMI from stdin")?;
        return Ok(s);
    }
    if arg.contains('\n') || arg.trim_start().starts_with('{') {
        return Ok(arg.to_string());
    }
    std::fs::read_to_string(arg).with_context(|| format!("read the VMI from {arg}"))
}

/// Load, validate and default the VMI; relative file paths resolve against the cwd.
pub fn load(arg: &str) -> anyhow::Result<ValidVmi> {
    let text = read_vmi_text(arg)?;
    let mut vmi = api::load_valid_vmi(&text).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid VMI: {}", list.join("; "))
    })?;
    let cwd = std::env::current_dir().context("current directory")?;
    vmi.resolve_relative_paths(&cwd);
    Ok(vmi)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let arg = args
        .vmi
        .clone()
        .context("no VMI: pass --vmi FILE|- or set VMPOD_VMI")?;
    let vmi = load(&arg)?;
    let outside = vmpod::domain::host_disks_outside(&vmi, &args.host_disks.host_disk_dirs);
    if !outside.is_empty() {
        let list: Vec<String> = outside.iter().map(ToString::to_string).collect();
        bail!("invalid VMI: {}", list.join("; "));
    }
    let request = match args.accel {
        Some(a) => a,
        None => vmi
            .acceleration()
            .context("invalid vmpod.io/acceleration annotation")?,
    };
    let (accel, kvm_refused, kvm_key) = decide_accel(&args, request)?;
    tracing::info!(vmi = %domain_name(&vmi), %accel, kvm_refused, "starting");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let accel = Accel {
        request,
        booted: accel,
        why_not_kvm: kvm_refused,
        kvm_key,
    };
    rt.block_on(run_pod(args, vmi, accel, started))
}

/// The acceleration to boot with, why KVM is not used when it was allowed, and this
/// node's key for remembering a KVM failure. A failure remembered on the node counts as
/// a probe that failed: `auto` goes straight to TCG, `kvm` fails with it.
fn decide_accel(
    args: &RunArgs,
    request: AccelerationRequest,
) -> anyhow::Result<(Acceleration, Option<String>, Option<KvmKey>)> {
    if request == AccelerationRequest::Emulation {
        return Ok((Acceleration::Tcg, None, None));
    }
    let emulator = Path::new(vmpod::domain::xml::EMULATOR);
    let key = KvmKey::of_this_node(emulator)
        .map_err(|e| tracing::warn!("KVM verdicts of this node not used: {e}"))
        .ok();
    let verdicts = args.verdicts();
    let remembered = key.as_ref().and_then(|k| {
        verdicts
            .find(k)
            .map_err(|e| tracing::warn!("KVM verdicts of this node not used: {e}"))
            .ok()
            .flatten()
    });
    let usable = match remembered {
        Some(f) => Err(format!(
            "KVM failed on this node before ({}; recorded {} in {})",
            f.reason,
            f.at.0,
            verdicts.path.display()
        )),
        None if args.skip_kvm_probe => Ok(()),
        None => vmpod::domain::kvm_usable(Path::new(vmpod::domain::accel::KVM_DEVICE), emulator)
            // QEMU runs as its own user, not as the launcher that probed.
            .and_then(|()| RunAs::qemu(true).may_open(Path::new(vmpod::domain::accel::KVM_DEVICE))),
    };
    let refused = usable.as_ref().err().cloned();
    let accel = vmpod::domain::choose(request, usable)?;
    Ok((accel, refused, key))
}

/// What the acceleration was decided from, and what it was.
struct Accel {
    request: AccelerationRequest,
    /// What the domain is first booted with.
    booted: Acceleration,
    /// Why not KVM, when `auto` had to do without it.
    why_not_kvm: Option<String>,
    /// This node's key for KVM verdicts (none under `emulation`).
    kvm_key: Option<KvmKey>,
}

/// What boot acquired and teardown must give back, in reverse order.
#[derive(Default)]
struct Acquired {
    net_rewired: bool,
    dhcp_tasks: Vec<JoinHandle<()>>,
    daemons: Option<Daemons>,
    /// The libvirt client process (`vmpod-virt`).
    agent: Option<VirtAgent>,
    /// The name of the domain defined and started.
    domain: Option<String>,
    events: Option<Events>,
    /// What the domain XML was rendered from (rendered again for a TCG fallback).
    env: Option<DomainEnv>,
    /// Where QEMU's log of the current boot starts.
    qemu_log_from: u64,
    /// Copies the console FIFO to console.log.
    console: Option<control::ConsoleLog>,
    /// Holds the node's boot slot until the guest's lease (see [`hold_boot_slot`]).
    boot_slot: Option<JoinHandle<()>>,
}

struct Ctx {
    args: RunArgs,
    vmi: ValidVmi,
    accel: Accel,
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    status_file: StatusWriter,
}

impl Ctx {
    fn state_dir(&self) -> StateDir {
        StateDir::new(&self.args.state_dir)
    }

    fn scratch_dir(&self) -> ScratchDir {
        self.state_dir().scratch(self.args.scratch_dir.as_deref())
    }

    /// The pod libvirtd's tree in the scratch dir: its socket, QEMU's log and pid file.
    fn libvirt(&self) -> LibvirtLayout {
        LibvirtLayout::new(self.scratch_dir().path())
    }

    /// Update the status and write status.json.
    fn publish(&self, f: impl FnOnce(&mut LauncherStatus)) {
        let status = {
            let mut s = lock(&self.shared);
            s.update_status(f);
            s.status.clone()
        };
        self.status_file.write(status);
    }
}

/// The phase the lifecycle owner decides on is the one this task publishes.
impl StatusBoard for Ctx {
    fn phase(&self) -> Phase {
        lock(&self.shared).status.phase
    }

    fn publish(&self, f: impl FnOnce(&mut LauncherStatus)) {
        Ctx::publish(self, f);
    }
}

async fn run_pod(
    args: RunArgs,
    vmi: ValidVmi,
    accel: Accel,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    // Signals first: a SIGTERM during boot must still lead to an orderly teardown.
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    make_dirs(&args)?;

    let status = decide::initial_status(&vmi, accel.booted, accel.why_not_kvm.as_deref());
    let shared = Arc::new(Mutex::new(Shared {
        status,
        status_version: StatusVersion::default(),
        network: NetworkReport {
            interfaces: Vec::new(),
        },
        dhcp: Vec::new(),
        ipv6: Vec::new(),
        domain_xml: String::new(),
    }));
    let status_file = StatusWriter::start(args.state_dir.clone())?;
    let ctx = Ctx {
        args,
        vmi,
        accel,
        shared,
        started,
        status_file,
    };
    ctx.publish(|_| {});

    // The control API answers from the start (status while booting); its lifecycle
    // actions come here, to the task that owns the phase.
    let (act_tx, act_rx) = mpsc::channel::<ActionRequest>(8);
    let mut owner = PhaseOwner::new(act_rx);
    let socket = ctx.state_dir().control_socket();
    let backend = Arc::new(LauncherBackend {
        shared: ctx.shared.clone(),
        actions: act_tx,
        console_log: ctx.scratch_dir().console_log(),
        console_socket: ctx.scratch_dir().console_socket(),
    });
    let server = ControlServer::bind(&socket)?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_task = tokio::spawn(server.serve(backend, async {
        let _ = stop_rx.await;
    }));

    let mut acquired = Acquired::default();
    let result = async {
        // libvirtd and its client start in their own processes while this one rewires
        // the network; boot waits for libvirtd's socket.
        spawn_libvirt(&ctx, &mut acquired)?;
        if daemons::untuned() {
            // The order from before (the benchmarks' before): libvirtd, then the network.
            libvirtd_ready(&ctx, &mut acquired).await?;
        }
        // The network phase is not raced: it is netlink only and sub-second, and a
        // blocking setup cancelled halfway would go on beside the teardown. A signal
        // meanwhile waits in its stream for the race below.
        let interfaces = network_phase(&ctx, &mut acquired).await?;
        // The rest of boot is raced against SIGTERM/SIGINT: libvirtd's start and the
        // domain's can take long, and kubelet's grace runs meanwhile. `acquired` records what
        // was acquired so far; teardown gives it back. Lifecycle actions meanwhile are
        // refused by the phase, or held until the domain is there.
        {
            let booting = boot(&ctx, &mut acquired, interfaces);
            tokio::pin!(booting);
            loop {
                tokio::select! {
                    r = &mut booting => break r?,
                    signal = first_signal(&mut sigterm, &mut sigint) => {
                        tracing::info!("{signal} during boot: tearing down");
                        bail!("stopped by {signal} during boot");
                    }
                    Some(request) = owner.recv() => owner.hold(&ctx, request),
                }
            }
        }
        supervise(&ctx, &mut acquired, &mut sigterm, &mut sigint, &mut owner).await
    }
    .await;
    owner.close();
    teardown(&ctx, &mut acquired).await;

    let code = match decide::final_phase(&result) {
        Ok((phase, reason)) => {
            ctx.publish(|s| s.set_phase(phase, reason));
            ExitCode::SUCCESS
        }
        Err(reason) => {
            ctx.publish(|s| s.set_phase(Phase::Failed, Some(reason.clone())));
            eprintln!("vmpod-launcher: {reason}");
            ExitCode::FAILURE
        }
    };
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(3), server_task).await {
        Ok(Ok(Err(e))) => tracing::warn!("control server: {e}"),
        Ok(_) => {}
        Err(_) => tracing::warn!("control server did not stop within 3 s"),
    }
    let _ = std::fs::remove_file(&socket);
    ctx.status_file.finish();
    Ok(code)
}

/// The state dir (0700: control socket, status, net cache) and the scratch dir. QEMU,
/// as its own user, writes its console log and socket into the scratch dir: it gets
/// the group and group write there (0770), and nothing of the state dir.
fn make_dirs(args: &RunArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let make = |dir: &Path, mode: u32| -> anyhow::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
            .with_context(|| format!("create {} (mode {mode:o})", dir.display()))
    };
    make(&args.state_dir, 0o700)?;
    if let Some(scratch) = &args.scratch_dir {
        make(scratch, 0o770)?;
    } else {
        // One directory for both (local mode): QEMU needs its group on it.
        make(&args.state_dir, 0o770)?;
    }
    let scratch = StateDir::new(&args.state_dir).scratch(args.scratch_dir.as_deref());
    let scratch = scratch.path();
    let qemu = RunAs::qemu(false);
    if nix::unistd::geteuid().as_raw() != qemu.uid {
        std::os::unix::fs::chown(scratch, None, Some(qemu.gid))
            .with_context(|| format!("chgrp {} {}", qemu.gid, scratch.display()))?;
    }
    Ok(())
}

/// The network phase for the VMI's pod interface: rewire (or reuse the cache), start its
/// DHCP server, and return the attachments for the domain XML.
async fn network_phase(
    ctx: &Ctx,
    acquired: &mut Acquired,
) -> anyhow::Result<BTreeMap<String, Attachment>> {
    let mut attachments = BTreeMap::new();
    let Some(iface) = ctx.vmi.pod_interface() else {
        return Ok(attachments);
    };
    let opts = decide::setup_options(
        iface,
        &ctx.args.pod_interface,
        &ctx.args.state_dir,
        &ctx.args.resolv_conf,
    );
    // Set before: a setup failing halfway is undone too.
    acquired.net_rewired = true;
    let outcome = tokio::task::spawn_blocking(move || net::setup_or_reuse(&opts))
        .await
        .context("network phase task")?
        .with_context(|| format!("network phase on pod interface {}", ctx.args.pod_interface))?;
    // Rewired by someone else (the pod's init container): theirs to undo, and without
    // NET_ADMIN this launcher could not.
    acquired.net_rewired = !outcome.reused;
    tracing::info!(
        interface = %outcome.cached.facts.interface, from_cache = outcome.from_cache,
        elapsed_ms = ctx.started.elapsed().as_millis(), "network ready"
    );

    // The VM's identity (hostname, subdomain) comes from the VMI, never from the pod.
    let mut vm = outcome.cached.clone();
    vm.facts = decide::vm_identity(&ctx.vmi, &vm.facts);
    let config = DhcpConfig::for_cached(&vm, &iface.dhcp)?;
    let server = DhcpServer::bind(config)?;
    let stats: StatsHandle = server.stats();
    acquired.dhcp_tasks.push(tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!("DHCP server: {e}");
        }
    }));
    // A dual-stack pod: DHCPv6 and router advertisements on the same bridge.
    let ipv6 = vmpod::dhcp::v6::service::Ipv6Service::bind_for(&vm)?;
    let ipv6_stats = ipv6.as_ref().map(|s| s.handle());
    if let Some(service) = ipv6 {
        acquired.dhcp_tasks.push(tokio::spawn(async move {
            if let Err(e) = service.run().await {
                tracing::error!("IPv6 for the VM: {e}");
            }
        }));
    }

    {
        let mut s = lock(&ctx.shared);
        s.status
            .interfaces
            .push(decide::interface_status(&iface.name, &outcome));
        s.network
            .interfaces
            .push(decide::interface_report(&iface.name, &outcome));
        s.dhcp.push(Some(stats));
        s.ipv6.push(ipv6_stats);
    }
    attachments.insert(iface.name.clone(), decide::attachment(&outcome));
    Ok(attachments)
}

/// The first of SIGTERM and SIGINT, by name.
async fn first_signal(sigterm: &mut Signal, sigint: &mut Signal) -> &'static str {
    tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    }
}

/// Start the pod's libvirtd and its client (`vmpod-virt`), as QEMU's user (see
/// daemons), without waiting for them: the private tree and the seeded capabilities
/// cache first, then both processes.
fn spawn_libvirt(ctx: &Ctx, acquired: &mut Acquired) -> anyhow::Result<()> {
    let run_as = run_as(ctx);
    let layout = ctx.libvirt();
    daemons::prepare(&layout, &run_as)?;
    // The libvirt client loads libvirt while libvirtd starts; it connects when asked to
    // define the domain.
    let agent_bin = agent::agent_binary(std::env::current_exe().ok().as_deref());
    let (agent, events) = VirtAgent::spawn(&agent_bin, &layout.socket(), run_as.clone())?;
    acquired.agent = Some(agent);
    acquired.events = Some(events);
    match daemons::seed_caps(&layout, &ctx.args.caps_seed, &run_as) {
        Ok(n) => tracing::debug!(files = n, "QEMU capabilities cache seeded"),
        Err(e) => tracing::warn!("seeding the QEMU capabilities cache: {e}"),
    }
    // Spawned from this (the main) thread: the daemons' parent-death signal follows it.
    acquired.daemons = Some(Daemons::spawn(&layout, run_as)?);
    Ok(())
}

/// Wait until the libvirtd [`spawn_libvirt`] started answers on its socket.
async fn libvirtd_ready(ctx: &Ctx, acquired: &mut Acquired) -> anyhow::Result<()> {
    let daemons = acquired
        .daemons
        .as_mut()
        .context("libvirtd was not started")?;
    daemons.ready().await?;
    tracing::info!(
        elapsed_ms = ctx.started.elapsed().as_millis(),
        "libvirtd ready"
    );
    Ok(())
}

/// Who libvirtd, QEMU and the libvirt client run as: QEMU's user, with `/dev/kvm`'s
/// group under KVM.
fn run_as(ctx: &Ctx) -> RunAs {
    RunAs::qemu(ctx.accel.booted == Acceleration::Kvm)
}

async fn boot(
    ctx: &Ctx,
    acquired: &mut Acquired,
    interfaces: BTreeMap<String, Attachment>,
) -> anyhow::Result<()> {
    let run_as = run_as(ctx);
    let dirs = VolumeDirs {
        scratch: ctx.scratch_dir().path().to_path_buf(),
        images: ctx
            .args
            .images_dir
            .clone()
            .unwrap_or_else(|| ctx.state_dir().container_disks()),
        secrets: ctx.args.secrets_dir.clone(),
    };
    let volumes = prepare_volumes(&ctx.vmi, &dirs, &run_as)?;
    let env = DomainEnv {
        accel: ctx.accel.booted,
        state_dir: ctx.scratch_dir().path().to_path_buf(),
        volumes,
        interfaces,
        kernel_boot_root: ctx.state_dir().kernel_boot(),
    };
    let xml = domain_xml(&ctx.vmi, &env)?;
    acquired.env = Some(env);
    // The console log belongs to this boot; an earlier boot's becomes console.log.1.
    acquired.console = Some(start_console_log(ctx, &run_as).await?);

    libvirtd_ready(ctx, acquired).await?;

    // The last wait before the domain starts: libvirtd started meanwhile.
    let slot = take_boot_slot(ctx).await?;

    let agent = acquired.agent.as_ref().context("no libvirt agent")?;
    let env = acquired.env.as_mut().context("no domain environment")?;
    let console = acquired.console.as_ref().context("no console log")?;
    acquired.qemu_log_from = qemu_log_len(ctx);
    // Before the start: a boot cancelled while it is in flight still has the domain
    // destroyed by teardown.
    acquired.domain = Some(domain_name(&ctx.vmi));
    let name = match start_domain(ctx, agent, &xml).await {
        Ok(name) => name,
        Err(e) => {
            let error = format!("{e:#}");
            // QEMU's log, and libvirt's own refusal of the domain type.
            let said = format!("{}\n{error}", qemu_log_since(ctx, acquired.qemu_log_from));
            let what = Interruption::StartFailed {
                kvm_failure: kvm_failure_in(&said),
                error,
            };
            match accel_fallback::after(ctx.accel.request, env.accel, &what) {
                Next::BootUnderTcg { why } => {
                    acquired.qemu_log_from = boot_under_tcg(ctx, agent, env, console, &why).await?;
                    domain_name(&ctx.vmi)
                }
                Next::Fail { why } => {
                    remember_kvm_failure(ctx, &why);
                    bail!("{why}");
                }
                Next::CarryOn => return Err(e),
            }
        }
    };
    acquired.domain = Some(name);
    acquired.boot_slot = slot.map(|(slot, lease)| hold_boot_slot(ctx, slot, lease));

    let (layout, seed) = (ctx.libvirt(), ctx.args.caps_seed.clone());
    tokio::task::spawn_blocking(move || match daemons::refresh_caps_seed(&layout, &seed) {
        Ok(n) => tracing::debug!(files = n, seed = %seed.display(), "capabilities seed refreshed"),
        Err(e) => tracing::warn!("refreshing the capabilities seed: {e}"),
    });
    Ok(())
}

/// Wait for one of the node's boot slots (see `boot_slots`), when boots are limited: the
/// slot, with the DHCP server whose first lease gives it back. A VM without DHCP on its
/// pod interface takes none: nothing would tell when its boot is over, and holding a
/// slot for the whole timeout would serialise such VMs for nothing. While all slots are
/// busy the status says so (phase Pending).
async fn take_boot_slot(ctx: &Ctx) -> anyhow::Result<Option<(Slot, StatsHandle)>> {
    let Some(slots) = ctx.args.boot_slots.slots() else {
        return Ok(None);
    };
    let Some(lease) = lock(&ctx.shared).dhcp.iter().flatten().next().cloned() else {
        tracing::info!("no DHCP on the pod interface: the domain starts without a boot slot");
        return Ok(None);
    };
    let k = slots.count();
    let since = Instant::now();
    let mut waited = false;
    let slot = slots
        .take(|| {
            waited = true;
            tracing::info!(slots = k, "all boot slots busy: waiting");
            ctx.publish(|s| {
                s.set_phase(
                    Phase::Pending,
                    Some(format!("waiting for a boot slot ({k} of {k} busy)")),
                );
            });
        })
        .await?;
    if waited {
        ctx.publish(|s| s.set_phase(Phase::Pending, None));
    }
    tracing::info!(
        slot = slot.index,
        slots = k,
        waited_ms = since.elapsed().as_millis(),
        elapsed_ms = ctx.started.elapsed().as_millis(),
        "boot slot taken"
    );
    Ok(Some((slot, lease)))
}

/// Hold `slot` until the guest's first DHCPv4 lease from `lease`'s server or the boot
/// slot timeout, whichever comes first; teardown aborts the task when the domain ends
/// first. The slot goes back when the task ends.
fn hold_boot_slot(ctx: &Ctx, slot: Slot, lease: StatsHandle) -> JoinHandle<()> {
    let (timeout, started) = (ctx.args.boot_slots.timeout(), ctx.started);
    tokio::spawn(async move {
        let leased = lease.wait_until(|s| s.lease.bound_at.is_some());
        match tokio::time::timeout(timeout, leased).await {
            Ok(()) => tracing::info!(
                slot = slot.index,
                elapsed_ms = started.elapsed().as_millis(),
                "the guest leased: boot slot given back"
            ),
            Err(_) => tracing::warn!(
                slot = slot.index,
                "no lease within the boot slot timeout ({timeout:?}): boot slot given back"
            ),
        }
        drop(slot);
    })
}

/// Define and start the domain from `xml` and publish it; its name.
async fn start_domain(ctx: &Ctx, agent: &VirtAgent, xml: &DomainXml) -> anyhow::Result<String> {
    lock(&ctx.shared).domain_xml.clone_from(&xml.0);
    let layout = ctx.libvirt();
    let name = agent.define_and_start(&xml.0).await?;
    let qemu_pid = std::fs::read_to_string(layout.qemu_pid_file(&name))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    tracing::info!(
        domain = %name, ?qemu_pid,
        elapsed_ms = ctx.started.elapsed().as_millis(), "domain started"
    );
    ctx.publish(|s| {
        s.domain = Some(name.clone());
        s.qemu_pid = qemu_pid;
    });
    Ok(name)
}

/// How long QEMU's log is now: the next boot's lines start there (libvirtd appends to
/// one log across boots of the domain).
fn qemu_log_len(ctx: &Ctx) -> u64 {
    let path = ctx.libvirt().qemu_log(&domain_name(&ctx.vmi));
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// QEMU's log of the current boot (from byte `from`); empty when unreadable.
fn qemu_log_since(ctx: &Ctx, from: u64) -> String {
    let path = ctx.libvirt().qemu_log(&domain_name(&ctx.vmi));
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// Start copying the console FIFO QEMU writes to console.log (bounded, lossless; see
/// `control::console_log`), off the runtime thread.
async fn start_console_log(ctx: &Ctx, run_as: &RunAs) -> anyhow::Result<control::ConsoleLog> {
    let (dir, writer) = (
        ctx.scratch_dir().path().to_path_buf(),
        (run_as.uid, run_as.gid),
    );
    tokio::task::spawn_blocking(move || {
        control::ConsoleLog::start(&dir, control::state::CONSOLE_LOG_MAX, Some(writer))
    })
    .await
    .context("console log thread")?
    .context("starting the console log")
}

/// KVM failed under the guest (or as it started) in `auto`: destroy the domain if it
/// runs, remember the verdict on the node, and boot it again under TCG in this pod (same
/// network, DHCP server, libvirtd and agent). Returns where QEMU's log of the new boot
/// starts.
async fn boot_under_tcg(
    ctx: &Ctx,
    agent: &VirtAgent,
    env: &mut DomainEnv,
    console: &control::ConsoleLog,
    why: &str,
) -> anyhow::Result<u64> {
    tracing::warn!("{why}; destroying the domain and booting it again under TCG");
    // A domain that failed to start is not active (and the agent may hold none).
    if agent.is_active().await.unwrap_or(false) {
        agent.act(Request::Destroy).await?;
    }
    remember_kvm_failure(ctx, why);
    env.accel = Acceleration::Tcg;
    let xml = domain_xml(&ctx.vmi, env)?;
    console.rotate().await.context("rotating the console log")?;
    ctx.publish(|s| {
        s.acceleration = Some(Acceleration::Tcg);
        s.acceleration_reason = Some(why.to_string());
        s.qemu_pid = None;
        s.set_phase(Phase::Scheduled, Some("booting again under TCG".into()));
    });
    let log_from = qemu_log_len(ctx);
    start_domain(ctx, agent, &xml).await?;
    Ok(log_from)
}

/// Write the node's verdict that KVM failed here, for the next acquired.
fn remember_kvm_failure(ctx: &Ctx, why: &str) {
    let Some(key) = &ctx.accel.kvm_key else {
        return;
    };
    let verdicts = ctx.args.verdicts();
    match verdicts.record(key, why) {
        Ok(()) => {
            tracing::info!(file = %verdicts.path.display(), ?key, "KVM failure remembered on this node")
        }
        Err(e) => tracing::warn!("remembering the KVM failure: {e}"),
    }
}

/// Ask the guest to power off; a guest that cannot be asked (no ACPI) is destroyed.
async fn request_shutdown(agent: &VirtAgent, grace: Duration) -> Instant {
    if let Err(e) = agent.act(Request::Shutdown).await {
        tracing::warn!("ACPI shutdown failed ({e}); destroying");
        let _ = agent.act(Request::Destroy).await;
    }
    Instant::now() + grace
}

/// The domain as the lifecycle owner sees it: the libvirt client, and the grace period
/// a shutdown starts (the earliest deadline asked for wins).
struct Libvirt<'a> {
    agent: &'a VirtAgent,
    default_grace: Duration,
    deadline: &'a mut Option<Instant>,
}

impl lifecycle::Domain for Libvirt<'_> {
    async fn act(&mut self, action: LifecycleAction) -> Result<(), BackendError> {
        let request = match action {
            LifecycleAction::Shutdown {
                grace_period_seconds,
            } => {
                let grace = grace_period_seconds
                    .map_or(self.default_grace, |s| Duration::from_secs(s.into()));
                let until = request_shutdown(self.agent, grace).await;
                *self.deadline = Some(self.deadline.map_or(until, |d| d.min(until)));
                return Ok(());
            }
            LifecycleAction::Pause => Request::Pause,
            LifecycleAction::Resume => Request::Resume,
            LifecycleAction::Kill => Request::Destroy,
        };
        self.agent
            .act(request)
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))
    }
}

/// Follow the domain until it is gone; returns its final state.
async fn supervise(
    ctx: &Ctx,
    acquired: &mut Acquired,
    sigterm: &mut Signal,
    sigint: &mut Signal,
    owner: &mut PhaseOwner,
) -> anyhow::Result<DomainState> {
    let agent = acquired.agent.as_ref().context("no libvirt agent")?;
    let mut events = acquired.events.take().context("no event stream")?;
    let daemons = acquired.daemons.as_mut().context("no daemons")?;
    let env = acquired.env.as_mut().context("no domain environment")?;
    let console = acquired.console.as_ref().context("no console log")?;
    // The control API asked for a pause that has not shown yet.
    let mut pause_requested = false;
    // Events before the domain's start (libvirt sends it last, after `Resumed`) are a
    // failed or abandoned boot's: after a TCG fallback, the old domain's end.
    let mut await_start = true;
    let grace =
        Duration::from_secs(u64::try_from(ctx.vmi.spec.grace_period_seconds()).unwrap_or(0));
    let mut state = DomainState::Pending;
    let mut deadline: Option<Instant> = None;
    // What was asked while the domain was being started.
    owner
        .serve_held(
            ctx,
            &mut Libvirt {
                agent,
                default_grace: grace,
                deadline: &mut deadline,
            },
        )
        .await;
    loop {
        let sleep = deadline.map(|d| tokio::time::sleep_until(d.into()));
        tokio::select! {
            ev = events.recv() => {
                let Some((_, ev)) = ev else { bail!("the libvirt agent ({}) exited; see the log above", agent::AGENT_BINARY) };
                if await_start {
                    if ev != DomainEvent::Started {
                        continue;
                    }
                    await_start = false;
                }
                let interruption = match ev {
                    DomainEvent::Paused(libvirt) => {
                        let log = qemu_log_since(ctx, acquired.qemu_log_from);
                        let pause = classify_pause(std::mem::take(&mut pause_requested), libvirt, &log);
                        if pause.reason == PauseReason::User {
                            tracing::info!(reason = %pause.reason, "domain {}", pause.message);
                        } else {
                            tracing::warn!(reason = %pause.reason, "domain {}", pause.message);
                        }
                        Some(Interruption::Paused(pause))
                    }
                    DomainEvent::Stopped(reason) => Some(Interruption::Stopped {
                        reason,
                        kvm_failure: kvm_failure_in(&qemu_log_since(ctx, acquired.qemu_log_from)),
                    }),
                    _ => None,
                };
                match interruption.as_ref().map(|i| accel_fallback::after(ctx.accel.request, env.accel, i)) {
                    Some(Next::BootUnderTcg { why }) => {
                        acquired.qemu_log_from = boot_under_tcg(ctx, agent, env, console, &why).await?;
                        await_start = true;
                        state = DomainState::Pending;
                        continue;
                    }
                    Some(Next::Fail { why }) => {
                        remember_kvm_failure(ctx, &why);
                        bail!("{why}");
                    }
                    Some(Next::CarryOn) | None => {}
                }
                let next = state.after(ev);
                if next != state {
                    tracing::info!(event = ?ev, state = ?next, "domain");
                    if state == DomainState::Pending && next == DomainState::Running {
                        tracing::info!(elapsed_ms = ctx.started.elapsed().as_millis(), "domain running");
                    }
                    state = next;
                    ctx.publish(|s| match &interruption {
                        Some(Interruption::Paused(p)) => {
                            s.set_phase(Phase::Paused, Some(p.message.clone()));
                            s.pause_reason = Some(p.reason);
                        }
                        _ => s.set_phase(phase_of(state), reason_of(state)),
                    });
                }
                if state.is_final() {
                    return Ok(state);
                }
            }
            signal = first_signal(sigterm, sigint) => {
                tracing::info!(?grace, "{signal}: ACPI shutdown");
                if deadline.is_none() {
                    deadline = Some(request_shutdown(agent, grace).await);
                }
            }
            Some(request) = owner.recv() => {
                let action = request.0;
                tracing::info!(action = action.name(), "control API");
                let mut domain = Libvirt { agent, default_grace: grace, deadline: &mut deadline };
                let result = lifecycle::serve(ctx, &mut domain, request).await;
                pause_requested |= action == LifecycleAction::Pause && result.is_ok();
            }
            () = async { if let Some(s) = sleep { s.await } }, if deadline.is_some() => {
                tracing::warn!("grace period over: destroying the domain");
                if let Err(e) = agent.act(Request::Destroy).await {
                    tracing::warn!("{e}");
                }
                deadline = None;
            }
            st = daemons.libvirtd.child.wait() => {
                bail!("libvirtd exited while the domain ran ({}); see {}",
                    st.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    daemons.layout.log("libvirtd").display());
            }
        }
    }
}

/// Without libvirt to destroy the domain (its client or libvirtd gone), end QEMU
/// directly: libvirt started it detached, so it would outlive the pod's daemons.
fn kill_qemu(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !comm.starts_with("qemu") {
        return; // already gone (and the pid perhaps reused)
    }
    tracing::warn!(pid, "killing QEMU directly");
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Give back everything boot acquired; never fails, logs what it cannot do.
async fn teardown(ctx: &Ctx, acquired: &mut Acquired) {
    if let Some(slot) = acquired.boot_slot.take() {
        slot.abort();
    }
    let agent = acquired.agent.take();
    if acquired.domain.take().is_some() {
        let stopped = match &agent {
            Some(a) => match a.is_active().await {
                Ok(false) => true,
                Ok(true) => a.act(Request::Destroy).await.is_ok(),
                Err(e) => {
                    tracing::warn!("{e}");
                    false
                }
            },
            None => false,
        };
        if !stopped {
            kill_qemu(lock(&ctx.shared).status.qemu_pid);
        }
        if let Some(a) = &agent
            && let Err(e) = a.act(Request::Undefine).await
        {
            tracing::debug!("{e}");
        }
    }
    if let Some(agent) = agent {
        agent.stop(Duration::from_secs(5)).await;
    }
    for t in acquired.dhcp_tasks.drain(..) {
        t.abort();
    }
    if let Some(mut d) = acquired.daemons.take() {
        d.stop().await;
    }
    if acquired.net_rewired {
        let state_dir = ctx.args.state_dir.clone();
        match tokio::task::spawn_blocking(move || net::teardown(None, &state_dir)).await {
            Ok(Ok(done)) => tracing::info!(?done, "pod network restored"),
            Ok(Err(e)) => tracing::error!("network teardown: {e}"),
            Err(e) => tracing::error!("network teardown task: {e}"),
        }
    }
}
