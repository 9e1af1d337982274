//! Readers of what a running host measures: where each domain's memory is,
//! how busy its vCPU threads are, how much time the host's CPUs lose to
//! steal, and the kernel's per-node allocation counters.
//!
//! Every reader takes `root`, which is `/` in production and a captured or
//! hand-made tree in tests, and turns files into plain values; none of them
//! keeps state or changes anything. Files read, relative to `root`:
//! - `run/libvirt/qemu/NAME.pid`, then `proc/PID` ([`pid_file`]);
//! - `proc/PID/numa_maps` ([`numa_maps`]);
//! - `proc/PID/smaps` and `numa_maps`, for each guest cell's RAM block
//!   ([`ram_blocks`]);
//! - `proc/PID/cgroup`, then `memory.numa_stat` under `sys/fs/cgroup` (v2)
//!   or `sys/fs/cgroup/memory` (v1) ([`cgroup`]);
//! - `proc/PID/statm` ([`statm`]);
//! - `proc/PID/task/TID/{stat,status}` ([`threads`]);
//! - `proc/stat` ([`proc_stat`]);
//! - `sys/devices/system/node/nodeN/numastat` ([`node_stats`]).
//!
//! Domains stop at any moment, so a file of a process or domain that has
//! vanished is [`ObserveError::Gone`] rather than an I/O error: callers check
//! [`ObserveError::is_gone`] and drop the domain from this round.

pub mod cgroup;
pub mod node_stats;
pub mod numa_maps;
pub mod pid_file;
pub mod proc_stat;
pub mod ram_blocks;
pub mod statm;
pub mod threads;

mod files;

use std::path::PathBuf;

/// One error type for every reader here: a caller observing a domain calls
/// several of them and must tell "the domain stopped" apart from the rest
/// the same way for all.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The process, thread or domain the file belongs to has stopped
    /// (the file is gone, or the kernel answered ESRCH).
    #[error("{path}: gone, the process or domain has stopped")]
    Gone { path: PathBuf },
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file, larger than its cap, or unreadable text.
    #[error(transparent)]
    Input(crate::input::InputError),
    #[error("{path}: {content:?} is not {expected}")]
    BadContent {
        path: PathBuf,
        /// The offending line or value, cut to a readable length.
        content: String,
        expected: &'static str,
    },
    #[error("{path}: no line names a memory cgroup")]
    NoMemoryCgroup { path: PathBuf },
    #[error("no memory.numa_stat in {dir} or any parent below the cgroup root")]
    NoNumaStat { dir: PathBuf },
    #[error("{name:?} is not a libvirt domain name")]
    BadDomainName { name: String },
    #[error("listing the host's NUMA nodes")]
    Nodes(#[source] crate::topology::sysfs::SysfsError),
}

impl ObserveError {
    /// True when the process or domain stopped while being read: expected at
    /// any time, not a fault of the host or of numapin.
    pub fn is_gone(&self) -> bool {
        matches!(self, ObserveError::Gone { .. })
    }
}
