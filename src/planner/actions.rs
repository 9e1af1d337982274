//! The ordered steps apply takes for one domain, derived by comparing the
//! target with what is in place. Pins come first so that pages the guest
//! touches from then on land on the new node; memory moves come last.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::idset::{CpuSet, NodeSet};

use super::cell_memory::memory_moves;
use super::cpus::Pins;
use super::domain_info::{DomainInfo, MemoryHandling};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Emulatorpin {
        cpus: CpuSet,
    },
    Iothreadpin {
        iothread: u32,
        cpus: CpuSet,
    },
    Vcpupin {
        vcpu: u32,
        cpus: CpuSet,
    },
    /// `virsh numatune --nodeset --live` on a restrictive domain.
    SetMemoryNodeset {
        nodeset: NodeSet,
    },
    /// migrate_pages(2) on the QEMU process, for unbound domains.
    MigratePages {
        from: NodeSet,
        to: NodeSet,
        mib: u64,
    },
    /// move_pages(2) on one guest cell's RAM block of an unbound domain,
    /// so the cell's memory is on its own node, not just within the
    /// guest's nodes.
    MoveCellMemory {
        cell: u32,
        to: NodeSet,
        mib: u64,
    },
}

impl Action {
    /// Moves pages toward a placement already applied. Such steps are not
    /// part of a transaction: the daemon's background mover carries them
    /// out at the configured rate, and they are never rolled back.
    pub fn is_page_move(&self) -> bool {
        matches!(
            self,
            Action::MigratePages { .. } | Action::MoveCellMemory { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Emulatorpin { cpus } => write!(f, "emulatorpin {cpus}"),
            Action::Iothreadpin { iothread, cpus } => write!(f, "iothreadpin {iothread} {cpus}"),
            Action::Vcpupin { vcpu, cpus } => write!(f, "vcpupin {vcpu} {cpus}"),
            Action::SetMemoryNodeset { nodeset } => {
                write!(f, "numatune --nodeset {nodeset} (restrictive, live)")
            }
            Action::MigratePages { from, to, mib } => {
                write!(f, "migrate_pages {from} -> {to} (~{mib} MiB)")
            }
            Action::MoveCellMemory { cell, to, mib } => {
                write!(f, "move cell {cell} memory -> {to} (~{mib} MiB)")
            }
        }
    }
}

/// Steps that turn the current state into `pins` and `nodeset`, with guest
/// cells on the nodes `cells` gives.
pub fn actions_for(
    info: &DomainInfo,
    pins: &Pins,
    nodeset: &NodeSet,
    cells: &BTreeMap<u32, u32>,
) -> Vec<Action> {
    let mut out = pin_actions(info, pins);
    out.extend(memory_actions(info, nodeset, cells));
    out
}

/// The pin steps alone: emulator, iothreads, then vCPUs, each only where
/// it differs from what is in place.
pub fn pin_actions(info: &DomainInfo, pins: &Pins) -> Vec<Action> {
    let cur = &info.current;
    let mut out = Vec::new();
    if cur.emulator_affinity != pins.emulatorpin {
        out.push(Action::Emulatorpin {
            cpus: pins.emulatorpin.clone(),
        });
    }
    for (&id, cpus) in &pins.iothreadpin {
        if cur.iothread_affinity.get(&id) != Some(cpus) {
            out.push(Action::Iothreadpin {
                iothread: id,
                cpus: cpus.clone(),
            });
        }
    }
    for (&vcpu, cpus) in &pins.vcpupin {
        if cur.vcpu_affinity.get(&vcpu) != Some(cpus) {
            out.push(Action::Vcpupin {
                vcpu,
                cpus: cpus.clone(),
            });
        }
    }
    out
}

/// The memory steps that bring the memory into `nodeset`, guest cells to
/// the nodes `cells` gives, as the domain's binding allows.
fn memory_actions(info: &DomainInfo, nodeset: &NodeSet, cells: &BTreeMap<u32, u32>) -> Vec<Action> {
    let cur = &info.current;
    let mut out = Vec::new();
    match info.memory {
        MemoryHandling::Restrictive => {
            let now = info
                .domain
                .numatune
                .as_ref()
                .and_then(|n| n.nodeset.clone());
            if now.as_ref() != Some(nodeset) {
                out.push(Action::SetMemoryNodeset {
                    nodeset: nodeset.clone(),
                });
            }
        }
        MemoryHandling::Migrate => {
            if let Some(moves) = memory_moves(info, cells, nodeset) {
                for c in moves.cells {
                    out.push(Action::MoveCellMemory {
                        cell: c.cell,
                        to: NodeSet::single(c.node),
                        mib: c.mib,
                    });
                }
                // What belongs to no cell follows as a whole, once the
                // cells are where they go.
                if !moves.rest_from.is_empty() {
                    out.push(Action::MigratePages {
                        from: moves.rest_from,
                        to: nodeset.clone(),
                        mib: moves.rest_mib,
                    });
                }
                return out;
            }
            let from: NodeSet = cur
                .memory_mib
                .iter()
                .filter(|(n, mib)| **mib > 0 && !nodeset.contains(**n))
                .map(|(n, _)| *n)
                .collect();
            if !from.is_empty() {
                out.push(Action::MigratePages {
                    mib: info.migrate_mib_to(nodeset),
                    from,
                    to: nodeset.clone(),
                });
            }
        }
        MemoryHandling::Fixed(_) | MemoryHandling::FirstTouch => {}
    }
    out
}
