//! Empirical-NTK kernels (`kernel sgd|signgd|asym_signgd`, methods.md §4.5) on a tiny random
//! BERT (2 layers, H = 16, the committed encoder's 8k WordPiece vocabulary, a full MLM head
//! with the decoder tied to the embeddings, a `classifier`): the SGD kernel equals `G·Gᵀ` of
//! per-example gradients from a loop of ordinary single-example backwards (every tensor a
//! `Var`), for the prompt and cls formats, binary (`f₁ − f₀`) and 3-class outputs, and
//! parameter selections; the training kernel is symmetric PSD; SignGD entries are integers
//! bounded by D and equal `sign(G)·sign(G)ᵀ`; the flipped asymmetric kernel is the transpose;
//! block size changes nothing. Then `kernel sgd` through `smelt run` on the committed encoder,
//! its Matrix read back by `load kernel`. (The model computes in f32, so the reference
//! agrees to f32 rounding; the f64 identity to 1e-12 is `nn::per_example::jacobian`'s test.)

use candle_core::{DType, Device, Tensor};
use smelt::data::{ReadOptions, TaskData};
use smelt::nn::{bert, llama, weights::synthetic, ArchConfig};
use smelt::ops::estimate::ProbedModel;
use smelt::ops::kernel::{compute, KernelKind, KernelModel, KernelValues};
use smelt::train::classify::ClsHead;
use smelt::train::delta::load_trainable;
use smelt::train::feed::{Feed, FormatSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> Option<PathBuf> {
    let d = root().join("assets/models/minilm-l3-v8k");
    if !d.is_dir() {
        eprintln!("skipping: {} absent", d.display());
        return None;
    }
    Some(d)
}

/// A tiny random BERT with an MLM head and a `classes`-way classifier, in `dir`.
fn tiny_bert(dir: &Path, classes: usize) -> Option<PathBuf> {
    let src = minilm()?;
    let h = 16;
    let config = format!(
        r#"{{"model_type":"bert","vocab_size":8192,"hidden_size":{h},"num_hidden_layers":2,
        "num_attention_heads":2,"intermediate_size":32,"hidden_act":"gelu",
        "max_position_embeddings":128,"type_vocab_size":2,"layer_norm_eps":1e-12,"pad_token_id":0}}"#
    );
    let ArchConfig::Bert(c) = ArchConfig::from_json(&config, "config.json").unwrap() else {
        panic!("an encoder config")
    };
    let mut shapes = bert::checkpoint_shapes(&c);
    for (n, s) in [
        ("cls.predictions.transform.dense.weight", vec![h, h]),
        ("cls.predictions.transform.dense.bias", vec![h]),
        ("cls.predictions.transform.LayerNorm.weight", vec![h]),
        ("cls.predictions.transform.LayerNorm.bias", vec![h]),
        ("cls.predictions.bias", vec![8192]),
        ("classifier.weight", vec![classes, h]),
        ("classifier.bias", vec![classes]),
    ] {
        shapes.push((n.to_string(), s));
    }
    let t: BTreeMap<String, Tensor> = synthetic(&shapes, 5, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, (t * 8.0).unwrap())) // larger weights: gradients far from zero
        .collect();
    write_dir(dir, &config, &t, &src)
}

/// A 2-layer grouped-query decoder (Qwen2 flavour) with the committed encoder's vocabulary,
/// tied or untied LM head.
fn tiny_llama(dir: &Path, tied: bool) -> Option<PathBuf> {
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
    let t: BTreeMap<String, Tensor> = t.into_iter().collect();
    write_dir(dir, &config, &t, &src)
}

/// Writes `config`, the tensors (f32) and `src`'s tokenizer into `dir`.
fn write_dir(
    dir: &Path,
    config: &str,
    t: &BTreeMap<String, Tensor>,
    src: &Path,
) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    for f in ["tokenizer.json", "vocab.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .iter()
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), t.dims().to_vec(), b)
        })
        .collect();
    let views = bytes.iter().map(|(n, s, b)| {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
        (n.clone(), v.unwrap())
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    Some(dir.to_path_buf())
}

fn movies() -> TaskData {
    TaskData::open(
        &root().join("experiments/data/movies"),
        &ReadOptions::default(),
    )
    .unwrap()
}

/// A 3-class task with single-token label words.
fn three_way(dir: &Path) -> TaskData {
    std::fs::create_dir_all(dir).unwrap();
    let labels = r#"{"labels":["terrible","okay","great"],"pair":false}"#;
    std::fs::write(dir.join("labels.json"), labels).unwrap();
    let m = movies();
    let lines = |split: &str| -> String {
        m.split(split)
            .iter()
            .take(6)
            .enumerate()
            .map(|(i, e)| format!("{{\"text\":{:?},\"label\":{}}}\n", e.text, i % 3))
            .collect()
    };
    std::fs::write(dir.join("train.jsonl"), lines("train")).unwrap();
    std::fs::write(dir.join("test.jsonl"), lines("test")).unwrap();
    TaskData::open(dir, &ReadOptions::default()).unwrap()
}

struct Setup {
    km: KernelModel,
    train: Feed,
    /// The same examples as `train`, another feed: the general (non-symmetric) path.
    again: Feed,
    eval: Feed,
}

/// The kernel model and feeds of the first `nt` train and `nx` test examples.
fn setup(dir: &Path, task: &TaskData, head: &str, params: &str, nt: usize, nx: usize) -> Setup {
    let pm = ProbedModel::load(dir, &Device::Cpu).unwrap();
    let spec = FormatSpec::resolve(&pm.lm, task, head, None, None, 64).unwrap();
    let train = Feed::new(&pm.lm, &spec, task, &task.train()[..nt]).unwrap();
    let again = Feed::new(&pm.lm, &spec, task, &task.train()[..nt]).unwrap();
    let eval = Feed::new(&pm.lm, &spec, task, &task.split("test")[..nx]).unwrap();
    let h = pm.head(&task.name).unwrap().filter(|_| head == "cls");
    let km = KernelModel::new(pm, h, params).unwrap();
    Setup {
        km,
        train,
        again,
        eval,
    }
}

/// Reference Jacobian rows `[N·C][D]`: one ordinary backward per (example, output), every
/// tensor a `Var`, parameters in name order, those `keep` rejects left out.
fn loop_jacobian(
    dir: &Path,
    feed: &Feed,
    cls: bool,
    binary: bool,
    keep: &dyn Fn(&str) -> bool,
) -> Vec<Vec<f64>> {
    let (lm, mut vars) = load_trainable(dir, &Device::Cpu).unwrap();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let var = |n: &str| vars.iter().find(|(m, _)| m == n).unwrap().1.clone();
    let head =
        cls.then(|| ClsHead::from_vars(var("classifier.weight"), var("classifier.bias")).unwrap());
    let mut rows = Vec::new();
    for i in 0..feed.len() {
        let z = feed.logits(&lm, head.as_ref(), &[i]).unwrap();
        let f = match binary {
            true => (z.narrow(1, 1, 1).unwrap() - z.narrow(1, 0, 1).unwrap()).unwrap(),
            false => z,
        };
        for c in 0..f.dim(1).unwrap() {
            let g = f
                .narrow(1, c, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut row = Vec::new();
            for (n, v) in vars.iter().filter(|(n, _)| keep(n)) {
                match g.get(v.as_tensor()) {
                    Some(t) => row.extend(
                        t.to_dtype(DType::F64)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap(),
                    ),
                    None => row.extend(vec![0f64; v.as_tensor().elem_count()]),
                }
                let _ = n;
            }
            rows.push(row);
        }
    }
    rows
}

fn gram(a: &[Vec<f64>], b: &[Vec<f64>], f: impl Fn(f64) -> f64 + Copy) -> Vec<f64> {
    a.iter()
        .flat_map(|x| {
            b.iter()
                .map(move |y| x.iter().zip(y).map(|(u, v)| f(*u) * f(*v)).sum::<f64>())
        })
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs()))
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = max_abs(want);
    assert!(scale > 0.0, "{what}: the reference is zero");
    let d = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(d <= rel * scale, "{what}: max |Δ| = {d:e}, scale {scale:e}");
}

fn kernel(
    s: &Setup,
    kind: KernelKind,
    binary: bool,
    block: usize,
    eval_is_train: bool,
) -> KernelValues {
    let eval = if eval_is_train { &s.train } else { &s.eval };
    compute(kind, &s.km, &s.train, eval, binary, block, false).unwrap()
}

#[test]
fn sgd_kernel_is_the_gram_matrix_of_single_example_gradients() {
    let t = tempfile::tempdir().unwrap();
    let Some(dir2) = tiny_bert(&t.path().join("bert2"), 2) else {
        return;
    };
    let dir3 = tiny_bert(&t.path().join("bert3"), 3).unwrap();
    let tri = three_way(&t.path().join("three"));
    let all = |_: &str| true;
    // (model, task, head, binary, selection, keep)
    type Keep = fn(&str) -> bool;
    let cases: [(&Path, TaskData, &str, bool, &str, Keep); 5] = [
        (&dir2, movies(), "prompt", true, "all", |_| true),
        (&dir2, movies(), "cls", true, "all", |_| true),
        (&dir2, movies(), "prompt", false, "no_embeddings", |n| {
            !n.contains("embeddings")
        }),
        (&dir3, tri.clone(), "prompt", false, "biases", |n| {
            n.ends_with(".bias")
        }),
        (&dir3, tri, "cls", false, "no_head", |n| {
            !n.starts_with("cls.") && !n.contains("classifier")
        }),
    ];
    let _ = all;
    for (dir, task, head, binary, sel, keep) in cases {
        let what = format!("{head} binary={binary} params={sel}");
        let s = setup(dir, &task, head, sel, 5, 4);
        // Blocks of one run the same f32 graph as the reference: equal to f64 rounding.
        let kv = kernel(&s, KernelKind::Sgd, binary, 1, false);
        let c = if binary { 1 } else { task.labels.len() };
        assert_eq!(kv.c, c);
        let gt = loop_jacobian(dir, &s.train, head == "cls", binary, &keep);
        let gx = loop_jacobian(dir, &s.eval, head == "cls", binary, &keep);
        assert_eq!(gt[0].len(), s.km.params(), "{what}: D");
        let want = gram(&gt, &gx, |x| x);
        assert_close(&kv.values, &want, 1e-8, &what);
        // Padded blocks: f32 rounding of the batched forward.
        let k3 = kernel(&s, KernelKind::Sgd, binary, 3, false);
        assert_close(&k3.values, &want, 1e-4, &format!("{what}, block=3"));
        // f0: the model's outputs.
        assert_eq!(kv.train_f0.len(), 5 * c);
        let z = s
            .train
            .all_logits(&s.km.pm.lm, s.km.head.as_ref().map(|h| &h.0), 8)
            .unwrap();
        let f0: Vec<f64> = z
            .iter()
            .flat_map(|r| match binary {
                true => vec![(r[1] - r[0]) as f64],
                false => r.iter().map(|&v| v as f64).collect(),
            })
            .collect();
        assert_close(&kv.train_f0, &f0, 1e-5, &format!("{what}: f0"));
    }
}

#[test]
fn decoder_kernels_are_the_gram_matrix_of_single_example_gradients() {
    // Answer-choice logits of a decoder (first token of " negative" / " positive"), tied and
    // untied LM head: the same identity as for the encoder.
    let t = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let Some(dir) = tiny_llama(&t.path().join(format!("llama-{tied}")), tied) else {
            return;
        };
        for binary in [true, false] {
            let what = format!("decoder tied={tied} binary={binary}");
            let s = setup(&dir, &movies(), "prompt", "all", 4, 3);
            let kv = kernel(&s, KernelKind::Sgd, binary, 1, false);
            let gt = loop_jacobian(&dir, &s.train, false, binary, &|_| true);
            let gx = loop_jacobian(&dir, &s.eval, false, binary, &|_| true);
            assert_eq!(gt[0].len(), s.km.params(), "{what}: D");
            assert_close(&kv.values, &gram(&gt, &gx, |x| x), 1e-8, &what);
            let k2 = kernel(&s, KernelKind::Sgd, binary, 2, true);
            symmetric_psd(&k2.values, 4 * kv.c);
        }
    }
}

fn symmetric_psd(k: &[f64], n: usize) {
    let m = nalgebra::DMatrix::from_row_slice(n, n, k);
    let asym = (&m - m.transpose()).abs().max();
    let scale = m.abs().max();
    assert!(
        asym <= 1e-12 * scale,
        "asymmetry {asym:e} (scale {scale:e})"
    );
    let ev = m.symmetric_eigen().eigenvalues;
    let (lo, hi) = (ev.min(), ev.max());
    assert!(lo >= -1e-9 * hi, "eigenvalues in [{lo:e}, {hi:e}]");
}

#[test]
fn training_kernels_are_psd_signs_are_integers_flips_transpose_and_blocks_do_not_matter() {
    let t = tempfile::tempdir().unwrap();
    let Some(dir) = tiny_bert(&t.path().join("bert"), 2) else {
        return;
    };
    let tri = three_way(&t.path().join("three"));
    let dir3 = tiny_bert(&t.path().join("bert3"), 3).unwrap();
    let n = 6;
    // SGD training kernel: symmetric PSD, binary and 3-class (N·C × N·C).
    let s = setup(&dir, &movies(), "prompt", "all", n, 4);
    let k1 = kernel(&s, KernelKind::Sgd, true, 1, true);
    let kn = kernel(&s, KernelKind::Sgd, true, n, true);
    symmetric_psd(&kn.values, n);
    symmetric_psd(&k1.values, n);
    // The padded batch of N rounds differently from N batches of one (f32 model): ≤ 1e-4 of
    // the largest entry; the block=1 kernel is exact (previous test).
    assert_close(&k1.values, &kn.values, 1e-4, "block=1 vs block=N");
    let s3 = setup(&dir3, &tri, "prompt", "all", n, 4);
    let k3 = kernel(&s3, KernelKind::Sgd, false, 4, true);
    symmetric_psd(&k3.values, n * 3);
    let k3n = kernel(&s3, KernelKind::Sgd, false, n, true);
    assert_close(&k3.values, &k3n.values, 1e-4, "3-class block=4 vs block=N");

    // SignGD: integers, |K| ≤ D, sign(G)·sign(G)ᵀ of the reference gradients (blocks of one:
    // the same f32 graph, so the same signs).
    let d = s.km.params() as f64;
    let sg = kernel(&s, KernelKind::SignGd, true, 1, false);
    let gt = loop_jacobian(&dir, &s.train, false, true, &|_| true);
    let gx = loop_jacobian(&dir, &s.eval, false, true, &|_| true);
    let sign = |x: f64| (x > 0.0) as i32 as f64 - (x < 0.0) as i32 as f64;
    assert_close(&sg.values, &gram(&gt, &gx, sign), 1e-12, "signgd");
    // Padded blocks: entries within f32 rounding of zero may change sign; each flip moves an
    // entry by 2, and flips are rare (≤ 1% of the nonzero gradient entries).
    let sg4 = kernel(&s, KernelKind::SignGd, true, 4, false);
    let nonzero = |g: &[f64]| g.iter().filter(|&&x| x != 0.0).count() as f64;
    for (k, (a, b)) in sg4.values.iter().zip(&sg.values).enumerate() {
        assert!(
            a.fract() == 0.0 && a.abs() <= d,
            "entry {a} is not an integer within ±{d}"
        );
        assert!((a - b).abs() <= 0.01 * nonzero(&gt[k / 4]), "{a} vs {b}");
    }
    let diag = kernel(&s, KernelKind::SignGd, true, 1, true);
    for (i, g) in gt.iter().enumerate() {
        assert_eq!(
            diag.values[i * n + i],
            nonzero(g),
            "⟨sign g, sign g⟩ = #nonzero"
        );
    }

    // Asymmetric SignGD: ⟨sign g_i, g_x⟩, and on the same examples flipped = Kᵀ.
    let a = kernel(&s, KernelKind::AsymSignGd, true, 1, false);
    let want: Vec<f64> = gt
        .iter()
        .flat_map(|x| {
            gx.iter()
                .map(move |y| x.iter().zip(y).map(|(u, v)| sign(*u) * v).sum::<f64>())
        })
        .collect();
    assert_close(&a.values, &want, 1e-12, "asym");
    // The general path (two feeds of the same examples) computes the flip itself.
    let general = compute(
        KernelKind::AsymSignGd,
        &s.km,
        &s.train,
        &s.again,
        true,
        4,
        false,
    )
    .unwrap();
    let fl = general.flipped.as_ref().unwrap();
    for i in 0..n {
        for x in 0..n {
            let (f, k) = (fl[i * n + x], general.values[x * n + i]);
            assert!(
                (f - k).abs() <= 1e-12 * k.abs().max(1.0),
                "flipped[{i},{x}] = {f}, K[{x},{i}] = {k}"
            );
        }
    }
    let same1 = kernel(&s, KernelKind::AsymSignGd, true, 1, true);
    assert_close(&same1.values, &general.values, 1e-3, "asym block=1 vs 4");
    // The symmetric path (one feed: diagonal blocks reused, lower blocks mirrored) gives what
    // the general path computes, for every kernel, binary and 3-class.
    for (setup, binary) in [(&s, true), (&s3, false)] {
        for kind in [KernelKind::Sgd, KernelKind::SignGd, KernelKind::AsymSignGd] {
            if kind == KernelKind::AsymSignGd && !binary {
                continue;
            }
            let g = compute(
                kind,
                &setup.km,
                &setup.train,
                &setup.again,
                binary,
                4,
                false,
            )
            .unwrap();
            let m = compute(
                kind,
                &setup.km,
                &setup.train,
                &setup.train,
                binary,
                4,
                false,
            )
            .unwrap();
            assert_close(&m.values, &g.values, 1e-12, &format!("{kind:?} symmetric"));
            assert_eq!(m.flipped.is_some(), kind == KernelKind::AsymSignGd);
            if let (Some(a), Some(b)) = (&m.flipped, &g.flipped) {
                assert_close(a, b, 1e-12, "flipped symmetric");
            }
            assert_eq!((&m.train_f0, &m.eval_f0), (&g.train_f0, &g.eval_f0));
        }
    }
}

#[test]
fn a_lora_selection_is_refused_with_a_hint() {
    let t = tempfile::tempdir().unwrap();
    let Some(dir) = tiny_bert(&t.path().join("bert"), 2) else {
        return;
    };
    let pm = ProbedModel::load(&dir, &Device::Cpu).unwrap();
    let e = KernelModel::new(pm, None, "lora").err().unwrap();
    assert_eq!(e.code, "smelt::run::kernel");
    assert!(e.help.unwrap().contains("apply"));
}

#[test]
fn kernel_sgd_runs_through_the_language_and_loads_back() {
    use smelt::diag::render_all;
    use smelt::run::{run, RunOptions};
    use smelt::session::Session;
    use smelt::tensors::matrix::Matrix;
    let Some(lm) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let opts = RunOptions {
        store: store.clone(),
        out: t.path().join("runs"),
        ..Default::default()
    };
    let program = format!(
        "config {{ seed: 3 }}\n\
         let lm = load model(\"{}\")\n\
         let movies = load task(\"{}\")\n\
         let few = data kshot(movies, k=2, seed=13)\n\
         let k = kernel sgd(lm, few, few, split=train, head=prompt, block=3)\n\
         let s = kernel asym_signgd(lm, few, few, split=dev, head=prompt, params=biases)\n",
        lm.display(),
        root().join("experiments/data/movies").display()
    );
    let file = t.path().join("k.exp");
    std::fs::write(&file, &program).unwrap();
    let mut sess = Session::new();
    let out = match run(&mut sess, &file, &opts) {
        Ok(o) => o,
        Err(d) => panic!("run failed:\n{}", render_all(&d, &sess.sources, false, 100)),
    };
    let st = smelt::cache::Store::open(&store).unwrap();
    let node = |op: &str| out.nodes.iter().find(|n| n.op == op).unwrap().key;
    let dir = st.object_dir(&node("kernel.sgd")).join("matrix");
    let m = Matrix::read(&dir).unwrap();
    assert_eq!(m.what, "kernel.sgd");
    assert_eq!(m.shape, vec![4, 1, 4, 1]);
    assert_eq!(
        m.axes.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["train", "class", "eval", "class"]
    );
    let d = m.meta["D"].as_u64().unwrap();
    assert!(
        (8_000_000..9_000_000).contains(&d),
        "D = {d}: every parameter of the encoder"
    );
    symmetric_psd(&m.values, 4);
    let labels = &m.extra["train_labels"].1;
    assert_eq!(labels.iter().filter(|&&y| y == 1.0).count(), 2);
    assert!(labels.iter().all(|&y| y == 1.0 || y == -1.0));
    let a = Matrix::read(&st.object_dir(&node("kernel.asym_signgd")).join("matrix")).unwrap();
    assert_eq!(a.meta["params"], "biases");
    assert_eq!(a.extra["flipped"].0, vec![4, 1, 4, 1]);
    // `load kernel` of the stored directory through the language.
    let again = t.path().join("l.exp");
    std::fs::write(
        &again,
        format!("let k = load kernel(\"{}\")\n", dir.display()),
    )
    .unwrap();
    let mut sess = Session::new();
    if let Err(d) = run(&mut sess, &again, &opts) {
        panic!(
            "load failed:\n{}",
            render_all(&d, &sess.sources, false, 100)
        );
    }
    // Refused before any tensor is read: a multi-class asymmetric kernel, `params=lora`.
    for (call, said) in [
        (
            "kernel asym_signgd(lm, movies, movies, binary=false)",
            "binary task",
        ),
        (
            "kernel sgd(lm, movies, movies, params=lora)",
            "LoRA factors",
        ),
    ] {
        let bad = t.path().join("bad.exp");
        let text = format!(
            "let lm = load model(\"{}\")\nlet movies = load task(\"{}\")\nlet k = {call}\n",
            lm.display(),
            root().join("experiments/data/movies").display()
        );
        std::fs::write(&bad, text).unwrap();
        let mut sess = Session::new();
        let Err(d) = run(&mut sess, &bad, &opts) else {
            panic!("`{call}` should be refused")
        };
        let text = render_all(&d, &sess.sources, false, 100);
        assert!(
            text.contains(said) && text.contains("smelt::run::kernel"),
            "{text}"
        );
    }
}
