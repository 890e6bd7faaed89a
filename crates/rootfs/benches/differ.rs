//! The differs on a 10,000-file tree where a RUN changed 10 files and deleted one:
//! - stat: `StatIndex::build` of the tree after the RUN + `diff` against the index before it
//!   (what the stat strategy costs per RUN; the "before" index is carried over from the last);
//! - overlay: `diff_upper` of an upper directory holding the changes, with lower lookups.
//!
//! Run by `make bench`.

use std::fs;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ext_rootfs::diff::diff_upper;
use ext_rootfs::{IgnoreSet, StatIndex};

const FILES: usize = 10_000;

fn make_tree(root: &Path) {
    for i in 0..FILES {
        let dir = root.join(format!("usr/lib/d{}", i % 200));
        if i < 200 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}")), format!("file {i}\n").repeat(1 + i % 16)).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let ignore = IgnoreSet::new(["proc", "sys", "dev"]);

    // stat strategy: the tree, its index, then a RUN's worth of changes.
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let before = StatIndex::build(&tree, &ignore).unwrap();
    for i in 0..10 {
        fs::write(tree.join(format!("usr/lib/d{}/f{}", i % 200, i * 7)), b"changed by the RUN\n").unwrap();
    }
    fs::remove_file(tree.join("usr/lib/d5/f1005")).unwrap();

    // overlay strategy: a lower layer (the same 10k files) and an upper dir with the changes.
    let lower = tmp.path().join("lower");
    make_tree(&lower);
    let upper = tmp.path().join("upper");
    for i in 0..10 {
        let p = upper.join(format!("usr/lib/d{}/f{}", i % 200, i * 7));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"changed by the RUN\n").unwrap();
    }
    // A whiteout as overlayfs writes it (a 0/0 character device) when we may create one.
    let wh = upper.join("usr/lib/d5/f1005");
    let _ = nix::sys::stat::mknod(&wh, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0);

    let mut g = c.benchmark_group("differ");
    g.throughput(Throughput::Elements(FILES as u64));
    g.sample_size(10);
    g.bench_function("stat_index_build_and_diff/10k_files_11_changes", |b| {
        b.iter(|| {
            let after = StatIndex::build(&tree, &ignore).unwrap();
            let snap = before.diff(&after, &tree);
            assert!(snap.changes.len() >= 11);
            black_box(snap)
        })
    });
    g.bench_function("diff_upper/10k_file_lower_11_changes", |b| {
        let lookup = |rel: &str| fs::symlink_metadata(lower.join(rel)).ok().map(|md| (lower.join(rel), md));
        b.iter(|| {
            let snap = diff_upper(&upper, &ignore, &lookup).unwrap();
            assert!(snap.changes.len() >= 10);
            black_box(snap)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
