//! The local runtime end to end: `vmpodctl run` and `vmpod-handler local` on this machine,
//! each on a bridge, IPAM range and local root of its own so tests run in parallel.
//!
//! Two kinds of launcher: the real `vmpod-launcher` booting the test guest under QEMU
//! (lease, graceful stop, nothing left), and a shell script standing in for it, which
//! checks what the runtime alone promises (the pod's namespace, address, route, hostname
//! and resolv.conf as the launcher sees them; exit status passed through; SIGTERM when the
//! control API cannot take a stop).

mod support;

use nix::sys::signal::Signal;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::guest::{GuestLease, GuestReport, guest_artifacts};
use support::launcher::status_and_lease;

const VM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a pipe stays quiet before [`drain`] takes it as read to the end.
const QUIET: Duration = Duration::from_millis(500);
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vmpodctl")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Whether the host has a route to `subnet` (`ip route show`).
fn host_routes_to(subnet: &str) -> bool {
    let out = Command::new("ip")
        .args(["route", "show", subnet])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip route show {subnet}: {out:?}");
    !out.stdout.is_empty()
}

/// A bridge, subnet, local root and VMI name of this test's own.
struct Site {
    dir: tempfile::TempDir,
    bridge: String,
    subnet_octet: u32,
    name: String,
}

impl Site {
    /// The site of a privileged test, its VMI named after `base`; `None` where
    /// [`support::privileged_test`] skips the test.
    fn privileged(base: &str) -> Option<Site> {
        if !support::privileged_test() {
            return None;
        }
        let pid = std::process::id();
        // A subnet no route on the host uses yet: a run killed before its teardown may
        // have left its bridge (and its 10.222.X.1) behind.
        let (n, subnet_octet) = std::iter::repeat_with(|| COUNTER.fetch_add(1, Ordering::Relaxed))
            .map(|n| (n, 100 + (pid * 7 + n * 13) % 150))
            .take(150)
            .find(|(_, octet)| !host_routes_to(&format!("10.222.{octet}.0/24")))
            .expect("a free 10.222.X.0/24 among 150");
        Some(Site {
            dir: tempfile::tempdir().unwrap(),
            bridge: format!("vpl{:06x}{n:x}", pid & 0xff_ffff),
            subnet_octet,
            name: format!("{base}-{pid:x}x{n}"),
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("vms")
    }

    fn gateway(&self) -> String {
        format!("10.222.{}.1", self.subnet_octet)
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("VMPOD_LOCAL_ROOT", self.root())
            .env("VMPOD_BRIDGE", &self.bridge)
            .env("VMPOD_SUBNET", format!("10.222.{}.0/24", self.subnet_octet))
            .env("VMPOD_LAUNCHER", bin("vmpod-launcher"))
            // The tests' own QEMU capabilities seed, through the environment the runtime
            // passes on to the launcher.
            .env("VMPOD_CAPS_SEED", support::launcher::test_caps_seed());
    }

    /// A test guest manifest; `hold` keeps it up until the ACPI power button.
    fn manifest(&self, path: &Path, name: &str, hold: bool) {
        let (kernel, initrd) = guest_artifacts();
        let hold = if hold { " vmpod.hold=1" } else { "" };
        let text = format!(
            "apiVersion: vmpod.io/v1alpha1\nkind: VirtualMachineInstance\nmetadata:\n  name: {name}\n  \
             annotations:\n    vmpod.io/acceleration: emulation\nspec:\n  terminationGracePeriodSeconds: 60\n  \
             domain:\n    memory:\n      guest: 256Mi\n    firmware:\n      kernelBoot:\n        \
             kernelArgs: console=ttyS0 panic=-1{hold}\n        kernelPath: {}\n        initrdPath: {}\n    \
             devices:\n      interfaces:\n        - name: default\n          bridge: {{}}\n  \
             networks:\n    - name: default\n      pod: {{}}\n",
            kernel.display(),
            initrd.display()
        );
        std::fs::write(path, text).unwrap();
    }

    /// [`Site::manifest`] as `vm.yaml` in the site's directory.
    fn vm_yaml(&self, hold: bool) -> PathBuf {
        let path = self.dir.path().join("vm.yaml");
        self.manifest(&path, &self.name, hold);
        path
    }

    /// `vmpodctl` in this site's environment.
    fn vmpodctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmpodctl"));
        self.env(&mut cmd);
        cmd
    }

    /// `vmpodctl run --console`, and its stdout (the console) and stderr, line by line.
    fn vmpodctl_run(&self, manifest: &Path, extra_env: &[(&str, &Path)]) -> Running {
        let mut cmd = self.vmpodctl();
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("run")
            .arg(manifest)
            .arg("--console")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running {
            out: lines_of(child.stdout.take().unwrap()),
            err: lines_of(child.stderr.take().unwrap()),
            child,
            console: String::new(),
        }
    }

    /// `vmpod-handler local` on `dir` (with `extra_env`), and its stderr, line by line.
    fn handler(&self, dir: &Path, extra_env: &[(&str, &OsStr)]) -> (Child, mpsc::Receiver<String>) {
        let mut cmd = Command::new(bin("vmpod-handler"));
        self.env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["local", "--poll-ms", "200", "--manifests"])
            .arg(dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = lines_of(child.stderr.take().unwrap());
        (child, err)
    }

    /// The directory `vmpod-handler local` watches, created.
    fn manifests_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// `vmpodctl run` of a guest that powers off by itself: it must exit 0 after the guest
    /// leased an address (checked here, with the logs shown when not).
    /// The pod as the local runtime recorded it (`pod/pod.json`): its netns and veth,
    /// for the checks that nothing is left.
    fn recorded_pod(&self) -> PodLine {
        let path = self.root().join(&self.name).join("pod/pod.json");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        PodLine {
            ip: String::new(),
            gateway: self.gateway(),
            netns: record["netns"].as_str().unwrap().into(),
            veth: record["nodeVeth"].as_str().unwrap().into(),
        }
    }

    fn run_to_the_end(&self, manifest: &Path, extra_env: &[(&str, &Path)]) -> Finished {
        let run = self.vmpodctl_run(manifest, extra_env).end(VM_TIMEOUT);
        assert!(
            run.status.success(),
            "vmpodctl run: {}\nstderr:\n{}\nconsole:\n{}",
            run.status,
            run.log,
            run.console
        );
        assert!(
            run.report.lease.is_some(),
            "no lease on the console:\n{}\n{}",
            run.console,
            run.log
        );
        run
    }

    /// Nothing of the run is left: namespace, veth, bridge, process, mount, state dir.
    fn assert_nothing_left(&self, pod: &PodLine) {
        assert!(
            !Path::new("/run/netns").join(&pod.netns).exists(),
            "netns {} left",
            pod.netns
        );
        assert!(
            !Path::new("/sys/class/net").join(&pod.veth).exists(),
            "veth {} left",
            pod.veth
        );
        assert!(
            !Path::new("/sys/class/net").join(&self.bridge).exists(),
            "bridge {} left",
            self.bridge
        );
        let root = self.root().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mounts.lines() {
            assert!(
                !line.contains(&root) && !line.contains(&pod.netns),
                "mount left: {line}"
            );
        }
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(
                    !cmdline.contains(&root),
                    "process {:?} left: {cmdline}",
                    entry.file_name()
                );
            }
        }
        assert!(!self.root().join(&self.name).exists(), "state dir left");
    }
}

/// A running `vmpodctl run --console`: the process, its stdout (the guest's console) and
/// its stderr, line by line, and the console read so far.
struct Running {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    console: String,
}

impl Running {
    /// Read the console until a line contains `needle`; when none does within `timeout`,
    /// kill the run and fail naming `what`, with the console and vmpodctl's stderr.
    fn wait_console(&mut self, timeout: Duration, needle: &str, what: &str) {
        let deadline = Instant::now() + timeout;
        if !collect_until(&self.out, &mut self.console, deadline, |l| {
            l.contains(needle)
        }) {
            let _ = self.child.kill();
            let mut log = String::new();
            drain(&self.err, &mut log, QUIET);
            panic!("{what}:\n{}\n{log}", self.console);
        }
    }

    /// Send `sig` to vmpodctl.
    fn signal(&self, sig: Signal) {
        signal(&self.child, sig);
    }

    /// Wait for the run to end, killing it (and failing) after `timeout`; what it showed.
    fn end(mut self, timeout: Duration) -> Finished {
        let status = wait_or_kill(&mut self.child, timeout);
        let mut log = String::new();
        drain(&self.out, &mut self.console, QUIET);
        drain(&self.err, &mut log, QUIET);
        Finished {
            status,
            report: GuestReport::parse(&self.console).unwrap(),
            console: self.console,
            log,
        }
    }
}

/// What a `vmpodctl run` that ended showed.
struct Finished {
    status: ExitStatus,
    report: GuestReport,
    /// The guest's console (stdout).
    console: String,
    /// vmpodctl's stderr.
    log: String,
}

impl Finished {
    /// The pod vmpodctl made, as it printed it.
    fn pod(&self) -> PodLine {
        parse_pod_line(&self.log)
    }

    /// The guest's first lease.
    fn lease(&self) -> &GuestLease {
        self.report
            .lease
            .as_ref()
            .expect("checked by run_to_the_end")
    }

    /// The guest leased the pod IP, with the pod's gateway as its router.
    fn assert_the_pod_ip_leased(&self) {
        let (lease, pod) = (self.lease(), self.pod());
        assert_eq!(lease.ip.to_string(), pod.ip, "the guest leased the pod IP");
        assert_eq!(lease.router().map(|r| r.to_string()), Some(pod.gateway));
    }
}

/// `vmpodctl: NAME: pod IP A/P gateway G on bridge B (netns N, veth V)`.
#[derive(Debug)]
struct PodLine {
    ip: String,
    gateway: String,
    netns: String,
    veth: String,
}

fn parse_pod_line(stderr: &str) -> PodLine {
    let line = stderr
        .lines()
        .find(|l| l.contains(": pod IP "))
        .unwrap_or_else(|| panic!("no pod line in:\n{stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .map(|i| words[i + 1])
            .unwrap()
    };
    PodLine {
        ip: after("IP").split('/').next().unwrap().to_string(),
        gateway: after("gateway").to_string(),
        netns: after("(netns").trim_end_matches(',').to_string(),
        veth: after("veth").trim_end_matches(')').to_string(),
    }
}

/// Read a pipe on a thread, line by line, into a channel.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collect lines until `until` matches one (then returns true) or the deadline passes.
fn collect_until(
    rx: &mpsc::Receiver<String>,
    into: &mut String,
    deadline: Instant,
    until: impl Fn(&str) -> bool,
) -> bool {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                into.push_str(&line);
                into.push('\n');
                if until(&line) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Wait for `child` with a deadline; kill it (and fail) when the deadline passes.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
                Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            panic!("{timeout:?} passed and the process still ran");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, signal: Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        signal,
    )
    .unwrap();
}

/// `signal` to a handler, which must stop its VMs and exit 0 within 90 s; the rest of
/// its stderr (`err`) goes to `log`.
fn stop_handler(handler: &mut Child, sig: Signal, err: &mpsc::Receiver<String>, log: &mut String) {
    signal(handler, sig);
    let code = wait_or_kill(handler, Duration::from_secs(90));
    drain(err, log, QUIET);
    assert!(code.success(), "{code}\n{log}");
}

/// Move the lines of `rx` into `into` until none comes within `quiet` (zero: those
/// already there).
fn drain(rx: &mpsc::Receiver<String>, into: &mut String, quiet: Duration) {
    while let Ok(l) = rx.recv_timeout(quiet) {
        into.push_str(&l);
        into.push('\n');
    }
}

#[test]
fn run_boots_the_guest_which_leases_the_pod_ip_and_nothing_is_left() {
    let Some(site) = Site::privileged("lrun") else {
        return;
    };
    let manifest = site.vm_yaml(false);
    // VMPOD_CAPS_SEED naming a seed of this run's own, empty: filled once the VM runs.
    let seed = site.dir.path().join("caps-seed");
    let run = site.run_to_the_end(&manifest, &[("VMPOD_CAPS_SEED", &seed)]);
    run.assert_the_pod_ip_leased();
    assert_eq!(run.pod().gateway, site.gateway());
    assert!(
        run.report.ping.as_ref().is_some_and(|p| p.ok),
        "the guest pings its gateway:\n{}",
        run.console
    );
    assert!(run.report.powered_off);
    assert!(
        run.log.contains("Running"),
        "phase changes printed:\n{}",
        run.log
    );
    let seeded: Vec<_> = std::fs::read_dir(&seed)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        seeded.iter().any(|n| n.to_string_lossy().ends_with(".xml")),
        "VMPOD_CAPS_SEED {} not written back: {seeded:?}",
        seed.display()
    );
    site.assert_nothing_left(&run.pod());
}

#[test]
fn sigint_stops_a_holding_guest_gracefully() {
    let Some(site) = Site::privileged("lint") else {
        return;
    };
    let mut running = site.vmpodctl_run(&site.vm_yaml(true), &[]);
    running.wait_console(VM_TIMEOUT, "VMPOD-HOLD", "the guest never held");
    running.signal(Signal::SIGINT);
    let run = running.end(Duration::from_secs(90));
    assert!(
        run.report.power_button && run.report.powered_off,
        "ACPI power-off, not a kill:\n{}\n{}",
        run.console,
        run.log
    );
    assert!(
        run.status.success(),
        "graceful stop exits 0: {}\n{}",
        run.status,
        run.log
    );
    assert!(run.log.contains("stopping gracefully"), "{}", run.log);
    site.assert_nothing_left(&run.pod());
}

/// Ctrl-C asks the guest to power off; a guest that ignores the power button
/// (`vmpod.deaf=1`) keeps running until the second Ctrl-C, which kills it, well before
/// its 60 s grace period.
#[test]
fn a_second_ctrl_c_kills_a_guest_that_ignores_the_first() {
    let Some(site) = Site::privileged("lkill") else {
        return;
    };
    let manifest = site.vm_yaml(true);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("vmpod.hold=1", "vmpod.hold=1 vmpod.deaf=1"),
    )
    .unwrap();
    let mut running = site.vmpodctl_run(&manifest, &[]);
    running.wait_console(VM_TIMEOUT, "VMPOD-HOLD", "the guest never held");
    running.signal(Signal::SIGINT);
    running.wait_console(
        Duration::from_secs(60),
        "VMPOD-POWER-BUTTON",
        "the first Ctrl-C did not reach the guest",
    );
    let second = Instant::now();
    running.signal(Signal::SIGINT);
    // The grace period is 60 s: only a kill ends the run well before that.
    let run = running.end(Duration::from_secs(40));
    let took = second.elapsed();
    assert!(
        run.report.power_button && !run.report.powered_off,
        "the guest never powered off itself:\n{}",
        run.console
    );
    assert!(
        run.log.contains("stopping gracefully") && run.log.contains("killing"),
        "{}",
        run.log
    );
    eprintln!(
        "second Ctrl-C -> vmpodctl exited ({}) in {took:?}",
        run.status
    );
    site.assert_nothing_left(&run.pod());
}

/// A stand-in launcher: records what it sees of the pod in `$FAKE_OUT` and `start PID` in
/// `$FAKE_OUT.events`, then exits 7, or with `$FAKE_HOLD` waits for SIGTERM, records
/// `term PID` and exits 0.
fn fake_launcher(dir: &Path) -> PathBuf {
    let path = dir.join("fake-launcher.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\nout=\"$FAKE_OUT\"\n\
         trap 'echo term >> \"$out\"; echo \"term $$\" >> \"$out.events\"; exit 0' TERM\n\
         { echo \"args $*\"; echo \"hostname $(hostname)\"; \
         echo \"etc-hostname $(cat /etc/hostname 2>/dev/null)\"; \
         echo \"netns-mounts $(grep -c ' /run/netns/' /proc/self/mountinfo)\"; \
         echo \"resolv $(cat /etc/resolv.conf | tr '\\n' ' ')\"; \
         ip -o -4 addr show dev eth0 | awk '{print \"addr \" $4}'; \
         ip route show default | awk '{print \"gw \" $3}'; } > \"$out.tmp\"\nmv \"$out.tmp\" \"$out\"\n\
         echo \"start $$\" >> \"$out.events\"\n\
         [ -n \"$FAKE_HOLD\" ] || exit 7\n\
         while :; do sleep 0.1; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// `vmpodctl run` of a manifest with the stand-in launcher, and the file it reports to.
fn fake_run(site: &Site, hold: bool) -> (Command, PathBuf) {
    let manifest = site.vm_yaml(false);
    let seen = site.dir.path().join("seen");
    let mut cmd = site.vmpodctl();
    cmd.env("VMPOD_LAUNCHER", fake_launcher(site.dir.path()))
        .env("FAKE_OUT", &seen)
        .arg("run")
        .arg(&manifest);
    if hold {
        cmd.env("FAKE_HOLD", "1");
    }
    (cmd, seen)
}

/// A VMI name too long for libvirt's monitor socket under the local root is refused
/// before any pod is made, naming the longest name that fits (it used to fail in the
/// launcher, after the pod was made, with libvirt's "UNIX socket path ... too long").
#[test]
fn run_refuses_a_name_too_long_for_the_monitor_socket_before_making_a_pod() {
    let Some(site) = Site::privileged("llong") else {
        return;
    };
    let name = format!("{}-{}", site.name, "n".repeat(50));
    let manifest = site.dir.path().join("long.yaml");
    site.manifest(&manifest, &name, false);
    let started = Instant::now();
    let out = site.vmpodctl().arg("run").arg(&manifest).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("too long for a local pod"), "{log}");
    assert!(log.contains("monitor.sock"), "{log}");
    let max: usize = log
        .split("at most ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the longest name that fits: {log}"));
    assert!(max < name.len() && max >= site.name.len(), "{max}: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    assert!(!site.root().join(&name).exists(), "no state dir made");
    assert!(!log.contains("pod IP"), "no pod made: {log}");
}

#[test]
fn run_gives_the_launcher_its_pod_and_passes_its_exit_status() {
    let Some(site) = Site::privileged("lfake") else {
        return;
    };
    let (mut cmd, seen) = fake_run(&site, false);
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the launcher's exit status:\n{log}"
    );
    let pod = parse_pod_line(&log);
    let seen = std::fs::read_to_string(&seen).unwrap();
    let state_dir = site.root().join(&site.name);
    assert!(
        seen.contains(&format!(
            "args run --vmi {}/pod/vmi.json --state-dir {}",
            state_dir.display(),
            state_dir.display()
        )),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("hostname {}\n", site.name)),
        "UTS namespace: {seen}"
    );
    assert!(
        seen.contains(&format!("etc-hostname {}\n", site.name)),
        "{seen}"
    );
    assert!(seen.contains(&format!("addr {}/24\n", pod.ip)), "{seen}");
    assert!(
        seen.contains("netns-mounts 0\n"),
        "no other pod's netns held: {seen}"
    );
    assert!(seen.contains(&format!("gw {}\n", site.gateway())), "{seen}");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    if let Some(ns) = host_resolv
        .lines()
        .find(|l| l.starts_with("nameserver") && !l.contains(" 127."))
    {
        assert!(
            seen.contains(ns),
            "the pod's resolv.conf carries {ns}: {seen}"
        );
    }
    assert!(
        log.contains("launcher log (last lines)"),
        "a failed launcher's log is shown:\n{log}"
    );
    let hostname = nix::unistd::gethostname().unwrap();
    assert_ne!(
        hostname.to_string_lossy(),
        site.name,
        "the host's hostname is untouched"
    );
    site.assert_nothing_left(&pod);
}

#[test]
fn sigint_terms_a_launcher_that_has_no_control_socket_yet() {
    let Some(site) = Site::privileged("lterm") else {
        return;
    };
    let (mut cmd, seen) = fake_run(&site, true);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.exists() {
        assert!(Instant::now() < deadline, "the fake launcher never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, Signal::SIGINT);
    let status = wait_or_kill(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        std::fs::read_to_string(&seen).unwrap().ends_with("term\n"),
        "the launcher got SIGTERM"
    );
    site.assert_nothing_left(&parse_pod_line(&log));
}

/// The JSON in `path`; None while it is missing or not (yet) whole.
fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Wait until `f` holds, or panic with `what` after `timeout`.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn handler_local_starts_an_added_manifest_and_stops_a_removed_one() {
    let Some(site) = Site::privileged("lhand") else {
        return;
    };
    let dir = site.manifests_dir();
    // The launcher (it inherits the handler's environment) logs each control request.
    let log_filter = OsStr::new("info,vmpod::control::server=debug");
    let (mut handler, err) = site.handler(&dir, &[("VMPOD_LOG", log_filter)]);
    let manifest = dir.join("vm.yaml");
    site.manifest(&manifest, &site.name, true);
    let status_file = dir.join("vm.status.json");
    let mut log = String::new();
    let s = wait_running(&mut handler, &err, &mut log, &status_file, "an IP", |s| {
        s["interfaces"][0]["ipAddress"].is_string()
    });
    // The handler follows the status by long poll: a launcher whose status does not
    // change is not asked again and again (polling every 200 ms asked 15 times in 3 s).
    let launcher_log = site.root().join(&site.name).join("pod/launcher.log");
    let status_reads = || {
        std::fs::read_to_string(&launcher_log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("control request") && l.contains("GetStatus"))
            .count()
    };
    let before = status_reads();
    std::thread::sleep(Duration::from_secs(3));
    let reads = status_reads() - before;
    if before == 0 || reads > 2 {
        let launcher_log = std::fs::read_to_string(&launcher_log).unwrap_or_default();
        // The handler stopped first: it takes the VM and its pod with it.
        stop_handler(&mut handler, Signal::SIGTERM, &err, &mut log);
        panic!(
            "{reads} status reads in 3 s of a Running VM, {before} before (none: the log \
             filter?); the launcher's log:\n{launcher_log}"
        );
    }
    let ip = s["interfaces"][0]["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ip.starts_with(&format!("10.222.{}.", site.subnet_octet)),
        "{s}"
    );
    let state_dir = site.root().join(&site.name);
    let pod = PodLine {
        ip,
        ..site.recorded_pod()
    };
    assert!(Path::new("/run/netns").join(&pod.netns).exists());

    std::fs::remove_file(&manifest).unwrap();
    eventually(
        Duration::from_secs(90),
        "the removed manifest's VM to stop",
        || {
            drain(&err, &mut log, Duration::ZERO);
            !status_file.exists() && !state_dir.exists()
        },
    );
    assert!(!Path::new("/run/netns").join(&pod.netns).exists(), "{log}");
    stop_handler(&mut handler, Signal::SIGINT, &err, &mut log);
    assert!(log.contains("manifest removed: stopping its VM"), "{log}");
    // Each phase the VMI went through, in the handler's log (what benches/density.sh reads).
    for phase in ["Running", "Succeeded"] {
        let line = format!("status vmi={} phase={phase}", site.name);
        assert!(
            log.contains(&line),
            "no '{line}' in the handler's log:\n{log}"
        );
    }
    site.assert_nothing_left(&pod);
}

/// Wait (up to [`VM_TIMEOUT`]) until the handler writes a Running `status_file` that
/// also has `with` (`has` says whether it has); its stderr (`err`) goes to `log`. Kills
/// the handler and fails when none comes.
fn wait_running(
    handler: &mut Child,
    err: &mpsc::Receiver<String>,
    log: &mut String,
    status_file: &Path,
    with: &str,
    has: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + VM_TIMEOUT;
    loop {
        drain(err, log, Duration::ZERO);
        match read_json(status_file) {
            Some(s) if s["phase"] == "Running" && has(&s) => return s,
            s if Instant::now() > deadline => {
                let _ = handler.kill();
                panic!(
                    "no Running status with {with} in {}: {s:?}\n{log}",
                    status_file.display()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn handler_local_restarts_a_changed_manifest_and_stops_all_on_sigterm() {
    let Some(site) = Site::privileged("lchg") else {
        return;
    };
    let dir = site.manifests_dir();
    let seen = site.dir.path().join("seen");
    let events_file = site.dir.path().join("seen.events");
    let events = || std::fs::read_to_string(&events_file).unwrap_or_default();
    let (mut handler, err) = site.handler(
        &dir,
        &[
            ("VMPOD_LAUNCHER", fake_launcher(site.dir.path()).as_os_str()),
            ("FAKE_OUT", seen.as_os_str()),
            ("FAKE_HOLD", OsStr::new("1")),
        ],
    );
    let manifest = dir.join("vm.yaml");
    site.manifest(&manifest, &site.name, false);
    eventually(Duration::from_secs(20), "the first launcher", || {
        events().lines().count() == 1
    });
    let status = read_json(&dir.join("vm.status.json")).expect("vm.status.json");
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(status["name"], site.name.as_str());

    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("guest: 256Mi", "guest: 192Mi")).unwrap();
    eventually(Duration::from_secs(20), "the restart", || {
        events().lines().count() == 3
    });
    let ev = events();
    let lines: Vec<&str> = ev.lines().collect();
    let first = lines[0].strip_prefix("start ").unwrap();
    assert_eq!(
        lines[1],
        format!("term {first}"),
        "the old launcher stops first: {ev}"
    );
    assert!(
        lines[2].starts_with("start ") && lines[2] != lines[0],
        "{ev}"
    );
    let vmi: serde_json::Value = serde_json::from_slice(
        &std::fs::read(site.root().join(&site.name).join("pod/vmi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        vmi["spec"]["domain"]["memory"]["guest"], "192Mi",
        "the new spec runs"
    );
    let pod = site.recorded_pod();

    stop_handler(&mut handler, Signal::SIGTERM, &err, &mut String::new());
    let second = lines[2].strip_prefix("start ").unwrap();
    assert!(
        events().ends_with(&format!("term {second}\n")),
        "SIGTERM stops the VM: {}",
        events()
    );
    site.assert_nothing_left(&pod);
}

/// KubeVirt's v1alpha3 shape (tests/kubevirt-shapes/v1alpha3-chassis.yaml) boots as written,
/// with a hostDisk (DiskOrCreate) added: SMBIOS chassis (read back in the guest), an empty
/// machine type, volumes that
/// no disk names (each gets a virtio disk) and the VMI's own `macAddress`, which is the MAC
/// the guest's DHCP client leases the pod IP with.
#[test]
fn run_boots_the_kubevirt_v1alpha3_shape_and_its_mac_address_gets_the_lease() {
    let Some(site) = Site::privileged("lka3") else {
        return;
    };
    let (kernel, initrd) = guest_artifacts();
    let shape =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubevirt-shapes/v1alpha3-chassis.yaml");
    let host_disk = site.dir.path().join("host/disk.img");
    std::fs::create_dir_all(host_disk.parent().unwrap()).unwrap();
    // QEMU runs as uid 107: it must reach the disk's directory.
    for dir in [site.dir.path(), host_disk.parent().unwrap()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let text = std::fs::read_to_string(&shape)
        .unwrap()
        .replacen("target/guest/vmlinuz", &kernel.display().to_string(), 1)
        .replacen("target/guest/initramfs.img", &initrd.display().to_string(), 1)
        .replacen("name: vmi-v1alpha3-chassis", &format!("name: {}", site.name), 1)
        .replacen(
            "    - name: scratch\n",
            &format!(
                "    - name: host\n      hostDisk: {{path: {}, type: DiskOrCreate, capacity: 8Mi}}\n    - name: scratch\n",
                host_disk.display()
            ),
            1,
        );
    assert!(text.contains("apiVersion: kubevirt.io/v1alpha3") && text.contains(&site.name));
    let manifest = site.dir.path().join("vm.yaml");
    std::fs::write(&manifest, text).unwrap();
    let run = site.run_to_the_end(&manifest, &[]);
    assert_eq!(run.lease().mac, "02:5a:00:0a:0b:0c", "the VMI's MAC leased");
    run.assert_the_pod_ip_leased();
    assert!(
        run.report
            .user_data()
            .is_some_and(|u| u.contains("hostname: v1alpha3-chassis")),
        "the cloud-init volume without a disk reached the guest:\n{}",
        run.console
    );
    assert_eq!(
        std::fs::metadata(&host_disk).map(|m| m.len()).ok(),
        Some(8 << 20),
        "hostDisk DiskOrCreate made the image"
    );
    let dmi = run.report.dmi.as_ref().expect("the guest reports its DMI");
    assert_eq!(
        [
            dmi.chassis_vendor.as_str(),
            &dmi.chassis_version,
            &dmi.chassis_serial,
            &dmi.chassis_asset_tag
        ],
        ["Example Systems & Co", "1.0", "CHS-0042", "asset-7"],
        "the guest reads the VMI's SMBIOS chassis"
    );
    assert!(run.report.powered_off, "{}\n{}", run.console, run.log);
    site.assert_nothing_left(&run.pod());
}

/// SIGTERM to a launcher still running when the test ends (it stops its VM).
struct StopOnDrop(u64);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("vmpod-launcher") {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// A handler that dies (SIGKILL) leaves its VMs running; the next handler on the same
/// directory adopts the running launcher (same launcher and QEMU) instead of starting
/// the VM again, reports its status, and stops it on SIGTERM.
#[test]
fn handler_local_adopts_running_launchers_after_a_restart() {
    let Some(site) = Site::privileged("ladopt") else {
        return;
    };
    let dir = site.manifests_dir();
    let status_file = dir.join("vm.status.json");
    let status = || read_json(&status_file);
    let (mut first, err) = site.handler(&dir, &[]);
    site.manifest(&dir.join("vm.yaml"), &site.name, true);
    let mut log = String::new();
    let running = wait_running(
        &mut first,
        &err,
        &mut log,
        &status_file,
        "a QEMU pid",
        |s| s["qemuPid"].is_u64(),
    );
    let launcher_pid = running["pid"].as_u64().unwrap();
    let qemu_pid = running["qemuPid"].as_u64().unwrap();
    // A failed run leaves no VM behind: no handler would stop it.
    let _stop = StopOnDrop(launcher_pid);
    // The guest up and waiting for its power button, so the final stop is prompt.
    let console = site.root().join(&site.name).join("console.log");
    eventually(VM_TIMEOUT, "the guest to hold", || {
        std::fs::read_to_string(&console).is_ok_and(|c| c.contains("VMPOD-HOLD"))
    });
    first.kill().unwrap();
    first.wait().unwrap();
    drain(&err, &mut log, QUIET);
    // Orphans are reaped by init, or linger as zombies where it does not reap.
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(
        alive(launcher_pid) && alive(qemu_pid),
        "the VM died with its handler"
    );

    // The status file is written again by the new handler, from the same launcher.
    std::fs::remove_file(&status_file).unwrap();
    let (mut second, err) = site.handler(&dir, &[]);
    let mut log2 = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log2.contains("adopting the running launcher") {
        assert!(
            Instant::now() < deadline,
            "the new handler did not adopt the launcher within 30 s:\n{log2}\n\
             --- first handler ---\n{log}"
        );
        drain(&err, &mut log2, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(Duration::from_secs(30), "the adopted VM's status", || {
        status().is_some_and(|s| s["phase"] == "Running")
    });
    let s = status().unwrap();
    assert_eq!(
        (s["pid"].as_u64(), s["qemuPid"].as_u64()),
        (Some(launcher_pid), Some(qemu_pid)),
        "the same launcher and QEMU, not a new VM: {s}"
    );
    let pod = site.recorded_pod();

    stop_handler(&mut second, Signal::SIGTERM, &err, &mut log2);
    assert!(!alive(launcher_pid) && !alive(qemu_pid), "{log2}");
    // The node bridge belongs to the run that created it (the killed handler), which
    // never got to delete it; the adopting handler leaves it alone.
    let _ = Command::new("ip")
        .args(["link", "del", &site.bridge])
        .status();
    site.assert_nothing_left(&pod);
}

/// KubeVirt's masquerade shape in local mode: `masquerade: {}` with
/// `ports: [{name: http, port: 80}]` under `kubevirt.io/v1`; the guest leases the private
/// 10.0.2.2/24 behind gateway 10.0.2.1, reaches the node's gateway through the NAT, and
/// nothing is left afterwards.
#[test]
fn run_boots_a_kubevirt_masquerade_shape_which_leases_the_private_address() {
    let Some(site) = Site::privileged("lmasq") else {
        return;
    };
    let manifest = site.vm_yaml(false);
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("apiVersion: vmpod.io/v1alpha1", "apiVersion: kubevirt.io/v1", 1)
        .replacen(
            "          bridge: {}\n",
            "          masquerade: {}\n          ports:\n            - name: http\n              port: 80\n",
            1,
        )
        .replacen(
            "panic=-1",
            &format!("panic=-1 vmpod.ping={}", site.gateway()),
            1,
        );
    assert!(text.contains("masquerade: {}") && text.contains("kubevirt.io/v1"));
    std::fs::write(&manifest, text).unwrap();
    let run = site.run_to_the_end(&manifest, &[]);
    let lease = run.lease();
    assert_eq!(lease.ip.to_string(), "10.0.2.2", "{}", run.console);
    assert_eq!(lease.prefix, 24);
    assert_eq!(
        lease.router().map(|r| r.to_string()).as_deref(),
        Some("10.0.2.1")
    );
    let ping = run.report.ping.as_ref().expect("a ping report");
    assert_eq!(ping.target.to_string(), site.gateway());
    assert!(
        ping.ok,
        "the guest reaches the node through the NAT:\n{}",
        run.console
    );
    assert!(run.report.powered_off, "{}\n{}", run.console, run.log);
    site.assert_nothing_left(&run.pod());
}

/// With one boot slot (`--max-concurrent-boots 1`), two guests created at once boot one
/// after the other: the second's domain starts only after the first guest's DHCP lease,
/// and its status says why it waits meanwhile. Both lease; nothing is left.
#[test]
fn handler_local_with_one_boot_slot_starts_the_second_domain_after_the_first_lease() {
    let Some(site) = Site::privileged("bs") else {
        return;
    };
    let dir = site.manifests_dir();
    let names = [format!("{}a", site.name), format!("{}b", site.name)];
    // Written before the handler starts: its first scan sees both at once.
    for name in &names {
        site.manifest(&dir.join(format!("{name}.yaml")), name, true);
    }
    let (mut handler, err) = site.handler(
        &dir,
        &[
            ("VMPOD_MAX_CONCURRENT_BOOTS", OsStr::new("1")),
            // Only the lease gives the slot back here, however slow the machine.
            ("VMPOD_BOOT_SLOT_TIMEOUT", OsStr::new("600")),
        ],
    );
    let mut log = String::new();
    let mut waiting_seen = Vec::new();
    let mut last: Vec<Option<(vmpod::control::LauncherStatus, Option<u64>)>>;
    let deadline = Instant::now() + VM_TIMEOUT;
    let done = loop {
        drain(&err, &mut log, Duration::ZERO);
        last = names
            .iter()
            .map(|n| status_and_lease(&site.root().join(n)))
            .collect();
        for (name, s) in names.iter().zip(&last) {
            if let Some((status, _)) = s
                && status.reason.as_deref() == Some("waiting for a boot slot (1 of 1 busy)")
                && !waiting_seen.contains(name)
            {
                assert_eq!(status.phase, vmpod::control::Phase::Pending, "{status:?}");
                waiting_seen.push(name.clone());
            }
        }
        let all: Option<Vec<_>> = last.iter().cloned().collect();
        if let Some(all) = all.filter(|a| {
            a.iter()
                .all(|(s, bound)| s.running_at.is_some() && bound.is_some())
        }) {
            break Some(all);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(mut both) = done else {
        stop_handler(&mut handler, Signal::SIGTERM, &err, &mut log);
        panic!("both guests did not run and lease: {last:?}\n{log}");
    };
    let running_at =
        |s: &vmpod::control::LauncherStatus| s.running_at.as_ref().unwrap().0.as_second();
    both.sort_by_key(|(s, _)| running_at(s));
    let (first, second) = (&both[0], &both[1]);
    // Both in whole seconds, rounded down: the order holds of them too.
    let first_lease = i64::try_from(first.1.unwrap()).unwrap();
    if running_at(&second.0) < first_lease || waiting_seen != std::slice::from_ref(&second.0.name) {
        // The VMs go with the handler before the test fails.
        stop_handler(&mut handler, Signal::SIGTERM, &err, &mut log);
    }
    assert!(
        running_at(&second.0) >= first_lease,
        "{} ran at {}, before {}'s lease at {first_lease} (it ran at {}):\n{log}",
        second.0.name,
        running_at(&second.0),
        first.0.name,
        running_at(&first.0),
    );
    assert_eq!(
        waiting_seen,
        std::slice::from_ref(&second.0.name),
        "the status of the one that waited says so"
    );
    let pods: Vec<PodLine> = names
        .iter()
        .map(|n| {
            let record: serde_json::Value = serde_json::from_slice(
                &std::fs::read(site.root().join(n).join("pod/pod.json")).unwrap(),
            )
            .unwrap();
            PodLine {
                ip: String::new(),
                gateway: site.gateway(),
                netns: record["netns"].as_str().unwrap().into(),
                veth: record["nodeVeth"].as_str().unwrap().into(),
            }
        })
        .collect();
    stop_handler(&mut handler, Signal::SIGTERM, &err, &mut log);
    for pod in &pods {
        site.assert_nothing_left(pod);
    }
    for n in &names {
        assert!(!site.root().join(n).exists(), "{n}'s state dir left");
    }
}

/// SIGTERM to a launcher waiting for a boot slot (the one slot held by this test) ends
/// the wait at once: the launcher tears down what it set up and exits, and nothing is
/// left.
#[test]
fn sigterm_to_a_launcher_waiting_for_a_boot_slot_tears_down_at_once() {
    let Some(site) = Site::privileged("bsterm") else {
        return;
    };
    std::fs::create_dir_all(site.root()).unwrap();
    let slot_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(site.root().join("boot-slot-0.lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(slot_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let manifest = site.vm_yaml(true);
    let root = site.root();
    let Running {
        child: mut run,
        err,
        ..
    } = site.vmpodctl_run(
        &manifest,
        &[
            ("VMPOD_BOOT_SLOTS_DIR", root.as_path()),
            ("VMPOD_BOOT_SLOTS", Path::new("1")),
        ],
    );
    let state_dir = site.root().join(&site.name);
    let mut log = String::new();
    let waiting = (|| {
        let deadline = Instant::now() + VM_TIMEOUT;
        while Instant::now() < deadline {
            drain(&err, &mut log, Duration::ZERO);
            if read_json(&state_dir.join("status.json"))
                .is_some_and(|s| s["reason"] == "waiting for a boot slot (1 of 1 busy)")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })();
    if !waiting {
        // Ctrl-C: vmpodctl stops the launcher and removes the pod, so a failure here
        // leaves no bridge or namespace behind to collide with a later test's subnet.
        signal(&run, Signal::SIGINT);
        wait_or_kill(&mut run, VM_TIMEOUT);
        panic!("the launcher did not wait for the boot slot:\n{log}");
    }
    let pod = site.recorded_pod();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("pod/pod.json")).unwrap()).unwrap();
    let launcher = i32::try_from(record["launcherPid"].as_u64().unwrap()).unwrap();
    let termed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher), Signal::SIGTERM).unwrap();
    let status = wait_or_kill(&mut run, Duration::from_secs(60));
    let took = termed.elapsed();
    drain(&err, &mut log, Duration::from_millis(500));
    assert!(
        !status.success(),
        "a boot stopped by SIGTERM is no success:\n{log}"
    );
    assert!(
        log.contains("stopped by SIGTERM during boot"),
        "the launcher's reason:\n{log}"
    );
    assert!(
        took < Duration::from_secs(10),
        "teardown took {took:?}:\n{log}"
    );
    site.assert_nothing_left(&pod);
    drop(held);
}
