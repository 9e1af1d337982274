//! What was measured on the host, as opposed to what is configured: free
//! memory per node, where each domain's memory really is, how busy its vCPUs
//! are, and how much time the host's CPUs lose to steal.
//!
//! The planner works without any of it (it then assumes every vCPU busy and
//! memory where the domain's binding says, or spread when unbound); each
//! measurement present sharpens the plan. The file form, `observations.toml`
//! in a snapshot, is documented in docs/snapshot-format.md.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::idset::{CpuSet, MAX_ID};

pub mod check;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observations {
    pub nodes: BTreeMap<u32, NodeObservation>,
    /// By domain name.
    pub domains: BTreeMap<String, DomainObservation>,
    /// Host CPU id -> fraction of time stolen by an outer hypervisor.
    pub cpu_steal: BTreeMap<u32, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeObservation {
    pub free_mib: Option<u64>,
    /// Page size in KiB -> free pages.
    pub free_hugepages: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DomainObservation {
    /// Host node -> resident MiB of the domain on it.
    pub memory_mib: BTreeMap<u32, u64>,
    /// Per vCPU (by index), fraction of one CPU used (0-1).
    pub vcpu_load: Vec<f64>,
    /// Guest cell -> host node -> resident MiB of that cell's RAM block.
    /// Only when every cell's block was found (see
    /// [`crate::observe::ram_blocks`]); a part of `memory_mib`.
    pub cell_memory_mib: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Per vCPU (by index), fraction of the window it was runnable but
    /// waited in the host's run queue (libvirt's `vcpu.N.delay`): CPU
    /// demand the load alone does not show.
    pub vcpu_wait: Vec<f64>,
    /// Whether it runs VMs of its own, from KVM's nested-entry counters;
    /// `None` when they were not read (not KVM, or no libvirt stats).
    pub nested: Option<NestedActivity>,
}

/// What KVM's counters say about a guest running VMs of its own, judged
/// over time with hysteresis (see [`crate::nested`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NestedActivity {
    /// Nested VM entries (`vcpu.N.nested_run.sum`, all vCPUs) counted
    /// over the last sampling window.
    pub entries: u64,
    /// Judged to be running VMs: seen entering them over enough windows,
    /// and not yet quiet for the configured time.
    pub running: bool,
    /// Seconds since nested entries were last seen rising, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_secs: Option<u64>,
}

impl DomainObservation {
    pub fn resident_mib(&self) -> u64 {
        // Snapshots are checked (see `check`); live readings are bounded by
        // the machine. Saturating all the same: a sum never wraps.
        self.memory_mib
            .values()
            .fold(0u64, |sum, &m| sum.saturating_add(m))
    }
}

/// The file as written: TOML keys are strings, converted and checked below.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ObservationsFile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<String, NodeEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    domains: BTreeMap<String, DomainEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cpu_steal: BTreeMap<String, f64>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    free_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    free_hugepages: BTreeMap<String, u64>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DomainEntry {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    memory_mib: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vcpu_load: Vec<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cell_memory_mib: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vcpu_wait: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nested: Option<NestedActivity>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObservationsError {
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error("{path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: std::path::PathBuf,
        key: String,
        reason: String,
    },
}

/// A node, cell or page-size key. Ids are capped as in every other reader,
/// so that a key such as `"4294967295"` cannot make id sets built from it
/// take gigabytes.
fn parse_u32_key(key: &str, what: &str) -> Result<u32, String> {
    key.trim()
        .parse()
        .ok()
        .filter(|&id| id <= MAX_ID)
        .ok_or_else(|| format!("{key:?} is not a {what} id (0-{MAX_ID})"))
}

fn check_fraction(value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a fraction between 0 and 1"))
    }
}

impl Observations {
    pub fn load(path: &Path) -> Result<Self, ObservationsError> {
        let text = crate::input::read_text(path, crate::input::OBSERVATIONS)?;
        Self::from_toml(&text, path)
    }

    /// The file form (`observations.toml` of a snapshot). Loads back to the
    /// same observations, with loads and steal rounded to 0.001.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&ObservationsFile::from(self))
            .unwrap_or_else(|e| format!("# cannot print observations: {e}\n"))
    }

    /// Parses observation text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ObservationsError> {
        let file: ObservationsFile =
            toml::from_str(text).map_err(|e| ObservationsError::Parse {
                path: path.to_path_buf(),
                message: crate::config::toml_error_message(&e),
            })?;
        file.convert()
            .map_err(|(key, reason)| ObservationsError::Invalid {
                path: path.to_path_buf(),
                key,
                reason,
            })
    }
}

fn round_fraction(f: f64) -> f64 {
    (f * 1000.0).round() / 1000.0
}

fn keyed<K: ToString>(m: &BTreeMap<K, u64>) -> BTreeMap<String, u64> {
    m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

impl From<&Observations> for ObservationsFile {
    fn from(o: &Observations) -> Self {
        ObservationsFile {
            nodes: o
                .nodes
                .iter()
                .map(|(id, n)| {
                    let entry = NodeEntry {
                        free_mib: n.free_mib,
                        free_hugepages: keyed(&n.free_hugepages),
                    };
                    (id.to_string(), entry)
                })
                .collect(),
            domains: o
                .domains
                .iter()
                .map(|(name, d)| {
                    let entry = DomainEntry {
                        memory_mib: keyed(&d.memory_mib),
                        vcpu_load: d.vcpu_load.iter().map(|l| round_fraction(*l)).collect(),
                        cell_memory_mib: d
                            .cell_memory_mib
                            .iter()
                            .map(|(cell, mib)| (cell.to_string(), keyed(mib)))
                            .collect(),
                        vcpu_wait: d.vcpu_wait.iter().map(|w| round_fraction(*w)).collect(),
                        nested: d.nested,
                    };
                    (name.clone(), entry)
                })
                .collect(),
            cpu_steal: o
                .cpu_steal
                .iter()
                .map(|(cpu, s)| (cpu.to_string(), round_fraction(*s)))
                .collect(),
        }
    }
}

impl ObservationsFile {
    fn convert(self) -> Result<Observations, (String, String)> {
        let mut out = Observations::default();
        for (key, entry) in self.nodes {
            let at = |k: &str| format!("nodes.{key}{k}");
            let node = parse_u32_key(&key, "node").map_err(|r| (at(""), r))?;
            let mut free_hugepages = BTreeMap::new();
            for (size, pages) in entry.free_hugepages {
                let kib: u64 = size.trim().parse().map_err(|_| {
                    (
                        at(".free_hugepages"),
                        format!("{size:?} is not a page size in KiB"),
                    )
                })?;
                free_hugepages.insert(kib, pages);
            }
            out.nodes.insert(
                node,
                NodeObservation {
                    free_mib: entry.free_mib,
                    free_hugepages,
                },
            );
        }
        for (name, entry) in self.domains {
            let at = |k: &str| format!("domains.{name:?}.{k}");
            let mut memory_mib = BTreeMap::new();
            for (node, mib) in entry.memory_mib {
                let id = parse_u32_key(&node, "node").map_err(|r| (at("memory_mib"), r))?;
                memory_mib.insert(id, mib);
            }
            for (key, fractions) in [
                ("vcpu_load", &entry.vcpu_load),
                ("vcpu_wait", &entry.vcpu_wait),
            ] {
                for (i, f) in fractions.iter().enumerate() {
                    check_fraction(*f).map_err(|r| (format!("{}[{i}]", at(key)), r))?;
                }
            }
            let mut cell_memory_mib = BTreeMap::new();
            for (cell, per_node) in entry.cell_memory_mib {
                let at = |k: &str| format!("{}.{cell:?}{k}", at("cell_memory_mib"));
                let id = parse_u32_key(&cell, "guest cell").map_err(|r| (at(""), r))?;
                let mut mib = BTreeMap::new();
                for (node, m) in per_node {
                    let n = parse_u32_key(&node, "node").map_err(|r| (at(""), r))?;
                    mib.insert(n, m);
                }
                cell_memory_mib.insert(id, mib);
            }
            out.domains.insert(
                name,
                DomainObservation {
                    memory_mib,
                    vcpu_load: entry.vcpu_load,
                    cell_memory_mib,
                    vcpu_wait: entry.vcpu_wait,
                    nested: entry.nested,
                },
            );
        }
        for (cpus, steal) in self.cpu_steal {
            let at = format!("cpu_steal.{cpus:?}");
            let set: CpuSet = cpus.parse().map_err(|e| (at.clone(), format!("{e}")))?;
            let steal = check_fraction(steal).map_err(|r| (at, r))?;
            for cpu in set.iter() {
                out.cpu_steal.insert(cpu, steal);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Observations, ObservationsError> {
        Observations::from_toml(text, Path::new("snap/observations.toml"))
    }

    #[test]
    fn reads_the_documented_format() {
        let o = parse(
            r#"
            [nodes.0]
            free_mib = 1200
            free_hugepages = { "2048" = 512 }
            [domains."web-01"]
            memory_mib = { "0" = 3900, "1" = 200 }
            vcpu_load = [0.35, 0.2]
            [cpu_steal]
            "0-1" = 0.25
            "#,
        )
        .unwrap();
        assert_eq!(o.nodes[&0].free_mib, Some(1200));
        assert_eq!(o.nodes[&0].free_hugepages[&2048], 512);
        assert_eq!(o.domains["web-01"].resident_mib(), 4100);
        assert!(
            o.domains["web-01"].cell_memory_mib.is_empty(),
            "files without per-cell memory still load"
        );
        assert_eq!(o.cpu_steal[&1], 0.25);
    }

    #[test]
    fn printed_observations_load_back() {
        let text = r#"
            [nodes.0]
            free_mib = 1200
            free_hugepages = { "2048" = 512 }
            [nodes.1]
            [domains."web 01"]
            memory_mib = { "0" = 3900, "1" = 200 }
            vcpu_load = [0.35, 0.2]
            vcpu_wait = [0.05, 0.0]
            cell_memory_mib = { "0" = { "0" = 2000 }, "1" = { "0" = 100, "1" = 1900 } }
            nested = { entries = 1200, running = true, last_seen_secs = 4 }
            [cpu_steal]
            "0-1" = 0.25
            "#;
        let o = parse(text).unwrap();
        let printed = o.to_toml();
        assert_eq!(parse(&printed).unwrap(), o, "{printed}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[nodes.x]\nfree_mib = 1\n").unwrap_err().to_string();
        assert!(
            e.contains("nodes.x") && e.contains("\"x\" is not a node id"),
            "{e}"
        );
        let e = parse("[domains.a]\nvcpu_load = [0.5, 2.0]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vcpu_load[1]") && e.contains("2 is not a fraction"),
            "{e}"
        );
        let e = parse("[domains.a]\ncell_memory_mib = { \"c\" = { \"0\" = 1 } }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cell_memory_mib") && e.contains("\"c\" is not a guest cell id"),
            "{e}"
        );
        let e = parse("[cpu_steal]\n\"0-\" = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu_steal"), "{e}");
        let e = parse("[nodes.0]\nfree = 1\n").unwrap_err().to_string();
        assert!(
            e.contains("snap/observations.toml") && e.contains("free"),
            "{e}"
        );
    }
}
