//! DHCPv4 options as people read them: code, name and a decoded value. Pure; used by
//! the probe's output and by tests that check what a client was told.

use dhcproto::v4::{DhcpOption, OptionCode};
use serde::{Deserialize, Serialize};

/// One option, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribedOption {
    pub code: u8,
    pub name: String,
    pub value: String,
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Describe one decoded option.
pub fn describe(opt: &DhcpOption) -> DescribedOption {
    let code = u8::from(OptionCode::from(opt));
    let (name, value) = match opt {
        DhcpOption::MessageType(t) => ("message-type", format!("{t:?}").to_uppercase()),
        DhcpOption::SubnetMask(m) => ("subnet-mask", m.to_string()),
        DhcpOption::Router(r) => ("router", join(r)),
        DhcpOption::DomainNameServer(d) => ("domain-name-servers", join(d)),
        DhcpOption::Hostname(h) => ("host-name", h.clone()),
        DhcpOption::DomainName(d) => ("domain-name", d.clone()),
        DhcpOption::InterfaceMtu(m) => ("interface-mtu", m.to_string()),
        DhcpOption::NtpServers(n) => ("ntp-servers", join(n)),
        DhcpOption::AddressLeaseTime(s) => ("lease-time", format!("{s} s")),
        DhcpOption::ServerIdentifier(s) => ("server-identifier", s.to_string()),
        DhcpOption::Renewal(s) => ("renewal-time", format!("{s} s")),
        DhcpOption::Rebinding(s) => ("rebinding-time", format!("{s} s")),
        DhcpOption::ClientIdentifier(id) => ("client-identifier", hex(id)),
        DhcpOption::TFTPServerName(t) => ("tftp-server-name", text(t)),
        DhcpOption::BootfileName(b) => ("bootfile-name", text(b)),
        DhcpOption::Message(m) => ("message", m.clone()),
        DhcpOption::DomainSearch(names) => (
            "domain-search",
            names
                .iter()
                .map(|n| n.to_string().trim_end_matches('.').to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        DhcpOption::ClasslessStaticRoute(routes) => (
            "classless-static-routes",
            routes
                .iter()
                .map(|(net, gw)| {
                    if gw.is_unspecified() {
                        format!("{net} on-link")
                    } else {
                        format!("{net} via {gw}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        DhcpOption::Unknown(u) if (224..=254).contains(&code) => ("private", text(u.data())),
        DhcpOption::Unknown(u) => ("unknown", hex(u.data())),
        other => ("other", format!("{other:?}")),
    };
    DescribedOption {
        code,
        name: name.to_owned(),
        value,
    }
}

/// Bytes as colon-separated hex (`00:03:00:01:...`), for DUIDs and unknown options.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every option of a message in wire order, decoded. dhcproto keeps options in a map,
/// so the order comes from walking the raw options area.
pub fn describe_all(msg: &dhcproto::v4::Message, raw: &[u8]) -> Vec<DescribedOption> {
    wire_order(raw)
        .into_iter()
        .filter_map(|code| msg.opts().get(OptionCode::from(code)))
        .map(describe)
        .collect()
}

/// Option codes in the order they appear in a raw DHCPv4 message (each once).
pub fn wire_order(raw: &[u8]) -> Vec<u8> {
    let mut codes = Vec::new();
    let mut i = 240;
    while i < raw.len() {
        match raw[i] {
            0 => i += 1,
            255 => break,
            code => {
                if !codes.contains(&code) {
                    codes.push(code);
                }
                let Some(len) = raw.get(i + 1) else { break };
                i += 2 + usize::from(*len);
            }
        }
    }
    codes
}
