//! The vmpodctl verbs that talk to a launcher, run as the real binary against fake
//! launchers (the real control server) in a temporary local root (`VMPOD_LOCAL_ROOT`).
//! Unprivileged.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};
use vmpod::control::{LauncherStatus, LifecycleAction, Phase, write_status};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Run vmpodctl with `args` under `root`, feeding `stdin`.
async fn vmpodctl(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn_vmpodctl(root, args);
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("vmpodctl {args:?} hung"))
        .unwrap()
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn vm_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fake launcher for local VMI `name` under `root`.
fn launch(root: &Path, name: &str) -> FakeLauncher {
    FakeLauncher::start(&vm_dir(root, name), sample_status(name), sample_network()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lists_live_stale_and_unreadable_vmis() {
    let root = tempfile::tempdir().unwrap();
    let live = launch(root.path(), "alpha");
    // A launcher that died while running: only its status.json is left.
    write_status(&vm_dir(root.path(), "beta"), &sample_status("beta")).unwrap();
    vm_dir(root.path(), "gamma");

    let out = vmpodctl(root.path(), &["get"], b"").await;
    let table = ok(&out);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert_eq!(rows[0], ["NAME", "PHASE", "IP", "ACCEL", "AGE"], "{table}");
    assert_eq!(
        rows[1][..4],
        ["alpha", "Running", "10.22.0.5", "tcg"],
        "{table}"
    );
    assert_eq!(
        rows[2][..5],
        ["beta", "Running", "(stale)", "10.22.0.5", "tcg"],
        "{table}"
    );
    assert_eq!(rows[3], ["gamma", "Unknown", "-", "-", "-"], "{table}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gamma") && stderr.contains("status.json"),
        "{stderr}"
    );

    let json = ok(&vmpodctl(root.path(), &["get", "--json"], b"").await);
    let list: Vec<LauncherStatus> = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    live.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_domain_and_network() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path(), "vm1");
    let fake = FakeLauncher::start(&dir, sample_status("vm1"), sample_network()).unwrap();

    let json = ok(&vmpodctl(root.path(), &["status", "vm1", "--json"], b"").await);
    let status: LauncherStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(status, sample_status_as_served(&fake).await);

    let text = ok(&vmpodctl(root.path(), &["status", "vm1"], b"").await);
    assert!(text.contains("Phase:          Running"), "{text}");
    assert!(text.contains("Acceleration:   tcg"), "{text}");
    assert!(text.contains("control socket"), "{text}");

    // --state-dir reaches the same launcher without the local root.
    let by_dir = ok(&vmpodctl(
        Path::new("/nonexistent"),
        &["status", "--state-dir", dir.to_str().unwrap(), "--json"],
        b"",
    )
    .await);
    assert_eq!(
        serde_json::from_str::<LauncherStatus>(&by_dir)
            .unwrap()
            .name,
        "vm1"
    );

    let xml = ok(&vmpodctl(root.path(), &["domain", "vm1"], b"").await);
    assert!(xml.contains("<name>vm1</name>"), "{xml}");
    let net = ok(&vmpodctl(root.path(), &["network", "vm1"], b"").await);
    assert_eq!(
        serde_json::from_str::<vmpod::control::NetworkReport>(&net).unwrap(),
        vmpod::control::Backend::network(&*fake.backend)
            .await
            .unwrap()
    );

    let err = failed(&vmpodctl(root.path(), &["status", "nope"], b"").await);
    assert!(err.contains("no local VMI named \"nope\""), "{err}");
    let err = failed(&vmpodctl(root.path(), &["status", "../etc"], b"").await);
    assert!(err.contains("not a VMI name"), "{err}");
    fake.stop().await.unwrap();
}

async fn sample_status_as_served(fake: &FakeLauncher) -> LauncherStatus {
    vmpod::control::ControlClient::new(&fake.socket)
        .status()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_verbs_reach_the_launcher() {
    let root = tempfile::tempdir().unwrap();
    let fake = launch(root.path(), "vm1");
    ok(&vmpodctl(root.path(), &["pause", "vm1"], b"").await);
    let err = failed(&vmpodctl(root.path(), &["pause", "vm1"], b"").await);
    assert!(
        err.contains("409") && err.contains("cannot pause a VM in phase Paused"),
        "{err}"
    );
    ok(&vmpodctl(root.path(), &["resume", "vm1"], b"").await);
    let out = vmpodctl(
        root.path(),
        &["stop", "vm1", "--grace-period", "3", "--wait"],
        b"",
    )
    .await;
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("vm1: Succeeded"));
    assert_eq!(
        fake.backend.actions(),
        [
            LifecycleAction::Pause,
            LifecycleAction::Pause,
            LifecycleAction::Resume,
            LifecycleAction::Shutdown {
                grace_period_seconds: Some(3)
            },
        ]
    );
    fake.stop().await.unwrap();

    let fake = FakeLauncher::start(
        &root.path().join("vm1"),
        sample_status("vm1"),
        sample_network(),
    )
    .unwrap();
    ok(&vmpodctl(root.path(), &["stop", "vm1", "--force"], b"").await);
    assert_eq!(fake.backend.actions(), [LifecycleAction::Kill]);
    let err = failed(&vmpodctl(root.path(), &["kill", "vm1"], b"").await);
    assert!(err.contains("cannot kill a VM in phase Succeeded"), "{err}");
    fake.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_log_follow_and_piped_attach() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path(), "vm1");
    std::fs::write(dir.join("console.log"), "Booting\n").unwrap();
    let fake = FakeLauncher::start(&dir, sample_status("vm1"), sample_network()).unwrap();

    // stdin is not a terminal: print the log.
    assert_eq!(
        ok(&vmpodctl(root.path(), &["console", "vm1"], b"").await),
        "Booting\n"
    );

    // --follow keeps printing until the VM stops.
    let mut follow = spawn_vmpodctl(root.path(), &["console", "vm1", "--follow"]);
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"Booting\n").await;
    std::fs::write(dir.join("console.log"), "Booting\nreboot: Power down\n").unwrap();
    read_until(&mut stdout, &mut seen, b"Booting\nreboot: Power down\n").await;
    fake.backend.set_phase(Phase::Succeeded, None);
    read_to_end(&mut stdout, &mut seen).await;
    let out = wait_output(follow, &["console", "--follow"]).await;
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "Booting\nreboot: Power down\n"
    );

    // --attach with piped stdin: the input reaches the serial socket, the answer comes
    // back. Stdin stays open until the answer is out, so no timing decides what is read.
    let serial = UnixListener::bind(dir.join("console.sock")).unwrap();
    let echo = tokio::spawn(async move {
        let (mut s, _) = serial.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        // Held open: vmpodctl must not take the serial side closing as its cue.
        (s, buf[..n].to_vec())
    });
    let mut attach = spawn_vmpodctl(root.path(), &["console", "vm1", "--attach"]);
    let mut input = attach.stdin.take().unwrap();
    input.write_all(b"uname\n").await.unwrap();
    let mut stdout = attach.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"UNAME\n").await;
    let (serial_conn, got) = tokio::time::timeout(TIMEOUT, echo)
        .await
        .expect("the serial socket got nothing")
        .unwrap();
    assert_eq!(got, b"uname\n");
    drop(input); // stdin ends: vmpodctl prints what is left and exits once it is quiet
    read_to_end(&mut stdout, &mut seen).await;
    ok(&wait_output(attach, &["console", "--attach"]).await);
    assert_eq!(String::from_utf8_lossy(&seen), "UNAME\n");
    drop(serial_conn);
    fake.stop().await.unwrap();
}

/// vmpodctl with `args` under `root`, its stdio piped, for a test to drive.
fn spawn_vmpodctl(root: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
        .args(args)
        .env("VMPOD_LOCAL_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Read `from` into `seen` until `seen` ends with `want`; fails after [`TIMEOUT`] or
/// at end of output.
async fn read_until(from: &mut (impl AsyncReadExt + Unpin), seen: &mut Vec<u8>, want: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.ends_with(want) {
        let n = tokio::time::timeout(TIMEOUT, from.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waited {TIMEOUT:?} for {:?}; got {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "output ended before {:?}; got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Read `from` to its end (the process exited) into `seen`; fails after [`TIMEOUT`].
async fn read_to_end(from: &mut (impl AsyncReadExt + Unpin), seen: &mut Vec<u8>) {
    tokio::time::timeout(TIMEOUT, from.read_to_end(seen))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "vmpodctl still writing after {TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(seen)
            )
        })
        .unwrap();
}

/// Wait (bounded) for a spawned vmpodctl to exit.
async fn wait_output(child: tokio::process::Child, args: &[&str]) -> Output {
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("vmpodctl {args:?} hung"))
        .unwrap()
}

/// A pseudo-terminal pair (master, slave), so vmpodctl sees a real terminal on stdin.
fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the pointers; name, termios and winsize may be
    // null. On success we own both fds.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

fn lflag(fd: &std::os::fd::OwnedFd) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the termios on success, which is asserted before reading it.
    unsafe {
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), t.as_mut_ptr()), 0);
        t.assume_init().c_lflag
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_attach_on_a_terminal_detaches_with_ctrl_bracket() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path(), "vm1");
    let serial = UnixListener::bind(dir.join("console.sock")).unwrap();
    let echo = tokio::spawn(async move {
        let (mut s, _) = serial.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return seen; // vmpodctl detached: the proxy closed the serial connection
            }
            seen.extend_from_slice(&buf[..n]);
            s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        }
    });
    let fake = FakeLauncher::start(&dir, sample_status("vm1"), sample_network()).unwrap();

    let (master, slave) = openpty();
    let echo_before = lflag(&master) & libc::ECHO;
    assert_ne!(echo_before, 0, "a fresh pty echoes");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
        .args(["console", "vm1"])
        .env("VMPOD_LOCAL_ROOT", root.path())
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut term = std::fs::File::from(master.try_clone().unwrap());
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let screen = screen.clone();
        move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            // Ends with EIO once the child exits and the last slave fd closes.
            while let Ok(n) = term.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let screen_text = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let mut term = std::fs::File::from(master.try_clone().unwrap());
    // Type only once the terminal is in raw mode (no echo, no line editing).
    wait_for("raw mode on the terminal", || {
        lflag(&master) & (libc::ECHO | libc::ICANON) == 0
    })
    .await;
    use std::io::Write as _;
    term.write_all(b"ls\r").unwrap();
    wait_for("the serial side's answer on the terminal", || {
        screen_text().contains("LS\r")
    })
    .await;
    term.write_all(&[0x1d]).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let seen = tokio::time::timeout(TIMEOUT, echo)
        .await
        .expect("serial still attached")
        .unwrap();
    assert_eq!(
        seen, b"ls\r",
        "raw mode passes CR through; the escape byte is not sent"
    );
    assert_eq!(
        lflag(&master) & libc::ECHO,
        echo_before,
        "terminal mode not restored"
    );
    drop(term);
    drop(master);
    reader.join().unwrap();
    let screen = screen_text();
    assert!(screen.contains("Escape character is ^]"), "{screen:?}");
    assert!(screen.contains("LS\r"), "{screen:?}");
    assert!(screen.contains("[detached from vm1]"), "{screen:?}");
    fake.stop().await.unwrap();
}

/// Poll `cond` until it holds; fails naming `what` after [`TIMEOUT`].
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
