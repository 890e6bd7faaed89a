//! Parallel gzip with deterministic output: the stream is cut into fixed-size chunks, each
//! compressed on a worker thread as an independent gzip member, and the members are written in
//! order. A multi-member gzip file is plain gzip (RFC 1952; Go's and zlib's readers, and so
//! containerd, skopeo and umoci, read it whole). The bytes depend only on the input, the level
//! and the chunk size, never on the number of threads, so layer digests stay reproducible.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compression, GzBuilder};

/// Input bytes per gzip member. Large enough that the per-member header and the dictionary
/// reset cost well under 0.1% of the output, small enough to keep memory bounded.
pub const CHUNK: usize = 1 << 20;

type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

pub struct ParallelGzWriter<W: Write> {
    inner: Option<W>,
    level: u32,
    buf: Vec<u8>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    max_in_flight: usize,
    members: u64,
}

/// Compresses one chunk as a complete gzip member (fixed header: no name, mtime 0, OS 255).
pub fn compress_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 2 + 64), Compression::new(level));
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write> ParallelGzWriter<W> {
    /// `threads` workers (1 compresses on the calling thread).
    pub fn new(inner: W, level: u32, threads: usize) -> ParallelGzWriter<W> {
        let threads = threads.max(1);
        let (jobs, workers) = if threads > 1 {
            let (tx, rx) = sync_channel::<Job>(threads);
            let rx = Arc::new(Mutex::new(rx));
            let workers = (0..threads)
                .map(|_| {
                    let rx = Arc::clone(&rx);
                    std::thread::spawn(move || {
                        loop {
                            let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok((data, reply)) = job else { break };
                            let _ = reply.send(compress_member(&data, level));
                        }
                    })
                })
                .collect();
            (Some(tx), workers)
        } else {
            (None, Vec::new())
        };
        ParallelGzWriter {
            inner: Some(inner),
            level,
            buf: Vec::with_capacity(CHUNK),
            pending: VecDeque::new(),
            jobs,
            workers,
            max_in_flight: threads * 2,
            members: 0,
        }
    }

    /// Threads worth using here: one per core.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.members += 1;
        match &self.jobs {
            None => {
                let member = compress_member(&data, self.level)?;
                self.inner.as_mut().expect("not finished").write_all(&member)?;
            }
            Some(jobs) => {
                let (reply, result) = sync_channel(1);
                jobs.send((data, reply)).map_err(|_| io::Error::other("gzip worker stopped"))?;
                self.pending.push_back(result);
                while self.pending.len() >= self.max_in_flight {
                    self.write_oldest()?;
                }
            }
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else { return Ok(()) };
        let member = rx.recv().map_err(|_| io::Error::other("gzip worker stopped"))??;
        self.inner.as_mut().expect("not finished").write_all(&member)
    }

    /// Compresses what is left, writes every member, and returns the inner writer. An empty
    /// stream still becomes one (empty) gzip member.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit()?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        if self.members == 0 {
            let member = compress_member(&[], self.level)?;
            self.inner.as_mut().expect("not finished").write_all(&member)?;
        }
        let mut inner = self.inner.take().expect("finish runs once");
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are cut by size only, so flushing never changes the output bytes.
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        // Closing the job channel stops the workers.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn data(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 3 == 0 { (x >> 24) as u8 } else { b"abcdefgh"[(x >> 16) as usize % 8] }
            })
            .collect()
    }

    fn compress(input: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), 1, threads);
        for piece in input.chunks(write_size) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn output_is_independent_of_threads_and_write_sizes() {
        let input = data(3 * CHUNK + 12345);
        let one = compress(&input, 1, 7777);
        assert_eq!(one, compress(&input, 2, 65536));
        assert_eq!(one, compress(&input, 4, 1 << 20));
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, input);
    }

    /// Layer digests must not depend on the machine: zlib-rs picks SIMD code paths (AVX2,
    /// PCLMULQDQ, ...) at run time, and every path must give the same bytes. These digests were
    /// taken with the portable code (runtime detection off); the test runs the detected paths.
    /// A zlib-rs upgrade that changes them changes every layer digest: say so in the changelog.
    #[test]
    fn output_bytes_are_pinned_whatever_the_cpu() {
        let mut input = data(2 * CHUNK + 4321);
        input.extend((0..300_000u32).flat_map(|i| format!("line {i} of some text\n").into_bytes()));
        input.extend(std::iter::repeat_n(0u8, 200_000));
        let digests: Vec<String> = [1, 2, 6, 9]
            .iter()
            .map(|&level| {
                let mut w = ParallelGzWriter::new(Vec::new(), level, 2);
                w.write_all(&input).unwrap();
                crate::Digest::of(&w.finish().unwrap()).short().to_string()
            })
            .collect();
        assert_eq!(
            digests,
            ["sha256:a2a8d9a3f605", "sha256:f05fae591539", "sha256:0e97ff6da2bb", "sha256:e6de024a6d54"]
        );
    }

    #[test]
    fn small_and_empty_streams_are_single_members() {
        let input = data(1000);
        assert_eq!(compress(&input, 2, 100), compress_member(&input, 1).unwrap());
        assert_eq!(compress(&[], 2, 1), compress_member(&[], 1).unwrap());
    }
}
