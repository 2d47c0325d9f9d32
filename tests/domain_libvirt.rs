//! The pod's private libvirtd and a real TCG domain through the virt crate.
mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use vmpod::domain::daemons::{self, Daemons, LibvirtLayout, RunAs};
use vmpod::domain::libvirt::paused_reason;
use vmpod::domain::{DomainEvent, DomainState, Libvirt, PausedReason, StopReason};

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

#[tokio::test(flavor = "current_thread")]
async fn private_libvirtd_runs_a_domain_and_reports_events() {
    if !support::privileged("private_libvirtd_runs_a_domain_and_reports_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The daemons run as QEMU's user (107) and QEMU writes the console log here.
    let user = RunAs::qemu(false);
    user.chown(dir.path()).unwrap();
    let layout = LibvirtLayout::new(dir.path());
    daemons::prepare(&layout, &user).unwrap();
    let seed = Path::new(daemons::DEFAULT_CAPS_SEED);
    let seeded = daemons::seed_caps(&layout, seed, &user).unwrap();
    let t0 = Instant::now();
    let mut d = Daemons::start(&layout, user.clone()).await.unwrap();
    let t_up = t0.elapsed();
    let mut lv = Libvirt::connect(&layout.socket()).unwrap();
    let mut rx = lv.subscribe().unwrap();
    let name = format!("vmpod-test-{}", std::process::id());
    let console = dir.path().join("console.log");
    let dom = lv
        .define_and_start(&bare_domain_xml(&name, &console))
        .unwrap();
    let t_run = t0.elapsed();
    eprintln!(
        "daemons up {t_up:?}, domain running {t_run:?} ({seeded} cached capabilities seeded)"
    );
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
    assert!(daemons::refresh_caps_seed(&layout, seed).unwrap() >= 1);
    drop(lv);
    d.stop().await;
    assert!(d.libvirtd.child.try_wait().unwrap().is_some());
}
