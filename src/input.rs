//! The one way numapin reads a named input file: regular files only, and
//! no more than a cap per kind of file.
//!
//! A FIFO would block a reader forever and `/dev/zero` would grow it
//! without end, so the file is opened without blocking and checked to be a
//! regular file before a byte is read; then at most the cap plus one byte is
//! read, so even a file that grows while being read (or a procfs file, whose
//! size `stat` reports as 0) cannot take more memory than its cap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::Exit;

/// A kind of input file and the most bytes numapin reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the file is, for the error ("numapin's cap for {kind}").
    pub kind: &'static str,
    pub max_bytes: u64,
}

const MIB: u64 = 1 << 20;

/// `virsh capabilities` of a 2-socket host is ~20 KiB; a 1,024-CPU host
/// with many cells stays under 2 MiB.
pub const CAPABILITIES: Limit = Limit {
    kind: "capabilities XML",
    max_bytes: 16 * MIB,
};
/// A domain with hundreds of disks and NICs is a few hundred KiB.
pub const DOMAIN_XML: Limit = Limit {
    kind: "domain XML",
    max_bytes: 16 * MIB,
};
/// A few lines per node and per domain: 16 MiB is ~100,000 domains.
pub const OBSERVATIONS: Limit = Limit {
    kind: "observations",
    max_bytes: 16 * MIB,
};
/// The documented config with every key is under 8 KiB.
pub const CONFIG: Limit = Limit {
    kind: "config files",
    max_bytes: MIB,
};
/// One sysfs attribute is at most a page; a `cpulist` or `distance` of a
/// 65,536-CPU or -node host stays well under 1 MiB.
pub const SYSFS: Limit = Limit {
    kind: "sysfs files",
    max_bytes: MIB,
};
/// Host-wide and per-process procfs files (`stat`, `numa_maps`, `smaps` of
/// a QEMU with thousands of mappings).
pub const PROCFS: Limit = Limit {
    kind: "procfs files",
    max_bytes: 64 * MIB,
};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {what}, not a regular file")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path} is larger than {}, numapin's cap for {kind}", cap_text(*max_bytes))]
    TooLarge {
        path: PathBuf,
        kind: &'static str,
        max_bytes: u64,
    },
    #[error("{path}: invalid UTF-8 at byte {offset}")]
    NotUtf8 { path: PathBuf, offset: usize },
}

/// "16 MiB" for whole MiB, else bytes.
fn cap_text(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

impl InputError {
    pub fn path(&self) -> &Path {
        match self {
            InputError::Io { path, .. }
            | InputError::NotRegular { path, .. }
            | InputError::TooLarge { path, .. }
            | InputError::NotUtf8 { path, .. } => path,
        }
    }

    /// The file is not there (as opposed to there but unreadable or bad).
    pub fn is_not_found(&self) -> bool {
        matches!(self, InputError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// The exit class: a file that is missing or is no file at all cannot
    /// be used as input (66); one whose content is too long or not text is
    /// bad data (65); any other failure to read is an I/O error (74).
    pub fn exit(&self) -> Exit {
        match self {
            InputError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => Exit::NoInput,
                _ => Exit::IoErr,
            },
            InputError::NotRegular { .. } => Exit::NoInput,
            InputError::TooLarge { .. } | InputError::NotUtf8 { .. } => Exit::DataErr,
        }
    }
}

fn file_type_name(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// `/dev/null`: the one device that is read, as the empty file it stands
/// for (`--config /dev/null` asks for the built-in defaults).
fn is_dev_null(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3)
}

/// The open file, or `None` for `/dev/null`.
fn open_regular(path: &Path) -> Result<Option<File>, InputError> {
    let io = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO with no writer would otherwise block
    // before the type could be checked. It has no effect on regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if is_dev_null(&meta) {
        return Ok(None);
    }
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            what: file_type_name(file_type),
        });
    }
    Ok(Some(file))
}

/// First buffer size of [`read_bytes`].
const READ_CHUNK: usize = 8192;

/// The bytes of a regular file of at most `limit.max_bytes`.
pub fn read_bytes(path: &Path, limit: Limit) -> Result<Vec<u8>, InputError> {
    let Some(file) = open_regular(path)? else {
        return Ok(Vec::new());
    };
    // Room for most kernel files at once: they report no size, and from an
    // empty buffer the standard library first reads 32 bytes to probe,
    // one more read(2) of every /proc file each cycle (and the kernel
    // renders the whole file for it).
    let mut bytes = Vec::with_capacity(READ_CHUNK);
    file.take(limit.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit.max_bytes {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            kind: limit.kind,
            max_bytes: limit.max_bytes,
        });
    }
    Ok(bytes)
}

/// A UTF-8 text file (XML, TOML); invalid UTF-8 is an error giving the
/// offset of the first bad byte.
pub fn read_text(path: &Path, limit: Limit) -> Result<String, InputError> {
    String::from_utf8(read_bytes(path, limit)?).map_err(|e| InputError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// A kernel file: ASCII, but a damaged tree must not become a panic, so
/// invalid bytes become U+FFFD and fail parsing where they matter.
pub fn read_lossy(path: &Path, limit: Limit) -> Result<String, InputError> {
    read_bytes(path, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: Limit = Limit {
        kind: "test files",
        max_bytes: 8,
    };

    #[test]
    fn reads_a_file_within_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "12345678").unwrap();
        assert_eq!(read_text(&path, TINY).unwrap(), "12345678");
    }

    #[test]
    fn a_file_over_its_cap_is_refused_naming_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "123456789").unwrap();
        let e = read_text(&path, TINY).unwrap_err();
        assert_eq!(e.exit(), Exit::DataErr);
        let msg = e.to_string();
        assert!(
            msg.ends_with("is larger than 8 bytes, numapin's cap for test files"),
            "{msg}"
        );
        assert_eq!(cap_text(16 << 20), "16 MiB");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_text(&path, TINY).unwrap_err();
        assert!(
            e.to_string().contains("is a FIFO, not a regular file"),
            "{e}"
        );
        assert_eq!(e.exit(), Exit::NoInput);
    }

    #[test]
    fn dev_null_reads_as_empty() {
        assert_eq!(read_text(Path::new("/dev/null"), TINY).unwrap(), "");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let e = read_bytes(Path::new("/dev/zero"), TINY).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_bytes(dir.path(), TINY).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert_eq!(e.exit(), Exit::NoInput);
    }

    #[test]
    fn a_missing_file_is_no_input() {
        let e = read_bytes(Path::new("/nonexistent/numapin"), TINY).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.exit(), Exit::NoInput);
    }

    #[test]
    fn invalid_utf8_gives_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"ab\xffc").unwrap();
        let e = read_text(&path, TINY).unwrap_err();
        assert!(e.to_string().contains("invalid UTF-8 at byte 2"), "{e}");
        assert_eq!(read_lossy(&path, TINY).unwrap(), "ab\u{fffd}c");
    }
}
