//! The layer writer (tar -> sha256 -> gzip -> sha256 -> file) on 64 MiB of mixed files, with
//! one compression thread and with the default (every core). Run by `make bench`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ext_oci::{EntryMeta, LayerOptions, LayerWriter};

const TOTAL: usize = 64 * 1024 * 1024;

/// Deterministic file contents gzip treats like a real image: a third text-like, a third
/// low-entropy binary, a third incompressible.
fn files() -> Vec<(String, Vec<u8>)> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = ["fn ", "let ", "data", "value", " = ", "(", ");\n", "self.", "config", "    ", "return ", "0"];
    let mut out = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < TOTAL {
        // Sizes from 1 KiB to 1 MiB, most of them small.
        let size = (1024usize << (next() % 11)).min(TOTAL - total);
        let data: Vec<u8> = match i % 3 {
            0 => {
                let mut d = Vec::with_capacity(size);
                while d.len() < size {
                    d.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                }
                d.truncate(size);
                d
            }
            1 => (0..size).map(|_| [0u8, 0, 0, 1, 2, 4, 8, 0xff][(next() % 8) as usize]).collect(),
            _ => (0..size.div_ceil(8)).flat_map(|_| next().to_le_bytes()).take(size).collect(),
        };
        out.push((format!("opt/bench/d{}/f{i}", i % 32), data));
        total += size;
        i += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let files = files();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("layer_writer");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    let default_threads = LayerOptions::default().threads;
    for threads in [1, default_threads] {
        let opts = LayerOptions { threads, ..LayerOptions::default() };
        g.bench_function(format!("64MiB_{}_files/{threads}_threads", files.len()), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let mut w = LayerWriter::create(dir.path(), opts).unwrap();
                    for d in 0..32 {
                        w.append_dir(&EntryMeta::new(format!("opt/bench/d{d}"), 0o755)).unwrap();
                    }
                    for (path, data) in &files {
                        w.append_file(&EntryMeta::new(path.clone(), 0o644), data.len() as u64, &mut &data[..]).unwrap();
                    }
                    let blob = w.finish().unwrap();
                    std::fs::remove_file(&blob.path).unwrap();
                    black_box(blob.digest)
                },
                BatchSize::PerIteration,
            )
        });
        if threads == default_threads {
            break;
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
