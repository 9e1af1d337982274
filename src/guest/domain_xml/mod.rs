//! Reads a domain's XML as `virsh dumpxml` prints it (libvirt 9) into a
//! [`Domain`].
//!
//! Live XML from libvirt is already consistent, but numapin also reads saved
//! and hand-made snapshots, so the cross-references libvirt itself would
//! check (vCPU ids, cell ids, IOThread ids, topology size) are checked again
//! here. Every error names the element, the attribute and value at fault, and
//! the line:column of the element, because the person reading it is editing
//! a file.
//!
//! Elements numapin has no use for (devices, seclabel, ...) are skipped, and
//! so is anything in a foreign XML namespace (`qemu:commandline`, other
//! tools' metadata).

mod access;
mod cpu;
mod memory;
mod vcpus;

use std::fmt;

use roxmltree::{Document, Node};

use super::metadata::policy_in_metadata;
use super::{CpuTune, Domain, DomainPolicy, GuestCpu};
use access::{
    attr_number, child, children, is_libvirt, problem, required_attr, required_child, text,
    text_problem,
};
use cpu::guest_cpu;
use memory::{hugepages, memory, numatune};
use vcpus::{cputune, iothreads, vcpu_placement_auto, vcpus};

/// Most vCPUs a domain may have: KVM's limit on x86 (`KVM_MAX_VCPUS`) and
/// the largest `maxcpus` of any QEMU machine type. Each vCPU gets its own
/// affinity set in a plan, so a cap on ids alone (65,536 vCPUs times a
/// `cpuset='0-65535'`) would let 200 bytes of XML take gigabytes.
pub const MAX_VCPUS: u32 = 4096;
/// Most IOThreads a domain may have, for the same reason; real domains
/// have a few, one per busy disk at most.
pub const MAX_IOTHREADS: u32 = 1024;

/// Largest size in a domain (its memory, a cell's, a page size): 4 PiB,
/// 2^52 bytes, the widest physical address space of any CPU QEMU
/// emulates. Sums over thousands of such domains still fit a u64 of MiB,
/// so plan totals never wrap.
pub const MAX_MEMORY_KIB: u64 = 1 << 42;

/// A well-formed document that is not a usable domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: u32,
    pub column: u32,
    /// Local name of the element at fault (`vcpupin`, `cell`, ...).
    pub element: String,
    /// The attribute at fault, when the problem lies in one.
    pub attribute: Option<String>,
    /// The value at fault: the attribute's value, or the element's text when
    /// no attribute is named. `None` when the value is missing.
    pub value: Option<String>,
    pub message: String,
}

/// Values quoted in messages are cut to this many characters so that a
/// garbled multi-kilobyte attribute does not flood the log.
const QUOTE_LIMIT: usize = 48;

fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_string(),
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}: ", self.line, self.column)?;
        let e = &self.element;
        match (&self.attribute, &self.value) {
            (Some(a), Some(v)) => write!(f, "<{e} {a}='{}'>", quoted(v))?,
            (None, Some(v)) => write!(f, "<{e}>{}</{e}>", quoted(v.trim()))?,
            _ => write!(f, "<{e}>")?,
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    #[error("not well-formed XML: {0}")]
    Xml(#[from] roxmltree::Error),
    /// Boxed because it is large and errors travel through every `?`.
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

impl DomainXmlError {
    /// The details of a semantic error; `None` for malformed XML.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            Self::Invalid(invalid) => Some(invalid),
            Self::Xml(_) => None,
        }
    }
}

type Result<T> = std::result::Result<T, DomainXmlError>;

/// Parses live (or inactive) domain XML.
pub fn parse(xml: &str) -> Result<Domain> {
    let doc = Document::parse(xml)?;
    domain(doc.root_element())
}

fn domain(root: Node) -> Result<Domain> {
    if !is_libvirt(&root, "domain") {
        return Err(problem(
            root,
            None,
            None,
            "the root element must be <domain>",
        ));
    }
    let vcpus = vcpus(root)?;
    let numatune_node = child(root, "numatune");
    let vcpu_placement_auto = vcpu_placement_auto(&vcpus, numatune_node)?;
    let iothreads = iothreads(root)?;
    let cpu = match child(root, "cpu") {
        Some(node) => guest_cpu(node, vcpus.max)?,
        None => GuestCpu::default(),
    };
    let cputune = match child(root, "cputune") {
        Some(node) => cputune(node, vcpus.max, &iothreads)?,
        None => CpuTune::default(),
    };
    let numatune = numatune_node
        .map(|node| numatune(node, vcpu_placement_auto, cpu.cells.len()))
        .transpose()?;
    let (memory_kib, current_memory_kib) = memory(root, &cpu.cells)?;
    Ok(Domain {
        name: name(root)?,
        uuid: uuid(root)?,
        virt_type: required_attr(root, "type")?.to_string(),
        arch: arch(root),
        id: attr_number(root, "id")?,
        vcpus_max: vcpus.max,
        vcpus_current: vcpus.current,
        online_vcpus: vcpus.online,
        vcpu_placement_auto,
        vcpu_cpuset: vcpus.cpuset,
        memory_kib,
        current_memory_kib,
        hugepages: hugepages(root, cpu.cells.len())?,
        cpu,
        cputune,
        numatune,
        iothreads,
        policy: policy(root)?,
        disks: disks(root),
    })
}

/// `<devices><disk><target dev='vda'/>` names.
fn disks(root: Node) -> Vec<String> {
    child(root, "devices")
        .into_iter()
        .flat_map(|devices| children(devices, "disk"))
        .filter_map(|disk| child(disk, "target")?.attribute("dev"))
        .map(str::to_string)
        .collect()
}

// ---- identity -----------------------------------------------------------

fn name(root: Node) -> Result<String> {
    let node = required_child(root, "name")?;
    let name = text(node);
    if name.trim().is_empty() {
        return Err(text_problem(node, "the domain name is empty"));
    }
    Ok(name.to_string())
}

/// `<os><type arch=..>`; libvirt fills it in for every domain it runs.
fn arch(root: Node) -> Option<String> {
    child(root, "os")
        .and_then(|os| child(os, "type"))
        .and_then(|t| t.attribute("arch"))
        .map(str::to_string)
}

/// The UUID as written; libvirt accepts 32 hex digits with dashes anywhere.
fn uuid(root: Node) -> Result<String> {
    let node = required_child(root, "uuid")?;
    let uuid = text(node).trim();
    let digits = uuid.chars().filter(|c| *c != '-');
    if digits.clone().count() != 32 || !digits.clone().all(|c| c.is_ascii_hexdigit()) {
        return Err(text_problem(node, "not a UUID (32 hex digits)"));
    }
    Ok(uuid.to_string())
}

// ---- <metadata> ---------------------------------------------------------

fn policy(root: Node) -> Result<Option<DomainPolicy>> {
    let Some(metadata) = child(root, "metadata") else {
        return Ok(None);
    };
    policy_in_metadata(metadata).map_err(|e| {
        let message = e.problem.to_string();
        problem(e.node, Some("name"), e.node.attribute("name"), message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(100);
        assert_eq!(quoted(&long).len(), QUOTE_LIMIT + 3);
        assert_eq!(quoted("0-3"), "0-3");
        assert_eq!(quoted(&"é".repeat(60)).chars().count(), QUOTE_LIMIT + 3);
    }
}
