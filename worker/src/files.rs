//! Reading the TLS material named in the configuration: errors name the file (and the uid
//! that could not read it), and unsafe permissions draw a warning (SPEC §7) each time the
//! master reads the file, at start and on every reload.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a file holds, for the permission warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Private keys and ticket keys: warn when world-readable or world-writable.
    Secret,
    /// Certificates, CAs, OCSP responses, configuration: warn when world-writable.
    Public,
}

/// Reading a file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}{}: {error}{}", path.display(), as_uid(*.uid), hint(*.uid))]
pub struct ReadError {
    pub path: PathBuf,
    /// Set when the read was refused (EACCES): the effective uid that tried.
    pub uid: Option<u32>,
    pub error: std::io::Error,
}

fn as_uid(uid: Option<u32>) -> String {
    uid.map(|u| format!(" as uid {u}")).unwrap_or_default()
}

fn hint(uid: Option<u32>) -> &'static str {
    match uid {
        Some(0) | None => "",
        Some(_) => {
            " (the master reads TLS files after dropping privileges: make the file readable \
             by that user, or set master-as-root = true)"
        }
    }
}

/// Read a whole file, warning about unsafe permissions.
pub fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, ReadError> {
    let fail = |error: std::io::Error| ReadError {
        path: path.to_path_buf(),
        uid: (error.kind() == ErrorKind::PermissionDenied).then(|| nix::unistd::geteuid().as_raw()),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    if let Ok(meta) = file.metadata() {
        warn_modes(path, meta.permissions().mode(), kind);
    }
    let mut out = Vec::new();
    file.read_to_end(&mut out).map_err(fail)?;
    Ok(out)
}

/// Warn about a world-writable file (anyone can replace a certificate or the configuration)
/// and a world-readable secret.
pub fn warn_modes(path: &Path, mode: u32, kind: FileKind) {
    if let Some(w) = mode_warning(mode, kind) {
        log::warn!("{}: {w}", path.display());
    }
}

/// Warn when the file at `path` is world-writable (for configuration files).
pub fn warn_if_world_writable(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        warn_modes(path, meta.permissions().mode(), FileKind::Public);
    }
}

fn mode_warning(mode: u32, kind: FileKind) -> Option<String> {
    let writable = mode & 0o002 != 0;
    let readable = kind == FileKind::Secret && mode & 0o004 != 0;
    let what = match (writable, readable) {
        (false, false) => return None,
        (true, false) => "is world-writable: any local user can replace it",
        (false, true) => "is a secret key and world-readable: any local user can read it",
        (true, true) => "is a secret key and world-readable and world-writable",
    };
    Some(format!("{what} (mode {:04o})", mode & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_that_warn() {
        assert_eq!(mode_warning(0o600, FileKind::Secret), None);
        assert_eq!(mode_warning(0o640, FileKind::Secret), None);
        assert!(mode_warning(0o644, FileKind::Secret)
            .expect("warns")
            .contains("world-readable"));
        assert_eq!(mode_warning(0o644, FileKind::Public), None);
        assert!(mode_warning(0o666, FileKind::Public)
            .expect("warns")
            .contains("world-writable"));
        assert!(mode_warning(0o100666, FileKind::Secret)
            .expect("warns")
            .contains("(mode 0666)"));
    }

    #[test]
    fn errors_name_the_file() {
        let err = read(Path::new("/nonexistent/x.key"), FileKind::Secret).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/x.key"), "{msg}");
        assert!(!msg.contains("as uid"), "{msg}");
    }
}
