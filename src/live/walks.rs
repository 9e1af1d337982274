//! When the sampler walks a guest's page tables.
//!
//! Where a domain's memory is per node comes cheaply from its memory
//! cgroup's `memory.numa_stat` (counters; no lock on the guest's address
//! space). Two figures need a page-table walk instead: each guest cell's
//! memory per node (`smaps` + `numa_maps`, for guests with cells) and the
//! per-node figures of a domain without a memory cgroup of its own
//! (`numa_maps`). Such a walk holds the QEMU process's mmap lock for each
//! mapping it reads, which for a guest of several GiB is milliseconds
//! (docs/PERFORMANCE.md, "Reading where a guest's memory is"), and the
//! guest's own mmap/munmap calls, and page faults queued behind them, wait
//! it out.
//!
//! So a guest is walked only when
//! - it is first seen (a new run of the domain) or its cells changed;
//! - a move of its memory is planned or in flight (the daemon says which,
//!   [`MemoryWalks::want`]), since moves need fresh figures;
//! - its cheap figures (cgroup per node, else the resident size from
//!   `statm`) moved by more than [`DRIFT_SHARE`] of its memory since the
//!   walk: it grew, shrank or something else moved it;
//! - or the last walk is older than the refresh period ([`WALK_REFRESH`]).
//!
//! Otherwise the figures of the last walk are reused, rescaled so their sum
//! follows the domain's current total: each cell (and node) keeps its
//! share, which is what a guest that touches more memory in place does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::guest::GuestCell;
use crate::observe::{ObserveError, cgroup, numa_maps, statm};

use super::memory::cell_blocks;

/// A walk's figures are trusted this long when nothing else calls for a
/// new one. Measured on the project's 2-CPU machine (docs/PERFORMANCE.md):
/// reading numa_maps or smaps of an 8 GiB guest in 4 KiB pages costs
/// about 0.1 s of CPU each, and its mmap calls wait for the read (0.1-0.3 s
/// under load); with huge pages, under 1 ms. Walking every cycle (30 s by
/// default) would cost 100 such guests with cells about 28 s of CPU per
/// cycle (0.28 s for smaps and numa_maps each); every 10 minutes, a walk
/// every 6 s on average (about 5% of one CPU) and one stall per guest in
/// 10 minutes. Anything large enough to matter
/// to the planner meanwhile is caught by the drift check.
pub const WALK_REFRESH: Duration = Duration::from_secs(600);

/// Share of a domain's memory that must have changed node (or appeared or
/// gone) in its cheap figures since the last walk before it is walked
/// again. Below it the reused figures are at most this share off (less
/// after rescaling); above it (a guest filling its memory, memory moved
/// by someone else) they are read again at once.
pub const DRIFT_SHARE: f64 = 0.10;

/// What one domain's memory looks like this cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainMemory {
    /// Host node -> resident MiB.
    pub memory_mib: BTreeMap<u32, u64>,
    /// Guest cell -> host node -> resident MiB; empty when the guest has
    /// fewer than two cells or their blocks could not be told apart.
    pub cell_memory_mib: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// The page tables were walked for these figures this cycle.
    pub walked: bool,
    /// The cells' RAM blocks were looked for and not found.
    pub no_cell_blocks: bool,
}

/// The figures of a domain's last walk.
#[derive(Debug, Clone)]
struct Walked {
    at: Instant,
    /// The cells walked for, as (id, KiB): other cells mean a new walk.
    cells: Vec<(u32, u64)>,
    /// The cheap figures at the walk (node -> bytes; one pseudo-node
    /// `u32::MAX` holding the resident size when only statm has them).
    cheap: BTreeMap<u32, u64>,
    /// numa_maps per node (MiB), for a domain without its own cgroup.
    whole_mib: Option<BTreeMap<u32, u64>>,
    cell_memory_mib: BTreeMap<u32, BTreeMap<u32, u64>>,
    no_cell_blocks: bool,
}

/// Per-domain-run cache of walked figures and the walk cadence.
#[derive(Debug)]
pub struct MemoryWalks {
    refresh: Duration,
    /// UUIDs whose memory is to move or moving: walked every cycle.
    wanted: BTreeSet<String>,
    /// By domain UUID and run id.
    cache: BTreeMap<(String, u32), Walked>,
}

/// Host node -> bytes.
type PerNode = BTreeMap<u32, u64>;

/// The pseudo-node holding a resident size read from statm.
const RESIDENT: u32 = u32::MAX;

impl MemoryWalks {
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            wanted: BTreeSet::new(),
            cache: BTreeMap::new(),
        }
    }

    /// The domains (by UUID) whose memory a move is planned for or in
    /// flight; replaces the previous set. Their page tables are walked at
    /// every reading until they leave the set.
    pub fn want(&mut self, uuids: BTreeSet<String>) {
        self.wanted = uuids;
    }

    /// Forgets the domain runs not in `running`.
    pub fn retain(&mut self, running: &BTreeSet<(String, u32)>) {
        self.cache.retain(|k, _| running.contains(k));
    }

    /// Where the memory of domain run `key` (QEMU process `pid`, guest
    /// `cells`) is, walking its page tables only when due (module docs).
    pub fn read(
        &mut self,
        root: &Path,
        key: &(String, u32),
        pid: u32,
        cells: &[GuestCell],
        now: Instant,
    ) -> Result<DomainMemory, ObserveError> {
        let own_cgroup = match cgroup::read(root, pid) {
            Ok(m) if !m.from_ancestor => Some(m.resident),
            Err(e) if e.is_gone() => return Err(e),
            _ => None,
        };
        // The cheap figures; a process whose statm cannot be read (not a
        // stopped one) is walked every time, as before this cadence.
        let cheap = match &own_cgroup {
            Some(per_node) => Some(per_node.clone()),
            None => match statm::resident_bytes(root, pid) {
                Ok(bytes) => Some(BTreeMap::from([(RESIDENT, bytes)])),
                Err(e) if e.is_gone() => return Err(e),
                Err(e) => {
                    tracing::debug!(pid, error = %e, "no resident size; page tables walked each reading");
                    None
                }
            },
        };
        let cell_sizes: Vec<(u32, u64)> = cells.iter().map(|c| (c.id, c.memory_kib)).collect();
        let multi_cell = cells.len() > 1;
        let needs_walk = own_cgroup.is_none() || multi_cell;
        let due = match (self.cache.get(key), &cheap) {
            _ if !needs_walk => false,
            (None, _) | (_, None) => true,
            (Some(w), Some(cheap)) => {
                w.cells != cell_sizes
                    || self.wanted.contains(&key.0)
                    || now.saturating_duration_since(w.at) >= self.refresh
                    || drift(&w.cheap, cheap) > DRIFT_SHARE
            }
        };
        if due {
            return self.walk(root, key, pid, cells, now, (own_cgroup, cheap));
        }
        let cheap = cheap.unwrap_or_default();
        let cached = self.cache.get(key);
        let scale = cached.map_or(1.0, |w| ratio(total(&cheap), total(&w.cheap)));
        let memory_mib = match (&own_cgroup, cached.and_then(|w| w.whole_mib.as_ref())) {
            (Some(per_node), _) => crate::units::mib_per_node(per_node),
            (None, Some(whole)) => rescale(whole, scale),
            (None, None) => BTreeMap::new(),
        };
        Ok(DomainMemory {
            memory_mib,
            cell_memory_mib: cached.map_or_else(BTreeMap::new, |w| {
                w.cell_memory_mib
                    .iter()
                    .map(|(&cell, nodes)| (cell, rescale(nodes, scale)))
                    .collect()
            }),
            walked: false,
            no_cell_blocks: cached.is_some_and(|w| w.no_cell_blocks),
        })
    }

    /// Walks the page tables of domain run `key` and keeps the figures;
    /// `figures` are the domain's own cgroup's per node, if any, and the
    /// cheap figures the next readings compare with.
    fn walk(
        &mut self,
        root: &Path,
        key: &(String, u32),
        pid: u32,
        cells: &[GuestCell],
        now: Instant,
        figures: (Option<PerNode>, Option<PerNode>),
    ) -> Result<DomainMemory, ObserveError> {
        let (own_cgroup, cheap) = figures;
        let whole_mib = match &own_cgroup {
            Some(_) => None,
            None => Some(crate::units::mib_per_node(
                &numa_maps::read(root, pid)?.resident,
            )),
        };
        let memory_mib = match (&whole_mib, &own_cgroup) {
            (Some(whole), _) => whole.clone(),
            (None, per_node) => {
                crate::units::mib_per_node(per_node.as_ref().unwrap_or(&BTreeMap::new()))
            }
        };
        let (mut cell_memory_mib, mut no_cell_blocks, mut keep) = (BTreeMap::new(), false, true);
        if cells.len() > 1 {
            match cell_blocks(root, pid, cells) {
                Ok(Some(blocks)) => cell_memory_mib = super::memory::cell_memory_mib(&blocks),
                Ok(None) => no_cell_blocks = true,
                Err(e) if e.is_gone() => return Err(e),
                // Tried again next reading: nothing is kept.
                Err(e) => {
                    tracing::debug!(domain_uuid = %key.0, pid, error = %e, "memory per guest cell unknown");
                    keep = false;
                }
            }
        }
        tracing::debug!(domain_uuid = %key.0, pid, cells = cells.len(), "walked the guest's page tables");
        match cheap {
            Some(cheap) if keep => {
                self.cache.insert(
                    key.clone(),
                    Walked {
                        at: now,
                        cells: cells.iter().map(|c| (c.id, c.memory_kib)).collect(),
                        cheap,
                        whole_mib,
                        cell_memory_mib: cell_memory_mib.clone(),
                        no_cell_blocks,
                    },
                );
            }
            _ => {
                self.cache.remove(key);
            }
        }
        Ok(DomainMemory {
            memory_mib,
            cell_memory_mib,
            walked: true,
            no_cell_blocks,
        })
    }
}

fn total(m: &BTreeMap<u32, u64>) -> u64 {
    m.values().fold(0u64, |s, &b| s.saturating_add(b))
}

fn ratio(now: u64, then: u64) -> f64 {
    if then == 0 {
        1.0
    } else {
        now as f64 / then as f64
    }
}

/// Share of the memory that changed between two per-node readings: the
/// bytes that appeared or left per node, halved when the total stayed
/// (memory that moved counts once, not on both nodes), over the larger
/// total.
fn drift(then: &BTreeMap<u32, u64>, now: &BTreeMap<u32, u64>) -> f64 {
    let nodes: BTreeSet<u32> = then.keys().chain(now.keys()).copied().collect();
    let changed: u64 = nodes
        .iter()
        .map(|n| {
            let (a, b) = (
                then.get(n).copied().unwrap_or(0),
                now.get(n).copied().unwrap_or(0),
            );
            a.abs_diff(b)
        })
        .fold(0u64, u64::saturating_add);
    let (t0, t1) = (total(then), total(now));
    let moved = changed.saturating_sub(t0.abs_diff(t1)) / 2 + t0.abs_diff(t1);
    let base = t0.max(t1);
    if base == 0 {
        0.0
    } else {
        moved as f64 / base as f64
    }
}

fn rescale(nodes: &BTreeMap<u32, u64>, scale: f64) -> BTreeMap<u32, u64> {
    nodes
        .iter()
        .map(|(&n, &mib)| (n, (mib as f64 * scale).round() as u64))
        .filter(|(_, mib)| *mib > 0)
        .collect()
}

#[cfg(test)]
#[path = "walks_tests.rs"]
mod tests;
