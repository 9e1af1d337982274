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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use roxmltree::{Document, Node};

use super::metadata::policy_in_metadata;
use super::{
    CpuFeature, CpuMode, CpuTune, Domain, DomainPolicy, FeaturePolicy, GuestCell, GuestCpu,
    GuestCpuTopology, HugepageBacking, MemNode, MemoryMode, NumaTune,
};
use crate::idset::{IdSet, MAX_ID};
use crate::units::{self, Round};

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

// ---- element and attribute access -------------------------------------

/// Whether `node` is a libvirt element called `name`. libvirt's own elements
/// carry no namespace; a namespaced element of the same local name belongs
/// to someone else.
fn is_libvirt(node: &Node, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

/// The first child called `name`, which is what libvirt reads (`./name[1]`)
/// when an element that may appear once is repeated.
fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| is_libvirt(n, name))
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |n| is_libvirt(n, name))
}

fn text<'a>(node: Node<'a, '_>) -> &'a str {
    node.text().unwrap_or("")
}

fn problem(
    node: Node,
    attribute: Option<&str>,
    value: Option<&str>,
    message: impl Into<String>,
) -> DomainXmlError {
    let pos = node.document().text_pos_at(node.range().start);
    DomainXmlError::Invalid(Box::new(Invalid {
        line: pos.row,
        column: pos.col,
        element: node.tag_name().name().to_string(),
        attribute: attribute.map(str::to_string),
        value: value.map(str::to_string),
        message: message.into(),
    }))
}

/// An error about attribute `attr` of `node`, quoting its current value.
fn attr_problem(node: Node, attr: &str, message: impl Into<String>) -> DomainXmlError {
    problem(node, Some(attr), node.attribute(attr), message)
}

/// An error about the text content of `node`.
fn text_problem(node: Node, message: impl Into<String>) -> DomainXmlError {
    problem(node, None, Some(text(node)), message)
}

fn required_attr<'a>(node: Node<'a, '_>, attr: &str) -> Result<&'a str> {
    node.attribute(attr).ok_or_else(|| {
        problem(
            node,
            Some(attr),
            None,
            format!("missing attribute '{attr}'"),
        )
    })
}

fn required_child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>> {
    child(node, name).ok_or_else(|| problem(node, None, None, format!("missing element <{name}>")))
}

/// Decimal number, surrounding whitespace allowed. Signs are only accepted
/// where the target type is signed.
fn number<T: FromStr>(text: &str) -> Option<T> {
    text.trim().parse().ok()
}

/// Why a text is not a number of the wanted type: digits that overflow it
/// are a number out of range, anything else is no number at all.
fn not_a_number(text: &str) -> &'static str {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        "a number out of range (too large)"
    } else {
        "not a valid number"
    }
}

fn attr_number<T: FromStr>(node: Node, attr: &str) -> Result<Option<T>> {
    node.attribute(attr)
        .map(|v| number(v).ok_or_else(|| attr_problem(node, attr, not_a_number(v))))
        .transpose()
}

fn required_number<T: FromStr>(node: Node, attr: &str) -> Result<T> {
    let value = required_attr(node, attr)?;
    number(value).ok_or_else(|| attr_problem(node, attr, not_a_number(value)))
}

fn text_number<T: FromStr>(node: Node) -> Result<T> {
    number(text(node)).ok_or_else(|| text_problem(node, not_a_number(text(node))))
}

/// A non-empty id list in libvirt syntax. Empty lists are rejected because
/// libvirt rejects them too: pinning to nothing has no meaning.
fn attr_set(node: Node, attr: &str) -> Result<Option<IdSet>> {
    let Some(value) = node.attribute(attr) else {
        return Ok(None);
    };
    let set: IdSet = value
        .parse()
        .map_err(|e| attr_problem(node, attr, format!("{e}")))?;
    if set.is_empty() {
        return Err(attr_problem(node, attr, "the list is empty"));
    }
    Ok(Some(set))
}

fn required_set(node: Node, attr: &str) -> Result<IdSet> {
    required_attr(node, attr)?;
    attr_set(node, attr).map(Option::unwrap_or_default)
}

/// Reads an enumerated attribute through `lookup`, naming the accepted
/// values when the one given is not among them.
fn attr_enum<T>(
    node: Node,
    attr: &str,
    expected: &str,
    lookup: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    node.attribute(attr)
        .map(|v| lookup(v).ok_or_else(|| attr_problem(node, attr, format!("expected {expected}"))))
        .transpose()
}

/// `placement='static|auto'`, as `Some(is_auto)`.
fn placement(node: Node) -> Result<Option<bool>> {
    attr_enum(node, "placement", "'static' or 'auto'", |v| match v {
        "static" => Some(false),
        "auto" => Some(true),
        _ => None,
    })
}

// ---- sizes ------------------------------------------------------------

/// `value` counted in the element's `unit` (KiB by default), in KiB rounded
/// up as libvirt rounds.
fn kib_in_unit(node: Node, value: u64, shown: Option<&str>) -> Result<u64> {
    let unit = node.attribute("unit").unwrap_or("KiB");
    let bytes = units::unit_bytes(unit).ok_or_else(|| {
        attr_problem(
            node,
            "unit",
            format!("unknown unit; expected {}", units::KNOWN_UNITS),
        )
    })?;
    units::kib(value, bytes, Round::Up)
        .filter(|&kib| kib <= MAX_MEMORY_KIB)
        .ok_or_else(|| {
            let msg = format!("{value} {unit} is more than 4 PiB, the most numapin handles");
            match shown {
                Some(attr) => attr_problem(node, attr, msg),
                None => text_problem(node, msg),
            }
        })
}

fn text_kib(node: Node) -> Result<u64> {
    kib_in_unit(node, text_number(node)?, None)
}

fn attr_kib(node: Node, attr: &str) -> Result<u64> {
    kib_in_unit(node, required_number(node, attr)?, Some(attr))
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

// ---- vCPUs and IOThreads -------------------------------------------------

struct Vcpus {
    max: u32,
    current: u32,
    /// Ids of the online vCPUs.
    online: IdSet,
    /// Explicit `placement=`, as `Some(is_auto)`.
    placement: Option<bool>,
    cpuset: Option<IdSet>,
}

fn vcpus(root: Node) -> Result<Vcpus> {
    // libvirt gives a domain without <vcpu> one vCPU.
    let Some(node) = child(root, "vcpu") else {
        return Ok(Vcpus {
            max: 1,
            current: 1,
            online: IdSet::single(0),
            placement: None,
            cpuset: None,
        });
    };
    let max: u32 = text_number(node)?;
    if max == 0 {
        return Err(text_problem(node, "a domain needs at least one vCPU"));
    }
    if max > MAX_VCPUS {
        return Err(text_problem(
            node,
            format!("{max} vCPUs is more than numapin handles ({MAX_VCPUS})"),
        ));
    }
    let current = attr_number(node, "current")?.unwrap_or(max);
    if current == 0 || current > max {
        let msg = format!("current vCPUs must be between 1 and the maximum {max}");
        return Err(attr_problem(node, "current", msg));
    }
    // The per-vCPU list, when present, is the state libvirt really tracks.
    let online = match child(root, "vcpus") {
        Some(list) => enabled_vcpus(list, max)?,
        None => IdSet::first_n(current),
    };
    Ok(Vcpus {
        max,
        current: online.len() as u32,
        online,
        placement: placement(node)?,
        cpuset: attr_set(node, "cpuset")?,
    })
}

/// Ids of the `<vcpus><vcpu id= enabled='yes'/>` entries.
fn enabled_vcpus(list: Node, max: u32) -> Result<IdSet> {
    let mut seen = BTreeSet::new();
    let mut enabled = IdSet::new();
    for node in children(list, "vcpu") {
        let id: u32 = required_number(node, "id")?;
        if id >= max {
            return Err(attr_problem(node, "id", missing_vcpu(id, max)));
        }
        if !seen.insert(id) {
            return Err(attr_problem(
                node,
                "id",
                format!("vCPU {id} is listed twice"),
            ));
        }
        let on = attr_enum(node, "enabled", "'yes' or 'no'", |v| match v {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        })?;
        match on {
            Some(true) => enabled.insert(id),
            Some(false) => {}
            None => {
                return Err(problem(
                    node,
                    Some("enabled"),
                    None,
                    "missing attribute 'enabled'",
                ));
            }
        }
    }
    if enabled.is_empty() {
        return Err(problem(list, None, None, "no vCPU is enabled"));
    }
    Ok(enabled)
}

fn missing_vcpu(id: u32, max: u32) -> String {
    format!("vCPU {id} does not exist (the domain has {max})")
}

/// libvirt's default for `<vcpu placement>`: auto when `<numatune><memory>`
/// says auto and no cpuset is given, static otherwise.
fn vcpu_placement_auto(vcpus: &Vcpus, numatune: Option<Node>) -> Result<bool> {
    if let Some(explicit) = vcpus.placement {
        return Ok(explicit);
    }
    let memory = numatune.and_then(|n| child(n, "memory"));
    let numa_auto = memory.map(placement).transpose()?.flatten() == Some(true);
    Ok(vcpus.cpuset.is_none() && numa_auto)
}

/// IOThread ids, ascending. `<iothreadids>` names ids explicitly; threads
/// that `<iothreads>N` counts beyond those get the lowest free ids, as
/// libvirt assigns them.
fn iothreads(root: Node) -> Result<Vec<u32>> {
    let count = match child(root, "iothreads") {
        Some(node) => {
            let count: u32 = text_number(node)?;
            if count > MAX_IOTHREADS {
                return Err(text_problem(
                    node,
                    format!("{count} IOThreads is more than numapin handles ({MAX_IOTHREADS})"),
                ));
            }
            count
        }
        None => 0,
    };
    let mut ids = BTreeSet::new();
    for node in child(root, "iothreadids")
        .into_iter()
        .flat_map(|n| children(n, "iothread"))
    {
        let id: u32 = required_number(node, "id")?;
        if id == 0 || id > MAX_ID {
            return Err(attr_problem(
                node,
                "id",
                format!("IOThread ids run from 1 to {MAX_ID}"),
            ));
        }
        if !ids.insert(id) {
            return Err(attr_problem(
                node,
                "id",
                format!("IOThread {id} is listed twice"),
            ));
        }
    }
    let mut next = 1;
    while ids.len() < count as usize {
        ids.insert(next);
        next += 1;
    }
    Ok(ids.into_iter().collect())
}

// ---- <cpu> --------------------------------------------------------------

fn guest_cpu(node: Node, vcpus_max: u32) -> Result<GuestCpu> {
    let model = child(node, "model")
        .map(|m| text(m).trim())
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    Ok(GuestCpu {
        mode: cpu_mode(node, model.is_some())?,
        topology: child(node, "topology")
            .map(|t| topology(t, vcpus_max))
            .transpose()?,
        features: children(node, "feature")
            .map(feature)
            .collect::<Result<_>>()?,
        cells: match child(node, "numa") {
            Some(numa) => cells(numa, vcpus_max)?,
            None => Vec::new(),
        },
        model,
    })
}

/// libvirt's default mode is custom, and it prints `mode=` whenever the mode
/// is not custom or a model is named. So a `<cpu>` without `mode=` and
/// without a model (typically only `<topology>`/`<numa>`) means the
/// hypervisor's default CPU, recorded as `None`; with a model it is custom.
fn cpu_mode(node: Node, has_model: bool) -> Result<Option<CpuMode>> {
    let expected = "'custom', 'host-model', 'host-passthrough' or 'maximum'";
    let mode = attr_enum(node, "mode", expected, |v| match v {
        "custom" => Some(CpuMode::Custom),
        "host-model" => Some(CpuMode::HostModel),
        "host-passthrough" => Some(CpuMode::HostPassthrough),
        "maximum" => Some(CpuMode::Maximum),
        _ => None,
    })?;
    Ok(mode.or(has_model.then_some(CpuMode::Custom)))
}

fn topology(node: Node, vcpus_max: u32) -> Result<GuestCpuTopology> {
    let level = |attr: &str, default: Option<u32>| -> Result<u32> {
        let value = match default {
            Some(d) => attr_number(node, attr)?.unwrap_or(d),
            None => required_number(node, attr)?,
        };
        if value == 0 {
            return Err(attr_problem(node, attr, "must be at least 1"));
        }
        Ok(value)
    };
    let t = GuestCpuTopology {
        sockets: level("sockets", None)?,
        dies: level("dies", Some(1))?,
        cores: level("cores", None)?,
        threads: level("threads", None)?,
    };
    // libvirt 10 adds clusters; counting them keeps newer XML valid here.
    let clusters = level("clusters", Some(1))?;
    let product = [t.sockets, t.dies, clusters, t.cores, t.threads]
        .iter()
        .map(|&n| u64::from(n))
        .product::<u64>();
    if product != u64::from(vcpus_max) {
        let msg = format!(
            "sockets={} dies={} cores={} threads={} make {product} vCPUs, but <vcpu> is {vcpus_max}",
            t.sockets, t.dies, t.cores, t.threads
        );
        return Err(problem(node, None, None, msg));
    }
    Ok(t)
}

fn feature(node: Node) -> Result<CpuFeature> {
    let name = required_attr(node, "name")?.trim();
    if name.is_empty() {
        return Err(attr_problem(node, "name", "the feature name is empty"));
    }
    let expected = "'force', 'require', 'optional', 'disable' or 'forbid'";
    let policy = attr_enum(node, "policy", expected, |v| match v {
        "force" => Some(FeaturePolicy::Force),
        "require" => Some(FeaturePolicy::Require),
        "optional" => Some(FeaturePolicy::Optional),
        "disable" => Some(FeaturePolicy::Disable),
        "forbid" => Some(FeaturePolicy::Forbid),
        _ => None,
    })?;
    // A guest CPU feature without a policy is required (libvirt's default).
    let policy = policy.unwrap_or(FeaturePolicy::Require);
    Ok(CpuFeature {
        name: name.to_string(),
        policy,
    })
}

/// Guest NUMA cells, ascending by id. libvirt requires ids 0..N-1, each
/// once; `id=` may be left out, giving the cell its position.
fn cells(numa: Node, vcpus_max: u32) -> Result<Vec<GuestCell>> {
    let nodes: Vec<Node> = children(numa, "cell").collect();
    let count = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let mut cells: BTreeMap<u32, GuestCell> = BTreeMap::new();
    let mut placed = IdSet::new();
    for (position, node) in (0..count).zip(nodes) {
        let id = attr_number(node, "id")?.unwrap_or(position);
        if id >= count {
            let msg = format!("cell ids must run from 0 to {} ({count} cells)", count - 1);
            return Err(attr_problem(node, "id", msg));
        }
        if cells.contains_key(&id) {
            return Err(attr_problem(
                node,
                "id",
                format!("cell {id} is defined twice"),
            ));
        }
        let cpus = cell_cpus(node, vcpus_max, &placed)?;
        placed.union_with(&cpus);
        let cell = GuestCell {
            id,
            cpus,
            memory_kib: attr_kib(node, "memory")?,
            distances: distances(node, id, count)?,
        };
        cells.insert(id, cell);
    }
    Ok(cells.into_values().collect())
}

/// A cell's vCPUs. Since libvirt 6.6 `cpus=` may be left out for a
/// memory-only (CPU-less) cell; when given it must name existing vCPUs that
/// no earlier cell holds.
fn cell_cpus(node: Node, vcpus_max: u32, placed: &IdSet) -> Result<IdSet> {
    let Some(cpus) = attr_set(node, "cpus")? else {
        return Ok(IdSet::new());
    };
    if let Some(last) = cpus.last()
        && last >= vcpus_max
    {
        return Err(attr_problem(node, "cpus", missing_vcpu(last, vcpus_max)));
    }
    if let Some(shared) = cpus.intersection(placed).first() {
        return Err(attr_problem(
            node,
            "cpus",
            format!("vCPU {shared} is already in another cell"),
        ));
    }
    Ok(cpus)
}

/// `<distances><sibling id= value=/>`: ids of existing cells, values in
/// the ACPI SLIT range libvirt accepts (10 local ..= 255 unreachable).
fn distances(cell: Node, cell_id: u32, count: u32) -> Result<BTreeMap<u32, u32>> {
    let mut map = BTreeMap::new();
    let siblings = child(cell, "distances")
        .into_iter()
        .flat_map(|d| children(d, "sibling"));
    for node in siblings {
        let id: u32 = required_number(node, "id")?;
        if id >= count {
            return Err(attr_problem(
                node,
                "id",
                format!("cell {id} does not exist (the domain has {count})"),
            ));
        }
        let value: u32 = required_number(node, "value")?;
        if !(10..=255).contains(&value) || (id == cell_id) != (value == 10) {
            let msg = "distance must be 10 to the cell itself and 11 to 255 to others";
            return Err(attr_problem(node, "value", msg));
        }
        if map.insert(id, value).is_some() {
            return Err(attr_problem(
                node,
                "id",
                format!("distance to cell {id} is given twice"),
            ));
        }
    }
    Ok(map)
}

// ---- <cputune> ----------------------------------------------------------

fn cputune(node: Node, vcpus_max: u32, iothreads: &[u32]) -> Result<CpuTune> {
    let mut tune = CpuTune::default();
    for pin in children(node, "vcpupin") {
        let vcpu: u32 = required_number(pin, "vcpu")?;
        if vcpu >= vcpus_max {
            return Err(attr_problem(pin, "vcpu", missing_vcpu(vcpu, vcpus_max)));
        }
        if tune
            .vcpupin
            .insert(vcpu, required_set(pin, "cpuset")?)
            .is_some()
        {
            return Err(attr_problem(
                pin,
                "vcpu",
                format!("vCPU {vcpu} is pinned twice"),
            ));
        }
    }
    let mut emulator = children(node, "emulatorpin");
    if let Some(pin) = emulator.next() {
        tune.emulatorpin = Some(required_set(pin, "cpuset")?);
    }
    if let Some(extra) = emulator.next() {
        return Err(problem(
            extra,
            None,
            None,
            "only one <emulatorpin> is allowed",
        ));
    }
    for pin in children(node, "iothreadpin") {
        let id: u32 = required_number(pin, "iothread")?;
        if !iothreads.contains(&id) {
            let known: IdSet = iothreads.iter().copied().collect();
            let msg = match known.is_empty() {
                true => format!("IOThread {id} does not exist (the domain has none)"),
                false => format!("IOThread {id} does not exist (the domain has {known})"),
            };
            return Err(attr_problem(pin, "iothread", msg));
        }
        if tune
            .iothreadpin
            .insert(id, required_set(pin, "cpuset")?)
            .is_some()
        {
            return Err(attr_problem(
                pin,
                "iothread",
                format!("IOThread {id} is pinned twice"),
            ));
        }
    }
    Ok(tune)
}

// ---- <numatune> ---------------------------------------------------------

fn memory_mode(node: Node) -> Result<MemoryMode> {
    let expected = "'strict', 'preferred', 'interleave' or 'restrictive'";
    let mode = attr_enum(node, "mode", expected, |v| match v {
        "strict" => Some(MemoryMode::Strict),
        "preferred" => Some(MemoryMode::Preferred),
        "interleave" => Some(MemoryMode::Interleave),
        "restrictive" => Some(MemoryMode::Restrictive),
        _ => None,
    })?;
    Ok(mode.unwrap_or(MemoryMode::Strict))
}

fn numatune(node: Node, vcpu_placement_auto: bool, cell_count: usize) -> Result<NumaTune> {
    let mut tune = NumaTune {
        mode: MemoryMode::Strict,
        nodeset: None,
        placement_auto: false,
        memnodes: Vec::new(),
    };
    if let Some(memory) = child(node, "memory") {
        tune.mode = memory_mode(memory)?;
        tune.nodeset = attr_set(memory, "nodeset")?;
        let placement = placement(memory)?;
        if placement == Some(false) && tune.nodeset.is_none() {
            return Err(attr_problem(
                memory,
                "placement",
                "static placement needs a nodeset",
            ));
        }
        // libvirt: static when a nodeset is given, else <vcpu>'s placement.
        tune.placement_auto = placement.unwrap_or(tune.nodeset.is_none() && vcpu_placement_auto);
    }
    for memnode in children(node, "memnode") {
        let entry = memnode_entry(memnode, cell_count)?;
        if tune.memnodes.iter().any(|m| m.cellid == entry.cellid) {
            let msg = format!("cell {} has more than one <memnode>", entry.cellid);
            return Err(attr_problem(memnode, "cellid", msg));
        }
        tune.memnodes.push(entry);
    }
    Ok(tune)
}

fn memnode_entry(node: Node, cell_count: usize) -> Result<MemNode> {
    let cellid: u32 = required_number(node, "cellid")?;
    if cell_count == 0 {
        return Err(attr_problem(
            node,
            "cellid",
            "the domain has no guest NUMA cells (<cpu><numa>)",
        ));
    }
    if cellid as usize >= cell_count {
        let msg = format!("cell {cellid} does not exist (the domain has {cell_count})");
        return Err(attr_problem(node, "cellid", msg));
    }
    Ok(MemNode {
        cellid,
        mode: memory_mode(node)?,
        nodeset: required_set(node, "nodeset")?,
    })
}

// ---- memory -------------------------------------------------------------

/// `(<memory>, <currentMemory>)` in KiB.
fn memory(root: Node, cells: &[GuestCell]) -> Result<(u64, u64)> {
    let max = match child(root, "memory") {
        Some(node) => text_kib(node)?,
        // libvirt accepts a domain sized by its NUMA cells alone.
        None if !cells.is_empty() => cells
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(c.memory_kib)),
        None => return Err(problem(root, None, None, "missing element <memory>")),
    };
    if max == 0 {
        let node = child(root, "memory").unwrap_or(root);
        return Err(text_problem(node, "the domain has no memory"));
    }
    let current = match child(root, "currentMemory") {
        Some(node) => text_kib(node)?,
        None => max,
    };
    // libvirt treats a balloon of 0 or above the maximum as the maximum.
    let current = if current == 0 || current > max {
        max
    } else {
        current
    };
    Ok((max, current))
}

fn hugepages(root: Node, cell_count: usize) -> Result<Vec<HugepageBacking>> {
    let Some(node) = child(root, "memoryBacking").and_then(|m| child(m, "hugepages")) else {
        return Ok(Vec::new());
    };
    let pages: Vec<HugepageBacking> = children(node, "page")
        .map(|p| page(p, cell_count))
        .collect::<Result<_>>()?;
    if pages.is_empty() {
        return Ok(vec![HugepageBacking {
            size_kib: None,
            nodeset: None,
        }]);
    }
    Ok(pages)
}

fn page(node: Node, cell_count: usize) -> Result<HugepageBacking> {
    let size_kib = attr_kib(node, "size")?;
    if size_kib == 0 {
        return Err(attr_problem(node, "size", "a page size of zero"));
    }
    let nodeset = attr_set(node, "nodeset")?;
    // A domain without <numa> has a single implicit cell 0, as in libvirt.
    let cells = cell_count.max(1);
    if let Some(last) = nodeset.as_ref().and_then(IdSet::last)
        && last as usize >= cells
    {
        let msg = format!("guest cell {last} does not exist (the domain has {cells})");
        return Err(attr_problem(node, "nodeset", msg));
    }
    Ok(HugepageBacking {
        size_kib: Some(size_kib),
        nodeset,
    })
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
