//! Per-CPU time counters from `proc/stat`, for the steal an outer hypervisor
//! takes from each host CPU.
//!
//! The `procfs` crate parses the counters, but its `cpu_time` is a plain list
//! in file order, and the kernel prints only online CPUs: with CPU 2 offline
//! the third entry is CPU 3. The ids come from the same text here.

use std::collections::BTreeMap;
use std::path::Path;

use procfs::prelude::*;
use procfs::{CpuTime, ExplicitSystemInfo, KernelStats};

use super::ObserveError;
use super::files::{bad, read_text};

/// Counters of one CPU since boot, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Every state the kernel accounts a CPU's time to.
    pub total: u64,
    pub steal: u64,
}

/// Reads `proc/stat` under `root`: CPU id -> its counters.
pub fn read(root: &Path) -> Result<BTreeMap<u32, CpuTicks>, ObserveError> {
    let path = root.join("proc/stat");
    parse(&path, &read_text(&path)?)
}

/// Parses `proc/stat` text; `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<u32, CpuTicks>, ObserveError> {
    // Only raw tick counts are used, so the tick rate given here is unused;
    // passing it keeps procfs from reading the live machine's settings.
    let info = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    let stats = KernelStats::from_read(text.as_bytes(), &info)
        .map_err(|_| bad(path, text, "a /proc/stat file"))?;
    let ids = cpu_ids(path, text)?;
    if ids.len() != stats.cpu_time.len() {
        return Err(bad(path, text, "a /proc/stat file with one line per CPU"));
    }
    Ok(ids
        .into_iter()
        .zip(stats.cpu_time.iter().map(ticks))
        .collect())
}

/// The ids of the `cpuN` lines, in the order procfs collects them (it takes
/// every line starting with `cpu` other than the `cpu ` total).
fn cpu_ids(path: &Path, text: &str) -> Result<Vec<u32>, ObserveError> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|line| {
            let name = line.split_whitespace().next().unwrap_or("");
            name.strip_prefix("cpu")
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(path, line, "a cpuN line"))
        })
        .collect()
}

fn ticks(t: &CpuTime) -> CpuTicks {
    let steal = t.steal.unwrap_or(0);
    // `guest` and `guest_nice` are already inside `user` and `nice`.
    let total = [t.user, t.nice, t.system, t.idle]
        .into_iter()
        .chain([t.iowait, t.irq, t.softirq].into_iter().flatten())
        .fold(steal, u64::saturating_add);
    CpuTicks { total, steal }
}

/// Fraction of each CPU's time stolen between two readings, for CPUs in both.
/// 0 when no time passed; counters that went backwards (a CPU that went
/// offline and back) count as no time passed rather than as nonsense.
pub fn steal_fractions(
    before: &BTreeMap<u32, CpuTicks>,
    after: &BTreeMap<u32, CpuTicks>,
) -> BTreeMap<u32, f64> {
    after
        .iter()
        .filter_map(|(cpu, a)| {
            let b = before.get(cpu)?;
            let total = a.total.saturating_sub(b.total);
            let steal = a.steal.saturating_sub(b.steal);
            let fraction = if total == 0 {
                0.0
            } else {
                (steal as f64 / total as f64).clamp(0.0, 1.0)
            };
            Some((*cpu, fraction))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAIL: &str = "intr 0\nctxt 10\nbtime 1\nprocesses 5\nprocs_running 1\nprocs_blocked 0\n";

    fn parse_ok(cpus: &str) -> BTreeMap<u32, CpuTicks> {
        parse(
            Path::new("stat"),
            &format!("cpu  1 1 1 1 1 1 1 1 0 0\n{cpus}{TAIL}"),
        )
        .unwrap()
    }

    #[test]
    fn offline_cpus_keep_the_others_ids() {
        let t = parse_ok("cpu0 10 0 10 70 5 0 0 5 3 0\ncpu3 1 1 1 1 1 1 1 2 0 0\n");
        assert_eq!(
            t,
            BTreeMap::from([
                (
                    0,
                    CpuTicks {
                        total: 100,
                        steal: 5
                    }
                ),
                (3, CpuTicks { total: 9, steal: 2 })
            ])
        );
    }

    #[test]
    fn old_kernels_without_steal_read_as_none_stolen() {
        let t = parse_ok("cpu0 1 2 3 4\n");
        assert_eq!(
            t[&0],
            CpuTicks {
                total: 10,
                steal: 0
            }
        );
    }

    #[test]
    fn steal_is_a_clamped_fraction_of_elapsed_ticks() {
        let at = |total, steal| CpuTicks { total, steal };
        let before = BTreeMap::from([
            (0, at(100, 10)),
            (1, at(100, 0)),
            (2, at(50, 5)),
            (4, at(9, 9)),
        ]);
        let after = BTreeMap::from([
            (0, at(200, 35)),
            (1, at(100, 0)),
            (2, at(40, 1)),
            (3, at(1, 1)),
        ]);
        let f = steal_fractions(&before, &after);
        assert_eq!(f, BTreeMap::from([(0, 0.25), (1, 0.0), (2, 0.0)]));
        // More steal than time (counters read a tick apart) stays at 1.
        let f = steal_fractions(
            &BTreeMap::from([(0, at(0, 0))]),
            &BTreeMap::from([(0, at(2, 3))]),
        );
        assert_eq!(f[&0], 1.0);
    }

    #[test]
    fn malformed_files_are_errors() {
        let p = Path::new("stat");
        for text in [
            "",
            "cpu  1 2 3 4\n",
            &format!("cpu  1 2 3 4\ncpuX 1 2 3 4\n{TAIL}"),
            &format!("cpu  1 2 3 4\ncpu0 1 x 3 4\n{TAIL}"),
        ] {
            assert!(parse(p, text).is_err(), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new("stat"), &text);
            let _ = parse(Path::new("stat"), &format!("cpu  1 2 3 4\n{text}\n{TAIL}"));
        }
    }
}
