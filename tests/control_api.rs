//! The control API end to end: the real server with a fake backend on a temp unix
//! socket, every endpoint through the real client, error codes, socket permissions and
//! the status.json fallback. Unprivileged.

use http::StatusCode;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmpod::control::fake::{FakeLauncher, sample_network, sample_status};
use vmpod::control::{
    Backend, ClientError, ControlClient, ControlServer, ErrorBody, LifecycleAction, Phase,
    StatusSource, status_of, write_status,
};

/// Send raw HTTP/1.1 text and return (status, headers+body text).
async fn raw(socket: &Path, request: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn every_endpoint_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let client = ControlClient::new(&fake.socket);

    let status = client.status().await.unwrap();
    assert_eq!(status.name, "vm1");
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.first_ip(), Some("10.22.0.5".parse().unwrap()));
    assert!(status.running_at.is_some());

    let net = client.network().await.unwrap();
    assert_eq!(net, fake.backend.network().await.unwrap());
    assert_eq!(
        net.interfaces[0].facts,
        sample_network().interfaces[0].facts
    );

    let xml = client.domain_xml().await.unwrap();
    assert!(xml.contains("<name>vm1</name>"), "{xml}");

    client.pause().await.unwrap();
    assert_eq!(client.status().await.unwrap().phase, Phase::Paused);
    client.resume().await.unwrap();
    assert_eq!(client.status().await.unwrap().phase, Phase::Running);
    client.shutdown(Some(5)).await.unwrap();
    let after = client.status().await.unwrap();
    assert_eq!(after.phase, Phase::Succeeded);
    assert!(after.finished_at.is_some());

    // A terminal VM refuses further actions with 409 and says why.
    let e = client.kill().await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT), "{e}");
    assert!(
        e.to_string()
            .contains("cannot kill a VM in phase Succeeded"),
        "{e}"
    );

    assert_eq!(
        fake.backend.actions(),
        [
            LifecycleAction::Pause,
            LifecycleAction::Resume,
            LifecycleAction::Shutdown {
                grace_period_seconds: Some(5)
            },
            LifecycleAction::Kill,
        ]
    );
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn error_codes_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let sock = fake.socket.clone();

    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (code, resp) = raw(&sock, &get("/v1/nope")).await;
    assert_eq!(code, 404, "{resp}");
    let err: ErrorBody = serde_json::from_str(body_of(&resp)).unwrap();
    assert!(err.error.contains("/v1/nope"), "{err:?}");

    let (code, resp) = raw(&sock, &get("/v1/kill")).await;
    assert_eq!(code, 405, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("allow: post"), "{resp}");
    serde_json::from_str::<ErrorBody>(body_of(&resp)).unwrap();

    let bad = "POST /v1/shutdown HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 9\r\n\r\n{\"grace\":";
    let (code, resp) = raw(&sock, bad).await;
    assert_eq!(code, 400, "{resp}");
    let err: ErrorBody = serde_json::from_str(body_of(&resp)).unwrap();
    assert!(err.error.contains("/v1/shutdown"), "{err:?}");

    let (code, resp) = raw(&sock, &get("/v1/status?x=1")).await;
    assert_eq!(code, 400, "{resp}");

    // Backend failures are 500 with the backend's message, through the client too.
    fake.backend.fail_with(Some("libvirt: domain vanished"));
    let client = ControlClient::new(&sock);
    let e = client.status().await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(e.to_string().contains("libvirt: domain vanished"), "{e}");
    let e = client.pause().await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    fake.backend.fail_with(None);
    client.pause().await.unwrap();
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn socket_is_0600_replaces_a_stale_one_and_is_removed_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    // A stale socket from a dead launcher.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    ControlClient::new(&path).status().await.unwrap();
    fake.stop().await.unwrap();
    assert!(!path.exists(), "socket left behind after stop");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn bind_fails_naming_the_socket() {
    let e = ControlServer::bind(Path::new("/nonexistent-dir/control.sock")).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent-dir/control.sock"),
        "{e}"
    );
}

#[tokio::test]
async fn client_errors_name_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let e = ControlClient::new(&sock).status().await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
}

#[tokio::test]
async fn status_of_prefers_the_socket_and_falls_back_to_status_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = sample_status("vm1");
    written.set_phase(Phase::Paused, Some("written before exit".into()));
    write_status(dir.path(), &written).unwrap();

    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let (live, source) = status_of(dir.path(), Duration::from_secs(2)).await.unwrap();
    assert_eq!((live.phase, source), (Phase::Running, StatusSource::Socket));
    fake.stop().await.unwrap();

    let (file, source) = status_of(dir.path(), Duration::from_secs(2)).await.unwrap();
    assert_eq!((file.phase, source), (Phase::Paused, StatusSource::File));
    assert_eq!(file.reason.as_deref(), Some("written before exit"));

    std::fs::remove_file(dir.path().join("status.json")).unwrap();
    let e = status_of(dir.path(), Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("control.sock") && e.contains("status.json"),
        "{e}"
    );
}

#[tokio::test]
async fn many_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    // 8 connections stay open with half a request each: a server that served one
    // connection at a time would wait on the first of them forever. With the 24 calls
    // below they stay within the server's cap of 32 connections at once.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::UnixStream::connect(&fake.socket).await.unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let client = ControlClient::new(&fake.socket);
    // All 24 calls in flight at once, not one after the other.
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.status().await })
        })
        .collect();
    let answers = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("24 concurrent status calls not all answered within 30 s");
    for a in answers {
        assert_eq!(a.unwrap().unwrap().name, "vm1");
    }
    // The stalled connections are still served once their requests are complete.
    for mut s in stalled {
        s.write_all(b"Connection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("a stalled connection was never answered")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn a_status_long_poll_is_answered_at_the_change_and_304_when_none_came() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLauncher::start(dir.path(), sample_status("vm1"), sample_network()).unwrap();
    let client = ControlClient::new(&fake.socket);

    // Every answer carries its version; without one to compare, at once.
    let (status, version) = client
        .status_change(None, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an answer without If-None-Match");
    assert_eq!(status.phase, Phase::Running);
    let version = version.expect("an ETag");

    // Unchanged: held for the wait, then 304 (the client's None).
    let asked = std::time::Instant::now();
    let held = client
        .status_change(Some(version), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(held.is_none(), "{held:?}");
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A change during the wait is answered as it happens, with a new version.
    let poll = tokio::spawn({
        let client = client.clone();
        async move {
            let asked = std::time::Instant::now();
            let got = client
                .status_change(Some(version), Duration::from_secs(30))
                .await;
            (got, asked.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "answered before the status changed");
    fake.backend.set_phase(Phase::Paused, Some("test"));
    let (got, took) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the change ends the long poll")
        .unwrap();
    let (status, next) = got.unwrap().expect("the changed status");
    assert_eq!(status.phase, Phase::Paused);
    assert!(
        next.is_some_and(|n| n != version),
        "{next:?} after {version}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An older version is answered at once; so is a lifecycle change's.
    let stale = client
        .status_change(Some(version), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stale.map(|(s, _)| s.phase), Some(Phase::Paused));

    // On the wire: the ETag, 304 with it, and a bad If-None-Match refused.
    let tag = next.unwrap();
    let (code, text) = raw(
        &fake.socket,
        &format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{tag}\"\r\nPrefer: wait=0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 304, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("etag: \"{tag}\"")),
        "{text}"
    );
    let (code, text) = raw(
        &fake.socket,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nIf-None-Match: soon\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(body_of(&text).contains("If-None-Match"), "{text}");
    fake.stop().await.unwrap();
}
