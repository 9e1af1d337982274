//! numapin keeps every virtual machine's vCPUs and memory on the right NUMA
//! nodes of a KVM host.
//!
//! The crate is split into a pure core that needs no machine
//! ([`idset`], [`topology`], [`guest`], [`config`], [`observations`],
//! [`nested`], [`planner`]) and the adapters that read or change a real host
//! ([`observe`] reads what a running host measures).

pub mod apply;
pub mod cli;
pub mod commands;
pub mod config;
pub mod converge;
pub mod daemon;
pub mod exit;
pub mod guest;
pub mod host_error;
pub mod idset;
pub mod input;
pub mod libvirt;
pub mod live;
pub mod metrics;
pub mod nested;
pub mod observations;
pub mod observe;
pub mod planner;
pub mod report;
pub mod simulate;
pub mod snapshot;
pub mod synth;
pub mod topology;
pub mod units;
