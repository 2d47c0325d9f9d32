//! Local pod sandbox: what kubelet + a bridge CNI do for a pod, for local mode and the
//! privileged tests. Network namespace, veth on the node bridge, IPAM, resolv.conf,
//! mount namespace. Never touches a pod's network after the launcher owns it.
