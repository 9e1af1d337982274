//! An in-memory host for unit tests of transactions: one domain whose
//! settings change as libvirt's would, with failures injected on demand.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host_error::{ErrorKind, HostError};
use crate::idset::{CpuSet, NodeSet};
use crate::libvirt::{DomainRef, MemoryBinding, Pins, Scope};

use super::host::DomainHost;

#[derive(Debug, Clone, PartialEq)]
pub struct FakeState {
    pub domain: DomainRef,
    pub running: bool,
    pub pins: Pins,
    pub binding: MemoryBinding,
    /// MiB per node.
    pub memory: BTreeMap<u32, u64>,
    /// Guest cell -> MiB per node of its RAM block (part of `memory`).
    pub cells: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Settings written to the persistent definition, as "what=value".
    pub config_writes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Faults {
    /// Fail the change call with this index (0-based, counting every
    /// change call: pins, nodeset, migrate_pages).
    pub fail_change: Option<(usize, ErrorKind)>,
    /// From this change call on, the domain is gone.
    pub stop_at_change: Option<usize>,
    /// From this change call on, every call finds libvirt unreachable.
    pub unreachable_from_change: Option<usize>,
    /// Pins are accepted but read back unchanged (a lying libvirt).
    pub pins_do_not_stick: bool,
    /// The kernel shows vCPU threads on this set whatever was pinned.
    pub threads_on: Option<CpuSet>,
    /// Memory does not move.
    pub memory_stuck: bool,
    /// A libvirt job holds the domain.
    pub busy: Option<String>,
    /// The host's online CPUs (default 0-7).
    pub online: Option<CpuSet>,
}

pub struct FakeHost {
    pub state: RefCell<FakeState>,
    pub faults: RefCell<Faults>,
    pub changes: RefCell<Vec<String>>,
}

impl FakeHost {
    pub fn new(state: FakeState) -> Self {
        Self {
            state: RefCell::new(state),
            faults: RefCell::new(Faults::default()),
            changes: RefCell::new(Vec::new()),
        }
    }

    pub fn snapshot(&self) -> FakeState {
        self.state.borrow().clone()
    }

    fn reachable(&self) -> Result<(), HostError> {
        let f = self.faults.borrow();
        if f.unreachable_from_change
            .is_some_and(|at| self.changes.borrow().len() >= at)
        {
            return Err(HostError::unavailable("fake", "libvirtd is down"));
        }
        Ok(())
    }

    fn running(&self, d: &DomainRef) -> Result<(), HostError> {
        self.reachable()?;
        let s = self.state.borrow();
        if !s.running || s.domain.uuid != d.uuid {
            return Err(HostError::new(
                "fake",
                ErrorKind::Gone,
                "domain is not running",
            ));
        }
        Ok(())
    }

    /// Counts a change call and applies the faults due at it.
    fn change(&self, d: &DomainRef, what: String) -> Result<bool, HostError> {
        self.running(d)?;
        let index = self.changes.borrow().len();
        self.changes.borrow_mut().push(what.clone());
        let f = self.faults.borrow();
        if f.stop_at_change.is_some_and(|at| index >= at) {
            self.state.borrow_mut().running = false;
            return Err(HostError::new(
                &what,
                ErrorKind::Gone,
                "domain is not running",
            ));
        }
        if let Some((at, kind)) = f.fail_change
            && at == index
        {
            return Err(HostError::new(&what, kind, "injected failure"));
        }
        Ok(!f.pins_do_not_stick)
    }
}

impl DomainHost for FakeHost {
    fn domain(&self, uuid: &str) -> Result<DomainRef, HostError> {
        self.reachable()?;
        let s = self.state.borrow();
        if s.running && s.domain.uuid == uuid {
            Ok(s.domain.clone())
        } else {
            Err(HostError::new("fake", ErrorKind::Gone, "no such domain"))
        }
    }

    fn pins(&self, d: &DomainRef) -> Result<Pins, HostError> {
        self.running(d)?;
        Ok(self.state.borrow().pins.clone())
    }

    fn memory_binding(&self, d: &DomainRef) -> Result<MemoryBinding, HostError> {
        self.running(d)?;
        Ok(self.state.borrow().binding.clone())
    }

    fn pin_vcpu(
        &self,
        d: &DomainRef,
        vcpu: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let sticks = self.change(d, format!("vcpupin {vcpu} {cpus} {scope:?}"))?;
        let mut s = self.state.borrow_mut();
        match scope {
            Scope::Config => s.config_writes.push(format!("vcpu{vcpu}={cpus}")),
            Scope::Live if sticks => {
                s.pins.vcpus.insert(vcpu, cpus.clone());
            }
            Scope::Live => {}
        }
        Ok(())
    }

    fn pin_emulator(&self, d: &DomainRef, cpus: &CpuSet, scope: Scope) -> Result<(), HostError> {
        let sticks = self.change(d, format!("emulatorpin {cpus} {scope:?}"))?;
        let mut s = self.state.borrow_mut();
        match scope {
            Scope::Config => s.config_writes.push(format!("emulator={cpus}")),
            Scope::Live if sticks => s.pins.emulator = cpus.clone(),
            Scope::Live => {}
        }
        Ok(())
    }

    fn pin_iothread(
        &self,
        d: &DomainRef,
        iothread: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let sticks = self.change(d, format!("iothreadpin {iothread} {cpus} {scope:?}"))?;
        let mut s = self.state.borrow_mut();
        match scope {
            Scope::Config => s.config_writes.push(format!("iothread{iothread}={cpus}")),
            Scope::Live if sticks => {
                s.pins.iothreads.insert(iothread, cpus.clone());
            }
            Scope::Live => {}
        }
        Ok(())
    }

    fn set_memory_nodeset(
        &self,
        d: &DomainRef,
        nodeset: &NodeSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        self.change(d, format!("nodeset {nodeset} {scope:?}"))?;
        let stuck = self.faults.borrow().memory_stuck;
        let mut s = self.state.borrow_mut();
        if scope == Scope::Config {
            s.config_writes.push(format!("nodeset={nodeset}"));
            return Ok(());
        }
        s.binding.nodeset = Some(nodeset.clone());
        if !stuck {
            let total: u64 = s.memory.values().sum();
            s.memory = BTreeMap::from([(nodeset.first().unwrap_or(0), total)]);
        }
        Ok(())
    }

    fn recorded(&self, d: &DomainRef) -> Result<crate::planner::Recorded, HostError> {
        self.running(d)?;
        let s = self.state.borrow();
        Ok(crate::planner::Recorded {
            nodeset: s.binding.nodeset.clone(),
            ..super::transaction::pins_as_recorded(&s.pins)
        })
    }

    fn activity(&self, d: &DomainRef) -> Result<Option<String>, HostError> {
        self.running(d)?;
        Ok(self.faults.borrow().busy.clone())
    }

    fn online_cpus(&self) -> Result<CpuSet, HostError> {
        Ok(self
            .faults
            .borrow()
            .online
            .clone()
            .unwrap_or_else(|| "0-7".parse().unwrap()))
    }

    fn is_persistent(&self, d: &DomainRef) -> Result<bool, HostError> {
        self.running(d)?;
        Ok(true)
    }

    fn memory_per_node(&self, d: &DomainRef) -> Result<BTreeMap<u32, u64>, HostError> {
        self.running(d)?;
        Ok(self.state.borrow().memory.clone())
    }

    fn migrate_pages(&self, d: &DomainRef, from: &NodeSet, to: &NodeSet) -> Result<(), HostError> {
        self.change(d, format!("migrate_pages {from} -> {to}"))?;
        if self.faults.borrow().memory_stuck {
            return Ok(());
        }
        let mut s = self.state.borrow_mut();
        let target = to.first().unwrap_or(0);
        let moved: u64 = s
            .memory
            .iter()
            .filter(|(n, _)| from.contains(**n))
            .map(|(_, m)| m)
            .sum();
        s.memory.retain(|n, _| !from.contains(*n));
        *s.memory.entry(target).or_default() += moved;
        Ok(())
    }

    fn cell_memory(&self, d: &DomainRef, cell: u32) -> Result<BTreeMap<u32, u64>, HostError> {
        self.running(d)?;
        self.state
            .borrow()
            .cells
            .get(&cell)
            .cloned()
            .ok_or_else(|| HostError::new("fake", ErrorKind::Failed, "no RAM block of that cell"))
    }

    fn move_cell_memory(
        &self,
        d: &DomainRef,
        cell: u32,
        to: &BTreeMap<u32, u64>,
    ) -> Result<(), HostError> {
        let nodes: Vec<String> = to.keys().map(u32::to_string).collect();
        self.change(d, format!("move cell {cell} memory -> {}", nodes.join(",")))?;
        if self.faults.borrow().memory_stuck {
            return Ok(());
        }
        let mut s = self.state.borrow_mut();
        let Some(old) = s.cells.get(&cell).cloned() else {
            return Err(HostError::new(
                "fake",
                ErrorKind::Failed,
                "no RAM block of that cell",
            ));
        };
        let weights: Vec<(u32, u64)> = to.iter().map(|(&n, &w)| (n, w)).collect();
        let new = crate::planner::domain_info::distribute(old.values().sum(), &weights);
        for (n, m) in &old {
            if let Some(v) = s.memory.get_mut(n) {
                *v = v.saturating_sub(*m);
            }
        }
        for (n, m) in &new {
            *s.memory.entry(*n).or_default() += m;
        }
        s.memory.retain(|_, m| *m > 0);
        s.cells
            .insert(cell, new.into_iter().filter(|(_, m)| *m > 0).collect());
        Ok(())
    }

    fn vcpu_thread_affinity(&self, d: &DomainRef) -> Result<BTreeMap<u32, CpuSet>, HostError> {
        self.running(d)?;
        let s = self.state.borrow();
        Ok(match &self.faults.borrow().threads_on {
            Some(cpus) => s.pins.vcpus.keys().map(|&v| (v, cpus.clone())).collect(),
            None => s.pins.vcpus.clone(),
        })
    }
}
