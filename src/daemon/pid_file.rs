//! The daemon's pid file, for `numapin rebalance` (and operators). Removed
//! on a clean exit; a stale one (its process gone) is simply replaced.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("pid.tmp");
        fs::write(&tmp, format!("{}\n", std::process::id()))?;
        fs::rename(&tmp, path)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a newer daemon may have replaced it.
        if read(&self.path).ok() == Some(std::process::id()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pid in a pid file.
pub fn read(path: &Path) -> io::Result<u32> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{:?} is not a process id", text.trim()),
        )
    })
}
