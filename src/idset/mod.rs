//! One set type for every CPU list and node list numapin reads or writes.
//!
//! The text form is libvirt's (`0-3,^2,8`), which is a superset of the kernel's
//! sysfs `cpulist` form (`0-3,8`), so the same parser reads `virsh` output,
//! domain XML and sysfs files. Printing always yields the canonical form
//! (ascending, ranges collapsed, no exclusions), which both libvirt and the
//! kernel accept.
//!
//! Stored as a bitmap because the planner clones and intersects node CPU sets
//! for every vCPU of every domain: a few machine words beat a tree of nodes.
//! Sets of ids below 512 keep their words inline, so cloning one (once per
//! vCPU in a plan) does not allocate.

#[cfg(test)]
mod tests;
mod text;
mod words;

pub use text::IdSetError;
use words::Words;

/// Largest id accepted when parsing. Far above any real host (libvirt's own
/// limit is lower) yet small enough that `0-999999999` cannot exhaust memory.
pub const MAX_ID: u32 = 65_535;

/// A set of CPU or NUMA node ids.
#[derive(Clone, Default)]
pub struct IdSet {
    /// Bit `i % 64` of word `i / 64` is id `i`. No trailing zero words, so
    /// equality and hashing of the words are equality of sets.
    words: Words,
}

impl PartialEq for IdSet {
    fn eq(&self, other: &Self) -> bool {
        self.words.as_slice() == other.words.as_slice()
    }
}

impl Eq for IdSet {}

impl std::hash::Hash for IdSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.words.as_slice().hash(state);
    }
}

/// CPU ids (host or guest). Same type as [`NodeSet`] by design.
pub type CpuSet = IdSet;
/// NUMA node ids (host nodes or guest cells).
pub type NodeSet = IdSet;

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids `0..n`.
    pub fn first_n(n: u32) -> Self {
        let mut s = Self::new();
        s.insert_range(0, n);
        s
    }

    /// The ids `start..end` (end exclusive).
    pub fn from_range(start: u32, end: u32) -> Self {
        let mut s = Self::new();
        s.insert_range(start, end);
        s
    }

    pub fn single(id: u32) -> Self {
        let mut s = Self::new();
        s.insert(id);
        s
    }

    pub fn insert(&mut self, id: u32) {
        let (w, b) = (id as usize / 64, id % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1);
        }
        self.words[w] |= 1 << b;
    }

    fn insert_range(&mut self, start: u32, end: u32) {
        for id in start..end {
            self.insert(id);
        }
    }

    pub fn remove(&mut self, id: u32) {
        let (w, b) = (id as usize / 64, id % 64);
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << b);
        }
        self.trim();
    }

    pub fn contains(&self, id: u32) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    pub fn last(&self) -> Option<u32> {
        let (i, w) = self.words.iter().enumerate().next_back()?;
        Some(i as u32 * 64 + 63 - w.leading_zeros())
    }

    /// Ids in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, &word)| Bits(word).map(move |b| i as u32 * 64 + b))
    }

    pub fn union(&self, other: &Self) -> Self {
        let (long, short) = if self.words.len() >= other.words.len() {
            (self, other)
        } else {
            (other, self)
        };
        let mut words = long.words.clone();
        for (w, o) in words.iter_mut().zip(short.words.iter()) {
            *w |= o;
        }
        Self { words }
    }

    pub fn union_with(&mut self, other: &Self) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len());
        }
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= o;
        }
    }

    pub fn intersection(&self, other: &Self) -> Self {
        let mut words = Words::zeroed(self.words.len().min(other.words.len()));
        for ((w, a), b) in words
            .iter_mut()
            .zip(self.words.iter())
            .zip(other.words.iter())
        {
            *w = a & b;
        }
        let mut s = Self { words };
        s.trim();
        s
    }

    pub fn difference(&self, other: &Self) -> Self {
        let mut s = self.clone();
        s.subtract(other);
        s
    }

    pub fn subtract(&mut self, other: &Self) {
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w &= !o;
        }
        self.trim();
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.words
            .iter()
            .enumerate()
            .all(|(i, w)| w & !other.words.get(i).copied().unwrap_or(0) == 0)
    }

    /// Size of the intersection, without building it.
    pub fn intersection_len(&self, other: &Self) -> usize {
        self.words
            .iter()
            .zip(other.words.iter())
            .map(|(a, b)| (a & b).count_ones() as usize)
            .sum()
    }

    pub fn intersects(&self, other: &Self) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .any(|(a, b)| a & b != 0)
    }

    /// The set as a little-endian bitmap of `len` bytes (libvirt's cpumap
    /// layout: bit `i % 8` of byte `i / 8` is id `i`). Ids that do not fit
    /// are dropped: callers size `len` from the host's CPU count.
    pub fn to_bitmap_bytes(&self, len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.resize(len, 0);
        bytes
    }

    /// Reads a little-endian bitmap (libvirt cpumap layout).
    pub fn from_bitmap_bytes(bytes: &[u8]) -> Self {
        let mut set = Self {
            words: Words::zeroed(bytes.len().div_ceil(8)),
        };
        for (w, chunk) in set.words.as_mut_slice().iter_mut().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(word);
        }
        set.trim();
        set
    }

    /// The set as machine words (the kernel's `unsigned long` node mask
    /// layout on 64-bit hosts), padded with zero words to `min_words`.
    pub fn to_words(&self, min_words: usize) -> Vec<u64> {
        let mut words = self.words.as_slice().to_vec();
        if words.len() < min_words {
            words.resize(min_words, 0);
        }
        words
    }

    fn trim(&mut self) {
        let len = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1);
        if len < self.words.len() {
            self.words.resize(len);
        }
    }

    /// Runs of consecutive ids as inclusive `(first, last)` pairs.
    fn runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for id in self.iter() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == id => *last = id,
                _ => runs.push((id, id)),
            }
        }
        runs
    }
}

/// The set bits of one word, lowest first.
struct Bits(u64);

impl Iterator for Bits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(b)
    }
}

impl DoubleEndedIterator for Bits {
    fn next_back(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = 63 - self.0.leading_zeros();
        self.0 &= !(1 << b);
        Some(b)
    }
}

impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut s = IdSet::new();
        for id in iter {
            s.insert(id);
        }
        s
    }
}

impl Ord for IdSet {
    /// Orders sets by their ascending id sequences, so sorting is stable
    /// across runs and platforms.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for IdSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
