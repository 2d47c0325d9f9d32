//! The launcher's pure decisions, taken out of the `run` orchestrator so they can be unit
//! tested: the net-phase options for the VMI's pod interface (validation found the one
//! interface and read its binding, MAC, masquerade options and DHCP extras:
//! [`PodInterface`]), the VM's DHCP identity, and the status entries and domain
//! attachment made from the net phase's outcome. No I/O: the
//! names of the bridge and tap come from the [`SetupOutcome`], the server address from
//! the cache (`DhcpConfig::for_cached`), never from here.

use std::path::Path;
use vmpod::api::{PodInterface, ValidVmi, VirtualMachineInstance};
use vmpod::control::{Acceleration, InterfaceReport, InterfaceStatus, LauncherStatus, Phase};
use vmpod::domain::Attachment;
use vmpod::net::{self, SetupOptions, SetupOutcome};

/// The net phase's options for the VMI's pod interface `iface` on pod interface
/// `pod_interface`: its binding, the VMI's `macAddress` (none: the cache falls back to
/// the pod's MAC, see `CachedInterface::vm_mac`) and, with masquerade, the VM network and
/// forwarded ports.
pub fn setup_options(
    iface: &PodInterface,
    pod_interface: &str,
    state_dir: &Path,
    resolv_conf: &Path,
) -> SetupOptions {
    let mut opts = SetupOptions::new(pod_interface);
    opts.binding = iface.binding;
    opts.plan.vm_mac = iface.mac;
    if let Some(m) = &iface.masquerade {
        opts.plan.masquerade = m.clone();
    }
    opts.state_dir = state_dir.to_path_buf();
    opts.resolv_conf = resolv_conf.to_path_buf();
    opts
}

/// The VM's DHCP hostname and search domains, as KubeVirt gives them: `spec.hostname`,
/// else the VMI's name (never the pod's); with `spec.subdomain`, the domain
/// `<subdomain>.<namespace>.svc.<cluster domain>` goes first in the search list (and
/// so becomes the DHCP domain name), made from the pod's `<namespace>.svc.` search
/// domain.
pub fn vm_identity(
    vmi: &VirtualMachineInstance,
    facts: &net::InterfaceFacts,
) -> net::InterfaceFacts {
    let mut vm = facts.clone();
    if let Some(name) = vmi
        .spec
        .hostname
        .clone()
        .or_else(|| vmi.metadata.name.clone())
    {
        vm.hostname = name;
    }
    if let Some(sub) = &vmi.spec.subdomain {
        let svc = vmi
            .metadata
            .namespace
            .as_deref()
            .map(|ns| format!("{ns}.svc."));
        let base = vm
            .search
            .iter()
            .find(|d| svc.as_deref().is_some_and(|p| d.starts_with(p)))
            .or(vm.search.first())
            .cloned();
        if let Some(base) = base {
            vm.search.insert(0, format!("{sub}.{base}"));
        }
    }
    vm
}

/// The status of a VMI interface once its net phase is done: the VM's MAC and the pod's
/// addresses, which the VM takes over.
pub fn interface_status(name: &str, outcome: &SetupOutcome) -> InterfaceStatus {
    let facts = &outcome.cached.facts;
    InterfaceStatus {
        name: name.to_string(),
        mac: outcome.cached.vm_mac(),
        interface_name: Some(facts.interface.clone()),
        ip_address: facts.ipv4().map(|a| a.addr),
        ip_addresses: facts.addresses.iter().map(|a| a.addr).collect(),
    }
}

/// The network report of a VMI interface (its DHCP counters are added by the server).
pub fn interface_report(name: &str, outcome: &SetupOutcome) -> InterfaceReport {
    InterfaceReport::new(name, &outcome.cached, None)
}

/// What the domain XML attaches for the interface: the net phase's tap and the VM's MAC.
pub fn attachment(outcome: &SetupOutcome) -> Attachment {
    Attachment {
        tap: outcome.tap_name(),
        mac: outcome.cached.vm_mac(),
        facts: outcome.cached.facts.clone(),
    }
}

/// The status before anything is done: `Pending`, with the acceleration chosen and why
/// KVM is not used when it was allowed.
pub fn initial_status(
    vmi: &ValidVmi,
    booted: Acceleration,
    why_not_kvm: Option<&str>,
) -> LauncherStatus {
    let mut status = LauncherStatus::pending(vmi.name());
    status.namespace.clone_from(&vmi.metadata.namespace);
    status.acceleration = Some(booted);
    status.acceleration_reason = why_not_kvm.map(str::to_string);
    status
}

/// The last phase and reason the status carries once the launcher is done: the domain's
/// final state when it ended (see `lifecycle::outcome`), `Failed` with the error
/// otherwise. `Ok` exits 0.
pub fn final_phase(
    result: &anyhow::Result<vmpod::domain::DomainState>,
) -> Result<(Phase, Option<String>), String> {
    match result {
        Ok(state) => match crate::lifecycle::outcome(*state) {
            Ok(()) => Ok((Phase::Succeeded, crate::lifecycle::reason_of(*state))),
            Err(reason) => Err(reason),
        },
        Err(e) => Err(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use vmpod::api;
    use vmpod::domain::{DomainState, StopReason};
    use vmpod::net::{Binding, CachedInterface, MacAddr, OriginalSettings, PlanOptions};

    fn vmi(interfaces: &str, networks: &str, extra: &str) -> ValidVmi {
        let yaml = format!(
            "apiVersion: vmpod.io/v1alpha1\nkind: VirtualMachineInstance\n\
             metadata: {{name: web, namespace: shop}}\n\
             spec:\n  domain:\n    devices:\n      interfaces: {interfaces}\n\
             \x20     disks: [{{name: root}}]\n\
             \x20   resources: {{requests: {{memory: 64Mi}}}}\n\
             \x20 networks: {networks}\n\
             \x20 volumes: [{{name: root, hostDisk: {{path: /d.img, type: Disk}}}}]\n{extra}"
        );
        api::load_valid_vmi(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e:?}"))
    }

    fn facts() -> net::InterfaceFacts {
        serde_json::from_value(serde_json::json!({
            "interface": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450,
            "addresses": [{"addr": "fd00::5", "prefix": 64}, {"addr": "10.244.1.5", "prefix": 24}],
            "gateway": "10.244.1.1", "routes": [], "dns": [],
            "search": ["default.svc.cluster.local", "shop.svc.cluster.local", "cluster.local"],
            "hostname": "virt-launcher-web-abcde"
        }))
        .expect("facts JSON")
    }

    fn outcome(binding: Binding, vm_mac: Option<MacAddr>) -> SetupOutcome {
        SetupOutcome {
            cached: CachedInterface {
                facts: facts(),
                binding,
                options: PlanOptions {
                    vm_mac,
                    ..PlanOptions::default()
                },
                original: OriginalSettings::default(),
                applied: vec![],
                netns_id: None,
                ipv6_off: None,
            },
            ops: vec![],
            from_cache: false,
            reused: false,
            cache_path: "/s/net/eth0.json".into(),
        }
    }

    /// The VMI with `interface` on the pod network, and the net phase's options for it.
    fn options_for(interface: &str) -> (ValidVmi, SetupOptions) {
        let v = vmi(&format!("[{interface}]"), "[{name: default, pod: {}}]", "");
        let iface = v.pod_interface().expect("a pod interface");
        let o = setup_options(iface, "eth1", Path::new("/s"), Path::new("/r"));
        (v, o)
    }

    #[test]
    fn setup_options_carry_binding_mac_and_dirs() {
        let (_, o) = options_for("{name: default, bridge: {}, macAddress: '02:00:00:00:00:07'}");
        assert_eq!(o.interface, "eth1");
        assert_eq!(o.binding, Binding::Bridge);
        assert_eq!(o.plan.vm_mac, Some("02:00:00:00:00:07".parse().unwrap()));
        assert_eq!(
            (o.state_dir.as_path(), o.resolv_conf.as_path()),
            (Path::new("/s"), Path::new("/r"))
        );

        let (m, o) = options_for("{name: default, masquerade: {}}");
        assert_eq!((o.binding, o.plan.vm_mac), (Binding::Masquerade, None));
        let iface = &m.spec.domain.devices.interfaces[0];
        assert_eq!(o.plan.masquerade, m.spec.masquerade_options(iface).unwrap());
    }

    #[test]
    fn the_vm_mac_falls_back_to_the_pods_and_the_tap_is_the_net_phases() {
        let pod_mac = facts().mac;
        let bridge = outcome(Binding::Bridge, None);
        assert_eq!(attachment(&bridge).mac, pod_mac);
        assert_eq!(attachment(&bridge).tap, net::tap_name("eth0"));
        assert_eq!(bridge.bridge_name(), net::bridge_name("eth0"));
        let own: MacAddr = "02:00:00:00:00:07".parse().unwrap();
        assert_eq!(attachment(&outcome(Binding::Bridge, Some(own))).mac, own);
        let masq = attachment(&outcome(Binding::Masquerade, None)).mac;
        assert_ne!(masq, pod_mac, "masquerade: the pod keeps its MAC");
        assert_eq!(
            interface_status("default", &outcome(Binding::Masquerade, None)).mac,
            masq
        );
    }

    #[test]
    fn interface_status_reports_the_pods_addresses_ipv4_first() {
        let s = interface_status("default", &outcome(Binding::Bridge, None));
        assert_eq!(s.name, "default");
        assert_eq!(s.interface_name.as_deref(), Some("eth0"));
        assert_eq!(s.ip_address, Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5))));
        assert_eq!(s.ip_addresses.len(), 2);
        let r = interface_report("default", &outcome(Binding::Bridge, None));
        assert_eq!((r.name.as_str(), r.binding), ("default", Binding::Bridge));
    }

    #[test]
    fn vm_identity_is_the_vmis_with_the_subdomain_first() {
        let plain = vmi("[]", "[]", "");
        let vm = vm_identity(&plain, &facts());
        assert_eq!(vm.hostname, "web", "the VMI's name, never the pod's");
        assert_eq!(vm.search, facts().search);

        let sub = vmi("[]", "[]", "  hostname: db\n  subdomain: backends\n");
        let vm = vm_identity(&sub, &facts());
        assert_eq!(vm.hostname, "db");
        assert_eq!(vm.search[0], "backends.shop.svc.cluster.local");
        assert_eq!(vm.search[1..], facts().search[..]);
    }

    #[test]
    fn initial_and_final_status() {
        let v = vmi("[]", "[]", "");
        let s = initial_status(&v, Acceleration::Tcg, Some("no /dev/kvm"));
        assert_eq!(
            (s.name.as_str(), s.namespace.as_deref()),
            ("web", Some("shop"))
        );
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(s.acceleration, Some(Acceleration::Tcg));
        assert_eq!(s.acceleration_reason.as_deref(), Some("no /dev/kvm"));

        let done = final_phase(&Ok(DomainState::Stopped(StopReason::Shutdown))).unwrap();
        assert_eq!(done, (Phase::Succeeded, Some("guest powered off".into())));
        let crashed = final_phase(&Ok(DomainState::Crashed)).unwrap_err();
        assert_eq!(crashed, "guest crashed");
        let failed = final_phase(&Err(anyhow::anyhow!("inner").context("outer"))).unwrap_err();
        assert_eq!(failed, "outer: inner");
    }
}
