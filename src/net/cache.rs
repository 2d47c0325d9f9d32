//! The per-pod network cache: `<state-dir>/net/<iface>.json`, one file per pod
//! interface. Written atomically (temp file, fsync, rename, fsync of the directory)
//! before the first destructive operation, and again after apply with the ops applied.
//! A restarted launcher reads it and never discovers again.
//!
//! The file is the [`InterfaceFacts`] JSON with extra keys (`binding`, `original`,
//! `applied`) beside them, so a reader that wants only the facts can parse it as
//! `InterfaceFacts`.

use super::error::NetError;
use super::facts::{Binding, InterfaceFacts, MacAddr};
use super::plan::{NetOp, OriginalSettings, PlanOptions};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The launcher's default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/run/vmpod";

/// One cached pod interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedInterface {
    #[serde(flatten)]
    pub facts: InterfaceFacts,
    pub binding: Binding,
    pub options: PlanOptions,
    pub original: OriginalSettings,
    /// The ops of the last apply that completed; empty until one did.
    #[serde(default)]
    pub applied: Vec<NetOp>,
    /// The network namespace the facts were discovered in (device and inode of its
    /// nsfs file). A cache from another namespace (the pod sandbox was recreated, e.g.
    /// after a node reboot, and the state directory survived) is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<(u64, u64)>,
}

impl CachedInterface {
    /// The MAC of the VM's NIC: the VMI's `macAddress` when it set one, else the pod's
    /// original MAC (bridge: the VM takes over the pod's identity) or one derived from
    /// it (masquerade: the pod keeps its own). The DHCP server and the domain both take
    /// it from here, so a restarted launcher and `vmpod-launcher dhcp serve` agree with
    /// the first launcher.
    pub fn vm_mac(&self) -> MacAddr {
        super::plan::vm_mac(self.binding, self.facts.mac, self.options.vm_mac)
    }
}

/// The identity of the calling thread's network namespace.
pub fn current_netns_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `<state_dir>/net`
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("net")
}

/// `<state_dir>/net/<iface>.json`
pub fn path(state_dir: &Path, interface: &str) -> PathBuf {
    dir(state_dir).join(format!("{interface}.json"))
}

fn cache_err(path: &Path) -> impl FnOnce(io::Error) -> NetError + '_ {
    move |source| NetError::Cache {
        path: path.to_owned(),
        source,
    }
}

/// Write the entry atomically: readers see the old file or the new one, never a torn one,
/// and after return it survives a crash.
pub fn store(state_dir: &Path, entry: &CachedInterface) -> Result<PathBuf, NetError> {
    let final_path = path(state_dir, &entry.facts.interface);
    let dir = dir(state_dir);
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(cache_err(&dir))?;
    let tmp = dir.join(format!(".{}.json.tmp", entry.facts.interface));
    let json = serde_json::to_vec_pretty(entry).map_err(|source| NetError::CacheFormat {
        path: final_path.clone(),
        source,
    })?;
    let write = || -> io::Result<()> {
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            0o600,
        )
        .open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    write().map_err(cache_err(&tmp))?;
    fs::rename(&tmp, &final_path).map_err(cache_err(&final_path))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(cache_err(&dir))?;
    Ok(final_path)
}

/// The cached entry of `interface`, or `None` when there is none.
pub fn load(state_dir: &Path, interface: &str) -> Result<Option<CachedInterface>, NetError> {
    read(&path(state_dir, interface))
}

fn read(p: &Path) -> Result<Option<CachedInterface>, NetError> {
    match fs::read(p) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| NetError::CacheFormat {
                    path: p.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(cache_err(p)(e)),
    }
}

/// Every cached interface, sorted by interface name.
pub fn load_all(state_dir: &Path) -> Result<Vec<CachedInterface>, NetError> {
    let dir = dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cache_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let p = entry.map_err(cache_err(&dir))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".json") && !name.starts_with('.') {
            out.extend(read(&p)?);
        }
    }
    out.sort_by(|a, b| a.facts.interface.cmp(&b.facts.interface));
    Ok(out)
}

/// Forget `interface` (after a teardown). Missing is fine.
pub fn remove(state_dir: &Path, interface: &str) -> Result<(), NetError> {
    let p = path(state_dir, interface);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(cache_err(&p)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::IpCidr;

    fn entry(iface: &str) -> CachedInterface {
        CachedInterface {
            facts: InterfaceFacts {
                interface: iface.into(),
                mac: "02:00:00:00:00:05".parse().unwrap(),
                mtu: 1500,
                addresses: vec![IpCidr::new("10.0.0.5".parse().unwrap(), 24)],
                routes: vec![],
                dns: vec![],
                search: vec![],
                hostname: "h".into(),
            },
            binding: Binding::Bridge,
            options: PlanOptions::default(),
            original: OriginalSettings::default(),
            applied: vec![NetOp::SetUp { link: iface.into() }],
            netns_id: Some((4, 4026531840)),
        }
    }

    #[test]
    fn store_load_round_trip_and_facts_only_readers() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "eth0").unwrap(), None);
        let e = entry("eth0");
        let p = store(d.path(), &e).unwrap();
        assert_eq!(p, d.path().join("net/eth0.json"));
        assert_eq!(load(d.path(), "eth0").unwrap(), Some(e.clone()));
        // Readers that only want the facts parse the same file.
        let facts: InterfaceFacts = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(facts, e.facts);
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["eth0.json"]);
        store(d.path(), &entry("net1")).unwrap();
        let all: Vec<String> = load_all(d.path())
            .unwrap()
            .into_iter()
            .map(|e| e.facts.interface)
            .collect();
        assert_eq!(all, vec!["eth0", "net1"]);
        remove(d.path(), "eth0").unwrap();
        remove(d.path(), "eth0").unwrap();
        assert_eq!(load(d.path(), "eth0").unwrap(), None);
    }

    #[test]
    fn a_corrupt_cache_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir(d.path())).unwrap();
        fs::write(path(d.path(), "eth0"), "{not json").unwrap();
        let e = load(d.path(), "eth0").unwrap_err().to_string();
        assert!(e.contains("net/eth0.json is not valid"), "{e}");
    }
}
