//! Reads the topology from a sysfs tree under an injectable root.
//! TODO(helper A): implement.
use std::path::Path;

use super::HostTopology;

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("reading {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn read(_root: &Path) -> Result<HostTopology, SysfsError> {
    unimplemented!()
}
