//! `bench_train [--steps N] [--warmup N] [--model small|smollm2|all]`: forward and LoRA
//! training throughput on CPU, to compare with PyTorch (`benches/pytorch_train.py`).
//!
//! For each model, at batch 8 × 128 tokens, prints (a) forward tokens/s of the frozen base
//! model (encoder: last hidden state; decoder: full-sequence logits), (b) LoRA training
//! tokens/s — r = 8, α = 16, no dropout, on `query`/`value` (BERT family) or `q_proj`/`v_proj`
//! (Llama), AdamW (lr 1e-4), one forward + backward + update per step; the encoder's loss is
//! cross-entropy of a 2-class head on the `[CLS]` hidden state, the decoder's is next-token
//! cross-entropy over the sequence — and (c) the peak RSS of the process (VmHWM, reset just
//! before the model is loaded). Each phase runs `--warmup` untimed steps (default 2), then
//! `--steps` timed ones (default 5); tokens/s counts every input token (8 × 128 per step).
//!
//! Models: the committed `assets/models/minilm-l3-v8k` (`small`) and SmolLM2-135M (`smollm2`,
//! read from `$SMELT_SMOLLM2`, else `../shared/smollm2`; skipped with a message when absent —
//! build it with `shared/assets/scripts/get-smollm2.sh DIR f16`). Token ids are synthetic:
//! a xorshift64 stream with a fixed seed (the PyTorch script draws the same ids), so the
//! figures measure compute, not tokenisation. For a clean per-model peak RSS, run one model
//! per process.

use candle_core::{Device, Tensor, D};
use smelt::bench::{main_with, reset_peak_rss, status_mb};
use smelt::diag::OpError;
use smelt::nn::peft::{Lora, LoraConfig};
use smelt::nn::{load, LoadedModel, Model};
use smelt::train::classify::{cross_entropy, ClsHead};
use smelt::train::{Optimizer, OptimizerConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

const BATCH: usize = 8;
const SEQ: usize = 128;
const RANK: usize = 8;
const ALPHA: f64 = 16.0;
const LR: f64 = 1e-4;
const SEED: u64 = 0x005E_ED0F_5E17;
/// Ids are drawn from `LOW_ID..vocab`, clear of both vocabularies' special tokens.
const LOW_ID: u64 = 1000;

/// `[BATCH, SEQ]` u32 ids from a seeded xorshift64 stream (mirrored in `pytorch_train.py`).
fn synthetic_ids(vocab: usize, device: &Device) -> Result<Tensor, OpError> {
    let mut state = SEED;
    let span = vocab as u64 - LOW_ID;
    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (LOW_ID + (state >> 11) % span) as u32
        })
        .collect();
    Ok(Tensor::from_vec(ids, (BATCH, SEQ), device)?)
}

/// Runs `warmup` untimed then `steps` timed calls of `f`; returns (tokens/s overall, best s/step).
fn timed(
    warmup: usize,
    steps: usize,
    mut f: impl FnMut() -> Result<(), OpError>,
) -> Result<(f64, f64), OpError> {
    for _ in 0..warmup {
        f()?;
    }
    let mut best = f64::INFINITY;
    let all = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let total = all.elapsed().as_secs_f64();
    Ok(((steps * BATCH * SEQ) as f64 / total, best))
}

/// Mean next-token cross-entropy of logits `[B, T, V]` against `ids [B, T]`.
fn next_token_loss(logits: &Tensor, ids: &Tensor) -> Result<Tensor, OpError> {
    let (b, t, v) = logits.dims3()?;
    let pred = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let gold: Vec<u32> = ids.narrow(1, 1, t - 1)?.flatten_all()?.to_vec1()?;
    Ok(cross_entropy(&pred, &gold)?.mean(D::Minus1)?)
}

fn bench(name: &str, dir: &Path, warmup: usize, steps: usize) -> Result<(), OpError> {
    let device = Device::Cpu;
    reset_peak_rss();
    let t = Instant::now();
    let mut m: LoadedModel = load(dir, &device)?;
    println!(
        "{name} ({}, {}): loaded in {:.2} s, RSS {:.0} MB",
        m.config.name(),
        dir.display(),
        t.elapsed().as_secs_f64(),
        status_mb("VmRSS:")
    );
    let ids = synthetic_ids(m.config.vocab_size(), &device)?;

    let (fwd_tps, fwd_best) = timed(warmup, steps, || {
        m.forward(&ids, None, None)?;
        Ok(())
    })?;
    println!("  forward: {fwd_tps:.0} tokens/s (best step {fwd_best:.3} s; batch {BATCH} x {SEQ})");

    let targets: &[&str] = match m.model {
        Model::Bert(_) => &["query", "value"],
        Model::Llama(_) => &["q_proj", "v_proj"],
    };
    let lora = Lora::inject(m.linears_mut(), &LoraConfig::new(RANK, ALPHA, targets))?;
    lora.set_training(true);
    let mut vars = lora.vars();
    let mut train_step: Box<dyn FnMut() -> Result<Tensor, OpError>> = match &m.model {
        Model::Bert(bert) => {
            let head = ClsHead::new(bert.config.hidden_size, 2, 0, &device)?;
            vars.extend(head.vars());
            let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();
            Box::new(move || {
                let cls = bert
                    .forward(&ids, None, None)?
                    .narrow(1, 0, 1)?
                    .squeeze(1)?;
                Ok(cross_entropy(&head.forward(&cls)?, &labels)?.mean(0)?)
            })
        }
        Model::Llama(lm) => Box::new(|| next_token_loss(&lm.forward(&ids, None)?, &ids)),
    };
    let trainable: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = Optimizer::new(OptimizerConfig::adamw(LR), vars)?;
    let mut last_loss = f32::NAN;
    let (train_tps, train_best) = timed(warmup, steps, || {
        let loss = train_step()?;
        let grads = loss.backward()?;
        opt.step_store(&grads, LR)?;
        last_loss = loss.to_scalar::<f32>()?;
        Ok(())
    })?;
    println!(
        "  LoRA r={RANK} {targets:?} + AdamW: {train_tps:.0} training tokens/s (best step {train_best:.3} s; \
         {} modules, {trainable} trainable params; last loss {last_loss:.4})",
        lora.modules.len()
    );
    println!("  peak RSS {:.0} MB", status_mb("VmHWM:"));
    println!(
        "RESULT smelt {name} forward_tok_s={fwd_tps:.0} train_tok_s={train_tps:.0} peak_rss_mb={:.0}",
        status_mb("VmHWM:")
    );
    Ok(())
}

fn smollm2_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SMELT_SMOLLM2").map(PathBuf::from),
        Some(PathBuf::from("../shared/smollm2")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("config.json").is_file())
}

fn parse_count(flag: &str, v: Option<&String>) -> Result<usize, OpError> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| OpError::msg(format!("{flag} needs a non-negative integer")))
}

fn run() -> Result<(), OpError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut steps, mut warmup, mut which) = (5usize, 2usize, "all".to_string());
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" => steps = parse_count("--steps", args.get(i + 1))?,
            "--warmup" => warmup = parse_count("--warmup", args.get(i + 1))?,
            "--model" => which = args.get(i + 1).cloned().unwrap_or_default(),
            other => {
                return Err(OpError::msg(format!(
                    "unknown argument `{other}` (usage: bench_train [--steps N] [--warmup N] \
                     [--model small|smollm2|all])"
                )))
            }
        }
        i += 2;
    }
    if steps == 0 {
        return Err(OpError::msg("--steps must be at least 1"));
    }
    if !matches!(which.as_str(), "small" | "smollm2" | "all") {
        return Err(OpError::msg(format!(
            "--model must be small, smollm2 or all, got `{which}`"
        )));
    }
    println!(
        "bench_train: batch {BATCH} x {SEQ} synthetic tokens (xorshift64 seed {SEED:#x}), \
         {warmup} warm-up + {steps} timed steps, CPU"
    );
    if which != "smollm2" {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/minilm-l3-v8k");
        bench("small", &dir, warmup, steps)?;
    }
    if which != "small" {
        match smollm2_dir() {
            Some(dir) => bench("smollm2", &dir, warmup, steps)?,
            None => println!(
                "smollm2: skipped (set SMELT_SMOLLM2=DIR or build ../shared/smollm2 with \
                 shared/assets/scripts/get-smollm2.sh DIR f16)"
            ),
        }
    }
    Ok(())
}

fn main() {
    main_with(run);
}
