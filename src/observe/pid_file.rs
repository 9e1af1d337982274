//! The QEMU process of a running libvirt domain.
//!
//! libvirtd writes the pid to `run/libvirt/qemu/NAME.pid` (without a trailing
//! newline) when it starts the domain and removes it when the domain stops.

use std::path::Path;

use super::ObserveError;
use super::files::{bad, read_volatile};

const PID_DIR: &str = "run/libvirt/qemu";

/// QEMU's pid for `domain`. `Gone` when the pid file or the process is
/// missing, so a domain that stopped reads the same as one stopping.
pub fn read(root: &Path, domain: &str) -> Result<u32, ObserveError> {
    // libvirt refuses `/` in names; checking keeps a name from leaving PID_DIR.
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(ObserveError::BadDomainName {
            name: domain.to_string(),
        });
    }
    let path = root.join(PID_DIR).join(format!("{domain}.pid"));
    let text = read_volatile(&path)?;
    let pid = parse(&path, &text)?;
    let proc_dir = root.join("proc").join(pid.to_string());
    if !proc_dir.is_dir() {
        return Err(ObserveError::Gone { path: proc_dir });
    }
    Ok(pid)
}

/// The pid in a pid file's text; `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<u32, ObserveError> {
    text.trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| bad(path, text, "a process id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_with_or_without_newline() {
        let p = Path::new("x.pid");
        assert_eq!(parse(p, "31890").unwrap(), 31890);
        assert_eq!(parse(p, "31890\n").unwrap(), 31890);
        assert!(parse(p, "").is_err());
        assert!(parse(p, "0").is_err());
        assert!(parse(p, "-5").is_err());
        assert!(parse(p, "12 13").is_err());
    }

    #[test]
    fn names_that_would_leave_the_pid_directory_are_refused() {
        for name in ["", "../etc/passwd", "a/b", ".hidden"] {
            let e = read(Path::new("/nonexistent"), name).unwrap_err();
            assert!(
                matches!(e, ObserveError::BadDomainName { .. }),
                "{name}: {e}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = parse(Path::new("x.pid"), &text);
        }
    }
}
