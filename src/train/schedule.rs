//! Learning-rate schedules, gradient clipping by global norm, and gradient accumulation.
//!
//! Schedules are HF `get_scheduler` multipliers `λ(s)` of the base lr at optimizer step `s`
//! (0-based: the first update uses `λ(0)`), with `w` warmup steps and `T` total steps:
//! * constant: `λ = 1` (HF's "constant" ignores `w`, as methods.md §2.4 notes);
//! * constant_with_warmup: `λ = s/w` for `s < w`, else 1;
//! * linear: `s/w` for `s < w`, else `max(0, (T − s)/(T − w))`;
//! * cosine: `s/w` for `s < w`, else `max(0, ½(1 + cos(π·(s − w)/(T − w))))`.
//!
//! Clipping (torch `clip_grad_norm_`): `n = √(Σ_i ‖g_i‖²)` over all gradients, and every
//! gradient is scaled by `min(1, c / (n + 1e-6))`. The sum runs in f64, in var order, so it is
//! deterministic. Accumulation adds micro-batch gradients var by var; the caller scales each
//! micro-batch loss so the sum is the mean over the effective batch.

use crate::diag::OpError;
use candle_core::{backprop::GradStore, DType, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

impl ScheduleKind {
    /// `constant`, `constant_with_warmup`, `linear`, `cosine` (HF names).
    pub fn parse(s: &str) -> Result<ScheduleKind, OpError> {
        Ok(match s {
            "constant" => ScheduleKind::Constant,
            "constant_with_warmup" => ScheduleKind::ConstantWithWarmup,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            _ => {
                return Err(OpError::new(
                    "smelt::train::bad_schedule",
                    format!("unknown schedule `{s}`"),
                )
                .with_help("use constant, constant_with_warmup, linear or cosine"))
            }
        })
    }
}

/// A schedule over a known number of optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The lr multiplier for 0-based optimizer step `step`.
    pub fn factor(&self, step: usize) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let warm = self.warmup_steps > 0 && step < self.warmup_steps;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            _ if warm => s / w,
            ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

/// The global L2 norm of the present gradients.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64, OpError> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64, OpError> {
    let n = global_norm(grads)?;
    let coef = max_norm / (n + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
        }
    }
    Ok(n)
}

/// Sums gradients of `vars` over micro-batches.
#[derive(Debug, Clone)]
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
    micro: usize,
}

impl GradAccumulator {
    pub fn new(n_vars: usize) -> GradAccumulator {
        GradAccumulator {
            sums: vec![None; n_vars],
            micro: 0,
        }
    }

    /// Adds this micro-batch's gradients of `vars`.
    pub fn add(&mut self, vars: &[Var], grads: &GradStore) -> Result<(), OpError> {
        for (slot, v) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = g.detach();
                *slot = Some(match slot.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.micro += 1;
        Ok(())
    }

    /// Micro-batches added since the last `take`.
    pub fn micro_batches(&self) -> usize {
        self.micro
    }

    /// The summed gradients, resetting the accumulator.
    pub fn take(&mut self) -> Vec<Option<Tensor>> {
        self.micro = 0;
        let n = self.sums.len();
        std::mem::replace(&mut self.sums, vec![None; n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_follow_hf() {
        let s = |kind| Schedule {
            kind,
            warmup_steps: 2,
            total_steps: 10,
        };
        let lin = s(ScheduleKind::Linear);
        let f: Vec<f64> = [0, 1, 2, 6, 10, 12]
            .iter()
            .map(|&i| lin.factor(i))
            .collect();
        assert_eq!(f, vec![0.0, 0.5, 1.0, 0.5, 0.0, 0.0]);
        let cos = s(ScheduleKind::Cosine);
        assert!((cos.factor(6) - 0.5).abs() < 1e-12 && cos.factor(10).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Constant).factor(0), 1.0);
        assert_eq!(s(ScheduleKind::ConstantWithWarmup).factor(1), 0.5);
        assert_eq!(
            Schedule {
                kind: ScheduleKind::Linear,
                warmup_steps: 0,
                total_steps: 4
            }
            .factor(0),
            1.0
        );
        assert!(ScheduleKind::parse("cosine").is_ok() && ScheduleKind::parse("poly").is_err());
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let t = |v: &[f32]| Some(Tensor::new(v, &Device::Cpu).unwrap());
        let mut g = vec![t(&[3.0]), None, t(&[4.0])];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let n2 = clip_grad_norm(&mut g, 10.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn accumulation_sums_micro_batches() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut acc = GradAccumulator::new(1);
        for k in [1.0, 3.0] {
            let loss = (v.as_tensor() * k).unwrap().sum_all().unwrap();
            acc.add(std::slice::from_ref(&v), &loss.backward().unwrap())
                .unwrap();
        }
        assert_eq!(acc.micro_batches(), 2);
        let g = acc.take();
        assert_eq!(
            g[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            vec![4.0, 4.0]
        );
        assert!(acc.take()[0].is_none());
    }
}
