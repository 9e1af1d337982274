//! Whether a guest is a hypervisor of its own: intent from the definition
//! the operator wrote, behaviour from KVM's nested-entry counters
//! (docs/HYPERVISORS.md).

use crate::guest::VirtCapability;

use super::DomainInput;
use super::domain_info::Analyzer;

/// Whether a guest is a hypervisor of its own, and on what evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// Its definition (the persistent one where there is one) requires or
    /// forces vmx/svm.
    Declared,
    /// KVM saw it entering nested guests.
    Observed { last_seen_secs: Option<u64> },
    /// It could run VMs but is not seen doing so; `measured`: whether
    /// KVM's counters were read at all.
    Capable { measured: bool },
    /// Its CPU cannot run VMs.
    Unable,
}

impl Hypervisor {
    pub fn is_hypervisor(self) -> bool {
        matches!(self, Hypervisor::Declared | Hypervisor::Observed { .. })
    }
}

impl std::fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hypervisor::Declared => f.write_str("requires vmx/svm in its definition"),
            Hypervisor::Observed {
                last_seen_secs: Some(s),
            } => write!(f, "ran nested guests in the last {} s", (*s).max(1)),
            Hypervisor::Observed {
                last_seen_secs: None,
            } => f.write_str("runs nested guests"),
            Hypervisor::Capable { measured: true } => {
                f.write_str("can run nested guests; none seen")
            }
            Hypervisor::Capable { measured: false } => {
                f.write_str("can run nested guests; not measured (no KVM nested counters)")
            }
            Hypervisor::Unable => f.write_str("cannot run nested guests"),
        }
    }
}

impl Analyzer<'_> {
    /// Intent from the definition the operator wrote (the persistent one;
    /// the live one of a transient guest), behaviour from KVM's counters.
    pub(super) fn hypervisor(&self, input: &DomainInput) -> Hypervisor {
        let definition = input.persistent.as_ref().unwrap_or(&input.live);
        let seen = self
            .obs
            .domains
            .get(&input.live.name)
            .and_then(|o| o.nested);
        match (
            definition.virt_capability(self.topo.virtualization_extensions),
            seen,
        ) {
            (VirtCapability::Required, _) => Hypervisor::Declared,
            (_, Some(a)) if a.running => Hypervisor::Observed {
                last_seen_secs: a.last_seen_secs,
            },
            (VirtCapability::Possible, seen) => Hypervisor::Capable {
                measured: seen.is_some(),
            },
            (VirtCapability::Unable, _) => Hypervisor::Unable,
        }
    }
}

/// i686 guests run natively on x86_64 hosts.
pub(super) fn arch_family(arch: &str) -> &str {
    match arch {
        "i686" | "x86_64" => "x86",
        other => other,
    }
}
