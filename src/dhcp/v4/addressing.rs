//! Where a reply goes (RFC 2131 section 4.1, "ciaddr / broadcast bit"). Pure.
//!
//! The server answers one VM on its own tap, where no relay agent can sit, so giaddr
//! is ignored: a VM naming a giaddr must not make the launcher unicast to an address
//! of its choice on the pod network. For the same reason a ciaddr other than the
//! VM's own address gets a broadcast (which stays on the bridge), not a unicast.

use super::ReplyKind;
use dhcproto::v4::Message;
use std::net::Ipv4Addr;

/// The destination of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The client has this address configured (RENEWING, INFORM): unicast to port 68.
    Client(Ipv4Addr),
    /// The client has no address yet and can receive unicast: to `ip` at its hardware
    /// address. The socket layer may broadcast instead (RFC 2131 allows it when
    /// unicast to the hardware address is not possible).
    Hardware(Ipv4Addr),
    /// 255.255.255.255, port 68.
    Broadcast,
}

/// RFC 2131 4.1 without relays: a NAK is always broadcast; a client with its address
/// (`client_ip`, the only one it may have) gets unicast; the broadcast bit asks for
/// broadcast; otherwise unicast to the hardware address with yiaddr.
pub fn destination(
    req: &Message,
    kind: ReplyKind,
    yiaddr: Ipv4Addr,
    client_ip: Ipv4Addr,
) -> Destination {
    if kind == ReplyKind::Nak || !req.giaddr().is_unspecified() {
        Destination::Broadcast
    } else if req.ciaddr() == client_ip {
        Destination::Client(client_ip)
    } else if req.flags().broadcast() || yiaddr.is_unspecified() || !req.ciaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Hardware(yiaddr)
    }
}
