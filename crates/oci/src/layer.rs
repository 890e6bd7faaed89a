//! Writing and reading layer blobs.
//!
//! [`LayerWriter`] streams tar entries through gzip or zstd ([`Compression`]) to a file and
//! computes the diffID (sha256 of the tar) and the digest (sha256 of the blob) in the same pass. Headers are normalized for
//! reproducible digests: GNU format, empty uname/gname, mtimes from a [`MtimePolicy`], entries
//! in the order the caller gives (callers sort).

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use crate::compression::Compressor;
pub use crate::compression::{Compression, decompress, decompress_verified};
use crate::digest::{Digest, HashingWriter};
use crate::pgzip::ParallelGzWriter;

/// 1980-01-01T00:00:01Z: the time the CNB lifecycle gives every file of the layers it writes.
pub const NORMALIZED_MTIME: u64 = 315_532_801;

/// How file times are written into layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtimePolicy {
    /// Every entry gets this time.
    Fixed(u64),
    /// Times newer than this are clamped to it (`SOURCE_DATE_EPOCH`).
    Clamp(u64),
}

impl MtimePolicy {
    /// `SOURCE_DATE_EPOCH` if set (clamp), else the CNB normalized time.
    pub fn from_env() -> Result<MtimePolicy, String> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<u64>()
                .map(MtimePolicy::Clamp)
                .map_err(|_| format!("SOURCE_DATE_EPOCH={v}: expected seconds since 1970")),
            _ => Ok(MtimePolicy::Fixed(NORMALIZED_MTIME)),
        }
    }

    pub fn apply(&self, mtime: u64) -> u64 {
        match *self {
            MtimePolicy::Fixed(t) => t,
            MtimePolicy::Clamp(t) => mtime.min(t),
        }
    }

    /// The time recorded as `created` in configs and history.
    pub fn created_seconds(&self) -> u64 {
        match *self {
            MtimePolicy::Fixed(t) | MtimePolicy::Clamp(t) => t,
        }
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`1980-01-01T00:00:01Z`), as configs record `created`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// gzip or zstd, and the level. The default is gzip at [`crate::compression::DEFAULT_GZIP_LEVEL`]
    /// (README, "Layer compression", has the measurements it was chosen by).
    pub compression: Compression,
    pub mtime: MtimePolicy,
    /// Compression threads (the output does not depend on it; see [`crate::pgzip`]).
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::default(),
            mtime: MtimePolicy::Fixed(NORMALIZED_MTIME),
            threads: ParallelGzWriter::<std::io::Sink>::default_threads(),
        }
    }
}

/// Metadata of one tar entry. `path` is relative to the image root, without a leading `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub path: String,
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds; the writer's [`MtimePolicy`] is applied to it. [`BUILD_TIME`] for an entry
    /// the build makes itself (a missing parent, a here-document, a whiteout).
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The mtime of an entry the build makes itself: it was made "now", so every policy gives it
/// the policy's own time (the CNB normalized time, or `SOURCE_DATE_EPOCH` when clamping), the
/// same rule as for a file a RUN has just written.
pub const BUILD_TIME: u64 = u64::MAX;

impl EntryMeta {
    /// An entry the build makes (mtime [`BUILD_TIME`]).
    pub fn new(path: impl Into<String>, mode: u32) -> Self {
        EntryMeta { path: path.into(), mode, uid: 0, gid: 0, mtime: BUILD_TIME, xattrs: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    Fifo,
}

/// A finished layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    pub uncompressed_size: u64,
    pub media_type: &'static str,
    /// Where the blob file is (named by its digest's hex in the writer's directory).
    pub path: PathBuf,
    pub entries: u64,
}

type Sink = HashingWriter<Compressor<HashingWriter<BufWriter<File>>>>;

/// Streams tar entries into a compressed layer blob.
pub struct LayerWriter {
    tar: tar::Builder<Sink>,
    dir: PathBuf,
    tmp: Option<tempfile::TempPath>,
    opts: LayerOptions,
    entries: u64,
}

impl LayerWriter {
    /// Starts a layer whose blob will land in `dir` (a `blobs/sha256`-style directory).
    pub fn create(dir: &Path, opts: LayerOptions) -> io::Result<LayerWriter> {
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::Builder::new().prefix(".layer-").tempfile_in(dir)?;
        let (file, path) = tmp.into_parts();
        let compressor =
            opts.compression.writer(HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)), opts.threads)?;
        let mut tar = tar::Builder::new(HashingWriter::new(compressor));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(LayerWriter { tar, dir: dir.to_path_buf(), tmp: Some(path), opts, entries: 0 })
    }

    fn header(&mut self, meta: &EntryMeta, kind: tar::EntryType) -> io::Result<tar::Header> {
        if !meta.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> =
                meta.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice())).collect();
            self.tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(self.opts.mtime.apply(meta.mtime));
        h.set_size(0);
        self.entries += 1;
        Ok(h)
    }

    pub fn append_dir(&mut self, meta: &EntryMeta) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Directory)?;
        self.tar.append_data(&mut h, tar_path(&meta.path), io::empty())
    }

    /// Appends a regular file of exactly `size` bytes read from `data`; a short read (the file
    /// shrank while we read it) is an error rather than a corrupt archive.
    pub fn append_file(&mut self, meta: &EntryMeta, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Regular)?;
        h.set_size(size);
        let mut exact = ExactReader { inner: data.take(size), remaining: size };
        self.tar.append_data(&mut h, tar_path(&meta.path), &mut exact)
    }

    pub fn append_symlink(&mut self, meta: &EntryMeta, target: &str) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Symlink)?;
        self.tar.append_link(&mut h, tar_path(&meta.path), target)
    }

    /// A hard link to `target`, an earlier entry of this layer or a file of a lower layer.
    pub fn append_hardlink(&mut self, meta: &EntryMeta, target: &str) -> io::Result<()> {
        let mut h = self.header(meta, tar::EntryType::Link)?;
        self.tar.append_link(&mut h, tar_path(&meta.path), tar_path(target))
    }

    pub fn append_device(&mut self, meta: &EntryMeta, kind: DeviceKind, major: u32, minor: u32) -> io::Result<()> {
        let entry_type = match kind {
            DeviceKind::Char => tar::EntryType::Char,
            DeviceKind::Block => tar::EntryType::Block,
            DeviceKind::Fifo => tar::EntryType::Fifo,
        };
        let mut h = self.header(meta, entry_type)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.tar.append_data(&mut h, tar_path(&meta.path), io::empty())
    }

    /// Marks `path` deleted (OCI whiteout `.wh.<name>`).
    pub fn append_whiteout(&mut self, path: &str) -> io::Result<()> {
        let (dir, name) = split_parent(path);
        let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
        let mut h = self.header(&EntryMeta::new(wh.clone(), 0), tar::EntryType::Regular)?;
        self.tar.append_data(&mut h, wh, io::empty())
    }

    /// Marks directory `dir` opaque: lower layers' children are hidden.
    pub fn append_opaque(&mut self, dir: &str) -> io::Result<()> {
        let dir = dir.trim_matches('/');
        let wh = if dir.is_empty() { ".wh..wh..opq".to_string() } else { format!("{dir}/.wh..wh..opq") };
        let mut h = self.header(&EntryMeta::new(wh.clone(), 0), tar::EntryType::Regular)?;
        self.tar.append_data(&mut h, wh, io::empty())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the end-of-archive blocks, ends the compressed stream, syncs, and names the blob
    /// by digest.
    pub fn finish(mut self) -> io::Result<LayerBlob> {
        self.tar.finish()?;
        let tar_sink = self.tar.into_inner()?;
        let (diff_id, uncompressed_size, compressor) = tar_sink.finish();
        let (digest, size, buf) = compressor.finish()?.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = self.dir.join(digest.hex());
        self.tmp.take().expect("finish runs once").persist(&path).map_err(|e| e.error)?;
        Ok(LayerBlob {
            digest,
            diff_id,
            size,
            uncompressed_size,
            media_type: self.opts.compression.media_type(),
            path,
            entries: self.entries,
        })
    }
}

fn tar_path(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    if p.is_empty() { "." } else { p }
}

fn split_parent(path: &str) -> (&str, &str) {
    let p = path.trim_matches('/');
    match p.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", p),
    }
}

struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file shrank while being read ({} bytes missing)", self.remaining),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(dir: &Path, opts: LayerOptions, mtime: u64) -> LayerBlob {
        let mut w = LayerWriter::create(dir, opts).unwrap();
        let mut meta = EntryMeta::new("etc", 0o755);
        meta.mtime = mtime;
        w.append_dir(&meta).unwrap();
        let mut f = EntryMeta::new("etc/hello", 0o4755);
        f.uid = 1000;
        f.gid = 1000;
        f.mtime = mtime;
        f.xattrs.push(("user.test".into(), b"v".to_vec()));
        w.append_file(&f, 5, &mut &b"hello"[..]).unwrap();
        let long = format!("etc/{}", "x".repeat(150));
        w.append_symlink(&EntryMeta::new(long.clone(), 0o777), &"t".repeat(120)).unwrap();
        w.append_hardlink(&EntryMeta::new("etc/hl", 0o4755), "etc/hello").unwrap();
        w.append_device(&EntryMeta::new("dev/null", 0o666), DeviceKind::Char, 1, 3).unwrap();
        w.append_whiteout("etc/gone").unwrap();
        w.append_opaque("var").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn same_input_same_digest_and_readable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_sample(dir.path(), LayerOptions::default(), 1_700_000_000);
        let b = write_sample(dir.path(), LayerOptions::default(), 1_600_000_000);
        // Fixed policy: the source mtimes do not matter.
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        let bytes = std::fs::read(&a.path).unwrap();
        assert_eq!(Digest::of(&bytes), a.digest);
        assert_eq!(bytes.len() as u64, a.size);

        let mut tar_bytes = Vec::new();
        decompress(std::io::Cursor::new(bytes)).unwrap().read_to_end(&mut tar_bytes).unwrap();
        assert_eq!(Digest::of(&tar_bytes), a.diff_id);
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), NORMALIZED_MTIME);
            assert_eq!(h.username_bytes().unwrap_or_default(), b"");
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == "etc/hello" {
                assert_eq!(h.mode().unwrap(), 0o4755);
                assert_eq!(h.uid().unwrap(), 1000);
                let pax: Vec<_> =
                    e.pax_extensions().unwrap().unwrap().map(|x| x.unwrap().key().unwrap().to_string()).collect();
                assert_eq!(pax, vec!["SCHILY.xattr.user.test"]);
            }
            seen.push(path);
        }
        assert_eq!(seen[0], "etc");
        assert!(seen.iter().any(|p| p.len() > 150), "long name kept: {seen:?}");
        assert!(seen.contains(&"etc/.wh.gone".to_string()));
        assert!(seen.contains(&"var/.wh..wh..opq".to_string()));
    }

    #[test]
    fn clamp_policy_keeps_older_times() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_sample(
            dir.path(),
            LayerOptions { mtime: MtimePolicy::Clamp(1_650_000_000), ..Default::default() },
            1_600_000_000,
        );
        let new = write_sample(
            dir.path(),
            LayerOptions { mtime: MtimePolicy::Clamp(1_650_000_000), ..Default::default() },
            1_700_000_000,
        );
        assert_ne!(old.diff_id, new.diff_id);
        let again = write_sample(
            dir.path(),
            LayerOptions { mtime: MtimePolicy::Clamp(1_650_000_000), ..Default::default() },
            1_800_000_000,
        );
        assert_eq!(new.diff_id, again.diff_id, "both clamped to the epoch");
    }

    #[test]
    fn short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LayerWriter::create(dir.path(), LayerOptions::default()).unwrap();
        let err = w.append_file(&EntryMeta::new("f", 0o644), 10, &mut &b"abc"[..]).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(NORMALIZED_MTIME), "1980-01-01T00:00:01Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
