//! migrate_pages(2): moves a process's pages between NUMA nodes. This is
//! how the memory of a domain without a `<numatune>` binding follows its
//! vCPUs (numad does the same); the kernel does the copying.

use std::io;

use caps::{CapSet, Capability};

use crate::idset::NodeSet;

/// Moves the pages of `pid` that are on `from` to `to`, those the process
/// alone maps (see [`PrivatePagesOnly`]). Returns the number of pages the
/// kernel could not move (busy or pinned pages, e.g. of a device doing
/// DMA).
pub fn migrate_pages(pid: u32, from: &NodeSet, to: &NodeSet) -> io::Result<u64> {
    let _private = PrivatePagesOnly::on_this_thread()?;
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

/// Holds `CAP_SYS_NICE` out of the calling thread's effective set for as
/// long as it lives (capabilities are per thread; the permitted set keeps
/// it, so it is raised again after).
///
/// With `CAP_SYS_NICE`, migrate_pages(2) moves every page of the process on
/// the source nodes, shared ones too (`MPOL_MF_MOVE_ALL`): the page cache
/// of the QEMU binary and of the libraries every guest and daemon on the
/// host runs. Moving those to follow one guest leaves the guests on the
/// node they came from running that code from a remote node, and the next
/// guest moved the other way takes them back. Each such page is unmapped
/// from every process that maps it, a walk of each and a TLB shootdown on
/// every CPU they run on. In the 2x2 lab, a call for a guest with 4 MiB of
/// its own memory off target took 40 s of kernel time, and one the other
/// way for another guest over 120 s; a second call with nothing left to
/// move took 0.2 s. Without the capability the kernel moves only pages
/// the process alone maps (`MPOL_MF_MOVE`), as numapin's move_pages(2)
/// calls always ask: the guest's RAM and QEMU's own heap, all that
/// locality is about.
struct PrivatePagesOnly {
    restore: bool,
}

impl PrivatePagesOnly {
    fn on_this_thread() -> io::Result<Self> {
        let held = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_NICE)
            .map_err(io::Error::other)?;
        if held {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_NICE)
                .map_err(io::Error::other)?;
        }
        Ok(Self { restore: held })
    }
}

impl Drop for PrivatePagesOnly {
    fn drop(&mut self) {
        if self.restore {
            // Still permitted, so raising it cannot fail for want of
            // rights; were it to, this thread only loses the power to
            // move shared pages, which numapin never asks for.
            if let Err(e) = caps::raise(None, CapSet::Effective, Capability::CAP_SYS_NICE) {
                tracing::warn!(error = %e, "could not raise CAP_SYS_NICE again after migrate_pages");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_loses_cap_sys_nice_and_only_for_the_call() {
        let nice = || caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_NICE).unwrap();
        let before = nice();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            tx.send(nice()).unwrap();
        });
        {
            let _private = PrivatePagesOnly::on_this_thread().unwrap();
            assert!(
                !nice(),
                "CAP_SYS_NICE is out of this thread's effective set"
            );
            go.send(()).unwrap();
            assert_eq!(
                rx.recv().unwrap(),
                before,
                "another thread keeps what it had"
            );
        }
        other.join().unwrap();
        assert_eq!(nice(), before, "and this one has it back after");
    }

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
