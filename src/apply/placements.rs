//! What numapin left in each domain's `<cputune>` after a verified change,
//! by domain UUID and run id. Lets the next round tell numapin's own pins
//! (on a transient domain, or persisted ones) from an operator's: pins that
//! differ from the record are the operator's and are never fought.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::libvirt::DomainRef;
use crate::planner::Recorded;

const PLACEMENTS: &str = "placements";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub domain: DomainRef,
    pub recorded: Recorded,
}

#[derive(Debug, Clone)]
pub struct Placements {
    dir: PathBuf,
}

impl Placements {
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join(PLACEMENTS);
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Reads without creating anything (for read-only commands).
    pub fn existing(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(PLACEMENTS),
        }
    }

    fn path_of(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    /// Records a placement. Written whole then renamed; losing it in a
    /// crash only makes numapin treat its own pins as an operator's.
    pub fn record(&self, p: &Placement) -> io::Result<()> {
        let path = self.path_of(&p.domain.uuid);
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(p).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp, &path)
    }

    /// What numapin left on this run of the domain, if recorded.
    pub fn recorded_of(&self, d: &DomainRef) -> Option<Recorded> {
        let text = fs::read(self.path_of(&d.uuid)).ok()?;
        let p: Placement = serde_json::from_slice(&text).ok()?;
        (p.domain.id == d.id).then_some(p.recorded)
    }

    /// When numapin last placed this run of the domain (its record's
    /// time), if it did: survives restarts of numapin.
    pub fn recorded_at(&self, d: &DomainRef) -> Option<std::time::SystemTime> {
        self.recorded_of(d)?;
        fs::metadata(self.path_of(&d.uuid)).ok()?.modified().ok()
    }

    /// Forgets a domain's record (`numapin manage` replaces it).
    pub fn forget(&self, uuid: &str) -> io::Result<()> {
        match fs::remove_file(self.path_of(uuid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Drops records of domains that are no longer running.
    pub fn prune(&self, running: &[DomainRef]) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let uuid = name.trim_end_matches(".json.tmp").trim_end_matches(".json");
            if !running.iter().any(|r| r.uuid == uuid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_counts_only_for_the_same_run() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Placements::open(tmp.path()).unwrap();
        let mut d = DomainRef {
            name: "a".into(),
            uuid: "u-1".into(),
            id: 4,
        };
        let recorded = Recorded {
            cputune: crate::guest::CpuTune {
                emulatorpin: Some("1".parse().unwrap()),
                ..Default::default()
            },
            nodeset: None,
        };
        p.record(&Placement {
            domain: d.clone(),
            recorded: recorded.clone(),
        })
        .unwrap();
        assert_eq!(p.recorded_of(&d), Some(recorded));
        d.id = 5;
        assert_eq!(p.recorded_of(&d), None, "a restarted domain starts afresh");
        p.prune(&[]);
        d.id = 4;
        assert_eq!(p.recorded_of(&d), None);
    }
}
