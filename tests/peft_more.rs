//! Prefix tuning and quantized (QLoRA-style) bases on the real small encoder
//! (`assets/models/minilm-l3-v8k`, 3-layer BERT) and a tiny synthetic GQA Llama, on CPU.
//!
//! Prefix: seeded init, a non-zero gradient for every prefix var (encoder and decoder, with and
//! without the MLP), save → load identical logits (with smelt's MLP file and with PEFT's computed
//! `prompt_embeddings` alone), removal restores the base, a short run lowers a toy loss.
//! Quantization: NF4/int8 logits close to f32 (max differences printed), storage bytes, LoRA and
//! bottleneck adapters on a quantized base (gradients reach them and never the frozen weights),
//! merged ≡ unmerged, and a short QLoRA run lowers a toy loss. Tests needing the model skip when
//! it is absent.

use candle_core::{Device, Tensor, Var};
use smelt::nn::peft::prefix::ENCODER_FILE;
use smelt::nn::peft::{AdapterConfig, Adapters, Lora, LoraConfig, Prefix, PrefixConfig};
use smelt::nn::quant::{quantize_model, QuantBits};
use smelt::nn::{llama, load, weights, ArchConfig, Batch, LoadedModel, Model, Weights};
use smelt::train::{Optimizer, OptimizerConfig};
use std::path::PathBuf;

fn model() -> Option<LoadedModel> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/models/minilm-l3-v8k");
    if !dir.is_dir() {
        eprintln!("skipping: {} absent", dir.display());
        return None;
    }
    Some(load(&dir, &Device::Cpu).unwrap())
}

/// A 3-layer Llama with grouped-query attention (4 query heads, 2 KV heads), untied LM head.
fn tiny_llama() -> LoadedModel {
    let cfg = r#"{"model_type":"llama","vocab_size":40,"hidden_size":32,"intermediate_size":48,
        "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
        "rope_theta":10000.0,"tie_word_embeddings":false,"max_position_embeddings":64}"#;
    let config = ArchConfig::from_json(cfg, "tiny/config.json").unwrap();
    let ArchConfig::Llama(c) = &config else {
        panic!()
    };
    let map = weights::synthetic(&llama::checkpoint_shapes(c), 11, &Device::Cpu).unwrap();
    let lm = llama::LlamaModel::load(&mut Weights::from_map(map, &Device::Cpu), c).unwrap();
    LoadedModel {
        dir: PathBuf::from("<tiny>"),
        config,
        model: Model::Llama(lm),
        tokenizer: None,
    }
}

fn batch(m: &LoadedModel) -> Batch {
    let texts = [
        ("a gorgeous, witty film", None),
        ("dull and far too long .", Some("no")),
    ];
    m.tokenizer()
        .unwrap()
        .encode_batch(&texts, &Device::Cpu)
        .unwrap()
}

fn hidden(m: &LoadedModel, b: &Batch) -> Tensor {
    m.forward(&b.ids, Some(&b.type_ids), Some(&b.attention_mask))
        .unwrap()
}

fn llama_logits(m: &LoadedModel) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 9, 3, 0], [2, 4, 6, 8, 10]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 0], [1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    m.forward(&ids, None, Some(&mask)).unwrap()
}

/// Seeded `N(0, std²)` values (no global RNG, so runs are reproducible).
fn seeded(shape: &[usize], std: f64, seed: u64) -> Tensor {
    let map = weights::synthetic(&[("x".into(), shape.to_vec())], seed, &Device::Cpu).unwrap();
    (map["x"].clone() * (std / 0.05)).unwrap()
}

/// Median wall time of `n` runs of `f`.
fn median_time(n: usize, mut f: impl FnMut()) -> std::time::Duration {
    let mut t: Vec<_> = (0..n)
        .map(|_| {
            let t0 = std::time::Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

fn sum(t: &Tensor) -> f32 {
    t.sum_all().unwrap().to_scalar::<f32>().unwrap()
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    sum(&(a * b).unwrap()) / (sum(&a.sqr().unwrap()) * sum(&b.sqr().unwrap())).sqrt()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    smelt::nn::ops::max_abs_diff(a, b).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Asserts every var has a finite non-zero gradient in `loss.backward()`.
fn assert_all_get_gradients(named: &[(String, Var)], loss: &Tensor) {
    let grads = loss.backward().unwrap();
    for (name, v) in named {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let n = g.abs().unwrap().sum_all().unwrap();
        let n = n.to_scalar::<f32>().unwrap();
        assert!(n > 0.0 && n.is_finite(), "{name}: |grad| = {n}");
    }
}

fn probe_loss(h: &Tensor) -> Tensor {
    let probe = seeded(h.dims(), 1.0, 99);
    (h * probe).unwrap().sum_all().unwrap()
}

#[test]
fn prefix_init_is_deterministic_by_seed_and_removable() {
    let Some(mut m) = model() else { return };
    let b = batch(&m);
    let base = hidden(&m, &b);
    let cfg = PrefixConfig {
        seed: 5,
        ..Default::default()
    };
    assert_eq!((cfg.num_virtual_tokens, cfg.projection), (20, true));
    let p = Prefix::inject(&mut m, &cfg).unwrap();
    let shapes: Vec<Vec<usize>> = p.vars().iter().map(|v| v.dims().to_vec()).collect();
    let want = [
        vec![20, 384],
        vec![384, 384],
        vec![384],
        vec![2304, 384],
        vec![2304],
    ];
    assert_eq!(shapes, want);
    assert_eq!((p.num_layers, p.num_heads, p.token_dim), (3, 12, 384));
    let mut m2 = model().unwrap();
    let p2 = Prefix::inject(&mut m2, &cfg).unwrap();
    for (a, b) in p.vars().iter().zip(p2.vars()) {
        assert_eq!(values(a), values(&b));
    }
    let mut m3 = model().unwrap();
    let p3 = Prefix::inject(
        &mut m3,
        &PrefixConfig {
            seed: 6,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(values(&p.vars()[0]), values(&p3.vars()[0]));
    let with = hidden(&m, &b);
    assert!(max_diff(&with, &base) > 1e-3, "the prefix changes nothing");
    assert_eq!(max_diff(&with, &hidden(&m2, &b)), 0.0);
    let again = Prefix::inject(&mut m, &cfg).unwrap_err();
    assert_eq!(again.code, "smelt::peft::already_injected");
    p.remove(&mut m);
    assert_eq!(max_diff(&base, &hidden(&m, &b)), 0.0);
    let zero = PrefixConfig {
        num_virtual_tokens: 0,
        ..cfg
    };
    assert_eq!(
        Prefix::inject(&mut m, &zero).unwrap_err().code,
        "smelt::peft::bad_config"
    );
}

#[test]
fn every_prefix_var_gets_a_gradient_in_the_encoder() {
    for projection in [true, false] {
        let Some(mut m) = model() else { return };
        let b = batch(&m);
        let cfg = PrefixConfig {
            num_virtual_tokens: 4,
            projection,
            encoder_hidden: Some(16),
            seed: 1,
        };
        let p = Prefix::inject(&mut m, &cfg).unwrap();
        assert_eq!(p.vars().len(), if projection { 5 } else { 1 });
        let loss = probe_loss(&hidden(&m, &b));
        assert_all_get_gradients(&p.named_vars(), &loss);
        let grads = loss.backward().unwrap();
        for (name, lin) in m.linears_mut() {
            assert!(grads.get(&lin.weight).is_none(), "{name} got a gradient");
        }
    }
}

#[test]
fn every_prefix_var_gets_a_gradient_in_a_gqa_decoder() {
    for projection in [true, false] {
        let mut m = tiny_llama();
        let cfg = PrefixConfig {
            num_virtual_tokens: 3,
            projection,
            ..Default::default()
        };
        let p = Prefix::inject(&mut m, &cfg).unwrap();
        // PEFT's GQA rule: heads = num_key_value_heads, token_dim = heads · head_dim.
        assert_eq!((p.num_heads, p.head_dim, p.token_dim), (2, 8, 16));
        assert_eq!(p.encoder_hidden, 16);
        let logits = llama_logits(&m);
        let loss = candle_nn::ops::log_softmax(&logits, 2).unwrap();
        let loss = loss.narrow(2, 7, 1).unwrap().sum_all().unwrap();
        assert_all_get_gradients(&p.named_vars(), &loss);
    }
}

#[test]
fn prefix_save_load_gives_identical_logits() {
    let Some(mut m) = model() else { return };
    let b = batch(&m);
    let mut p = Prefix::inject(&mut m, &PrefixConfig::default()).unwrap();
    // One optimiser step so the saved prefix is not the init.
    let mut opt = Optimizer::new(OptimizerConfig::adamw(1e-2), p.vars()).unwrap();
    opt.step_store(&probe_loss(&hidden(&m, &b)).backward().unwrap(), 1e-2)
        .unwrap();
    let head = Var::from_tensor(&seeded(&[2, 384], 0.1, 7)).unwrap();
    p.add_module_to_save("classifier.weight", &head).unwrap();
    let want = hidden(&m, &b);
    let d = tempfile::tempdir().unwrap();
    p.save_adapter(d.path()).unwrap();
    let cfg = smelt::nn::peft::io::read_json(&d.path().join("adapter_config.json")).unwrap();
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 20);
    assert_eq!(cfg["token_dim"], 384);
    assert_eq!(cfg["num_layers"], 3);
    assert_eq!(cfg["num_attention_heads"], 12);
    assert_eq!(cfg["num_transformer_submodules"], 1);
    assert_eq!(cfg["encoder_hidden_size"], 384);
    assert_eq!(cfg["prefix_projection"], true);
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    let t = smelt::nn::peft::io::read_safetensors(
        &d.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(t["prompt_embeddings"].dims(), &[20, 2304]);
    assert!(t.contains_key("base_model.model.classifier.weight"));

    // smelt's reload: the MLP comes back (trainable, same var layout).
    let mut m2 = model().unwrap();
    let p2 = Prefix::load_adapter(&mut m2, d.path()).unwrap();
    assert!(p2.config.projection && p2.vars().len() == 6);
    assert_eq!(max_diff(&want, &hidden(&m2, &b)), 0.0);
    assert_eq!(
        values(p2.extra("classifier.weight").unwrap()),
        values(&head)
    );

    // PEFT's file alone: the computed prefix, no MLP (PEFT's inference mode).
    std::fs::remove_file(d.path().join(ENCODER_FILE)).unwrap();
    let mut m3 = model().unwrap();
    let p3 = Prefix::load_adapter(&mut m3, d.path()).unwrap();
    assert!(!p3.config.projection);
    assert_eq!(max_diff(&want, &hidden(&m3, &b)), 0.0);

    // A prefix for another geometry is refused.
    let mut lm = tiny_llama();
    let e = Prefix::load_adapter(&mut lm, d.path()).unwrap_err();
    assert_eq!(e.code, "smelt::peft::shape");
}

#[test]
fn decoder_prefix_save_load_and_padding() {
    let mut m = tiny_llama();
    let cfg = PrefixConfig {
        num_virtual_tokens: 5,
        projection: false,
        ..Default::default()
    };
    let p = Prefix::inject(&mut m, &cfg).unwrap();
    let want = llama_logits(&m);
    // Right padding leaves the real rows alone (the prefix columns are open to every query).
    let short = Tensor::new(&[[1u32, 5, 9, 3]], &Device::Cpu).unwrap();
    let s = m.forward(&short, None, None).unwrap();
    let row0 = want.narrow(0, 0, 1).unwrap().narrow(1, 0, 4).unwrap();
    assert!(max_diff(&s, &row0) < 1e-5);
    let d = tempfile::tempdir().unwrap();
    p.save_adapter(d.path()).unwrap();
    assert!(!d.path().join(ENCODER_FILE).exists());
    let mut m2 = tiny_llama();
    Prefix::load_adapter(&mut m2, d.path()).unwrap();
    assert_eq!(max_diff(&want, &llama_logits(&m2)), 0.0);
    // 64 positions: 60 tokens + 5 prefix do not fit.
    let long = Tensor::zeros((1, 60), candle_core::DType::U32, &Device::Cpu).unwrap();
    let e = m2.forward(&long, None, None).unwrap_err();
    assert_eq!(e.code, "smelt::model::sequence_too_long");
}

/// Mean squared distance of the `[CLS]` states from a fixed target.
fn toy_loss(m: &LoadedModel, b: &Batch, target: &Tensor) -> Tensor {
    let cls = hidden(m, b).narrow(1, 0, 1).unwrap();
    cls.broadcast_sub(target)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
}

fn train_steps(m: &LoadedModel, vars: Vec<Var>, lr: f64, steps: usize) -> (f32, f32) {
    let b = batch(m);
    let target = seeded(&[1, 1, 384], 1.0, 8);
    let mut opt = Optimizer::new(OptimizerConfig::adamw(lr), vars).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = toy_loss(m, &b, &target);
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step_store(&loss.backward().unwrap(), lr).unwrap();
    }
    let last = toy_loss(m, &b, &target).to_scalar::<f32>().unwrap();
    (losses[0], last)
}

#[test]
fn prefix_training_lowers_a_toy_loss() {
    let Some(mut m) = model() else { return };
    let cfg = PrefixConfig {
        num_virtual_tokens: 8,
        ..Default::default()
    };
    let p = Prefix::inject(&mut m, &cfg).unwrap();
    let (first, last) = train_steps(&m, p.vars(), 1e-2, 12);
    eprintln!("prefix toy loss {first:.4} -> {last:.4}");
    assert!(last < 0.9 * first, "{first} -> {last}");
}

#[test]
fn quantized_logits_stay_close_to_f32() {
    let Some(base) = model() else { return };
    let b = batch(&base);
    let f32_out = hidden(&base, &b);
    let f32_time = median_time(5, || drop(hidden(&base, &b)));
    eprintln!("f32 forward (batch 2): {f32_time:?}");
    let scale = f32_out.abs().unwrap().max_all().unwrap();
    let scale = scale.to_scalar::<f32>().unwrap();
    for (bits, bound, min_cos) in [
        (QuantBits::Nf4, 0.25f32, 0.98),
        (QuantBits::Int8, 0.02, 0.999),
    ] {
        let mut m = base.clone();
        let s = quantize_model(&mut m, bits).unwrap();
        assert_eq!(
            s.layers, 18,
            "3 layers × 6 projections, pooler/heads excluded"
        );
        assert_eq!(s.f32_bytes, 4 * s.params);
        let q_out = hidden(&m, &b);
        let dt = median_time(5, || drop(hidden(&m, &b)));
        let d = max_diff(&f32_out, &q_out);
        let cos = cosine(&f32_out, &q_out);
        eprintln!(
            "{}: {} params in {} B (f32 {} B, ratio {:.3}); last hidden max |Δ| = {d:.4} \
             (max |h| = {scale:.2}), cosine {cos:.6}; forward {dt:?}",
            bits.name(),
            s.params,
            s.quant_bytes,
            s.f32_bytes,
            s.quant_bytes as f64 / s.f32_bytes as f64
        );
        assert!(d < bound * scale, "{}: max diff {d}", bits.name());
        assert!(cos > min_cos, "{}: cosine {cos}", bits.name());
        let e = quantize_model(&mut m, bits).unwrap_err();
        assert_eq!(e.code, "smelt::quant::already_quantized");
    }
    let mut lm = tiny_llama();
    let s = quantize_model(&mut lm, QuantBits::Nf4).unwrap();
    assert_eq!(s.layers, 21, "3 layers × 7 projections, lm_head excluded");
    // per layer: q, o 32×32; k, v 16×32; gate, up, down 48×32
    assert_eq!(s.params, 3 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 48 * 32));
}

#[test]
fn lora_on_a_quantized_base_trains_only_the_factors() {
    let Some(mut m) = model() else { return };
    let b = batch(&m);
    quantize_model(&mut m, QuantBits::Nf4).unwrap();
    let cfg = LoraConfig {
        seed: 2,
        ..LoraConfig::new(4, 8.0, &["query", "value", "output.dense"])
    };
    let mut lora = Lora::inject(m.linears_mut(), &cfg).unwrap();
    for (i, md) in lora.modules.iter().enumerate() {
        md.b.set(&seeded(md.b.dims(), 0.05, 100 + i as u64))
            .unwrap();
    }
    let loss = probe_loss(&hidden(&m, &b));
    assert_all_get_gradients(&lora.named_vars(), &loss);
    let grads = loss.backward().unwrap();
    for (name, lin) in m.linears_mut() {
        assert!(grads.get(&lin.weight).is_none(), "{name}: frozen weight");
        if lin.lora.is_some() {
            assert!(lin.quant.is_some(), "{name} is not quantized");
            // Linear::merged is dense: merged ≡ unmerged to f32 rounding.
            let x = seeded(&[3, lin.in_dim()], 1.0, 9);
            let d = max_diff(
                &lin.forward(&x).unwrap(),
                &lin.merged().unwrap().forward(&x).unwrap(),
            );
            assert!(d < 1e-4, "{name}: merged vs unmerged {d}");
        }
    }
    // Lora::merge re-quantizes the merged weight (as PEFT on 4-bit layers): close, not exact.
    let unmerged = hidden(&m, &b);
    lora.merge(m.linears_mut()).unwrap();
    let merged = hidden(&m, &b);
    let d = max_diff(&unmerged, &merged);
    eprintln!("NF4 LoRA merge (re-quantized) vs unmerged: max |Δ| = {d:.4}");
    assert!(m.linears_mut().iter().all(|(_, l)| l.lora.is_none()));
    assert!(d < 1.0, "{d}");
}

#[test]
fn bottleneck_adapters_on_an_int8_base_get_gradients() {
    let Some(mut m) = model() else { return };
    let b = batch(&m);
    quantize_model(&mut m, QuantBits::Int8).unwrap();
    let ad = Adapters::inject(m.linears_mut(), &AdapterConfig::houlsby(8)).unwrap();
    let loss = probe_loss(&hidden(&m, &b));
    assert_all_get_gradients(&ad.named_vars(), &loss);
}

#[test]
fn qlora_training_lowers_a_toy_loss() {
    let Some(mut dense) = model() else { return };
    let mut m = dense.clone();
    let s = quantize_model(&mut m, QuantBits::Nf4).unwrap();
    let cfg = LoraConfig::new(8, 16.0, &["query", "value"]);
    let lora = Lora::inject(m.linears_mut(), &cfg).unwrap();
    let t0 = std::time::Instant::now();
    let (first, last) = train_steps(&m, lora.vars(), 1e-2, 12);
    let q_step = t0.elapsed() / 12;
    let lora32 = Lora::inject(dense.linears_mut(), &cfg).unwrap();
    let t0 = std::time::Instant::now();
    let (first32, last32) = train_steps(&dense, lora32.vars(), 1e-2, 12);
    eprintln!(
        "QLoRA (NF4, {} B frozen): toy loss {first:.4} -> {last:.4}, {q_step:?}/step; \
         f32 LoRA: {first32:.4} -> {last32:.4}, {:?}/step",
        s.quant_bytes,
        t0.elapsed() / 12
    );
    assert!(last < 0.9 * first, "{first} -> {last}");
}
