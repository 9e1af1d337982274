//! A process's resident size from `proc/PID/statm`.
//!
//! The kernel answers from the address space's counters, without taking
//! its mmap lock or walking page tables, so this is cheap at any guest
//! size: what tells whether figures from a page-table walk
//! ([`super::numa_maps`]) have gone stale when no memory cgroup of the
//! domain's own counts its memory.

use std::path::Path;

use super::ObserveError;
use super::files::{bad, read_volatile};

/// Resident bytes of process `pid` under `root` (the second statm field,
/// in pages).
pub fn resident_bytes(root: &Path, pid: u32) -> Result<u64, ObserveError> {
    let path = root.join(format!("proc/{pid}/statm"));
    let text = read_volatile(&path)?;
    // An exiting process (no address space) prints zeros.
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| bad(&path, &text, "statm: size resident shared text lib data dt"))?;
    pages
        .checked_mul(procfs::page_size())
        .ok_or_else(|| bad(&path, &text, "statm with a plausible resident size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resident_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("proc/7");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("statm"), "1000 256 10 5 0 300 0\n").unwrap();
        assert_eq!(
            resident_bytes(tmp.path(), 7).unwrap(),
            256 * procfs::page_size()
        );
        std::fs::write(dir.join("statm"), "1000\n").unwrap();
        assert!(matches!(
            resident_bytes(tmp.path(), 7),
            Err(ObserveError::BadContent { .. })
        ));
        assert!(resident_bytes(tmp.path(), 8).unwrap_err().is_gone());
    }
}
