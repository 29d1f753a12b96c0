//! Operators: one trait, one [`Signature`] per operator, an explicit registry.
//!
//! A signature is the only declaration of an operator's name, parameters (types, defaults,
//! ranges, docs), return type, examples, paper reference, determinism and version. The checker,
//! `smelt doc`, the REPL's `:help` and the cache key all read it. Operators are registered in
//! [`builtin_registry`] by an explicit list — no link-time magic.
//!
//! Two kinds: `Node` operators become cached DAG nodes and run on realised inputs
//! ([`Operator::run`]); `Helper` operators (`len`, `zip`, …) are evaluated immediately on
//! unrealised values ([`Operator::eval`]) and are never cached.

pub mod affinity;
pub mod args;
pub mod best;
pub mod cluster;
pub mod ctx;
pub mod data;
pub mod ensemble;
pub mod estimate;
pub mod evaluate;
pub mod helpers;
pub mod kernel;
pub mod load;
pub mod measure;
pub mod merge;
pub mod model;
pub mod plot;
pub mod similarity;
pub mod solve;
pub mod train;

pub use args::Args;
pub use ctx::OpCtx;

use crate::diag::OpError;
use crate::value::Value;
use std::collections::BTreeMap;

pub use crate::sig::{Const, Determinism, OpKind, Param, RetFn, SigLookup, Signature};

pub trait Operator: Send + Sync {
    fn signature(&self) -> &'static Signature;

    /// Run a `Node` operator on realised arguments.
    fn run(&self, _cx: &mut OpCtx, _args: &Args) -> Result<Value, OpError> {
        Err(OpError::new(
            "smelt::internal",
            format!("`{}` is not a node operator", self.signature().id),
        ))
    }

    /// Evaluate a `Helper` on unrealised arguments; `force` realises a value when needed.
    fn eval(
        &self,
        _args: &Args,
        _force: &mut dyn FnMut(&Value) -> Result<Value, OpError>,
    ) -> Result<Value, OpError> {
        Err(OpError::new(
            "smelt::internal",
            format!("`{}` is not a helper", self.signature().id),
        ))
    }

    /// Checks that need realised cheap inputs (e.g. model headers) but read no tensor data.
    /// Called by `smelt check` and before `run`. Arguments may contain unrealised nodes.
    fn validate(&self, _args: &Args) -> Result<(), OpError> {
        Ok(())
    }
}

/// All operators, by id.
pub struct Registry {
    ops: BTreeMap<&'static str, Box<dyn Operator>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            ops: BTreeMap::new(),
        }
    }

    /// Add an operator. Panics on a duplicate id (a programming error caught by tests).
    pub fn add(&mut self, op: impl Operator + 'static) {
        let id = op.signature().id;
        assert!(
            self.ops.insert(id, Box::new(op)).is_none(),
            "operator `{id}` registered twice"
        );
    }

    pub fn get(&self, id: &str) -> Option<&dyn Operator> {
        self.ops.get(id).map(|b| b.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Operator> {
        self.ops.values().map(|b| b.as_ref())
    }

    pub fn families(&self) -> Vec<&'static str> {
        let mut f: Vec<_> = self
            .iter()
            .map(|o| o.signature().group())
            .filter(|g| *g != "helpers")
            .collect();
        f.sort();
        f.dedup();
        f
    }
}

impl SigLookup for Registry {
    fn sig(&self, id: &str) -> Option<&'static Signature> {
        self.get(id).map(|o| o.signature())
    }

    fn ids(&self) -> Vec<&'static str> {
        self.ops.keys().copied().collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// The built-in operators. Adding one: write its file, then add one line here.
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    // Helpers on plain values.
    r.add(helpers::len::Len);
    r.add(helpers::zip::Zip);
    r.add(helpers::range::Range);
    r.add(helpers::mean::Mean);
    r.add(helpers::sum::Sum);
    r.add(helpers::average_density::AverageDensity);
    r.add(helpers::groups::Groups);
    r.add(helpers::matrix::MatrixLiteral);
    r.add(helpers::std::Std);
    // Inputs.
    r.add(load::model::LoadModel);
    r.add(load::task::LoadTask);
    r.add(load::task::LoadTasks);
    r.add(load::adapter::LoadAdapter);
    r.add(load::fisher::LoadFisher);
    r.add(load::kernel::LoadKernel);
    // Task data.
    r.add(data::kshot::KShot);
    r.add(data::subsample::Subsample);
    r.add(data::split::Split);
    r.add(data::union::Union);
    r.add(data::synthetic::Synthetic);
    // Model transformations.
    r.add(model::perturb::Perturb);
    r.add(model::apply::Apply);
    // Training.
    r.add(train::full::TrainFull);
    r.add(train::lora::TrainLora);
    r.add(train::adapter::TrainAdapter);
    r.add(train::prefix::TrainPrefix);
    r.add(train::quantized::TrainQLora);
    r.add(train::quantized::TrainQAdapter);
    // Estimates.
    r.add(estimate::fisher::EstimateFisher);
    r.add(estimate::gradients::EstimateGradients);
    // Affinity.
    r.add(affinity::first_order::FirstOrder);
    // Kernels.
    r.add(kernel::sgd::KernelSgd);
    r.add(kernel::signgd::KernelSignGd);
    r.add(kernel::asym_signgd::KernelAsymSignGd);
    // Merging.
    r.add(merge::average::Average);
    r.add(merge::linear::Linear);
    r.add(merge::task_arithmetic::TaskArithmetic);
    r.add(merge::fisher::FisherMerge);
    r.add(merge::uncertainty::Uncertainty);
    r.add(merge::ties::Ties);
    r.add(merge::dare::Dare);
    r.add(merge::slerp::Slerp);
    r.add(merge::softmax::Softmax);
    // Similarity.
    r.add(similarity::loss::SimilarityLoss);
    r.add(similarity::kl::SimilarityKl);
    r.add(similarity::el2n::SimilarityEl2n);
    r.add(similarity::cosine_logits::SimilarityCosineLogits);
    r.add(similarity::grand::SimilarityGrand);
    r.add(similarity::cosine_weights::SimilarityCosineWeights);
    r.add(similarity::euclidean::SimilarityEuclidean);
    r.add(similarity::performance::SimilarityPerformance);
    r.add(similarity::weights::Weights);
    r.add(similarity::block::SimilarityBlock);
    r.add(similarity::block_cosine::SimilarityBlockCosine);
    // Measurements.
    r.add(measure::distance::Distance);
    r.add(measure::score::Score);
    r.add(measure::approx_error::ApproxError);
    r.add(measure::memory::Memory);
    // Kernel solvers.
    r.add(solve::lstsq::Lstsq);
    r.add(solve::logistic::Logistic);
    r.add(solve::asym::Asym);
    r.add(solve::svm::Svm);
    r.add(solve::probe::Probe);
    r.add(solve::probe_head::ProbeHead);
    // Ensembles.
    r.add(ensemble::weighted::Weighted);
    r.add(ensemble::boost_gradient::BoostGradient);
    r.add(ensemble::boost_ada::BoostAda);
    // Clustering.
    r.add(cluster::sdp::ClusterSdp);
    r.add(cluster::spectral::ClusterSpectral);
    r.add(cluster::coclustering::ClusterCoclustering);
    r.add(cluster::kmeans::ClusterKMeans);
    // Evaluation.
    r.add(evaluate::Evaluate);
    r.add(best::Best);
    // Figures.
    r.add(plot::heatmap::Heatmap);
    r.add(plot::bar::Bar);
    r.add(plot::line::Line);
    r
}
