//! The manifests in manifests/: every example validates, the checked-in CRD is what the types
//! generate, invalid manifests give the exact field-path messages, and `vmpodctl validate`
//! prints every error and exits non-zero. Unprivileged.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmpod::api::{self, FieldError, LoadError, VmiPhase};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/examples"))
        .expect("manifests/examples exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(files.len() >= 2, "examples: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if let Err(errors) = api::load_valid_vmi(&text) {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("{}:\n{}", file.display(), lines.join("\n"));
        }
    }
}

/// Our own manifests in the shapes of KubeVirt's examples (tests/kubevirt-shapes/).
fn kubevirt_shapes() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/kubevirt-shapes"))
        .expect("tests/kubevirt-shapes exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubevirt_example_shapes_load_unchanged() {
    let files = kubevirt_shapes();
    assert_eq!(files.len(), 6, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let vmi = api::load_valid_vmi(&text).unwrap_or_else(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("{}:\n{}", file.display(), lines.join("\n"))
        });
        assert_eq!(
            vmi.acceleration(),
            Some(api::AccelerationRequest::Emulation)
        );
        // After defaulting, every volume has its disk.
        for v in &vmi.spec.volumes {
            assert!(
                vmi.spec
                    .domain
                    .devices
                    .disks
                    .iter()
                    .any(|d| d.name == v.name),
                "{}: no disk for volume {}",
                file.display(),
                v.name
            );
        }
        let out = vmpodctl(file);
        assert!(out.status.success(), "{}: {:?}", file.display(), out);
        assert!(String::from_utf8(out.stdout).unwrap().contains("is valid"));
    }
    let masq = api::load_valid_vmi(
        &std::fs::read_to_string(repo().join("tests/kubevirt-shapes/masquerade-ports.yaml"))
            .unwrap(),
    )
    .unwrap();
    let iface = &masq.spec.domain.devices.interfaces[0];
    assert_eq!(iface.binding().unwrap(), vmpod::net::Binding::Masquerade);
    let m = masq.spec.masquerade_options(iface).unwrap();
    assert_eq!(m.vm_network.to_string(), "10.0.2.0/24");
    // KubeVirt's default IPv6 network, used in a dual-stack pod; its documentation
    // spells the field with the VM's address (`fd10:0:2::2/120`): the network is taken.
    assert_eq!(m.vm_network6.to_string(), "fd10:0:2::/120");
    let pod = api::PodNetwork {
        vm_ipv6_network_cidr: Some("fd10:0:2::2/120".into()),
        ..api::PodNetwork::default()
    };
    assert_eq!(pod.vm_network6().unwrap().to_string(), "fd10:0:2::/120");
    assert_eq!(m.ports, ["tcp/80".parse().unwrap()]);
    let text = std::fs::read_to_string(repo().join("tests/kubevirt-shapes/v1alpha3-chassis.yaml"))
        .unwrap();
    assert!(text.contains("apiVersion: kubevirt.io/v1alpha3\n"));
    let vmi = api::load_valid_vmi(&text).unwrap();
    assert_eq!(
        serde_json::to_value(&vmi).unwrap()["apiVersion"],
        "vmpod.io/v1alpha1"
    );
    let chassis = vmi.spec.domain.chassis.as_ref().unwrap();
    assert_eq!(
        chassis.entries(),
        [
            ("manufacturer", "Example Systems & Co"),
            ("version", "1.0"),
            ("serial", "CHS-0042"),
            ("asset", "asset-7"),
            ("sku", "SKU-3")
        ]
    );
    let disks: Vec<(&str, api::DiskBus)> = vmi
        .spec
        .domain
        .devices
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.bus()))
        .collect();
    assert_eq!(
        disks,
        [
            ("cloudinitdisk", api::DiskBus::Virtio),
            ("scratch", api::DiskBus::Virtio)
        ]
    );
}

#[test]
fn testguest_boots_the_local_kernel_with_a_bridged_pod_network() {
    let text = std::fs::read_to_string(repo().join("manifests/examples/testguest.yaml")).unwrap();
    let vmi = api::load_valid_vmi(&text).unwrap();
    let spec = &vmi.spec;
    let memory = spec.domain.guest_memory_bytes().unwrap();
    assert!((256 << 20..=512 << 20).contains(&memory), "{memory}");
    let kb = spec.domain.kernel_boot();
    let files = kb.unwrap().files().unwrap();
    assert_eq!(files.image, None, "launcher-local files");
    assert_eq!(files.kernel_path, "target/guest/vmlinuz");
    assert_eq!(
        files.initrd_path.as_deref(),
        Some("target/guest/initramfs.img")
    );
    assert_eq!(spec.networks.len(), 1);
    assert!(spec.networks[0].pod.is_some());
    let iface = &spec.domain.devices.interfaces[0];
    assert_eq!(iface.binding().unwrap(), vmpod::net::Binding::Bridge);
    assert!(spec.volumes.iter().any(|v| v.cloud_init_no_cloud.is_some()));
    assert_eq!(vmi.acceleration(), Some(api::AccelerationRequest::Auto));
}

#[test]
fn kubevirt_example_is_accepted_as_ours() {
    let text =
        std::fs::read_to_string(repo().join("manifests/examples/kubevirt-cirros.yaml")).unwrap();
    assert!(text.contains("apiVersion: kubevirt.io/v1"));
    let vmi = api::load_vmi(&text).unwrap();
    let json = serde_json::to_value(&vmi).unwrap();
    assert_eq!(json["apiVersion"], "vmpod.io/v1alpha1");
    assert_eq!(json["kind"], "VirtualMachineInstance");
    assert_eq!(
        json["spec"]["domain"]["devices"]["interfaces"][0]["dhcpOptions"]["privateOptions"][0]["option"],
        240
    );
}

#[test]
fn checked_in_crd_matches_the_types() {
    let path = repo().join("manifests/crd.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == api::crd::crd_yaml(),
        "{} is stale: run `cargo run --bin crdgen > manifests/crd.yaml`",
        path.display()
    );
    let crd: serde_json::Value = api::yaml::from_str(&on_disk).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "vmi");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    assert!(!on_disk.contains("additionalProperties: false"));
}

#[test]
fn status_round_trips_in_kubevirt_shape() {
    let text = r#"
apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata: {name: a}
spec: {domain: {}}
status:
  phase: Running
  nodeName: node-1
  launcherPod: vmpod-launcher-a
  interfaces:
    - {name: default, mac: "02:00:00:00:00:01", ipAddress: 10.0.0.5, ipAddresses: [10.0.0.5, "fd00::5"]}
  conditions:
    - {type: Ready, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;
    let vmi = api::load_vmi(text).unwrap();
    let status = vmi.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(VmiPhase::Running));
    assert_eq!(status.interfaces[0].ip_addresses.len(), 2);
    let back = serde_json::to_value(&vmi).unwrap();
    assert_eq!(back["status"]["interfaces"][0]["ipAddress"], "10.0.0.5");
    assert_eq!(back["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(back["status"]["launcherPod"], "vmpod-launcher-a");
}

/// A valid base manifest the table below breaks one piece at a time.
const BASE: &str = r#"
apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: t
spec:
  domain:
    memory: {guest: 256Mi}
    devices:
      disks: [{name: d, disk: {bus: virtio}}]
      interfaces: [{name: default, bridge: {}}]
  networks: [{name: default, pod: {}}]
  volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]
"#;

fn errors_of(text: &str) -> Vec<String> {
    let errors: Vec<FieldError> = match api::load_vmi(text) {
        Err(LoadError::Syntax(m)) => return vec![format!("syntax: {m}")],
        Err(LoadError::Fields(errors)) => errors,
        Ok(vmi) => api::validate(&vmi),
    };
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn base_is_valid() {
    assert_eq!(errors_of(BASE), Vec::<String>::new());
}

#[test]
fn invalid_manifests_give_exact_field_path_messages() {
    let table: &[(&str, &str, &[&str])] = &[
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: lots}",
            &[r#"spec.domain.memory.guest: "lots" is not a quantity"#],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: x, bridge: {}}]",
            &[
                r#"spec.domain.devices.interfaces[0]: no network named "x" in spec.networks"#,
                r#"spec.networks[0]: no interface named "default" in spec.domain.devices.interfaces"#,
            ],
        ),
        (
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: d, disk: {bus: virtio}}, {name: e}]",
            &[r#"spec.domain.devices.disks[1]: no volume named "e" in spec.volumes"#],
        ),
        (
            "volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]",
            "volumes: [{name: d, emptyDisk: {capacity: 1Gi}}, {name: no-disk, emptyDisk: {capacity: 0}}]",
            &[r#"spec.volumes[1].emptyDisk.capacity: "0" must be larger than zero"#],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, bridge: {}, ports: [{port: 80}]}]",
            &[
                "spec.domain.devices.interfaces[0].ports: ports are forwarded by the masquerade binding only",
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, masquerade: {}, ports: [{name: http, port: 80}, {port: 0}, {port: 53, protocol: SCTP}]}]",
            &["spec.domain.devices.interfaces[0].ports[1].port: 0 is not a port number (1-65535)"],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, masquerade: {}, ports: [{port: 53, protocol: SCTP}]}]",
            &[
                r#"spec.domain.devices.interfaces[0].ports[0].protocol: "SCTP" is not a supported protocol (TCP, UDP)"#,
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, pod: {vmNetworkCIDR: 10.1.0.0/31}}]",
            &[
                "spec.networks[0].pod.vmNetworkCIDR: 10.1.0.0/31: a /31 has no room for a gateway and a VM (at most /30)",
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, pod: {vmNetworkCIDR: banana}}]",
            &[
                r#"spec.networks[0].pod.vmNetworkCIDR: "banana" is not an IPv4 CIDR like 10.0.2.0/24"#,
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, pod: {vmIPv6NetworkCIDR: \"fd10:0:2::/127\"}}]",
            &[
                "spec.networks[0].pod.vmIPv6NetworkCIDR: fd10:0:2::/127: a /127 has no room for a gateway and a VM (at most /126)",
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, pod: {vmIPv6NetworkCIDR: 10.0.2.0/24}}]",
            &[
                r#"spec.networks[0].pod.vmIPv6NetworkCIDR: "10.0.2.0/24" is not an IPv6 CIDR like fd10:0:2::/120"#,
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, pod: {vmIPv6NetworkCIDR: \"fe80::/64\"}}]",
            &[
                "spec.networks[0].pod.vmIPv6NetworkCIDR: fe80::/64: not a unicast network (multicast, link-local and loopback are refused)",
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, bridge: {}, masquerade: {}}]",
            &[
                "spec.domain.devices.interfaces[0]: more than one binding (bridge, masquerade): pick one",
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, sriov: {}}]",
            &[
                r#"spec.domain.devices.interfaces[0].sriov: unsupported field "sriov" (supported here: bridge, dhcpOptions, macAddress, masquerade, model, name, ports)"#,
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi, hugepages: {pageSize: 2Mi}}",
            &[
                r#"spec.domain.memory.hugepages: unsupported field "hugepages" (supported here: guest)"#,
            ],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default, multus: {networkName: x}}]",
            &[r#"spec.networks[0].multus: unsupported field "multus" (supported here: name, pod)"#],
        ),
        (
            "networks: [{name: default, pod: {}}]",
            "networks: [{name: default}]",
            &["spec.networks[0]: needs a source: pod"],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "emptyDisk: {capacity: 0}",
            &[r#"spec.volumes[0].emptyDisk.capacity: "0" must be larger than zero"#],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "emptyDisk: {capacity: 1Gi}, hostDisk: {path: /x.img, type: DiskOrCreate}",
            &[
                "spec.volumes[0]: set exactly one source, not several",
                "spec.volumes[0].hostDisk.capacity: required for type DiskOrCreate",
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "cloudInitNoCloud: {networkData: x}",
            &["spec.volumes[0].cloudInitNoCloud: needs userData, userDataBase64 or secretRef"],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "cloudInitNoCloud: {userDataBase64: 'not base64!'}",
            &["spec.volumes[0].cloudInitNoCloud.userDataBase64: is not base64"],
        ),
        (
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: d, disk: {bus: virtio}, cdrom: {}, bootOrder: 0}]",
            &[
                "spec.domain.devices.disks[0]: set one of disk or cdrom, not both",
                "spec.domain.devices.disks[0].bootOrder: must be at least 1",
            ],
        ),
        (
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: d, disk: {bus: ide}}]",
            &[
                r#"spec.domain.devices.disks[0].disk.bus: "ide" is not one of "virtio", "sata", "scsi", "usb""#,
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, bridge: {}, macAddress: '03:00:00:00:00:01', dhcpOptions: {ntpServers: [ntp.example], privateOptions: [{option: 12, value: x}]}}]",
            &[
                r#"spec.domain.devices.interfaces[0].macAddress: "03:00:00:00:00:01" is a multicast address"#,
                r#"spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[0]: "ntp.example" is not an IPv4 address"#,
                "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[0].option: 12 is not a private option (224 to 254)",
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, bridge: {}, macAddress: nope}]",
            &[
                r#"spec.domain.devices.interfaces[0].macAddress: "nope" is not a MAC address (want six hex bytes like 02:00:00:aa:bb:cc)"#,
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {sockets: 0, cores: two}",
            &["spec.domain.cpu.cores: expected an integer, found a string \"two\""],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {sockets: 0}\n    resources: {limits: {memory: 128Mi}}",
            &[
                r#"spec.domain.memory.guest: "256Mi" is more than limits.memory"#,
                "spec.domain.cpu.sockets: must be at least 1",
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    firmware: {kernelBoot: {kernelArgs: console=ttyS0}}",
            &[
                "spec.domain.firmware.kernelBoot: no kernel to boot: set kernelPath (or container.kernelPath)",
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    firmware: {kernelBoot: {kernelPath: /k, container: {image: '', kernelPath: /boot/k}}}",
            &[
                "spec.domain.firmware.kernelBoot.container: set either container or kernelPath/initrdPath at kernelBoot level, not both",
                "spec.domain.firmware.kernelBoot.container.image: must not be empty",
            ],
        ),
        (
            "name: t",
            "name: Not_A_Label\n  annotations: {vmpod.io/acceleration: tcg}",
            &[
                r#"metadata.name: "Not_A_Label" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"#,
                r#"metadata.annotations["vmpod.io/acceleration"]: "tcg" is not one of auto, kvm, emulation"#,
            ],
        ),
        (
            "spec:\n",
            "spec:\n  terminationGracePeriodSeconds: -5\n",
            &["spec.terminationGracePeriodSeconds: -5 is negative"],
        ),
        (
            "spec:\n",
            "spec:\n  terminationGracePeriodSeconds: 9223372036854775807\n",
            &[
                "spec.terminationGracePeriodSeconds: 9223372036854775807 is more than 2147483647 seconds (68 years)",
            ],
        ),
        (
            "name: t",
            "name: t\n  uid: not-a-uuid",
            &[
                r#"metadata.uid: "not-a-uuid" is not a UUID (like 6a1c7a53-6a4e-4f0e-9a55-2f4c0d5e1b10); it names the VM's domain and SMBIOS system UUID"#,
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {sockets: 4294967295, cores: 2}",
            &["spec.domain.cpu.sockets: 4294967295 is more than 288 (QEMU's vCPU limit for q35)"],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {sockets: 16, cores: 16, threads: 2}\n    machine: {type: ''}",
            &[
                "spec.domain.cpu: sockets * cores * threads = 512 vCPUs, more than 288 (QEMU's limit for q35)",
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    cpu: {cores: 256}\n    machine: {type: pc-i440fx-7.2}",
            &["spec.domain.cpu.cores: 256 is more than 255 (QEMU's vCPU limit for pc)"],
        ),
        (
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: d, disk: {bus: virtio}, bootOrder: 4294967295}]",
            &[
                "spec.domain.devices.disks[0].bootOrder: 4294967295 is more than 2147483647 (QEMU's bootindex is a signed 32-bit integer)",
            ],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 8Pi}",
            &[
                r#"spec.domain.memory.guest: "8Pi" is more than 4Pi (what an x86_64 guest can address)"#,
            ],
        ),
        (
            "spec:\n",
            "spec:\n  hostname: Web_1\n  subdomain: -sub\n",
            &[
                r#"spec.hostname: "Web_1" is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"#,
                r#"spec.subdomain: "-sub" is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"#,
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "emptyDisk: {capacity: 9223372036854775807}",
            &[
                r#"spec.volumes[0].emptyDisk.capacity: "9223372036854775807" is more than 8Ei - 1Gi (the largest disk QEMU opens)"#,
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "hostDisk: {path: /x.img, type: DiskOrCreate, capacity: 8Ei}",
            &[r#"spec.volumes[0].hostDisk.capacity: "8Ei" is too large"#],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]",
            "interfaces: [{name: default, bridge: {}, dhcpOptions: {privateOptions: [{option: 2147483647, value: x}, {option: -1, value: y}]}}]",
            &[
                "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[0].option: 2147483647 is not a private option (224 to 254)",
                "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[1].option: -1 is not a private option (224 to 254)",
            ],
        ),
        (
            "  name: t\n",
            "  name: t\n  annotations: {vmpod.io/acceleration: kvm}\n  annotations: {vmpod.io/acceleration: emulation}\n",
            &[
                "metadata.annotations: duplicate key: written twice in one mapping (again at line 7, column 3)",
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "cloudInitNoCloud: {userData: x, secretRef: {name: s}, networkData: y, networkDataSecretRef: {name: Bad_Name}}",
            &[
                "spec.volumes[0].cloudInitNoCloud: set one of userData, userDataBase64, secretRef",
                "spec.volumes[0].cloudInitNoCloud: set one of networkData, networkDataBase64, networkDataSecretRef",
                r#"spec.volumes[0].cloudInitNoCloud.networkDataSecretRef.name: "Bad_Name" is not a Secret name"#,
            ],
        ),
        (
            "apiVersion: vmpod.io/v1alpha1",
            "apiVersion: kubevirt.io/v2",
            &[
                r#"apiVersion: "kubevirt.io/v2" is not vmpod.io/v1alpha1, kubevirt.io/v1 or kubevirt.io/v1alpha3"#,
            ],
        ),
        (
            "kind: VirtualMachineInstance",
            "kind: VirtualMachine",
            &[r#"kind: "VirtualMachine" is not VirtualMachineInstance"#],
        ),
    ];
    for (from, to, want) in table {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        let text = BASE.replacen(from, to, 1);
        let got = errors_of(&text);
        assert_eq!(&got, want, "manifest with {to:?}");
    }
}

#[test]
fn vmpodctl_validate_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = BASE.replacen("guest: 256Mi", "guest: lots", 1).replacen(
        "name: default, bridge",
        "name: x, bridge",
        1,
    );
    std::fs::write(&bad, text).unwrap();
    let out = vmpodctl(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = bad.display();
    for line in [
        format!(r#"{file}: spec.domain.memory.guest: "lots" is not a quantity"#),
        format!(
            r#"{file}: spec.domain.devices.interfaces[0]: no network named "x" in spec.networks"#
        ),
        format!("{file}: 3 error(s)"),
    ] {
        assert!(
            stderr.lines().any(|l| l == line),
            "{line:?} missing in:\n{stderr}"
        );
    }

    for example in examples() {
        let out = vmpodctl(&example);
        assert!(out.status.success(), "{}: {:?}", example.display(), out);
        assert!(String::from_utf8(out.stdout).unwrap().contains("is valid"));
    }
}

fn vmpodctl(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmpodctl"))
        .arg("validate")
        .arg(file)
        .output()
        .expect("vmpodctl runs")
}

#[test]
fn cluster_manifests_parse_as_their_kinds() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let mut kinds = Vec::new();
    for name in [
        "rbac.yaml",
        "controller.yaml",
        "handler-daemonset.yaml",
        "crd.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join("manifests").join(name)).unwrap();
        let docs: Vec<serde_json::Value> =
            api::yaml::documents(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for value in docs {
            let kind = value["kind"].as_str().unwrap().to_string();
            let parsed = match kind.as_str() {
                "Namespace" => serde_json::from_value::<Namespace>(value).map(drop),
                "ServiceAccount" => serde_json::from_value::<ServiceAccount>(value).map(drop),
                "ClusterRole" => serde_json::from_value::<ClusterRole>(value).map(drop),
                "ClusterRoleBinding" => {
                    serde_json::from_value::<ClusterRoleBinding>(value).map(drop)
                }
                "Deployment" => serde_json::from_value::<Deployment>(value).map(drop),
                "DaemonSet" => serde_json::from_value::<DaemonSet>(value).map(drop),
                "CustomResourceDefinition" => serde_json::from_value::<
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
                >(value)
                .map(drop),
                other => panic!("{name}: unexpected kind {other}"),
            };
            parsed.unwrap_or_else(|e| panic!("{name}: {kind}: {e}"));
            kinds.push(kind);
        }
    }
    for want in [
        "ClusterRole",
        "Deployment",
        "DaemonSet",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing: {kinds:?}");
    }
}

#[test]
fn only_one_cloud_init_volume() {
    let text = BASE
        .replacen(
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: d}, {name: e}]",
            1,
        )
        .replacen(
            "volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]",
            "volumes: [{name: d, cloudInitNoCloud: {userData: a}}, {name: e, cloudInitNoCloud: {userData: b}}]",
            1,
        );
    assert_eq!(
        errors_of(&text),
        [
            "spec.volumes[1].cloudInitNoCloud: only one cloudInitNoCloud volume is allowed (spec.volumes[0] has one)"
        ]
    );
}

/// Names become file names and device aliases, paths are opened by the launcher: each is
/// confined, and each refusal names its field (issue 15).
#[test]
fn names_and_paths_are_confined() {
    let table: &[(&str, &str, &[&str])] = &[
        (
            "disks: [{name: d, disk: {bus: virtio}}]",
            "disks: [{name: ../../x, disk: {bus: virtio}}]",
            &[
                r#"spec.domain.devices.disks[0].name: "../../x" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"#,
                r#"spec.domain.devices.disks[0]: no volume named "../../x" in spec.volumes"#,
            ],
        ),
        (
            "volumes: [{name: d, emptyDisk: {capacity: 1Gi}}]",
            "volumes: [{name: Data_1, emptyDisk: {capacity: 1Gi}}]",
            &[
                r#"spec.domain.devices.disks[0]: no volume named "d" in spec.volumes"#,
                r#"spec.volumes[0].name: "Data_1" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"#,
            ],
        ),
        (
            "interfaces: [{name: default, bridge: {}}]\n  networks: [{name: default, pod: {}}]",
            "interfaces: [{name: eth/0, bridge: {}}]\n  networks: [{name: eth/0, pod: {}}]",
            &[
                r#"spec.domain.devices.interfaces[0].name: "eth/0" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"#,
                r#"spec.networks[0].name: "eth/0" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"#,
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "containerDisk: {image: quay.io/x/disk, path: /disk/../../../etc/shadow}",
            &[
                "spec.volumes[0].containerDisk.path: must not contain '..' (the path is inside the image)",
            ],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "containerDisk: {image: quay.io/x/disk, path: /}",
            &["spec.volumes[0].containerDisk.path: must name a file inside the image"],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "hostDisk: {path: disk.img, type: Disk}",
            &["spec.volumes[0].hostDisk.path: must be an absolute path on the node"],
        ),
        (
            "emptyDisk: {capacity: 1Gi}",
            "hostDisk: {path: /var/lib/vmpod/../../../dev/sda, type: Disk}",
            &["spec.volumes[0].hostDisk.path: must not contain '..'"],
        ),
        (
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n    firmware: {kernelBoot: {container: {image: quay.io/x/k, kernelPath: ../vmlinuz, initrdPath: /boot/../../initrd}}}",
            &[
                "spec.domain.firmware.kernelBoot.container.kernelPath: must not contain '..' (the path is inside the image)",
                "spec.domain.firmware.kernelBoot.container.initrdPath: must not contain '..' (the path is inside the image)",
            ],
        ),
    ];
    for (from, to, want) in table {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        let got = errors_of(&BASE.replacen(from, to, 1));
        assert_eq!(&got, want, "{to}");
    }
    // KubeVirt's absolute-looking containerDisk path is inside the image: accepted.
    let ok = BASE.replacen(
        "emptyDisk: {capacity: 1Gi}",
        "containerDisk: {image: quay.io/x/disk, path: /disk/fedora.qcow2}",
        1,
    );
    assert_eq!(errors_of(&ok), Vec::<String>::new());
}

/// The launcher refuses a hostDisk outside the node's `--host-disk-dir`s before it touches
/// anything, naming the field; a symlink inside an allowed directory does not get out.
#[test]
fn launcher_refuses_host_disks_outside_its_directories() {
    #[path = "support/cargo_build.rs"]
    mod cargo_build;
    let launcher =
        cargo_build::build_bins(&["vmpod-launcher"], &["vmpod-launcher"]).join("vmpod-launcher");
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("disks");
    std::fs::create_dir(&allowed).unwrap();
    std::os::unix::fs::symlink("/dev/null", allowed.join("escape.img")).unwrap();
    for (disk, shown) in [
        ("/dev/null".to_string(), "/dev/null is outside"),
        (
            allowed.join("escape.img").display().to_string(),
            "(which is /dev/null) is outside",
        ),
    ] {
        let text = BASE.replacen(
            "emptyDisk: {capacity: 1Gi}",
            &format!("hostDisk: {{path: {disk}, type: Disk}}"),
            1,
        );
        let out = Command::new(&launcher)
            .args(["run", "--vmi", &text, "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--host-disk-dir")
            .arg(&allowed)
            .env_remove("VMPOD_HOST_DISK_DIRS")
            .output()
            .expect("the launcher runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("spec.volumes[0].hostDisk.path: ") && err.contains(shown),
            "{err}"
        );
        assert!(!dir.path().join("state").exists(), "nothing touched: {err}");
    }
}
