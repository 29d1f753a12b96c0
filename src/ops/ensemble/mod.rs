//! `ensemble weighted|boost_gradient|boost_ada`: ensembles of adapters on one shared base
//! (methods.md §1.11–1.12).
//!
//! [`weighted`] builds an [`Ensemble`](crate::tensors::ensemble::Ensemble) value from members
//! and weights; [`combine`] runs one (M forward passes on the one base, class scores summed
//! with the task's weights) for `evaluate`, `measure score` and the boosting rounds;
//! [`boost_gradient`] and [`boost_ada`] add members trained by [`fit`] on what the current
//! ensemble gets wrong.

pub mod boost_ada;
pub mod boost_gradient;
pub mod combine;
pub mod fit;
pub mod weighted;

use crate::cache::Key;
use crate::data::TaskData;
use crate::diag::OpError;
use crate::ops::evaluate::Overrides;
use crate::ops::train::{tasks_arg, TASKS_TY};
use crate::ops::{Args, Const, OpCtx, Param};
use crate::tensors::ensemble::Ensemble;
use crate::types::Ty;
use crate::value::Kind;
use fit::FitParams;

pub const P_ENSEMBLE: Param = Param::req(
    "ensemble",
    Ty::Ensemble,
    "The ensemble to boost (e.g. `ensemble weighted(group_adapters)`).",
);
pub const P_BTASKS: Param = Param::req("tasks", TASKS_TY, "The task(s) to boost on: their train splits (tasks concatenated in order) are predicted and fitted.");
pub const P_ROUNDS: Param = Param::opt(
    "rounds",
    Ty::Int,
    Const::Int(10),
    "Boosting rounds (adapters added); `n_estimators` in the paper's code.",
)
.range(0.0, 1000.0);
pub const P_BEPOCHS: Param = Param::opt(
    "epochs",
    Ty::Int,
    Const::Int(1),
    "Training epochs of each new adapter.",
)
.range(1.0, 1e6);
pub const P_BBATCH: Param = Param::opt(
    "batch",
    Ty::Int,
    Const::Int(8),
    "Training batch size of each new adapter.",
)
.range(1.0, 1e6);
pub const P_BMAX_LEN: Param = Param::opt(
    "max_len",
    Ty::Int,
    Const::Int(128),
    "Maximum tokens per example.",
)
.range(8.0, 1e6);
pub const P_EVAL_BATCH: Param = Param::opt(
    "eval_batch",
    Ty::Int,
    Const::Int(32),
    "Examples per forward pass when predicting with the ensemble.",
)
.range(1.0, 1e6);
pub const P_BSEED: Param = Param::opt(
    "seed",
    Ty::Int,
    Const::Int(0),
    "Extra seed (initialisation and data order derive from it and the node).",
);

/// The arguments both boosting operators share.
pub struct Boost {
    pub ensemble: Ensemble,
    pub tasks: Vec<TaskData>,
    pub rounds: usize,
    pub eval_batch: usize,
    pub max_len: usize,
    /// Seed of this call (node seed mixed with `seed`).
    pub seed: u64,
}

impl Boost {
    pub fn of(cx: &OpCtx, args: &Args) -> Result<Boost, OpError> {
        let seed = cx.seed ^ (args.int("seed")? as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Ok(Boost {
            ensemble: Ensemble::from_artifact(args.artifact("ensemble", Kind::Ensemble)?)?,
            tasks: tasks_arg(args, "tasks")?,
            rounds: args.int("rounds")?.max(0) as usize,
            eval_batch: args.int("eval_batch")?.max(1) as usize,
            max_len: args.int("max_len")?.max(1) as usize,
            seed,
        })
    }

    /// The recipe of round `round` (one initialisation seed for all rounds, as the paper
    /// restarts every new adapter from the same saved initial weights).
    pub fn fit_params(&self, args: &Args, round: usize) -> Result<FitParams, OpError> {
        Ok(FitParams {
            lr: args.float("lr")?,
            epochs: args.int("epochs")?.max(1) as usize,
            batch: args.int("batch")?.max(1) as usize,
            max_len: self.max_len,
            init_seed: self.seed ^ 0x4c4f_5241,
            seed: self.seed.wrapping_add(round as u64 + 1),
        })
    }

    /// How the ensemble predicts the training data: each member's recorded format.
    pub fn overrides(&self) -> Overrides<'static> {
        Overrides {
            head: "auto",
            template: None,
            words: None,
            max_len: self.max_len,
            max_new: 1,
        }
    }

    /// The combined train-split class scores and gold labels, tasks concatenated in order.
    pub fn predict(&self, cx: &OpCtx) -> Result<(Vec<Vec<f32>>, Vec<u32>), OpError> {
        let s = combine::score_ensemble(
            &self.ensemble,
            &self.tasks,
            "train",
            &self.overrides(),
            self.eval_batch,
            &cx.device,
        )?;
        let mut logits = Vec::new();
        let mut gold = Vec::new();
        for c in s.combined {
            logits.extend(c.logits);
            gold.extend(c.gold);
        }
        Ok((logits, gold))
    }
}

/// The store location and key of round `round`'s new adapter.
pub fn round_out(cx: &OpCtx, round: usize) -> (std::path::PathBuf, Key) {
    let key = Key::of_bytes(format!("{}:round{round}", cx.key.hex()).as_bytes());
    (
        cx.out_dir.join(format!("round{round}")).join("adapter"),
        key,
    )
}
