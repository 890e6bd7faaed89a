//! Trust roots for HTTPS registries that do not depend on the image we run in.
//!
//! The drop-in extender runs inside run images we do not choose: distroless ones often have no
//! CA bundle, and the TLS stack's own lookup of system roots fails hard when it finds none
//! (which used to break even plain-HTTP loopback registries: the client could not be built).
//! So the roots are always given explicitly:
//! 1. `SSL_CERT_FILE` and/or `SSL_CERT_DIR` (colon-separated), when set: only those;
//! 2. otherwise the system bundle, from the usual locations of Debian/Ubuntu, Alpine,
//!    RHEL/Fedora, SUSE and the distroless images;
//! 3. when that yields no usable certificate: Mozilla's roots bundled into the binary
//!    (`webpki-root-certs`).
//!
//! Certificates that cannot serve as trust anchors are skipped (one bad entry in a bundle must
//! not break every registry).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Where distributions keep their CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
const SYSTEM_DIRS: &[&str] = &["/etc/ssl/certs"];

/// The roots and where they came from.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    pub certificates: Vec<Vec<u8>>,
    pub source: String,
}

/// The process's trust roots (read once).
pub fn trust_roots() -> &'static TrustRoots {
    static ROOTS: OnceLock<TrustRoots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let env = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        let roots = select_roots(env("SSL_CERT_FILE"), env("SSL_CERT_DIR"));
        tracing::debug!("TLS trust roots: {} certificates from {}", roots.certificates.len(), roots.source);
        roots
    })
}

fn select_roots(cert_file: Option<PathBuf>, cert_dir: Option<PathBuf>) -> TrustRoots {
    let explicit = cert_file.is_some() || cert_dir.is_some();
    let (files, dirs): (Vec<PathBuf>, Vec<PathBuf>) = if explicit {
        (cert_file.into_iter().collect(), cert_dir.map(|d| std::env::split_paths(&d).collect()).unwrap_or_default())
    } else {
        (SYSTEM_BUNDLES.iter().map(PathBuf::from).collect(), SYSTEM_DIRS.iter().map(PathBuf::from).collect())
    };
    let mut certificates: Vec<Vec<u8>> = Vec::new();
    let mut sources = Vec::new();
    for f in &files {
        if add_pem_file(f, &mut certificates) > 0 {
            sources.push(f.display().to_string());
            if !explicit {
                // One system bundle is the whole set; the others are the same certificates.
                break;
            }
        }
    }
    for d in &dirs {
        let before = certificates.len();
        if let Ok(entries) = std::fs::read_dir(d) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                add_pem_file(&p, &mut certificates);
            }
        }
        if certificates.len() > before {
            sources.push(d.display().to_string());
        }
    }
    certificates.sort();
    certificates.dedup();
    if certificates.is_empty() {
        if explicit {
            tracing::warn!("SSL_CERT_FILE/SSL_CERT_DIR hold no usable certificate; using the bundled Mozilla roots");
        }
        return TrustRoots {
            certificates: webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|c| c.as_ref().to_vec()).collect(),
            source: "the bundled Mozilla roots (webpki-root-certs)".into(),
        };
    }
    TrustRoots { certificates, source: sources.join(", ") }
}

/// Where [`expose_bundled_roots`] put the bundled roots, if it did.
static EXPOSED: OnceLock<std::ffi::OsString> = OnceLock::new();

/// oci-client also builds a default HTTP client of its own (struct-update syntax in its
/// `TryFrom<ClientConfig>`), which loads the system's roots and fails where there are none.
/// Where we fall back to the bundled roots, this hands them to such clients as `SSL_CERT_FILE`
/// (which `rustls-native-certs` reads): an in-memory file, `/proc/self/fd/N`, so nothing is
/// written to the image. Child processes never see it (RUN gets a clean environment; the
/// build phase has it removed, see [`exposed_cert_file`]).
///
/// # Safety
/// Sets an environment variable: call before any other thread exists.
pub unsafe fn expose_bundled_roots() {
    // The common case, cheaply: a system bundle with certificates and no override.
    let overridden =
        ["SSL_CERT_FILE", "SSL_CERT_DIR"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    let system_bundle = || {
        SYSTEM_BUNDLES
            .iter()
            .any(|f| std::fs::read(f).is_ok_and(|b| b.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----")))
    };
    if !overridden && system_bundle() {
        return;
    }
    let roots = trust_roots();
    if !roots.source.contains("bundled") {
        return;
    }
    let mut pem = String::new();
    for der in &roots.certificates {
        pem.push_str(&pem_encode(der));
    }
    let Some(path) = in_memory_file(pem.as_bytes()).or_else(|| temp_file(pem.as_bytes())) else { return };
    // SAFETY: the caller guarantees no other thread exists yet.
    unsafe { std::env::set_var("SSL_CERT_FILE", &path) };
    let _ = EXPOSED.set(path);
}

/// `/proc/self/fd/N` of a memfd holding `data` (None where `/proc` is not mounted).
fn in_memory_file(data: &[u8]) -> Option<std::ffi::OsString> {
    // SAFETY: memfd_create and write on a buffer we own; the descriptor stays open for the
    // life of the process on purpose.
    let fd = unsafe { libc::memfd_create(c"ext-extend-trust-roots".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut written = 0;
    while written < data.len() {
        // SAFETY: as above.
        let n = unsafe { libc::write(fd, data[written..].as_ptr().cast(), data.len() - written) };
        if n <= 0 {
            return None;
        }
        written += n as usize;
    }
    let path = std::ffi::OsString::from(format!("/proc/self/fd/{fd}"));
    std::fs::metadata(&path).is_ok().then_some(path)
}

/// A file in the temporary directory holding `data`, for roots without `/proc`.
fn temp_file(data: &[u8]) -> Option<std::ffi::OsString> {
    let path = std::env::temp_dir().join(format!("ext-extend-trust-roots-{}.pem", std::process::id()));
    std::fs::write(&path, data).ok()?;
    Some(path.into_os_string())
}

/// The `SSL_CERT_FILE` value [`expose_bundled_roots`] set, which means nothing to another
/// process.
pub fn exposed_cert_file() -> Option<&'static std::ffi::OsStr> {
    EXPOSED.get().map(|p| p.as_os_str())
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Adds the usable certificates of a PEM file; returns how many.
fn add_pem_file(path: &Path, out: &mut Vec<Vec<u8>>) -> usize {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    // A bundle is a few hundred KiB; anything huge is not one.
    if !meta.is_file() || meta.len() > 16 << 20 {
        return 0;
    }
    let Ok(bytes) = std::fs::read(path) else { return 0 };
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes).flatten() {
        if webpki::anchor_from_trusted_cert(&cert).is_ok() {
            out.push(cert.as_ref().to_vec());
            added += 1;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(der: &[u8]) -> String {
        pem_encode(der)
    }

    #[test]
    fn explicit_files_and_dirs_are_honoured_and_bad_entries_skipped() {
        let d = tempfile::tempdir().unwrap();
        let real = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        let file = d.path().join("bundle.pem");
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&file, format!("# a comment\n{}{bogus}{}", pem(&real[0]), pem(&real[1]))).unwrap();
        let roots = select_roots(Some(file.clone()), None);
        assert_eq!(roots.certificates.len(), 2, "{}", roots.source);
        assert!(roots.source.contains("bundle.pem"));

        let dir = d.path().join("certs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.pem"), pem(&real[2])).unwrap();
        std::fs::write(dir.join("dup.pem"), pem(&real[0])).unwrap();
        let roots = select_roots(Some(file), Some(dir));
        assert_eq!(roots.certificates.len(), 3, "file + dir, duplicates once");
    }

    #[test]
    fn an_empty_or_missing_bundle_falls_back_to_the_bundled_roots() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.pem");
        std::fs::write(&empty, "# test certificate bundle\n").unwrap();
        for roots in [select_roots(Some(empty), None), select_roots(Some(d.path().join("missing")), None)] {
            assert!(roots.source.contains("bundled"), "{}", roots.source);
            assert_eq!(roots.certificates.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        }
    }
}
