//! Where a domain's memory is, per host node.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::guest::GuestCell;
use crate::observe::ram_blocks::{self, CellBlock};
use crate::observe::{ObserveError, cgroup, numa_maps};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// The domain's memory cgroup `memory.numa_stat`: what the guest's
    /// pages cost, without the shared QEMU binary and libraries.
    Cgroup,
    /// `/proc/PID/numa_maps`: used when no cgroup of the domain's own has
    /// the figures (a parent's would include other domains).
    NumaMaps,
}

/// Resident MiB per node of QEMU process `pid`, and where it came from.
pub fn domain_memory_mib(
    root: &Path,
    pid: u32,
) -> Result<(BTreeMap<u32, u64>, MemorySource), ObserveError> {
    match cgroup::read(root, pid) {
        Ok(m) if !m.from_ancestor => {
            return Ok((
                crate::units::mib_per_node(&m.resident),
                MemorySource::Cgroup,
            ));
        }
        Err(e) if e.is_gone() => return Err(e),
        _ => {}
    }
    let maps = numa_maps::read(root, pid)?;
    Ok((
        crate::units::mib_per_node(&maps.resident),
        MemorySource::NumaMaps,
    ))
}

/// Each guest cell's RAM block in QEMU process `pid`, with where its pages
/// are; `None` when some cell's block cannot be told apart (its memory can
/// then only move as part of the whole process).
pub fn cell_blocks(
    root: &Path,
    pid: u32,
    cells: &[GuestCell],
) -> Result<Option<Vec<CellBlock>>, ObserveError> {
    let sizes: Vec<(u32, u64)> = cells
        .iter()
        .map(|c| (c.id, c.memory_kib.saturating_mul(1024)))
        .collect();
    let Some(mut blocks) = ram_blocks::read(root, pid, &sizes)? else {
        return Ok(None);
    };
    // numa_maps counts a mapping of the shared zero page (what guest RAM
    // read but never written maps, 2 MiB at a time with THP) as resident
    // on the zero page's node: idle guest RAM would look misplaced for
    // ever, and no move can change it. The kernel's own page query leaves
    // those out; it asks the live process, so only under the real root,
    // and it walks every page, so only for blocks numa_maps shows with
    // shared pages (a guest that wrote its memory has none).
    if root == Path::new("/") {
        for b in blocks.iter_mut().filter(|b| b.shared > 0) {
            match super::move_pages::resident_in_range(pid, b.start, b.end) {
                Ok(resident) => b.resident = resident,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(ObserveError::Gone {
                        path: root.join(format!("proc/{pid}")),
                    });
                }
                Err(e) => {
                    tracing::debug!(pid, cell = b.cell, error = %e, "pages of a guest cell not queried; numa_maps figures kept")
                }
            }
        }
    }
    Ok(Some(blocks))
}

/// Guest cell -> host node -> resident MiB, as observations hold it.
pub fn cell_memory_mib(blocks: &[CellBlock]) -> BTreeMap<u32, BTreeMap<u32, u64>> {
    blocks.iter().map(|b| (b.cell, b.resident_mib())).collect()
}
