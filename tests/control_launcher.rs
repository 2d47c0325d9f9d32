//! The control API of the real launcher (privileged): the test guest boots in a pod
//! sandbox through the launcher's own libvirtd; pause and resume go through libvirt and
//! show in `/v1/status`; an attached console (HTTP Upgrade proxied to QEMU's serial
//! socket) and a followed console log both see the guest's power-off lines after
//! `POST /v1/shutdown`; the followed log ends when the VM does.
mod support;

use std::time::Duration;
use support::launcher::{Launcher, testguest_vmi};
use tokio::io::AsyncReadExt;
use vmpod::control::{ControlClient, PauseReason, Phase};

const BOOT: Duration = Duration::from_secs(150);
const STEP: Duration = Duration::from_secs(20);

/// Poll `/v1/status` until the phase is `want`.
async fn wait_phase(client: &ControlClient, want: Phase) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let phase = client.status().await.unwrap().phase;
        if phase == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase {phase}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn real_launcher_pause_resume_console_attach_follow_and_shutdown() {
    if !support::privileged("real_launcher_pause_resume_console_attach_follow_and_shutdown") {
        return;
    }
    let (sb, _dir, state) = support::pod_and_state_dir("ctlboot", 78);
    let mut l = Launcher::start(&sb, &state, &testguest_vmi("ctlboot", "", true, 30), &[]);
    l.wait_report(BOOT, |r| r.holding);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ControlClient::new(state.join("control.sock"));
    let (attached, followed) = rt.block_on(async {
        wait_phase(&client, Phase::Running).await;
        let log = client.console_log().await.unwrap();
        assert!(String::from_utf8_lossy(&log).contains("VMPOD-HOLD"));

        client.pause().await.unwrap();
        wait_phase(&client, Phase::Paused).await;
        let paused = client.status().await.unwrap();
        assert_eq!(paused.pause_reason, Some(PauseReason::User), "{paused:?}");
        let e = client.pause().await.unwrap_err();
        assert_eq!(e.status(), Some(http::StatusCode::CONFLICT), "{e}");
        client.resume().await.unwrap();
        wait_phase(&client, Phase::Running).await;
        assert_eq!(client.status().await.unwrap().pause_reason, None);

        let mut console = client.console_attach().await.unwrap();
        let mut follow = client.console_follow().await.unwrap();
        client.shutdown(None).await.unwrap();

        // The attached console sees the guest's last words live from QEMU's socket.
        let attached = tokio::time::timeout(STEP * 3, async {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("VMPOD-POWEROFF") {
                match console.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&seen).into_owned()
        })
        .await
        .expect("attached console saw no power-off");

        // The followed log has everything and ends once the VM is down.
        let followed = tokio::time::timeout(STEP * 3, async {
            let mut all = Vec::new();
            while let Some(Ok(chunk)) = follow.next_chunk().await {
                all.extend_from_slice(&chunk);
            }
            String::from_utf8_lossy(&all).into_owned()
        })
        .await
        .expect("followed console did not end after the VM stopped");
        (attached, followed)
    });
    assert!(attached.contains("VMPOD-POWER-BUTTON"), "{attached}");
    assert!(attached.contains("VMPOD-POWEROFF"), "{attached}");
    assert!(followed.contains("VMPOD-BOOT"), "{followed}");
    assert!(followed.contains("VMPOD-POWEROFF"), "{followed}");

    let st = l.wait_exit(STEP * 2);
    assert!(st.success(), "launcher exit {st}\n{}", l.log());
    let status = vmpod::control::read_status(&state).unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
}
