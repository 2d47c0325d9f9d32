//! The console endpoints through the real client and server: the log, the followed log,
//! and the interactive attach over an HTTP Upgrade proxied to a serial socket (a
//! UnixListener standing in for the one libvirt's QEMU binds). Unprivileged.

use http::StatusCode;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};
use vmpod::control::{ClientError, ConsoleFollow, ControlClient, Phase};

const TIMEOUT: Duration = Duration::from_secs(10);

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The next chunk of a followed log (`None`: the stream ended); fails the test when
/// neither comes within [`TIMEOUT`].
async fn next_chunk(follow: &mut ConsoleFollow) -> Option<Result<Vec<u8>, ClientError>> {
    tokio::time::timeout(TIMEOUT, follow.next_chunk())
        .await
        .unwrap_or_else(|_| panic!("no console output and no end of stream within {TIMEOUT:?}"))
        .map(|r| r.map(|b| b.to_vec()))
}

/// A fake serial console: answers every byte it reads uppercased, and greets first.
/// Read as many bytes as `want` has (within [`TIMEOUT`]); they must be `want`.
async fn read_expecting(r: &mut (impl tokio::io::AsyncRead + Unpin), want: &[u8]) {
    let mut buf = vec![0u8; want.len()];
    tokio::time::timeout(TIMEOUT, r.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, want, "{:?}", String::from_utf8_lossy(&buf));
}

fn fake_serial(path: &Path) -> tokio::task::JoinHandle<Vec<u8>> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"login: ").await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return seen;
            }
            seen.extend_from_slice(&buf[..n]);
            s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        }
    })
}

#[tokio::test]
async fn console_log_is_returned_whole_and_empty_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let client = ControlClient::new(&fake.socket);
    assert!(client.console_log().await.unwrap().is_empty());
    append(&dir.path().join("console.log"), "Booting Linux\nlogin: ");
    assert_eq!(
        &client.console_log().await.unwrap()[..],
        b"Booting Linux\nlogin: "
    );
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn follow_streams_new_output_and_ends_when_the_vm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    append(&log, "early line\n");
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let mut follow = ControlClient::new(&fake.socket)
        .console_follow()
        .await
        .unwrap();

    let mut got = Vec::new();
    got.extend_from_slice(&next_chunk(&mut follow).await.unwrap().unwrap());
    assert_eq!(got, b"early line\n");

    append(&log, "late line\n");
    got.extend_from_slice(&next_chunk(&mut follow).await.unwrap().unwrap());
    assert_eq!(got, b"early line\nlate line\n");

    // Output written just before the VM ends is still delivered, then the stream ends.
    append(&log, "reboot: Power down\n");
    fake.backend.set_phase(Phase::Succeeded, None);
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut follow).await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"reboot: Power down\n");
    fake.stop().await.unwrap();
}

/// The launcher's console log (QEMU writes the FIFO, a thread copies it to console.log
/// and rotates it by rename past the cap): a follower gets every byte, the ones written to
/// the old file just before the rename included.
#[tokio::test]
async fn follow_keeps_every_byte_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let console = vmpod::control::ConsoleLog::start(dir.path(), 16, None).unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let mut follow = ControlClient::new(&fake.socket)
        .console_follow()
        .await
        .unwrap();
    let mut qemu = std::fs::OpenOptions::new()
        .append(true)
        .open(console.fifo())
        .unwrap();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    // 10 bytes, then 10 more across the 16-byte cap (6 to the old file, 4 to the new).
    for chunk in [&b"0123456789"[..], b"abcdefghij", b"ABCDEFGHIJ"] {
        qemu.write_all(chunk).unwrap();
        sent.extend_from_slice(chunk);
        while got.len() < sent.len() {
            got.extend_from_slice(&next_chunk(&mut follow).await.unwrap().unwrap());
        }
    }
    assert_eq!(got, sent);
    assert_eq!(
        std::fs::read(dir.path().join("console.log.1")).unwrap(),
        b"0123456789abcdef"
    );
    fake.backend.set_phase(Phase::Succeeded, None);
    while let Some(chunk) = next_chunk(&mut follow).await {
        assert!(chunk.unwrap().is_empty(), "bytes after the end");
    }
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn follow_ends_when_the_launcher_stops() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("console.log"), "x");
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let mut follow = ControlClient::new(&fake.socket)
        .console_follow()
        .await
        .unwrap();
    assert_eq!(&next_chunk(&mut follow).await.unwrap().unwrap()[..], b"x");
    tokio::time::timeout(TIMEOUT, fake.stop())
        .await
        .expect("stop hung")
        .unwrap();
    let end = next_chunk(&mut follow).await;
    assert!(
        end.as_ref().is_none_or(|r| r.is_err()),
        "stream still open: {end:?}"
    );
}

#[tokio::test]
async fn attach_proxies_both_ways_to_the_serial_socket() {
    let dir = tempfile::tempdir().unwrap();
    let serial = fake_serial(&dir.path().join("console.sock"));
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let mut console = ControlClient::new(&fake.socket)
        .console_attach()
        .await
        .unwrap();

    read_expecting(&mut console, b"login: ").await;
    console.write_all(b"root\n").await.unwrap();
    read_expecting(&mut console, b"ROOT\n").await;

    // Closing our side closes the serial connection: the console is free again.
    console.shutdown().await.unwrap();
    drop(console);
    let seen = tokio::time::timeout(TIMEOUT, serial)
        .await
        .expect("serial still held")
        .unwrap();
    assert_eq!(seen, b"root\n");
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn attach_without_a_serial_socket_is_a_500_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let e = ControlClient::new(&fake.socket)
        .console_attach()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR), "{e}");
    assert!(e.to_string().contains("console.sock"), "{e}");
    fake.stop().await.unwrap();
}
