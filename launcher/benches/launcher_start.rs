//! Launcher start-up and footprint, measured from outside on the real binary in a pod
//! sandbox with the test guest (not a timed test; needs root):
//!
//! - launcher start -> domain running (`status.json` says Running), and
//! - launcher start -> the guest's DHCP ACK (the control API's DHCP counters),
//!
//! median of N runs, with the QEMU capabilities cache seeded (every pod after the first on
//! a node) and unseeded (an empty seed: libvirtd probes QEMU); then the RSS and PSS of the
//! launcher and of the pod without QEMU (launcher + vmpod-virt + libvirtd), beside
//! KubeVirt's budgets.
//!
//!     cargo bench -p vmpod-launcher --bench launcher_start
//!     VMPOD_BENCH_RUNS=9 cargo bench -p vmpod-launcher --bench launcher_start

#[path = "../../tests/support/cargo_build.rs"]
mod cargo_build;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmpod::control::{ControlClient, Phase, read_status};
use vmpod::net::IpCidr;
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};

/// KubeVirt's resource budgets for the same roles (virt-launcher pod overhead), MiB.
const KUBEVIRT_BUDGET: [(&str, u32); 4] = [
    ("virt-launcher", 100),
    ("virt-launcher-monitor", 25),
    ("virtlogd", 25),
    ("virtqemud", 40),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build() -> (PathBuf, PathBuf, PathBuf) {
    // The launcher is measured in the profile this bench is built in (release for
    // `cargo bench`, debug for `cargo bench --profile dev`).
    let bin_dir = cargo_build::build_bins(
        &["vmpod-launcher", "vmpod-virt"],
        &["vmpod-launcher", "vmpod-virt"],
    );
    let st = Command::new("bash")
        .arg(root().join("tests/guest/build.sh"))
        .status()
        .unwrap();
    assert!(st.success(), "tests/guest/build.sh");
    let guest = bin_dir.parent().unwrap().join("guest");
    (
        bin_dir.join("vmpod-launcher"),
        guest.join("vmlinuz"),
        guest.join("initramfs.img"),
    )
}

fn vmi(kernel: &Path, initrd: &Path) -> String {
    format!(
        "apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: bench
spec:
  terminationGracePeriodSeconds: 30
  domain:
    memory: {{guest: 128Mi}}
    machine: {{type: pc}}
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0 panic=-1 vmpod.hold=1
        kernelPath: {}
        initrdPath: {}
    devices:
      interfaces: [{{name: default, bridge: {{}}}}]
  networks: [{{name: default, pod: {{}}}}]
",
        kernel.display(),
        initrd.display()
    )
}

/// Resident memory of a process in KiB: RSS counts every page it maps; PSS divides
/// shared pages among the processes sharing them.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
    }
}

fn mem(pid: u32) -> Mem {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
    }
}

/// (pid, comm) of the direct children of `parent`.
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            out.push((pid, comm));
        }
    }
    out
}

struct Sample {
    running: Duration,
    ack: Duration,
    launcher: Mem,
    children: Vec<(String, Mem)>,
    qemu: Mem,
}

fn one_run(
    bin: &Path,
    vmi_text: &str,
    seed: &Path,
    sb: &PodSandbox,
    rt: &tokio::runtime::Runtime,
) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let vmi_path = dir.path().join("vmi.yaml");
    std::fs::write(&vmi_path, vmi_text).unwrap();
    let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
    let t0 = Instant::now();
    let mut child = sb
        .command(bin)
        .unwrap()
        .args(["run", "--vmi"])
        .arg(&vmi_path)
        .arg("--state-dir")
        .arg(&state)
        .arg("--resolv-conf")
        .arg(sb.resolv_conf_path())
        .arg("--caps-seed")
        .arg(seed)
        .env("VMPOD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = t0 + Duration::from_secs(180);
    let fail = |what: &str| -> ! {
        let log = std::fs::read_to_string(dir.path().join("launcher.log")).unwrap_or_default();
        panic!("{what}\n{log}");
    };
    let running = loop {
        if read_status(&state).is_ok_and(|s| s.phase == Phase::Running) {
            break t0.elapsed();
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            fail("no Running phase");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let client = ControlClient::new(state.join("control.sock"));
    let ack = loop {
        let acked = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.network()).await
            })
            .ok()
            .and_then(Result::ok)
            .is_some_and(|n| {
                n.interfaces
                    .iter()
                    .any(|i| i.dhcp.as_ref().is_some_and(|d| d.replies.ack > 0))
            });
        if acked {
            break t0.elapsed();
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            fail("no DHCP ACK");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = child.id();
    let launcher = mem(pid);
    let mut kids = Vec::new();
    for (cpid, comm) in children(pid) {
        kids.push((comm, mem(cpid)));
    }
    // libvirt starts QEMU detached: find it by the pid the launcher reports.
    let qemu = read_status(&state)
        .ok()
        .and_then(|s| s.qemu_pid)
        .map_or_else(Mem::default, mem);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stop = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > stop {
            let _ = child.kill();
            fail("launcher did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Sample {
        running,
        ack,
        launcher,
        children: kids,
        qemu,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("launcher_start bench: needs root (pod sandbox, libvirtd, QEMU); skipped");
        return;
    }
    let runs: usize = std::env::var("VMPOD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (bin, kernel, initrd) = build();
    let text = vmi(&kernel, &initrd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = NodeSpec::isolated(vec![IpCidr::new("10.79.0.1".parse().unwrap(), 24)]);
    let spec = PodSpec::new(
        "bench",
        IpCidr::new("10.79.0.5".parse().unwrap(), 24),
        "10.79.0.1".parse().unwrap(),
    );
    let sb = PodSandbox::create(&node, &spec).unwrap();

    let seeds = tempfile::tempdir().unwrap();
    let report = |label: &str, samples: &[Sample]| {
        let running = median(samples.iter().map(|s| s.running).collect());
        let ack = median(samples.iter().map(|s| s.ack).collect());
        println!(
            "{label:<34} start->running {:>8}   start->DHCP ACK {:>8}   (median of {})",
            ms(running),
            ms(ack),
            samples.len()
        );
    };

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("vmpod-launcher start-up ({build} build, TCG, test guest, {runs} runs each)");
    let unseeded: Vec<Sample> = (0..runs.min(3))
        .map(|i| {
            one_run(
                &bin,
                &text,
                &seeds.path().join(format!("empty{i}")),
                &sb,
                &rt,
            )
        })
        .collect();
    report("unseeded capabilities cache", &unseeded);
    let seed = seeds.path().join("seed");
    one_run(&bin, &text, &seed, &sb, &rt); // fills the seed
    let seeded: Vec<Sample> = (0..runs)
        .map(|_| one_run(&bin, &text, &seed, &sb, &rt))
        .collect();
    report("seeded capabilities cache", &seeded);

    let last = seeded.last().unwrap();
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let row = |name: &str, m: Mem, note: &str| {
        println!(
            "  {name:<24} {:>10} {:>10}   {note}",
            mib(m.rss),
            mib(m.pss)
        );
    };
    println!();
    println!("memory while the guest runs (last seeded run)");
    println!("  {:<24} {:>10} {:>10}", "process", "RSS", "PSS");
    row("vmpod-launcher", last.launcher, "(goal: RSS < 10 MiB)");
    let mut pod = last.launcher;
    for (comm, m) in &last.children {
        row(comm, *m, "");
        pod += *m;
    }
    row(
        "pod total without QEMU",
        pod,
        "(goal: < 60 MiB; RSS counts shared pages once per process)",
    );
    row("qemu", last.qemu, "(not counted above)");
    let budget: u32 = KUBEVIRT_BUDGET.iter().map(|(_, m)| m).sum();
    println!();
    println!("KubeVirt budgets for the same roles (MiB):");
    for (role, m) in KUBEVIRT_BUDGET {
        println!("  {role:<22} {m:>6}");
    }
    println!("  {:<22} {budget:>6}", "total");
}
