//! Whether the host is bare metal or itself a virtual machine.
//!
//! On a virtual host the "NUMA nodes" are the outer hypervisor's virtual cells,
//! so numapin manages nested guests on a virtual topology; operators need to
//! see that, and steal time becomes the relevant measure of a CPU's capacity.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostKind {
    /// The source did not say.
    #[default]
    Unknown,
    BareMetal,
    /// A virtual machine; `hypervisor` names the outer one when known
    /// (e.g. "KVM", "QEMU", "VMware").
    Virtual { hypervisor: Option<String> },
}

impl HostKind {
    pub fn is_virtual(&self) -> bool {
        matches!(self, HostKind::Virtual { .. })
    }
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKind::Unknown => f.write_str("unknown (bare metal or virtual)"),
            HostKind::BareMetal => f.write_str("bare metal"),
            HostKind::Virtual {
                hypervisor: Some(h),
            } => write!(f, "virtual machine ({h}): guests here are nested"),
            HostKind::Virtual { hypervisor: None } => {
                f.write_str("virtual machine: guests here are nested")
            }
        }
    }
}
