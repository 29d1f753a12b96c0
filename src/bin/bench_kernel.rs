//! `bench_kernel [--k 16] [--seed 13] [--eval train|test] [--eval-n N] [--kind sgd|signgd|asym]
//! [--params all] [--block 8] [--device cpu|cuda] [--data DIR] [--model DIR]`: empirical-NTK
//! throughput and memory.
//!
//! Computes `kernel <kind>` of the committed encoder (`assets/models/minilm-l3-v8k`, prompt
//! format: SST-2's LM-BFF template `*cls**sent_0*_It_was*mask*.*sep+*`, label words
//! terrible/great, tied MLM decoder, binary `f₁ − f₀`) between the K-shot training split
//! `k-shot/<k>-<seed>` of SST-2 (2K examples) and either itself (`--eval train`, the training
//! kernel, computed as a symmetric problem) or the first `--eval-n` examples of the test
//! split. Prints the kernel entries per second (`N_train · N_X` with C = 1, wall time of the
//! whole block loop, Jacobians included)
//! and the peak RSS of the process (VmHWM, reset just before the model is loaded). Task data
//! are read from `--data` (default `$SMELT_DATA`, else `../shared/assets/tasks`) and never
//! copied.

use smelt::bench::{main_with, reset_peak_rss, status_mb};
use smelt::data::{ReadOptions, TaskData};
use smelt::diag::OpError;
use smelt::ops::estimate::ProbedModel;
use smelt::ops::kernel::{compute, KernelKind, KernelModel};
use smelt::train::feed::{Feed, FormatSpec};
use std::path::PathBuf;
use std::time::Instant;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn usage(m: String) -> OpError {
    OpError::new("smelt::bench::usage", m)
}

fn main() {
    main_with(run)
}

fn run() -> Result<(), OpError> {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var("SMELT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/assets/tasks"));
    let data = PathBuf::from(arg(&args, "--data", &data.display().to_string()));
    let model = arg(
        &args,
        "--model",
        &root
            .join("assets/models/minilm-l3-v8k")
            .display()
            .to_string(),
    );
    let k = arg(&args, "--k", "16");
    let seed = arg(&args, "--seed", "13");
    let eval_split = arg(&args, "--eval", "train");
    let num = |name: &str, d: &str| -> Result<usize, OpError> {
        arg(&args, name, d)
            .parse()
            .map_err(|_| usage(format!("{name} takes a positive integer")))
    };
    let (eval_n, block) = (num("--eval-n", "128")?, num("--block", "8")?);
    let kind = match arg(&args, "--kind", "sgd").as_str() {
        "sgd" => KernelKind::Sgd,
        "signgd" => KernelKind::SignGd,
        "asym" | "asym_signgd" => KernelKind::AsymSignGd,
        other => return Err(usage(format!("unknown kernel `{other}`"))),
    };
    let params = arg(&args, "--params", "all");
    let device = smelt::session::device(&arg(&args, "--device", "cpu"))
        .map_err(|d| usage(format!("device: {}", d.message)))?;

    let opts = ReadOptions {
        train: format!("k-shot/{k}-{seed}"),
        ..ReadOptions::default()
    };
    let task = TaskData::open(&data.join("sst2"), &opts)?;
    reset_peak_rss();
    let rss0 = status_mb("VmRSS:");
    let pm = ProbedModel::load(std::path::Path::new(&model), &device)?;
    let spec = FormatSpec::resolve(&pm.lm, &task, "prompt", None, None, 128)?;
    let train = Feed::new(&pm.lm, &spec, &task, task.train())?;
    let eval_examples = match eval_split.as_str() {
        "train" => task.train(),
        "test" => &task.split("test")[..eval_n.min(task.split("test").len())],
        other => return Err(usage(format!("--eval train|test, not `{other}`"))),
    };
    let eval = match eval_split.as_str() {
        "train" => None,
        _ => Some(Feed::new(&pm.lm, &spec, &task, eval_examples)?),
    };
    let eval = eval.as_ref().unwrap_or(&train);
    let km = KernelModel::new(pm, None, &params)?;
    let start = Instant::now();
    let kv = compute(kind, &km, &train, eval, true, block, false)?;
    let secs = start.elapsed().as_secs_f64();
    let entries = (train.len() * eval.len()) as f64;
    let trace: f64 = match eval_split.as_str() {
        "train" => (0..train.len())
            .map(|i| kv.values[i * train.len() + i])
            .sum(),
        _ => f64::NAN,
    };
    println!(
        "kernel {} sst2 K={k} seed={seed} params={params} D={} block={block} device={:?}",
        match kind {
            KernelKind::Sgd => "sgd",
            KernelKind::SignGd => "signgd",
            KernelKind::AsymSignGd => "asym_signgd",
        },
        km.params(),
        km.pm.lm.device().location(),
    );
    println!(
        "  N_train={} N_X={} ({eval_split}) entries={entries} seconds={secs:.2} entries/s={:.1} \
         trace={trace:.4e}",
        train.len(),
        eval.len(),
        entries / secs,
    );
    println!(
        "  peak RSS {:.0} MB (RSS before loading {rss0:.0} MB)",
        status_mb("VmHWM:")
    );
    Ok(())
}
