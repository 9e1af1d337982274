//! QEMU's threads: which are vCPUs, where each may run, and the CPU time it
//! used, from `proc/PID/task/TID/{stat,status}`.
//!
//! QEMU names a vCPU thread `CPU <index>/<accelerator>` (`CPU 0/KVM`,
//! `CPU 1/TCG`); libvirt's own names (`IO iothread1`, `call_rcu`, the main
//! thread `qemu-system-x86`) are not vCPUs.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use super::ObserveError;
use super::files::{bad, read_volatile, vanished};
use crate::idset::{CpuSet, NodeSet};

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub tid: u32,
    /// The thread's name (at most 15 bytes, cut by the kernel).
    pub comm: String,
    /// The vCPU index when the thread is a vCPU.
    pub vcpu: Option<u32>,
    pub cpus_allowed: CpuSet,
    pub mems_allowed: NodeSet,
    /// User plus system time since the thread started.
    pub cpu_time_ns: u64,
    /// The CPU the thread ran on last.
    pub last_cpu: u32,
}

/// Every thread of process `pid`, ascending by tid. Threads that exit while
/// being read, and zombies, are left out; the process having exited (no
/// thread left) is `Gone`.
pub fn read(root: &Path, pid: u32) -> Result<Vec<Task>, ObserveError> {
    let dir = root.join(format!("proc/{pid}/task"));
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if vanished(&e) => return Err(ObserveError::Gone { path: dir }),
        Err(source) => return Err(ObserveError::Io { path: dir, source }),
    };
    let ticks = clock_ticks_per_second();
    let mut tasks = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        match read_task(&entry.path(), tid, ticks) {
            Ok(task) => tasks.push(task),
            Err(ObserveError::Gone { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if tasks.is_empty() {
        return Err(ObserveError::Gone { path: dir });
    }
    tasks.sort_by_key(|t| t.tid);
    Ok(tasks)
}

fn read_task(dir: &Path, tid: u32, ticks_per_second: u64) -> Result<Task, ObserveError> {
    let stat_path = dir.join("stat");
    let stat = parse_stat(&stat_path, &read_volatile(&stat_path)?, ticks_per_second)?;
    // A zombie (or dead) thread has exited; only its entry is left.
    if matches!(stat.state, 'Z' | 'X') {
        return Err(ObserveError::Gone { path: stat_path });
    }
    let status_path = dir.join("status");
    let (cpus_allowed, mems_allowed) = parse_status(&status_path, &read_volatile(&status_path)?)?;
    Ok(Task {
        tid,
        vcpu: vcpu_index(&stat.comm),
        comm: stat.comm,
        cpus_allowed,
        mems_allowed,
        cpu_time_ns: stat.cpu_time_ns,
        last_cpu: stat.last_cpu,
    })
}

/// The host's clock tick rate (`USER_HZ`), which `stat` times count in.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Every Linux architecture but alpha uses 100; -1 means unknown.
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The vCPU index in a QEMU thread name `CPU <index>/<accelerator>`.
pub fn vcpu_index(comm: &str) -> Option<u32> {
    let (index, accel) = comm.strip_prefix("CPU ")?.split_once('/')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || accel.is_empty() {
        return None;
    }
    index.parse().ok()
}

/// What `read` takes from a `stat` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStat {
    pub comm: String,
    /// `R`, `S`, `D`, `Z`, ... as in proc(5).
    pub state: char,
    pub cpu_time_ns: u64,
    pub last_cpu: u32,
}

/// Parses `proc/PID/task/TID/stat`: `tid (comm) state ppid ...`. The name may
/// hold spaces and parentheses, so the fields start after the last `)`.
pub fn parse_stat(
    path: &Path,
    text: &str,
    ticks_per_second: u64,
) -> Result<TaskStat, ObserveError> {
    let malformed = || bad(path, text, "a task stat line");
    let open = text.find('(').ok_or_else(malformed)?;
    let close = text
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or_else(malformed)?;
    let comm = text[open + 1..close].to_string();
    // Fields counted from 1 as in proc(5): state is field 3, utime 14,
    // stime 15, processor 39.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied().ok_or_else(malformed);
    let number = |n: usize| field(n)?.parse::<u64>().map_err(|_| malformed());
    let ticks = u128::from(number(14)?) + u128::from(number(15)?);
    let nanos = ticks * NANOS_PER_SEC / u128::from(ticks_per_second.max(1));
    let state = field(3)?;
    Ok(TaskStat {
        comm,
        state: state
            .chars()
            .next()
            .filter(|_| state.len() == 1)
            .ok_or_else(malformed)?,
        cpu_time_ns: u64::try_from(nanos).unwrap_or(u64::MAX),
        last_cpu: field(39)?.parse().map_err(|_| malformed())?,
    })
}

/// The `Cpus_allowed_list` and `Mems_allowed_list` of a `status` file.
pub fn parse_status(path: &Path, text: &str) -> Result<(CpuSet, NodeSet), ObserveError> {
    let list = |key: &str| {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| bad(path, key, "a line of this status file"))?;
        line.parse::<CpuSet>()
            .map_err(|_| bad(path, line, "a CPU or node list"))
    };
    Ok((list("Cpus_allowed_list")?, list("Mems_allowed_list")?))
}

/// Fraction of one CPU each vCPU used between two readings `elapsed` apart,
/// by vCPU index (as far as the highest index in `after`). `None` where it
/// cannot be known: no time passed, or the vCPU's thread is not in both
/// readings (hot-plugged, or replaced under the same index); the caller
/// fills those with its configured default.
pub fn vcpu_loads(before: &[Task], after: &[Task], elapsed: Duration) -> Vec<Option<f64>> {
    let vcpus = |tasks: &[Task]| -> BTreeMap<u32, (u32, u64)> {
        tasks
            .iter()
            .filter_map(|t| Some((t.vcpu?, (t.tid, t.cpu_time_ns))))
            .collect()
    };
    let (before, after) = (vcpus(before), vcpus(after));
    let Some(&last) = after.keys().next_back() else {
        return Vec::new();
    };
    let elapsed_ns = elapsed.as_nanos();
    (0..=last)
        .map(|index| {
            let (tid, used_after) = *after.get(&index)?;
            let (tid_before, used_before) = *before.get(&index)?;
            if tid != tid_before || elapsed_ns == 0 {
                return None;
            }
            let used = used_after.saturating_sub(used_before);
            Some((used as f64 / elapsed_ns as f64).clamp(0.0, 1.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real line (a TCG vCPU thread on the CI machine), with `processor`
    /// (field 39) changed from 0 to 1 so that reading it is checked.
    const STAT: &str = "31897 (CPU 0/TCG) S 1 31889 31889 0 -1 138412224 490 0 0 0 141 4 0 0 \
        20 0 6 0 571786 1588928512 11025 18446744073709551615 94141735849984 94141741710421 \
        140733692435728 0 0 0 2147220087 4096 16451 1 0 0 -1 1 0 0 0 0 0 94141744822520 \
        94141750026672 94142712729600 140733692439096 140733692440117 140733692440117 \
        140733692440540 0";

    fn task(tid: u32, vcpu: Option<u32>, cpu_time_ns: u64) -> Task {
        Task {
            tid,
            comm: String::new(),
            vcpu,
            cpus_allowed: CpuSet::new(),
            mems_allowed: NodeSet::new(),
            cpu_time_ns,
            last_cpu: 0,
        }
    }

    #[test]
    fn stat_times_become_nanoseconds() {
        let s = parse_stat(Path::new("stat"), STAT, 100).unwrap();
        assert_eq!(s.comm, "CPU 0/TCG");
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_time_ns, 1_450_000_000);
        assert_eq!(s.last_cpu, 1);
        let s = parse_stat(Path::new("stat"), STAT, 1024).unwrap();
        assert_eq!(s.cpu_time_ns, 145 * 1_000_000_000 / 1024);
    }

    #[test]
    fn names_with_parentheses_and_spaces_are_kept_whole() {
        let text = STAT.replace("(CPU 0/TCG)", "(a) b) (c )");
        let s = parse_stat(Path::new("stat"), &text, 100).unwrap();
        assert_eq!(s.comm, "a) b) (c ");
        assert_eq!(s.cpu_time_ns, 1_450_000_000);
    }

    #[test]
    fn short_or_garbled_stat_lines_are_errors() {
        let p = Path::new("stat");
        for text in [
            "",
            "1 (x",
            "1 x) S",
            "1 (x) S 1 2",
            &STAT.replace(" 141 ", " -3 "),
        ] {
            assert!(parse_stat(p, text, 100).is_err(), "{text:?}");
        }
    }

    #[test]
    fn vcpu_names() {
        assert_eq!(vcpu_index("CPU 0/KVM"), Some(0));
        assert_eq!(vcpu_index("CPU 17/TCG"), Some(17));
        assert_eq!(vcpu_index("CPU 3/HVF"), Some(3));
        for name in [
            "IO iothread1",
            "qemu-system-x86",
            "CPU /KVM",
            "CPU 1",
            "CPU 1/",
            "CPU x/KVM",
        ] {
            assert_eq!(vcpu_index(name), None, "{name}");
        }
    }

    #[test]
    fn status_lists() {
        let text = "Name:\tCPU 0/KVM\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1,4\n\
                    Mems_allowed:\t00000001\nMems_allowed_list:\t0\n";
        let (cpus, mems) = parse_status(Path::new("status"), text).unwrap();
        assert_eq!(
            (cpus.to_string(), mems.to_string()),
            ("0-1,4".into(), "0".into())
        );
        assert!(parse_status(Path::new("status"), "Cpus_allowed_list:\t0\n").is_err());
        assert!(
            parse_status(
                Path::new("status"),
                "Cpus_allowed_list:\tx\nMems_allowed_list:\t0\n"
            )
            .is_err()
        );
    }

    #[test]
    fn loads_are_per_vcpu_index_and_clamped() {
        let second = Duration::from_secs(1);
        let before = [
            task(10, None, 0),
            task(11, Some(0), 1_000_000_000),
            task(12, Some(1), 0),
            task(14, Some(3), 0),
        ];
        let after = [
            task(10, None, 5_000_000_000),
            task(11, Some(0), 1_250_000_000),
            task(12, Some(1), 3_000_000_000),
            task(15, Some(3), 1),
        ];
        assert_eq!(
            vcpu_loads(&before, &after, second),
            [Some(0.25), Some(1.0), None, None]
        );
        assert_eq!(
            vcpu_loads(&before, &after, Duration::ZERO),
            [None, None, None, None]
        );
        assert!(vcpu_loads(&before, &[task(10, None, 0)], second).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", ticks in 0u64..u64::MAX) {
            let p = Path::new("x");
            let _ = parse_stat(p, &text, ticks);
            let _ = parse_status(p, &text);
            let _ = vcpu_index(&text);
        }
    }
}
