//! What it costs to read where a large guest's memory is, with numapin's
//! own readers: `numa_maps` (the whole process, per node), `smaps` and the
//! cell-block read (smaps + numa_maps, as for a guest with cells), and the
//! cgroup's `memory.numa_stat`.
//!
//! The "guest" is this process: it joins a memory cgroup of its own (v1:
//! `memory/npobs-observe-cost`; v2: `npobs-observe-cost`), then maps and
//! writes N GiB marked MADV_DONTFORK like QEMU's RAM blocks, with
//! MADV_HUGEPAGE (THP on) or MADV_NOHUGEPAGE (THP off), so the system-wide
//! THP setting is left alone. QEMU asks for huge pages on guest RAM the
//! same way (`hg` in its smaps VmFlags). A process rather than an 8 GiB
//! QEMU guest because a helper thread must run inside the measured address
//! space (below); `--pid PID` times the reads of any running process (a
//! QEMU guest) without the helper.
//!
//! How long a read holds the memory map lock: numa_maps and smaps walk each
//! mapping's page tables with the process's mmap lock held for reading. A
//! helper thread of the same process meanwhile repeats a 4 KiB mmap +
//! munmap (which needs the lock for writing, so it waits out any reader)
//! and, in a second pass, a first-touch page fault. The longest such call
//! during each read, against the longest in a window of the same length
//! with no read, is the read's lock hold as the process feels it. The
//! read's own duration bounds it from above.
//!
//!   cargo run --release --example observe_cost -- [--sizes 1,4,8] [--reps 15]
//!   cargo run --release --example observe_cost -- --pid PID [--reps 15]
//!
//! Needs root for the cgroup (without it the cgroup row is left out).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use numapin::observe::{cgroup, numa_maps, ram_blocks};

const GIB: usize = 1 << 30;
const PAGE: usize = 4096;
const CGROUP: &str = "npobs-observe-cost";

#[derive(Clone, Copy, PartialEq)]
enum Probe {
    /// mmap + munmap of one page: needs the mmap lock for writing.
    Mmap,
    /// Writing a page never touched: a page fault.
    Fault,
}

/// The helper thread: repeats its probe and keeps the longest call since
/// the reader last took the figure.
struct Prober {
    longest_ns: Arc<AtomicU64>,
    /// Calls completed: a take waits for the call in flight to end, so a
    /// call blocked by a read counts for that read even when it returns
    /// after it.
    calls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(probe: Probe) -> Self {
        let longest_ns = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, c, s) = (longest_ns.clone(), calls.clone(), stop.clone());
        let thread = std::thread::spawn(move || run_probe(probe, &l, &c, &s));
        Self {
            longest_ns,
            calls,
            stop,
            thread: Some(thread),
        }
    }

    /// The longest call since the last take, once the call in flight has
    /// returned.
    fn take(&self) -> Duration {
        let seen = self.calls.load(Ordering::SeqCst);
        while self.calls.load(Ordering::SeqCst) == seen {
            std::hint::spin_loop();
        }
        Duration::from_nanos(self.longest_ns.swap(0, Ordering::SeqCst))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_probe(probe: Probe, longest: &AtomicU64, calls: &AtomicU64, stop: &AtomicBool) {
    // 16 MiB of 4 KiB pages to fault in, dropped again once all are in.
    const REGION: usize = 16 << 20;
    let region = map(REGION);
    // SAFETY: the mapping was just made, REGION long.
    unsafe { libc::madvise(region.cast(), REGION, libc::MADV_NOHUGEPAGE) };
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match probe {
            Probe::Mmap => {
                let p = map(PAGE);
                // SAFETY: unmaps what `map` returned, once.
                unsafe { libc::munmap(p.cast(), PAGE) };
            }
            Probe::Fault => {
                // SAFETY: inside the mapping.
                unsafe { region.add(next).write_volatile(1) };
                next += PAGE;
            }
        }
        longest.fetch_max(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
        calls.fetch_add(1, Ordering::SeqCst);
        if next == REGION {
            next = 0;
            // SAFETY: the whole mapping; not timed.
            unsafe { libc::madvise(region.cast(), REGION, libc::MADV_DONTNEED) };
        }
    }
    // SAFETY: the mapping made above, once.
    unsafe { libc::munmap(region.cast(), REGION) };
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; checked below.
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
    assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
    p.cast()
}

/// CPU time of the calling thread: unlike the wall clock, what other
/// processes on a busy machine do leaves it alone.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: an out-parameter of the right type.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One reader, timed `reps` times (wall clock and the thread's CPU time);
/// with a prober, the longest probe call during each read and during an
/// idle window as long as the read.
fn time_reader(
    reps: usize,
    prober: Option<&Prober>,
    read: &mut dyn FnMut() -> bool,
) -> (Duration, Duration, Option<(Duration, Duration)>) {
    let mut took = Vec::new();
    let mut cpu = Vec::new();
    let (mut during, mut idle) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        if let Some(p) = prober {
            p.take();
        }
        let (t, c) = (Instant::now(), thread_cpu());
        assert!(read(), "reader failed");
        let d = t.elapsed();
        cpu.push(thread_cpu() - c);
        took.push(d);
        if let Some(p) = prober {
            during.push(p.take());
            std::thread::sleep(d.max(Duration::from_millis(1)));
            idle.push(p.take());
        }
    }
    let lock = prober.map(|_| (median(during), median(idle)));
    (median(took), median(cpu), lock)
}

/// Joins (creating) a memory cgroup of its own, so memory.numa_stat counts
/// this process only. Returns the directory to remove afterwards.
fn join_cgroup() -> Option<std::path::PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let base = if v1.is_dir() {
        v1.to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup").to_path_buf()
    };
    let dir = base.join(CGROUP);
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).ok()?;
    Some(dir)
}

fn leave_cgroup(dir: &Path) {
    let parent = dir.parent().expect("a cgroup has a parent");
    let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
    let _ = std::fs::remove_dir(dir);
}

fn anon_huge_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Times every reader on `pid`; `cells` is the RAM block to look for.
fn measure(label: &str, pid: u32, cells: &[(u32, u64)], reps: usize, probes: bool) {
    let root = Path::new("/");
    let smaps = format!("/proc/{pid}/smaps");
    type Reader = Box<dyn FnMut() -> bool>;
    let cells = cells.to_vec();
    let readers: Vec<(&str, Reader)> = vec![
        (
            "numa_maps",
            Box::new(move || numa_maps::read(root, pid).is_ok()),
        ),
        (
            "smaps",
            Box::new(move || {
                std::fs::read_to_string(&smaps)
                    .ok()
                    .and_then(|t| ram_blocks::parse_smaps(Path::new("smaps"), &t).ok())
                    .is_some()
            }),
        ),
        (
            "cell blocks (smaps + numa_maps)",
            Box::new(move || matches!(ram_blocks::read(root, pid, &cells), Ok(Some(_)))),
        ),
        (
            "cgroup memory.numa_stat",
            Box::new(move || cgroup::read(root, pid).is_ok_and(|m| !m.from_ancestor)),
        ),
    ];
    for (name, mut read) in readers {
        if !read() {
            println!("| {label} | {name} | not readable | | | |");
            continue;
        }
        let (took, cpu, _) = time_reader(reps, None, &mut read);
        let mut row = format!("| {label} | {name} | {} | {} |", ms(took), ms(cpu));
        for probe in [Probe::Mmap, Probe::Fault] {
            if !probes {
                row.push_str(" |");
                continue;
            }
            let p = Prober::start(probe);
            std::thread::sleep(Duration::from_millis(50));
            let (_, _, lock) = time_reader(reps, Some(&p), &mut read);
            let (during, idle) = lock.expect("measured with a prober");
            row.push_str(&format!(" {} (idle {}) |", ms(during), ms(idle)));
        }
        println!("{row}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let reps: usize = value("--reps").map_or(15, |r| r.parse().expect("--reps N"));
    println!(
        "| guest | reader | read, wall clock (median of {reps}) | read, CPU time | longest mmap+munmap during a read (idle window) | longest page fault during a read (idle window) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    if let Some(pid) = value("--pid") {
        let pid: u32 = pid.parse().expect("--pid PID");
        // No cell sizes known: the cell-block row then finds no block.
        measure(&format!("pid {pid}"), pid, &[(0, 0)], reps, false);
        return;
    }
    let sizes: Vec<usize> = value("--sizes")
        .unwrap_or_else(|| "1,4,8".into())
        .split(',')
        .map(|s| s.parse().expect("--sizes 1,4,8 (GiB)"))
        .collect();
    let cg = join_cgroup();
    if cg.is_none() {
        eprintln!("no memory cgroup of its own (not root?): the cgroup rows fail");
    }
    let pid = std::process::id();
    for &gib in &sizes {
        for thp in [false, true] {
            let len = gib * GIB;
            let ram = map(len);
            // SAFETY: advice on the mapping just made.
            unsafe {
                libc::madvise(ram.cast(), len, libc::MADV_DONTFORK);
                let advice = if thp {
                    libc::MADV_HUGEPAGE
                } else {
                    libc::MADV_NOHUGEPAGE
                };
                libc::madvise(ram.cast(), len, advice);
            }
            let t = Instant::now();
            for off in (0..len).step_by(PAGE) {
                // SAFETY: inside the mapping.
                unsafe { ram.add(off).write_volatile(1) };
            }
            eprintln!(
                "{gib} GiB THP {}: touched in {:.1} s, {} MiB in huge pages",
                if thp { "on" } else { "off" },
                t.elapsed().as_secs_f64(),
                anon_huge_kib(pid) / 1024
            );
            let label = format!("{gib} GiB, THP {}", if thp { "on" } else { "off" });
            measure(&label, pid, &[(0, len as u64)], reps, true);
            // SAFETY: the mapping made above, once.
            unsafe { libc::munmap(ram.cast(), len) };
        }
    }
    if let Some(dir) = cg {
        leave_cgroup(&dir);
    }
}
