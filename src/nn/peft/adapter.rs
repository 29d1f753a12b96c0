//! Houlsby bottleneck adapters (Houlsby et al. 2019) after attention and after the FFN.
//!
//! At each site the sublayer's output projection `y = x Wᵀ + b` (`[N, H]`) is followed by
//! `y ↦ y + drop(U · act(D · y + b_D) + b_U)`, `D ∈ R^{m×H}`, `U ∈ R^{H×m}`, act = ReLU
//! (`adapters`' `DoubleSeqBnConfig`, paper 1) or swish `x·σ(x)` (OpenDelta Houlsby, paper 2);
//! the block's own residual and LayerNorm follow unchanged. This is the placement of HF
//! `adapters` (`mh_adapter` after `attention.output.dense`, `output_adapter` after
//! `output.dense`, both before the post-LN) and of OpenDelta (after the sublayer output); on
//! Llama the sites are `self_attn.o_proj` and `mlp.down_proj`. The adapter is installed as the
//! `output` hook of those [`Linear`]s, so no model file needs changing.
//!
//! Bottleneck width `m = H / reduction_factor` (paper 1: rf 128–256) or an explicit size
//! (paper 2: 12). Init: both matrices `N(0, σ²)`, σ = 0.02 (OpenDelta `r_std`), or
//! "zero-up": `D ~ N(0, σ²)`, `U = 0` so the model starts exactly at the base; biases are 0.
//! Vars live in a [`VarMap`] as `<module>.adapter.down.weight` `[m, H]`, `.up.weight` `[H, m]`,
//! `.down.bias`, `.up.bias`; [`Adapters::save`] writes them as one safetensors file (there is
//! no PEFT format for bottleneck adapters).

use super::io::{read_safetensors, write_safetensors};
use super::{check_dropout, device_of, dropout, normal, Flag};
use crate::diag::OpError;
use crate::nn::linear::{Linear, LinearHook};
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterActivation {
    Relu,
    Swish,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterSize {
    /// `m = H / rf` (at least 1).
    ReductionFactor(usize),
    Bottleneck(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterInit {
    /// Down and up `N(0, std²)`.
    Normal { std: f64 },
    /// Down `N(0, std²)`, up zero: identity at init.
    ZeroUp { std: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub size: AdapterSize,
    pub activation: AdapterActivation,
    pub init: AdapterInit,
    pub bias: bool,
    pub dropout: f64,
    pub after_attention: bool,
    pub after_ffn: bool,
    pub seed: u64,
}

impl AdapterConfig {
    /// Paper 2 (OpenDelta Houlsby): size 12, swish, N(0, 0.02) both, no bias, both sites.
    pub fn houlsby(size: usize) -> AdapterConfig {
        AdapterConfig {
            size: AdapterSize::Bottleneck(size),
            activation: AdapterActivation::Swish,
            init: AdapterInit::Normal { std: 0.02 },
            bias: false,
            dropout: 0.0,
            after_attention: true,
            after_ffn: true,
            seed: 0,
        }
    }

    /// Paper 1 (`DoubleSeqBnConfig`): reduction factor, ReLU, bias, dropout 0.1, both sites.
    pub fn double_seq_bn(reduction_factor: usize) -> AdapterConfig {
        AdapterConfig {
            size: AdapterSize::ReductionFactor(reduction_factor),
            activation: AdapterActivation::Relu,
            bias: true,
            dropout: 0.1,
            ..AdapterConfig::houlsby(1)
        }
    }

    /// Bottleneck width for hidden size `h`.
    pub fn width(&self, h: usize) -> Result<usize, OpError> {
        match self.size {
            AdapterSize::ReductionFactor(0) | AdapterSize::Bottleneck(0) => Err(OpError::new(
                "smelt::peft::bad_config",
                "adapter size and reduction factor must be positive",
            )),
            AdapterSize::ReductionFactor(rf) => Ok((h / rf).max(1)),
            AdapterSize::Bottleneck(m) => Ok(m),
        }
    }
}

/// One adapter site.
#[derive(Debug, Clone)]
pub struct AdapterModule {
    pub name: String,
    pub down: Var,
    pub up: Var,
    pub down_bias: Option<Var>,
    pub up_bias: Option<Var>,
}

/// Injected bottleneck adapters.
pub struct Adapters {
    pub config: AdapterConfig,
    pub varmap: VarMap,
    pub modules: Vec<AdapterModule>,
    training: Flag,
}

/// Whether `name` is an attention output projection (`Some(true)`) or an FFN output (`Some(false)`).
fn site(name: &str) -> Option<bool> {
    if name.ends_with(".attention.output.dense") || name.ends_with(".self_attn.o_proj") {
        Some(true)
    } else if name.ends_with(".output.dense") || name.ends_with(".mlp.down_proj") {
        Some(false)
    } else {
        None
    }
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.modules.iter().map(|m| m.name.as_str()).collect();
        f.debug_struct("Adapters")
            .field("config", &self.config)
            .field("modules", &names)
            .finish()
    }
}

impl Adapters {
    /// Installs fresh adapters after every attention and/or FFN output projection.
    pub fn inject(
        linears: Vec<(String, &mut Linear)>,
        config: &AdapterConfig,
    ) -> Result<Adapters, OpError> {
        check_dropout(config.dropout, "adapter")?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let device = device_of(&linears);
        let mut ad = Adapters {
            config: config.clone(),
            varmap: VarMap::new(),
            modules: Vec::new(),
            training: Flag::default(),
        };
        let mut found = 0;
        for (name, lin) in linears {
            let wanted = match site(&name) {
                Some(true) => config.after_attention,
                Some(false) => config.after_ffn,
                None => false,
            };
            if !wanted {
                continue;
            }
            found += 1;
            let (h, m) = (lin.out_dim(), config.width(lin.out_dim())?);
            let (std, zero_up) = match config.init {
                AdapterInit::Normal { std } => (std, false),
                AdapterInit::ZeroUp { std } => (std, true),
            };
            let down = Tensor::from_vec(normal(&mut rng, m * h, std), (m, h), &device)?;
            let up = if zero_up {
                Tensor::zeros((h, m), DType::F32, &device)?
            } else {
                Tensor::from_vec(normal(&mut rng, h * m, std), (h, m), &device)?
            };
            let biases = config.bias.then(|| {
                (
                    Tensor::zeros(m, DType::F32, &device),
                    Tensor::zeros(h, DType::F32, &device),
                )
            });
            let biases = match biases {
                Some((d, u)) => Some((d?, u?)),
                None => None,
            };
            ad.attach(&name, lin, down, up, biases)?;
        }
        if found == 0 {
            return Err(OpError::new("smelt::peft::no_match", "no attention/FFN output projection to place adapters after")
                .with_help("adapters go after `attention.output.dense`/`output.dense` (BERT) or `self_attn.o_proj`/`mlp.down_proj` (Llama)"));
        }
        Ok(ad)
    }

    fn attach(
        &mut self,
        name: &str,
        lin: &mut Linear,
        down: Tensor,
        up: Tensor,
        biases: Option<(Tensor, Tensor)>,
    ) -> Result<(), OpError> {
        if lin.output.is_some() {
            return Err(OpError::new(
                "smelt::peft::already_injected",
                format!("{name} already has an output adapter"),
            ));
        }
        let h = lin.out_dim();
        if down.dims().len() != 2 || down.dims()[1] != h || up.dims() != [h, down.dims()[0]] {
            return Err(OpError::new(
                "smelt::peft::shape",
                format!(
                    "{name}: adapter down {:?} / up {:?} do not fit width {h}",
                    down.dims(),
                    up.dims()
                ),
            ));
        }
        let dt = lin.weight.dtype();
        let var = |t: Tensor| -> Result<Var, OpError> { Ok(Var::from_tensor(&t.to_dtype(dt)?)?) };
        let (down, up) = (var(down)?, var(up)?);
        let (db, ub) = match biases {
            Some((d, u)) => (Some(var(d)?), Some(var(u)?)),
            None => (None, None),
        };
        let module = AdapterModule {
            name: name.to_string(),
            down,
            up,
            down_bias: db,
            up_bias: ub,
        };
        lin.output = Some(self.hook(&module));
        {
            let mut data = self
                .varmap
                .data()
                .lock()
                .map_err(|_| OpError::msg("adapter var map lock poisoned"))?;
            for (k, v) in module_vars(&module) {
                data.insert(k, v);
            }
        }
        self.modules.push(module);
        Ok(())
    }

    fn hook(&self, m: &AdapterModule) -> LinearHook {
        let (d, u) = (m.down.as_tensor().clone(), m.up.as_tensor().clone());
        let (db, ub) = (
            m.down_bias.as_ref().map(|v| v.as_tensor().clone()),
            m.up_bias.as_ref().map(|v| v.as_tensor().clone()),
        );
        let (act, p, flag) = (
            self.config.activation,
            self.config.dropout,
            self.training.clone(),
        );
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(
            self.config.seed ^ 0xada9_7e50,
        )));
        LinearHook(Arc::new(move |y: &Tensor| {
            let mut z = y.matmul(&d.t()?)?;
            if let Some(b) = &db {
                z = z.broadcast_add(b)?;
            }
            z = match act {
                AdapterActivation::Relu => z.relu()?,
                AdapterActivation::Swish => z.silu()?,
            };
            let mut z = z.matmul(&u.t()?)?;
            if let Some(b) = &ub {
                z = z.broadcast_add(b)?;
            }
            if flag.load(Ordering::Relaxed) {
                z = dropout(&z, p, &rng)?;
            }
            y + z
        }))
    }

    /// Adapter dropout on (training) or off.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    /// All adapter vars, site by site (down, up, then biases).
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.modules.iter().flat_map(module_vars).collect()
    }

    /// Removes every adapter hook from the model.
    pub fn remove(&self, linears: Vec<(String, &mut Linear)>) {
        for (n, lin) in linears {
            if self.modules.iter().any(|m| m.name == n) {
                lin.output = None;
            }
        }
    }

    /// Writes all adapter tensors to one safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), OpError> {
        let t: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect();
        write_safetensors(
            path,
            &t,
            &[("format", "pt"), ("smelt_peft", "bottleneck_adapter")],
        )
    }

    /// Loads adapters saved by [`Adapters::save`] into the named modules (config for activation,
    /// dropout and seed; sizes come from the file).
    pub fn load(
        linears: Vec<(String, &mut Linear)>,
        path: &Path,
        config: &AdapterConfig,
    ) -> Result<Adapters, OpError> {
        let device = device_of(&linears);
        let mut t = read_safetensors(path, &device)?;
        let mut ad = Adapters {
            config: config.clone(),
            varmap: VarMap::new(),
            modules: Vec::new(),
            training: Flag::default(),
        };
        for (name, lin) in linears {
            let key = |s: &str| format!("{name}.adapter.{s}");
            let (Some(d), Some(u)) = (t.remove(&key("down.weight")), t.remove(&key("up.weight")))
            else {
                continue;
            };
            let biases = match (t.remove(&key("down.bias")), t.remove(&key("up.bias"))) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            };
            ad.attach(&name, lin, d, u, biases)?;
        }
        if let Some(k) = t.keys().next() {
            return Err(OpError::new(
                "smelt::peft::no_match",
                format!("adapter tensor {k} fits no module of the model"),
            ));
        }
        Ok(ad)
    }
}

fn module_vars(m: &AdapterModule) -> Vec<(String, Var)> {
    let mut v = vec![
        (format!("{}.adapter.down.weight", m.name), m.down.clone()),
        (format!("{}.adapter.up.weight", m.name), m.up.clone()),
    ];
    if let (Some(d), Some(u)) = (&m.down_bias, &m.up_bias) {
        v.push((format!("{}.adapter.down.bias", m.name), d.clone()));
        v.push((format!("{}.adapter.up.bias", m.name), u.clone()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::max_abs_diff;
    use candle_core::Device;

    fn layers() -> Vec<(String, Linear)> {
        let w = |o: usize, i: usize| Tensor::randn(0f32, 0.3, (o, i), &Device::Cpu).unwrap();
        vec![
            (
                "encoder.layer.0.attention.self.query".into(),
                Linear::new(w(8, 8), None),
            ),
            (
                "encoder.layer.0.attention.output.dense".into(),
                Linear::new(w(8, 8), None),
            ),
            (
                "encoder.layer.0.intermediate.dense".into(),
                Linear::new(w(16, 8), None),
            ),
            (
                "encoder.layer.0.output.dense".into(),
                Linear::new(w(8, 16), None),
            ),
        ]
    }

    fn refs(v: &mut [(String, Linear)]) -> Vec<(String, &mut Linear)> {
        v.iter_mut().map(|(n, l)| (n.clone(), l)).collect()
    }

    #[test]
    fn placement_init_and_residual() {
        let mut m = layers();
        let x = Tensor::randn(0f32, 1.0, (3, 8), &Device::Cpu).unwrap();
        let base = m[1].1.forward(&x).unwrap();
        let cfg = AdapterConfig {
            init: AdapterInit::ZeroUp { std: 0.02 },
            ..AdapterConfig::double_seq_bn(4)
        };
        let ad = Adapters::inject(refs(&mut m), &cfg).unwrap();
        let names: Vec<_> = ad.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "encoder.layer.0.attention.output.dense",
                "encoder.layer.0.output.dense"
            ]
        );
        assert_eq!(ad.modules[0].down.dims(), &[2, 8]);
        assert_eq!(ad.vars().len(), 8);
        assert_eq!(
            max_abs_diff(&base, &m[1].1.forward(&x).unwrap()).unwrap(),
            0.0
        );
        // every var gets a gradient once up is non-zero
        ad.modules[0]
            .up
            .set(&Tensor::ones((8, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let loss = m[1]
            .1
            .forward(&x)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        for v in [&ad.modules[0].down, &ad.modules[0].up] {
            assert!(g.get(v.as_tensor()).is_some());
        }
        assert!(g.get(&m[1].1.weight).is_none());
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let mut m = layers();
        let ad = Adapters::inject(
            refs(&mut m),
            &AdapterConfig {
                seed: 3,
                ..AdapterConfig::houlsby(3)
            },
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 8), &Device::Cpu).unwrap();
        let y = m[1].1.forward(&x).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ad.safetensors");
        ad.save(&p).unwrap();
        let mut m2 = layers();
        m2[1].1.weight = m[1].1.weight.clone();
        Adapters::load(refs(&mut m2), &p, &ad.config).unwrap();
        assert!(max_abs_diff(&y, &m2[1].1.forward(&x).unwrap()).unwrap() < 1e-6);
        assert_eq!(
            Adapters::inject(refs(&mut m), &ad.config).unwrap_err().code,
            "smelt::peft::already_injected"
        );
        let mut none = vec![(
            "a.b".to_string(),
            Linear::new(
                Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
                None,
            ),
        )];
        assert_eq!(
            Adapters::inject(refs(&mut none), &ad.config)
                .unwrap_err()
                .code,
            "smelt::peft::no_match"
        );
        assert!(AdapterConfig::houlsby(0).width(8).is_err());
    }
}
