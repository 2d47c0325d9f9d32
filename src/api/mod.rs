//! `VirtualMachineInstance` types (serde + schemars + kube CustomResource), defaults and
//! validation with a field path in every error. Owns the schema; touches no system state
//! (no files, no network): callers read manifests and hand the text in.
//!
//! - [`types`]: the resource, shaped like KubeVirt's `kubevirt.io/v1` VMI.
//! - [`quantity`]: Kubernetes quantities to bytes.
//! - [`crd`]: the CRD generated from the types (`manifests/crd.yaml`).
//! - [`defaults`]: defaults and accessors (guest memory, vCPUs, binding, acceleration).
//! - [`yaml`]: the one YAML reader and writer (strict: duplicate keys are errors).
//! - [`load`]: YAML/JSON text -> VMI, every schema problem with its path.
//! - [`validate`]: semantic checks, every problem with its path.
//!
//! vmpod-specific knobs that KubeVirt has no field for are annotations, so a KubeVirt
//! manifest stays valid: [`ACCELERATION_ANNOTATION`] (`vmpod.io/acceleration`: `auto`, the
//! default, tries KVM and falls back to TCG; `kvm` requires KVM; `emulation` forces TCG).

pub mod crd;
pub mod defaults;
pub mod load;
pub mod quantity;
pub mod types;
pub mod validate;
pub mod yaml;

pub use defaults::{
    AccelerationRequest, BindingError, DEFAULT_GRACE_PERIOD_SECONDS, DEFAULT_GUEST_MEMORY,
    apply_defaults, resolve_relative_paths,
};
pub use load::{LoadError, load_valid_vmi, load_vmi};
pub use quantity::{ParsedQuantity, QuantityError, parse_quantity, quantity_bytes};
pub use types::*;
pub use validate::{FieldError, PodInterface, ValidVmi, check, validate};

/// The API group.
pub const GROUP: &str = "vmpod.io";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of our resource.
pub const API_VERSION: &str = "vmpod.io/v1alpha1";
/// KubeVirt's `apiVersion`, accepted by the loader and normalised to [`API_VERSION`].
pub const KUBEVIRT_API_VERSION: &str = "kubevirt.io/v1";
/// KubeVirt's older `apiVersion`, still served by KubeVirt and used by many of its
/// examples; the same shape for every field vmpod supports, so accepted and normalised too.
pub const KUBEVIRT_API_VERSION_V1ALPHA3: &str = "kubevirt.io/v1alpha3";
/// The resource kind.
pub const KIND: &str = "VirtualMachineInstance";
/// Annotation forcing the accelerator: `auto` (default), `kvm` or `emulation`.
pub const ACCELERATION_ANNOTATION: &str = "vmpod.io/acceleration";
