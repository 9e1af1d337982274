//! Where each guest NUMA cell's RAM is, from `proc/PID/smaps` and
//! `proc/PID/numa_maps` of its QEMU process.
//!
//! For a domain with cells, libvirt gives QEMU one `memory-backend-ram` per
//! cell, sized as the cell. Each is one anonymous mapping of exactly that
//! size, marked `dc` (MADV_DONTFORK, which QEMU sets on every RAM block) in
//! smaps' `VmFlags`. QEMU creates them in cell order and the kernel hands
//! out anonymous mappings top down, so among blocks of equal size the first
//! cell has the highest address.
//!
//! That is all there is to go on (the mapping carries no name), so the
//! match is strict: a cell whose size matches no block, or a size shared by
//! more blocks than cells, gives no answer rather than a guess; the caller
//! then treats the domain's memory as a whole. File-backed RAM (hugetlbfs,
//! memfd) is not recognised.

use std::collections::BTreeMap;
use std::path::Path;

use super::ObserveError;
use super::files::{bad, read_volatile};
use super::numa_maps::{self, Entry};

/// One mapping of the process, as far as telling RAM blocks apart needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// No file, no special name (`[heap]`, `[stack]`).
    pub anonymous: bool,
    /// `VmFlags` has `dc` (MADV_DONTFORK): QEMU marks its RAM blocks so.
    pub dontfork: bool,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A guest cell's RAM block and where its pages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellBlock {
    pub cell: u32,
    pub start: u64,
    pub end: u64,
    /// Host node -> resident bytes of the block on it.
    pub resident: BTreeMap<u32, u64>,
    /// Resident bytes in shared pages (the huge zero page), counted in
    /// `resident` on the shared page's node though no move can or need
    /// change them.
    pub shared: u64,
}

impl CellBlock {
    /// Resident MiB per node, rounded; nodes under half a MiB left out.
    pub fn resident_mib(&self) -> BTreeMap<u32, u64> {
        crate::units::mib_per_node(&self.resident)
    }
}

/// The RAM blocks of `cells` (id, size in bytes; in cell order) in QEMU
/// process `pid` under `root`. `Ok(None)` when some cell's block cannot be
/// told apart.
pub fn read(
    root: &Path,
    pid: u32,
    cells: &[(u32, u64)],
) -> Result<Option<Vec<CellBlock>>, ObserveError> {
    let path = root.join(format!("proc/{pid}/smaps"));
    let text = read_volatile(&path)?;
    if text.trim().is_empty() {
        return Err(ObserveError::Gone { path });
    }
    let mappings = parse_smaps(&path, &text)?;
    let Some(ranges) = match_cells(&mappings, cells) else {
        return Ok(None);
    };
    let entries = numa_maps::read_entries(root, pid)?;
    Ok(Some(blocks(&ranges, &entries)))
}

/// Every RAM block of QEMU process `pid` under `root`, as (start, end):
/// its anonymous mappings marked MADV_DONTFORK, whichever guest cell each
/// belongs to. Guest RAM is nearly all of a QEMU process's memory.
pub fn all(root: &Path, pid: u32) -> Result<Vec<(u64, u64)>, ObserveError> {
    let path = root.join(format!("proc/{pid}/smaps"));
    let text = read_volatile(&path)?;
    if text.trim().is_empty() {
        return Err(ObserveError::Gone { path });
    }
    Ok(parse_smaps(&path, &text)?
        .into_iter()
        .filter(|m| m.anonymous && m.dontfork && !m.is_empty())
        .map(|m| (m.start, m.end))
        .collect())
}

/// Parses smaps text into its mappings; `path` only labels errors.
pub fn parse_smaps(path: &Path, text: &str) -> Result<Vec<Mapping>, ObserveError> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out
                .last_mut()
                .ok_or_else(|| bad(path, line, "an smaps mapping header before its fields"))?;
            last.dontfork = flags.split_whitespace().any(|f| f == "dc");
            continue;
        }
        if first.ends_with(':') {
            continue; // Size:, Rss:, ... of the mapping above
        }
        let (start, end) = first
            .split_once('-')
            .and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| bad(path, line, "an smaps header starting with start-end"))?;
        // perms, offset, device, inode, then the name if any.
        let inode = words.nth(3).unwrap_or("");
        let name = words.next();
        out.push(Mapping {
            start,
            end,
            anonymous: inode == "0" && name.is_none(),
            dontfork: false,
        });
    }
    Ok(out)
}

/// Each cell's block as (cell, start, end), or `None` when a cell has no
/// block of its size or a size is shared by more blocks than cells.
pub fn match_cells(mappings: &[Mapping], cells: &[(u32, u64)]) -> Option<Vec<(u32, u64, u64)>> {
    let mut by_size: BTreeMap<u64, Vec<&Mapping>> = BTreeMap::new();
    for m in mappings.iter().filter(|m| m.anonymous && m.dontfork) {
        by_size.entry(m.len()).or_default().push(m);
    }
    let mut wanted: BTreeMap<u64, usize> = BTreeMap::new();
    for &(_, size) in cells {
        *wanted.entry(size).or_default() += 1;
    }
    for (size, count) in &wanted {
        if by_size.get(size).map_or(0, Vec::len) != *count {
            return None;
        }
    }
    for blocks in by_size.values_mut() {
        // Top down: the first cell of a size has the highest address.
        blocks.sort_by_key(|m| std::cmp::Reverse(m.start));
    }
    let mut taken: BTreeMap<u64, usize> = BTreeMap::new();
    cells
        .iter()
        .map(|&(cell, size)| {
            let next = taken.entry(size).or_default();
            let m = by_size.get(&size)?.get(*next)?;
            *next += 1;
            Some((cell, m.start, m.end))
        })
        .collect()
}

/// Sums the numa_maps lines inside each range (a block under policies set
/// on parts of it has several lines).
fn blocks(ranges: &[(u32, u64, u64)], entries: &[Entry]) -> Vec<CellBlock> {
    ranges
        .iter()
        .map(|&(cell, start, end)| {
            let mut resident: BTreeMap<u32, u64> = BTreeMap::new();
            let mut shared = 0u64;
            for e in entries.iter().filter(|e| e.start >= start && e.start < end) {
                for (&node, &b) in &e.resident {
                    let slot = resident.entry(node).or_default();
                    *slot = slot.saturating_add(b);
                }
                let total = e
                    .resident
                    .values()
                    .fold(0u64, |sum, &b| sum.saturating_add(b));
                shared = shared.saturating_add(total.saturating_sub(e.anon));
            }
            CellBlock {
                cell,
                start,
                end,
                resident,
                shared,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Cut from a real QEMU 7.2 of a domain with cells of 64 and 96 MiB.
    const SMAPS: &str = "\
55d1c0a00000-55d1c0e5c000 r--p 00000000 fe:01 1835226                    /usr/bin/qemu-system-x86_64
Size:               4464 kB
VmFlags: rd mr mw me sd
7fb2cdc00000-7fb2d3c00000 rw-p 00000000 00:00 0 
Size:              98304 kB
Rss:               98304 kB
VmFlags: rd wr mr mw me dc ac dd hg mg
7fb2d3c00000-7fb2d3e00000 rw-p 00000000 00:00 0 
Size:               2048 kB
VmFlags: rd wr mr mw me ac
7fb2d3e00000-7fb2d7e00000 rw-p 00000000 00:00 0 
Size:              65536 kB
VmFlags: rd wr mr mw me dc ac dd hg mg
7fb2d8000000-7fb2dc000000 rw-p 00000000 00:00 0 
Size:              65536 kB
VmFlags: rd wr mr mw me ac
7ffc1a2e0000-7ffc1a301000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
";

    fn mappings() -> Vec<Mapping> {
        parse_smaps(Path::new("smaps"), SMAPS).unwrap()
    }

    #[test]
    fn reads_ranges_names_and_dontfork() {
        let m = mappings();
        assert_eq!(m.len(), 6);
        assert!(!m[0].anonymous, "the binary is a file");
        assert!(m[1].anonymous && m[1].dontfork);
        assert_eq!(m[1].len(), 96 * MIB);
        assert!(m[2].anonymous && !m[2].dontfork);
        assert!(!m[5].anonymous, "[stack] is named");
    }

    #[test]
    fn cells_take_blocks_of_their_size() {
        let got = match_cells(&mappings(), &[(0, 64 * MIB), (1, 96 * MIB)]).unwrap();
        assert_eq!(
            got,
            [
                (0, 0x7fb2d3e00000, 0x7fb2d7e00000),
                (1, 0x7fb2cdc00000, 0x7fb2d3c00000)
            ]
        );
    }

    #[test]
    fn cells_of_equal_size_take_descending_addresses() {
        let m = vec![
            Mapping {
                start: 0x1000_0000,
                end: 0x1000_0000 + 64 * MIB,
                anonymous: true,
                dontfork: true,
            },
            Mapping {
                start: 0x3000_0000,
                end: 0x3000_0000 + 64 * MIB,
                anonymous: true,
                dontfork: true,
            },
        ];
        let got = match_cells(&m, &[(0, 64 * MIB), (1, 64 * MIB)]).unwrap();
        assert_eq!(got[0].1, 0x3000_0000);
        assert_eq!(got[1].1, 0x1000_0000);
    }

    #[test]
    fn a_cell_without_a_block_or_an_ambiguous_size_gives_no_answer() {
        // 32 MiB: no such block.
        assert!(match_cells(&mappings(), &[(0, 64 * MIB), (1, 32 * MIB)]).is_none());
        // Two 64 MiB blocks with dc for one 64 MiB cell: which is it?
        let mut m = mappings();
        m[4].dontfork = true;
        assert!(match_cells(&m, &[(0, 64 * MIB), (1, 96 * MIB)]).is_none());
        // Without dc a block of the right size is not RAM.
        let mut m = mappings();
        m[3].dontfork = false;
        assert!(match_cells(&m, &[(0, 64 * MIB), (1, 96 * MIB)]).is_none());
    }

    #[test]
    fn reads_per_cell_memory_from_a_captured_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("proc/4242");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("smaps"), SMAPS).unwrap();
        std::fs::write(
            dir.join("numa_maps"),
            "55d1c0a00000 default file=/usr/bin/qemu-system-x86_64 mapped=100 N0=100 kernelpagesize_kB=4\n\
             7fb2cdc00000 default anon=1024 dirty=1024 N0=1024 N1=23552 kernelpagesize_kB=4\n\
             7fb2d3c00000 default anon=10 dirty=10 N1=10 kernelpagesize_kB=4\n\
             7fb2d3e00000 default anon=8192 dirty=8192 N0=8192 kernelpagesize_kB=4\n\
             7fb2d5e00000 bind:1 anon=8192 dirty=8192 N1=8192 kernelpagesize_kB=4\n",
        )
        .unwrap();
        let got = read(tmp.path(), 4242, &[(0, 64 * MIB), (1, 96 * MIB)])
            .unwrap()
            .unwrap();
        assert_eq!(got[0].cell, 0);
        assert_eq!(
            got[0].resident_mib(),
            BTreeMap::from([(0, 32), (1, 32)]),
            "both lines of the block count"
        );
        assert_eq!(got[1].resident_mib(), BTreeMap::from([(0, 4), (1, 92)]));
        // Cell 1 is read but mostly never written: the huge zero page's
        // mappings count on its node without being the process's own.
        assert_eq!(got[1].shared, 23552 * 4096);
        assert_eq!(got[0].shared, 0);
        assert_eq!(
            read(tmp.path(), 4242, &[(0, 48 * MIB)]).unwrap(),
            None,
            "no block of that size"
        );
        assert!(read(tmp.path(), 1, &[(0, MIB)]).unwrap_err().is_gone());
    }

    #[test]
    fn malformed_headers_name_the_line() {
        let e = parse_smaps(Path::new("smaps"), "zz-1 rw-p 0 00:00 0\n").unwrap_err();
        assert!(matches!(e, ObserveError::BadContent { .. }), "{e}");
        let e = parse_smaps(Path::new("smaps"), "VmFlags: dc\n").unwrap_err();
        assert!(matches!(e, ObserveError::BadContent { .. }), "{e}");
    }
}
