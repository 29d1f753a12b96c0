//! Optimisers over `candle_core::Var`s: AdamW, SGD (+momentum), SignGD, Adafactor.
//!
//! Each follows its PyTorch / HF reference step for one parameter `p` with gradient `g` and
//! learning rate `η` (taken per step from the schedule):
//! * **AdamW** (torch `AdamW`, decoupled decay): `p ← p(1 − ηλ)`; `m ← β₁m + (1−β₁)g`;
//!   `v ← β₂v + (1−β₂)g²`; `p ← p − η · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`.
//! * **SGD** (torch `SGD`): `g ← g + λp`; momentum `b ← μb + g` (`b = g` on the first step),
//!   Nesterov `g ← g + μb` else `g ← b`; `p ← p − ηg`.
//! * **SignGD** (LM-Kernel-FT `--optimizer_variant signgd`): SGD on `sign(g)` (after clipping).
//! * **Adafactor** (HF `transformers.Adafactor` with `scale_parameter=False, relative_step=False,
//!   warmup_init=False`, methods.md §2.4): `ρ_t = 1 − t^{decay}` (decay −0.8), `u = g² + ε₁`;
//!   for a matrix keep row/column means `R ← ρR + (1−ρ)·mean_cols(u)`,
//!   `C ← ρC + (1−ρ)·mean_rows(u)`, `V̂ = (R / mean(R)) ⊗ C`; for vectors `V ← ρV + (1−ρ)u`;
//!   `U = g / √V̂`, `U ← U / max(1, RMS(U)/d)` (d = clip threshold 1.0), `U ← ηU`; optional
//!   first moment `M ← β₁M + (1−β₁)U`; `p ← p − ηλp − U`. Tensors of rank > 2 factor their
//!   last two dims, as HF does. (ε₂ only matters with `scale_parameter`, kept for completeness.)
//!
//! State is per var; a var without a gradient in a step is skipped and its step count is not
//! advanced (as torch). Arithmetic runs on candle tensors in the var's dtype.

use crate::diag::OpError;
use candle_core::{backprop::GradStore, Tensor, Var, D};

/// Which optimiser, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerConfig {
    AdamW {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    SignGd {
        lr: f64,
        weight_decay: f64,
    },
    Adafactor {
        lr: f64,
        eps1: f64,
        eps2: f64,
        clip_threshold: f64,
        decay_rate: f64,
        beta1: Option<f64>,
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// torch defaults (β = 0.9/0.999, ε = 1e-8) with weight decay 0 (HF Trainer default).
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    pub fn sgd(lr: f64) -> Self {
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    pub fn signgd(lr: f64) -> Self {
        OptimizerConfig::SignGd {
            lr,
            weight_decay: 0.0,
        }
    }

    /// HF defaults with a constant external lr: ε = (1e-30, 1e-3), d = 1, decay −0.8, no β₁.
    pub fn adafactor(lr: f64) -> Self {
        OptimizerConfig::Adafactor {
            lr,
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::AdamW { lr, .. }
            | OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::SignGd { lr, .. }
            | OptimizerConfig::Adafactor { lr, .. } => *lr,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::AdamW { .. } => "adamw",
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::SignGd { .. } => "signgd",
            OptimizerConfig::Adafactor { .. } => "adafactor",
        }
    }

    /// Rejects non-finite or out-of-range hyper-parameters.
    pub fn validate(&self) -> Result<(), OpError> {
        let beta = |b: f64| (0.0..1.0).contains(&b);
        let ok = match *self {
            OptimizerConfig::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                lr.is_finite()
                    && beta(beta1)
                    && beta(beta2)
                    && eps > 0.0
                    && weight_decay.is_finite()
            }
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
                ..
            } => {
                lr.is_finite()
                    && momentum.is_finite()
                    && momentum >= 0.0
                    && weight_decay.is_finite()
            }
            OptimizerConfig::SignGd { lr, weight_decay } => {
                lr.is_finite() && weight_decay.is_finite()
            }
            OptimizerConfig::Adafactor {
                lr,
                eps1,
                clip_threshold,
                decay_rate,
                beta1,
                weight_decay,
                ..
            } => {
                lr.is_finite()
                    && eps1 >= 0.0
                    && clip_threshold > 0.0
                    && decay_rate < 0.0
                    && beta1.is_none_or(beta)
                    && weight_decay.is_finite()
            }
        };
        if ok && self.lr() >= 0.0 {
            Ok(())
        } else {
            Err(OpError::new(
                "smelt::train::bad_optimizer",
                format!("invalid {} settings: {self:?}", self.name()),
            )
            .with_help("learning rate ≥ 0 and finite, betas in [0, 1), eps > 0"))
        }
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Empty,
    Adam {
        m: Tensor,
        v: Tensor,
    },
    Momentum(Tensor),
    Factored {
        row: Tensor,
        col: Tensor,
        m: Option<Tensor>,
    },
    Full {
        v: Tensor,
        m: Option<Tensor>,
    },
}

/// An optimiser bound to a list of vars.
#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    vars: Vec<Var>,
    slots: Vec<Slot>,
    steps: Vec<u64>,
}

/// The gradients of `vars` in `grads` (`None` where a var got none).
pub fn grads_of(vars: &[Var], grads: &GradStore) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).cloned())
        .collect()
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, vars: Vec<Var>) -> Result<Optimizer, OpError> {
        config.validate()?;
        let n = vars.len();
        Ok(Optimizer {
            config,
            vars,
            slots: vec![Slot::Empty; n],
            steps: vec![0; n],
        })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// How many updates var `i` has received.
    pub fn var_steps(&self, i: usize) -> u64 {
        self.steps.get(i).copied().unwrap_or(0)
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars()[i]`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<(), OpError> {
        if grads.len() != self.vars.len() {
            return Err(OpError::new(
                "smelt::train::internal",
                format!("{} gradients for {} vars", grads.len(), self.vars.len()),
            ));
        }
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let p = self.vars[i].as_tensor().detach();
            let g = g.detach().to_dtype(p.dtype())?;
            self.steps[i] += 1;
            let t = self.steps[i];
            let new = self.update(i, &p, &g, lr, t)?;
            self.vars[i].set(&new)?;
        }
        Ok(())
    }

    /// [`Optimizer::step`] reading the gradients from a `GradStore`.
    pub fn step_store(&mut self, grads: &GradStore, lr: f64) -> Result<(), OpError> {
        let g = grads_of(&self.vars, grads);
        self.step(&g, lr)
    }

    fn update(
        &mut self,
        i: usize,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor, OpError> {
        let slot = &mut self.slots[i];
        Ok(match self.config {
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                let (m0, v0) = match slot {
                    Slot::Adam { m, v } => (m.clone(), v.clone()),
                    _ => (p.zeros_like()?, p.zeros_like()?),
                };
                let m = ((m0 * beta1)? + (g * (1.0 - beta1))?)?;
                let v = ((v0 * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let bc1 = 1.0 - beta1.powi(t as i32);
                let bc2 = 1.0 - beta2.powi(t as i32);
                let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                let p = (p * (1.0 - lr * weight_decay))?;
                let upd = ((&m / denom)? * (lr / bc1))?;
                *slot = Slot::Adam { m, v };
                (p - upd)?
            }
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                let mut d = if weight_decay != 0.0 {
                    (g + (p * weight_decay)?)?
                } else {
                    g.clone()
                };
                if momentum != 0.0 {
                    let b = match slot {
                        Slot::Momentum(b) => ((&*b * momentum)? + &d)?,
                        _ => d.clone(),
                    };
                    d = if nesterov {
                        (d + (&b * momentum)?)?
                    } else {
                        b.clone()
                    };
                    *slot = Slot::Momentum(b);
                }
                (p - (d * lr)?)?
            }
            OptimizerConfig::SignGd { weight_decay, .. } => {
                let d = g.sign()?;
                let d = if weight_decay != 0.0 {
                    (d + (p * weight_decay)?)?
                } else {
                    d
                };
                (p - (d * lr)?)?
            }
            OptimizerConfig::Adafactor {
                eps1,
                clip_threshold,
                decay_rate,
                beta1,
                weight_decay,
                ..
            } => {
                let rho = 1.0 - (t as f64).powf(decay_rate);
                let u = (g.sqr()? + eps1)?;
                let (mut upd, m_prev) = if p.rank() >= 2 {
                    let (row_mean, col_mean) = (u.mean(D::Minus1)?, u.mean(D::Minus2)?);
                    let (row, col, m) = match slot {
                        Slot::Factored { row, col, m } => (
                            ((&*row * rho)? + (row_mean * (1.0 - rho))?)?,
                            ((&*col * rho)? + (col_mean * (1.0 - rho))?)?,
                            m.clone(),
                        ),
                        _ => (row_mean, col_mean, None),
                    };
                    let r = row
                        .broadcast_div(&row.mean_keepdim(D::Minus1)?)?
                        .sqrt()?
                        .recip()?
                        .unsqueeze(D::Minus1)?;
                    let c = col.unsqueeze(D::Minus2)?.sqrt()?.recip()?;
                    let upd = r.broadcast_mul(&c)?.mul(g)?;
                    *slot = Slot::Factored {
                        row,
                        col,
                        m: m.clone(),
                    };
                    (upd, m)
                } else {
                    let (v, m) = match slot {
                        Slot::Full { v, m } => (((&*v * rho)? + (&u * (1.0 - rho))?)?, m.clone()),
                        _ => (u, None),
                    };
                    let upd = v.sqrt()?.recip()?.mul(g)?;
                    *slot = Slot::Full { v, m: m.clone() };
                    (upd, m)
                };
                let rms = (upd
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?
                    / upd.elem_count().max(1) as f64)
                    .sqrt();
                upd = ((upd / (rms / clip_threshold).max(1.0))? * lr)?;
                if let Some(b1) = beta1 {
                    let m = match m_prev {
                        Some(m) => ((m * b1)? + (&upd * (1.0 - b1))?)?,
                        None => (&upd * (1.0 - b1))?,
                    };
                    match slot {
                        Slot::Factored { m: s, .. } | Slot::Full { m: s, .. } => {
                            *s = Some(m.clone())
                        }
                        _ => {}
                    }
                    upd = m;
                }
                let p = if weight_decay != 0.0 {
                    (p * (1.0 - weight_decay * lr))?
                } else {
                    p.clone()
                };
                (p - upd)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    fn vals(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn sgd_momentum_and_nesterov_match_torch() {
        let p = var(&[1.0]);
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut o = Optimizer::new(cfg, vec![p.clone()]).unwrap();
        let g = || vec![Some(Tensor::new(&[2f32], &Device::Cpu).unwrap())];
        o.step(&g(), 0.1).unwrap(); // b = 2, p = 0.8
        o.step(&g(), 0.1).unwrap(); // b = 3.8, p = 0.42
        assert!((vals(&p)[0] - 0.42).abs() < 1e-6);
        let q = var(&[1.0]);
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.5,
            weight_decay: 0.0,
            nesterov: true,
        };
        let mut o = Optimizer::new(cfg, vec![q.clone()]).unwrap();
        o.step(&g(), 0.1).unwrap(); // b = 2, d = 2 + 1 = 3, p = 0.7
        assert!((vals(&q)[0] - 0.7).abs() < 1e-6);
    }

    #[test]
    fn signgd_uses_signs_and_skips_missing_grads() {
        let (p, q) = (var(&[1.0, -1.0, 0.5]), var(&[3.0]));
        let mut o =
            Optimizer::new(OptimizerConfig::signgd(0.25), vec![p.clone(), q.clone()]).unwrap();
        let g = Tensor::new(&[0.001f32, -50.0, 0.0], &Device::Cpu).unwrap();
        o.step(&[Some(g), None], 0.25).unwrap();
        assert_eq!(vals(&p), vec![0.75, -0.75, 0.5]);
        assert_eq!((vals(&q), o.var_steps(1)), (vec![3.0], 0));
        assert!(o.step(&[None], 0.1).is_err());
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Optimizer::new(OptimizerConfig::adamw(f64::NAN), vec![]).is_err());
        let bad = OptimizerConfig::AdamW {
            lr: 1e-3,
            beta1: 1.0,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        assert_eq!(
            bad.validate().unwrap_err().code,
            "smelt::train::bad_optimizer"
        );
    }
}
