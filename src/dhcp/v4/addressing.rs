//! Where a reply goes (RFC 2131 section 4.1, "giaddr / ciaddr / broadcast bit"). Pure.

use super::ReplyKind;
use dhcproto::v4::Message;
use std::net::Ipv4Addr;

/// The destination of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Through a relay agent: to giaddr, port 67.
    Relay(Ipv4Addr),
    /// The client has this address configured (RENEWING, INFORM): unicast to port 68.
    Client(Ipv4Addr),
    /// The client has no address yet and can receive unicast: to `ip` at its hardware
    /// address. The socket layer may broadcast instead (RFC 2131 allows it when
    /// unicast to the hardware address is not possible).
    Hardware(Ipv4Addr),
    /// 255.255.255.255, port 68.
    Broadcast,
}

/// RFC 2131 4.1: relay first; a NAK without relay is always broadcast; a client with
/// an address gets unicast; the broadcast bit asks for broadcast; otherwise unicast to
/// the hardware address with yiaddr.
pub fn destination(req: &Message, kind: ReplyKind, yiaddr: Ipv4Addr) -> Destination {
    if !req.giaddr().is_unspecified() {
        Destination::Relay(req.giaddr())
    } else if kind == ReplyKind::Nak {
        Destination::Broadcast
    } else if !req.ciaddr().is_unspecified() {
        Destination::Client(req.ciaddr())
    } else if req.flags().broadcast() || yiaddr.is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Hardware(yiaddr)
    }
}
