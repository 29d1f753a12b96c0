//! `similarity grand(deltas, tasks, batches=10, batch=50)`: paper 2's GraNd score
//! (methods.md §2.5).
//!
//! `s_ij = Σ_{b=1..B} ‖∇_δ L_b‖₂`: source delta `j` on the base, `L_b` the mean training loss
//! of target `i`'s `b`-th dev batch (the first `batches` batches of `batch` examples, in file
//! order; fewer when the split is shorter), the gradient taken over every parameter of the
//! delta (heads excluded). `batch=1` gives the classic per-example GraNd. Lower = more similar:
//! `sign=negative`, τ = 0.1.
//!
//! Mode. The paper runs the model in train mode (dropout on), which makes the score random.
//! Default here: `mode=eval` — no dropout, deterministic. `mode=train` switches on the delta's
//! own dropout (LoRA `lora_dropout`, bottleneck `dropout`; the base models here have no dropout
//! path, and prefixes none). Its stream is re-seeded from the node seed and the source index
//! (the delta is re-installed with that seed and its loaded values copied in), so the score is
//! reproducible and changes with `config { seed }`; with a dropout of 0 both modes agree.

use super::granular::{self, GRANULARITIES};
use super::{delta_of, format_for, named_vars, overrides, p_sign, p_temperature, Pairs};
use super::{FORMAT_PARAMS, P_ADAPTERS, P_SPLIT, P_TASKS};
use crate::data::TaskData;
use crate::diag::OpError;
use crate::nn::peft::{AdapterConfig, Adapters, Lora, LoraConfig};
use crate::ops::evaluate::Overrides;
use crate::ops::train::runnable::Runnable;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::train::delta::Delta;
use crate::train::feed::Feed;
use crate::types::Ty;
use crate::value::Value;
use candle_core::{DType, Var};
use serde_json::json;
use std::collections::BTreeMap;

pub struct SimilarityGrand;

pub const MODES: &[&str] = &["eval", "train"];

static SIG: Signature = Signature {
    id: "similarity.grand",
    version: 1,
    summary: "Sum of gradient norms of each source delta's loss on a target's first dev batches (GraNd).",
    doc: "s_ij = Σ over the first `batches` dev batches b of target i (`batch` examples each, in order) \
          of ‖∇_δ L_b‖₂, L_b the mean loss of model + δ_j on batch b, the gradient over all of δ_j's \
          parameters. Paper 2: batch 50, B_i = 10 (6 for the binary tasks boolq and mc_taco). \
          `mode=eval` (default) is deterministic; `mode=train` turns the delta's own dropout on (the \
          paper's setting; the base models here have no dropout). Diagonal NaN. Lower is more \
          similar: recorded `sign=negative`, τ = 0.1. Adapters only. `granularity=block|layer` \
          scores each transformer block (or adapted sub-layer) separately — paper 2's module \
          importance analysis — as a [group, target, source] array.",
    params: &[
        P_ADAPTERS, P_TASKS, P_SPLIT,
        Param::opt("batches", Ty::Int, Const::Int(10), "Dev batches B_i summed over (paper 2: 10; 6 for binary tasks).").range(1.0, 1e9),
        Param::opt("batch", Ty::Int, Const::Int(50), "Examples per dev batch (paper 2: 50); 1 = per-example GraNd.").range(1.0, 1e6),
        Param::opt("mode", Ty::Enum(MODES), Const::Str("eval"), "`eval`: no dropout (deterministic); `train`: the delta's dropout on, as the paper."),
        Param::opt("granularity", Ty::Enum(GRANULARITIES), Const::Str("model"), "`model`: one score over the whole delta; `block`: one per transformer block, Σ_b √(Σ_{block's tensors} ‖∇‖²); `layer`: one per adapted sub-layer (LoRA module or bottleneck adapter). Block/layer give a [block|layer, target, source] array (methods.md §2.7); take a slice with `similarity block`."),
        p_sign("negative"), p_temperature(0.1),
        FORMAT_PARAMS[0], FORMAT_PARAMS[1], FORMAT_PARAMS[2], FORMAT_PARAMS[3],
    ],
    returns: Ty::Matrix,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\"]]\nlet ds = [train lora(lm, t, head=prompt) for t in ts]\nlet s = similarity grand(ds, ts, batches=6, batch=50)"],
    reference: Some("Lv et al. 2023 (paper 2); Paul et al. 2021, GraNd"),
    // Seeded: `mode=train` draws dropout masks from the node seed.
    determinism: Determinism::Seeded,
    kind: OpKind::Node,
    same_length: &[("deltas", "tasks")],
    cheap: false,
};

impl Operator for SimilarityGrand {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let pairs = Pairs::of(args)?;
        let o = overrides(args)?;
        let split = args.str("split")?;
        let batches = args.int("batches")?.max(1) as usize;
        let batch = args.int("batch")?.max(1) as usize;
        let train = args.str("mode")? == "train";
        let granularity = args.str("granularity")?;
        let n = pairs.n();
        let mut groups: Option<Vec<(String, Vec<usize>)>> = None;
        let mut values: Vec<Vec<f64>> = Vec::new();
        for (j, src) in pairs.sources.iter().enumerate() {
            let mut run = Runnable::load(src, &cx.device)?;
            if train {
                reseed_dropout(
                    &mut run,
                    cx.seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )?;
            }
            let names: Vec<String> = named_vars(delta_of(&run, SIG.id)?)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let g = granular::groups(&names, granularity)?;
            match &groups {
                None => {
                    values = vec![vec![f64::NAN; n * n]; g.len()];
                    groups = Some(g);
                }
                Some(first) if *first != g => {
                    return Err(OpError::new(
                        "smelt::run::granularity",
                        format!(
                            "source {} has other {granularity}s than source {}",
                            pairs.labels[j], pairs.labels[0]
                        ),
                    )
                    .with_help("per-block scores need deltas of one configuration"));
                }
                Some(_) => {}
            }
            let idx: Vec<&[usize]> = groups.iter().flatten().map(|(_, ix)| &ix[..]).collect();
            for i in (0..n).filter(|&i| i != j) {
                let s = grand(
                    &run,
                    &pairs.tasks[i],
                    split,
                    batches,
                    batch,
                    train,
                    &o,
                    &idx,
                )
                .map_err(|e| {
                    e.context(format!(
                        "scoring source {} on target {}",
                        pairs.labels[j], pairs.labels[i]
                    ))
                })?;
                for (g, v) in s.into_iter().enumerate() {
                    values[g][i * n + j] = v;
                }
            }
        }
        let mut meta = serde_json::Map::new();
        meta.insert("formula".into(), json!("Σ_b ‖∇_δ mean loss of batch b‖₂"));
        meta.insert("split".into(), json!(split));
        meta.insert("batches".into(), json!(batches));
        meta.insert("batch".into(), json!(batch));
        meta.insert("mode".into(), json!(args.str("mode")?));
        let labels = groups
            .unwrap_or_default()
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        super::granular_value(
            cx,
            SIG.id,
            granularity,
            labels,
            &pairs.labels,
            values,
            args,
            meta,
        )
    }
}

/// `Σ_b ‖∇_{δ_g} L_b‖₂` of one source on one target, for every group `g` of the delta's
/// tensors (indices into its `named_vars`).
#[allow(clippy::too_many_arguments)]
fn grand(
    run: &Runnable,
    task: &TaskData,
    split: &str,
    batches: usize,
    batch: usize,
    train: bool,
    o: &Overrides,
    groups: &[&[usize]],
) -> Result<Vec<f64>, OpError> {
    let delta = delta_of(run, SIG.id)?;
    let all = task.split(split);
    let take = all.len().min(batches * batch);
    if take == 0 {
        return Err(OpError::new(
            "smelt::eval::empty_split",
            format!("task `{}` has no `{split}` examples", task.name),
        ));
    }
    let feed = Feed::new(&run.lm, &format_for(run, task, o)?, task, &all[..take])?;
    let head = run.head(&task.name)?;
    let vars: Vec<Var> = named_vars(delta).into_iter().map(|(_, v)| v).collect();
    delta.set_training(train);
    let idx: Vec<usize> = (0..take).collect();
    let mut total = vec![0.0; groups.len()];
    for chunk in idx.chunks(batch) {
        let loss = feed.loss(&run.lm, head.as_ref(), chunk)?.mean_all()?;
        let grads = loss.backward()?;
        let mut sq = vec![0.0; vars.len()];
        for (k, v) in vars.iter().enumerate() {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq[k] = g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        for (t, g) in total.iter_mut().zip(groups) {
            *t += g.iter().map(|&k| sq[k]).sum::<f64>().sqrt();
        }
    }
    delta.set_training(false);
    Ok(total)
}

/// Re-installs a LoRA or bottleneck delta with its dropout stream seeded from `seed` (the
/// loaders fix that stream), keeping every loaded value. Nothing changes without dropout.
pub fn reseed_dropout(run: &mut Runnable, seed: u64) -> Result<(), OpError> {
    let Some(mut old) = run.delta.take() else {
        return Ok(());
    };
    let fresh = match &mut old {
        Delta::Lora(l) if l.config.dropout > 0.0 => {
            l.remove(run.lm.linears_mut());
            let cfg = LoraConfig {
                seed,
                ..l.config.clone()
            };
            Some(Delta::Lora(Lora::inject(run.lm.linears_mut(), &cfg)?))
        }
        Delta::Adapter(a) if a.config.dropout > 0.0 => {
            a.remove(run.lm.linears_mut());
            let cfg = AdapterConfig {
                seed,
                ..a.config.clone()
            };
            Some(Delta::Adapter(Adapters::inject(
                run.lm.linears_mut(),
                &cfg,
            )?))
        }
        _ => None,
    };
    let Some(fresh) = fresh else {
        run.delta = Some(old);
        return Ok(());
    };
    let loaded: BTreeMap<String, Var> = named_vars(&old).into_iter().collect();
    for (name, v) in named_vars(&fresh) {
        let src = loaded.get(&name).ok_or_else(|| {
            OpError::new(
                "smelt::peft::no_match",
                format!("re-seeding dropout: the loaded delta has no `{name}`"),
            )
            .with_help("use mode=eval for this adapter")
        })?;
        v.set(&src.as_tensor().to_dtype(v.dtype())?)?;
    }
    run.delta = Some(fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::similarity::testutil::*;
    use crate::ops::train::runnable::Runnable;
    use candle_core::Device;

    fn grand_args(deltas: &[Value], tasks: &[Value], batches: i64, batch: i64) -> Args {
        mode_args(deltas, tasks, batches, batch, "eval")
    }

    fn mode_args(deltas: &[Value], tasks: &[Value], batches: i64, batch: i64, mode: &str) -> Args {
        args(
            deltas,
            tasks,
            vec![
                ("split", Value::str("dev")),
                ("batches", Value::Int(batches)),
                ("batch", Value::Int(batch)),
                ("mode", Value::str(mode)),
                ("granularity", Value::str("model")),
                ("sign", Value::str("negative")),
                ("temperature", Value::Float(0.1)),
            ],
        )
    }

    /// ‖∇ mean loss‖ by central finite differences along the gradient direction: for a
    /// smooth loss, (L(θ + εu) − L(θ − εu)) / 2ε → ∇L·u = ‖∇L‖ when u = ∇L/‖∇L‖. The gradient
    /// direction comes from a separate autograd pass; the norm is checked against the loss
    /// values alone.
    fn fd_norm(delta: &Value, task: &Value, n: usize) -> f64 {
        let a = delta.as_artifact().unwrap();
        let run = Runnable::load(a, &Device::Cpu).unwrap();
        let mut t = crate::data::TaskData::from_artifact(task.as_artifact().unwrap()).unwrap();
        t.splits.get_mut("dev").unwrap().truncate(n);
        let o = crate::ops::evaluate::Overrides {
            head: "auto",
            template: None,
            words: None,
            max_len: 128,
            max_new: 1,
        };
        let feed = Feed::new(&run.lm, &format_for(&run, &t, &o).unwrap(), &t, t.dev()).unwrap();
        let idx: Vec<usize> = (0..n).collect();
        let vars = run.delta.as_ref().unwrap().vars();
        let loss = |run: &Runnable| -> f64 {
            feed.loss(&run.lm, None, &idx)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let g = feed
            .loss(&run.lm, None, &idx)
            .unwrap()
            .mean_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs: Vec<_> = vars
            .iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect();
        let norm: f64 = gs
            .iter()
            .map(|t| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum::<f64>()
            .sqrt();
        let orig: Vec<_> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
        let eps = 1e-2;
        let shift = |s: f64| {
            for ((v, o), g) in vars.iter().zip(&orig).zip(&gs) {
                v.set(&(o + (g * (s * eps / norm)).unwrap()).unwrap())
                    .unwrap();
            }
        };
        shift(1.0);
        let up = loss(&run);
        shift(-1.0);
        let down = loss(&run);
        (up - down) / (2.0 * eps)
    }

    #[test]
    fn gradient_norms_match_finite_differences_and_sum_over_batches() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let one = SimilarityGrand
            .run(
                &mut OpCtx::for_test(t.path().join("a"), 0),
                &grand_args(&deltas, &tasks, 1, 20),
            )
            .unwrap();
        let m = matrix(&one);
        check_layout(&m, "negative");
        for (i, j) in [(0, 1), (2, 0)] {
            let want = fd_norm(&deltas[j], &tasks[i], 20);
            let rel = (m.get(i, j) - want).abs() / want;
            assert!(
                rel < 2e-2,
                "({i},{j}) {} vs finite differences {want}",
                m.get(i, j)
            );
        }
        // Three batches of 20 = the sum of three one-batch scores over consecutive slices;
        // check the count: the split has 60 dev examples, so batches=5 uses only 3.
        let three = matrix(
            &SimilarityGrand
                .run(
                    &mut OpCtx::for_test(t.path().join("b"), 0),
                    &grand_args(&deltas, &tasks, 5, 20),
                )
                .unwrap(),
        );
        let three_exact = matrix(
            &SimilarityGrand
                .run(
                    &mut OpCtx::for_test(t.path().join("c"), 0),
                    &grand_args(&deltas, &tasks, 3, 20),
                )
                .unwrap(),
        );
        for i in 0..3 {
            for j in (0..3).filter(|&j| j != i) {
                assert_eq!(three.get(i, j), three_exact.get(i, j));
                assert!(three.get(i, j) > m.get(i, j));
            }
        }
    }

    /// With one batch, ‖∇‖² is the sum of the groups' squared norms, for blocks and for
    /// sub-layers alike; the groups are the small encoder's 3 blocks and 6 LoRA modules.
    #[test]
    fn block_and_layer_scores_split_the_gradient_norm() {
        let t = tempfile::tempdir().unwrap();
        let (deltas, tasks) = setup(t.path());
        let run = |dir: &str, g: &str| {
            let a = args(
                &deltas,
                &tasks,
                vec![
                    ("split", Value::str("dev")),
                    ("batches", Value::Int(1)),
                    ("batch", Value::Int(20)),
                    ("mode", Value::str("eval")),
                    ("granularity", Value::str(g)),
                    ("sign", Value::str("negative")),
                    ("temperature", Value::Float(0.1)),
                ],
            );
            matrix(
                &SimilarityGrand
                    .run(&mut OpCtx::for_test(t.path().join(dir), 0), &a)
                    .unwrap(),
            )
        };
        let whole = run("m", "model");
        for (g, groups) in [("block", 3), ("layer", 6)] {
            let per = run(g, g);
            assert_eq!(per.shape, vec![groups, 3, 3]);
            assert_eq!(per.axes[0].name, g);
            assert_eq!(per.meta["granularity"], g);
            for i in 0..3 {
                for j in (0..3).filter(|&j| j != i) {
                    let sq: f64 = (0..groups)
                        .map(|b| per.slice(b).unwrap().get(i, j).powi(2))
                        .sum();
                    let want = whole.get(i, j);
                    assert!((sq.sqrt() - want).abs() < 1e-4 * want, "{g} ({i},{j})");
                }
            }
        }
        assert_eq!(
            run("b2", "block").axes[0].labels,
            vec!["block 0", "block 1", "block 2"]
        );
    }

    #[test]
    fn train_mode_draws_dropout_from_the_node_seed() {
        let t = tempfile::tempdir().unwrap();
        let tasks: Vec<Value> = TASKS[..2].iter().map(|n| task(t.path(), n)).collect();
        let drop: Vec<Value> = (0..2)
            .map(|j| lora_with_dropout(&t.path().join(format!("d{j}")), 3 + j, 0.05, 0.5))
            .collect();
        let score = |dir: &str, seed: u64, mode: &str, ds: &[Value]| {
            let m = matrix(
                &SimilarityGrand
                    .run(
                        &mut OpCtx::for_test(t.path().join(dir), seed),
                        &mode_args(ds, &tasks, 1, 10, mode),
                    )
                    .unwrap(),
            );
            (m.get(0, 1), m.get(1, 0))
        };
        let (a, b) = (score("a", 1, "train", &drop), score("b", 1, "train", &drop));
        assert_eq!(a, b, "same node seed, same dropout masks");
        let c = score("c", 2, "train", &drop);
        assert_ne!(a, c, "another seed, other masks");
        let e = score("e", 1, "eval", &drop);
        assert_ne!(a, e, "dropout changes the gradients");
        // eval mode: the recorded dropout is off, so the seed does not matter.
        assert_eq!(e, score("f", 2, "eval", &drop));
        // Without dropout, train mode is eval mode.
        let plain: Vec<Value> = (0..2)
            .map(|j| lora(&t.path().join(format!("p{j}")), 3 + j, 0.05))
            .collect();
        assert_eq!(
            score("g", 1, "train", &plain),
            score("h", 1, "eval", &plain)
        );
    }
}
