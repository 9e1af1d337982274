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

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Words kept inline: ids 0-511, every CPU of most hosts.
const INLINE_WORDS: usize = 8;

/// The words of a set: inline when few, else on the heap.
#[derive(Clone)]
enum Words {
    Inline { len: u8, buf: [u64; INLINE_WORDS] },
    Heap(Vec<u64>),
}

impl Default for Words {
    fn default() -> Self {
        Words::Inline {
            len: 0,
            buf: [0; INLINE_WORDS],
        }
    }
}

impl Words {
    /// `len` zero words.
    fn zeroed(len: usize) -> Self {
        if len <= INLINE_WORDS {
            Words::Inline {
                len: len as u8,
                buf: [0; INLINE_WORDS],
            }
        } else {
            Words::Heap(vec![0; len])
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Words::Inline { len, buf } => &buf[..*len as usize],
            Words::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u64] {
        match self {
            Words::Inline { len, buf } => &mut buf[..*len as usize],
            Words::Heap(v) => v,
        }
    }

    /// Grows with zero words or shrinks to `new_len` words.
    fn resize(&mut self, new_len: usize) {
        match self {
            Words::Inline { len, buf } if new_len <= INLINE_WORDS => {
                buf[new_len.min(*len as usize)..].fill(0);
                *len = new_len as u8;
            }
            Words::Inline { len, buf } => {
                let mut v = buf[..*len as usize].to_vec();
                v.resize(new_len, 0);
                *self = Words::Heap(v);
            }
            Words::Heap(v) => v.resize(new_len, 0),
        }
    }
}

impl std::ops::Deref for Words {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Words {
    fn deref_mut(&mut self) -> &mut [u64] {
        self.as_mut_slice()
    }
}

/// CPU ids (host or guest). Same type as [`NodeSet`] by design.
pub type CpuSet = IdSet;
/// NUMA node ids (host nodes or guest cells).
pub type NodeSet = IdSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdSetError {
    #[error("empty element in list {0:?}")]
    EmptyElement(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("id {0} is above the maximum of {MAX_ID}")]
    TooLarge(u64),
    #[error("range {0}-{1} runs backwards")]
    Backwards(u32, u32),
}

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

fn parse_id(text: &str) -> Result<u32, IdSetError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdSetError::NotANumber(text.to_string()));
    }
    let value: u64 = t.parse().map_err(|_| IdSetError::TooLarge(u64::MAX))?;
    if value > MAX_ID as u64 {
        return Err(IdSetError::TooLarge(value));
    }
    Ok(value as u32)
}

/// Parses `N` or `N-M` into an inclusive range.
fn parse_range(item: &str) -> Result<(u32, u32), IdSetError> {
    match item.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_id(a)?, parse_id(b)?);
            if b < a {
                return Err(IdSetError::Backwards(a, b));
            }
            Ok((a, b))
        }
        None => {
            let a = parse_id(item)?;
            Ok((a, a))
        }
    }
}

impl FromStr for IdSet {
    type Err = IdSetError;

    /// Accepts libvirt syntax: comma-separated ids and ranges, where `^N` (or
    /// `^N-M`) removes ids added earlier in the list, as libvirt does.
    /// Surrounding whitespace and a trailing newline (sysfs) are ignored; an
    /// empty or all-blank string is the empty set (an empty sysfs cpulist).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = IdSet::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(set);
        }
        for raw in text.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(IdSetError::EmptyElement(text.to_string()));
            }
            if let Some(excluded) = item.strip_prefix('^') {
                let (a, b) = parse_range(excluded)?;
                for id in a..=b {
                    set.remove(id);
                }
            } else {
                let (a, b) = parse_range(item)?;
                set.insert_range(a, b + 1);
            }
        }
        Ok(set)
    }
}

impl fmt::Display for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdSet({self})")
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

impl Serialize for IdSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IdSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(text: &str) -> IdSet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_libvirt_syntax() {
        assert_eq!(set("0-3,^2,8").iter().collect::<Vec<_>>(), [0, 1, 3, 8]);
        assert_eq!(set("0-7,^2-5").to_string(), "0-1,6-7");
        assert_eq!(set(" 1, 3 ,5-6\n").to_string(), "1,3,5-6");
        assert_eq!(set("").len(), 0);
        assert_eq!(set("\n").to_string(), "");
        assert_eq!(set("5,4,4,3").to_string(), "3-5");
        assert_eq!(set("63-65").to_string(), "63-65");
    }

    #[test]
    fn rejects_malformed_lists_with_the_offending_part() {
        assert_eq!(
            "1,,2".parse::<IdSet>().unwrap_err(),
            IdSetError::EmptyElement("1,,2".into())
        );
        assert_eq!(
            "a-3".parse::<IdSet>().unwrap_err(),
            IdSetError::NotANumber("a".into())
        );
        assert_eq!(
            "4-2".parse::<IdSet>().unwrap_err(),
            IdSetError::Backwards(4, 2)
        );
        assert_eq!(
            "0-99999999999".parse::<IdSet>().unwrap_err(),
            IdSetError::TooLarge(99_999_999_999)
        );
        assert!("-1".parse::<IdSet>().is_err());
        assert!("1-".parse::<IdSet>().is_err());
        assert!("^".parse::<IdSet>().is_err());
        assert!("+1".parse::<IdSet>().is_err());
    }

    #[test]
    fn set_operations() {
        let a = set("0-7");
        let b = set("4-11");
        assert_eq!(a.union(&b).to_string(), "0-11");
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert!(set("1-2").is_subset(&a));
        assert!(!b.is_subset(&a));
        assert!(a.intersects(&b));
        assert_eq!(a.intersection_len(&b), 4);
        assert!(!set("0").intersects(&set("200")));
        assert_eq!(set("3,130").last(), Some(130));
        assert_eq!(set("3,130").first(), Some(3));
        let mut c = set("64");
        c.remove(64);
        assert!(c.is_empty());
        assert_eq!(c, IdSet::new());
    }

    #[test]
    fn bitmaps_use_libvirts_byte_layout() {
        // CPUs 0, 9 and 17: byte 0 bit 0, byte 1 bit 1, byte 2 bit 1.
        assert_eq!(set("0,9,17").to_bitmap_bytes(3), [0b1, 0b10, 0b10]);
        assert_eq!(set("0,9,17").to_bitmap_bytes(1), [0b1]);
        assert_eq!(
            IdSet::from_bitmap_bytes(&[0b1, 0b10, 0b10, 0, 0]),
            set("0,9,17")
        );
        assert_eq!(IdSet::from_bitmap_bytes(&[0; 4]), IdSet::new());
        assert_eq!(set("1,65").to_words(3), [0b10, 0b10, 0]);
    }

    #[test]
    fn large_sets_spill_to_the_heap_and_compare_by_ids() {
        let big = set("0-1000");
        assert_eq!(big.len(), 1001);
        assert_eq!(big.last(), Some(1000));
        let small = big.difference(&set("64-1000"));
        assert_eq!(small, set("0-63"));
        assert_eq!(big.intersection(&set("500-520")).to_string(), "500-520");
        let mut grown = set("3");
        grown.union_with(&set("900"));
        grown.insert(700);
        assert_eq!(grown.to_string(), "3,700,900");
        assert_eq!(grown.iter().rev().collect::<Vec<_>>(), [900, 700, 3]);
        grown.subtract(&set("700-900"));
        assert_eq!(grown, set("3"));
        let hash = |s: &IdSet| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&grown), hash(&set("3")));
    }

    proptest! {
        #[test]
        fn print_then_parse_round_trips(ids in proptest::collection::btree_set(0u32..2048, 0..200)) {
            let s: IdSet = ids.iter().copied().collect();
            let text = s.to_string();
            let back: IdSet = text.parse().unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), ids.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn bitmap_bytes_round_trip(ids in proptest::collection::btree_set(0u32..1024, 0..100)) {
            let s: IdSet = ids.iter().copied().collect();
            prop_assert_eq!(IdSet::from_bitmap_bytes(&s.to_bitmap_bytes(128)), s);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = text.parse::<IdSet>();
        }

        #[test]
        fn exclusion_matches_set_difference(
            add in proptest::collection::btree_set(0u32..300, 1..40),
            del in proptest::collection::btree_set(0u32..300, 0..40),
        ) {
            let add_s: IdSet = add.iter().copied().collect();
            let del_s: IdSet = del.iter().copied().collect();
            let mut text = add_s.to_string();
            for d in &del {
                text.push_str(&format!(",^{d}"));
            }
            let parsed: IdSet = text.parse().unwrap();
            prop_assert_eq!(parsed, add_s.difference(&del_s));
        }
    }
}
