//! crdgen: print the VirtualMachineInstance CRD generated from src/api, the content of
//! manifests/crd.yaml (`cargo run --bin crdgen > manifests/crd.yaml`).

fn main() {
    print!("{}", vmpod::api::crd::crd_yaml());
}
