//! The UDP socket both ends use: bound to one device (SO_BINDTODEVICE), any address,
//! with SO_BROADCAST and SO_REUSEADDR. Created in the current thread's network namespace.

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;

/// A non-blocking UDP socket on 0.0.0.0:`port` that only sees `device`'s traffic.
pub fn udp_on_device(device: &str, port: u16) -> io::Result<std::net::UdpSocket> {
    let on = |what: &str, e: nix::errno::Errno| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{what} (device {device}, UDP port {port}): {e}"),
        )
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Udp,
    )
    .map_err(|e| on("socket", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(device))
        .map_err(|e| on("SO_BINDTODEVICE", e))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| on("SO_REUSEADDR", e))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| on("SO_BROADCAST", e))?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port)).map_err(|e| on("bind", e))?;
    Ok(std::net::UdpSocket::from(fd))
}
