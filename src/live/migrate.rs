//! migrate_pages(2): moves a process's pages between NUMA nodes. This is
//! how the memory of a domain without a `<numatune>` binding follows its
//! vCPUs (numad does the same); the kernel does the copying.

use std::io;

use crate::idset::NodeSet;

/// Moves the pages of `pid` that are on `from` to `to`. Returns the number
/// of pages the kernel could not move (busy or pinned pages, e.g. of a
/// device doing DMA).
pub fn migrate_pages(pid: u32, from: &NodeSet, to: &NodeSet) -> io::Result<u64> {
    let words = from
        .last()
        .max(to.last())
        .map_or(1, |last| last as usize / 64 + 1);
    let old = from.to_words(words);
    let new = to.to_words(words);
    // The kernel reads `maxnode - 1` bits (a historical off-by-one that
    // libnuma also compensates for).
    let maxnode = (words * 64 + 1) as libc::c_ulong;
    // SAFETY: both masks hold `words` longs, which covers maxnode - 1 bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_migrate_pages,
            pid as libc::c_long,
            maxnode,
            old.as_ptr(),
            new.as_ptr(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_own_pages_within_the_nodes_there_are_succeeds() {
        // Every host has node 0; a move from 0 to 0 is a no-op the kernel
        // still validates (masks, permissions, pid).
        let zero: NodeSet = "0".parse().unwrap();
        assert_eq!(migrate_pages(std::process::id(), &zero, &zero).unwrap(), 0);
    }

    #[test]
    fn a_process_that_does_not_exist_is_esrch() {
        let zero: NodeSet = "0".parse().unwrap();
        let e = migrate_pages(i32::MAX as u32, &zero, &zero).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
