//! A snapshot: a host's situation in a directory, planned offline.
//!
//! ```text
//! DIR/capabilities.xml          virsh capabilities
//! DIR/domains/NAME.xml          virsh dumpxml NAME            (live XML)
//! DIR/domains/NAME.inactive.xml virsh dumpxml --inactive NAME (optional)
//! DIR/observations.toml         measurements (optional)
//! ```
//! See docs/snapshot-format.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exit::Exit;
use crate::guest::domain_xml::{self, DomainXmlError};
use crate::input::{self, InputError};
use crate::observations::{Observations, ObservationsError, check};
use crate::planner::DomainInput;
use crate::topology::HostTopology;
use crate::topology::capabilities::{self, CapabilitiesError};

pub const CAPABILITIES: &str = "capabilities.xml";
pub const DOMAINS: &str = "domains";
pub const OBSERVATIONS: &str = "observations.toml";
const INACTIVE_SUFFIX: &str = ".inactive.xml";

#[derive(Debug)]
pub struct Snapshot {
    pub topology: HostTopology,
    pub domains: Vec<DomainInput>,
    pub observations: Observations,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot list {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Capabilities {
        path: PathBuf,
        #[source]
        source: CapabilitiesError,
    },
    #[error("{path}")]
    Domain {
        path: PathBuf,
        #[source]
        source: DomainXmlError,
    },
    #[error(transparent)]
    Observations(#[from] ObservationsError),
    #[error("{path}: domain {name:?} is also defined in {other}")]
    DuplicateDomain {
        path: PathBuf,
        other: PathBuf,
        name: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not empty; give a new or empty directory")]
    NotEmpty { path: PathBuf },
    #[error(
        "{path}: persistent XML of domain {name:?} (UUID {uuid}) does not belong to {live_path} (UUID {live_uuid})"
    )]
    Mismatch {
        path: PathBuf,
        name: String,
        uuid: String,
        live_path: PathBuf,
        live_uuid: String,
    },
    #[error("{path}: persistent XML without live XML {live}")]
    OrphanInactive { path: PathBuf, live: PathBuf },
}

impl SnapshotError {
    /// The exit class: a file that is missing or no file at all (66), one
    /// that cannot be read (74), one whose content is wrong (65), and a
    /// snapshot that cannot be written (74).
    pub fn exit(&self) -> Exit {
        match self {
            SnapshotError::Input(e) | SnapshotError::Observations(ObservationsError::Input(e)) => {
                e.exit()
            }
            SnapshotError::ReadDir { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => Exit::NoInput,
                _ => Exit::IoErr,
            },
            SnapshotError::Write { .. } => Exit::IoErr,
            _ => Exit::DataErr,
        }
    }
}

pub fn load_topology(dir: &Path) -> Result<HostTopology, SnapshotError> {
    let path = dir.join(CAPABILITIES);
    capabilities::parse(&input::read_text(&path, input::CAPABILITIES)?)
        .map_err(|source| SnapshotError::Capabilities { path, source })
}

fn parse_domain(path: &Path) -> Result<crate::guest::Domain, SnapshotError> {
    domain_xml::parse(&input::read_text(path, input::DOMAIN_XML)?).map_err(|source| {
        SnapshotError::Domain {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Loads a snapshot directory, naming the file at fault on any error.
pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let topology = load_topology(dir)?;
    let domains_dir = dir.join(DOMAINS);
    let listing = std::fs::read_dir(&domains_dir).map_err(|source| SnapshotError::ReadDir {
        path: domains_dir.clone(),
        source,
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| SnapshotError::ReadDir {
            path: domains_dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "xml") {
            files.push(path);
        }
    }
    files.sort();
    let is_inactive = |p: &Path| p.to_string_lossy().ends_with(INACTIVE_SUFFIX);
    let mut by_name: BTreeMap<String, (PathBuf, DomainInput)> = BTreeMap::new();
    for path in files.iter().filter(|p| !is_inactive(p)) {
        let live = parse_domain(path)?;
        let inactive_path = PathBuf::from(format!(
            "{}{INACTIVE_SUFFIX}",
            path.with_extension("").display()
        ));
        let persistent = if inactive_path.exists() {
            let persistent = parse_domain(&inactive_path)?;
            // Paired by file name, but only the UUID says it is the same
            // domain: a stray or renamed file would otherwise lend another
            // domain's pinning to this one.
            if persistent.uuid != live.uuid {
                return Err(SnapshotError::Mismatch {
                    live_path: path.clone(),
                    live_uuid: live.uuid,
                    path: inactive_path,
                    name: persistent.name,
                    uuid: persistent.uuid,
                });
            }
            Some(persistent)
        } else {
            None
        };
        if let Some((other, _)) = by_name.get(&live.name) {
            return Err(SnapshotError::DuplicateDomain {
                path: path.clone(),
                other: other.clone(),
                name: live.name,
            });
        }
        by_name.insert(
            live.name.clone(),
            (path.clone(), DomainInput::new(live, persistent)),
        );
    }
    for path in files.iter().filter(|p| is_inactive(p)) {
        let text = path.to_string_lossy();
        let live = PathBuf::from(format!(
            "{}.xml",
            &text[..text.len() - INACTIVE_SUFFIX.len()]
        ));
        if !live.exists() {
            return Err(SnapshotError::OrphanInactive {
                path: path.clone(),
                live,
            });
        }
    }
    let obs_path = dir.join(OBSERVATIONS);
    let observations = if obs_path.exists() {
        Observations::load(&obs_path)?
    } else {
        Observations::default()
    };
    let live: BTreeMap<&str, &crate::guest::Domain> = by_name
        .iter()
        .map(|(name, (_, d))| (name.as_str(), &d.live))
        .collect();
    check::check(&observations, &topology, &live).map_err(|(key, reason)| {
        ObservationsError::Invalid {
            path: obs_path.clone(),
            key,
            reason,
        }
    })?;
    Ok(Snapshot {
        topology,
        domains: by_name.into_values().map(|(_, d)| d).collect(),
        observations,
    })
}

/// One domain of a snapshot being written.
pub struct DomainXml<'a> {
    pub name: &'a str,
    pub live: &'a str,
    pub persistent: Option<&'a str>,
}

/// Writes a snapshot directory that [`load`] reads back. Refuses a
/// directory that already has files, so two hosts are never mixed.
pub fn write(
    dir: &Path,
    capabilities_xml: &str,
    domains: &[DomainXml],
    observations: &Observations,
) -> Result<(), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Write { path, source }
    };
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(SnapshotError::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    let domains_dir = dir.join(DOMAINS);
    std::fs::create_dir_all(&domains_dir).map_err(io(&domains_dir))?;
    let caps = dir.join(CAPABILITIES);
    std::fs::write(&caps, capabilities_xml).map_err(io(&caps))?;
    for d in domains {
        let live = domains_dir.join(format!("{}.xml", d.name));
        std::fs::write(&live, d.live).map_err(io(&live))?;
        if let Some(p) = d.persistent {
            let path = domains_dir.join(format!("{}{INACTIVE_SUFFIX}", d.name));
            std::fs::write(&path, p).map_err(io(&path))?;
        }
    }
    let obs = dir.join(OBSERVATIONS);
    std::fs::write(&obs, observations.to_toml()).map_err(io(&obs))?;
    Ok(())
}
