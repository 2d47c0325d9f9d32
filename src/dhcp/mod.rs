//! Single-client DHCPv4 server (answers the VM's MAC only) and the probe client used by
//! `vmpodctl dhcp probe`. Later: DHCPv6 and router advertisements beside it. Reads the
//! cached [`crate::net::InterfaceFacts`]; never changes links or addresses.
