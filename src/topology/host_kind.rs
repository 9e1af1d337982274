//! Whether the host is bare metal or itself a virtual machine.
//!
//! On a virtual host the "NUMA nodes" are the outer hypervisor's virtual cells,
//! so numapin manages nested guests on a virtual topology; operators need to
//! see that, and steal time becomes the relevant measure of a CPU's capacity.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::input;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostKind {
    /// The source did not say.
    #[default]
    Unknown,
    BareMetal,
    /// A virtual machine; `hypervisor` names the outer one when known
    /// (e.g. "KVM", "QEMU", "VMware").
    Virtual {
        hypervisor: Option<String>,
    },
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

/// Decides bare metal or virtual from a host's files under `root` (`/` in
/// production): the CPUID `hypervisor` flag in `proc/cpuinfo`, the DMI
/// vendor and product strings, and `sys/hypervisor/type` (Xen). Any one
/// virtual sign wins, since each can be missing (no DMI in containers or on
/// some clouds, no flag when the outer hypervisor hides it). `Unknown` only
/// when none of the sources is readable.
pub fn detect(root: &Path) -> HostKind {
    let flags = cpuinfo_flags(root);
    let vendor = read_trimmed(&root.join("sys/class/dmi/id/sys_vendor"));
    let product = read_trimmed(&root.join("sys/class/dmi/id/product_name"));
    let hv_type = read_trimmed(&root.join("sys/hypervisor/type"));
    let name = hypervisor_name(vendor.as_deref(), product.as_deref(), hv_type.as_deref());
    let flagged = flags.as_ref().is_some_and(|f| f.contains("hypervisor"));
    if flagged || name.is_some() {
        HostKind::Virtual { hypervisor: name }
    } else if flags.is_some() || vendor.is_some() || product.is_some() {
        HostKind::BareMetal
    } else {
        HostKind::Unknown
    }
}

/// Whether `proc/cpuinfo` under `root` shows Intel VT-x (`vmx`) or AMD-V
/// (`svm`), which KVM needs and host-passthrough guests inherit.
pub fn cpu_has_virtualization_extensions(root: &Path) -> bool {
    cpuinfo_flags(root).is_some_and(|f| f.contains("vmx") || f.contains("svm"))
}

/// Flags of every processor in `proc/cpuinfo` (x86's `flags` lines). `None`
/// when the file is unreadable or has no `flags` line: ARM's `Features`
/// never carry a hypervisor bit, so they would prove nothing.
fn cpuinfo_flags(root: &Path) -> Option<BTreeSet<String>> {
    let bytes = input::read_bytes(&root.join("proc/cpuinfo"), input::PROCFS).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut flags = BTreeSet::new();
    let mut seen = false;
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':')
            && key.trim() == "flags"
        {
            seen = true;
            flags.extend(value.split_whitespace().map(str::to_string));
        }
    }
    seen.then_some(flags)
}

/// Names the outer hypervisor from DMI strings and `sys/hypervisor/type`.
/// Vendor strings alone can mislead (Microsoft sells laptops, Amazon rents
/// bare-metal instances), so those need the product to agree.
fn hypervisor_name(
    vendor: Option<&str>,
    product: Option<&str>,
    hv_type: Option<&str>,
) -> Option<String> {
    let vendor = vendor.unwrap_or("");
    let product = product.unwrap_or("");
    let name = match (vendor, product) {
        (_, p) if p.contains("KVM") => "KVM",
        ("QEMU", _) => "QEMU",
        (v, _) if v.starts_with("VMware") => "VMware",
        ("Microsoft Corporation", "Virtual Machine") => "Hyper-V",
        ("Xen", _) => "Xen",
        ("innotek GmbH", _) | (_, "VirtualBox") => "VirtualBox",
        ("Parallels Software International Inc.", _) => "Parallels",
        ("Bochs", _) => "Bochs",
        ("Google", "Google Compute Engine") => "Google Compute Engine",
        ("Amazon EC2", p) if !p.ends_with(".metal") => "Amazon EC2",
        ("OpenStack Foundation", _) | (_, "OpenStack Nova") => "OpenStack Nova",
        _ => match hv_type {
            Some("xen") => "Xen",
            Some(other) if !other.is_empty() => other,
            _ => return None,
        },
    };
    Some(name.to_string())
}

fn read_trimmed(path: &Path) -> Option<String> {
    let bytes = input::read_bytes(path, input::SYSFS).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    const BARE_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ht\n\n";
    const VM_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor svm\n\n";

    #[test]
    fn nothing_readable_is_unknown() {
        let dir = tree(&[]);
        assert_eq!(detect(dir.path()), HostKind::Unknown);
        assert!(!cpu_has_virtualization_extensions(dir.path()));
    }

    #[test]
    fn cpuinfo_flags_decide_without_dmi() {
        let dir = tree(&[("proc/cpuinfo", BARE_CPUINFO)]);
        assert_eq!(detect(dir.path()), HostKind::BareMetal);
        assert!(cpu_has_virtualization_extensions(dir.path()));
        let dir = tree(&[("proc/cpuinfo", VM_CPUINFO)]);
        assert_eq!(detect(dir.path()), HostKind::Virtual { hypervisor: None });
        assert!(cpu_has_virtualization_extensions(dir.path()));
    }

    #[test]
    fn dmi_names_the_hypervisor() {
        let cases = [
            ("QEMU", "Standard PC (Q35 + ICH9, 2009)", "QEMU"),
            ("Red Hat", "KVM", "KVM"),
            ("VMware, Inc.", "VMware7,1", "VMware"),
            ("Microsoft Corporation", "Virtual Machine", "Hyper-V"),
            ("Xen", "HVM domU", "Xen"),
            ("Amazon EC2", "m5.large", "Amazon EC2"),
        ];
        for (vendor, product, name) in cases {
            let dir = tree(&[
                ("proc/cpuinfo", VM_CPUINFO),
                ("sys/class/dmi/id/sys_vendor", &format!("{vendor}\n")),
                ("sys/class/dmi/id/product_name", &format!("{product}\n")),
            ]);
            assert_eq!(
                detect(dir.path()),
                HostKind::Virtual {
                    hypervisor: Some(name.into())
                },
                "{vendor} / {product}"
            );
        }
    }

    #[test]
    fn look_alike_vendors_are_bare_metal() {
        for (vendor, product) in [
            ("Microsoft Corporation", "Surface Laptop 5"),
            ("Amazon EC2", "i3.metal"),
            ("Dell Inc.", "PowerEdge R750"),
        ] {
            let dir = tree(&[
                ("sys/class/dmi/id/sys_vendor", vendor),
                ("sys/class/dmi/id/product_name", product),
            ]);
            assert_eq!(detect(dir.path()), HostKind::BareMetal, "{vendor}");
        }
    }

    #[test]
    fn xen_without_dmi_or_flag() {
        let dir = tree(&[("sys/hypervisor/type", "xen\n")]);
        assert_eq!(
            detect(dir.path()),
            HostKind::Virtual {
                hypervisor: Some("Xen".into())
            }
        );
    }
}
