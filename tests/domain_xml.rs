//! Golden files for the domain XML: VMI manifests + a fixed environment -> the exact XML
//! in src/domain/testdata/. `VMPOD_UPDATE_GOLDEN=1 cargo test --test domain_xml` rewrites
//! them; review the diff. Under CI that variable is refused: the tests would compare each
//! file with what they just wrote.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vmpod::api::{VirtualMachineInstance, load_valid_vmi};
use vmpod::control::Acceleration;
use vmpod::domain::xml::{DiskFormat, PreparedVolume};
use vmpod::domain::{Attachment, DomainEnv, XmlError, domain_xml};
use vmpod::net::{InterfaceFacts, IpCidr};

fn facts() -> InterfaceFacts {
    InterfaceFacts {
        interface: "eth0".into(),
        mac: "0a:58:0a:f4:01:07".parse().unwrap(),
        mtu: 1450,
        addresses: vec![IpCidr::new("10.244.1.7".parse().unwrap(), 24)],
        routes: vec![],
        dns: vec![],
        search: vec![],
        hostname: "vm1".into(),
    }
}

/// The environment the launcher would build; the VM's MAC as the net phase cached it: the
/// VMI's `macAddress`, else the pod's.
fn env_for(
    vmi: &VirtualMachineInstance,
    accel: Acceleration,
    volumes: &[(&str, &str, DiskFormat)],
) -> DomainEnv {
    let mut env = env(accel, volumes);
    let vmi_mac = vmi.spec.domain.devices.interfaces[0].mac_address;
    for att in env.interfaces.values_mut() {
        att.mac = vmi_mac.unwrap_or(att.facts.mac);
    }
    env
}

fn env(accel: Acceleration, volumes: &[(&str, &str, DiskFormat)]) -> DomainEnv {
    DomainEnv {
        accel,
        state_dir: PathBuf::from("/var/run/vmpod"),
        volumes: volumes
            .iter()
            .map(|(name, path, format)| {
                let v = PreparedVolume {
                    path: PathBuf::from(path),
                    format: *format,
                    read_only: false,
                };
                (name.to_string(), v)
            })
            .collect(),
        interfaces: BTreeMap::from([(
            "default".to_string(),
            Attachment {
                mac: facts().mac,
                facts: facts(),
                tap: "tap-eth0".into(),
            },
        )]),
        kernel_boot_root: PathBuf::from("/var/run/vmpod/kernel-boot"),
    }
}

const UPDATE_GOLDEN: &str = "VMPOD_UPDATE_GOLDEN";

fn check_golden(name: &str, xml: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/domain/testdata")
        .join(name);
    if std::env::var_os(UPDATE_GOLDEN).is_some() {
        assert!(
            !support::ci(),
            "{UPDATE_GOLDEN} is set under CI: {} would be compared with what this run \
             writes into it; unset {UPDATE_GOLDEN}",
            path.display()
        );
        std::fs::write(&path, xml).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VMPOD_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(xml, want, "{} differs", path.display());
}

/// `manifest`'s domain XML under `accel`, its volumes prepared as `volumes` (name, path,
/// format), is the golden file `golden`.
fn check_domain_xml(
    manifest: &str,
    accel: Acceleration,
    volumes: &[(&str, &str, DiskFormat)],
    golden: &str,
) {
    let vmi = load_valid_vmi(manifest).unwrap();
    let xml = domain_xml(&vmi, &env_for(&vmi, accel, volumes)).unwrap();
    check_golden(golden, &xml.0);
}

/// Where the launcher writes the cloud-init image.
const CLOUD_INIT_IMG: &str = "/var/run/vmpod/cloud-init.img";
/// An emptyDisk `scratch` as the launcher prepares it.
const SCRATCH: (&str, &str, DiskFormat) = (
    "scratch",
    "/var/run/vmpod/disks/scratch.img",
    DiskFormat::Raw,
);

const TESTGUEST: &str = include_str!("../manifests/examples/testguest.yaml");

#[test]
fn testguest_example_under_tcg() {
    check_domain_xml(
        TESTGUEST,
        Acceleration::Tcg,
        &[("cloudinit", CLOUD_INIT_IMG, DiskFormat::Raw)],
        "testguest-tcg.xml",
    );
}

const KITCHEN_SINK: &str = r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: big
  namespace: prod
  uid: 6a1c7a53-6a4e-4f0e-9a55-2f4c0d5e1b10
spec:
  domain:
    cpu: {sockets: 2, cores: 2, threads: 1}
    memory: {guest: 1Gi}
    machine: {type: pc}
    features:
      acpi: {enabled: false}
    firmware:
      kernelBoot:
        kernelArgs: "console=ttyS0 root=/dev/vda rw quote=\"<&>\""
        container:
          image: registry.example/kernels:6.1
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      disks:
        - name: root
          disk: {bus: virtio}
          bootOrder: 1
          serial: ROOT01
        - name: scratch
          disk: {bus: sata}
        - name: iso
          cdrom: {}
        - name: ci
          disk: {}
      interfaces:
        - name: default
          bridge: {}
          macAddress: "02:00:00:0a:0b:0c"
          model: e1000
  networks:
    - name: default
      pod: {}
  volumes:
    - name: root
      containerDisk: {image: registry.example/fedora:40}
    - name: scratch
      emptyDisk: {capacity: 2Gi}
    - name: iso
      hostDisk: {path: /data/tools.iso, type: Disk}
    - name: ci
      cloudInitNoCloud: {userData: "#cloud-config\n"}
"##;

#[test]
fn kitchen_sink_under_kvm() {
    let root = "/var/run/vmpod/container-disks/root/disk/disk.img";
    check_domain_xml(
        KITCHEN_SINK,
        Acceleration::Kvm,
        &[
            ("root", root, DiskFormat::Qcow2),
            SCRATCH,
            ("iso", "/data/tools.iso", DiskFormat::Raw),
            ("ci", CLOUD_INIT_IMG, DiskFormat::Raw),
        ],
        "kitchen-sink-kvm.xml",
    );
}

#[test]
fn missing_pieces_name_the_field() {
    let vmi = load_valid_vmi(TESTGUEST).unwrap();
    let e = domain_xml(&vmi, &env(Acceleration::Tcg, &[])).unwrap_err();
    assert_eq!(
        e,
        XmlError::VolumeNotPrepared {
            path: "spec.domain.devices.disks[0]".into(),
            volume: "cloudinit".into()
        }
    );
    let mut no_net = env(
        Acceleration::Tcg,
        &[("cloudinit", "/x.img", DiskFormat::Raw)],
    );
    no_net.interfaces.clear();
    let e = domain_xml(&vmi, &no_net).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.domain.devices.interfaces[0]: interface \"default\" has no pod attachment"
    );
}

const V1ALPHA3_CHASSIS: &str = include_str!("kubevirt-shapes/v1alpha3-chassis.yaml");

/// KubeVirt's v1alpha3 shape: SMBIOS chassis in `<sysinfo>` (turned on by `<smbios
/// mode='sysinfo'/>`), the empty machine type as q35, the VMI's MAC, and a virtio disk for
/// each volume that no disk named.
#[test]
fn kubevirt_v1alpha3_shape_with_chassis_under_tcg() {
    check_domain_xml(
        V1ALPHA3_CHASSIS,
        Acceleration::Tcg,
        &[("cloudinitdisk", CLOUD_INIT_IMG, DiskFormat::Raw), SCRATCH],
        "kubevirt-v1alpha3-chassis-tcg.xml",
    );
}

/// Under CI, `VMPOD_UPDATE_GOLDEN` fails the golden tests instead of rewriting the files
/// (this test binary runs one golden test again with both set).
#[test]
fn update_golden_is_refused_under_ci() {
    if std::env::var_os(UPDATE_GOLDEN).is_some() {
        return; // the run below, or a developer updating the files
    }
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain/testdata/testguest-tcg.xml");
    let before = std::fs::read(&golden).unwrap();
    for ci in ["true", "1", "yes", "woodpecker"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "testguest_example_under_tcg", "--test-threads=1"])
            .env("CI", ci)
            .env(UPDATE_GOLDEN, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains("is set under CI"),
            "CI={ci} {UPDATE_GOLDEN}=1 must fail the golden test:\n{text}"
        );
    }
    assert_eq!(
        std::fs::read(&golden).unwrap(),
        before,
        "{} was rewritten",
        golden.display()
    );
}

#[test]
fn ci_is_any_nonempty_value_but_false_and_0() {
    for v in ["true", "1", "yes", "TRUE", "github-actions"] {
        assert!(support::is_ci_value(Some(v)), "CI={v}");
    }
    for v in [
        None,
        Some(""),
        Some(" "),
        Some("0"),
        Some("false"),
        Some("False"),
    ] {
        assert!(!support::is_ci_value(v), "CI={v:?}");
    }
}
