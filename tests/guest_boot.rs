//! Boots the test guest (tests/guest/) under QEMU with TCG and user-mode networking and
//! checks what it reports on its serial console: the lease slirp hands out, the ping to
//! the router, a cidata disk's user-data, and ACPI power-button shutdown.

mod support;

use std::io::{Seek, Write};
use std::path::Path;
use std::time::Duration;
use support::guest::{GuestDisk, GuestOptions, GuestReport, QemuGuest};

/// Generous: the lease itself comes in under 5 s, but tests run in parallel on 2 cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

const USER_DATA: &str =
    "#cloud-config\nhostname: vmpod-test\nruncmd:\n  - echo hello from user-data\n";

/// A vfat image labelled `cidata` holding `user-data` and `meta-data`, written with fatfs.
fn vfat_cidata(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    f.set_len(4 << 20).unwrap();
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
    )
    .unwrap();
    f.rewind().unwrap();
    let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
    let root = fs.root_dir();
    root.create_file("user-data")
        .unwrap()
        .write_all(USER_DATA.as_bytes())
        .unwrap();
    root.create_file("meta-data")
        .unwrap()
        .write_all(b"instance-id: iid-vmpod-1\n")
        .unwrap();
}

#[test]
fn guest_leases_from_slirp_and_pings_the_router() {
    if !support::privileged("guest_leases_from_slirp_and_pings_the_router") {
        return;
    }
    let mut vm = QemuGuest::boot(&GuestOptions::default());
    let report = vm
        .wait_for(BOOT_TIMEOUT, |r| r.ping.is_some() || r.lease_failed)
        .unwrap();
    let lease = report
        .lease
        .as_ref()
        .unwrap_or_else(|| panic!("no lease:\n{}", vm.console()));
    assert_eq!(lease.iface, "eth0");
    assert_eq!(
        (lease.ip.to_string().as_str(), lease.prefix),
        ("10.0.2.15", 24)
    );
    assert_eq!(
        lease.router().map(|r| r.to_string()).as_deref(),
        Some("10.0.2.2")
    );
    assert_eq!(lease.dns, ["10.0.2.3".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(lease.mac, "52:54:00:12:34:56");
    assert_eq!(lease.link_mtu, 1500);
    let ping = report.ping.unwrap();
    assert_eq!(ping.target.to_string(), "10.0.2.2");
    assert!(
        ping.ok,
        "guest could not ping its router:\n{}",
        vm.console()
    );
    eprintln!(
        "boot-to-lease: {:.2} s guest uptime, {:.2?} from QEMU start",
        lease.uptime,
        vm.seen_at("VMPOD-LEASE").unwrap()
    );
    // Then it powers itself off through ACPI and QEMU exits.
    let status = vm.wait_exit(BOOT_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU exit {status}");
    assert!(GuestReport::parse(&vm.console()).unwrap().powered_off);
}

/// Boot with `disk` attached; the guest must print `USER_DATA` from it and power off.
fn boot_with_cidata(disk: GuestDisk) -> GuestReport {
    let mut vm = QemuGuest::boot(&GuestOptions {
        disks: vec![disk],
        ..GuestOptions::default()
    });
    let report = vm.wait_for(BOOT_TIMEOUT, |r| r.powered_off).unwrap();
    let console = vm.console();
    assert_eq!(report.user_data(), Some(USER_DATA), "console:\n{console}");
    vm.wait_exit(BOOT_TIMEOUT).unwrap();
    report
}

#[test]
fn guest_prints_user_data_from_a_vfat_cidata_disk() {
    if !support::privileged("guest_prints_user_data_from_a_vfat_cidata_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cidata.img");
    vfat_cidata(&img);
    let report = boot_with_cidata(GuestDisk::Virtio(img));
    let meta = report.cidata.get("meta-data").map(String::as_str);
    assert_eq!(meta, Some("instance-id: iid-vmpod-1\n"));
    let source = Some(("/dev/vda".to_string(), "vfat".to_string()));
    assert_eq!(report.cidata_source, source);
}

#[test]
fn guest_prints_user_data_from_an_iso9660_cidata_cdrom() {
    if !support::privileged("guest_prints_user_data_from_an_iso9660_cidata_cdrom") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("user-data"), USER_DATA).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: iid-vmpod-2\n").unwrap();
    let iso = dir.path().join("cidata.iso");
    let out = std::process::Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(&seed)
        .output()
        .expect("genisoimage (tests/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "genisoimage: {stderr}");
    let report = boot_with_cidata(GuestDisk::Cdrom(iso));
    let source = Some(("/dev/sr0".to_string(), "iso9660".to_string()));
    assert_eq!(report.cidata_source, source);
}

#[test]
fn held_guest_powers_off_on_acpi_system_powerdown() {
    if !support::privileged("held_guest_powers_off_on_acpi_system_powerdown") {
        return;
    }
    let mut vm = QemuGuest::boot(&GuestOptions {
        hold: true,
        ..GuestOptions::default()
    });
    let report = vm.wait_for(BOOT_TIMEOUT, |r| r.holding).unwrap();
    assert!(report.lease.is_some() && !report.powered_off);
    // Held: still running well after the checks.
    assert!(
        vm.wait_exit(Duration::from_secs(2)).is_err(),
        "guest did not hold"
    );
    vm.qmp("system_powerdown").unwrap();
    let report = vm
        .wait_for(Duration::from_secs(30), |r| r.powered_off)
        .unwrap();
    assert!(
        report.power_button,
        "powered off without seeing the power button"
    );
    let status = vm.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "QEMU exit {status}");
}
