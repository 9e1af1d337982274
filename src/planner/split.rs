//! Splitting a domain no single node can take over the fewest, closest
//! nodes, and keeping such a split once it is in place.

use crate::config::Strategy;

use super::choose::{Chooser, nodes_of, policy};
use super::domain_info::{CpuPolicy, DomainInfo, Piece, distribute_shares};
use super::ledger::{Demand, Part};

/// Scratch space for trying splits: weights and the shares they give.
#[derive(Default)]
struct SplitShares {
    weights: Vec<u64>,
    vcpus: Vec<u64>,
    mem: Vec<u64>,
}

/// A piece for which no split was found while guests were being placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFailure {
    policy: CpuPolicy,
    hugepage_kib: Option<u64>,
    vcpus: usize,
    mem_mib: u64,
    load: f64,
}

impl SplitFailure {
    /// Whether `self` asks at least as much as `other` in every respect.
    fn dominates(&self, other: &SplitFailure) -> bool {
        self.policy == other.policy
            && self.hugepage_kib == other.hugepage_kib
            && self.vcpus >= other.vcpus
            && self.mem_mib >= other.mem_mib
            && self.load >= other.load
    }
}

/// The most of a piece that nodes could take, summed node by node: what
/// `split_fits` asks of each node (its share of the vCPUs, load and
/// memory), added up. The shares of a split add up to the piece, so a set
/// of nodes whose sums fall short of the piece cannot hold it.
#[derive(Debug, Clone, Copy, Default)]
struct Room {
    mem_mib: u128,
    /// Dedicated: vCPUs the nodes can still dedicate; shared: their CPUs
    /// left to shared vCPUs.
    cpus: i64,
    /// Shared demand (in CPUs) the nodes can still take.
    load: f64,
}

impl Room {
    fn add(&mut self, other: &Room) {
        self.mem_mib += other.mem_mib;
        self.cpus += other.cpus;
        self.load += other.load;
    }

    fn too_few_cpus(&self, piece: &Piece, pol: CpuPolicy) -> bool {
        let vcpus = piece.vcpus.len() as i64;
        match pol {
            CpuPolicy::Dedicated => vcpus > self.cpus,
            // The margin covers rounding in the per-node loads.
            CpuPolicy::Shared => vcpus > self.cpus || piece.load > self.load + 1e-6,
        }
    }

    fn too_little_memory(&self, piece: &Piece) -> bool {
        piece.mem_mib as u128 > self.mem_mib
    }

    fn holds(&self, piece: &Piece, pol: CpuPolicy) -> bool {
        !self.too_few_cpus(piece, pol) && !self.too_little_memory(piece)
    }
}

impl Chooser<'_> {
    /// A guest without cells split over nodes, as numapin left it: one
    /// affinity within the usable CPUs of its nodes, at least 90% of the
    /// memory there, and too large for any node (one that could fit a
    /// node is placed again, to go back to one node once there is room).
    /// Its parts hold the memory where it is and vCPUs in proportion to
    /// the nodes' CPUs.
    pub(super) fn settled_split(&self, info: &DomainInfo) -> Option<Vec<Part>> {
        let [piece] = info.pieces.as_slice() else {
            return None;
        };
        if piece.cell.is_some() || self.fits_an_empty_node(info, piece) {
            return None;
        }
        let nodes = &info.current.nodes;
        let at: Vec<usize> = nodes
            .iter()
            .map(|n| self.ledger.index(n))
            .collect::<Option<_>>()?;
        let affinity = info.current.vcpu_affinity.values().next()?;
        let usable = at.iter().fold(crate::idset::CpuSet::new(), |all, &i| {
            all.union(&self.ledger.usable[i])
        });
        if !affinity.is_subset(&usable)
            || at.iter().any(|&i| !self.is_candidate(info, i))
            || at.len() > self.fewest_nodes_for(info, piece)
        {
            return None;
        }
        if info.current.memory_observed && info.memory_share_on(nodes) < 0.9 {
            return None;
        }
        let mut shares = SplitShares::default();
        shares
            .weights
            .extend(at.iter().map(|&i| self.ledger.usable_cpus(i) as u64));
        distribute_shares(piece.vcpus.len() as u64, &shares.weights, &mut shares.vcpus);
        shares.weights.clear();
        shares.weights.extend(
            nodes
                .iter()
                .map(|n| info.current.memory_mib.get(&n).copied().unwrap_or(0)),
        );
        if shares.weights.iter().all(|&w| w == 0) {
            shares.weights.clear();
            shares
                .weights
                .extend(at.iter().map(|&i| self.ledger.usable_cpus(i) as u64));
        }
        distribute_shares(piece.mem_mib, &shares.weights, &mut shares.mem);
        Some(self.split_parts(piece, &at, &shares))
    }

    /// The fewest candidate nodes whose capacity (CPUs and memory, empty)
    /// could hold the piece: a split over more is placed again, to gather
    /// onto fewer nodes once they have room.
    pub(super) fn fewest_nodes_for(&self, info: &DomainInfo, piece: &Piece) -> usize {
        let candidates = self.candidates(info);
        let fewest = |mut sizes: Vec<u64>, need: u64| {
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let mut sum = 0;
            sizes
                .iter()
                .position(|&s| {
                    sum += s;
                    sum >= need
                })
                .map_or(usize::MAX, |k| k + 1)
        };
        let mem = fewest(
            candidates
                .iter()
                .map(|&i| self.ledger.mem_capacity[i])
                .collect(),
            piece.mem_mib,
        );
        let cpus = fewest(
            candidates
                .iter()
                .map(|&i| self.ledger.usable_cpus(i) as u64)
                .collect(),
            piece.vcpus.len() as u64,
        );
        mem.max(cpus)
    }

    /// A guest whose cells no node can take one by one is split as a whole
    /// over the fewest, closest nodes, as a guest without cells would be,
    /// rather than left floating over every node. Its cells are then not
    /// mapped (the advice says so); as soon as nodes have room for its
    /// cells, it is placed cell by cell again. A split over every node it
    /// may use gains nothing over floating and is not made.
    pub(super) fn place_cells_split(
        &mut self,
        info: &DomainInfo,
        reason: String,
    ) -> Result<(Vec<Part>, String), String> {
        let hugepage_kib = info.pieces[0].hugepage_kib;
        // Cells bound to nodes cannot be pooled: each goes where it is bound.
        if info
            .pieces
            .iter()
            .any(|p| p.hugepage_kib != hugepage_kib || p.bound.is_some())
        {
            return Err(reason);
        }
        let whole = Piece {
            cell: None,
            vcpus: info.pieces.iter().flat_map(|p| p.vcpus.clone()).collect(),
            mem_mib: info.pieces.iter().map(|p| p.mem_mib).sum(),
            hugepage_kib,
            load: info.pieces.iter().map(|p| p.load).sum(),
            bound: None,
        };
        let (parts, _) = self.place_split(info, &whole).map_err(|_| reason.clone())?;
        let nodes = nodes_of(&parts);
        // Over every node it may use, the split is what floating already is.
        if nodes.len() >= self.candidates(info).len() {
            return Err(reason);
        }
        Ok((
            parts,
            format!("{reason}: split as a whole over nodes {nodes}, cells not mapped"),
        ))
    }

    /// Splits a domain no single node can take over the fewest, closest
    /// nodes: grow a set from each seed by nearest node until it has room,
    /// keep the smallest set, then the one with the least total distance,
    /// then the one the strategy prefers (as for one node, staying where
    /// the memory is counts for the threshold).
    pub(super) fn place_split(
        &mut self,
        info: &DomainInfo,
        piece: &Piece,
    ) -> Result<(Vec<Part>, String), String> {
        let candidates = self.candidates(info);
        let pol = policy(info);
        // While guests are placed the nodes only fill up, so a piece no
        // smaller than one that found no split finds none either: on a
        // host past its capacity this saves trying every split again.
        let unbound = info.fixed_nodes().is_none() && piece.bound.is_none();
        let failed = SplitFailure {
            policy: pol,
            hugepage_kib: piece.hugepage_kib,
            vcpus: piece.vcpus.len(),
            mem_mib: piece.mem_mib,
            load: piece.load,
        };
        if unbound && self.split_failures.iter().any(|f| failed.dominates(f)) {
            return Err(self.no_split_reason(piece));
        }
        let result = self.try_split(info, piece, &candidates, pol);
        if unbound && result.is_err() {
            self.split_failures.push(failed);
        }
        result
    }

    fn try_split(
        &mut self,
        info: &DomainInfo,
        piece: &Piece,
        candidates: &[usize],
        pol: CpuPolicy,
    ) -> Result<(Vec<Part>, String), String> {
        let candidates = candidates.to_vec();
        let rooms: Vec<Room> = candidates
            .iter()
            .map(|&i| self.room(piece, i, pol))
            .collect();
        let mut all = Room::default();
        rooms.iter().for_each(|r| all.add(r));
        // Fewer CPUs, or less memory, than all candidates have free: no
        // split can hold it.
        if !all.holds(piece, pol) {
            return Err(self.no_split_reason(piece));
        }
        let ids: Vec<u32> = candidates.iter().map(|&i| self.ledger.ids[i]).collect();
        let n = candidates.len();
        // Distances between candidates (by position), read once: the
        // growth below looks at every pair for every seed.
        let dist: Vec<u32> = ids
            .iter()
            .flat_map(|&a| ids.iter().map(move |&b| (a, b)))
            .map(|(a, b)| self.distances.get(a, b))
            .collect();
        // Each candidate's place among equally near ones: the least
        // pressed first, then the lowest id.
        let pressure: Vec<f64> = candidates
            .iter()
            .map(|&i| self.ledger.pressure(i))
            .collect();
        let mut by_pressure: Vec<usize> = (0..n).collect();
        by_pressure.sort_by(|&a, &b| {
            pressure[a]
                .total_cmp(&pressure[b])
                .then(ids[a].cmp(&ids[b]))
        });
        let mut rank = vec![0u64; n];
        for (r, &c) in by_pressure.iter().enumerate() {
            rank[c] = r as u64;
        }
        let mut shares = SplitShares::default();
        let mut best: Option<(usize, u32, f64, Vec<Part>)> = None;
        // Per candidate (by position): whether it is in the set, and its
        // largest distance from the set's members.
        let mut in_set = vec![false; n];
        let mut far = vec![0u32; n];
        for (k, &seed) in candidates.iter().enumerate() {
            let mut set = Vec::with_capacity(n);
            set.push(seed);
            // The same set by position among the candidates.
            let mut at = Vec::with_capacity(n);
            at.push(k);
            let mut room = rooms[k];
            in_set.fill(false);
            in_set[k] = true;
            far.copy_from_slice(&dist[k * n..(k + 1) * n]);
            loop {
                // A larger set than the best so far cannot win.
                if best.as_ref().is_some_and(|(n, _, _, _)| set.len() > *n) {
                    break;
                }
                // Most sets grown on a full host are too small: their sums
                // rule them out before any share is worked out.
                if room.holds(piece, pol) && self.split_fits(piece, &set, pol, &mut shares) {
                    let spread: u32 = at
                        .iter()
                        .flat_map(|&a| at.iter().map(move |&b| a * n + b))
                        .map(|ab| dist[ab])
                        .sum();
                    let closer = |n: usize, d: u32| (set.len(), spread).cmp(&(n, d));
                    if best
                        .as_ref()
                        .is_none_or(|(n, d, _, _)| closer(*n, *d).is_le())
                    {
                        let parts = self.split_parts(piece, &set, &shares);
                        let cost = self.split_cost(info, &parts, pol);
                        // The same nodes in another order are no other choice.
                        if best.as_ref().is_none_or(|(n, d, c, p)| {
                            closer(*n, *d).is_lt()
                                || (cost < c - 1e-12 && nodes_of(p) != nodes_of(&parts))
                        }) {
                            best = Some((set.len(), spread, cost, parts));
                        }
                    }
                    break;
                }
                // The nearest node; among equally near ones the least
                // pressed, then the lowest id.
                let next = (0..n)
                    .filter(|&c| !in_set[c])
                    .min_by_key(|&c| ((far[c] as u64) << 32) | rank[c]);
                let Some(next) = next else {
                    break;
                };
                set.push(candidates[next]);
                at.push(next);
                room.add(&rooms[next]);
                in_set[next] = true;
                for (f, &d) in far.iter_mut().zip(&dist[next * n..(next + 1) * n]) {
                    *f = (*f).max(d);
                }
            }
        }
        match best {
            Some((_, _, _, parts)) => {
                let nodes = nodes_of(&parts);
                let why = if self.fits_an_empty_node(info, piece) {
                    format!("fits one node but none has room now: split over nodes {nodes}")
                } else {
                    format!(
                        "larger than any node ({} vCPUs, {} MiB): split over the {} closest nodes {nodes}",
                        piece.vcpus.len(),
                        piece.mem_mib,
                        nodes.len()
                    )
                };
                Ok((parts, why))
            }
            None => Err(self.no_split_reason(piece)),
        }
    }

    /// Lower is better: the busiest of the split's nodes once it is there,
    /// by strategy, plus the threshold for the share of memory elsewhere.
    pub(super) fn split_cost(&mut self, info: &DomainInfo, parts: &[Part], pol: CpuPolicy) -> f64 {
        let at: Vec<usize> = parts
            .iter()
            .filter_map(|p| self.ledger.index(p.node))
            .collect();
        for (&i, p) in at.iter().zip(parts) {
            self.ledger.reserve(i, &p.demand(), pol);
        }
        let peak = at
            .iter()
            .map(|&i| self.ledger.pressure(i))
            .fold(0.0, f64::max);
        for (&i, p) in at.iter().zip(parts) {
            self.ledger.release(i, &p.demand(), pol);
        }
        let by_strategy = match self.strategy {
            Strategy::Spread => peak,
            Strategy::Pack => 1.0 - peak,
        };
        by_strategy + self.min_gain * (1.0 - info.memory_share_on(&nodes_of(parts)))
    }

    pub(super) fn no_split_reason(&self, piece: &Piece) -> String {
        format!(
            "does not fit: needs {} vCPUs and {} MiB{}, more than the free capacity of all its candidate nodes",
            piece.vcpus.len(),
            piece.mem_mib,
            piece
                .hugepage_kib
                .map(|k| format!(" of {k} KiB pages"))
                .unwrap_or_default()
        )
    }

    /// What node index `i` could take of the piece at most (see [`Room`]
    /// and `split_fits`: every node's share of the vCPUs, load and memory
    /// must fit it).
    fn room(&self, piece: &Piece, i: usize, pol: CpuPolicy) -> Room {
        let l = &self.ledger;
        let (cpus, load) = match pol {
            CpuPolicy::Dedicated => (l.dedicated_room(i).max(0), 0.0),
            CpuPolicy::Shared => (
                l.shared_cpus(i) as i64,
                (l.shared_capacity(i) + 1e-9 - l.shared_load[i]).max(0.0),
            ),
        };
        Room {
            mem_mib: self.split_free_mib(piece, i) as u128,
            cpus,
            load,
        }
    }

    /// Free memory (MiB) of the piece's kind on node index `i`, as a split
    /// weighs it.
    pub(super) fn split_free_mib(&self, piece: &Piece, i: usize) -> u64 {
        let free = match piece.hugepage_kib {
            Some(size) => {
                self.ledger.pages_free[i].get(&size).copied().unwrap_or(0) * size as i64 / 1024
            }
            None => self.ledger.mem_free[i],
        };
        free.max(0) as u64
    }

    pub(super) fn fits_an_empty_node(&self, info: &DomainInfo, piece: &Piece) -> bool {
        self.candidates(info).into_iter().any(|i| {
            self.ledger.usable_cpus(i) >= piece.vcpus.len()
                && self.ledger.mem_capacity[i] >= piece.mem_mib
        })
    }

    /// Whether the piece divided over the node set fits: vCPUs in proportion
    /// to CPUs, memory in proportion to free memory. Leaves the shares in
    /// `shares` for [`Self::split_parts`].
    fn split_fits(
        &self,
        piece: &Piece,
        set: &[usize],
        pol: CpuPolicy,
        shares: &mut SplitShares,
    ) -> bool {
        shares.weights.clear();
        shares
            .weights
            .extend(set.iter().map(|&i| self.ledger.usable_cpus(i) as u64));
        distribute_shares(piece.vcpus.len() as u64, &shares.weights, &mut shares.vcpus);
        let load_of = |n: u64| piece.load * n as f64 / piece.vcpus.len().max(1) as f64;
        // Once the summed room holds the piece, a set fails on some node's
        // CPUs rather than on memory: those are checked first, before the
        // memory is divided (the checks below repeat them).
        let cpus_fit = set.iter().zip(&shares.vcpus).all(|(&i, &n)| {
            let demand = Demand {
                vcpus: n as usize,
                mem_mib: 0,
                hugepage_kib: None,
                load: load_of(n),
            };
            self.ledger.cpu_fits(i, &demand, pol)
        });
        if !cpus_fit {
            return false;
        }
        shares.weights.clear();
        shares
            .weights
            .extend(set.iter().map(|&i| self.split_free_mib(piece, i)));
        distribute_shares(piece.mem_mib, &shares.weights, &mut shares.mem);
        // Nodes with no memory free take none: the set must hold it all.
        if shares.mem.iter().sum::<u64>() < piece.mem_mib {
            return false;
        }
        set.iter().enumerate().all(|(k, &i)| {
            let n = shares.vcpus[k] as usize;
            let demand = Demand {
                vcpus: n,
                mem_mib: shares.mem[k],
                hugepage_kib: piece.hugepage_kib,
                load: load_of(n as u64),
            };
            self.ledger.fits(i, &demand, pol)
        })
    }

    /// The parts of a split that [`Self::split_fits`] accepted, by node:
    /// vCPUs in contiguous blocks in the order of the set.
    fn split_parts(&self, piece: &Piece, set: &[usize], shares: &SplitShares) -> Vec<Part> {
        let mut parts = Vec::with_capacity(set.len());
        let mut next_vcpu = 0usize;
        for (k, &i) in set.iter().enumerate() {
            let n = shares.vcpus[k] as usize;
            parts.push(Part {
                node: self.ledger.ids[i],
                cell: None,
                load: piece.load * n as f64 / piece.vcpus.len().max(1) as f64,
                vcpus: piece.vcpus[next_vcpu..next_vcpu + n].to_vec(),
                mem_mib: shares.mem[k],
                hugepage_kib: piece.hugepage_kib,
                spill: None,
            });
            next_vcpu += n;
        }
        parts.sort_by_key(|p| p.node);
        parts
    }
}
