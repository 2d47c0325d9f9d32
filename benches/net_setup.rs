//! Wall time of `net setup` for one pod interface, ours against the same steps run as a
//! sequence of `ip` (and `sysctl`) commands, in one run. Every sample gets a fresh pod
//! fixture (not timed). Needs root.
//!
//! `cargo bench --bench net_setup [-- RUNS]` (default 15 runs of each, interleaved).
//!
//! - `library`: `vmpod::net::setup` (discovery, two fsynced cache writes, 16 netlink
//!   ops), with the state directory on tmpfs (/dev/shm) and on the temp dir's disk.
//! - `launcher`: the `vmpod-launcher net setup` process, spawn to exit, same two dirs.
//! - `ip sequence`: discovery with `ip -j`, then one `ip`/`sysctl` command per op of the
//!   very plan our setup applies (translated by [`ip_commands`]).

#[path = "../tests/support/cargo_build.rs"]
mod cargo_build;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmpod::net::{self, IpCidr, NetOp, Route, SetupOptions, TapConfig};
use vmpod::sandbox::{NodeSpec, PodSandbox, PodSpec};

fn cidr(s: &str) -> IpCidr {
    let (a, p) = s.split_once('/').unwrap();
    IpCidr::new(a.parse().unwrap(), p.parse().unwrap())
}

fn fresh_pod() -> PodSandbox {
    let node = NodeSpec::isolated(vec![cidr("10.78.0.1/24")]);
    let mut pod = PodSpec::new("bench", cidr("10.78.0.5/24"), "10.78.0.1".parse().unwrap());
    pod.routes.push(Route {
        destination: cidr("192.168.60.0/24"),
        gateway: Some("10.78.0.1".parse().unwrap()),
        metric: None,
    });
    pod.dns = vec!["10.96.0.10".parse().unwrap()];
    PodSandbox::create(&node, &pod).expect("pod fixture")
}

fn options(pod: &PodSandbox, state: &Path) -> SetupOptions {
    SetupOptions {
        netns: Some(pod.netns_path().to_path_buf()),
        state_dir: state.to_path_buf(),
        resolv_conf: pod.resolv_conf_path(),
        hostname: Some("bench".into()),
        ..SetupOptions::new("eth0")
    }
}

fn nft(ns: &str, doc: &nftables::schema::Nftables) -> Vec<String> {
    ["ip", "netns", "exec", ns, "nft", "-j"]
        .iter()
        .map(|s| s.to_string())
        .chain([serde_json::to_string(doc).unwrap()])
        .collect()
}

/// The `ip` (and, for IPv4 devconf, `sysctl`) command lines that do what `op` does, inside namespace `ns`.
fn ip_commands(ns: &str, op: &NetOp) -> Vec<Vec<String>> {
    let ip = |args: &[&str]| {
        let mut v: Vec<String> = ["ip", "-n", ns].iter().map(|s| s.to_string()).collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    match op {
        // nft is a batch already (`nft -j -f -`), the same in both variants.
        NetOp::Nat(_) | NetOp::DelNatTable { .. } | NetOp::Ipv6Forwarding { .. } => {
            unreachable!("this benchmark plans the bridge binding, which has no masquerade ops")
        }
        // `ip` has no verb for IPv4 devconf: the sysctl command it would take.
        NetOp::Ipv4Conf {
            link,
            setting,
            value,
        } => vec![
            ["ip", "netns", "exec", ns, "sysctl", "-qw"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("net.ipv4.conf.{link}.{setting}={value}")])
                .collect(),
        ],
        NetOp::Ipv6AddrGenMode { link, mode } => {
            vec![ip(&["link", "set", link, "addrgenmode", &mode.to_string()])]
        }
        NetOp::DelIpv6LinkLocal { link } => {
            vec![ip(&["-6", "addr", "flush", "dev", link, "scope", "link"])]
        }
        NetOp::CreateBridge { name, mtu, mac } => vec![ip(&[
            "link",
            "add",
            name,
            "mtu",
            &mtu.to_string(),
            "address",
            &mac.to_string(),
            "type",
            "bridge",
        ])],
        NetOp::CreateTap(TapConfig {
            name,
            mtu,
            owner,
            multiqueue,
            ..
        }) => {
            let owner = owner.to_string();
            let mut add = vec![
                "tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr", "user", &owner,
            ];
            if *multiqueue {
                add.push("multi_queue");
            }
            vec![
                ip(&add),
                ip(&["link", "set", name, "mtu", &mtu.to_string()]),
            ]
        }
        NetOp::DelAddress { link, address } => {
            vec![ip(&["addr", "del", &address.to_string(), "dev", link])]
        }
        NetOp::AddAddress { link, address } => {
            vec![ip(&["addr", "add", &address.to_string(), "dev", link])]
        }
        NetOp::SetMac { link, mac } => {
            vec![ip(&["link", "set", link, "address", &mac.to_string()])]
        }
        NetOp::SetMaster { link, master } => vec![ip(&["link", "set", link, "master", master])],
        NetOp::SetUp { link } => vec![ip(&["link", "set", link, "up"])],
        NetOp::SetDown { link } => vec![ip(&["link", "set", link, "down"])],
        NetOp::AddRoute { link, route } => {
            let mut v = vec![
                "route".to_string(),
                "add".into(),
                route.destination.to_string(),
            ];
            if let Some(g) = route.gateway {
                v.extend(["via".into(), g.to_string()]);
            }
            v.extend(["dev".into(), link.clone()]);
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            vec![ip(&refs)]
        }
        NetOp::DelLink { name } => vec![ip(&["link", "del", name])],
        // The same JSON, given to `nft` as its command line.
        NetOp::AntiSpoof(rules) => vec![nft(ns, &rules.ruleset())],
        NetOp::DelNftTable { table } => {
            vec![nft(ns, &vmpod::net::antispoof::remove_ruleset(table))]
        }
    }
}

fn run(cmd: &[String]) {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vmpod-launcher built with the same profile as this bench.
fn launcher() -> PathBuf {
    cargo_build::build_bins(&["vmpod-launcher"], &["vmpod-launcher"]).join("vmpod-launcher")
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("net_setup bench: needs root (namespaces, netlink); skipped");
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15)
        .max(7);
    let bin = launcher();
    let (mut lib, mut lib_tmpfs) = (Vec::new(), Vec::new());
    let (mut cli, mut cli_tmpfs, mut ipseq) = (Vec::new(), Vec::new(), Vec::new());
    let mut plan_len = 0;
    for _ in 0..runs {
        // Ours, as a library call: the cache on disk (two fsynced writes), then on tmpfs.
        for (samples, base) in [
            (&mut lib, std::env::temp_dir()),
            (&mut lib_tmpfs, PathBuf::from("/dev/shm")),
        ] {
            let pod = fresh_pod();
            let state = tempfile::tempdir_in(base).unwrap();
            let opts = options(&pod, state.path());
            let t = Instant::now();
            let out = net::setup(&opts).expect("setup");
            samples.push(t.elapsed());
            plan_len = out.ops.len();
        }

        // Ours, as the launcher process (spawn to exit), same two state directories.
        for (samples, base) in [
            (&mut cli, std::env::temp_dir()),
            (&mut cli_tmpfs, PathBuf::from("/dev/shm")),
        ] {
            let pod = fresh_pod();
            let state = tempfile::tempdir_in(base).unwrap();
            let t = Instant::now();
            let st = Command::new(&bin)
                .args(["net", "setup", "--interface", "eth0", "--hostname", "bench"])
                .arg("--netns")
                .arg(pod.netns_path())
                .arg("--state-dir")
                .arg(state.path())
                .arg("--resolv-conf")
                .arg(pod.resolv_conf_path())
                .env("VMPOD_LOG", "warn")
                .status()
                .unwrap();
            samples.push(t.elapsed());
            assert!(st.success());
        }

        // The same steps with ip: discover, then one command per op (the plan's MACs
        // derive from the pod's MAC, so translate this pod's own plan, untimed).
        let pod = fresh_pod();
        let state = tempfile::tempdir().unwrap();
        let ops = net::dry_run(&options(&pod, state.path()))
            .expect("plan")
            .ops;
        let ns = pod
            .netns_path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let cmds: Vec<Vec<String>> = [
            vec!["ip", "-n", &ns, "-j", "addr", "show", "dev", "eth0"],
            vec!["ip", "-n", &ns, "-j", "route", "show", "dev", "eth0"],
        ]
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .chain(ops.iter().flat_map(|op| ip_commands(&ns, op)))
        .collect();
        let t = Instant::now();
        for c in &cmds {
            run(c);
        }
        ipseq.push(t.elapsed());
        drop(pod);
    }
    let (lt, l) = (median(&mut lib_tmpfs), median(&mut lib));
    let (ct, c, i) = (median(&mut cli_tmpfs), median(&mut cli), median(&mut ipseq));
    println!(
        "net setup, one interface, {plan_len} ops, median of {runs} runs each (fresh pod per run):"
    );
    println!(
        "  vmpod::net::setup, cache on tmpfs      {:>8.2} ms",
        ms(lt)
    );
    println!("  vmpod::net::setup, cache on disk       {:>8.2} ms", ms(l));
    println!(
        "  vmpod-launcher net setup, tmpfs cache  {:>8.2} ms",
        ms(ct)
    );
    println!("  vmpod-launcher net setup, disk cache   {:>8.2} ms", ms(c));
    println!("  ip/sysctl command sequence             {:>8.2} ms", ms(i));
    println!(
        "  ip sequence / ours: library {:.1}x (tmpfs) {:.1}x (disk), process {:.1}x (tmpfs) {:.1}x (disk)",
        ms(i) / ms(lt),
        ms(i) / ms(l),
        ms(i) / ms(ct),
        ms(i) / ms(c)
    );
}
