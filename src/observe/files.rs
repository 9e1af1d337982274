//! File reading and error building shared by the observe readers.

use std::io;
use std::path::Path;

use super::ObserveError;
use crate::idset::MAX_ID;
use crate::input::{self, InputError};

/// Longest excerpt of a bad file quoted in an error.
const QUOTE_LIMIT: usize = 80;

/// Reads a host-wide file (`proc/stat`, a node's `numastat`), a regular
/// file under the procfs cap ([`crate::input`]). Invalid bytes become
/// U+FFFD and fail parsing instead of panicking.
pub(super) fn read_text(path: &Path) -> Result<String, ObserveError> {
    read_capped(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A regular file of at most the procfs cap. An I/O error stays one, so
/// that a vanished process is still told apart.
pub(super) fn read_capped(path: &Path) -> Result<Vec<u8>, ObserveError> {
    input::read_bytes(path, input::PROCFS).map_err(|e| match e {
        InputError::Io { path, source } => ObserveError::Io { path, source },
        e => ObserveError::Input(e),
    })
}

/// Reads a file that disappears with its process or domain: not found or
/// ESRCH (a task exiting while its file is open) become `Gone`.
pub(super) fn read_volatile(path: &Path) -> Result<String, ObserveError> {
    read_text(path).map_err(gone_if_vanished)
}

/// Turns the I/O errors a stopping process causes into `Gone`.
fn gone_if_vanished(e: ObserveError) -> ObserveError {
    match e {
        ObserveError::Io { path, source } if vanished(&source) => ObserveError::Gone { path },
        e => e,
    }
}

pub(super) fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

pub(super) fn bad(path: &Path, content: &str, expected: &'static str) -> ObserveError {
    let content = content.trim();
    let content = match content.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &content[..cut]),
        None => content.to_string(),
    };
    ObserveError::BadContent {
        path: path.to_path_buf(),
        content,
        expected,
    }
}

/// Parses `N<node>=<value>`; `None` when the word is not a node entry at all.
pub(super) fn node_entry(word: &str) -> Option<Result<(u32, u64), ()>> {
    let (key, value) = word.split_once('=')?;
    let node = key.strip_prefix('N')?;
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Node ids are capped as in every reader, so one bad line cannot make
    // the id sets built from them large.
    Some(match (node.parse::<u32>(), value.parse()) {
        (Ok(n), Ok(v)) if n <= MAX_ID => Ok((n, v)),
        _ => Err(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_entries() {
        assert_eq!(node_entry("N0=12"), Some(Ok((0, 12))));
        assert_eq!(node_entry("N17=0"), Some(Ok((17, 0))));
        assert_eq!(node_entry("N0=-1"), Some(Err(())));
        assert_eq!(node_entry("N99999999999=1"), Some(Err(())));
        assert_eq!(node_entry("N65535=1"), Some(Ok((65535, 1))));
        assert_eq!(node_entry("N65536=1"), Some(Err(())));
        assert_eq!(node_entry("N=1"), None);
        assert_eq!(node_entry("Nx=1"), None);
        assert_eq!(node_entry("anon=1"), None);
        assert_eq!(node_entry("N0"), None);
    }

    #[test]
    fn long_content_is_cut() {
        let e = bad(Path::new("f"), &"x".repeat(200), "short");
        let ObserveError::BadContent { content, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(content.len(), QUOTE_LIMIT + 3);
    }
}
