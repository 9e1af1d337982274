//! `numapin run` and `numapin rebalance`.

use std::path::{Path, PathBuf};

use crate::apply::JournalError;
use crate::daemon::{self, DaemonError, RunOptions, pid_file};
use crate::exit::Exit;

use super::{Failure, load_config};

pub fn run(config: Option<PathBuf>, dry_run: bool, root: PathBuf) -> Result<(), Failure> {
    daemon::run(RunOptions {
        config_path: config,
        dry_run,
        root,
    })
    .map_err(|e| {
        let exit = match &e {
            DaemonError::Config(e) => super::config_exit(e),
            DaemonError::Journal(JournalError::Locked { .. }) => Exit::TempFail,
            DaemonError::Journal(JournalError::Corrupt { .. }) => Exit::DataErr,
            DaemonError::Journal(JournalError::Io { .. })
            | DaemonError::PidFile { .. }
            | DaemonError::StateDir { .. } => Exit::IoErr,
            DaemonError::Runtime(_) => Exit::Software,
            DaemonError::Metrics { .. } => Exit::Unavailable,
        };
        Failure::new(exit, e)
    })
}

pub fn rebalance(config: Option<&Path>) -> Result<(), Failure> {
    let (config, _) = load_config(config)?;
    let path = &config.daemon.pid_file;
    let pid = pid_file::read(path).map_err(|e| {
        Failure::new(
            Exit::Unavailable,
            format!(
                "no running numapin daemon found ({}: {e}); under systemd: systemctl kill -s USR1 numapin",
                path.display()
            ),
        )
    })?;
    // SAFETY: kill(2) with a pid read from our own pid file.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::new(
            Exit::Unavailable,
            format!(
                "cannot signal numapin (pid {pid} from {}): {e}",
                path.display()
            ),
        ));
    }
    super::print_out(&format!("asked numapin (pid {pid}) to rebalance\n"))
}
