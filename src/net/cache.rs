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
use crate::file::{Durability, write_atomic};
use crate::statedir::StateDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
    /// Why the VM gets no IPv6 in a pod that has it, decided at discovery: with the
    /// masquerade binding, IPv6 forwarding is off and cannot be written (see
    /// [`super::masquerade::ipv6_off`]). `None`: the VM gets the pod's IPv6 side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_off: Option<String>,
}

impl CachedInterface {
    /// The MAC of the VM's NIC ([`PlanOptions::vm_mac`] of the recorded options and
    /// facts). The DHCP server and the domain both take it from here, so a restarted
    /// launcher and `vmpod-launcher dhcp serve` agree with the first launcher.
    pub fn vm_mac(&self) -> MacAddr {
        self.options.vm_mac(self.binding, self.facts.mac)
    }

    /// The facts the plan and the DHCP servers work from: the discovered ones, without
    /// the IPv6 addresses when the VM's IPv6 side is off ([`Self::ipv6_off`]), so no
    /// IPv6 address, NAT66 rule, forwarding write, DHCPv6 lease or router advertisement
    /// comes of them.
    pub fn planned_facts(&self) -> std::borrow::Cow<'_, InterfaceFacts> {
        if self.ipv6_off.is_none() {
            return std::borrow::Cow::Borrowed(&self.facts);
        }
        let mut facts = self.facts.clone();
        facts.addresses.retain(|a| a.addr.is_ipv4());
        std::borrow::Cow::Owned(facts)
    }

    /// The bridge the net phase built for this pod interface.
    pub fn bridge_name(&self) -> String {
        super::plan::bridge_name(&self.facts.interface)
    }

    /// The VM's tap the net phase created on that bridge.
    pub fn tap_name(&self) -> String {
        super::plan::tap_name(&self.facts.interface)
    }
}

/// The identity of the calling thread's network namespace.
pub fn current_netns_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `<state_dir>/net/<iface>.json` (see [`StateDir::net_cache`]).
pub fn path(state_dir: &Path, interface: &str) -> PathBuf {
    StateDir::new(state_dir).net_cache(interface)
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
    let dir = StateDir::new(state_dir).net_dir();
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(cache_err(&dir))?;
    let mut json = serde_json::to_vec_pretty(entry).map_err(|source| NetError::CacheFormat {
        path: final_path.clone(),
        source,
    })?;
    json.push(b'\n');
    write_atomic(&final_path, &json, Durability::FileAndDir).map_err(cache_err(&final_path))?;
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
    let dir = StateDir::new(state_dir).net_dir();
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
    use crate::net::plan::tests::ipv4_only;

    fn entry(iface: &str) -> CachedInterface {
        CachedInterface {
            facts: InterfaceFacts {
                interface: iface.into(),
                ..ipv4_only()
            },
            binding: Binding::Bridge,
            options: PlanOptions::default(),
            original: OriginalSettings::default(),
            applied: vec![NetOp::SetUp { link: iface.into() }],
            netns_id: Some((4, 4026531840)),
            ipv6_off: None,
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
        let names: Vec<_> = fs::read_dir(StateDir::new(d.path()).net_dir())
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

    /// A dual-stack masquerade pod whose IPv6 side is off plans and serves IPv4 alone:
    /// no IPv6 address or forwarding op, one NAT family, no DHCPv6 configuration; the
    /// facts themselves keep the pod's IPv6 address.
    #[test]
    fn with_ipv6_off_the_plan_and_the_servers_see_no_ipv6() {
        let mut e = entry("eth0");
        e.binding = Binding::Masquerade;
        e.facts
            .addresses
            .push(IpCidr::new("fd00::5".parse().unwrap(), 64));
        let on = crate::net::plan(&e.planned_facts(), e.binding, &e.options, e.original).unwrap();
        assert!(on.iter().any(|o| matches!(o, NetOp::Ipv6Forwarding { .. })));
        assert!(crate::dhcp::v6::DhcpV6Config::for_cached(&e).is_some());
        e.ipv6_off = Some("why".into());
        let off = crate::net::plan(&e.planned_facts(), e.binding, &e.options, e.original).unwrap();
        assert!(
            !off.iter()
                .any(|o| matches!(o, NetOp::Ipv6Forwarding { .. }))
        );
        assert!(!off.iter().any(|o| matches!(o,
            NetOp::AddAddress { address, .. } if address.addr.is_ipv6())));
        let Some(NetOp::Nat(nat)) = off.iter().find(|o| matches!(o, NetOp::Nat(_))) else {
            panic!("no NAT op in {off:?}");
        };
        assert_eq!(nat.families.len(), 1, "{nat:?}");
        assert!(crate::dhcp::v6::DhcpV6Config::for_cached(&e).is_none());
        assert_eq!(e.facts.ipv6().count(), 1);
        let back: CachedInterface =
            serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back.ipv6_off.as_deref(), Some("why"));
    }

    #[test]
    fn a_corrupt_cache_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(StateDir::new(d.path()).net_dir()).unwrap();
        fs::write(path(d.path(), "eth0"), "{not json").unwrap();
        let e = load(d.path(), "eth0").unwrap_err().to_string();
        assert!(e.contains("net/eth0.json is not valid"), "{e}");
    }
}
