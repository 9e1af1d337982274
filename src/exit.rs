//! Exit codes by class of failure (sysexits.h values), so scripts and
//! systemd's `RestartPreventExitStatus=` can tell a bad config from a host
//! problem.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Bad command line.
    Usage = 64,
    /// Input data is malformed or inconsistent (XML, observations).
    DataErr = 65,
    /// An input file or directory does not exist.
    NoInput = 66,
    /// libvirt or the host cannot be reached.
    Unavailable = 69,
    /// A bug: an invariant broke.
    Software = 70,
    /// Reading or writing a file failed.
    IoErr = 74,
    /// Some changes failed and were rolled back, or another numapin holds
    /// the state dir: retrying later may succeed.
    TempFail = 75,
    /// The configuration is invalid.
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}
