//! Reads libvirt's capabilities XML (`virsh capabilities`).
//!
//! Only `<host>` matters: `<host><cpu>` says whether the host is itself a
//! virtual machine and whether it offers vmx/svm, `<host><topology><cells>`
//! holds the NUMA cells. Everything else (`<guest>`, caches, secmodels) is
//! ignored, so newer libvirt releases adding elements do not break parsing.
//!
//! What libvirt prints, and what this reader therefore accepts:
//! - libvirt 9 lists only online CPUs in a cell and gives every one of them
//!   `socket_id`, `die_id`, `core_id` and `siblings`. A cell without CPUs
//!   (CXL or HBM memory) has `<cpus num='0'/>`; a cell without memory has no
//!   `<memory>` element.
//! - Older libvirt printed an offline CPU as a bare `<cpu id='N'/>` next to
//!   fully described ones, while libvirt's test data and drivers that cannot
//!   read the topology print every CPU bare. So a bare `<cpu>` is offline only
//!   when some other CPU of the document carries topology attributes.
//! - A document without `<host><topology>` is rejected rather than guessed:
//!   inventing contiguous CPU ids from `<cpu><topology sockets cores threads>`
//!   would pin guests to CPUs that may not exist or be offline, and a node
//!   with 0 MiB would make every memory placement fail for a confusing
//!   reason. libvirt 9 itself always prints a (possibly faked) single cell,
//!   so this only happens with foreign or truncated input, and the sysfs
//!   reader ([`super::sysfs::read`]) is the better source there.

use roxmltree::{Document, Node as XmlNode};

use super::{
    Cpu, HostKind, HostTopology, LOCAL_DISTANCE, MAX_DISTANCE, PagePool, RawNode, RawTopology,
    TopologyError,
};
use crate::idset::{CpuSet, IdSet, MAX_ID};
use crate::units::{self, Round};

/// Page sizes up to this are base pages (4 KiB on x86, 64 KiB on some
/// aarch64 and ppc64 kernels), not hugepage pools.
const MAX_BASE_PAGE_KIB: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum CapabilitiesError {
    #[error("not well-formed XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("line {line}:{column}: the root element is <{found}>, expected <capabilities>")]
    NotCapabilities {
        line: u32,
        column: u32,
        found: String,
    },
    #[error("<capabilities> has no <host> element")]
    NoHost,
    #[error(
        "<host> has no <topology><cells>: libvirt did not report NUMA cells; read the topology from sysfs instead"
    )]
    NoTopology,
    #[error("line {line}:{column}: <{element}> has no {attribute} attribute")]
    MissingAttribute {
        line: u32,
        column: u32,
        element: String,
        attribute: &'static str,
    },
    /// `context` shows the element as written, e.g. `<cpu id='x'>` for an
    /// attribute or `<memory unit='KiB'>` for element text.
    #[error("line {line}:{column}: {context}: {value:?} is not {expected}")]
    BadValue {
        line: u32,
        column: u32,
        context: String,
        value: String,
        expected: &'static str,
    },
    /// A value that parses but cannot be right; `context` as in `BadValue`.
    #[error("line {line}:{column}: {context}: {message}")]
    Invalid {
        line: u32,
        column: u32,
        context: String,
        message: String,
    },
    #[error("inconsistent capabilities: {0}")]
    Topology(#[from] TopologyError),
}

/// What `<host><cpu>` says about the host processor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCpu {
    pub arch: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    /// `<feature name=..>` entries: flags beyond those the model implies.
    pub features: Vec<String>,
}

impl HostCpu {
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// The CPUID `hypervisor` bit is x86's way of saying "you run in a VM";
    /// other architectures do not expose it here, so without it and off x86
    /// the document cannot tell.
    pub fn host_kind(&self) -> HostKind {
        if self.has_feature("hypervisor") {
            return HostKind::Virtual { hypervisor: None };
        }
        let x86 = matches!(self.arch.as_deref(), Some("x86_64" | "i686"));
        if x86 || !self.features.is_empty() {
            HostKind::BareMetal
        } else {
            HostKind::Unknown
        }
    }

    pub fn virtualization_extensions(&self) -> bool {
        self.has_feature("vmx") || self.has_feature("svm")
    }
}

/// Parses `virsh capabilities` output into the host topology.
pub fn parse(xml: &str) -> Result<HostTopology, CapabilitiesError> {
    let doc = Document::parse(xml)?;
    let host = host_element(&doc)?;
    let cpu = read_host_cpu(host);
    let cells = child(host, "topology")
        .and_then(|t| child(t, "cells"))
        .ok_or(CapabilitiesError::NoTopology)?;
    let mut raw = RawTopology {
        kind: cpu.host_kind(),
        virtualization_extensions: cpu.virtualization_extensions(),
        arch: cpu.arch.clone(),
        ..Default::default()
    };
    let offline_marked_bare = cells
        .descendants()
        .filter(|n| n.has_tag_name("cpu"))
        .any(has_topology_attributes);
    let mut seen = Seen::default();
    for cell in children(cells, "cell") {
        let id = required_id(cell, "a NUMA node id")?;
        if seen.cells.contains(id) {
            return Err(invalid(cell, "id", format!("node {id} is listed twice")));
        }
        seen.cells.insert(id);
    }
    for cell in children(cells, "cell") {
        read_cell(cell, offline_marked_bare, &mut seen, &mut raw)?;
    }
    Ok(HostTopology::from_raw(raw)?)
}

/// Parses only `<host><cpu>`: arch, vendor, model and features.
pub fn host_cpu(xml: &str) -> Result<HostCpu, CapabilitiesError> {
    let doc = Document::parse(xml)?;
    Ok(read_host_cpu(host_element(&doc)?))
}

fn host_element<'a, 'i>(doc: &'a Document<'i>) -> Result<XmlNode<'a, 'i>, CapabilitiesError> {
    let root = doc.root_element();
    if !root.has_tag_name("capabilities") {
        let (line, column) = position(root);
        return Err(CapabilitiesError::NotCapabilities {
            line,
            column,
            found: root.tag_name().name().to_string(),
        });
    }
    child(root, "host").ok_or(CapabilitiesError::NoHost)
}

fn read_host_cpu(host: XmlNode) -> HostCpu {
    let Some(cpu) = child(host, "cpu") else {
        return HostCpu::default();
    };
    let text_of = |name| {
        child(cpu, name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
    };
    HostCpu {
        arch: text_of("arch"),
        vendor: text_of("vendor"),
        model: text_of("model"),
        features: children(cpu, "feature")
            .filter_map(|f| f.attribute("name"))
            .map(str::to_string)
            .collect(),
    }
}

/// Ids met so far, so a duplicate is reported where it is written.
#[derive(Default)]
struct Seen {
    cells: IdSet,
    /// CPU id -> the cell that listed it first.
    cpus: std::collections::HashMap<u32, u32>,
}

fn read_cell(
    cell: XmlNode,
    offline_marked_bare: bool,
    seen: &mut Seen,
    raw: &mut RawTopology,
) -> Result<(), CapabilitiesError> {
    let id = required_id(cell, "a NUMA node id")?;
    let mut node = RawNode {
        id,
        ..Default::default()
    };
    if let Some(memory) = child(cell, "memory") {
        node.memory_mib = memory_kib(memory)? / 1024;
    }
    node.hugepages = read_pools(cell)?;
    if let Some(distances) = child(cell, "distances") {
        for sibling in children(distances, "sibling") {
            let to = required_u32(sibling, "id", "a NUMA node id")?;
            let value = required_u32(sibling, "value", "a NUMA distance")?;
            // Checked here rather than left to `from_raw`, which would drop
            // a distance to a missing node and could not say where it is.
            if !seen.cells.contains(to) {
                let msg = format!("distance to node {to}, which no <cell> defines");
                return Err(invalid(sibling, "id", msg));
            }
            if !(LOCAL_DISTANCE..=MAX_DISTANCE).contains(&value) {
                let msg = format!(
                    "distance {value} from node {id} to node {to} is outside {LOCAL_DISTANCE}-{MAX_DISTANCE}"
                );
                return Err(invalid(sibling, "value", msg));
            }
            node.distances.insert(to, value);
        }
    }
    raw.nodes.push(node);
    if let Some(cpus) = child(cell, "cpus") {
        for cpu in children(cpus, "cpu") {
            read_cpu(cpu, id, offline_marked_bare, seen, raw)?;
        }
    }
    Ok(())
}

/// Hugepage pools of a cell; the smallest listed size is skipped when it is
/// a base page, because libvirt always lists the base page first.
fn read_pools(cell: XmlNode) -> Result<Vec<PagePool>, CapabilitiesError> {
    let mut pools = Vec::new();
    for pages in children(cell, "pages") {
        let size = required_u64(pages, "size", "a page size")?;
        let unit = pages.attribute("unit").unwrap_or("KiB");
        let size_kib = to_kib(size, unit).ok_or_else(|| bad_unit(pages, size))?;
        let total = text_u64(pages, "a page count")?;
        // The pool's size must be countable: 2^44 pages of 1 GiB would
        // otherwise wrap to 0 KiB wherever pools are added up.
        if size_kib.checked_mul(total).is_none() {
            let msg =
                format!("{total} pages of {size_kib} KiB is more memory than numapin can count");
            return Err(invalid(pages, "size", msg));
        }
        pools.push(PagePool { size_kib, total });
    }
    let smallest = pools.iter().map(|p| p.size_kib).min();
    if let Some(base) = smallest.filter(|&s| s <= MAX_BASE_PAGE_KIB) {
        pools.retain(|p| p.size_kib != base);
    }
    Ok(pools)
}

fn read_cpu(
    cpu: XmlNode,
    node: u32,
    offline_marked_bare: bool,
    seen: &mut Seen,
    raw: &mut RawTopology,
) -> Result<(), CapabilitiesError> {
    let id = required_id(cpu, "a CPU id")?;
    if let Some(first) = seen.cpus.insert(id, node) {
        let msg = format!("CPU {id} is listed twice (first in cell {first})");
        return Err(invalid(cpu, "id", msg));
    }
    if offline_marked_bare && !has_topology_attributes(cpu) {
        raw.offline_cpus.insert(id);
        return Ok(());
    }
    let siblings = match cpu.attribute("siblings") {
        Some(text) => text
            .parse::<CpuSet>()
            .map_err(|e| invalid(cpu, "siblings", format!("not a CPU list: {e}")))?,
        None => IdSet::new(),
    };
    raw.cpus.push(Cpu {
        id,
        node,
        socket: optional_u32(cpu, "socket_id", "a socket id")?,
        die: optional_u32(cpu, "die_id", "a die id")?,
        core: optional_u32(cpu, "core_id", "a core id")?,
        siblings,
    });
    Ok(())
}

fn has_topology_attributes(cpu: XmlNode) -> bool {
    ["socket_id", "core_id", "siblings"]
        .iter()
        .any(|a| cpu.has_attribute(*a))
}

/// A `<memory unit=..>` amount in KiB.
fn memory_kib(memory: XmlNode) -> Result<u64, CapabilitiesError> {
    let value = text_u64(memory, "a memory size")?;
    let unit = memory.attribute("unit").unwrap_or("KiB");
    to_kib(value, unit).ok_or_else(|| bad_unit(memory, value))
}

/// An unknown unit names the known ones; a known one whose amount does not
/// fit says so.
fn bad_unit(node: XmlNode, value: u64) -> CapabilitiesError {
    let unit = node.attribute("unit").unwrap_or("KiB");
    if units::unit_bytes(unit).is_none() {
        return bad_attribute(node, "unit", units::KNOWN_UNITS);
    }
    invalid(
        node,
        "unit",
        format!("{value} {unit} is more than numapin can count"),
    )
}

fn invalid(node: XmlNode, attribute: &'static str, message: String) -> CapabilitiesError {
    let (line, column) = position(node);
    let value = node.attribute(attribute).unwrap_or("");
    CapabilitiesError::Invalid {
        line,
        column,
        context: format!("<{} {attribute}='{value}'>", node.tag_name().name()),
        message,
    }
}

/// Converts `value` in libvirt's `unit` to KiB, rounding down (a capacity
/// is never overstated); `None` for an unknown unit or a result beyond u64.
pub(crate) fn to_kib(value: u64, unit: &str) -> Option<u64> {
    units::kib(value, units::unit_bytes(unit)?, Round::Down)
}

fn child<'a, 'i>(node: XmlNode<'a, 'i>, name: &str) -> Option<XmlNode<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn children<'a, 'i: 'a>(
    node: XmlNode<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = XmlNode<'a, 'i>> + 'a {
    node.children().filter(move |n| n.has_tag_name(name))
}

fn position(node: XmlNode) -> (u32, u32) {
    let pos = node.document().text_pos_at(node.range().start);
    (pos.row, pos.col)
}

fn required_u32(
    node: XmlNode,
    attribute: &'static str,
    expected: &'static str,
) -> Result<u32, CapabilitiesError> {
    optional_u32(node, attribute, expected)?.ok_or_else(|| missing(node, attribute))
}

/// An `id` attribute of a CPU or cell. Capped at [`MAX_ID`] like every id
/// set, so that a stray `id='4000000000'` cannot make the bitmaps of
/// `from_raw` allocate half a gigabyte.
fn required_id(node: XmlNode, expected: &'static str) -> Result<u32, CapabilitiesError> {
    let id = required_u32(node, "id", expected)?;
    if id > MAX_ID {
        return Err(bad_attribute(node, "id", expected));
    }
    Ok(id)
}

fn required_u64(
    node: XmlNode,
    attribute: &'static str,
    expected: &'static str,
) -> Result<u64, CapabilitiesError> {
    let text = node
        .attribute(attribute)
        .ok_or_else(|| missing(node, attribute))?;
    number(text).ok_or_else(|| bad_attribute(node, attribute, expected))
}

fn optional_u32(
    node: XmlNode,
    attribute: &'static str,
    expected: &'static str,
) -> Result<Option<u32>, CapabilitiesError> {
    node.attribute(attribute)
        .map(|text| {
            number(text)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_attribute(node, attribute, expected))
        })
        .transpose()
}

fn text_u64(node: XmlNode, expected: &'static str) -> Result<u64, CapabilitiesError> {
    let text = node.text().unwrap_or("");
    number(text).ok_or_else(|| {
        let (line, column) = position(node);
        CapabilitiesError::BadValue {
            line,
            column,
            context: element_as_written(node),
            value: text.to_string(),
            expected,
        }
    })
}

/// A plain decimal number; unlike `str::parse` this refuses a sign.
fn number(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn missing(node: XmlNode, attribute: &'static str) -> CapabilitiesError {
    let (line, column) = position(node);
    CapabilitiesError::MissingAttribute {
        line,
        column,
        element: node.tag_name().name().to_string(),
        attribute,
    }
}

fn bad_attribute(
    node: XmlNode,
    attribute: &'static str,
    expected: &'static str,
) -> CapabilitiesError {
    let (line, column) = position(node);
    let value = node.attribute(attribute).unwrap_or("").to_string();
    CapabilitiesError::BadValue {
        line,
        column,
        context: format!("<{} {attribute}='{value}'>", node.tag_name().name()),
        value,
        expected,
    }
}

/// The start tag with all its attributes, for errors about element text.
fn element_as_written(node: XmlNode) -> String {
    let mut out = format!("<{}", node.tag_name().name());
    for a in node.attributes() {
        out.push_str(&format!(" {}='{}'", a.name(), a.value()));
    }
    out.push('>');
    out
}

#[cfg(test)]
mod tests;
