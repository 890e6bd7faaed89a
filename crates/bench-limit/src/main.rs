//! `bench-limit`: the physical limit of writing a layer, for `make bench`.
//!
//! Reads files, writes them as a tar stream, hashes the tar (the diffID), gzips it with the
//! same library, backend and level as ext-extend (flate2 + zlib-rs, level 1 by default),
//! hashes the gzip stream (the digest) and writes it to a file (fsynced, as ext-extend's
//! `LayerWriter` does) or discards it. Nothing else: no Dockerfile, no image, no index.
//!
//! `--threads 1` is the same pipeline as `ext_oci::LayerWriter` (one thread).
//! `--threads N` (N >= 2) is what N cores could do: the tar stream is cut into chunks that N
//! threads deflate independently (pigz-style, each chunk ends with a sync flush), and the
//! chunks are written in order between one gzip header and trailer: still one valid gzip
//! member.
//!
//! The bench harness also uses it to write the generated base image's layers.
//!
//! ```text
//! bench-limit [--threads N] [--level L] [--out FILE|-] [--no-fsync] [--chunk-kib K]
//!             [--dir SRC:DEST]... [--file SRC:DEST]... [--whiteout DEST]...
//! ```
//! Prints one JSON object: diff_id, digest, size, uncompressed_size, entries, file_bytes,
//! seconds (measured inside, from the first read to the fsync).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use flate2::{Compress, Compression, Crc, FlushCompress, GzBuilder, Status};
use sha2::{Digest as _, Sha256};

/// The time ext-extend writes into every layer entry (CNB normalized time).
const NORMALIZED_MTIME: u64 = 315_532_801;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    /// A tree: its contents go under `dest` (image path, no leading `/`).
    Dir {
        src: PathBuf,
        dest: String,
    },
    File {
        src: PathBuf,
        dest: String,
    },
    Whiteout {
        dest: String,
    },
}

#[derive(Debug, Clone)]
struct Options {
    threads: usize,
    level: u32,
    out: Option<PathBuf>,
    fsync: bool,
    chunk: usize,
    inputs: Vec<Input>,
}

impl Default for Options {
    fn default() -> Self {
        Options { threads: 1, level: 1, out: None, fsync: true, chunk: 1024 * 1024, inputs: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    diff_id: String,
    digest: String,
    size: u64,
    uncompressed_size: u64,
    entries: u64,
    file_bytes: u64,
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("bench-limit: {msg}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    match run(&opts) {
        Ok(s) => println!(
            "{{\"diff_id\":\"{}\",\"digest\":\"{}\",\"size\":{},\"uncompressed_size\":{},\"entries\":{},\"file_bytes\":{},\"threads\":{},\"level\":{},\"seconds\":{:.6}}}",
            s.diff_id,
            s.digest,
            s.size,
            s.uncompressed_size,
            s.entries,
            s.file_bytes,
            opts.threads,
            opts.level,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("bench-limit: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.peekable();
    let split = |v: &str| -> Result<(PathBuf, String), String> {
        let (src, dest) = v.rsplit_once(':').ok_or_else(|| format!("`{v}`: expected SRC:DEST"))?;
        Ok((PathBuf::from(src), dest.trim_matches('/').to_string()))
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--threads" => o.threads = value()?.parse().map_err(|_| "--threads: a number")?,
            "--level" => o.level = value()?.parse().map_err(|_| "--level: 0-9")?,
            "--chunk-kib" => o.chunk = value()?.parse::<usize>().map_err(|_| "--chunk-kib: a number")? * 1024,
            "--out" => {
                let v = value()?;
                o.out = if v == "-" { None } else { Some(PathBuf::from(v)) };
            }
            "--no-fsync" => o.fsync = false,
            "--dir" => {
                let (src, dest) = split(&value()?)?;
                o.inputs.push(Input::Dir { src, dest });
            }
            "--file" => {
                let (src, dest) = split(&value()?)?;
                o.inputs.push(Input::File { src, dest });
            }
            "--whiteout" => o.inputs.push(Input::Whiteout { dest: value()?.trim_matches('/').to_string() }),
            "-h" | "--help" => {
                return Err("usage: bench-limit [--threads N] [--level L] [--out FILE|-] [--no-fsync] \
                            [--chunk-kib K] [--dir SRC:DEST]... [--file SRC:DEST]... [--whiteout DEST]..."
                    .into());
            }
            _ => return Err(format!("unknown argument `{a}`")),
        }
    }
    if o.level > 9 {
        return Err("--level: 0-9".into());
    }
    if o.chunk < 64 * 1024 {
        return Err("--chunk-kib: at least 64".into());
    }
    Ok(o)
}

fn run(opts: &Options) -> io::Result<Summary> {
    let file = match &opts.out {
        Some(p) => Some(File::create(p)?),
        None => None,
    };
    let sink: Box<dyn Write + Send> = match &file {
        Some(f) => Box::new(BufWriter::with_capacity(256 * 1024, f.try_clone()?)),
        None => Box::new(io::sink()),
    };
    let summary = if opts.threads <= 1 { single(opts, sink)? } else { parallel(opts, sink)? };
    if let (Some(f), true) = (&file, opts.fsync) {
        f.sync_all()?;
    }
    Ok(summary)
}

/// Hashes and counts what passes through (as ext-oci's `HashingWriter`).
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing { inner, hasher: Sha256::new(), count: 0 }
    }
    fn finish(self) -> (String, u64, W) {
        (format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One thread: tar -> sha256 -> gzip -> sha256 -> file, as `ext_oci::LayerWriter` does.
fn single(opts: &Options, sink: Box<dyn Write + Send>) -> io::Result<Summary> {
    let gz = GzBuilder::new().mtime(0).operating_system(255).write(Hashing::new(sink), Compression::new(opts.level));
    let mut tar = tar::Builder::new(Hashing::new(gz));
    let (entries, file_bytes) = write_entries(&mut tar, &opts.inputs)?;
    tar.finish()?;
    let (diff_id, uncompressed_size, gz) = tar.into_inner()?.finish();
    let (digest, size, mut out) = gz.finish()?.finish();
    out.flush()?;
    Ok(Summary { diff_id, digest, size, uncompressed_size, entries, file_bytes })
}

/// The tar stream cut into chunks for the compressor threads; hashes the whole stream.
struct Chunker {
    hasher: Sha256,
    count: u64,
    buf: Vec<u8>,
    chunk: usize,
    seq: u64,
    tx: mpsc::SyncSender<(u64, Vec<u8>)>,
}

impl Chunker {
    fn send(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx.send((self.seq, full)).map_err(|_| io::Error::other("compressor thread ended"))?;
        self.seq += 1;
        Ok(())
    }
}

impl Write for Chunker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Deflates one chunk as raw deflate ending in a sync flush (byte aligned, not final), so
/// chunks can be concatenated; returns the compressed bytes and the chunk's CRC.
fn deflate_chunk(level: u32, data: &[u8]) -> io::Result<(Vec<u8>, Crc)> {
    let mut crc = Crc::new();
    crc.update(data);
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync).map_err(io::Error::other)?;
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        if status == Status::BufError || out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
    }
    Ok((out, crc))
}

/// The gzip header flate2's `GzBuilder` writes with `mtime(0)` and `operating_system(255)`.
fn gzip_header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9.. => 2,
        0 | 1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// N compressor threads; the calling thread reads and tars, a writer thread orders the chunks.
fn parallel(opts: &Options, sink: Box<dyn Write + Send>) -> io::Result<Summary> {
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(opts.threads * 2);
    let work_rx = std::sync::Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<io::Result<(u64, Vec<u8>, Crc)>>(opts.threads * 2);
    std::thread::scope(|s| {
        for _ in 0..opts.threads {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            let level = opts.level;
            s.spawn(move || {
                loop {
                    let next = work_rx.lock().expect("no panics while holding it").recv();
                    let Ok((seq, data)) = next else { break };
                    let r = deflate_chunk(level, &data).map(|(out, crc)| (seq, out, crc));
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let level = opts.level;
        let writer = s.spawn(move || -> io::Result<(String, u64, Crc)> {
            let mut out = Hashing::new(sink);
            out.write_all(&gzip_header(level))?;
            let mut pending: BTreeMap<u64, (Vec<u8>, Crc)> = BTreeMap::new();
            let mut next = 0u64;
            let mut crc = Crc::new();
            for r in done_rx {
                let (seq, data, c) = r?;
                pending.insert(seq, (data, c));
                while let Some((data, c)) = pending.remove(&next) {
                    out.write_all(&data)?;
                    crc.combine(&c);
                    next += 1;
                }
            }
            if !pending.is_empty() {
                return Err(io::Error::other("a chunk went missing"));
            }
            // A final empty fixed-Huffman block ends the deflate stream.
            out.write_all(&[0x03, 0x00])?;
            out.write_all(&crc.sum().to_le_bytes())?;
            out.write_all(&crc.amount().to_le_bytes())?;
            out.flush()?;
            let (digest, size, _) = out.finish();
            Ok((digest, size, crc))
        });
        let chunker = Chunker {
            hasher: Sha256::new(),
            count: 0,
            buf: Vec::with_capacity(opts.chunk),
            chunk: opts.chunk,
            seq: 0,
            tx: work_tx,
        };
        let mut tar = tar::Builder::new(chunker);
        let produced = (|| {
            let (entries, file_bytes) = write_entries(&mut tar, &opts.inputs)?;
            tar.finish()?;
            let mut chunker = tar.into_inner()?;
            if !chunker.buf.is_empty() {
                chunker.send()?;
            }
            Ok::<_, io::Error>((entries, file_bytes, chunker))
        })();
        // Dropping the chunker (and its sender) lets the threads finish.
        let (entries, file_bytes, chunker) = match produced {
            Ok(p) => p,
            Err(e) => {
                // The chunker and its sender are gone: the threads drain and end.
                let _ = writer.join();
                return Err(e);
            }
        };
        let Chunker { hasher, count, tx, .. } = chunker;
        drop(tx);
        let (digest, size, crc) = writer.join().map_err(|_| io::Error::other("writer thread panicked"))??;
        debug_assert_eq!(u64::from(crc.amount()), count & 0xffff_ffff);
        Ok(Summary {
            diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
            digest,
            size,
            uncompressed_size: count,
            entries,
            file_bytes,
        })
    })
}

/// Writes every input as tar entries with ext-extend's header normalization (GNU headers,
/// no user/group names, the CNB mtime); mode and owner come from the disk. Returns the entry
/// count and the bytes of file contents.
fn write_entries<W: Write>(tar: &mut tar::Builder<W>, inputs: &[Input]) -> io::Result<(u64, u64)> {
    let mut w = EntryWriter { tar, dirs: HashSet::new(), links: HashMap::new(), entries: 0, bytes: 0 };
    for input in inputs {
        match input {
            Input::Dir { src, dest } => {
                w.parents(dest)?;
                let walk = walkdir::WalkDir::new(src).follow_links(false).sort_by_file_name();
                for item in walk {
                    let item = item.map_err(io::Error::other)?;
                    let rel = item.path().strip_prefix(src).map_err(io::Error::other)?;
                    let rel = rel.to_str().ok_or_else(|| io::Error::other("path is not UTF-8"))?;
                    let path = match (dest.is_empty(), rel.is_empty()) {
                        (_, true) => dest.clone(),
                        (true, false) => rel.to_string(),
                        (false, false) => format!("{dest}/{rel}"),
                    };
                    if path.is_empty() {
                        continue;
                    }
                    w.node(item.path(), &path)?;
                }
            }
            Input::File { src, dest } => {
                w.parents(dest)?;
                w.node(src, dest)?;
            }
            Input::Whiteout { dest } => {
                w.parents(dest)?;
                let (dir, name) = dest.rsplit_once('/').unwrap_or(("", dest));
                let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
                let mut h = header(tar::EntryType::Regular, 0, 0, 0);
                w.tar.append_data(&mut h, wh, io::empty())?;
                w.entries += 1;
            }
        }
    }
    Ok((w.entries, w.bytes))
}

struct EntryWriter<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    dirs: HashSet<String>,
    links: HashMap<(u64, u64), String>,
    entries: u64,
    bytes: u64,
}

impl<W: Write> EntryWriter<'_, W> {
    /// The directories above `path`, each once, as 0755 root-owned entries.
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if self.dirs.insert(dir.to_string()) {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, 0);
                self.tar.append_data(&mut h, dir, io::empty())?;
                self.entries += 1;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn node(&mut self, disk: &Path, path: &str) -> io::Result<()> {
        let md = std::fs::symlink_metadata(disk)?;
        let ft = md.file_type();
        let (mode, uid, gid) = (md.mode() & 0o7777, u64::from(md.uid()), u64::from(md.gid()));
        if ft.is_dir() {
            if self.dirs.insert(path.to_string()) {
                let mut h = header(tar::EntryType::Directory, mode, uid, gid);
                self.tar.append_data(&mut h, path, io::empty())?;
                self.entries += 1;
            }
            return Ok(());
        }
        self.entries += 1;
        if ft.is_symlink() {
            let target = std::fs::read_link(disk)?;
            let mut h = header(tar::EntryType::Symlink, mode, uid, gid);
            return self.tar.append_link(&mut h, path, target);
        }
        if !ft.is_file() {
            return Err(io::Error::other(format!("{}: only files, dirs and symlinks", disk.display())));
        }
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                let mut h = header(tar::EntryType::Link, mode, uid, gid);
                let first = first.clone();
                return self.tar.append_link(&mut h, path, first);
            }
            self.links.insert((md.dev(), md.ino()), path.to_string());
        }
        let mut f = File::open(disk)?;
        let mut h = header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(md.size());
        self.tar.append_data(&mut h, path, &mut f)?;
        self.bytes += md.size();
        Ok(())
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(NORMALIZED_MTIME);
    h.set_size(0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        // Compressible and incompressible data, more than a few chunks of 64 KiB.
        let text: Vec<u8> = (0..400_000u32).flat_map(|i| format!("line {i} of text\n").into_bytes()).collect();
        std::fs::write(root.join("a/text.txt"), &text).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(root.join("a/b/noise.bin"), &noise).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a/text.txt", root.join("link")).unwrap();
        std::fs::hard_link(root.join("empty"), root.join("hard")).unwrap();
        d
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap()).read_to_end(&mut out).unwrap();
        out
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn parallel_output_is_the_same_tar_as_single() {
        let src = tree();
        let out = tempfile::tempdir().unwrap();
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let opts = Options {
                threads,
                chunk: 64 * 1024,
                out: Some(out.path().join(format!("t{threads}.tar.gz"))),
                inputs: vec![
                    Input::Dir { src: src.path().to_path_buf(), dest: "opt/ctx".into() },
                    Input::File { src: src.path().join("a/text.txt"), dest: "etc/copy.txt".into() },
                    Input::Whiteout { dest: "etc/gone".into() },
                ],
                ..Options::default()
            };
            let s = run(&opts).unwrap();
            let file = opts.out.as_ref().unwrap();
            let bytes = std::fs::read(file).unwrap();
            assert_eq!(sha(&bytes), s.digest, "digest of the file, threads={threads}");
            assert_eq!(bytes.len() as u64, s.size);
            let tar_bytes = gunzip(file);
            assert_eq!(sha(&tar_bytes), s.diff_id, "diffID of the decompressed tar, threads={threads}");
            assert_eq!(tar_bytes.len() as u64, s.uncompressed_size);
            results.push(s);
        }
        assert!(results.iter().all(|s| s.diff_id == results[0].diff_id && s.entries == results[0].entries));
        let text_len = std::fs::metadata(src.path().join("a/text.txt")).unwrap().len();
        assert_eq!(results[0].file_bytes, text_len * 2 + 300_000);
        // Every thread count gives the same gzip header as flate2 (level 1: xfl 4).
        for t in ["t1", "t2", "t3"] {
            let bytes = std::fs::read(out.path().join(format!("{t}.tar.gz"))).unwrap();
            assert_eq!(&bytes[..10], &gzip_header(1)[..], "{t}");
        }

        let tar_bytes = gunzip(&out.path().join("t2.tar.gz"));
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), NORMALIZED_MTIME);
            names.push((e.path().unwrap().to_string_lossy().into_owned(), e.header().entry_type()));
        }
        let find = |n: &str| names.iter().find(|(p, _)| p == n).map(|(_, t)| *t);
        assert_eq!(find("opt"), Some(tar::EntryType::Directory));
        assert_eq!(find("opt/ctx/link"), Some(tar::EntryType::Symlink));
        assert_eq!(find("opt/ctx/hard"), Some(tar::EntryType::Link));
        assert_eq!(find("etc/.wh.gone"), Some(tar::EntryType::Regular));
        assert_eq!(find("opt/ctx/a/b/noise.bin"), Some(tar::EntryType::Regular));
    }

    #[test]
    fn single_thread_matches_ext_extend_gzip_framing() {
        // Same GzBuilder settings as ext_oci::LayerWriter: header bytes are fixed.
        let src = tree();
        let out = tempfile::tempdir().unwrap();
        let opts = Options {
            out: Some(out.path().join("l.tar.gz")),
            inputs: vec![Input::Dir { src: src.path().join("a"), dest: String::new() }],
            ..Options::default()
        };
        run(&opts).unwrap();
        let bytes = std::fs::read(opts.out.unwrap()).unwrap();
        assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255][..]);
    }

    #[test]
    fn arguments() {
        let o = parse_args(
            ["--threads", "2", "--level", "6", "--out", "-", "--dir", "/x:/opt/y/", "--whiteout", "/etc/z"]
                .into_iter()
                .map(String::from),
        )
        .unwrap();
        assert_eq!(o.threads, 2);
        assert_eq!(o.level, 6);
        assert_eq!(o.out, None);
        assert_eq!(o.inputs[0], Input::Dir { src: "/x".into(), dest: "opt/y".into() });
        assert_eq!(o.inputs[1], Input::Whiteout { dest: "etc/z".into() });
        assert!(parse_args(["--bogus"].into_iter().map(String::from)).is_err());
        assert!(parse_args(["--level", "12"].into_iter().map(String::from)).is_err());
    }
}
