//! Launcher features a user sees, each through the real `vmpod-launcher` booting the test
//! guest in a pod sandbox (TCG): the console log rotated at boot and past 4 MiB, the
//! QEMU capabilities seed read from and written back to the directory given, the VMI
//! taken from `VMPOD_VMI` (the manifest itself) or from standard input, and the VMI's
//! `dhcpOptions` in the guest's lease.
mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;
use support::launcher::{Launcher, VmiFrom, processes_mentioning, testguest_vmi};
use vmpod::control::{Phase, read_status};

const BOOT: Duration = Duration::from_secs(150);
const EMULATION: &[&str] = &["--accel", "emulation"];

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// At boot the launcher moves the previous boot's console log to `console.log.1`. While
/// the VM runs, a stand-in for a chatty guest writes past the 4 MiB cap into the FIFO
/// QEMU writes the console to, interleaved with the real guest's output: every one of its
/// lines is in `console.log.1` + `console.log`, once and in order, with the guest's boot
/// before and its power-off after, and neither file passes the cap. The VMI comes from
/// `VMPOD_VMI` holding the manifest itself.
#[test]
fn console_log_rotates_at_boot_and_past_4_mib_losing_nothing() {
    if !support::privileged("console_log_rotates_at_boot_and_past_4_mib_losing_nothing") {
        return;
    }
    let (sb, _dir, state) = support::pod_and_state_dir("lrot", 77);
    std::fs::create_dir_all(&state).unwrap();
    let log = state.join("console.log");
    let previous = state.join("console.log.1");
    std::fs::write(&log, "PREVIOUS-BOOT console output\n").unwrap();

    let vmi = testguest_vmi("lrot-env", "#cloud-config\n", true, 30);
    let mut l = Launcher::start_with(&sb, &state, &vmi, VmiFrom::EnvText, EMULATION, &[]);
    l.wait_report(BOOT, |r| r.holding);
    assert_eq!(
        String::from_utf8_lossy(&read(&previous)),
        "PREVIOUS-BOOT console output\n",
        "the previous boot's log is console.log.1"
    );
    let this_boot = read(&log);
    assert!(
        contains(&this_boot, "VMPOD-BOOT") && !contains(&this_boot, "PREVIOUS-BOOT"),
        "console.log holds this boot only:\n{}",
        String::from_utf8_lossy(&this_boot)
    );
    assert_eq!(
        read_status(&state).unwrap().name,
        "lrot-env",
        "the VMI from VMPOD_VMI"
    );

    // Past 4 MiB, one line per write (a pipe keeps writes of up to 4 KiB whole, so the
    // guest's own output lands between lines, never inside one).
    let max = vmpod::control::state::CONSOLE_LOG_MAX;
    let line = |i: usize| format!("FILLER {i:08} 0123456789abcdef0123456789abcdef0123456789abcd\n");
    let lines = usize::try_from(max).unwrap() / line(0).len() + 2000;
    let mut fifo = std::fs::OpenOptions::new()
        .append(true)
        .open(vmpod::statedir::ScratchDir::new(&state).console_fifo())
        .unwrap();
    for i in 0..lines {
        fifo.write_all(line(i).as_bytes()).unwrap();
    }
    drop(fifo);

    l.stop_gracefully(Duration::from_secs(60));
    let (old, new) = (read(&previous), read(&log));
    for (name, f) in [("console.log.1", &old), ("console.log", &new)] {
        assert!(f.len() as u64 <= max, "{name}: {} bytes", f.len());
    }
    let all = String::from_utf8_lossy(&[old, new].concat()).into_owned();
    let fillers: Vec<&str> = all.lines().filter(|l| l.starts_with("FILLER ")).collect();
    assert_eq!(fillers.len(), lines, "FILLER lines lost or doubled");
    for (i, got) in fillers.iter().enumerate() {
        assert_eq!(format!("{got}\n"), line(i), "FILLER line {i}");
    }
    let at = |what: &str| {
        all.find(what)
            .unwrap_or_else(|| panic!("no {what} in the logs"))
    };
    assert!(
        at("VMPOD-BOOT") < at("FILLER 00000000") && at(&line(lines - 1)) < at("VMPOD-POWEROFF"),
        "the guest's boot, the filler, the guest's power-off: out of order"
    );
}

/// `--caps-seed DIR`: libvirtd's private capabilities cache starts from DIR's files, and
/// what libvirtd cached is copied back there once the domain runs. The VMI comes from
/// standard input (`--vmi -`).
#[test]
fn caps_seed_is_read_before_libvirtd_and_written_back() {
    if !support::privileged("caps_seed_is_read_before_libvirtd_and_written_back") {
        return;
    }
    let (sb, dir, state) = support::pod_and_state_dir("lseed", 77);
    let seed = dir.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    // libvirtd reads only the entry named after its emulator: a marker is left alone.
    std::fs::write(seed.join("vmpod-test-marker.xml"), "<marker/>\n").unwrap();

    let vmi = testguest_vmi("lseed-stdin", "#cloud-config\n", false, 10);
    let seed_arg = seed.to_str().unwrap();
    let mut l = Launcher::start_with(
        &sb,
        &state,
        &vmi,
        VmiFrom::Stdin,
        &["--accel", "emulation", "--caps-seed", seed_arg],
        &[],
    );
    l.wait_report(BOOT, |r| r.powered_off);
    let st = l.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "launcher exit {st}\n{}", l.log());
    assert_eq!(read_status(&state).unwrap().name, "lseed-stdin");

    let cache = vmpod::domain::daemons::LibvirtLayout::new(&state).caps_cache();
    assert_eq!(
        String::from_utf8_lossy(&read(&cache.join("vmpod-test-marker.xml"))),
        "<marker/>\n",
        "the private cache was seeded from {}",
        seed.display()
    );
    let xml_files = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".xml"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let cached = xml_files(&cache);
    assert!(
        cached.len() >= 2,
        "libvirtd cached QEMU's capabilities: {cached:?}"
    );
    assert_eq!(
        xml_files(&seed),
        cached,
        "what libvirtd cached was written back to the seed"
    );
    assert!(processes_mentioning(&state.to_string_lossy()).is_empty());
}

/// KubeVirt's `dhcpOptions` on the VMI's interface reach the guest's lease: NTP servers
/// (42), TFTP server (66), boot file (67) and a private option (224-254).
#[test]
fn dhcp_options_from_the_vmi_reach_the_guests_lease() {
    if !support::privileged("dhcp_options_from_the_vmi_reach_the_guests_lease") {
        return;
    }
    let (sb, _dir, state) = support::pod_and_state_dir("ldopt", 77);
    let vmi = testguest_vmi("ldopt", "#cloud-config\n", false, 10);
    let bridge = "          bridge: {}\n";
    assert!(vmi.contains(bridge), "{vmi}");
    let vmi = vmi.replacen(
        bridge,
        &format!(
            "{bridge}          dhcpOptions:\n            bootFileName: pxelinux.0\n            \
             tftpServerName: tftp.vmpod.test\n            ntpServers: [10.77.0.123, 10.77.0.124]\n            \
             privateOptions:\n              - option: 240\n                value: vmpod\n"
        ),
        1,
    );
    let mut l = Launcher::start(&sb, &state, &vmi, EMULATION);
    let report = l.wait_report(BOOT, |r| r.lease.is_some());
    let lease = report.lease.unwrap();
    assert_eq!(lease.ip, "10.77.0.5".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(
        lease.ntp,
        ["10.77.0.123", "10.77.0.124"].map(|a| a.parse::<std::net::Ipv4Addr>().unwrap())
    );
    assert_eq!(lease.tftp.as_deref(), Some("tftp.vmpod.test"));
    assert_eq!(lease.bootfile.as_deref(), Some("pxelinux.0"));
    // udhcpc reports options it does not know in hex: "vmpod".
    assert_eq!(
        lease.private.get(&240).map(|v| v.to_ascii_lowercase()),
        Some("766d706f64".to_string())
    );
    let st = l.wait_exit(Duration::from_secs(90));
    assert!(st.success(), "launcher exit {st}\n{}", l.log());
    assert_eq!(read_status(&state).unwrap().phase, Phase::Succeeded);
}
