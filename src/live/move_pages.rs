//! move_pages(2): moves the pages of one address range of a process to
//! chosen nodes. This is how one guest cell's RAM block goes to its own
//! node, where migrate_pages(2) could only move the whole process between
//! sets of nodes.

use std::collections::BTreeMap;
use std::io;

use crate::planner::domain_info::distribute_shares;

/// Pages per call: bounds the arrays here and each call's time in the
/// kernel (64 MiB of 4 KiB pages).
const BATCH: usize = 16 * 1024;

/// `MPOL_MF_MOVE` of `linux/mempolicy.h`: move pages mapped by this
/// process only (QEMU's RAM blocks are never shared: MADV_DONTFORK).
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

/// What one move did, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// Pages of the range.
    pub pages: u64,
    /// Pages now where they were sent (moved, or there already).
    pub placed: u64,
    /// Pages not resident: nothing to move.
    pub absent: u64,
    /// Pages mapping the shared zero page (read, never written): nothing
    /// to move.
    pub zero: u64,
    /// Pages the kernel first reported absent and that were read once,
    /// then moved on a second try (see [`touch`]).
    pub touched: u64,
    /// Resident pages the kernel could not move (busy, pinned for DMA).
    pub not_moved: u64,
}

/// Moves the pages of `pid` in `[start, end)` to the nodes of `to` (node
/// -> weight), sharing the range out over them in proportion and in
/// address order.
pub fn move_range(
    pid: u32,
    start: u64,
    end: u64,
    to: &BTreeMap<u32, u64>,
) -> io::Result<MoveReport> {
    let page = page_size();
    let count = end.saturating_sub(start) / page;
    let nodes: Vec<u32> = to.keys().copied().collect();
    let weights: Vec<u64> = to.values().copied().collect();
    let mut shares = Vec::new();
    distribute_shares(count, &weights, &mut shares);
    if nodes.is_empty() || shares.iter().sum::<u64>() != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no target node with a weight",
        ));
    }
    // The target node of page `i`, by the contiguous share it falls in.
    let mut targets = nodes
        .iter()
        .zip(&shares)
        .flat_map(|(&n, &k)| std::iter::repeat_n(n as libc::c_int, k as usize));
    let mut report = MoveReport {
        pages: count,
        ..MoveReport::default()
    };
    let mut addresses: Vec<*mut libc::c_void> = Vec::with_capacity(BATCH);
    let mut wanted: Vec<libc::c_int> = Vec::with_capacity(BATCH);
    let mut status: Vec<libc::c_int> = Vec::with_capacity(BATCH);
    let mut next = 0u64;
    while next < count {
        let n = (count - next).min(BATCH as u64);
        addresses.clear();
        wanted.clear();
        for i in next..next + n {
            addresses.push((start + i * page) as *mut libc::c_void);
            wanted.push(targets.next().unwrap_or(nodes[0] as libc::c_int));
        }
        move_pages(pid, &addresses, &wanted, &mut status)?;
        // A resident page under a NUMA-balancing hinting entry (PROT_NONE
        // until the guest touches it again) is reported absent by some
        // kernels (6.1 among them); reading it once through the kernel
        // resolves the entry, and a second try moves it.
        let retry: Vec<usize> = (0..status.len())
            .filter(|&i| status[i] == -libc::ENOENT)
            .collect();
        if !retry.is_empty() {
            let again: Vec<*mut libc::c_void> = retry.iter().map(|&i| addresses[i]).collect();
            let nodes: Vec<libc::c_int> = retry.iter().map(|&i| wanted[i]).collect();
            touch(pid, &again)?;
            let mut second = Vec::new();
            move_pages(pid, &again, &nodes, &mut second)?;
            for (k, &i) in retry.iter().enumerate() {
                if second[k] != -libc::ENOENT {
                    report.touched += 1;
                }
                status[i] = second[k];
            }
        }
        for (&got, &want) in status.iter().zip(&wanted) {
            match got {
                g if g == want => report.placed += 1,
                g if g == -libc::ENOENT => report.absent += 1,
                g if g == -libc::EFAULT => report.zero += 1,
                _ => report.not_moved += 1,
            }
        }
        next += n;
    }
    Ok(report)
}

/// Moves the pages of `pid` in `[start, end)` that are resident off the
/// nodes of `to` onto them (in turn, where `to` has several); pages already
/// on one of them stay. Returns the bytes moved: what the background mover
/// charges against its rate. Pages the kernel reports absent get one read
/// and a second try, as in [`move_range`].
pub fn move_off(pid: u32, start: u64, end: u64, to: &[u32]) -> io::Result<u64> {
    if to.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no target node",
        ));
    }
    let page = page_size();
    let count = end.saturating_sub(start) / page;
    let wanted_on = |node: libc::c_int| node >= 0 && to.contains(&(node as u32));
    let mut moved = 0u64;
    let mut turn = 0usize;
    let mut addresses: Vec<*mut libc::c_void> = Vec::with_capacity(BATCH);
    let mut status: Vec<libc::c_int> = Vec::with_capacity(BATCH);
    let mut next = 0u64;
    while next < count {
        let n = (count - next).min(BATCH as u64);
        addresses.clear();
        addresses.extend((next..next + n).map(|i| (start + i * page) as *mut libc::c_void));
        where_are(pid, &addresses, &mut status)?;
        // A page under a NUMA hinting entry reads as absent; one read
        // resolves the entry, and a second query says where it really is,
        // so a page already on target is neither moved nor counted.
        let absent: Vec<*mut libc::c_void> = addresses
            .iter()
            .zip(&status)
            .filter(|&(_, &s)| s == -libc::ENOENT)
            .map(|(&a, _)| a)
            .collect();
        let mut off: Vec<*mut libc::c_void> = addresses
            .iter()
            .zip(&status)
            .filter(|&(_, &s)| s >= 0 && !wanted_on(s))
            .map(|(&a, _)| a)
            .collect();
        if !absent.is_empty() {
            touch(pid, &absent)?;
            let mut again = Vec::new();
            where_are(pid, &absent, &mut again)?;
            off.extend(
                absent
                    .iter()
                    .zip(&again)
                    .filter(|&(_, &s)| s >= 0 && !wanted_on(s))
                    .map(|(&a, _)| a),
            );
        }
        next += n;
        if off.is_empty() {
            continue;
        }
        let nodes: Vec<libc::c_int> = (0..off.len())
            .map(|i| to[(turn + i) % to.len()] as libc::c_int)
            .collect();
        turn = (turn + off.len()) % to.len();
        let mut got = Vec::new();
        move_pages(pid, &off, &nodes, &mut got)?;
        moved += got.iter().filter(|&&g| wanted_on(g)).count() as u64;
    }
    Ok(moved * page)
}

/// The node of each page at `addresses` (a negative errno where it has
/// none): move_pages(2) without target nodes only reports.
fn where_are(
    pid: u32,
    addresses: &[*mut libc::c_void],
    status: &mut Vec<libc::c_int>,
) -> io::Result<()> {
    status.clear();
    status.resize(addresses.len(), 0);
    // SAFETY: both arrays hold `addresses.len()` entries; a null node
    // array asks for the pages' nodes only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as libc::c_long,
            addresses.len() as libc::c_ulong,
            addresses.as_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Where the pages of `pid` in `[start, end)` are: bytes per node of the
/// pages that hold memory of their own. move_pages(2) without nodes only
/// reports; unlike numa_maps, it leaves out the shared zero page (huge or
/// not), which a guest's RAM read but never written maps, and which no
/// move can or need move.
pub fn resident_in_range(pid: u32, start: u64, end: u64) -> io::Result<BTreeMap<u32, u64>> {
    let page = page_size();
    let count = end.saturating_sub(start) / page;
    let mut out = BTreeMap::new();
    let mut addresses: Vec<*mut libc::c_void> = Vec::with_capacity(BATCH);
    let mut status: Vec<libc::c_int> = Vec::with_capacity(BATCH);
    let mut next = 0u64;
    while next < count {
        let n = (count - next).min(BATCH as u64);
        addresses.clear();
        addresses.extend((next..next + n).map(|i| (start + i * page) as *mut libc::c_void));
        where_are(pid, &addresses, &mut status)?;
        for &node in status.iter().filter(|&&s| s >= 0) {
            *out.entry(node as u32).or_default() += page;
        }
        next += n;
    }
    Ok(out)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    }
}

/// One move_pages(2) call over `addresses`; `status` gets one entry each.
fn move_pages(
    pid: u32,
    addresses: &[*mut libc::c_void],
    nodes: &[libc::c_int],
    status: &mut Vec<libc::c_int>,
) -> io::Result<()> {
    status.clear();
    status.resize(addresses.len(), 0);
    // SAFETY: the three arrays hold `addresses.len()` entries each; the
    // addresses are only read by the kernel, in the other process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as libc::c_long,
            addresses.len() as libc::c_ulong,
            addresses.as_ptr(),
            nodes.as_ptr(),
            status.as_mut_ptr(),
            MPOL_MF_MOVE,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads one byte of each page at `addresses` in process `pid`
/// (process_vm_readv(2)), as the guest touching it would: the kernel
/// resolves a NUMA hinting entry on the way, and the page's content is
/// not changed. A never-touched page becomes a mapping of the zero page,
/// which costs no memory. The hinting faults this read takes never move
/// a page (see [`FaultsMoveNothing`]).
fn touch(pid: u32, addresses: &[*mut libc::c_void]) -> io::Result<()> {
    // IOV_MAX: the most iovecs one call takes.
    const CHUNK: usize = 1024;
    let _policy = FaultsMoveNothing::on_this_thread()?;
    let mut scratch = vec![0u8; CHUNK];
    let mut at = 0;
    while at < addresses.len() {
        let end = (at + CHUNK).min(addresses.len());
        let remote: Vec<libc::iovec> = addresses[at..end]
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a,
                iov_len: 1,
            })
            .collect();
        let local = libc::iovec {
            iov_base: scratch.as_mut_ptr().cast(),
            iov_len: remote.len(),
        };
        // SAFETY: `local` covers `remote.len()` bytes of `scratch`; the
        // remote addresses are only read, in the other process.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        // A read stops at a page that cannot be read (EFAULT when it is
        // the first): go on after it; move_pages reports it as it is.
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EFAULT) {
                return Err(e);
            }
            at += 1;
            continue;
        }
        at += (n as usize).max(1);
    }
    Ok(())
}

/// `MPOL_DEFAULT` and `MPOL_LOCAL` of `linux/mempolicy.h`.
const MPOL_DEFAULT: libc::c_int = 0;
const MPOL_LOCAL: libc::c_int = 4;

/// While alive, the calling thread has an explicit memory policy
/// (`MPOL_LOCAL`) in place of the default one. A NUMA hinting fault is
/// resolved under the policy of the task that takes it when the mapping
/// has none of its own, and only the default policy lets such a fault
/// migrate the page (`MPOL_F_MOF`), towards the faulting CPU's node. The
/// fault numapin's read takes in a guest's memory would otherwise move
/// the page to whatever node numapin happens to run on: unasked, wherever
/// that is, and never charged to the rate (the lab's busy-start saw a
/// whole guest's RAM arrive that way in seconds). An explicit policy
/// allocates exactly as the default one does for numapin's own memory.
struct FaultsMoveNothing {
    restore: bool,
}

impl FaultsMoveNothing {
    fn on_this_thread() -> io::Result<Self> {
        let mode = match thread_policy() {
            Ok(mode) => mode,
            // A kernel without NUMA: no hinting faults either.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                return Ok(Self { restore: false });
            }
            Err(e) => return Err(e),
        };
        if mode != MPOL_DEFAULT {
            // A policy set on purpose (the unit's NUMAPolicy=, say) has no
            // migrate-on-fault either: keep it.
            return Ok(Self { restore: false });
        }
        set_policy(MPOL_LOCAL)?;
        Ok(Self { restore: true })
    }
}

impl Drop for FaultsMoveNothing {
    fn drop(&mut self) {
        if self.restore {
            // Cannot fail for MPOL_DEFAULT with no nodemask; were it to,
            // the thread keeps MPOL_LOCAL, which allocates the same way.
            let _ = set_policy(MPOL_DEFAULT);
        }
    }
}

/// The calling thread's memory policy mode (get_mempolicy(2)).
fn thread_policy() -> io::Result<libc::c_int> {
    let mut mode: libc::c_int = -1;
    // SAFETY: `mode` is a valid int to write; no nodemask is asked for
    // (null, 0) and no address is given (flags 0).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(mode)
    }
}

fn set_policy(mode: libc::c_int) -> io::Result<()> {
    // SAFETY: no nodemask (null, 0), which both modes take.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            mode,
            std::ptr::null::<libc::c_ulong>(),
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_own_pages_to_node_0_places_every_touched_page() {
        // Every host has node 0: the kernel still validates the call and
        // reports each page's node.
        let mut buf = vec![1u8; 1 << 20];
        for b in buf.iter_mut().step_by(4096) {
            *b = 2;
        }
        let start = (buf.as_ptr() as u64).div_ceil(4096) * 4096;
        let end = (buf.as_ptr() as u64 + buf.len() as u64) / 4096 * 4096;
        let r = move_range(std::process::id(), start, end, &BTreeMap::from([(0, 1)])).unwrap();
        assert_eq!(r.pages, (end - start) / 4096);
        assert_eq!(r.placed, r.pages, "{r:?}");
        assert_eq!(r.not_moved, 0);
        std::hint::black_box(&buf);
    }

    #[test]
    fn only_pages_with_memory_of_their_own_count_as_resident() {
        // 4 pages written, 4 only read (the zero page), 4 never touched.
        let len = 12 * 4096;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        for i in 0..8 {
            // SAFETY: within the mapping.
            unsafe {
                if i < 4 {
                    base.add(i * 4096).write_volatile(1);
                } else {
                    std::hint::black_box(base.add(i * 4096).read_volatile());
                }
            }
        }
        let start = p as u64;
        let got = resident_in_range(std::process::id(), start, start + len as u64).unwrap();
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(p, len) };
        assert_eq!(got.values().sum::<u64>(), 4 * 4096, "{got:?}");
    }

    #[test]
    fn while_touching_the_thread_has_a_policy_without_migrate_on_fault() {
        // Each test runs on a thread of its own, with the default policy.
        std::thread::spawn(|| {
            assert_eq!(thread_policy().unwrap(), MPOL_DEFAULT);
            {
                let _policy = FaultsMoveNothing::on_this_thread().unwrap();
                assert_eq!(thread_policy().unwrap(), MPOL_LOCAL);
            }
            assert_eq!(thread_policy().unwrap(), MPOL_DEFAULT);
            // A policy of the thread's own stays as it was.
            set_policy(MPOL_LOCAL).unwrap();
            drop(FaultsMoveNothing::on_this_thread().unwrap());
            assert_eq!(thread_policy().unwrap(), MPOL_LOCAL);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn touching_reads_pages_without_changing_them() {
        let buf = vec![7u8; 3 * 4096];
        let addresses: Vec<*mut libc::c_void> = (0..3)
            .map(|i| buf.as_ptr().wrapping_add(i * 4096) as *mut libc::c_void)
            .collect();
        touch(std::process::id(), &addresses).unwrap();
        // An address nothing maps is skipped, not an error.
        touch(std::process::id(), &[8usize as *mut libc::c_void]).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn moving_off_other_nodes_leaves_pages_already_on_target_and_counts_none() {
        // On node 0 already: nothing moves, nothing is charged.
        let mut buf = vec![1u8; 1 << 20];
        for b in buf.iter_mut().step_by(4096) {
            *b = 2;
        }
        let start = (buf.as_ptr() as u64).div_ceil(4096) * 4096;
        let end = (buf.as_ptr() as u64 + buf.len() as u64) / 4096 * 4096;
        let here = resident_in_range(std::process::id(), start, end).unwrap();
        let nodes: Vec<u32> = here.keys().copied().collect();
        assert_eq!(move_off(std::process::id(), start, end, &nodes).unwrap(), 0);
        assert!(move_off(std::process::id(), start, end, &[]).is_err());
        std::hint::black_box(&buf);
    }

    #[test]
    fn a_process_that_does_not_exist_is_esrch() {
        let e =
            move_range(i32::MAX as u32, 0x10000, 0x20000, &BTreeMap::from([(0, 1)])).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn no_target_is_refused_before_any_call() {
        let e = move_range(std::process::id(), 0, 0x10000, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
