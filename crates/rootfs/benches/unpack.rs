//! The unpacker: a ~64 MiB layer tar (2,000 files in 100 directories, plus symlinks) applied to
//! an empty directory, in both whiteout modes. Run by `make bench`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ext_rootfs::{UnpackOptions, WhiteoutMode, unpack_layer};

fn layer_tar() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut b = tar::Builder::new(Vec::with_capacity(70 << 20));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(315_532_801);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for d in 0..100 {
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), format!("usr/lib/d{d}"), std::io::empty())
            .unwrap();
    }
    for i in 0..2000u64 {
        // 1 KiB .. 128 KiB, ~32 KiB on average.
        let size = 1024usize << (next() % 8);
        let data: Vec<u8> = (0..size.div_ceil(8)).flat_map(|_| next().to_le_bytes()).take(size).collect();
        let path = format!("usr/lib/d{}/f{i}", i % 100);
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, size as u64), &path, &data[..]).unwrap();
        if i % 10 == 0 {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, format!("{path}.link"), format!("f{i}")).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn bench(c: &mut Criterion) {
    let tar = layer_tar();
    let parent = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("unpack");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    for (name, mode) in [("apply", WhiteoutMode::Apply), ("overlay", WhiteoutMode::Overlay)] {
        let opts = UnpackOptions { whiteouts: mode, layer_name: "bench".into(), filter: None };
        g.bench_function(format!("{}MiB_2000_files/{name}", tar.len() >> 20), |b| {
            b.iter_batched(
                || tempfile::tempdir_in(parent.path()).unwrap(),
                |root| {
                    black_box(unpack_layer(root.path(), &tar[..], &opts).unwrap());
                    // Returned so that removing the tree is not measured.
                    root
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
