//! Acceleration end to end through the real launcher (privileged: it starts its own
//! libvirtd). KVM that passes every probe and fails under the running guest (a nested
//! `kvm-pvm` giving up with `KVM internal error ... emulation failure`) is played at the
//! agent boundary: a stand-in for `vmpod-virt` answers the launcher's requests and, for a
//! domain of type `kvm`, writes the KVM internal error to QEMU's log and reports the pause
//! libvirt reports for it (reason unknown). `auto` must boot the domain again under TCG,
//! say why, and leave the verdict on the node so the next launcher skips KVM; `kvm` must
//! fail with the reason. With real guests: `auto` reaches the lease whatever this
//! machine's KVM does, and a pause nobody asked for is reported with its reason.
mod support;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use support::launcher::Launcher;
use vmpod::control::{Acceleration, ControlClient, LauncherStatus, PauseReason, Phase};
use vmpod::domain::{KvmKey, KvmVerdicts};
use vmpod::sandbox::PodSandbox;

/// The stand-in agent. It records every request line in `$STANDIN_DIR/requests`.
const STANDIN: &str = r#"#!/bin/sh
[ "$1" = --socket ] || exit 3
root=$(dirname "$(dirname "$2")")
log="$root/cache/libvirt/qemu/log/$STANDIN_DOMAIN.log"
mkdir -p "$(dirname "$log")"
d=$STANDIN_DOMAIN
ev() { echo "{\"kind\":\"event\",\"domain\":\"$d\",\"event\":$1}"; }
ok() { echo "{\"kind\":\"reply\",\"result\":{\"Ok\":$1}}"; }
active=false
while read -r line; do
  echo "$line" >> "$STANDIN_DIR/requests"
  case "$line" in
    *'"op":"defineAndStart"'*)
      # STANDIN_SLOW_START: libvirt never comes back from starting the domain.
      [ -n "$STANDIN_SLOW_START" ] && exec sleep 600
      active=true
      ok "{\"answer\":\"started\",\"value\":\"$d\"}"
      ev '"started"'
      case "$line" in *"<domain type='kvm'>"*)
        printf 'KVM internal error. Suberror: 1\nextra data[0]: 0x0\nemulation failure\n' >> "$log"
        ev '{"paused":"unknown"}' ;;
      esac ;;
    *'"op":"destroy"'*)
      # STANDIN_STUCK: libvirt never returns from destroy.
      [ -n "$STANDIN_STUCK" ] && exec sleep 600
      active=false; ok '{"answer":"done"}'; ev '{"stopped":"destroyed"}' ;;
    *'"op":"shutdown"'*)
      # STANDIN_STUCK: the guest ignores the ACPI power button.
      if [ -n "$STANDIN_STUCK" ]; then ok '{"answer":"done"}'; continue; fi
      active=false; ok '{"answer":"done"}'; ev '{"stopped":"shutdown"}' ;;
    *'"op":"pause"'*) ok '{"answer":"done"}'; ev '{"paused":"user"}' ;;
    *'"op":"resume"'*) ok '{"answer":"done"}'; ev '"resumed"' ;;
    *'"op":"isActive"'*) ok "{\"answer\":\"active\",\"value\":$active}" ;;
    *) ok '{"answer":"done"}' ;;
  esac
done
"#;

const VMI: &str = "apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: standin
spec:
  terminationGracePeriodSeconds: 5
  domain:
    memory:
      guest: 64Mi
    devices: {}
";

/// A node directory (capabilities seed and verdicts) and the stand-in agent.
struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    agent: PathBuf,
}

/// A privileged test's pod ([`support::own_node_pod`] `name` in `10.<net>.0.0/24`) and
/// node; `None` where [`support::privileged_test`] skips the test.
fn privileged_site(name: &str, net: u8) -> Option<(PodSandbox, Node)> {
    support::privileged_test().then(|| (support::own_node_pod(name, net), Node::new()))
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // The stand-in runs as QEMU's user (uid 107), as vmpod-virt does: it must reach
        // its script and write its record under here.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let agent = root.join("standin-virt");
        std::fs::write(&agent, STANDIN).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node {
            _dir: dir,
            root,
            agent,
        }
    }

    fn caps_seed(&self) -> PathBuf {
        self.root.join("node").join("qemu-capabilities")
    }

    /// Start a launcher for the stand-in VMI with `--accel accel` and `extra` arguments;
    /// the stand-in records its requests under `<run>-agent/`. The stand-in plays QEMU,
    /// so whether this machine's /dev/kvm works is beside the point: no probe.
    fn launch(&self, sb: &PodSandbox, run: &str, accel: &str, extra: &[&str]) -> Launcher {
        self.launch_with_env(sb, run, accel, extra, &[])
    }

    /// [`Node::launch`] under emulation, with the stand-in's misbehaviour `flag` (e.g.
    /// `STANDIN_STUCK`) set.
    fn launch_misbehaving(&self, sb: &PodSandbox, run: &str, flag: &str) -> Launcher {
        self.launch_with_env(sb, run, "emulation", &[], &[(flag, OsStr::new("1"))])
    }

    /// [`Node::launch`] with more environment for the stand-in.
    fn launch_with_env(
        &self,
        sb: &PodSandbox,
        run: &str,
        accel: &str,
        extra: &[&str],
        env: &[(&str, &OsStr)],
    ) -> Launcher {
        let state = self.root.join(run);
        let rec = self.root.join(format!("{run}-agent"));
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o777)).unwrap();
        let caps = self.caps_seed();
        let mut args = vec![
            "--accel",
            accel,
            "--caps-seed",
            caps.to_str().unwrap(),
            "--skip-kvm-probe",
        ];
        args.extend_from_slice(extra);
        let mut all = vec![
            ("VMPOD_VIRT", self.agent.as_os_str()),
            ("STANDIN_DIR", rec.as_os_str()),
            ("STANDIN_DOMAIN", OsStr::new("standin")),
        ];
        all.extend_from_slice(env);
        Launcher::start_with_env(sb, &state, VMI, &args, &all)
    }

    fn requests(&self, run: &str) -> Vec<String> {
        std::fs::read_to_string(self.root.join(format!("{run}-agent")).join("requests"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// The domain type of each defineAndStart, in order.
fn started_types(requests: &[String]) -> Vec<&'static str> {
    requests
        .iter()
        .filter(|r| r.contains(r#""op":"defineAndStart""#))
        .map(|r| {
            if r.contains("<domain type='kvm'>") {
                "kvm"
            } else if r.contains("<domain type='qemu'>") {
                "qemu"
            } else {
                panic!("no domain type in {r}")
            }
        })
        .collect()
}

/// Poll status.json until `done`; panics with the launcher's log after 60 s.
fn wait_status(
    l: &mut Launcher,
    what: &str,
    done: impl Fn(&LauncherStatus) -> bool,
) -> LauncherStatus {
    support::launcher::wait_for(l, Duration::from_secs(60), what, |l: &Launcher| {
        vmpod::control::read_status(&l.state_dir)
            .ok()
            .filter(|s| done(s))
    })
}

/// Wait (up to 5 minutes: a late KVM failure plus a TCG boot) for the guest's lease of
/// `ip`; the time since the launcher started.
fn wait_lease(l: &mut Launcher, ip: &str) -> Duration {
    let report = l.wait_report(Duration::from_secs(300), |r| r.lease.is_some());
    let to_lease = l.started.elapsed();
    assert_eq!(report.lease.unwrap().ip.to_string(), ip);
    to_lease
}

fn verdicts(node: &Node) -> Vec<vmpod::domain::KvmFailure> {
    KvmVerdicts::beside(&node.caps_seed()).load().unwrap()
}

#[test]
fn kvm_failing_late_in_auto_boots_again_under_tcg_and_the_node_remembers() {
    let Some((sb, node)) = privileged_site("kvmlate", 93) else {
        return;
    };

    // 1. auto, KVM taken as usable: the domain starts under KVM, KVM fails, the launcher
    //    destroys it and boots it again under TCG, in the same pod.
    let mut l = node.launch(&sb, "first", "auto", &[]);
    let s = wait_status(&mut l, "Running under TCG", |s| {
        s.acceleration == Some(Acceleration::Tcg) && s.phase == Phase::Running
    });
    let why = s.acceleration_reason.clone().expect("accelerationReason");
    assert!(
        why.contains("KVM failed under the running guest")
            && why.contains("KVM internal error. Suberror: 1; emulation failure"),
        "{why}"
    );
    let requests = node.requests("first");
    assert_eq!(started_types(&requests), ["kvm", "qemu"], "{requests:#?}");
    let destroy = requests
        .iter()
        .position(|r| r.contains(r#""op":"destroy""#));
    let second = requests
        .iter()
        .rposition(|r| r.contains(r#""op":"defineAndStart""#));
    assert!(
        destroy < second && destroy.is_some(),
        "destroyed first: {requests:#?}"
    );
    let log = l.log();
    assert!(
        log.contains("booting it again under TCG") && log.contains("KVMInternalError"),
        "the launcher log says what happened:\n{log}"
    );
    // The domain XML the API serves is the TCG one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ControlClient::new(l.state_dir.join("control.sock"));
    let xml = rt.block_on(client.domain_xml()).unwrap();
    assert!(xml.contains("<domain type='qemu'>"), "{xml}");
    // The node remembers, keyed by kernel, CPU and QEMU.
    let v = verdicts(&node);
    assert_eq!(v.len(), 1, "{v:?}");
    let here = KvmKey::of_this_node(Path::new(vmpod::domain::xml::EMULATOR)).unwrap();
    assert_eq!(v[0].key, here);
    assert!(v[0].reason.contains("KVM internal error"), "{v:?}");
    l.stop_gracefully(Duration::from_secs(30));

    // 2. The next launcher on this node goes straight to TCG and says why; a pause it
    //    asks for is a user's pause.
    let mut l = node.launch(&sb, "second", "auto", &[]);
    let s = wait_status(&mut l, "Running", |s| s.phase == Phase::Running);
    assert_eq!(s.acceleration, Some(Acceleration::Tcg));
    let why = s.acceleration_reason.clone().expect("accelerationReason");
    assert!(
        why.contains("KVM failed on this node before") && why.contains("KVM internal error"),
        "{why}"
    );
    assert_eq!(started_types(&node.requests("second")), ["qemu"]);
    let client = ControlClient::new(l.state_dir.join("control.sock"));
    rt.block_on(client.pause()).unwrap();
    let s = wait_status(&mut l, "Paused", |s| s.phase == Phase::Paused);
    assert_eq!(s.pause_reason, Some(PauseReason::User), "{s:?}");
    assert_eq!(
        s.acceleration,
        Some(Acceleration::Tcg),
        "a user's pause is no KVM failure"
    );
    l.stop_gracefully(Duration::from_secs(30));

    // 3. kvm required on this node: refused up front with the remembered reason.
    let mut l = node.launch(&sb, "third", "kvm", &[]);
    let st = l.wait_exit(Duration::from_secs(30));
    assert!(!st.success());
    let log = l.log();
    assert!(
        log.contains("acceleration kvm was requested")
            && log.contains("KVM failed on this node before"),
        "{log}"
    );
    assert!(node.requests("third").is_empty(), "no domain started");
}

#[test]
fn kvm_required_and_failing_late_fails_the_vmi_with_the_reason() {
    let Some((sb, node)) = privileged_site("kvmreq", 93) else {
        return;
    };
    // The verdicts where the node keeps them (not beside the seed).
    let file = node.root.join("node-state").join("verdicts.json");
    let mut l = node.launch(
        &sb,
        "req",
        "kvm",
        &["--kvm-verdicts", file.to_str().unwrap()],
    );
    let st = l.wait_exit(Duration::from_secs(60));
    assert!(!st.success(), "{}", l.log());
    let s = vmpod::control::read_status(&l.state_dir).unwrap();
    assert_eq!(s.phase, Phase::Failed);
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.contains("KVM failed under the running guest")
            && reason.contains("KVM internal error"),
        "{reason}"
    );
    assert_eq!(started_types(&node.requests("req")), ["kvm"]);
    assert!(
        node.requests("req")
            .iter()
            .any(|r| r.contains(r#""op":"destroy""#)),
        "the failed domain is destroyed"
    );
    let remembered = KvmVerdicts { path: file }.load().unwrap();
    assert_eq!(remembered.len(), 1, "the node remembers: {remembered:?}");
    assert!(verdicts(&node).is_empty(), "nothing beside the seed");
}

/// A real guest in `auto` must reach its lease whatever this machine's KVM does: refused
/// by the probe (status `tcg` with the probe's reason, nothing remembered), working
/// (`kvm`), or failing late (`tcg` with the late failure, the KVM boot's console kept as
/// console.log.1, the verdict on the node). Prints the time from launcher start to lease.
#[test]
fn auto_reaches_the_guests_lease_whatever_this_machines_kvm_does() {
    // A node of its own: the shared capabilities seed (so libvirtd starts fast) without
    // any verdict an earlier run left.
    let Some((sb, node)) = privileged_site("kvmauto", 94) else {
        return;
    };
    let seed = node.caps_seed();
    std::fs::create_dir_all(&seed).unwrap();
    for e in std::fs::read_dir(vmpod::domain::daemons::DEFAULT_CAPS_SEED)
        .into_iter()
        .flatten()
        .flatten()
    {
        std::fs::copy(e.path(), seed.join(e.file_name())).unwrap();
    }
    let probe = vmpod::domain::kvm_usable(
        Path::new(vmpod::domain::accel::KVM_DEVICE),
        Path::new(vmpod::domain::xml::EMULATOR),
    );
    let state = node.root.join("state");
    let vmi = support::launcher::testguest_vmi("kvmauto", "", true, 30);
    let mut l = Launcher::start(
        &sb,
        &state,
        &vmi,
        &["--accel", "auto", "--caps-seed", seed.to_str().unwrap()],
    );
    let to_lease = wait_lease(&mut l, "10.94.0.5");
    let s = vmpod::control::read_status(&state).unwrap();
    let remembered = verdicts(&node);
    match (&probe, s.acceleration) {
        (Err(why), accel) => {
            assert_eq!(accel, Some(Acceleration::Tcg), "{s:?}");
            assert_eq!(s.acceleration_reason.as_ref(), Some(why), "{s:?}");
            assert!(
                remembered.is_empty(),
                "a refusal up front is not remembered: {remembered:?}"
            );
        }
        (Ok(()), Some(Acceleration::Kvm)) => {
            assert_eq!(s.acceleration_reason, None, "{s:?}");
            assert!(remembered.is_empty(), "{remembered:?}");
        }
        (Ok(()), accel) => {
            assert_eq!(accel, Some(Acceleration::Tcg), "{s:?}");
            let why = s.acceleration_reason.clone().unwrap_or_default();
            assert!(why.contains("KVM failed under the running guest"), "{why}");
            assert_eq!(remembered.len(), 1, "{remembered:?}");
            assert!(
                state.join("console.log.1").exists(),
                "the KVM boot's console"
            );
        }
    }
    eprintln!(
        "KVM probe: {probe:?}; ran under {:?} ({:?}); launcher start -> lease: {} ms",
        s.acceleration,
        s.acceleration_reason,
        to_lease.as_millis()
    );
    // The guest takes the power button once it holds.
    l.wait_report(Duration::from_secs(120), |r| r.holding);
    l.stop_gracefully(Duration::from_secs(30));
    drop(l);

    // Where /dev/kvm answers its ioctls but QEMU fails with it (refused up front above),
    // let KVM fail for real: without the probe, the domain starts under KVM, QEMU dies
    // in its KVM code, and the launcher boots it again under TCG through the same
    // libvirtd, network and DHCP server, to the lease.
    let ioctls = vmpod::domain::probe_kvm(Path::new(vmpod::domain::accel::KVM_DEVICE));
    if probe.is_ok() || ioctls.is_err() {
        eprintln!("KVM for real: not on this machine (probe {probe:?}, ioctls {ioctls:?})");
        return;
    }
    let state = node.root.join("state-unprobed");
    let mut l = Launcher::start(
        &sb,
        &state,
        &vmi,
        &[
            "--accel",
            "auto",
            "--skip-kvm-probe",
            "--caps-seed",
            seed.to_str().unwrap(),
        ],
    );
    let to_lease = wait_lease(&mut l, "10.94.0.5");
    let s = vmpod::control::read_status(&state).unwrap();
    assert_eq!(s.acceleration, Some(Acceleration::Tcg), "{s:?}");
    let why = s.acceleration_reason.clone().unwrap_or_default();
    assert!(why.contains("KVM failed as the domain started"), "{why}");
    let remembered = verdicts(&node);
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    eprintln!(
        "KVM failing at start, for real: {why}; launcher start -> lease: {} ms",
        to_lease.as_millis()
    );
    l.wait_report(Duration::from_secs(120), |r| r.holding);
    l.stop_gracefully(Duration::from_secs(30));
}

#[link(name = "virt-qemu")]
unsafe extern "C" {
    /// libvirt-qemu's monitor pass-through: QEMU hears the command, libvirt did not ask.
    fn virDomainQemuMonitorCommand(
        domain: virt::sys::virDomainPtr,
        cmd: *const std::ffi::c_char,
        result: *mut *mut std::ffi::c_char,
        flags: std::ffi::c_uint,
    ) -> std::ffi::c_int;
}

/// A pause nobody asked for, for real: QEMU stops the guest behind libvirt's back (a QMP
/// `stop` through libvirt-qemu, the same STOP without a cause libvirt sees when KVM
/// gives up). The launcher reports Paused with reason Unknown and says so in its log;
/// under TCG it does not fall back. A resume through the control API runs it again.
#[test]
fn a_pause_nobody_asked_for_is_reported_with_its_reason() {
    if !support::privileged("a_pause_nobody_asked_for_is_reported_with_its_reason") {
        return;
    }
    let (sb, _dir, state) = support::pod_and_state_dir("qmpstop", 95);
    let vmi = support::launcher::testguest_vmi("qmpstop", "", true, 30);
    let mut l = Launcher::start(&sb, &state, &vmi, &[]);
    l.wait_report(Duration::from_secs(150), |r| r.holding);

    let socket = vmpod::domain::daemons::LibvirtLayout::new(&state).socket();
    // The virt crate directly: only vmpod-virt wraps libvirt, and the library has none.
    let uri = format!("qemu+unix:///session?socket={}", socket.display());
    let conn = virt::connect::Connect::open(Some(&uri)).unwrap();
    let dom = conn.lookup_domain_by_name("qmpstop").unwrap();
    let cmd = std::ffi::CString::new(r#"{"execute":"stop"}"#).unwrap();
    let mut out: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: a valid domain handle, a NUL-terminated command and an out-pointer that
    // libvirt fills with a malloc'ed string (freed below).
    let rc = unsafe { virDomainQemuMonitorCommand(dom.as_ptr(), cmd.as_ptr(), &mut out, 0) };
    assert_eq!(rc, 0, "QMP stop through libvirt-qemu");
    // SAFETY: `out` was allocated by libvirt with malloc.
    unsafe { libc::free(out.cast()) };

    let s = wait_status(&mut l, "Paused", |s| s.phase == Phase::Paused);
    assert_eq!(s.pause_reason, Some(PauseReason::Unknown), "{s:?}");
    assert!(
        s.reason
            .as_deref()
            .unwrap_or_default()
            .contains("nobody asked"),
        "{s:?}"
    );
    assert_eq!(s.acceleration, Some(Acceleration::Tcg));
    assert!(
        l.log().contains("reason=Unknown"),
        "the launcher log says it:\n{}",
        l.log()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ControlClient::new(state.join("control.sock"));
    rt.block_on(client.resume()).unwrap();
    let s = wait_status(&mut l, "Running again", |s| s.phase == Phase::Running);
    assert_eq!(s.pause_reason, None);
    drop(conn);
    l.stop_gracefully(Duration::from_secs(30));
}

/// SIGTERM to `l`, which must exit inside the time kubelet gives the pod (the VMI's
/// grace, 5 s, plus 15 s) with the pod network restored. Its exit, how long it took, its
/// log and its final status.
fn sigterm_inside_the_grace(l: &mut Launcher) -> (ExitStatus, Duration, String, LauncherStatus) {
    let sent = Instant::now();
    l.sigterm();
    let st = l.wait_exit(Duration::from_secs(60));
    let took = sent.elapsed();
    let budget = Duration::from_secs(5 + 15);
    let log = l.log();
    assert!(
        took < budget,
        "teardown took {took:?}, kubelet would SIGKILL at {budget:?}\n{log}"
    );
    assert!(log.contains("pod network restored"), "{log}");
    let status = vmpod::control::read_status(&l.state_dir).unwrap();
    (st, took, log, status)
}

/// libvirt stuck: the guest ignores the power button and destroy never returns. SIGTERM
/// still ends in a teardown inside the time kubelet gives the pod (the VMI's grace, 5 s,
/// plus 15 s): the destroy call is cut at its timeout, the agent killed, QEMU's pid
/// (none here) killed directly, the network restored and the final status written.
#[test]
fn libvirt_stuck_in_destroy_still_tears_down_inside_the_grace() {
    let Some((sb, node)) = privileged_site("stuck", 96) else {
        return;
    };
    let mut l = node.launch_misbehaving(&sb, "stuck", "STANDIN_STUCK");
    wait_status(&mut l, "Running", |s| s.phase == Phase::Running);
    let (st, took, log, status) = sigterm_inside_the_grace(&mut l);
    let requests = node.requests("stuck");
    assert!(
        requests.iter().any(|r| r.contains(r#""op":"destroy""#)),
        "{requests:#?}"
    );
    assert!(
        log.contains("no answer to destroy within 10s"),
        "the log says why:\n{log}"
    );
    assert!(
        status.phase.is_terminal(),
        "final status written: {status:?} ({st})"
    );
    eprintln!("SIGTERM -> exit with libvirt stuck in destroy: {took:?} (exit {st})");
}

/// SIGTERM while the domain is still starting (libvirt does not come back from it): the
/// boot is abandoned, the teardown runs (the agent, stuck, is killed at the next call's
/// timeout), the network is restored and the final status written, inside the grace.
#[test]
fn sigterm_during_boot_leads_to_an_orderly_teardown() {
    let Some((sb, node)) = privileged_site("bootterm", 97) else {
        return;
    };
    let mut l = node.launch_misbehaving(&sb, "bootterm", "STANDIN_SLOW_START");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node
        .requests("bootterm")
        .iter()
        .any(|r| r.contains(r#""op":"defineAndStart""#))
    {
        assert!(
            Instant::now() < deadline,
            "no defineAndStart within 60 s\n{}",
            l.log()
        );
        assert!(l.child.try_wait().unwrap().is_none(), "{}", l.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, took, log, status) = sigterm_inside_the_grace(&mut l);
    assert!(log.contains("SIGTERM during boot: tearing down"), "{log}");
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("stopped by SIGTERM during boot")),
        "{status:?}"
    );
    eprintln!("SIGTERM during the domain's start -> exit: {took:?} (exit {st})");
}
