//! Where a domain's memory is, from its memory cgroup's `memory.numa_stat`.
//!
//! `proc/PID/cgroup` names the cgroups of QEMU's main thread. A v1 line whose
//! controllers include `memory` wins over the v2 line `0::/path`: on a hybrid
//! host (this project's CI machine) both exist, and the v2 one points into a
//! hierarchy without the memory controller.
//!
//! libvirt moves QEMU's threads into leaf cgroups (`emulator`, `vcpuN`,
//! `iothreadN`; with cgroup v2 under a `libvirt` directory inside the
//! domain's `machine-qemu\x2dN\x2dNAME.scope`). Those are threaded cgroups
//! without memory files, and memory is charged to the domain as a whole, so
//! the reader strips them and reads the domain level, walking further up only
//! when that level has no memory accounting. The `\x2d` in scope names is
//! systemd's escaping and part of the directory name: never unescaped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ObserveError;
use super::files::{bad, node_entry, read_capped, read_volatile, vanished};

const V2_ROOT: &str = "sys/fs/cgroup";
const V1_MEMORY_ROOT: &str = "sys/fs/cgroup/memory";
const NUMA_STAT: &str = "memory.numa_stat";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMemory {
    pub version: CgroupVersion,
    /// The `memory.numa_stat` that was read (under `root`).
    pub path: PathBuf,
    /// The domain's own cgroup had no memory accounting, so these are the
    /// figures of an ancestor and include other processes' memory.
    pub from_ancestor: bool,
    /// Host node -> bytes charged to the cgroup on it.
    pub resident: BTreeMap<u32, u64>,
}

impl CgroupMemory {
    pub fn total_bytes(&self) -> u64 {
        // Per-node counts are each checked; their sum saturates, never wraps.
        self.resident
            .values()
            .fold(0u64, |sum, &b| sum.saturating_add(b))
    }
}

/// Reads the memory per node of the domain whose QEMU process is `pid`.
pub fn read(root: &Path, pid: u32) -> Result<CgroupMemory, ObserveError> {
    let cgroup_file = root.join(format!("proc/{pid}/cgroup"));
    let (version, cgroup) = memory_cgroup(&cgroup_file, &read_volatile(&cgroup_file)?)?;
    let base = root.join(match version {
        CgroupVersion::V1 => V1_MEMORY_ROOT,
        CgroupVersion::V2 => V2_ROOT,
    });
    let domain_dir = base.join(domain_level(&cgroup).trim_start_matches('/'));
    // The hierarchy's root stands for the whole machine: never read it.
    if domain_dir == base {
        return Err(ObserveError::NoNumaStat { dir: domain_dir });
    }
    let mut dir = domain_dir.as_path();
    loop {
        let path = dir.join(NUMA_STAT);
        match read_capped(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                return Ok(CgroupMemory {
                    version,
                    resident: parse_numa_stat(&path, &text, version, procfs::page_size())?,
                    from_ancestor: dir != domain_dir,
                    path,
                });
            }
            // The directory vanishing means the domain stopped; walking up
            // then would report a parent's (every domain's) memory as its.
            Err(ObserveError::Io { source, .. }) if vanished(&source) && !dir.is_dir() => {
                return Err(ObserveError::Gone {
                    path: dir.to_path_buf(),
                });
            }
            // A directory without the file has no memory accounting.
            Err(ObserveError::Io { source, .. }) if vanished(&source) => {}
            Err(e) => return Err(e),
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(&base) && parent != base => dir = parent,
            _ => return Err(ObserveError::NoNumaStat { dir: domain_dir }),
        }
    }
}

/// The memory cgroup named in `proc/PID/cgroup` text: `hierarchy-id:
/// controllers:path` lines. `path` only labels errors.
pub fn memory_cgroup(path: &Path, text: &str) -> Result<(CgroupVersion, String), ObserveError> {
    let mut v2 = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(cgroup)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(path, line, "a hierarchy-id:controllers:path line"));
        };
        let is_v1_memory = controllers.split(',').any(|c| c == "memory");
        let is_v2 = id == "0" && controllers.is_empty();
        // The kernel prints absolute paths; anything else must not steer the
        // reader outside the cgroup tree.
        if (is_v1_memory || is_v2)
            && (!cgroup.starts_with('/') || cgroup.split('/').any(|c| c == ".." || c == "."))
        {
            return Err(bad(path, line, "a line with an absolute cgroup path"));
        }
        if is_v1_memory {
            return Ok((CgroupVersion::V1, cgroup.to_string()));
        }
        if is_v2 {
            v2 = Some(cgroup.to_string());
        }
    }
    match v2 {
        Some(cgroup) => Ok((CgroupVersion::V2, cgroup)),
        None => Err(ObserveError::NoMemoryCgroup {
            path: path.to_path_buf(),
        }),
    }
}

/// `cgroup` without libvirt's per-thread leaves and their `libvirt` parent:
/// `/machine.slice/machine-qemu\x2d1\x2dvm.scope/libvirt/vcpu0` becomes
/// `/machine.slice/machine-qemu\x2d1\x2dvm.scope`.
pub fn domain_level(cgroup: &str) -> &str {
    let mut path = cgroup.trim_end_matches('/');
    while let Some((parent, last)) = path.rsplit_once('/') {
        if !is_libvirt_leaf(last) {
            break;
        }
        path = parent;
    }
    if path.is_empty() { "/" } else { path }
}

fn is_libvirt_leaf(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "emulator" || name == "libvirt" || numbered("vcpu") || numbered("iothread")
}

/// Bytes per node in `memory.numa_stat` text.
///
/// v2 lines are `anon N0=<bytes> N1=..`. Guest RAM is `anon` for ordinary
/// guests and `shmem` (memfd, `memoryBacking` with `access mode='shared'`)
/// or file pages (a `memory-backend-file`) otherwise, all of them mapped by
/// QEMU: resident is `anon + file_mapped`, which leaves out the page cache
/// charged to the domain (disk images read through the host's cache), which
/// is not guest RAM, can outgrow it, and does not move with the guest. Older
/// kernels without `file_mapped` per node give `anon + file`. Plus `hugetlb` where the kernel
/// charges hugetlbfs pages to the cgroup (only with the
/// `memory_hugetlb_accounting` mount option; otherwise hugepage-backed RAM
/// is not in this file at all, and [`super::numa_maps`] has it). Kernel
/// memory (page tables, slab) is left out: it is not guest RAM.
///
/// v1 lines are `total=<pages> N0=<pages> ..`; `hierarchical_total` (also
/// counting child cgroups; `total` of a parent is its own pages only) is used
/// when present. `total` is `file + anon + unevictable`, and unevictable
/// holds mlocked guest RAM (`<locked/>`), so it is the right sum.
pub fn parse_numa_stat(
    path: &Path,
    text: &str,
    version: CgroupVersion,
    page_size: u64,
) -> Result<BTreeMap<u32, u64>, ObserveError> {
    let lines = stat_lines(path, text, version)?;
    let (keys, unit): (&[&str], u64) = match version {
        CgroupVersion::V2 if lines.contains_key("anon") && lines.contains_key("file_mapped") => {
            (&["anon", "file_mapped", "hugetlb"], 1)
        }
        CgroupVersion::V2 if lines.contains_key("anon") && lines.contains_key("file") => {
            (&["anon", "file", "hugetlb"], 1)
        }
        CgroupVersion::V2 => {
            return Err(bad(
                path,
                text,
                "a v2 memory.numa_stat with anon and file lines",
            ));
        }
        CgroupVersion::V1 if lines.contains_key("hierarchical_total") => {
            (&["hierarchical_total"], page_size)
        }
        CgroupVersion::V1 if lines.contains_key("total") => (&["total"], page_size),
        CgroupVersion::V1 => {
            return Err(bad(path, text, "a v1 memory.numa_stat with a total line"));
        }
    };
    let mut out = BTreeMap::new();
    for (line, nodes) in keys.iter().filter_map(|k| lines.get(k)) {
        for (&node, &value) in nodes {
            let slot: &mut u64 = out.entry(node).or_default();
            *slot = value
                .checked_mul(unit)
                .and_then(|bytes| slot.checked_add(bytes))
                .ok_or_else(|| bad(path, line, "a memory.numa_stat line of plausible sizes"))?;
        }
    }
    Ok(out)
}

type StatLines<'a> = BTreeMap<&'a str, (&'a str, BTreeMap<u32, u64>)>;

/// Every line's key and node values; a v1 key carries `=<total>`.
fn stat_lines<'a>(
    path: &Path,
    text: &'a str,
    version: CgroupVersion,
) -> Result<StatLines<'a>, ObserveError> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let key = match version {
            CgroupVersion::V2 => first,
            CgroupVersion::V1 => first.split_once('=').map_or("", |(k, _)| k),
        };
        if key.is_empty() {
            return Err(bad(path, line, "a memory.numa_stat line"));
        }
        let mut nodes = BTreeMap::new();
        for word in words {
            match node_entry(word) {
                Some(Ok((node, value))) => {
                    nodes.insert(node, value);
                }
                _ => {
                    return Err(bad(
                        path,
                        line,
                        "a memory.numa_stat line of N<node>=<value>",
                    ));
                }
            }
        }
        out.insert(key, (line, nodes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn strips_libvirt_thread_leaves() {
        let scope = r"/machine.slice/machine-qemu\x2d1\x2dvm.scope";
        for leaf in [
            "libvirt/emulator",
            "libvirt/vcpu12",
            "libvirt/iothread1",
            "libvirt",
            "emulator",
        ] {
            assert_eq!(domain_level(&format!("{scope}/{leaf}")), scope, "{leaf}");
        }
        assert_eq!(domain_level(scope), scope);
        assert_eq!(
            domain_level("/machine/qemu-1-vm.libvirt-qemu/emulator"),
            "/machine/qemu-1-vm.libvirt-qemu"
        );
        // Only libvirt's names: a domain called `vcpu` keeps its scope.
        assert_eq!(domain_level("/machine/vcpu/vcpux"), "/machine/vcpu/vcpux");
        assert_eq!(domain_level("/emulator"), "/");
        assert_eq!(domain_level("/"), "/");
    }

    #[test]
    fn v1_memory_line_wins_over_the_hybrid_v2_line() {
        let text = "4:memory:/machine/qemu-1-vm.libvirt-qemu\n\
                    3:cpuset:/machine/qemu-1-vm.libvirt-qemu/emulator\n\
                    0::/machine/qemu-1-vm.libvirt-qemu/emulator\n";
        let p = Path::new("cgroup");
        assert_eq!(
            memory_cgroup(p, text).unwrap(),
            (CgroupVersion::V1, "/machine/qemu-1-vm.libvirt-qemu".into())
        );
        assert_eq!(
            memory_cgroup(p, "0::/a/b\n").unwrap(),
            (CgroupVersion::V2, "/a/b".into())
        );
        assert_eq!(
            memory_cgroup(p, "5:cpu,memory:/x\n").unwrap(),
            (CgroupVersion::V1, "/x".into())
        );
        assert!(matches!(
            memory_cgroup(p, "1:cpu:/x\n"),
            Err(ObserveError::NoMemoryCgroup { .. })
        ));
        for bad_text in ["garbage\n", "0::/a/../../etc\n", "4:memory:relative\n"] {
            assert!(
                matches!(
                    memory_cgroup(p, bad_text),
                    Err(ObserveError::BadContent { .. })
                ),
                "{bad_text:?}"
            );
        }
    }

    #[test]
    fn v2_resident_leaves_out_page_cache_nobody_maps() {
        // 1 GiB of disk image cache charged to the domain, 100 bytes of
        // it mapped (a memory-backend-file guest's RAM would be).
        let text = "anon N0=4096 N1=8192\nfile N0=1073741824 N1=0\nfile_mapped N0=100 N1=0\n\
                    shmem N0=50 N1=0\nhugetlb N0=0 N1=2097152\n";
        let got = parse_numa_stat(Path::new("s"), text, CgroupVersion::V2, 4096).unwrap();
        assert_eq!(got, nodes(&[(0, 4196), (1, 8192 + 2097152)]));
    }

    #[test]
    fn v2_resident_is_anon_plus_file_plus_hugetlb() {
        let text = "anon N0=4096 N1=8192\nfile N0=100 N1=0\nshmem N0=50 N1=0\n\
                    kernel_stack N0=16384 N1=0\nhugetlb N0=0 N1=2097152\n";
        let got = parse_numa_stat(Path::new("s"), text, CgroupVersion::V2, 4096).unwrap();
        assert_eq!(got, nodes(&[(0, 4196), (1, 8192 + 2097152)]));
    }

    #[test]
    fn v1_prefers_hierarchical_total_in_pages() {
        let text = "total=0 N0=0\nanon=0 N0=0\nhierarchical_total=10 N0=7 N1=3\n";
        let got = parse_numa_stat(Path::new("s"), text, CgroupVersion::V1, 4096).unwrap();
        assert_eq!(got, nodes(&[(0, 7 * 4096), (1, 3 * 4096)]));
        let old = "total=5 N0=5\nfile=1 N0=1\n";
        let got = parse_numa_stat(Path::new("s"), old, CgroupVersion::V1, 65536).unwrap();
        assert_eq!(got, nodes(&[(0, 5 * 65536)]));
    }

    #[test]
    fn wrong_or_incomplete_files_are_errors() {
        let p = Path::new("s");
        let cases = [
            ("anon N0=1\n", CgroupVersion::V2),
            ("total=1 N0=1\n", CgroupVersion::V2),
            ("anon N0=1\n", CgroupVersion::V1),
            ("total=1 N0=x\n", CgroupVersion::V1),
            ("total=1 N0=18446744073709551615\n", CgroupVersion::V1),
        ];
        for (text, v) in cases {
            assert!(parse_numa_stat(p, text, v, 4096).is_err(), "{text:?} {v:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", page_size in 0u64..u64::MAX) {
            let p = Path::new("s");
            let _ = memory_cgroup(p, &text);
            let _ = domain_level(&text);
            let _ = parse_numa_stat(p, &text, CgroupVersion::V1, page_size);
            let _ = parse_numa_stat(p, &text, CgroupVersion::V2, page_size);
        }
    }
}
