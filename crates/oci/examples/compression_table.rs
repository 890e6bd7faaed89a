//! `make bench` (e): time and size of every layer compression ext-extend offers, on tar files.
//!
//! ```text
//! compression_table ROUNDS THREADS FORMAT:LEVEL[,FORMAT:LEVEL...] TAR...
//! ```
//! Each round runs every setting on every tar once (interleaved, so load changes hit all
//! settings alike), through the writer `LayerWriter` uses ([`Compression::writer`]) with the
//! blob hashed as it does, then decompresses the result with [`decompress`] (what a pull and a
//! cold RUN pay). Prints one JSON object per measurement.

use std::io::{self, Read, Write};
use std::time::Instant;

use ext_oci::HashingWriter;
use ext_oci::compression::{Compression, decompress};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: compression_table ROUNDS THREADS FORMAT:LEVEL[,...] TAR...");
        std::process::exit(2);
    }
    let rounds: usize = args[0].parse().expect("ROUNDS");
    let threads: usize = args[1].parse().expect("THREADS");
    let settings: Vec<Compression> = args[2]
        .split(',')
        .map(|s| {
            let (f, l) = s.split_once(':').expect("FORMAT:LEVEL");
            Compression::parse(f, Some(l.parse().expect("level"))).expect("setting")
        })
        .collect();
    let inputs: Vec<(String, Vec<u8>)> =
        args[3..].iter().map(|p| (p.clone(), std::fs::read(p).expect("read tar"))).collect();
    for round in 0..rounds {
        for (name, tar) in &inputs {
            for c in &settings {
                let t = Instant::now();
                let mut w = c.writer(HashingWriter::new(Vec::with_capacity(tar.len() / 2)), threads).unwrap();
                w.write_all(tar).unwrap();
                let (digest, size, blob) = w.finish().unwrap().finish();
                let compress_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut r = decompress(io::Cursor::new(blob)).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0usize;
                loop {
                    let got = r.read(&mut buf).unwrap();
                    if got == 0 {
                        break;
                    }
                    n += got;
                }
                let decompress_s = t.elapsed().as_secs_f64();
                assert_eq!(n, tar.len());
                let (format, level) = match c {
                    Compression::Gzip { level } => ("gzip", *level as i32),
                    Compression::Zstd { level } => ("zstd", *level),
                };
                println!(
                    "{{\"round\":{round},\"input\":\"{name}\",\"format\":\"{format}\",\"level\":{level},\
                     \"threads\":{threads},\"input_bytes\":{},\"size\":{size},\"compress_s\":{compress_s:.4},\
                     \"decompress_s\":{decompress_s:.4},\"digest\":\"{}\"}}",
                    tar.len(),
                    digest.short()
                );
            }
        }
    }
}
