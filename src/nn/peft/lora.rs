//! LoRA (Hu et al. 2021) with PEFT's semantics, initialisation and adapter directory format.
//!
//! For each targeted projection `y = x Wᵀ + b` (W frozen, `[out, in]`):
//! `y = x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ`, `A ∈ R^{r×in}`, `B ∈ R^{out×r}`, `s = α / r`
//! (rsLoRA: `s = α / √r`). Dropout acts on the LoRA input path only and only in training.
//! Init as PEFT (`init_lora_weights=True`): `A ~ kaiming_uniform(a=√5)`, i.e. with
//! gain `√(2/(1+a²)) = √(1/3)` and bound `gain·√(3/fan_in) = 1/√in`, so `A ~ U(-1/√in, 1/√in)`;
//! `B = 0`, so the adapted model equals the base at init (and `∂L/∂A = 0` on the first step).
//! Draws come from `ChaCha8Rng::seed_from_u64(seed)`, module by module in model order.
//! `merge` folds `W ← W + s·B·A` (then the output no longer depends on the vars); `unmerge`
//! subtracts it again (exact up to f32 rounding, as in PEFT).
//!
//! The PEFT adapter directory format (save/load) lives in [`super::peft_format`].

use super::pattern::{select, ModulePattern};
use super::{check_dropout, device_of, dropout, uniform, Flag};
use crate::diag::OpError;
use crate::nn::linear::{Linear, LinearHook, LoraDelta};
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// PEFT's key prefix in saved adapters.
pub const PREFIX: &str = "base_model.model.";

/// LoRA hyper-parameters (PEFT `LoraConfig` fields plus smelt's explicit seed).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT patterns: a module-name suffix, or `re:<regex>` (full match).
    pub target_modules: Vec<String>,
    pub rslora: bool,
    pub seed: u64,
    /// PEFT `task_type` (`SEQ_CLS`, `CAUSAL_LM`, …), informational.
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
}

impl LoraConfig {
    /// `r`, `alpha`, targets; dropout 0, no rsLoRA, seed 0.
    pub fn new(r: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            rslora: false,
            seed: 0,
            task_type: None,
            base_model_name_or_path: None,
        }
    }

    /// `α/r`, or `α/√r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<(), OpError> {
        let bad = |m: String| {
            OpError::new("smelt::peft::bad_config", m).with_help(
                "typical LoRA settings: r = 8, alpha = 16, targets [\"query\", \"value\"]",
            )
        };
        if self.r == 0 {
            return Err(bad("LoRA rank r must be positive".into()));
        }
        if !self.alpha.is_finite() {
            return Err(bad(format!(
                "lora_alpha must be finite, got {}",
                self.alpha
            )));
        }
        if self.target_modules.is_empty() {
            return Err(bad("LoRA needs at least one target module pattern".into()));
        }
        check_dropout(self.dropout, "LoRA")
    }
}

/// One adapted projection and its trainable factors.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub name: String,
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
}

/// An injected LoRA adapter: its vars (in a [`VarMap`] under PEFT key names) and state.
pub struct Lora {
    pub config: LoraConfig,
    pub varmap: VarMap,
    pub modules: Vec<LoraModule>,
    /// Extra trainable tensors saved with the adapter (PEFT `modules_to_save`), e.g.
    /// `classifier.weight`, in registration order.
    pub extra: Vec<(String, Var)>,
    training: Flag,
    rng: Arc<Mutex<ChaCha8Rng>>,
    merged: bool,
}

type Named<'a> = Vec<(String, &'a mut Linear)>;

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.modules.iter().map(|m| m.name.as_str()).collect();
        f.debug_struct("Lora")
            .field("config", &self.config)
            .field("modules", &names)
            .finish()
    }
}

impl Lora {
    /// Injects fresh LoRA factors into every projection selected by `config.target_modules`
    /// (pass `model.linears_mut()`). Errors: bad config, a pattern that matches nothing
    /// (`smelt::peft::no_match`), a projection that already carries a delta.
    pub fn inject(linears: Named<'_>, config: &LoraConfig) -> Result<Lora, OpError> {
        config.validate()?;
        let patterns = parse_all(&config.target_modules)?;
        let names: Vec<&str> = linears.iter().map(|(n, _)| n.as_str()).collect();
        let chosen = select(&names, &patterns, "LoRA")?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut lora = Lora::empty(config.clone());
        let device = device_of(&linears);
        let mut linears = linears;
        for i in chosen {
            let (name, lin) = &mut linears[i];
            let (out, inp) = (lin.out_dim(), lin.in_dim());
            let bound = 1.0 / (inp as f64).sqrt();
            let a = Tensor::from_vec(
                uniform(&mut rng, config.r * inp, bound),
                (config.r, inp),
                &device,
            )?;
            let b = Tensor::zeros((out, config.r), candle_core::DType::F32, &device)?;
            let dt = lin.weight.dtype();
            lora.attach(name, lin, a.to_dtype(dt)?, b.to_dtype(dt)?)?;
        }
        Ok(lora)
    }

    pub(super) fn empty(config: LoraConfig) -> Lora {
        let seed = config.seed ^ 0x4c6f_5241_4472_6f70; // "LoRADrop": a stream apart from init
        Lora {
            config,
            varmap: VarMap::new(),
            modules: Vec::new(),
            extra: Vec::new(),
            training: Flag::default(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            merged: false,
        }
    }

    pub(super) fn attach(
        &mut self,
        name: &str,
        lin: &mut Linear,
        a: Tensor,
        b: Tensor,
    ) -> Result<(), OpError> {
        if lin.lora.is_some() {
            return Err(OpError::new(
                "smelt::peft::already_injected",
                format!("{name} already carries a LoRA delta"),
            )
            .with_help("merge or remove the first adapter before injecting another"));
        }
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let r = a.dims().first().copied().unwrap_or(0);
        if a.rank() != 2 || b.rank() != 2 || b.dims()[1] != r || r == 0 {
            return Err(OpError::new(
                "smelt::peft::shape",
                format!(
                    "{name}: lora_A {:?} and lora_B {:?} disagree on the rank",
                    a.dims(),
                    b.dims()
                ),
            ));
        }
        let delta = LoraDelta::new(
            a.as_tensor().clone(),
            b.as_tensor().clone(),
            self.config.scale(),
            lin.in_dim(),
            lin.out_dim(),
        )
        .map_err(|e| OpError::new("smelt::peft::shape", format!("{name}: {e}")))?;
        self.install(lin, delta);
        self.insert_var(&format!("{PREFIX}{name}.lora_A.weight"), &a)?;
        self.insert_var(&format!("{PREFIX}{name}.lora_B.weight"), &b)?;
        self.modules.push(LoraModule {
            name: name.to_string(),
            a,
            b,
        });
        Ok(())
    }

    fn install(&self, lin: &mut Linear, delta: LoraDelta) {
        lin.lora = Some(delta);
        lin.lora_input = (self.config.dropout > 0.0).then(|| {
            let (p, flag, rng) = (self.config.dropout, self.training.clone(), self.rng.clone());
            LinearHook(Arc::new(move |x: &Tensor| {
                if flag.load(Ordering::Relaxed) {
                    dropout(x, p, &rng)
                } else {
                    Ok(x.clone())
                }
            }))
        });
    }

    fn insert_var(&self, key: &str, v: &Var) -> Result<(), OpError> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| OpError::msg("LoRA var map lock poisoned"))?;
        data.insert(key.to_string(), v.clone());
        Ok(())
    }

    /// Turns LoRA dropout on (training) or off (evaluation).
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The LoRA factors (A then B per module, model order) followed by the extra modules.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// [`Lora::vars`] with their saved key names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for m in &self.modules {
            v.push((format!("{PREFIX}{}.lora_A.weight", m.name), m.a.clone()));
            v.push((format!("{PREFIX}{}.lora_B.weight", m.name), m.b.clone()));
        }
        v.extend(
            self.extra
                .iter()
                .map(|(n, x)| (format!("{PREFIX}{n}"), x.clone())),
        );
        v
    }

    /// Registers an extra trainable tensor (`name` like `classifier.weight`) to be saved with
    /// the adapter; its module (`classifier`) is listed in `modules_to_save`.
    pub fn add_module_to_save(&mut self, name: &str, var: &Var) -> Result<(), OpError> {
        if self.extra.iter().any(|(n, _)| n == name) {
            return Err(OpError::new(
                "smelt::peft::duplicate",
                format!("`{name}` is already registered"),
            ));
        }
        self.insert_var(&format!("{PREFIX}{name}"), var)?;
        self.extra.push((name.to_string(), var.clone()));
        Ok(())
    }

    /// An extra tensor loaded or registered under `name` (e.g. `classifier.weight`).
    pub fn extra(&self, name: &str) -> Option<&Var> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Folds every delta into its frozen weight (`W ← W + s·B·A`) and detaches the factors.
    pub fn merge(&mut self, linears: Named<'_>) -> Result<(), OpError> {
        self.flip(linears, true)
    }

    /// Subtracts the merged deltas again and re-attaches the trainable factors.
    pub fn unmerge(&mut self, linears: Named<'_>) -> Result<(), OpError> {
        self.flip(linears, false)
    }

    fn flip(&mut self, linears: Named<'_>, merge: bool) -> Result<(), OpError> {
        if self.merged == merge {
            let state = if merge {
                "already merged"
            } else {
                "not merged"
            };
            return Err(OpError::new(
                "smelt::peft::merge_state",
                format!("the LoRA adapter is {state}"),
            ));
        }
        let mut by_name: BTreeMap<String, &mut Linear> = linears.into_iter().collect();
        for m in &self.modules {
            let lin = by_name.get_mut(&m.name).ok_or_else(|| {
                OpError::new(
                    "smelt::peft::no_match",
                    format!("the model has no module {}", m.name),
                )
                .with_help("merge/unmerge with the model the adapter was injected into")
            })?;
            let delta = LoraDelta::new(
                m.a.as_detached_tensor(),
                m.b.as_detached_tensor(),
                self.config.scale(),
                lin.in_dim(),
                lin.out_dim(),
            )?;
            let dw = delta.delta_weight()?.to_dtype(lin.weight.dtype())?;
            if merge {
                lin.set_frozen_weight(lin.frozen_weight()?.add(&dw)?.detach())?;
                lin.lora = None;
                lin.lora_input = None;
            } else {
                lin.set_frozen_weight(lin.frozen_weight()?.sub(&dw)?.detach())?;
                let d = LoraDelta::new(
                    m.a.as_tensor().clone(),
                    m.b.as_tensor().clone(),
                    self.config.scale(),
                    lin.in_dim(),
                    lin.out_dim(),
                )?;
                self.install(lin, d);
            }
        }
        self.merged = merge;
        Ok(())
    }

    /// Detaches every delta (and its dropout hook) from the model, leaving the base weights
    /// (a merged adapter stays folded in: `unmerge` first to get the base back).
    pub fn remove(&mut self, linears: Named<'_>) {
        let names: Vec<&str> = self.modules.iter().map(|m| m.name.as_str()).collect();
        for (n, lin) in linears {
            if names.contains(&n.as_str()) && !self.merged {
                lin.lora = None;
                lin.lora_input = None;
            }
        }
    }
}

pub(super) fn parse_all(ps: &[String]) -> Result<Vec<ModulePattern>, OpError> {
    ps.iter().map(|p| ModulePattern::parse(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::max_abs_diff;
    use candle_core::Device;

    fn layers() -> Vec<(String, Linear)> {
        let t = |s: &[usize], seed: f64| {
            Tensor::arange(0f32, s.iter().product::<usize>() as f32, &Device::Cpu)
                .unwrap()
                .affine(0.01, seed)
                .unwrap()
                .sin()
                .unwrap()
                .reshape(s)
                .unwrap()
        };
        vec![
            (
                "l.0.q".into(),
                Linear::new(t(&[6, 4], 0.0), Some(t(&[6], 1.0))),
            ),
            ("l.0.v".into(), Linear::new(t(&[5, 4], 2.0), None)),
            ("l.0.o".into(), Linear::new(t(&[4, 5], 3.0), None)),
        ]
    }

    fn refs(v: &mut [(String, Linear)]) -> Named<'_> {
        v.iter_mut().map(|(n, l)| (n.clone(), l)).collect()
    }

    #[test]
    fn init_is_seeded_peft_style_and_scale_follows_rslora() {
        let mut m = layers();
        let cfg = LoraConfig {
            seed: 7,
            ..LoraConfig::new(2, 8.0, &["q", "v"])
        };
        let l = Lora::inject(refs(&mut m), &cfg).unwrap();
        assert_eq!(l.modules.len(), 2);
        let a = l.modules[0]
            .a
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(a.iter().all(|x| x.abs() <= 0.5) && a.iter().any(|x| *x != 0.0));
        assert_eq!(
            l.modules[0]
                .b
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let mut m2 = layers();
        let l2 = Lora::inject(refs(&mut m2), &cfg).unwrap();
        assert_eq!(
            a,
            l2.modules[0]
                .a
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_eq!(cfg.scale(), 4.0);
        assert_eq!(
            LoraConfig {
                rslora: true,
                ..cfg.clone()
            }
            .scale(),
            8.0 / 2f64.sqrt()
        );
        assert_eq!(l.varmap.all_vars().len(), 4);
        assert_eq!(
            Lora::inject(refs(&mut m), &cfg).unwrap_err().code,
            "smelt::peft::already_injected"
        );
    }

    #[test]
    fn merge_unmerge_round_trip() {
        let mut m = layers();
        let mut l = Lora::inject(refs(&mut m), &LoraConfig::new(2, 4.0, &["q"])).unwrap();
        l.modules[0]
            .b
            .set(&Tensor::ones((6, 2), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let x = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let before = m[0].1.forward(&x).unwrap();
        let w0 = m[0].1.weight.clone();
        l.merge(refs(&mut m)).unwrap();
        assert!(m[0].1.lora.is_none());
        assert!(max_abs_diff(&before, &m[0].1.forward(&x).unwrap()).unwrap() < 1e-5);
        assert_eq!(
            l.merge(refs(&mut m)).unwrap_err().code,
            "smelt::peft::merge_state"
        );
        l.unmerge(refs(&mut m)).unwrap();
        assert!(max_abs_diff(&w0, &m[0].1.weight).unwrap() < 1e-5);
        assert!(max_abs_diff(&before, &m[0].1.forward(&x).unwrap()).unwrap() < 1e-5);
    }

    #[test]
    fn dropout_only_in_training() {
        let mut m = layers();
        let cfg = LoraConfig {
            dropout: 0.5,
            ..LoraConfig::new(2, 4.0, &["q"])
        };
        let l = Lora::inject(refs(&mut m), &cfg).unwrap();
        l.modules[0]
            .b
            .set(&Tensor::ones((6, 2), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let x = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e1 = m[0].1.forward(&x).unwrap();
        assert_eq!(
            max_abs_diff(&e1, &m[0].1.forward(&x).unwrap()).unwrap(),
            0.0
        );
        l.set_training(true);
        assert!(max_abs_diff(&e1, &m[0].1.forward(&x).unwrap()).unwrap() > 0.0);
    }
}
