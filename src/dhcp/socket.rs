//! The UDP sockets both ends use: bound to one device (SO_BINDTODEVICE), any address,
//! with SO_REUSEADDR; DHCPv4's with SO_BROADCAST, DHCPv6's IPv6-only. Created in the
//! current thread's network namespace. And how both servers receive on them, and both
//! probes exchange on them.

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, bind, setsockopt,
    socket, sockopt,
};
use std::ffi::OsString;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The next datagram into `buf` and its sender, for the server `what` on `interface`. A
/// failed receive is logged and retried after 100 ms: the bridge going down and up
/// again must not end the server.
pub async fn recv_retrying(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
    what: &str,
    interface: &str,
) -> (usize, SocketAddr) {
    loop {
        match socket.recv_from(buf).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(interface, error = %e, "{what} receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The client side of one probe exchange: send `bytes` to `to`, then receive until
/// `accept` takes a datagram (given its bytes, sender and the time since sending) or
/// `timeout` has passed since sending (`None`).
pub async fn send_and_await<T>(
    socket: &tokio::net::UdpSocket,
    bytes: &[u8],
    to: SocketAddr,
    timeout: Duration,
    mut accept: impl FnMut(&[u8], SocketAddr, Duration) -> Option<T>,
) -> io::Result<Option<T>> {
    let sent = Instant::now();
    socket.send_to(bytes, to).await?;
    let deadline = sent + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(left, socket.recv_from(&mut buf)).await else {
            return Ok(None);
        };
        let (n, from) = received?;
        if let Some(taken) = accept(&buf[..n], from, sent.elapsed()) {
            return Ok(Some(taken));
        }
    }
}

/// A non-blocking UDP socket on 0.0.0.0:`port` that only sees `device`'s traffic.
pub fn udp_on_device(device: &str, port: u16) -> io::Result<std::net::UdpSocket> {
    let (fd, on) = device_socket(AddressFamily::Inet, device, port)?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| on("SO_BROADCAST", e))?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port)).map_err(|e| on("bind", e))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// A non-blocking IPv6-only UDP socket on [::]:`port` that only sees `device`'s
/// traffic, and the device's index (the scope of its link-local peers).
pub fn udp6_on_device(device: &str, port: u16) -> io::Result<(std::net::UdpSocket, u32)> {
    let (fd, on) = device_socket(AddressFamily::Inet6, device, port)?;
    let ifindex = nix::net::if_::if_nametoindex(device).map_err(|e| on("if_nametoindex", e))?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| on("IPV6_V6ONLY", e))?;
    let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(fd.as_raw_fd(), &any).map_err(|e| on("bind", e))?;
    Ok((std::net::UdpSocket::from(fd), ifindex))
}

type OnError = Box<dyn Fn(&str, nix::errno::Errno) -> io::Error>;

/// An unbound UDP socket of `family` on `device` with SO_REUSEADDR, and the function
/// that names the socket in its errors.
fn device_socket(family: AddressFamily, device: &str, port: u16) -> io::Result<(OwnedFd, OnError)> {
    let device_name = device.to_owned();
    let on: OnError = Box::new(move |what: &str, e: nix::errno::Errno| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{what} (device {device_name}, UDP port {port}): {e}"),
        )
    });
    let fd = socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Udp,
    )
    .map_err(|e| on("socket", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(device))
        .map_err(|e| on("SO_BINDTODEVICE", e))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| on("SO_REUSEADDR", e))?;
    Ok((fd, on))
}
