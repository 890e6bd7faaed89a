//! Parsing and planning Dockerfiles of 10,000 and 40,000 `ENV` lines with distinct names
//! (issue 18: this was quadratic, 560 s for 100,000 lines in a debug build). Linear means the
//! larger input takes about four times as long. Run by `cargo bench -p ext-dockerfile`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ext_dockerfile::Dockerfile;

fn dockerfile(lines: usize) -> String {
    let mut text = String::from("FROM ${base_image}\n");
    for i in 0..lines {
        text.push_str(&format!("ENV v{i}=x$v{}\n", i / 2));
    }
    text
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_env_lines");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    let args = BTreeMap::from([("base_image".to_string(), "busybox".to_string())]);
    for lines in [10_000usize, 40_000] {
        let text = dockerfile(lines);
        group.throughput(Throughput::Elements(lines as u64));
        group.bench_function(format!("{lines}"), |b| {
            b.iter(|| {
                let df = Dockerfile::parse(black_box(&text), "bench.Dockerfile").unwrap();
                black_box(df.plan(&args, &[]).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
