//! Exactness checks of the probed Fisher (`diagonal_fisher`): on the committed encoder (with
//! a pooler, a full MLM head and a classifier added) and on tiny grouped-query decoders (tied
//! and untied LM head), the Fisher from one probed backward per batch equals a loop of
//! ordinary single-example backwards with every tensor a `Var`, tensor by tensor to 1e-5 of
//! the tensor's largest entry, for sampled and gold labels, prompt and cls formats — and every
//! tensor that should reach the class scores gets curvature. Also the speed comparison
//! (`--ignored fisher_speed`). Test-only module.

use super::{diagonal_fisher, sample_label, FisherValues, LabelMode, ProbedModel};
use crate::data::TaskData;
use crate::nn::weights::synthetic;
use crate::nn::{llama, ArchConfig};
use crate::tensors::header::Dtype;
use crate::tensors::model_dir::ModelDir;
use crate::tensors::writer::{SafetensorsWriter, WriterOptions};
use crate::train::classify::{cross_entropy, ClsHead};
use crate::train::delta::load_trainable;
use crate::train::feed::{Feed, FormatSpec};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn minilm() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/minilm-l3-v8k");
    if !d.is_dir() {
        eprintln!("skipping: {} absent", d.display());
        return None;
    }
    Some(d)
}

fn task() -> TaskData {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/data/movies");
    TaskData::open(&dir, &crate::data::ReadOptions::default()).unwrap()
}

fn write_model(dir: &Path, config: &str, tensors: &BTreeMap<String, Tensor>, tok_from: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    for f in ["tokenizer.json", "vocab.txt"] {
        std::fs::copy(tok_from.join(f), dir.join(f)).unwrap();
    }
    let specs: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), Dtype::F32, t.dims().to_vec()))
        .collect();
    let path = dir.join("model.safetensors");
    let mut w = SafetensorsWriter::create(&path, &specs, WriterOptions::default()).unwrap();
    for (n, t) in tensors {
        w.write_f32(n, &t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .unwrap();
    }
    w.finish().unwrap();
}

/// The committed encoder plus a pooler, a full MLM head (transform + LayerNorm + bias,
/// decoder tied to the embeddings) and a 2-class `classifier`, all seeded.
fn bert_dir(root: &Path) -> Option<PathBuf> {
    let src = minilm()?;
    let md = ModelDir::open(&src).unwrap();
    let mut t: BTreeMap<String, Tensor> = md
        .signature()
        .into_iter()
        .map(|(n, ..)| {
            let v = md.read_tensor(&n, &Device::Cpu).unwrap();
            (n, v)
        })
        .collect();
    let h = 384;
    let extra: Vec<(String, Vec<usize>)> = [
        ("pooler.dense.weight", vec![h, h]),
        ("pooler.dense.bias", vec![h]),
        ("cls.predictions.transform.dense.weight", vec![h, h]),
        ("cls.predictions.transform.dense.bias", vec![h]),
        ("cls.predictions.transform.LayerNorm.weight", vec![h]),
        ("cls.predictions.transform.LayerNorm.bias", vec![h]),
        ("cls.predictions.bias", vec![8192]),
        ("classifier.weight", vec![2, h]),
        ("classifier.bias", vec![2]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    t.extend(synthetic(&extra, 17, &Device::Cpu).unwrap());
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let dir = root.join("bert");
    write_model(&dir, &config, &t, &src);
    Some(dir)
}

/// A 2-layer grouped-query decoder (Qwen2 flavour: q/k/v biases) with the committed
/// encoder's WordPiece vocabulary, tied or untied LM head.
fn llama_dir(root: &Path, tied: bool) -> Option<PathBuf> {
    let src = minilm()?;
    let config = format!(
        r#"{{"model_type":"qwen2","vocab_size":8192,"hidden_size":32,"intermediate_size":48,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,
        "rope_theta":10000.0,"tie_word_embeddings":{tied},"max_position_embeddings":128,"pad_token_id":0}}"#
    );
    let ArchConfig::Llama(c) = ArchConfig::from_json(&config, "config.json").unwrap() else {
        panic!("a decoder config")
    };
    let t = synthetic(&llama::checkpoint_shapes(&c), 23, &Device::Cpu).unwrap();
    let dir = root.join(format!("llama-{tied}"));
    write_model(&dir, &config, &t.into_iter().collect(), &src);
    Some(dir)
}

/// Reference: every tensor a `Var`, one ordinary backward per example, squares summed.
fn loop_fisher(
    dir: &Path,
    feed: &Feed,
    head: Option<(&str, &str)>,
    labels: LabelMode,
    seed: u64,
) -> BTreeMap<String, Tensor> {
    let (lm, vars) = load_trainable(dir, &Device::Cpu).unwrap();
    let var = |n: &str| vars.iter().find(|(m, _)| m == n).unwrap().1.clone();
    let head = head.map(|(w, b)| ClsHead::from_vars(var(w), var(b)).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let gold = feed.labels();
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    for (i, &gold) in gold.iter().enumerate() {
        let z = feed.logits(&lm, head.as_ref(), &[i]).unwrap();
        let y = match labels {
            LabelMode::Empirical => gold,
            LabelMode::Sampled => {
                sample_label(&z.to_vec2::<f32>().unwrap()[0], rng.random::<f64>())
            }
        };
        let g = cross_entropy(&z, &[y])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in &vars {
            let sq = match g.get(v.as_tensor()) {
                Some(g) => g.sqr().unwrap(),
                None => v.as_tensor().zeros_like().unwrap(),
            };
            let e = acc
                .entry(name.clone())
                .or_insert_with(|| sq.zeros_like().unwrap());
            *e = e.add(&sq).unwrap();
        }
    }
    acc.into_iter()
        .map(|(n, t)| (n, (t / feed.len() as f64).unwrap()))
        .collect()
}

/// Runs both and checks them tensor by tensor (|Δ| ≤ 1e-5 · max |F_ref|); returns the
/// names whose reference Fisher is non-zero. A tensor whose reference is below 1e-9 of
/// the largest entry of all is round-off of a mathematically zero gradient (BERT's key
/// biases: softmax is invariant to a shift of all scores) and must be as small in both.
fn compare(dir: &Path, head: &str, labels: LabelMode, n: usize, batch: usize) -> Vec<String> {
    let task = task();
    let examples: Vec<_> = task.train()[..n].to_vec();
    let mut pm = ProbedModel::load(dir, &Device::Cpu).unwrap();
    let spec = FormatSpec::resolve(&pm.lm, &task, head, None, None, 64).unwrap();
    let feed = Feed::new(&pm.lm, &spec, &task, &examples).unwrap();
    let cls = pm.head(&task.name).unwrap().filter(|_| feed.needs_head());
    let seed = 99;
    let got: FisherValues =
        diagonal_fisher(&mut pm, &feed, cls.as_ref(), labels, seed, batch, false).unwrap();
    assert_eq!(got.examples, n);
    let names = cls.as_ref().map(|(_, w, b)| (w.as_str(), b.as_str()));
    let want = loop_fisher(dir, &feed, names, labels, seed);
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let floor = 1e-9 * want.values().map(max).fold(0f32, f32::max);
    let mut nonzero = Vec::new();
    let mut worst = 0f32;
    assert_eq!(got.tensors.len(), want.len());
    for (name, f) in &got.tensors {
        let r = &want[name];
        let scale = max(r);
        if scale <= floor {
            assert!(
                max(f) <= floor,
                "{name}: {:e} where the reference is ~0",
                max(f)
            );
            continue;
        }
        let d = crate::nn::ops::max_abs_diff(f, r).unwrap();
        assert!(
            d <= 1e-5 * scale,
            "{name}: max |Δ| = {d:e}, max |F| = {scale:e}"
        );
        worst = worst.max(d / scale);
        nonzero.push(name.clone());
    }
    eprintln!(
        "{}: worst max|Δ| / max|F| over tensors = {worst:.2e}",
        dir.display()
    );
    nonzero
}

#[test]
fn encoder_fisher_equals_a_loop_of_single_example_backwards() {
    let root = tempfile::tempdir().unwrap();
    let Some(dir) = bert_dir(root.path()) else {
        return;
    };
    let all: Vec<String> = ModelDir::open(&dir)
        .unwrap()
        .tensors()
        .keys()
        .cloned()
        .collect();
    // Prompt format: everything but the pooler and the classifier reaches the label words.
    let key_bias = |n: &str| n.ends_with("attention.self.key.bias");
    let nz = compare(&dir, "prompt", LabelMode::Sampled, 6, 4);
    let expect: Vec<&String> = all
        .iter()
        .filter(|n| !n.starts_with("pooler.") && !n.starts_with("classifier.") && !key_bias(n))
        .collect();
    assert_eq!(nz.iter().collect::<Vec<_>>(), expect);
    // Cls format: the classifier on [CLS] instead of the MLM head.
    let nz = compare(&dir, "cls", LabelMode::Empirical, 5, 2);
    let expect: Vec<&String> = all
        .iter()
        .filter(|n| !n.starts_with("pooler.") && !n.starts_with("cls.") && !key_bias(n))
        .collect();
    assert_eq!(nz.iter().collect::<Vec<_>>(), expect);
}

#[test]
fn decoder_fisher_equals_a_loop_of_single_example_backwards() {
    let root = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let Some(dir) = llama_dir(root.path(), tied) else {
            return;
        };
        let nz = compare(&dir, "prompt", LabelMode::Sampled, 5, 3);
        let all = ModelDir::open(&dir).unwrap().tensors().len();
        assert_eq!(
            nz.len(),
            all,
            "tied={tied}: every tensor reaches the answer logits"
        );
    }
}

/// Examples per second of the probed Fisher, of the per-example loop and of an ordinary
/// batch backward on the committed encoder (prompt format, 64 examples):
/// `cargo test --release --lib -- --ignored fisher_speed --nocapture`.
#[test]
#[ignore]
fn fisher_speed_probe_vs_loop() {
    let Some(dir) = minilm() else {
        return;
    };
    let task = task();
    let examples: Vec<_> = task.train()[..64].to_vec();
    let mut pm = ProbedModel::load(&dir, &Device::Cpu).unwrap();
    let spec = FormatSpec::resolve(&pm.lm, &task, "prompt", None, None, 128).unwrap();
    let feed = Feed::new(&pm.lm, &spec, &task, &examples).unwrap();
    for batch in [1, 8, 16] {
        let r = diagonal_fisher(&mut pm, &feed, None, LabelMode::Sampled, 1, batch, false).unwrap();
        eprintln!(
            "probes, batch {batch:2}: {:.1} examples/s",
            r.examples as f64 / r.seconds
        );
    }
    let t0 = std::time::Instant::now();
    loop_fisher(&dir, &feed, None, LabelMode::Sampled, 1);
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "loop of single-example backwards: {:.1} examples/s",
        64.0 / s
    );
    // For scale: one ordinary backward per batch of 8 (every tensor a Var, summed
    // gradients only — what a training step costs, no per-example gradients).
    let (lm, _vars) = load_trainable(&dir, &Device::Cpu).unwrap();
    let labels = feed.labels();
    let t0 = std::time::Instant::now();
    for chunk in (0..64).collect::<Vec<usize>>().chunks(8) {
        let z = feed.logits(&lm, None, chunk).unwrap();
        let y: Vec<u32> = chunk.iter().map(|&i| labels[i]).collect();
        let l = cross_entropy(&z, &y).unwrap().sum_all().unwrap();
        l.backward().unwrap();
    }
    let s = t0.elapsed().as_secs_f64();
    eprintln!("ordinary batch-8 backward: {:.1} examples/s", 64.0 / s);
}
