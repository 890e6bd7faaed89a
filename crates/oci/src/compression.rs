//! How layer blobs are compressed (gzip or zstd) and decompressed (gzip, zstd or plain tar,
//! recognised by their magic bytes).
//!
//! Both writers give bytes that depend only on the input and the [`Compression`] (format and
//! level), never on the thread count, so layer digests are reproducible: gzip through
//! [`crate::pgzip`]'s fixed-size members, zstd through libzstd's multi-threaded mode, which is
//! always on (one worker or more; the single-threaded mode would write other bytes) with a fixed
//! job size.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};

use crate::digest::Digest;
use crate::media;
use crate::pgzip::ParallelGzWriter;

/// The compression of new layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip level 0-9, written as 1 MiB members compressed in parallel.
    Gzip { level: u32 },
    /// zstd level 1-19.
    Zstd { level: i32 },
}

/// The gzip level of new layers when none is given: see README, "Layer compression".
pub const DEFAULT_GZIP_LEVEL: u32 = 1;
/// The zstd level of new layers when none is given: zstd's own default.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// zstd's job size in multi-threaded mode (input bytes per job). Fixed, so that the output does
/// not depend on anything but the input and the level.
const ZSTD_JOB_SIZE: u32 = 4 << 20;

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: DEFAULT_GZIP_LEVEL }
    }
}

impl Compression {
    /// `format` is `gzip` or `zstd`; `level` defaults to the format's default.
    pub fn parse(format: &str, level: Option<i32>) -> Result<Compression, String> {
        match format {
            "gzip" => match level {
                None => Ok(Compression::Gzip { level: DEFAULT_GZIP_LEVEL }),
                Some(l @ 0..=9) => Ok(Compression::Gzip { level: l as u32 }),
                Some(l) => Err(format!("gzip compression level {l}: expected 0-9")),
            },
            "zstd" => match level {
                None => Ok(Compression::Zstd { level: DEFAULT_ZSTD_LEVEL }),
                Some(l @ 1..=19) => Ok(Compression::Zstd { level: l }),
                Some(l) => Err(format!("zstd compression level {l}: expected 1-19")),
            },
            other => Err(format!("compression {other:?}: expected gzip or zstd")),
        }
    }

    /// The OCI media type of a layer written this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => media::OCI_LAYER_GZIP,
            Compression::Zstd { .. } => media::OCI_LAYER_ZSTD,
        }
    }

    /// A compressor writing into `inner` with `threads` threads (the bytes do not depend on it).
    pub fn writer<W: Write + Send + 'static>(&self, inner: W, threads: usize) -> io::Result<Compressor<W>> {
        Ok(match *self {
            Compression::Gzip { level } => Compressor::Gzip(ParallelGzWriter::new(inner, level, threads)),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(inner, level)?;
                enc.multithread(threads.max(1) as u32)?;
                enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                // A content checksum, as the zstd CLI and containers/storage write: damage is
                // found by the decoder even where the layer digest is not checked.
                enc.include_checksum(true)?;
                Compressor::Zstd(enc)
            }
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Gzip { level } => write!(f, "gzip level {level}"),
            Compression::Zstd { level } => write!(f, "zstd level {level}"),
        }
    }
}

/// A compressing writer; [`Compressor::finish`] ends the stream and gives the inner writer back.
pub enum Compressor<W: Write> {
    Gzip(ParallelGzWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => {
                let mut inner = w.finish()?;
                inner.flush()?;
                Ok(inner)
            }
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(data),
            Compressor::Zstd(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            // Neither flush may change the output bytes: pgzip's is a no-op, and zstd's
            // would end a block early, so it is not passed on.
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(_) => Ok(()),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// A zstd skippable frame (magic 0x184D2A50-0x184D2A5F, little-endian): zstd:chunked layers
/// carry their table of contents in such frames, and libzstd's decoder skips them.
fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

/// Decompresses a layer blob stream, recognising gzip and zstd by their magic bytes rather than
/// by the media type (some registries label gzipped layers as plain tar and vice versa);
/// anything else is read as a plain tar. Multi-member gzip and multi-frame zstd are read whole.
pub fn decompress(reader: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut buf = BufReader::with_capacity(256 * 1024, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(head) {
        Ok(Box::new(ZstdReader(zstd::stream::read::Decoder::with_buffer(buf)?)))
    } else {
        Ok(Box::new(buf))
    }
}

/// [`decompress`], verifying the uncompressed stream against `diff_id` at its end (a
/// [`crate::digest::BlobCheckFailure::DiffId`] error on a mismatch). Every base layer is read
/// through this, so a config listing a wrong diffID is never copied into an output unnoticed.
pub fn decompress_verified(reader: impl Read + Send + 'static, diff_id: Digest) -> io::Result<Box<dyn Read + Send>> {
    Ok(Box::new(crate::digest::VerifyingReader::diff_id(decompress(reader)?, diff_id)))
}

/// Bytes decoded ahead of the reader, per message of the read-ahead thread.
const READ_AHEAD_CHUNK: usize = 1 << 20;
/// Chunks in flight: enough to keep the decoder busy while the reader writes files.
const READ_AHEAD_DEPTH: usize = 4;

/// Runs `reader` (a layer's whole decoding chain: blob hashing, decompression, diffID hashing)
/// on a thread of its own, [`READ_AHEAD_CHUNK`] bytes ahead of the caller, so that a cold
/// unpack decompresses and hashes on one core while it creates files on another (a layer is
/// one gzip member as most producers write it, so it cannot be inflated in parallel). The
/// caller reads exactly the bytes, and then the error, that it would have read from `reader`;
/// dropping it stops the thread at its next chunk.
pub fn read_ahead(reader: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_AHEAD_DEPTH);
    let worker = std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut chunk = vec![0u8; READ_AHEAD_CHUNK];
            let mut filled = 0;
            let result = loop {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == chunk.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(filled);
            let end = filled < READ_AHEAD_CHUNK || result.is_err();
            if filled > 0 && tx.send(Ok(chunk)).is_err() {
                return;
            }
            if let Err(e) = result {
                let _ = tx.send(Err(e));
                return;
            }
            if end {
                return;
            }
        }
    });
    Box::new(ReadAhead { rx: Some(rx), current: Vec::new(), pos: 0, worker: Some(worker) })
}

struct ReadAhead {
    rx: Option<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    current: Vec<u8>,
    pos: usize,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.rx = None;
                    return Err(e);
                }
                // The thread ended after the last chunk (or panicked: say so, never a silent EOF).
                Err(_) => {
                    self.rx = None;
                    let panicked = self.worker.take().is_some_and(|w| w.join().is_err());
                    return if panicked { Err(io::Error::other("layer read-ahead thread panicked")) } else { Ok(0) };
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail; it then returns.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// libzstd's errors name the zstd problem but not that it is zstd; say so.
struct ZstdReader<R: BufRead>(zstd::stream::read::Decoder<'static, R>);

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            // A failed digest check of the blob underneath passes through as it is, so that
            // callers can still find it (`BlobCheckFailure::find`).
            if crate::digest::BlobCheckFailure::find(&e).is_some() {
                e
            } else {
                io::Error::new(e.kind(), format!("zstd: {e}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible but not trivial data (text lines and pseudo-random bytes).
    fn data(n: usize) -> Vec<u8> {
        let mut x: u32 = 7;
        let mut out = Vec::with_capacity(n);
        let mut i = 0u64;
        while out.len() < n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if x.is_multiple_of(4) {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(format!("line {i} {}\n", x % 1000).as_bytes());
            }
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn compress(c: Compression, input: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut w = c.writer(Vec::new(), threads).unwrap();
        for piece in input.chunks(write_size) {
            w.write_all(piece).unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap()
    }

    fn round_trip(compressed: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        decompress(io::Cursor::new(compressed)).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_threads_or_write_sizes() {
        // Several jobs' worth, so that more than one worker has work.
        let input = data(3 * ZSTD_JOB_SIZE as usize + 12345);
        let c = Compression::Zstd { level: 3 };
        let one = compress(c, &input, 1, 100_000);
        assert_eq!(one, compress(c, &input, 2, 1 << 20), "1 vs 2 threads");
        assert_eq!(one, compress(c, &input, 3, 7777), "1 vs 3 threads");
        assert!(one.starts_with(&ZSTD_MAGIC));
        assert_eq!(round_trip(one.clone()), input);
        assert_ne!(one, compress(Compression::Zstd { level: 4 }, &input, 1, 1 << 20), "the level matters");
    }

    #[test]
    fn gzip_zstd_and_plain_tar_are_recognised() {
        let input = data(100_000);
        let gz = compress(Compression::Gzip { level: 1 }, &input, 2, 4096);
        assert!(gz.starts_with(&GZIP_MAGIC));
        assert_eq!(round_trip(gz), input);
        assert_eq!(round_trip(input.clone()), input);
        // Concatenated frames (as some producers write) are read whole.
        let mut two = zstd::encode_all(&input[..50_000], 1).unwrap();
        two.extend(zstd::encode_all(&input[50_000..], 19).unwrap());
        assert_eq!(round_trip(two), input);
    }

    #[test]
    fn skippable_frames_are_skipped() {
        let input = data(10_000);
        let mut blob = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, b'T', b'O', b'C'];
        blob.extend(zstd::encode_all(&input[..], 3).unwrap());
        assert_eq!(round_trip(blob), input);
    }

    #[test]
    fn damaged_zstd_is_an_error_saying_zstd() {
        let mut z = compress(Compression::Zstd { level: 3 }, &data(200_000), 1, 1 << 20);
        let mid = z.len() / 2;
        z[mid] ^= 0xff;
        let mut out = Vec::new();
        let err = decompress(io::Cursor::new(z)).unwrap().read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().starts_with("zstd: "), "{err}");
    }

    /// A reader giving `data` in odd-sized pieces, then `err` (if any) instead of EOF.
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        err: Option<io::ErrorKind>,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                return match self.err {
                    Some(kind) => Err(io::Error::new(kind, "the blob's digest does not match")),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(77_777).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_gives_the_same_bytes_then_the_same_error() {
        for len in [0, 1, READ_AHEAD_CHUNK, 3 * READ_AHEAD_CHUNK + 5] {
            let input = data(len);
            let mut out = Vec::new();
            read_ahead(Box::new(Pieces { data: input.clone(), pos: 0, err: None })).read_to_end(&mut out).unwrap();
            assert_eq!(out, input, "{len} bytes");

            let mut r =
                read_ahead(Box::new(Pieces { data: input.clone(), pos: 0, err: Some(io::ErrorKind::InvalidData) }));
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            let err = loop {
                match r.read(&mut buf) {
                    Ok(0) => panic!("EOF instead of the error"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert_eq!(got, input, "every byte before the error");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("digest does not match"), "{err}");
        }
    }

    #[test]
    fn read_ahead_dropped_early_stops_its_thread() {
        let mut r = read_ahead(Box::new(Pieces { data: data(20 * READ_AHEAD_CHUNK), pos: 0, err: None }));
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        drop(r); // joins the thread: a hang here is the failure
    }

    #[test]
    fn a_blob_check_failure_under_zstd_stays_findable() {
        let blob = compress(Compression::Zstd { level: 3 }, &data(100_000), 1, 1 << 20);
        let wrong = Digest::of(b"another blob");
        let reader = crate::digest::VerifyingReader::new(io::Cursor::new(blob), wrong, None);
        let err = decompress(reader).unwrap().read_to_end(&mut Vec::new()).unwrap_err();
        assert!(crate::digest::BlobCheckFailure::find(&err).is_some(), "{err}");
    }

    #[test]
    fn parse_levels() {
        assert_eq!(Compression::parse("gzip", None), Ok(Compression::Gzip { level: DEFAULT_GZIP_LEVEL }));
        assert_eq!(Compression::parse("zstd", Some(19)), Ok(Compression::Zstd { level: 19 }));
        assert!(Compression::parse("gzip", Some(10)).unwrap_err().contains("0-9"));
        assert!(Compression::parse("zstd", Some(0)).unwrap_err().contains("1-19"));
        assert!(Compression::parse("xz", None).unwrap_err().contains("gzip or zstd"));
        assert_eq!(Compression::Zstd { level: 3 }.media_type(), media::OCI_LAYER_ZSTD);
    }
}
