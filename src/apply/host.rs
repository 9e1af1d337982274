//! The side-effect boundary of apply: everything a transaction reads from
//! or changes on the host. The real implementation talks to libvirt and
//! the kernel (`crate::live::LiveHost`); unit tests use a fake.

use std::collections::BTreeMap;

use crate::host_error::HostError;
use crate::idset::{CpuSet, NodeSet};
use crate::libvirt::{DomainRef, MemoryBinding, Pins, Scope};
use crate::planner::Recorded;

pub trait DomainHost {
    /// The running domain with this UUID; a Gone error when it is not.
    fn domain(&self, uuid: &str) -> Result<DomainRef, HostError>;
    fn pins(&self, d: &DomainRef) -> Result<Pins, HostError>;
    fn memory_binding(&self, d: &DomainRef) -> Result<MemoryBinding, HostError>;
    fn pin_vcpu(
        &self,
        d: &DomainRef,
        vcpu: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError>;
    fn pin_emulator(&self, d: &DomainRef, cpus: &CpuSet, scope: Scope) -> Result<(), HostError>;
    fn pin_iothread(
        &self,
        d: &DomainRef,
        iothread: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError>;
    fn set_memory_nodeset(
        &self,
        d: &DomainRef,
        nodeset: &NodeSet,
        scope: Scope,
    ) -> Result<(), HostError>;
    /// The live `<cputune>` and memory nodeset: what numapin records as
    /// its own after a change.
    fn recorded(&self, d: &DomainRef) -> Result<Recorded, HostError>;
    /// Why the domain must not be touched now (not running, a libvirt job
    /// in progress), if it must not.
    fn activity(&self, d: &DomainRef) -> Result<Option<String>, HostError>;
    /// The host's online CPUs now.
    fn online_cpus(&self) -> Result<CpuSet, HostError>;
    /// Whether the domain has a persistent definition to write to.
    fn is_persistent(&self, d: &DomainRef) -> Result<bool, HostError>;
    /// Resident memory of the domain's QEMU process per host node, MiB.
    fn memory_per_node(&self, d: &DomainRef) -> Result<BTreeMap<u32, u64>, HostError>;
    /// Moves the QEMU process's pages on `from` to `to` (migrate_pages(2)).
    fn migrate_pages(&self, d: &DomainRef, from: &NodeSet, to: &NodeSet) -> Result<(), HostError>;
    /// Resident MiB per host node of one guest cell's RAM block.
    fn cell_memory(&self, d: &DomainRef, cell: u32) -> Result<BTreeMap<u32, u64>, HostError>;
    /// Moves one guest cell's RAM block to the nodes of `to` (node ->
    /// weight): its pages are shared out over them in proportion, in
    /// address order. Pages already where they go stay.
    fn move_cell_memory(
        &self,
        d: &DomainRef,
        cell: u32,
        to: &BTreeMap<u32, u64>,
    ) -> Result<(), HostError>;
    /// Affinity of each vCPU thread as the kernel has it, by vCPU index.
    fn vcpu_thread_affinity(&self, d: &DomainRef) -> Result<BTreeMap<u32, CpuSet>, HostError>;
}
