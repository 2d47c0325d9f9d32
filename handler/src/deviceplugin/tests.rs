//! The device plugin against a test kubelet ([`TestKubelet`]: a real `Registration` gRPC
//! server on `kubelet.sock` in a temp directory that follows the plugins as kubelet does),
//! and real character devices made with mknod there (root; `1:3` is /dev/null's device,
//! which opens; `0:0` exists but does not).

use super::api::device_plugin_client::DevicePluginClient;
use super::test_kubelet::TestKubelet;
use super::*;
use crate::support::privileged;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tokio_stream::StreamExt;
use tonic::Streaming;

/// How long anything the tests wait for may take.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Make a character device `major:minor` at `path`.
fn char_device(path: &Path, major: u64, minor: u64) {
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// A plugin directory with devices under `<dir>/dev/` and the plugins for them running.
struct Node {
    dir: tempfile::TempDir,
    devices: Vec<NodeDevice>,
    stop: watch::Sender<bool>,
    plugins: JoinHandle<()>,
}

impl Node {
    /// Plugins for `names` (`vmpod.io/<name>` at `<dir>/dev/<name>`), `slots` each; the
    /// device nodes (1:3, which opens) made first when `present`.
    fn start(names: &[&str], slots: u32, present: bool) -> Node {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("vmpod_handler=debug")
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        let devices: Vec<NodeDevice> = names
            .iter()
            .map(|n| NodeDevice {
                resource: format!("vmpod.io/{n}"),
                path: dir.path().join("dev").join(n),
                slots,
            })
            .collect();
        for d in devices.iter().filter(|_| present) {
            char_device(&d.path, 1, 3);
        }
        let (stop, stopped) = watch::channel(false);
        let config = PluginConfig {
            dir: dir.path().to_path_buf(),
            poll: POLL,
        };
        let plugins = tokio::spawn(run(config, devices.clone(), stopped));
        Node {
            dir,
            devices,
            stop,
            plugins,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn client(&self, endpoint: &str) -> DevicePluginClient<tonic::transport::Channel> {
        let socket = self.path().join(endpoint);
        let channel = unix_channel(&socket)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        DevicePluginClient::new(channel)
    }

    /// Stop the plugins; they must be done within [`WAIT`].
    async fn stop(self) -> tempfile::TempDir {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.plugins)
            .await
            .expect("the plugins stop within 10 s")
            .unwrap();
        self.dir
    }
}

/// The health of every device in the next ListAndWatch message.
async fn next_health(stream: &mut Streaming<api::ListAndWatchResponse>) -> Vec<(String, String)> {
    let list = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a device list within 10 s")
        .expect("the stream goes on")
        .expect("a device list, not an error");
    list.devices.into_iter().map(|d| (d.id, d.health)).collect()
}

fn all(ids: &[&str], health: &str) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| (id.to_string(), health.to_string()))
        .collect()
}

#[test]
fn device_ids_are_the_resources_slots() {
    let kvm = &node_devices(3)[0];
    assert_eq!(kvm.resource, "vmpod.io/kvm");
    assert_eq!(kvm.endpoint(), "vmpod-kvm.sock");
    assert_eq!(
        kvm.device_ids().collect::<Vec<_>>(),
        ["kvm-0", "kvm-1", "kvm-2"]
    );
    assert!(kvm.owns("kvm-2"));
    for other in ["kvm-3", "kvm-01", "kvm-", "tun-0", "kvm0", "kvm--1"] {
        assert!(!kvm.owns(other), "{other}");
    }
    let vhost = &node_devices(1)[2];
    assert_eq!(vhost.endpoint(), "vmpod-vhost-net.sock");
    assert_eq!(vhost.device_ids().collect::<Vec<_>>(), ["vhost-net-0"]);
}

#[test]
fn a_device_is_healthy_when_a_char_device_opens() {
    if !privileged("a_device_is_healthy_when_a_char_device_opens") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert!(probe(&missing).unwrap_err().contains("No such file"));
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(probe(&file).unwrap_err().contains("not a character device"));
    let unbacked = dir.path().join("unbacked");
    char_device(&unbacked, 0, 0);
    assert!(probe(&unbacked).unwrap_err().contains("open read-write"));
    let null = dir.path().join("null");
    char_device(&null, 1, 3);
    probe(&null).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_each_resource_and_allocates_its_device() {
    if !privileged("registers_each_resource_and_allocates_its_device") {
        return;
    }
    let node = Node::start(&["kvm", "tun"], 3, true);
    let mut kubelet = TestKubelet::start(node.path());
    let mut registered = [
        kubelet.next_registration(WAIT).await,
        kubelet.next_registration(WAIT).await,
    ];
    registered.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    for (r, name) in registered.iter().zip(["kvm", "tun"]) {
        assert_eq!(r.version, "v1beta1");
        assert_eq!(r.resource_name, format!("vmpod.io/{name}"));
        assert_eq!(r.endpoint, format!("vmpod-{name}.sock"));
        assert_eq!(
            r.options,
            Some(api::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: false,
            })
        );
    }

    let mut kvm = node.client("vmpod-kvm.sock").await;
    let options = kvm.get_device_plugin_options(api::Empty {}).await.unwrap();
    assert!(!options.get_ref().pre_start_required);
    let mut watch = kvm
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_health(&mut watch).await,
        all(&["kvm-0", "kvm-1", "kvm-2"], HEALTHY)
    );

    let kvm_path = node.devices[0].path.to_str().unwrap().to_string();
    let request = |ids: &[&[&str]]| api::AllocateRequest {
        container_requests: ids
            .iter()
            .map(|c| api::ContainerAllocateRequest {
                devices_ids: c.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    };
    let answer = kvm
        .allocate(request(&[&["kvm-0"], &["kvm-1", "kvm-2"]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.container_responses.len(), 2, "one per container");
    for c in &answer.container_responses {
        assert_eq!(
            c.devices,
            [api::DeviceSpec {
                container_path: kvm_path.clone(),
                host_path: kvm_path.clone(),
                permissions: "rw".into(),
            }]
        );
        assert!(c.mounts.is_empty() && c.envs.is_empty());
    }
    let refused = kvm
        .allocate(request(&[&["kvm-0"], &["tun-0"]]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("container_requests[1]") && refused.message().contains("tun-0"),
        "{}",
        refused.message()
    );
    let mut tun = node.client("vmpod-tun.sock").await;
    let answer = tun
        .allocate(request(&[&["tun-2"]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.container_responses[0].devices[0].host_path,
        node.devices[1].path.to_str().unwrap()
    );
    let pre_start = api::PreStartContainerRequest {
        devices_ids: vec!["tun-2".into()],
    };
    tun.pre_start_container(pre_start).await.unwrap();

    // The kubelet followed both plugins' ListAndWatch and allocates from what it heard.
    let heard = kubelet
        .plugin_when("vmpod.io/tun", WAIT, |p| p.devices.len() == 3)
        .await;
    assert_eq!(
        heard.devices.into_iter().collect::<Vec<_>>(),
        all(&["tun-0", "tun-1", "tun-2"], HEALTHY)
    );
    let spec = kubelet.allocate("vmpod.io/kvm", 1).await.unwrap();
    assert_eq!(spec.devices[0].host_path, kvm_path);
    assert_eq!(kubelet.allocatable()["vmpod.io/kvm"], 2, "kvm-0 is in use");
    let more = kubelet.allocate("vmpod.io/kvm", 3).await.unwrap_err();
    assert!(more.contains("2 free healthy devices, 3 wanted"), "{more}");

    // A clean stop ends the open stream and removes both sockets.
    let dir = node.stop().await;
    let end = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the stream ends");
    assert!(
        end.as_ref().is_none_or(|r| r.is_err()),
        "no more device lists after the stop: {end:?}"
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["dev", "kubelet.sock"]);
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_watch_follows_the_device() {
    if !privileged("list_and_watch_follows_the_device") {
        return;
    }
    let node = Node::start(&["kvm"], 2, false);
    let mut kubelet = TestKubelet::start(node.path());
    kubelet.next_registration(WAIT).await;
    let mut client = node.client("vmpod-kvm.sock").await;
    let mut watch = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    let ids = ["kvm-0", "kvm-1"];
    assert_eq!(
        next_health(&mut watch).await,
        all(&ids, UNHEALTHY),
        "no device yet"
    );
    let path = &node.devices[0].path;
    char_device(path, 1, 3);
    assert_eq!(
        next_health(&mut watch).await,
        all(&ids, HEALTHY),
        "it appeared"
    );
    std::fs::remove_file(path).unwrap();
    assert_eq!(
        next_health(&mut watch).await,
        all(&ids, UNHEALTHY),
        "it went"
    );
    // A node that does not open is no better than none: no list for it (a list now
    // would be Unhealthy and fail the next assertion).
    char_device(path, 0, 0);
    tokio::time::sleep(POLL * 4).await; // the plugin polls it a few times
    std::fs::remove_file(path).unwrap();
    char_device(path, 1, 3);
    assert_eq!(
        next_health(&mut watch).await,
        all(&ids, HEALTHY),
        "it opens again"
    );
    let _dir = node.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_when_kubelet_restarts() {
    if !privileged("registers_again_when_kubelet_restarts") {
        return;
    }
    // The plugin starts first and waits for kubelet.
    let node = Node::start(&["tun"], 1, true);
    let mut kubelet = TestKubelet::start(node.path());
    assert_eq!(
        kubelet.next_registration(WAIT).await.endpoint,
        "vmpod-tun.sock"
    );

    // Kubelet restarts: all sockets removed, a new kubelet.sock.
    kubelet = kubelet.restart().await;
    let again = kubelet.next_registration(WAIT).await;
    assert_eq!(
        (again.resource_name.as_str(), again.endpoint.as_str()),
        ("vmpod.io/tun", "vmpod-tun.sock")
    );
    let mut client = node.client("vmpod-tun.sock").await;
    let mut watch = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_health(&mut watch).await, all(&["tun-0"], HEALTHY));
    kubelet
        .plugin_when("vmpod.io/tun", WAIT, |p| p.devices.len() == 1)
        .await;
    kubelet.allocate("vmpod.io/tun", 1).await.unwrap();

    // A new kubelet.sock alone (our socket untouched) is a new kubelet too.
    let dir = node.path().to_path_buf();
    kubelet.stop().await;
    let mut kubelet = TestKubelet::start(&dir);
    kubelet.next_registration(WAIT).await;
    let _dir = node.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_this_hosts_devices() {
    if !privileged("serves_this_hosts_devices") {
        return;
    }
    // The real device paths (node_devices), a temp device-plugins directory.
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let config = PluginConfig {
        dir: dir.path().to_path_buf(),
        poll: POLL,
    };
    let plugins = tokio::spawn(run(config, node_devices(2), stopped));
    let mut kubelet = TestKubelet::start(dir.path());
    for d in node_devices(2) {
        let heard = kubelet
            .plugin_when(&d.resource, WAIT, |p| p.devices.len() == 2)
            .await;
        let healthy = heard.devices.values().all(|h| h == HEALTHY);
        eprintln!(
            "{} ({}): {}",
            d.resource,
            d.path.display(),
            if healthy { HEALTHY } else { UNHEALTHY }
        );
        assert_eq!(healthy, probe(&d.path).is_ok(), "{}", d.resource);
    }
    // Every Debian host with root has /dev/net/tun.
    let tun = kubelet.allocate(TUN_RESOURCE, 1).await.unwrap();
    assert_eq!(
        tun.devices,
        [api::DeviceSpec {
            container_path: "/dev/net/tun".into(),
            host_path: "/dev/net/tun".into(),
            permissions: "rw".into(),
        }]
    );
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, plugins).await.unwrap().unwrap();
    kubelet.stop().await;
}
