//! SHA-256 digests, and readers/writers that compute them while data streams through, so a blob
//! is hashed in the same pass that reads or writes it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::OciError;

/// A `sha256:<hex>` content digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The 64 hex digits, as used in blob file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Short form for logs: `sha256:0123456789ab`.
    pub fn short(&self) -> &str {
        &self.0[..("sha256:".len() + 12)]
    }
}

impl FromStr for Digest {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| OciError::BadDigest(s.into()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(OciError::BadDigest(s.into()));
        }
        Ok(Digest(s.into()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Deserializing checks the form, as parsing does.
impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        d.0.parse().expect("a Digest is always a valid sha256 digest")
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = OciError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, OciError> {
        d.to_string().parse()
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The digest and size of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_hasher(self.hasher), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that verifies a blob against its descriptor while it is read: at end of stream the
/// size and digest must match, or reading fails with `InvalidData` (never silently).
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    expected_size: Option<u64>,
    verified: bool,
    /// Checks an uncompressed layer against its diffID (reported as [`BlobCheckFailure::DiffId`]).
    diff_id: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected,
            expected_size,
            verified: false,
            diff_id: false,
        }
    }

    /// Verifies a decompressed layer stream against the diffID the image config lists for it.
    pub fn diff_id(inner: R, diff_id: Digest) -> Self {
        VerifyingReader { diff_id: true, ..VerifyingReader::new(inner, diff_id, None) }
    }

    /// Reads to the end (so the check runs even if the consumer stopped early, e.g. at the tar
    /// end-of-archive blocks) and reports a mismatch.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(())
    }

    fn check(&mut self) -> io::Result<()> {
        if self.verified {
            return Ok(());
        }
        self.verified = true;
        if let Some(size) = self.expected_size
            && size != self.read
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BlobCheckFailure::Size { expected: size, actual: self.read },
            ));
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            let failure = if self.diff_id {
                BlobCheckFailure::DiffId { expected: self.expected.clone(), actual }
            } else {
                BlobCheckFailure::Digest { actual }
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, failure));
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.check()?;
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if let Some(size) = self.expected_size
            && self.read > size
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BlobCheckFailure::Size { expected: size, actual: self.read },
            ));
        }
        Ok(n)
    }
}

/// Why a [`VerifyingReader`] failed; carried inside the `io::Error` so callers can turn it into
/// an [`OciError`] that names the blob.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobCheckFailure {
    #[error("content hashes to {actual}")]
    Digest { actual: Digest },
    #[error("has {actual} bytes, descriptor says {expected}")]
    Size { expected: u64, actual: u64 },
    /// The decompressed layer does not hash to the diffID its image config lists.
    #[error("its uncompressed content hashes to {actual}, but the image config lists diff_id {expected}")]
    DiffId { expected: Digest, actual: Digest },
}

impl BlobCheckFailure {
    /// Finds a check failure inside an I/O error chain (e.g. wrapped by the gzip decoder).
    pub fn find(e: &io::Error) -> Option<&BlobCheckFailure> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<BlobCheckFailure>())
    }

    /// Finds a check failure anywhere in an error's source chain (an I/O error wrapped in
    /// unpacking or tar errors).
    pub fn find_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BlobCheckFailure> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(f) = err.downcast_ref::<BlobCheckFailure>() {
                return Some(f);
            }
            if let Some(io) = err.downcast_ref::<io::Error>()
                && let Some(f) = BlobCheckFailure::find(io)
            {
                return Some(f);
            }
            cur = err.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_and_format() {
        let d = Digest::of(b"hello");
        assert_eq!(d.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!("sha256:xyz".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64)).parse::<Digest>().is_err());
    }

    #[test]
    fn verifying_reader_accepts_good_and_rejects_bad_blobs() {
        let data = b"some blob".to_vec();
        let good = Digest::of(&data);
        let mut out = Vec::new();
        VerifyingReader::new(&data[..], good.clone(), Some(data.len() as u64)).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let bad = Digest::of(b"other");
        let err = VerifyingReader::new(&data[..], bad, None).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(matches!(BlobCheckFailure::find(&err), Some(BlobCheckFailure::Digest { actual }) if *actual == good));

        let err = VerifyingReader::new(&data[..], good.clone(), Some(3)).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(matches!(BlobCheckFailure::find(&err), Some(BlobCheckFailure::Size { expected: 3, .. })));

        let err = VerifyingReader::new(&data[..], good, Some(100)).finish().unwrap_err();
        assert!(matches!(BlobCheckFailure::find(&err), Some(BlobCheckFailure::Size { expected: 100, actual: 9 })));
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        let (d, n, inner) = w.finish();
        assert_eq!((d, n, inner), (Digest::of(b"hello"), 5, b"hello".to_vec()));
    }
}
