//! Where a process's memory is, from `proc/PID/numa_maps`.
//!
//! One line per mapping: `<address> <policy> [file=..] [heap|stack|huge]
//! [anon=..] .. N0=<pages> N1=<pages> .. kernelpagesize_kB=<size>`. The `N`
//! counts are pages of that mapping's page size, so a hugetlbfs line with
//! `kernelpagesize_kB=2048` counts 2 MiB pages.
//!
//! The figures include file pages mapped by the process but shared with
//! others (the QEMU binary and its libraries, tens of MiB), which the
//! domain's memory cgroup ([`super::cgroup`]) does not charge to it. Reading
//! this file takes the process's mmap lock; the cgroup is the cheaper source
//! when only totals per node are wanted.

use std::collections::BTreeMap;
use std::path::Path;

use super::ObserveError;
use super::files::{bad, node_entry, read_volatile};

/// Page size of lines that do not say (the kernel prints it on every line
/// that has pages, so this only matters for hand-written input).
const DEFAULT_PAGE_KIB: u64 = 4;

/// Policy names that contain a space, as the kernel prints them
/// (`mm/mempolicy.c`, `policy_modes`); every other policy is one word.
const TWO_WORD_POLICIES: [&str; 2] = ["weighted interleave", "prefer (many)"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumaMaps {
    /// Host node -> resident bytes of the process on it.
    pub resident: BTreeMap<u32, u64>,
    /// Memory policy as printed (`default`, `bind:0-1`, `interleave:0-3`,
    /// `prefer=static:1`) -> the mappings under it. Shows whether QEMU bound
    /// guest RAM itself (libvirt's `strict` mode prints `bind:`).
    pub policies: BTreeMap<String, PolicyUsage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyUsage {
    pub mappings: usize,
    pub resident_bytes: u64,
}

impl NumaMaps {
    pub fn total_bytes(&self) -> u64 {
        // Per-node counts are each checked; their sum saturates, never wraps.
        self.resident
            .values()
            .fold(0u64, |sum, &b| sum.saturating_add(b))
    }
}

/// Reads `proc/PID/numa_maps` under `root`.
pub fn read(root: &Path, pid: u32) -> Result<NumaMaps, ObserveError> {
    let path = root.join(format!("proc/{pid}/numa_maps"));
    let text = read_volatile(&path)?;
    // A process without an address space prints nothing: it is exiting
    // (or is a kernel thread, which no pid file names).
    if text.trim().is_empty() {
        return Err(ObserveError::Gone { path });
    }
    parse(&path, &text)
}

/// One line of numa_maps: a mapping (or the part of one under a policy of
/// its own) by start address, with its resident bytes per node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub start: u64,
    pub resident: BTreeMap<u32, u64>,
    /// Of those, bytes in anonymous pages of the process's own: the rest
    /// are shared pages such as the huge zero page, which reads of
    /// never-written memory map.
    pub anon: u64,
}

/// Reads `proc/PID/numa_maps` under `root`, line by line.
pub fn read_entries(root: &Path, pid: u32) -> Result<Vec<Entry>, ObserveError> {
    let path = root.join(format!("proc/{pid}/numa_maps"));
    let text = read_volatile(&path)?;
    if text.trim().is_empty() {
        return Err(ObserveError::Gone { path });
    }
    parse_entries(&path, &text)
}

/// Parses numa_maps text into its lines; `path` only labels errors.
pub fn parse_entries(path: &Path, text: &str) -> Result<Vec<Entry>, ObserveError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut resident = BTreeMap::new();
        parse_line(path, line, &mut resident)?;
        let address = line.split_whitespace().next().unwrap_or("");
        let start = u64::from_str_radix(address, 16)
            .map_err(|_| bad(path, line, "a numa_maps line starting with an address"))?;
        let anon = anon_bytes(path, line)?;
        out.push(Entry {
            start,
            resident,
            anon,
        });
    }
    Ok(out)
}

/// Parses numa_maps text; `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<NumaMaps, ObserveError> {
    let mut out = NumaMaps::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let line_bytes = parse_line(path, line, &mut out.resident)?;
        let policy = policy(line).ok_or_else(|| bad(path, line, "a numa_maps line"))?;
        let usage = out.policies.entry(policy.to_string()).or_default();
        usage.mappings += 1;
        usage.resident_bytes = usage.resident_bytes.saturating_add(line_bytes);
    }
    Ok(out)
}

/// Adds one line's pages to `resident` and returns the line's bytes.
fn parse_line(
    path: &Path,
    line: &str,
    resident: &mut BTreeMap<u32, u64>,
) -> Result<u64, ObserveError> {
    let mut words = line.split_whitespace();
    let address = words.next().unwrap_or("");
    if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(path, line, "a numa_maps line starting with an address"));
    }
    let mut page_kib = DEFAULT_PAGE_KIB;
    let mut pages = Vec::new();
    for word in words {
        if let Some(size) = word.strip_prefix("kernelpagesize_kB=") {
            page_kib = size
                .parse()
                .map_err(|_| bad(path, line, "a numa_maps line with a numeric page size"))?;
        } else if let Some(entry) = node_entry(word) {
            pages.push(
                entry.map_err(|()| bad(path, line, "a numa_maps line with N<node>=<pages>"))?,
            );
        }
    }
    let mut line_bytes = 0u64;
    for (node, count) in pages {
        let bytes = count
            .checked_mul(page_kib)
            .and_then(|kib| kib.checked_mul(1024))
            .ok_or_else(|| bad(path, line, "a numa_maps line with a plausible page count"))?;
        let slot = resident.entry(node).or_default();
        *slot = slot.saturating_add(bytes);
        line_bytes = line_bytes.saturating_add(bytes);
    }
    Ok(line_bytes)
}

/// `anon=<pages>` of a line, in bytes (0 when absent).
fn anon_bytes(path: &Path, line: &str) -> Result<u64, ObserveError> {
    let mut page_kib = DEFAULT_PAGE_KIB;
    let mut pages = 0u64;
    for word in line.split_whitespace() {
        if let Some(size) = word.strip_prefix("kernelpagesize_kB=") {
            page_kib = size
                .parse()
                .map_err(|_| bad(path, line, "a numa_maps line with a numeric page size"))?;
        } else if let Some(n) = word.strip_prefix("anon=") {
            pages = n
                .parse()
                .map_err(|_| bad(path, line, "a numa_maps line with a numeric anon= count"))?;
        }
    }
    Ok(pages.saturating_mul(page_kib).saturating_mul(1024))
}

/// The policy word(s) after the address.
fn policy(line: &str) -> Option<&str> {
    let rest = line.trim_start();
    let rest = rest[rest.find(char::is_whitespace)?..].trim_start();
    // A two-word mode still carries its flags and nodes up to the next space.
    let skip = TWO_WORD_POLICIES
        .iter()
        .find(|p| rest.starts_with(**p))
        .map_or(0, |p| p.len());
    let end = rest[skip..]
        .find(char::is_whitespace)
        .map_or(rest.len(), |i| skip + i);
    Some(&rest[..end]).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    fn parse_ok(text: &str) -> NumaMaps {
        parse(Path::new("numa_maps"), text).unwrap()
    }

    #[test]
    fn sums_pages_times_page_size_per_node() {
        let m = parse_ok(
            "7f0000000000 bind:0-1 anon=768 dirty=768 N0=512 N1=256 kernelpagesize_kB=4\n\
             7f1000000000 bind:1 file=/dev/hugepages/libvirt/qemu/ram huge dirty=2 N1=2 kernelpagesize_kB=2048\n\
             7f2000000000 default\n",
        );
        assert_eq!(
            m.resident,
            BTreeMap::from([(0, 2 * MIB), (1, MIB + 4 * MIB)])
        );
        assert_eq!(m.total_bytes(), 7 * MIB);
        assert_eq!(m.policies["bind:0-1"].resident_bytes, 3 * MIB);
        assert_eq!(m.policies["default"].mappings, 1);
        assert_eq!(m.policies["default"].resident_bytes, 0);
    }

    #[test]
    fn page_size_defaults_to_4_kib() {
        assert_eq!(
            parse_ok("1000 default N3=2\n").resident,
            BTreeMap::from([(3, 8192)])
        );
    }

    #[test]
    fn policies_with_spaces_and_flags_stay_whole() {
        let m = parse_ok(
            "1000 weighted interleave:0-1 anon=2 N0=1 N1=1 kernelpagesize_kB=4\n\
             2000 prefer (many):0,2 anon=1 N2=1 kernelpagesize_kB=4\n\
             3000 prefer=relative:1 N1=1 kernelpagesize_kB=4\n\
             4000 interleave:0-1\n",
        );
        let names: Vec<_> = m.policies.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "interleave:0-1",
                "prefer (many):0,2",
                "prefer=relative:1",
                "weighted interleave:0-1"
            ]
        );
        assert_eq!(m.policies["weighted interleave:0-1"].resident_bytes, 8192);
    }

    #[test]
    fn escaped_file_names_do_not_confuse_the_counts() {
        // The kernel escapes space, tab, newline and `=` in file names.
        let m = parse_ok(
            "1000 default file=/memfd:pc.ram\\040(deleted) mapped=4 N0=4 kernelpagesize_kB=4\n",
        );
        assert_eq!(m.resident, BTreeMap::from([(0, 16384)]));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let p = Path::new("numa_maps");
        for text in [
            "zz default N0=1\n",
            "1000 default N0=x kernelpagesize_kB=4\n",
            "1000 default N0=1 kernelpagesize_kB=big\n",
            "1000\n",
            "1000 default N0=18446744073709551615 kernelpagesize_kB=4\n",
        ] {
            let e = parse(p, text).unwrap_err();
            assert!(
                matches!(&e, ObserveError::BadContent { content, .. } if text.starts_with(content.as_str())),
                "{text:?}: {e}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new("numa_maps"), &text);
        }

        #[test]
        fn arbitrary_lines_of_plausible_words_never_panic(
            words in proptest::collection::vec(
                "([0-9a-f]{1,12}|default|bind:0|N[0-9]{1,3}=[0-9]{0,22}|kernelpagesize_kB=[0-9]{0,22}|weighted interleave:|prefer \\(many\\)|\n| )",
                0..30,
            )
        ) {
            let _ = parse(Path::new("numa_maps"), &words.join(" "));
        }
    }
}
