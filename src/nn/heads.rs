//! Encoder task heads: sequence classification and masked-LM, loaded from HF checkpoint names.
//!
//! Classification: BERT's `classifier.{weight,bias}` applied to the pooled output (or `[CLS]` when
//! there is no pooler), or RoBERTa's `classifier.dense` + tanh + `classifier.out_proj` on `[CLS]`.
//! MLM: with `cls.predictions.*` (BERT) or `lm_head.*` (RoBERTa) weights, the full head (transform
//! dense + activation + LayerNorm + decoder + bias, decoder tied to the word embeddings unless a
//! decoder weight is stored). Without them — the committed models ship none — the head is the
//! **tied decoder only**: `logits = hidden · Eᵀ`, no transform, no bias. Nothing is initialised
//! at random and `MlmHead::is_tied_only` says which case applies.
//!
//! `set_probe` installs a gradient [`Probe`] on every parameterised op of a head (its linears
//! and the MLM transform's LayerNorm) for per-example gradients.

use crate::diag::OpError;
use crate::nn::config::{Activation, BertConfig, BertFlavor};
use crate::nn::linear::Linear;
use crate::nn::ops::LayerNorm;
use crate::nn::probe::Probe;
use crate::nn::weights::Weights;
use candle_core::{Result, Tensor};

/// Sequence-classification head.
#[derive(Debug, Clone)]
pub enum ClassifierHead {
    /// BERT: `classifier(pooled)` (on `[CLS]` when the model has no pooler).
    Linear(Linear),
    /// RoBERTa: `out_proj(tanh(dense(h[CLS])))`.
    Roberta { dense: Linear, out_proj: Linear },
}

impl ClassifierHead {
    /// Loads `classifier.*` (top-level names, no `bert.` prefix), if present.
    pub fn load(w: &Weights, h: usize) -> std::result::Result<Option<ClassifierHead>, OpError> {
        let raw = |n: &str| w.get_raw(n);
        let shape_err = |n: &str| {
            OpError::new(
                "smelt::model::weight_shape",
                format!("{n} does not match hidden_size {h}"),
            )
        };
        if w.contains_raw("classifier.dense.weight") && w.contains_raw("classifier.out_proj.weight")
        {
            let dense = Linear::new(
                raw("classifier.dense.weight")?,
                Some(raw("classifier.dense.bias")?),
            );
            let out_proj = Linear::new(
                raw("classifier.out_proj.weight")?,
                Some(raw("classifier.out_proj.bias")?),
            );
            if dense.in_dim() != h || out_proj.in_dim() != dense.out_dim() {
                return Err(shape_err("classifier.dense"));
            }
            return Ok(Some(ClassifierHead::Roberta { dense, out_proj }));
        }
        if w.contains_raw("classifier.weight") {
            let weight = raw("classifier.weight")?;
            if weight.dims().len() != 2 || weight.dims()[1] != h {
                return Err(shape_err("classifier.weight"));
            }
            let bias = if w.contains_raw("classifier.bias") {
                Some(raw("classifier.bias")?)
            } else {
                None
            };
            return Ok(Some(ClassifierHead::Linear(Linear::new(weight, bias))));
        }
        Ok(None)
    }

    /// Installs (or removes) a gradient probe on the head's linears.
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        match self {
            ClassifierHead::Linear(l) => l.probe = probe,
            ClassifierHead::Roberta { dense, out_proj } => {
                dense.probe = probe.clone();
                out_proj.probe = probe;
            }
        }
    }

    /// Logits `[B, labels]` from the `[CLS]` hidden state `[B, H]` and the pooled output.
    pub fn forward(&self, cls: &Tensor, pooled: Option<&Tensor>) -> Result<Tensor> {
        match self {
            ClassifierHead::Linear(l) => l.forward(pooled.unwrap_or(cls)),
            ClassifierHead::Roberta { dense, out_proj } => {
                out_proj.forward(&dense.forward(cls)?.tanh()?)
            }
        }
    }
}

/// Masked-LM head; `transform` is `None` for the tied-decoder-only case.
#[derive(Debug, Clone)]
pub struct MlmHead {
    pub transform: Option<(Linear, LayerNorm)>,
    pub act: Activation,
    /// `[vocab, H]`, usually the word embeddings themselves.
    pub decoder: Linear,
    /// Records the transform LayerNorm's output gradient (per-example gradients).
    pub probe: Option<Probe>,
}

impl MlmHead {
    /// The full head when `cls.predictions.*` / `lm_head.*` exist, else the tied decoder only.
    pub fn load(
        w: &Weights,
        c: &BertConfig,
        word: &Tensor,
    ) -> std::result::Result<MlmHead, OpError> {
        let h = c.hidden_size;
        let raw = |n: &str| w.get_raw(n);
        // (dense, LayerNorm, output bias, decoder weight) names for BERT and RoBERTa heads.
        let layouts = [
            (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.bias",
                "cls.predictions.decoder.weight",
            ),
            (
                "lm_head.dense",
                "lm_head.layer_norm",
                "lm_head.bias",
                "lm_head.decoder.weight",
            ),
        ];
        // RoBERTa's lm_head always uses erf GELU; BERT's transform uses `hidden_act`.
        let act = match c.flavor {
            BertFlavor::Bert => c.hidden_act,
            BertFlavor::Roberta => Activation::GeluErf,
        };
        for (dense, norm, bias, dec) in layouts {
            if !w.contains_raw(&format!("{dense}.weight")) {
                continue;
            }
            let d = Linear::new(
                raw(&format!("{dense}.weight"))?,
                Some(raw(&format!("{dense}.bias"))?),
            );
            let ln = LayerNorm {
                weight: raw(&format!("{norm}.weight"))?,
                bias: raw(&format!("{norm}.bias"))?,
                eps: c.layer_norm_eps,
            };
            let dec_w = if w.contains_raw(dec) {
                raw(dec)?
            } else {
                word.clone()
            };
            let b = if w.contains_raw(bias) {
                Some(raw(bias)?)
            } else {
                None
            };
            if d.out_dim() != h || d.in_dim() != h || dec_w.dims()[1] != h {
                return Err(OpError::new(
                    "smelt::model::weight_shape",
                    format!("{dense} does not match hidden_size {h}"),
                ));
            }
            return Ok(MlmHead {
                transform: Some((d, ln)),
                act,
                decoder: Linear::new(dec_w, b),
                probe: None,
            });
        }
        Ok(MlmHead {
            transform: None,
            act,
            decoder: Linear::new(word.clone(), None),
            probe: None,
        })
    }

    pub fn is_tied_only(&self) -> bool {
        self.transform.is_none()
    }

    /// Installs (or removes) a gradient probe on the transform, its LayerNorm and the decoder.
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        if let Some((dense, _)) = &mut self.transform {
            dense.probe = probe.clone();
        }
        self.decoder.probe = probe.clone();
        self.probe = probe;
    }

    /// Logits `[..., vocab]` for hidden states `[..., H]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.transform {
            Some((dense, norm)) => {
                let a = self.act.apply(&dense.forward(hidden)?)?;
                let mut x = norm.forward(&a)?;
                if let Some(p) = &self.probe {
                    x = p.layer_norm(&x, &a, &norm.weight, &norm.bias, norm.eps)?;
                }
                self.decoder.forward(&x)
            }
            None => self.decoder.forward(hidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::config::ArchConfig;
    use crate::nn::ops::max_abs_diff;
    use candle_core::Device;
    use std::collections::HashMap;

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    fn roberta_config() -> BertConfig {
        let cfg = r#"{"model_type":"roberta","vocab_size":10,"hidden_size":4,"num_hidden_layers":1,
            "num_attention_heads":1,"intermediate_size":8,"max_position_embeddings":16}"#;
        match ArchConfig::from_json(cfg, "config.json").unwrap() {
            ArchConfig::Bert(c) => c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn roberta_heads_load_and_apply() {
        let names: [(&str, &[usize]); 9] = [
            ("classifier.dense.weight", &[4, 4]),
            ("classifier.dense.bias", &[4]),
            ("classifier.out_proj.weight", &[2, 4]),
            ("classifier.out_proj.bias", &[2]),
            ("lm_head.dense.weight", &[4, 4]),
            ("lm_head.dense.bias", &[4]),
            ("lm_head.layer_norm.weight", &[4]),
            ("lm_head.layer_norm.bias", &[4]),
            ("lm_head.bias", &[10]),
        ];
        let map: HashMap<String, Tensor> = names
            .iter()
            .map(|(n, s)| (n.to_string(), randn(s)))
            .collect();
        let w = Weights::from_map(map, &Device::Cpu);
        let c = roberta_config();
        let cls = randn(&[3, 4]);
        let head = ClassifierHead::load(&w, 4).unwrap().unwrap();
        let ClassifierHead::Roberta { dense, out_proj } = &head else {
            panic!("roberta head")
        };
        let want = out_proj
            .forward(&dense.forward(&cls).unwrap().tanh().unwrap())
            .unwrap();
        assert_eq!(
            max_abs_diff(&head.forward(&cls, None).unwrap(), &want).unwrap(),
            0.0
        );
        let word = randn(&[10, 4]);
        let mlm = MlmHead::load(&w, &c, &word).unwrap();
        assert!(!mlm.is_tied_only() && mlm.act == Activation::GeluErf);
        assert_eq!(mlm.forward(&randn(&[2, 3, 4])).unwrap().dims(), &[2, 3, 10]);
    }

    #[test]
    fn absent_heads_give_none_and_tied_decoder() {
        let w = Weights::from_map(HashMap::new(), &Device::Cpu);
        assert!(ClassifierHead::load(&w, 4).unwrap().is_none());
        let word = randn(&[10, 4]);
        let mlm = MlmHead::load(&w, &roberta_config(), &word).unwrap();
        assert!(mlm.is_tied_only() && mlm.decoder.bias.is_none());
        let h = randn(&[5, 4]);
        let want = h.matmul(&word.t().unwrap()).unwrap();
        assert!(max_abs_diff(&mlm.forward(&h).unwrap(), &want).unwrap() < 1e-6);
    }
}
