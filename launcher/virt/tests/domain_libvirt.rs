//! The pod's private libvirtd and a real TCG domain through the virt crate.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use vmpod::domain::daemons::{self, Daemons, LibvirtLayout, RunAs};
use vmpod::domain::{DomainEvent, DomainState, PausedReason, StopReason};
use vmpod_virt::libvirt::{Libvirt, RunningDomain, paused_reason};

fn bare_domain_xml(name: &str, console: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
         <devices><serial type='file'><source path='{}'/></serial></devices></domain>",
        console.display()
    )
}

type Events = tokio::sync::mpsc::UnboundedReceiver<(String, DomainEvent)>;

/// Feed events into `state` until `want` holds; bounded by 60 s.
async fn wait_state(
    rx: &mut Events,
    mut state: DomainState,
    want: fn(DomainState) -> bool,
) -> DomainState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want(state) {
        let (_, ev) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event leading out of {state:?} within 60 s"))
            .expect("event channel open");
        state = state.after(ev);
    }
    state
}

/// The `*.xml` entries of a capabilities cache directory with their modification times.
fn cache_entries(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".xml"))
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, e.metadata().unwrap().modified().unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A private libvirtd in `dir` and domain `name` started through it.
struct Started {
    layout: LibvirtLayout,
    daemons: Daemons,
    lv: Libvirt,
    dom: RunningDomain,
    events: Events,
    /// Cache entries copied in from the seed.
    seeded: usize,
    /// When libvirtd was started (after the seed was copied in).
    libvirtd_started: std::time::SystemTime,
    /// From starting libvirtd to the domain started.
    took: Duration,
}

async fn start_domain(dir: &Path, seed: &Path, name: &str) -> Started {
    // The daemons run as QEMU's user (107), and QEMU writes the console log here.
    let user = RunAs::qemu(false);
    std::fs::create_dir_all(dir).unwrap();
    user.chown(dir).unwrap();
    let layout = LibvirtLayout::new(dir);
    daemons::prepare(&layout, &user).unwrap();
    let seeded = daemons::seed_caps(&layout, seed, &user).unwrap();
    let libvirtd_started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let d = Daemons::start(&layout, user).await.unwrap();
    let mut lv = Libvirt::connect(&layout.socket()).unwrap();
    let events = lv.subscribe().unwrap();
    let dom = lv
        .define_and_start(&bare_domain_xml(name, &dir.join("console.log")))
        .unwrap();
    Started {
        layout,
        daemons: d,
        lv,
        dom,
        events,
        seeded,
        libvirtd_started,
        took: t0.elapsed(),
    }
}

/// A private libvirtd runs a domain through its lifecycle, events reported; its QEMU
/// capabilities, written back to a seed, make the next libvirtd start without probing
/// QEMU again: every seed entry is taken, none is rewritten, and it starts faster.
#[tokio::test(flavor = "current_thread")]
async fn private_libvirtd_runs_a_domain_and_reports_events() {
    if !support::privileged("private_libvirtd_runs_a_domain_and_reports_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The daemons run as QEMU's user (107): it must reach what is made under here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let user = RunAs::qemu(false);
    // A seed of this test's own, empty: the first libvirtd probes QEMU.
    let seed = dir.path().join("seed");
    let first = dir.path().join("first");
    let name = format!("vmpod-test-{}", std::process::id());
    let Started {
        layout,
        daemons: mut d,
        lv,
        dom,
        events: mut rx,
        seeded,
        took: t_unseeded,
        ..
    } = start_domain(&first, &seed, &name).await;
    assert_eq!(seeded, 0);
    let state = wait_state(&mut rx, DomainState::Pending, |s| s == DomainState::Running).await;
    assert!(dom.is_active().unwrap());
    // The host's libvirt directories were not touched: the domain lives in ours, and
    // QEMU runs as the QEMU user, not root.
    let pid_file = layout.qemu_pid_file(&name);
    let qemu_pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", qemu_pid.trim())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(user.uid.to_string().as_str()),
        "QEMU's uid: {uid_line}"
    );
    assert!(
        !Path::new("/run/libvirt/qemu")
            .join(format!("{name}.pid"))
            .exists()
    );
    // QEMU's own log is where the launcher looks for KVM's last words.
    assert!(
        layout.qemu_log(&name).exists(),
        "{}",
        layout.qemu_log(&name).display()
    );
    dom.pause().unwrap();
    let state = wait_state(&mut rx, state, |s| s == DomainState::Paused).await;
    assert_eq!(paused_reason(lv.conn(), &name), PausedReason::User);
    dom.resume().unwrap();
    let state = wait_state(&mut rx, state, |s| s == DomainState::Running).await;
    dom.destroy().unwrap();
    let state = wait_state(&mut rx, state, DomainState::is_final).await;
    assert_eq!(state, DomainState::Stopped(StopReason::Destroyed));
    // The seed goes where libvirtd keeps its cache: the only capabilities directory in
    // its cache tree is ours, and it holds what libvirtd uses.
    fn dirs_named(root: &Path, name: &str, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(root).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == name) {
                    out.push(p.clone());
                }
                dirs_named(&p, name, out);
            }
        }
    }
    let mut found = Vec::new();
    dirs_named(&layout.dir("cache"), "capabilities", &mut found);
    assert_eq!(found, vec![layout.caps_cache()]);
    let written = daemons::refresh_caps_seed(&layout, &seed).unwrap();
    assert!(written >= 1, "libvirtd cached QEMU's capabilities");
    drop(lv);
    d.stop().await;
    assert!(d.libvirtd.child.try_wait().unwrap().is_some());

    // The next libvirtd, seeded.
    let second = dir.path().join("second");
    let mut next = start_domain(&second, &seed, &name).await;
    let t_seeded = next.took;
    eprintln!("libvirtd start -> domain started: unseeded {t_unseeded:?}, seeded {t_seeded:?}");
    assert_eq!(next.seeded, written, "every seed entry copied in");
    let names = |v: Vec<(String, std::time::SystemTime)>| -> Vec<String> {
        v.into_iter().map(|e| e.0).collect()
    };
    let cache = cache_entries(&next.layout.caps_cache());
    assert_eq!(names(cache.clone()), names(cache_entries(&seed)));
    // Copied in before libvirtd started; a new probe of QEMU would have rewritten them.
    for (entry, modified) in &cache {
        assert!(
            *modified < next.libvirtd_started,
            "{entry} was rewritten after libvirtd started: it probed QEMU again"
        );
    }
    // The pod's copy lacks the flag of libvirt's slow guest CPU check, the seed's has it
    // (QEMU 7.2 has the property); the domain started all the same, and the copy,
    // unchanged by libvirtd, is not written back.
    for (entry, _) in &cache {
        let read = |dir: &Path| std::fs::read_to_string(dir.join(entry)).unwrap();
        assert!(
            read(&seed).contains(daemons::SLOW_CPU_CHECK_FLAG),
            "{entry}"
        );
        assert!(!read(&next.layout.caps_cache()).contains(daemons::SLOW_CPU_CHECK_FLAG));
    }
    assert_eq!(daemons::refresh_caps_seed(&next.layout, &seed).unwrap(), 0);
    assert!(
        t_seeded < t_unseeded,
        "seeded ({t_seeded:?}) is not faster than unseeded ({t_unseeded:?})"
    );
    next.dom.destroy().unwrap();
    drop(next.lv);
    next.daemons.stop().await;
}
