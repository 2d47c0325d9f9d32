//! The kubelet side of the device plugin API, for tests: a `Registration` server on
//! `<dir>/kubelet.sock` and, like kubelet's device manager, on each registration it dials
//! the plugin's endpoint, reads its options and follows its `ListAndWatch`; [`TestKubelet::allocate`]
//! picks healthy devices of a resource and asks the plugin's `Allocate` for them.
//! [`NodeDevicePlugins`] is that kubelet with the real plugins, as the kubelet-shaped
//! runner's device manager.

use super::api::device_plugin_client::DevicePluginClient;
use super::api::registration_server::{Registration, RegistrationServer};
use super::*;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;

/// What kubelet knows of one registered resource.
#[derive(Clone, Debug, Default)]
pub struct Plugin {
    /// The socket it registered, relative to the directory.
    pub endpoint: String,
    /// Device ID -> health, from its last ListAndWatch message.
    pub devices: BTreeMap<String, String>,
    /// Devices given to containers (never given back: a test node runs a few pods).
    pub in_use: std::collections::BTreeSet<String>,
}

impl Plugin {
    /// Healthy devices no container holds.
    fn free(&self) -> impl Iterator<Item = &String> {
        self.devices
            .iter()
            .filter(|(id, h)| *h == HEALTHY && !self.in_use.contains(*id))
            .map(|(id, _)| id)
    }
}

type Plugins = Arc<Mutex<BTreeMap<String, Plugin>>>;

struct Registrar {
    dir: PathBuf,
    registrations: mpsc::UnboundedSender<api::RegisterRequest>,
    plugins: Plugins,
    changed: watch::Sender<u64>,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(
        &self,
        request: Request<api::RegisterRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        let r = request.into_inner();
        if r.version != API_VERSION {
            return Err(Status::invalid_argument(format!(
                "version {:?}: this kubelet speaks {API_VERSION}",
                r.version
            )));
        }
        self.plugins.lock().unwrap().insert(
            r.resource_name.clone(),
            Plugin {
                endpoint: r.endpoint.clone(),
                ..Plugin::default()
            },
        );
        tokio::spawn(follow(
            self.dir.join(&r.endpoint),
            r.resource_name.clone(),
            self.plugins.clone(),
            self.changed.clone(),
        ));
        let _ = self.registrations.send(r);
        Ok(Response::new(api::Empty {}))
    }
}

/// Follow a plugin's ListAndWatch into `plugins` until the stream ends.
async fn follow(socket: PathBuf, resource: String, plugins: Plugins, changed: watch::Sender<u64>) {
    let Ok(channel) = unix_channel(&socket).await else {
        return;
    };
    let mut client = DevicePluginClient::new(channel);
    let Ok(stream) = client.list_and_watch(api::Empty {}).await else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Some(Ok(list)) = stream.next().await {
        if let Some(p) = plugins.lock().unwrap().get_mut(&resource) {
            p.devices = list.devices.into_iter().map(|d| (d.id, d.health)).collect();
        }
        changed.send_modify(|n| *n += 1);
    }
}

/// A kubelet's device manager on `<dir>/kubelet.sock`.
pub struct TestKubelet {
    dir: PathBuf,
    registrations: mpsc::UnboundedReceiver<api::RegisterRequest>,
    plugins: Plugins,
    changed: watch::Receiver<u64>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestKubelet {
    /// Serve `<dir>/kubelet.sock`.
    pub fn start(dir: &Path) -> TestKubelet {
        let listener = UnixListener::bind(dir.join(KUBELET_SOCKET)).expect("bind kubelet.sock");
        let (tx, registrations) = mpsc::unbounded_channel();
        let (changed_tx, changed) = watch::channel(0);
        let plugins = Plugins::default();
        let registrar = Registrar {
            dir: dir.to_path_buf(),
            registrations: tx,
            plugins: plugins.clone(),
            changed: changed_tx,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .add_service(RegistrationServer::new(registrar))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        TestKubelet {
            dir: dir.to_path_buf(),
            registrations,
            plugins,
            changed,
            stop,
            server,
        }
    }

    /// The next registration, within `wait`.
    pub async fn next_registration(&mut self, wait: Duration) -> api::RegisterRequest {
        tokio::time::timeout(wait, self.registrations.recv())
            .await
            .unwrap_or_else(|_| panic!("a registration within {wait:?}"))
            .expect("the kubelet is running")
    }

    /// What kubelet last heard from `resource`'s plugin, once `ready` holds for it (within
    /// `wait`).
    pub async fn plugin_when(
        &mut self,
        resource: &str,
        wait: Duration,
        ready: impl Fn(&Plugin) -> bool,
    ) -> Plugin {
        let plugins = self.plugins.clone();
        let seen = tokio::time::timeout(
            wait,
            self.changed
                .wait_for(|_| plugins.lock().unwrap().get(resource).is_some_and(&ready)),
        )
        .await;
        let now = plugins.lock().unwrap().get(resource).cloned();
        assert!(
            seen.is_ok_and(|r| r.is_ok()),
            "{resource} not as expected within {wait:?}: {now:?}"
        );
        now.expect("registered")
    }

    /// Free healthy devices per registered resource.
    pub fn allocatable(&self) -> BTreeMap<String, u64> {
        let plugins = self.plugins.lock().unwrap();
        plugins
            .iter()
            .map(|(r, p)| (r.clone(), p.free().count() as u64))
            .collect()
    }

    /// Allocate `count` free healthy devices of `resource` to one container, as kubelet
    /// does before creating it: the plugin's answer for that container.
    pub async fn allocate(
        &self,
        resource: &str,
        count: usize,
    ) -> Result<api::ContainerAllocateResponse, String> {
        let (endpoint, ids) = {
            let mut plugins = self.plugins.lock().unwrap();
            let p = plugins
                .get_mut(resource)
                .ok_or_else(|| format!("{resource}: no plugin registered"))?;
            let free: Vec<String> = p.free().take(count).cloned().collect();
            if free.len() < count {
                return Err(format!(
                    "{resource}: {} free healthy devices, {count} wanted",
                    free.len()
                ));
            }
            p.in_use.extend(free.iter().cloned());
            (p.endpoint.clone(), free)
        };
        let socket = self.dir.join(endpoint);
        let channel = unix_channel(&socket)
            .await
            .map_err(|e| format!("{resource}: connect {}: {e}", socket.display()))?;
        let request = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
        };
        let mut answer = DevicePluginClient::new(channel)
            .allocate(request)
            .await
            .map_err(|s| format!("{resource}: Allocate: {}", s.message()))?
            .into_inner();
        if answer.container_responses.len() != 1 {
            return Err(format!(
                "{resource}: Allocate answered {} containers for 1",
                answer.container_responses.len()
            ));
        }
        Ok(answer.container_responses.remove(0))
    }

    /// Stop serving and remove kubelet.sock.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
        std::fs::remove_file(self.dir.join(KUBELET_SOCKET)).unwrap();
    }

    /// Restart as kubelet does: stop, remove every socket in the directory, serve anew.
    pub async fn restart(self) -> TestKubelet {
        let dir = self.dir.clone();
        self.stop().await;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
            {
                std::fs::remove_file(&path).unwrap();
            }
        }
        TestKubelet::start(&dir)
    }
}

/// The device plugins of `vmpod-handler node` for `devices` (the real paths), serving a
/// temp device-plugins directory, and a [`TestKubelet`] following them: the kubelet-shaped
/// runner's device manager. Its own runtime runs both, so the runner (synchronous) can ask.
pub struct NodeDevicePlugins {
    kubelet: TestKubelet,
    stop: watch::Sender<bool>,
    plugins: Option<JoinHandle<()>>,
    /// (resource, count) of each Allocate, in order.
    pub allocations: Mutex<Vec<(String, u64)>>,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl NodeDevicePlugins {
    /// Start the plugins and the kubelet; return once kubelet has every resource's list.
    pub fn start(devices: Vec<NodeDevice>) -> NodeDevicePlugins {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = PluginConfig {
            dir: dir.path().to_path_buf(),
            poll: Duration::from_millis(200),
        };
        let (stop, stopped) = watch::channel(false);
        let (kubelet, plugins) = rt.block_on(async {
            let mut kubelet = TestKubelet::start(dir.path());
            let plugins = tokio::spawn(run(config, devices.clone(), stopped));
            for d in &devices {
                let slots = d.slots as usize;
                kubelet
                    .plugin_when(&d.resource, Duration::from_secs(10), |p| {
                        p.devices.len() == slots
                    })
                    .await;
            }
            (kubelet, plugins)
        });
        NodeDevicePlugins {
            kubelet,
            stop,
            plugins: Some(plugins),
            allocations: Mutex::default(),
            _dir: dir,
            rt,
        }
    }
}

impl crate::test_runner::DeviceManager for NodeDevicePlugins {
    fn allocatable(&self) -> BTreeMap<String, u64> {
        self.kubelet.allocatable()
    }

    fn allocate(
        &self,
        resource: &str,
        count: u64,
    ) -> anyhow::Result<Vec<crate::test_runner::DeviceGrant>> {
        self.allocations
            .lock()
            .unwrap()
            .push((resource.to_string(), count));
        let wanted = usize::try_from(count)?;
        let answer = self
            .rt
            .block_on(self.kubelet.allocate(resource, wanted))
            .map_err(anyhow::Error::msg)?;
        Ok(answer
            .devices
            .into_iter()
            .map(|d| crate::test_runner::DeviceGrant {
                host_path: d.host_path,
                container_path: d.container_path,
                permissions: d.permissions,
            })
            .collect())
    }
}

impl Drop for NodeDevicePlugins {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(plugins) = self.plugins.take() {
            let _ = self.rt.block_on(plugins);
        }
    }
}
