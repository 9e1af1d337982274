//! The transaction journal: one file per domain being changed, written
//! before its first step and after each step starts, so that if numapin
//! dies mid-change the next start knows what to undo.
//!
//! Each write is atomic: a temporary file is written and fsynced, renamed
//! over the record, and the directory fsynced, so a crash leaves either the
//! old record or the new one, never a torn file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::libvirt::{DomainRef, MemoryBinding, Pins};
use crate::planner::Action;

const RECORD_VERSION: u32 = 1;
const TRANSACTIONS: &str = "transactions";
const LOCK: &str = "lock";

/// A domain's state before a transaction: what rollback restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub pins: Pins,
    pub binding: MemoryBinding,
    /// Resident MiB per node, for the report (memory is moved back by
    /// undoing the move, not by replaying this).
    pub memory_mib: BTreeMap<u32, u64>,
    /// Guest cell -> node -> MiB of each cell whose RAM a step moves: an
    /// undo sends the cell's RAM back over these nodes, in proportion.
    /// Records written before cells moved on their own have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cell_memory_mib: BTreeMap<u32, BTreeMap<u32, u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub domain: DomainRef,
    /// Seconds since the epoch when the transaction began.
    pub started: u64,
    /// The numapin process that wrote it.
    pub pid: u32,
    pub prior: Prior,
    pub steps: Vec<Action>,
    /// Steps started so far; the last one may be half done.
    pub attempted: usize,
}

impl Record {
    pub fn new(domain: DomainRef, prior: Prior, steps: Vec<Action>) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            version: RECORD_VERSION,
            domain,
            started,
            pid: std::process::id(),
            prior,
            steps,
            attempted: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "journal record {path} is unreadable ({reason}); inspect the domain it names and remove the file"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "another numapin holds {path} (a daemon or an apply is running); stop it or wait for it"
    )]
    Locked { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The journal directory of one state dir.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// Held while numapin may change domains: two numapins changing the same
/// host would each roll back the other's work as "unfinished".
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl Journal {
    /// Opens (creating when needed) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join(TRANSACTIONS);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error(&dir))?;
        Ok(Self { dir })
    }

    /// Takes the state dir's lock without waiting.
    pub fn lock(state_dir: &Path) -> Result<StateLock, JournalError> {
        let path = state_dir.join(LOCK);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_error(state_dir))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                JournalError::Locked { path }
            } else {
                JournalError::Io { path, source: err }
            });
        }
        Ok(StateLock { _file: file })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    /// Writes (or replaces) a domain's record atomically and durably.
    pub fn write(&self, record: &Record) -> Result<(), JournalError> {
        let path = self.path_of(&record.domain.uuid);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|e| JournalError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        file.write_all(&text).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        self.sync_dir()
    }

    /// Removes a finished transaction's record.
    pub fn remove(&self, uuid: &str) -> Result<(), JournalError> {
        let path = self.path_of(uuid);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(JournalError::Io { path, source: e }),
        }
    }

    /// Records of unfinished transactions, oldest first. A record that
    /// cannot be read is an error, never skipped: it stands for a domain
    /// that may be half-changed.
    pub fn pending(&self) -> Result<Vec<Record>, JournalError> {
        self.read(true)
    }

    /// The unfinished records under `state_dir`, for a reader that does not
    /// hold the lock (`status`, `plan`): nothing is created or tidied, and
    /// a missing journal has none.
    pub fn peek(state_dir: &Path) -> Result<Vec<Record>, JournalError> {
        let journal = Self {
            dir: state_dir.join(TRANSACTIONS),
        };
        if !journal.dir.exists() {
            return Ok(Vec::new());
        }
        journal.read(false)
    }

    /// `tidy`: remove temporary files of writes that never completed; only
    /// the lock holder may, as it is the only writer.
    fn read(&self, tidy: bool) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = entry.map_err(io_error(&self.dir))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match name {
                // A temporary file is a write that never completed; the
                // record it was replacing (if any) is still there.
                Some(n) if tidy && n.ends_with(".json.tmp") => {
                    let _ = fs::remove_file(&path);
                }
                Some(n) if n.ends_with(".json") => {
                    let text = fs::read(&path).map_err(io_error(&path))?;
                    let record: Record =
                        serde_json::from_slice(&text).map_err(|e| JournalError::Corrupt {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    if record.version != RECORD_VERSION {
                        return Err(JournalError::Corrupt {
                            path,
                            reason: format!("version {} is not {RECORD_VERSION}", record.version),
                        });
                    }
                    out.push(record);
                }
                _ => {}
            }
        }
        out.sort_by(|a, b| (a.started, &a.domain.uuid).cmp(&(b.started, &b.domain.uuid)));
        Ok(out)
    }

    fn sync_dir(&self) -> Result<(), JournalError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: &str, started: u64) -> Record {
        let mut r = Record::new(
            DomainRef {
                name: format!("dom-{uuid}"),
                uuid: uuid.into(),
                id: 7,
            },
            Prior {
                pins: Pins::default(),
                binding: MemoryBinding {
                    mode: None,
                    nodeset: None,
                },
                memory_mib: BTreeMap::from([(0, 512)]),
                cell_memory_mib: BTreeMap::new(),
            },
            vec![Action::Emulatorpin {
                cpus: "0-1".parse().unwrap(),
            }],
        );
        r.started = started;
        r
    }

    #[test]
    fn records_round_trip_and_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        let mut a = record("a", 2);
        j.write(&a).unwrap();
        j.write(&record("b", 1)).unwrap();
        a.attempted = 1;
        j.write(&a).unwrap();
        let pending = j.pending().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].domain.uuid, "b", "oldest first");
        assert_eq!(pending[1], a);
        j.remove("a").unwrap();
        j.remove("a").unwrap();
        assert_eq!(j.pending().unwrap().len(), 1);
    }

    #[test]
    fn a_torn_write_leaves_the_previous_record() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        let a = record("a", 1);
        j.write(&a).unwrap();
        fs::write(j.dir().join("a.json.tmp"), b"{\"version\": 1, \"dom").unwrap();
        assert_eq!(j.pending().unwrap(), vec![a]);
        assert!(!j.dir().join("a.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        fs::write(j.dir().join("x.json"), b"not json").unwrap();
        let e = j.pending().unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("unreadable"), "{e}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let held = Journal::lock(tmp.path()).unwrap();
        let e = Journal::lock(tmp.path()).unwrap_err();
        assert!(matches!(e, JournalError::Locked { .. }), "{e}");
        drop(held);
        Journal::lock(tmp.path()).unwrap();
    }
}
