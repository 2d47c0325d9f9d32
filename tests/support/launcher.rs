//! Running the real `vmpod-launcher` binary inside a pod sandbox: build it once, write a
//! VMI for the test guest, start it in the pod's network namespace, read its console and
//! wait (bounded) for it to end.

use super::guest::{GuestReport, guest_artifacts};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vmpod::sandbox::PodSandbox;

/// The launcher binary of this workspace, its libvirt client `vmpod-virt` and the
/// library it preloads into that and libvirtd (both found beside it), built on first
/// use in this test's profile.
pub fn launcher_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        super::cargo_build::build_bins(&["vmpod-preload"], &[]);
        super::cargo_build::build_bins(
            &["vmpod-launcher", "vmpod-virt"],
            &["vmpod-launcher", "vmpod-virt"],
        )
        .join("vmpod-launcher")
    })
    .clone()
}

/// The QEMU capabilities seed the tests' launchers share, instead of the host's
/// default (`/var/cache/vmpod/qemu-capabilities`): under this build's target dir, so
/// tests neither read nor fill the host's cache, and later launchers start seeded.
pub fn test_caps_seed() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/tmp (where CARGO_TARGET_TMPDIR
    // points; worked out, since the handler's unit tests include this file too).
    let exe = std::env::current_exe().expect("the running test binary");
    exe.ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps")
        .join("tmp")
        .join("vmpod-caps-seed")
}

/// Where the test guest's kernel, initramfs and root disk come from.
#[derive(Clone, Copy, Debug)]
pub enum GuestBoot<'a> {
    /// This machine's `target/guest` files by path (kernelBoot paths, no root disk); a
    /// `vmpod.io/v1alpha1` manifest.
    Files,
    /// An image holding them: kernelBoot.container and a containerDisk, both from the
    /// image; a `kubevirt.io/v1` manifest, as a KubeVirt user writes it.
    Image(&'a str),
}

/// A VMI for the test guest: kernel boot, one bridged pod interface (with `mac` as its
/// `macAddress` when given), a cidata disk with `user_data`; `hold` keeps the guest up
/// until the ACPI power button, else it powers off after its checks. It asks for
/// emulation (TCG), so tests that are not about acceleration behave the same whether
/// the machine's KVM works, is absent, is refused by the probe or fails late; tests
/// about acceleration override it with `--accel`.
pub fn guest_vmi(
    name: &str,
    user_data: &str,
    hold: bool,
    grace: u32,
    boot: GuestBoot<'_>,
    mac: Option<&str>,
) -> String {
    let args = if hold {
        "console=ttyS0 panic=-1 vmpod.hold=1"
    } else {
        "console=ttyS0 panic=-1"
    };
    let user_data: String = user_data
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    let mac = mac
        .map(|m| format!("          macAddress: \"{m}\"\n"))
        .unwrap_or_default();
    let (api_version, kernel, root_disk, root_volume) = match boot {
        GuestBoot::Files => {
            let (kernel, initrd) = guest_artifacts();
            (
                "vmpod.io/v1alpha1",
                format!(
                    "        kernelPath: {}\n        initrdPath: {}\n",
                    kernel.display(),
                    initrd.display()
                ),
                String::new(),
                String::new(),
            )
        }
        GuestBoot::Image(image) => (
            "kubevirt.io/v1",
            format!(
                "        container:\n          image: {image}\n          \
                 kernelPath: /boot/vmlinuz\n          initrdPath: /boot/initramfs.img\n"
            ),
            "        - name: root\n          disk:\n            bus: virtio\n".to_string(),
            format!("    - name: root\n      containerDisk:\n        image: {image}\n"),
        ),
    };
    format!(
        "apiVersion: {api_version}
kind: VirtualMachineInstance
metadata:
  name: {name}
  annotations:
    vmpod.io/acceleration: emulation
spec:
  terminationGracePeriodSeconds: {grace}
  domain:
    memory:
      guest: 128Mi
    machine:
      type: pc
    firmware:
      kernelBoot:
        kernelArgs: {args}
{kernel}    devices:
      rng: {{}}
      interfaces:
        - name: default
          bridge: {{}}
{mac}      disks:
{root_disk}        - name: cloudinit
          disk:
            bus: virtio
  networks:
    - name: default
      pod: {{}}
  volumes:
{root_volume}    - name: cloudinit
      cloudInitNoCloud:
        userData: |
{user_data}"
    )
}

/// [`guest_vmi`] booted from this machine's files, without a `macAddress`.
pub fn testguest_vmi(name: &str, user_data: &str, hold: bool, grace: u32) -> String {
    guest_vmi(name, user_data, hold, grace, GuestBoot::Files, None)
}

/// The names of the links in the pod's network namespace.
pub fn pod_links(sb: &PodSandbox) -> Vec<String> {
    pod_snapshot(sb).links.into_iter().map(|l| l.name).collect()
}

/// The addresses in the pod's network namespace.
pub fn pod_addresses(sb: &PodSandbox) -> Vec<vmpod::net::IpCidr> {
    pod_snapshot(sb)
        .addresses
        .into_iter()
        .map(|a| a.address)
        .collect()
}

fn pod_snapshot(sb: &PodSandbox) -> vmpod::net::snapshot::NetSnapshot {
    vmpod::net::discover::with_handle(Some(sb.netns_path()), |h| async move {
        vmpod::net::snapshot::snapshot(&h).await
    })
    .unwrap_or_else(|e| panic!("the pod's links and addresses: {e}"))
}

/// The anti-spoofing report of the pod interface (`eth0`) from the launcher's network
/// report.
pub fn anti_spoofing_report(state_dir: &Path) -> vmpod::control::AntiSpoofReport {
    let network = control_call(
        state_dir,
        "network report",
        |c| async move { c.network().await },
    );
    let anti = network.interfaces[0]
        .anti_spoofing
        .clone()
        .expect("an anti-spoofing report");
    assert_eq!(anti.table, "vmpod-as-eth0");
    anti
}

/// One call on the launcher's control socket in `state_dir`, answered within 10 s.
pub fn control_call<T, E, F>(
    state_dir: &Path,
    what: &str,
    call: impl FnOnce(vmpod::control::ControlClient) -> F,
) -> T
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let client = vmpod::control::ControlClient::new(
        vmpod::statedir::StateDir::new(state_dir).control_socket(),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), call(client)).await })
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The launcher's `/v1/network` report, through its control socket in `state_dir`.
pub fn network_report(state_dir: &Path) -> vmpod::control::NetworkReport {
    control_call(
        state_dir,
        "network report",
        |c| async move { c.network().await },
    )
}

/// A launcher's status and the first lease time of its DHCP server (unix seconds), from
/// its control API; None while it does not answer.
pub fn status_and_lease(state_dir: &Path) -> Option<(vmpod::control::LauncherStatus, Option<u64>)> {
    let client = vmpod::control::ControlClient::new(
        vmpod::statedir::StateDir::new(state_dir).control_socket(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let status = client.status().await.ok()?;
        let network = client.network().await.ok()?;
        let bound = network
            .interfaces
            .first()
            .and_then(|i| i.dhcp.as_ref())
            .and_then(|d| d.lease.bound_at);
        Some((status, bound))
    })
}

/// What runs the test guest (a launcher process, a launcher pod): its console, what to
/// show when a wait fails, and whether it has ended.
pub trait GuestHost {
    fn console(&self) -> String;
    fn diagnostics(&self) -> String;
    /// Why the guest can get no further (its launcher or container ended), if so.
    fn ended(&mut self) -> Option<String>;
}

/// Wait until the guest's console report on `host` satisfies `done`; panics (with the
/// host's diagnostics) on timeout or when the host ends first.
pub fn wait_report<H: GuestHost>(
    host: &mut H,
    timeout: Duration,
    done: impl Fn(&GuestReport) -> bool,
) -> GuestReport {
    wait_for(host, timeout, "the guest got there", |h: &H| {
        let report =
            GuestReport::parse(&h.console()).unwrap_or_else(|e| panic!("{e}\n{}", h.diagnostics()));
        done(&report).then_some(report)
    })
}

/// Poll `found` on `host` until it gives a value; panics (with the host's diagnostics)
/// after `timeout` or when the host ends first.
pub fn wait_for<H: GuestHost, T>(
    host: &mut H,
    timeout: Duration,
    what: &str,
    found: impl Fn(&H) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = found(host) {
            return value;
        }
        if let Some(why) = host.ended() {
            panic!("{why} before {what}\n{}", host.diagnostics());
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {timeout:?}\n{}",
            host.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl GuestHost for Launcher {
    fn console(&self) -> String {
        Launcher::console(self)
    }

    fn diagnostics(&self) -> String {
        Launcher::diagnostics(self)
    }

    fn ended(&mut self) -> Option<String> {
        let st = self.child.try_wait().expect("wait for the launcher")?;
        Some(format!("launcher exited ({st})"))
    }
}

/// A launcher process running in a pod sandbox.
pub struct Launcher {
    pub child: Child,
    pub state_dir: PathBuf,
    pub stderr: PathBuf,
    pub started: Instant,
}

/// How a test hands the launcher its VMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmiFrom {
    /// `--vmi <state dir>/vmi.yaml`
    File,
    /// `VMPOD_VMI` holding the manifest itself, no `--vmi`.
    EnvText,
    /// `--vmi -`, the manifest on standard input.
    Stdin,
}

impl Launcher {
    /// Start `vmpod-launcher run` in the pod with `vmi` (written to the state dir).
    pub fn start(sb: &PodSandbox, state_dir: &Path, vmi: &str, extra: &[&str]) -> Launcher {
        Self::start_with(sb, state_dir, vmi, VmiFrom::File, extra, &[])
    }

    /// [`Launcher::start`] with extra environment variables.
    pub fn start_with_env(
        sb: &PodSandbox,
        state_dir: &Path,
        vmi: &str,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Launcher {
        Self::start_with(sb, state_dir, vmi, VmiFrom::File, extra, env)
    }

    /// [`Launcher::start`], handing over the VMI as `from` says, with extra environment
    /// variables. The tests' own capabilities seed ([`test_caps_seed`]) unless `extra`
    /// names one.
    pub fn start_with(
        sb: &PodSandbox,
        state_dir: &Path,
        vmi: &str,
        from: VmiFrom,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Launcher {
        std::fs::create_dir_all(state_dir).unwrap();
        let vmi_path = state_dir.join("vmi.yaml");
        std::fs::write(&vmi_path, vmi).unwrap();
        let stderr = state_dir.join("launcher.log");
        let started = Instant::now();
        let mut cmd = sb.command(launcher_bin()).unwrap();
        cmd.arg("run");
        match from {
            VmiFrom::File => {
                cmd.arg("--vmi").arg(&vmi_path);
            }
            VmiFrom::EnvText => {
                cmd.env("VMPOD_VMI", vmi);
            }
            VmiFrom::Stdin => {
                cmd.args(["--vmi", "-"]);
            }
        }
        cmd.arg("--state-dir")
            .arg(state_dir)
            .arg("--resolv-conf")
            .arg(sb.resolv_conf_path());
        if !extra.contains(&"--caps-seed") {
            cmd.arg("--caps-seed").arg(test_caps_seed());
        }
        let mut child = cmd
            .args(extra)
            .envs(env.iter().copied())
            .env("VMPOD_LOG", "info")
            .stdin(if from == VmiFrom::Stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn vmpod-launcher");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(vmi.as_bytes()).unwrap(); // closed when dropped
        }
        Launcher {
            child,
            state_dir: state_dir.to_path_buf(),
            stderr,
            started,
        }
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("console.log")).unwrap_or_default()
    }

    /// The launcher's stderr, ANSI colour codes removed.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- launcher log ---\n{}\n--- console ---\n{}",
            self.log(),
            self.console()
        )
    }

    /// Wait until the guest's console report satisfies `done`; panics (with the launcher
    /// log and the console) on timeout or when the launcher exits first.
    pub fn wait_report(
        &mut self,
        timeout: Duration,
        done: impl Fn(&GuestReport) -> bool,
    ) -> GuestReport {
        wait_report(self, timeout, done)
    }

    /// Wait for the launcher to exit; panics with diagnostics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "launcher still running after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// SIGTERM, and the launcher must exit 0 within `timeout`.
    pub fn stop_gracefully(&mut self, timeout: Duration) {
        self.sigterm();
        let st = self.wait_exit(timeout);
        assert!(st.success(), "launcher exit {st}\n{}", self.log());
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // A failed test: SIGTERM lets the launcher tear down; kill after 20 s.
            self.sigterm();
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Remove `ESC [ ... m` colour sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Processes whose command line mentions `needle` (e.g. a state dir): leftovers.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}
