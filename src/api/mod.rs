//! `VirtualMachineInstance` types (serde + schemars + kube CustomResource), defaults and
//! validation with a field path in every error. Owns the schema; touches no system state.
