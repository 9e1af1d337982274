//! Reads the topology from a sysfs tree under an injectable root.
//!
//! `root` is `/` in production and a captured or synthesised tree in tests.
//! Files read, all relative to `root`:
//! - `sys/devices/system/cpu/{online,present}`: present minus online is the
//!   offline set;
//! - `sys/devices/system/cpu/cpuN/topology/{physical_package_id,die_id,
//!   core_id,thread_siblings_list}` for online CPUs (offline CPUs have no
//!   `topology` directory);
//! - `sys/devices/system/node/nodeN/{cpulist,meminfo,distance}` and
//!   `hugepages/hugepages-<size>kB/{nr_hugepages,free_hugepages}`;
//! - `sys/devices/system/node/online`, the order of the `distance` columns;
//! - without any node directory (a kernel built without NUMA),
//!   `proc/meminfo` and `sys/kernel/mm/hugepages` for the one implicit node.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Cpu, HostTopology, PagePool, RawNode, RawTopology, TopologyError, host_kind};
use crate::exit::Exit;
use crate::idset::{CpuSet, IdSet, MAX_ID, NodeSet};
use crate::input::{self, InputError};

const CPU_DIR: &str = "sys/devices/system/cpu";
const NODE_DIR: &str = "sys/devices/system/node";
/// Where a kernel without NUMA keeps the machine-wide hugepage pools.
const GLOBAL_HUGEPAGES_DIR: &str = "sys/kernel/mm/hugepages";
/// Longest excerpt of a bad file quoted in an error.
const QUOTE_LIMIT: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("listing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {content:?} is not {expected}")]
    BadContent {
        path: PathBuf,
        /// The offending content, cut to a readable length.
        content: String,
        expected: &'static str,
    },
    #[error("{path}: has {found} entries but {expected} nodes are online")]
    DistanceCount {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("CPU {cpu} is online but no node's cpulist names it")]
    CpuWithoutNode { cpu: u32 },
    #[error("inconsistent sysfs topology: {0}")]
    Topology(#[from] TopologyError),
}

impl SysfsError {
    /// The exit class: a file that is missing or no file (66) or cannot be
    /// read (74), as for any input; content that is wrong is bad data (65).
    pub fn exit(&self) -> Exit {
        match self {
            SysfsError::Input(e) => e.exit(),
            SysfsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Exit::NoInput
            }
            SysfsError::Io { .. } => Exit::IoErr,
            _ => Exit::DataErr,
        }
    }
}

/// Memory of one node as the daemon observes it over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMemory {
    pub node: u32,
    pub total_mib: u64,
    /// Free plus inactive page cache (reclaimed first by the kernel).
    pub free_mib: u64,
    /// Ascending by page size.
    pub hugepages: Vec<HugepageUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugepageUsage {
    pub size_kib: u64,
    pub total: u64,
    pub free: u64,
}

/// Reads the host topology from the sysfs tree under `root`.
pub fn read(root: &Path) -> Result<HostTopology, SysfsError> {
    let cpu_dir = root.join(CPU_DIR);
    let online: CpuSet = read_parsed(&cpu_dir.join("online"), "a CPU list")?;
    let present = match read_optional(&cpu_dir.join("present"))? {
        Some(text) => parse_cpulist(&cpu_dir.join("present"), &text)?,
        None => online.clone(),
    };
    let node_ids = node_ids(root)?;
    let mut raw = RawTopology {
        offline_cpus: present.difference(&online),
        kind: host_kind::detect(root),
        virtualization_extensions: host_kind::cpu_has_virtualization_extensions(root),
        ..Default::default()
    };
    let node_of_cpu = if node_ids.is_empty() {
        raw.nodes.push(RawNode {
            id: 0,
            memory_mib: meminfo_kib(&root.join("proc/meminfo"), "MemTotal")? / 1024,
            hugepages: pools(&read_hugepages(&root.join(GLOBAL_HUGEPAGES_DIR), false)?),
            ..Default::default()
        });
        online.iter().map(|cpu| (cpu, 0)).collect()
    } else {
        read_nodes(root, &node_ids, &mut raw)?
    };
    for id in online.iter() {
        let node = *node_of_cpu
            .get(&id)
            .ok_or(SysfsError::CpuWithoutNode { cpu: id })?;
        raw.cpus.push(read_cpu(&cpu_dir, id, node)?);
    }
    Ok(HostTopology::from_raw(raw)?)
}

/// Current total and free memory and hugepages of every node.
pub fn read_node_memory(root: &Path) -> Result<Vec<NodeMemory>, SysfsError> {
    let node_ids = node_ids(root)?;
    if node_ids.is_empty() {
        let meminfo = root.join("proc/meminfo");
        return Ok(vec![NodeMemory {
            node: 0,
            total_mib: meminfo_kib(&meminfo, "MemTotal")? / 1024,
            free_mib: available_kib(&meminfo)? / 1024,
            hugepages: read_hugepages(&root.join(GLOBAL_HUGEPAGES_DIR), true)?,
        }]);
    }
    node_ids
        .iter()
        .map(|id| {
            let dir = node_dir(root, id);
            let meminfo = dir.join("meminfo");
            Ok(NodeMemory {
                node: id,
                total_mib: meminfo_kib(&meminfo, "MemTotal")? / 1024,
                free_mib: available_kib(&meminfo)? / 1024,
                hugepages: read_hugepages(&dir.join("hugepages"), true)?,
            })
        })
        .collect()
}

fn node_dir(root: &Path, id: u32) -> PathBuf {
    root.join(NODE_DIR).join(format!("node{id}"))
}

/// Ids of the `nodeN` directories; empty when the kernel has no NUMA.
pub(crate) fn node_ids(root: &Path) -> Result<NodeSet, SysfsError> {
    let dir = root.join(NODE_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IdSet::new()),
        Err(source) => return Err(SysfsError::Io { path: dir, source }),
    };
    let mut ids = IdSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&id| id <= MAX_ID);
        if let Some(id) = id.filter(|_| entry.path().is_dir()) {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Fills `raw.nodes` and returns which node each CPU belongs to.
fn read_nodes(
    root: &Path,
    node_ids: &NodeSet,
    raw: &mut RawTopology,
) -> Result<BTreeMap<u32, u32>, SysfsError> {
    let columns = distance_columns(root, node_ids)?;
    let mut node_of_cpu = BTreeMap::new();
    for id in node_ids.iter() {
        let dir = node_dir(root, id);
        let cpus = match read_optional(&dir.join("cpulist"))? {
            Some(text) => parse_cpulist(&dir.join("cpulist"), &text)?,
            None => IdSet::new(),
        };
        for cpu in cpus.iter() {
            node_of_cpu.entry(cpu).or_insert(id);
        }
        raw.nodes.push(RawNode {
            id,
            memory_mib: meminfo_kib(&dir.join("meminfo"), "MemTotal")? / 1024,
            hugepages: pools(&read_hugepages(&dir.join("hugepages"), false)?),
            distances: read_distances(&dir.join("distance"), &columns)?,
        });
    }
    Ok(node_of_cpu)
}

/// The kernel prints a node's distances to every online node in ascending
/// id order; `node/online` names them, falling back to the directories.
fn distance_columns(root: &Path, node_ids: &NodeSet) -> Result<Vec<u32>, SysfsError> {
    let path = root.join(NODE_DIR).join("online");
    Ok(match read_optional(&path)? {
        Some(text) => parse_cpulist(&path, &text)?.iter().collect(),
        None => node_ids.iter().collect(),
    })
}

/// A missing `distance` file leaves the defaults to `from_raw`.
fn read_distances(path: &Path, columns: &[u32]) -> Result<BTreeMap<u32, u32>, SysfsError> {
    let Some(text) = read_optional(path)? else {
        return Ok(BTreeMap::new());
    };
    let values = text
        .split_whitespace()
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| bad(path, v, "a NUMA distance"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if values.len() != columns.len() {
        return Err(SysfsError::DistanceCount {
            path: path.to_path_buf(),
            found: values.len(),
            expected: columns.len(),
        });
    }
    Ok(columns.iter().copied().zip(values).collect())
}

fn read_cpu(cpu_dir: &Path, id: u32, node: u32) -> Result<Cpu, SysfsError> {
    let dir = cpu_dir.join(format!("cpu{id}/topology"));
    let siblings_path = dir.join("thread_siblings_list");
    let siblings = match read_optional(&siblings_path)? {
        Some(text) => parse_cpulist(&siblings_path, &text)?,
        None => IdSet::new(),
    };
    Ok(Cpu {
        id,
        node,
        socket: topology_id(&dir.join("physical_package_id"))?,
        die: topology_id(&dir.join("die_id"))?,
        core: topology_id(&dir.join("core_id"))?,
        siblings,
    })
}

/// A topology id; absent (old kernels have no `die_id`) or `-1` (the
/// architecture does not know) both mean unknown.
fn topology_id(path: &Path) -> Result<Option<u32>, SysfsError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let t = text.trim();
    if t == "-1" {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| bad(path, &text, "a topology id"))
}

/// Pools of every `hugepages-<size>kB` directory under `dir`, ascending by
/// size; `with_free` also reads `free_hugepages`.
fn read_hugepages(dir: &Path, with_free: bool) -> Result<Vec<HugepageUsage>, SysfsError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(size) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
        else {
            continue;
        };
        let path = entry.path();
        let size_kib = size
            .parse()
            .map_err(|_| bad(&path, size, "a page size in kB"))?;
        let total = read_parsed(&path.join("nr_hugepages"), "a page count")?;
        let free = if with_free {
            read_parsed(&path.join("free_hugepages"), "a page count")?
        } else {
            0
        };
        out.push(HugepageUsage {
            size_kib,
            total,
            free,
        });
    }
    out.sort_by_key(|h| h.size_kib);
    Ok(out)
}

fn pools(usage: &[HugepageUsage]) -> Vec<PagePool> {
    usage
        .iter()
        .map(|h| PagePool {
            size_kib: h.size_kib,
            total: h.total,
        })
        .collect()
}

/// The kB value of `key` in a meminfo file: `proc/meminfo` lines read
/// `MemTotal:  24 kB`, node lines `Node 0 MemTotal:  24 kB`.
/// Memory a new guest can take on a node: free pages plus the inactive
/// page cache, which the kernel reclaims first (a node full of cold cache
/// is not full). Kernels without the inactive-file line count free only.
fn available_kib(path: &Path) -> Result<u64, SysfsError> {
    let free = meminfo_kib(path, "MemFree")?;
    let cache = meminfo_kib(path, "Inactive(file)").unwrap_or(0);
    Ok(free.saturating_add(cache))
}

fn meminfo_kib(path: &Path, key: &str) -> Result<u64, SysfsError> {
    let text = read_text(path)?;
    let wanted = format!("{key}:");
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.by_ref().any(|w| w == wanted) {
            let value = words.next().unwrap_or("");
            return value.parse().map_err(|_| bad(path, line, "a size in kB"));
        }
    }
    Err(bad(path, &text, "a meminfo file with a value for this key"))
}

fn read_parsed<T: std::str::FromStr>(path: &Path, expected: &'static str) -> Result<T, SysfsError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| bad(path, &text, expected))
}

fn parse_cpulist(path: &Path, text: &str) -> Result<IdSet, SysfsError> {
    text.parse()
        .map_err(|_| bad(path, text, "a CPU or node list"))
}

/// Reads a file as text; sysfs files are ASCII, but a damaged tree must not
/// turn into a panic, so invalid bytes become U+FFFD and fail parsing.
/// `proc/meminfo` is read the same way, under the same cap.
fn read_text(path: &Path) -> Result<String, SysfsError> {
    Ok(input::read_lossy(path, input::SYSFS)?)
}

fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match read_text(path) {
        Ok(text) => Ok(Some(text)),
        Err(SysfsError::Input(e)) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn bad(path: &Path, content: &str, expected: &'static str) -> SysfsError {
    let content = content.trim();
    let content = match content.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &content[..cut]),
        None => content.to_string(),
    };
    SysfsError::BadContent {
        path: path.to_path_buf(),
        content,
        expected,
    }
}
