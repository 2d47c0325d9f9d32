//! Creating a persistent tap through `/dev/net/tun`: the kernel has no netlink verb for
//! creating tun/tap devices (`ip tuntap` uses these ioctls too). The device is created in
//! the network namespace of the calling thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// How to create the tap.
#[derive(Clone, Copy, Debug)]
pub struct TapSpec<'a> {
    pub name: &'a str,
    pub owner: u32,
    pub group: Option<u32>,
    pub multiqueue: bool,
}

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetowner,
    nix::request_code_write!(b'T', 204, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetgroup,
    nix::request_code_write!(b'T', 206, std::mem::size_of::<libc::c_int>())
);

/// Which step failed, and why.
pub type TapError = (&'static str, io::Error);

fn id_arg(id: u32, what: &'static str) -> Result<libc::c_int, TapError> {
    libc::c_int::try_from(id).map_err(|_| {
        (
            what,
            io::Error::new(io::ErrorKind::InvalidInput, "id out of range"),
        )
    })
}

/// Size of the `virtio_net_hdr` that prefixes every frame on a IFF_VNET_HDR tap.
pub const VNET_HDR_LEN: usize = 10;

/// Open `/dev/net/tun` and attach it to the tap `name` (creating a non-persistent one if
/// missing) with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (and IFF_MULTI_QUEUE): one queue,
/// as QEMU opens it. Frames read and written carry a [`VNET_HDR_LEN`]-byte header.
pub fn attach(name: &str, multiqueue: bool) -> Result<File, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err((
            "name",
            io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| ("open /dev/net/tun", e))?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multiqueue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    req.ifr_ifru.ifru_flags = i16::try_from(flags).map_err(|_| {
        (
            "flags",
            io::Error::new(io::ErrorKind::InvalidInput, "flags overflow"),
        )
    })?;
    // SAFETY: the fd is an open /dev/net/tun; req is a valid, NUL-terminated ifreq that
    // outlives the call.
    unsafe { tunsetiff(tun.as_raw_fd(), &req) }.map_err(|e| ("TUNSETIFF", e.into()))?;
    Ok(tun)
}

/// Create (or attach to and re-own) a persistent tap with IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR (and IFF_MULTI_QUEUE), owned by `owner`/`group`.
pub fn create_persistent(spec: TapSpec<'_>) -> Result<(), TapError> {
    let tun = attach(spec.name, spec.multiqueue)?;
    let fd = tun.as_raw_fd();
    let owner = id_arg(spec.owner, "TUNSETOWNER")?;
    // SAFETY: fd is attached to the tap; the argument is a plain integer.
    unsafe { tunsetowner(fd, owner) }.map_err(|e| ("TUNSETOWNER", e.into()))?;
    if let Some(g) = spec.group {
        let g = id_arg(g, "TUNSETGROUP")?;
        // SAFETY: as above.
        unsafe { tunsetgroup(fd, g) }.map_err(|e| ("TUNSETGROUP", e.into()))?;
    }
    // SAFETY: as above; 1 makes the device outlive this file descriptor.
    unsafe { tunsetpersist(fd, 1) }.map_err(|e| ("TUNSETPERSIST", e.into()))?;
    Ok(())
}
