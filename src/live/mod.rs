//! The real host: libvirt for domains and pins, the kernel's files for
//! where memory is and how busy threads are, migrate_pages(2) and
//! move_pages(2) for moving memory of unbound domains.

pub mod memory;
pub mod migrate;
pub mod move_pages;
pub mod state;
pub mod walks;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::apply::DomainHost;
use crate::host_error::{ErrorKind, HostError};
use crate::idset::{CpuSet, NodeSet};
use crate::libvirt::{DomainRef, Libvirt, MemoryBinding, Pins, Scope};
use crate::observe::{ObserveError, pid_file, threads};

pub use state::{LiveDomain, LiveState, Sampler};

/// Plans a live reading. Each domain's pins are recognised as numapin's
/// when they are what `placements` recorded for its current run. Domains
/// in `held` (UUID -> why) are left alone for that reason, on top of those
/// libvirt shows busy or not running.
pub fn plan(
    state: &LiveState,
    config: &crate::config::Config,
    placements: &crate::apply::Placements,
    rebalance: bool,
    held: &std::collections::BTreeMap<String, String>,
    confirm: Option<crate::planner::MoveConfirmation>,
) -> crate::planner::Plan {
    let inputs: Vec<_> = state
        .domains
        .iter()
        .map(|d| {
            let mut input = d.input.clone();
            input.recorded = placements.recorded_of(&d.r);
            input.hold = held.get(&d.r.uuid).cloned().or_else(|| d.activity.hold());
            input
        })
        .collect();
    crate::planner::plan(&crate::planner::PlanInput {
        topology: &state.topology,
        domains: &inputs,
        observations: &state.observations,
        config,
        rebalance_all: rebalance,
        confirm,
    })
}

/// libvirt plus the host's files under `root` (`/` in production).
#[derive(Clone)]
pub struct LiveHost {
    pub libvirt: Libvirt,
    pub root: PathBuf,
}

impl LiveHost {
    pub fn new(libvirt: Libvirt, root: PathBuf) -> Self {
        Self { libvirt, root }
    }

    fn pid(&self, d: &DomainRef, op: &str) -> Result<u32, HostError> {
        pid_file::read(&self.root, &d.name).map_err(|e| observe_error(op, e))
    }

    /// The QEMU pid and guest cell `cell`'s RAM block, found again from the
    /// live XML's cells and the process's mappings now: a block that can
    /// no longer be told apart is refused, never guessed.
    pub(crate) fn cell_block(
        &self,
        d: &DomainRef,
        cell: u32,
        op: &str,
    ) -> Result<(u32, crate::observe::ram_blocks::CellBlock), HostError> {
        let (live, _) = self.libvirt.domain_xml(d)?;
        let dom = crate::guest::domain_xml::parse(&live)
            .map_err(|e| HostError::new(op, ErrorKind::Failed, &e.to_string()))?;
        let pid = self.pid(d, op)?;
        let blocks = memory::cell_blocks(&self.root, pid, &dom.cpu.cells)
            .map_err(|e| observe_error(op, e))?;
        blocks
            .and_then(|b| b.into_iter().find(|b| b.cell == cell))
            .map(|b| (pid, b))
            .ok_or_else(|| {
                HostError::new(
                    op,
                    ErrorKind::Failed,
                    &format!("guest cell {cell}'s RAM block cannot be told apart in the QEMU process any more"),
                )
            })
    }
}

fn observe_error(op: &str, e: ObserveError) -> HostError {
    let kind = if e.is_gone() {
        ErrorKind::Gone
    } else {
        ErrorKind::Failed
    };
    HostError::new(op, kind, &crate::report::error_chain(&e))
}

impl DomainHost for LiveHost {
    fn domain(&self, uuid: &str) -> Result<DomainRef, HostError> {
        self.libvirt.domain(uuid)
    }

    fn pins(&self, d: &DomainRef) -> Result<Pins, HostError> {
        self.libvirt.pins(d)
    }

    fn memory_binding(&self, d: &DomainRef) -> Result<MemoryBinding, HostError> {
        self.libvirt.memory_binding(d)
    }

    fn pin_vcpu(
        &self,
        d: &DomainRef,
        vcpu: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        self.libvirt.pin_vcpu(d, vcpu, cpus, scope)
    }

    fn pin_emulator(&self, d: &DomainRef, cpus: &CpuSet, scope: Scope) -> Result<(), HostError> {
        self.libvirt.pin_emulator(d, cpus, scope)
    }

    fn pin_iothread(
        &self,
        d: &DomainRef,
        iothread: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        self.libvirt.pin_iothread(d, iothread, cpus, scope)
    }

    fn set_memory_nodeset(
        &self,
        d: &DomainRef,
        nodeset: &NodeSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        self.libvirt.set_memory_nodeset(d, nodeset, scope)
    }

    fn recorded(&self, d: &DomainRef) -> Result<crate::planner::Recorded, HostError> {
        let (live, _) = self.libvirt.domain_xml(d)?;
        let op = format!("read live XML of {}", d.name);
        crate::guest::domain_xml::parse(&live)
            .map(|dom| crate::planner::Recorded {
                nodeset: dom.numatune.as_ref().and_then(|n| n.nodeset.clone()),
                cputune: dom.cputune,
            })
            .map_err(|e| HostError::new(&op, ErrorKind::Failed, &e.to_string()))
    }

    fn activity(&self, d: &DomainRef) -> Result<Option<String>, HostError> {
        // Disks only matter for block jobs; the live XML names them.
        let (live, _) = self.libvirt.domain_xml(d)?;
        let disks = crate::guest::domain_xml::parse(&live)
            .map(|dom| dom.disks)
            .unwrap_or_default();
        Ok(self.libvirt.activity(d, &disks)?.hold())
    }

    fn online_cpus(&self) -> Result<CpuSet, HostError> {
        let path = self.root.join("sys/devices/system/cpu/online");
        std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| t.trim().parse::<CpuSet>().map_err(|e| e.to_string()))
            .map_err(|e| HostError::new(&format!("read {}", path.display()), ErrorKind::Failed, &e))
    }

    fn is_persistent(&self, d: &DomainRef) -> Result<bool, HostError> {
        self.libvirt.is_persistent(d)
    }

    fn memory_per_node(&self, d: &DomainRef) -> Result<BTreeMap<u32, u64>, HostError> {
        let op = format!("memory of {}", d.name);
        let pid = self.pid(d, &op)?;
        memory::domain_memory_mib(&self.root, pid)
            .map(|(mib, _)| mib)
            .map_err(|e| observe_error(&op, e))
    }

    fn migrate_pages(&self, d: &DomainRef, from: &NodeSet, to: &NodeSet) -> Result<(), HostError> {
        let op = format!("migrate_pages {} {from} -> {to}", d.name);
        let pid = self.pid(d, &op)?;
        match migrate::migrate_pages(pid, from, to) {
            Ok(0) => Ok(()),
            // Pages that could not move are judged by the memory check
            // that follows, against the configured share.
            Ok(left) => {
                tracing::info!(domain = %d.name, pages_not_moved = left, "migrate_pages left some pages");
                Ok(())
            }
            Err(e) => Err(syscall_error(&op, &e)),
        }
    }

    fn cell_memory(&self, d: &DomainRef, cell: u32) -> Result<BTreeMap<u32, u64>, HostError> {
        let op = format!("memory of guest cell {cell} of {}", d.name);
        self.cell_block(d, cell, &op).map(|(_, b)| b.resident_mib())
    }

    fn move_cell_memory(
        &self,
        d: &DomainRef,
        cell: u32,
        to: &BTreeMap<u32, u64>,
    ) -> Result<(), HostError> {
        let nodes: NodeSet = to.keys().copied().collect();
        let op = format!("move cell {cell} memory of {} -> {nodes}", d.name);
        let (pid, block) = self.cell_block(d, cell, &op)?;
        match move_pages::move_range(pid, block.start, block.end, to) {
            Ok(r) => {
                // Pages that could not move are judged by the check that
                // follows, against the configured share.
                tracing::info!(
                    domain = %d.name,
                    cell,
                    to = %nodes,
                    pages = r.pages,
                    placed = r.placed,
                    absent = r.absent,
                    zero = r.zero,
                    touched = r.touched,
                    pages_not_moved = r.not_moved,
                    "moved a guest cell's memory"
                );
                Ok(())
            }
            Err(e) => Err(syscall_error(&op, &e)),
        }
    }

    fn vcpu_thread_affinity(&self, d: &DomainRef) -> Result<BTreeMap<u32, CpuSet>, HostError> {
        let op = format!("vCPU threads of {}", d.name);
        let pid = self.pid(d, &op)?;
        let tasks = threads::read(&self.root, pid).map_err(|e| observe_error(&op, e))?;
        Ok(tasks
            .into_iter()
            .filter_map(|t| Some((t.vcpu?, t.cpus_allowed)))
            .collect())
    }
}

/// A failed page-moving syscall on a QEMU process, sorted: ESRCH means the
/// process (so the domain) is gone.
fn syscall_error(op: &str, e: &std::io::Error) -> HostError {
    if e.raw_os_error() == Some(libc::ESRCH) {
        HostError::new(op, ErrorKind::Gone, "the QEMU process is gone")
    } else {
        HostError::new(op, ErrorKind::Failed, &e.to_string())
    }
}
