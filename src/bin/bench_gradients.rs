//! Benchmark for `estimate gradients` / `affinity first_order` (issue 6): per-example LoRA
//! gradient throughput of the probed batch (what the operator does) against a loop of
//! single-example backwards and against one plain batch backward (no per-example gradients),
//! on the committed encoder with LoRA r = 8 on query/value (B random, so A counts too); then
//! the projection to d = 400 and one surrogate fit (d = 400, 256 examples). Run with
//! `cargo run --release --bin bench_gradients`; prints figures, asserts nothing.

use candle_core::Device;
use serde_json::json;
use smelt::cache::Key;
use smelt::data::{ReadOptions, TaskData};
use smelt::nn::peft::{Lora, LoraConfig};
use smelt::ops::affinity::surrogate::{fit, Variant};
use smelt::ops::estimate::log_odds::AdapterProbe;
use smelt::tensors::gradients::Projection;
use smelt::train::feed::Feed;
use smelt::value::{Artifact, Kind};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let base = root.join("assets/models/minilm-l3-v8k");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut lm = smelt::nn::load(&base, &Device::Cpu).expect("model");
    let lora = Lora::inject(
        lm.linears_mut(),
        &LoraConfig::new(8, 16.0, &["query", "value"]),
    )
    .expect("lora");
    for m in &lora.modules {
        let b = candle_core::Tensor::randn(0f32, 0.02, m.b.dims(), &Device::Cpu).expect("randn");
        m.b.set(&b).expect("set");
    }
    lora.save_adapter(tmp.path()).expect("save");
    let a = Artifact {
        kind: Kind::Adapter,
        dir: tmp.path().to_path_buf(),
        key: Key::of_bytes(b"bench"),
        data: json!({"base": {"dir": base}}),
    };
    let ap = AdapterProbe::load(&a, &Device::Cpu).expect("probe");
    let task = TaskData::open(
        &root.join("experiments/data/movies"),
        &ReadOptions::default(),
    )
    .expect("task");
    let n = 64;
    let ex = task.train()[..n].to_vec();
    let spec = ap.format(&task, "prompt", None, None, 128).expect("format");
    let feed = Feed::new(&ap.run.lm, &spec, &task, &ex).expect("feed");
    let gold = ap.gold(&spec, &task).expect("gold");
    let idx: Vec<usize> = (0..n).collect();
    println!("D (LoRA coordinates) = {}", ap.used());
    for batch in [8, 16] {
        let t = Instant::now();
        let mut rows = Vec::new();
        for c in idx.chunks(batch) {
            rows.extend(ap.rows(&feed, &gold, None, c).expect("rows").0);
        }
        let s = t.elapsed().as_secs_f64();
        println!("probed batch {batch:>2}: {:8.1} examples/s", n as f64 / s);
        if batch == 8 {
            let p = Projection {
                seed: 1,
                dim: Some(400),
                rows: ap.used(),
            };
            let t = Instant::now();
            p.project(&rows, n).expect("project");
            println!(
                "projection to 400: {:8.1} examples/s",
                n as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let t = Instant::now();
    for &i in &idx {
        let f = ap.functional(&feed, &gold, None, &[i]).expect("f");
        ap.probe.take();
        let g = f.sum_all().and_then(|x| x.backward()).expect("backward");
        for v in ap.vars() {
            let _ = g
                .get(v.as_tensor())
                .map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()));
        }
    }
    println!(
        "per-example loop:  {:8.1} examples/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for c in idx.chunks(8) {
        let f = ap.functional(&feed, &gold, None, c).expect("f");
        ap.probe.take();
        f.sum_all().and_then(|x| x.backward()).expect("backward");
    }
    println!(
        "plain batch 8 backward (no per-example grads): {:8.1} examples/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    // Surrogate fit: d = 400, 256 examples.
    let (m, d) = (256, 400);
    let x: Vec<f32> = (0..m * d)
        .map(|i| ((i * 7919 % 1009) as f32 / 504.5 - 1.0) * 0.1)
        .collect();
    let f0: Vec<f64> = (0..m).map(|i| ((i * 31 % 11) as f64 - 5.0) / 3.0).collect();
    for variant in [Variant::FreeOffset, Variant::FixedOffset] {
        let t = Instant::now();
        let r = fit(&x, &f0, d, 1.0, variant).expect("fit");
        println!(
            "surrogate {:>12} fit (d=400, n=256): {:.1} ms, {} Newton steps",
            variant.name(),
            t.elapsed().as_secs_f64() * 1e3,
            r.iterations
        );
    }
}
