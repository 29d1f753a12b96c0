//! Prefix tuning merged factor-wise: when every input keeps the MLP re-parameterisation
//! (`smelt_prefix_encoder.safetensors`), its tensors are merged like the others and the prefix
//! `prompt_embeddings = tanh(E W₁ᵀ + b₁) W₂ᵀ + b₂` is recomputed from the merged MLP (paper 2
//! merges the re-parameterisation; loading the prefix checks that the two agree). When only some
//! inputs have the MLP, the computed prefixes (merged with the other tensors) stand and the MLP
//! is dropped with a note.

use super::adapter_set::{AdapterIn, Tensor32};
use super::adapter_space::{missing, weighted};
use crate::diag::OpError;
use crate::nn::peft::prefix::ENCODER_FILE;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

/// Prefix tuning with the MLP re-parameterisation in every input: merge the MLP's tensors and
/// recompute `prompt_embeddings` from them (what loading the prefix checks). Otherwise the
/// computed prefixes (already merged with the other tensors) stand, and any MLP is dropped.
pub(super) fn prefix_mlp(
    ins: &[AdapterIn],
    w32: &[f32],
    select: &dyn Fn(&str) -> bool,
    out_main: &mut BTreeMap<String, Tensor32>,
    notes: &mut Vec<String>,
) -> Result<Option<BTreeMap<String, Tensor32>>, OpError> {
    let with = ins.iter().filter(|a| a.has(ENCODER_FILE)).count();
    if with == 0 {
        return Ok(None);
    }
    if with < ins.len() {
        notes.push(format!(
            "{ENCODER_FILE} dropped: only {with} of {} prefixes have the MLP; their computed prefixes were merged",
            ins.len()
        ));
        return Ok(None);
    }
    let encs: Vec<BTreeMap<String, Tensor32>> = ins
        .iter()
        .map(|a| a.read(ENCODER_FILE))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&BTreeMap<String, Tensor32>> = encs.iter().collect();
    let mut merged = BTreeMap::new();
    for name in encs[0].keys() {
        merged.insert(name.clone(), weighted(name, &refs, w32, select(name))?);
    }
    let find = |suffix: &str| -> Result<Tensor, OpError> {
        let (_, (s, v)) = merged
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .ok_or_else(|| missing(suffix, 1))?;
        Ok(Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu)?)
    };
    let emb = find("embedding.weight")?;
    let (w1, b1) = (find("transform.0.weight")?, find("transform.0.bias")?);
    let (w2, b2) = (find("transform.2.weight")?, find("transform.2.bias")?);
    let h = emb.matmul(&w1.t()?)?.broadcast_add(&b1)?.tanh()?;
    let p = h.matmul(&w2.t()?)?.broadcast_add(&b2)?;
    let shape = p.dims().to_vec();
    let old = out_main
        .get("prompt_embeddings")
        .ok_or_else(|| missing("prompt_embeddings", 1))?;
    if old.0 != shape {
        return Err(OpError::new(
            "smelt::peft::shape",
            format!(
                "the merged prefix MLP gives {shape:?}, prompt_embeddings is {:?}",
                old.0
            ),
        ));
    }
    out_main.insert(
        "prompt_embeddings".into(),
        (shape, p.flatten_all()?.to_vec1::<f32>()?),
    );
    Ok(Some(merged))
}

#[cfg(test)]
mod tests {
    use super::super::adapter_set::{Mode, MAIN_FILE};
    use super::*;
    use crate::nn::peft::io::write_safetensors;
    use crate::ops::merge::adapter_fixtures::*;
    use crate::value::Value;
    use serde_json::json;

    #[test]
    fn prefix_mlp_is_merged_and_the_prefix_recomputed() {
        let t = tempfile::tempdir().unwrap();
        let (p, d, e, out) = (2, 3, 2, 4);
        let enc = "prompt_encoder.default.";
        let make = |name: &str, seed: u64| {
            let emb = rand(p * d, seed);
            let (w1, b1) = (rand(e * d, seed + 1), rand(e, seed + 2));
            let (w2, b2) = (rand(out * e, seed + 3), rand(out, seed + 4));
            let computed = mlp(&emb, &w1, &b1, &w2, &b2, (p, d, e, out));
            let cfg = json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": p, "token_dim": d,
                             "num_layers": 1, "num_attention_heads": 1, "prefix_projection": true});
            let a = adapter_dir(
                &t.path().join(name),
                cfg,
                &[("prompt_embeddings", vec![p, out], computed)],
                "b",
                name,
            );
            let mut m = BTreeMap::new();
            for (n, s, v) in [
                ("embedding.weight", vec![p, d], emb),
                ("transform.0.weight", vec![e, d], w1),
                ("transform.0.bias", vec![e], b1),
                ("transform.2.weight", vec![out, e], w2),
                ("transform.2.bias", vec![out], b2),
            ] {
                m.insert(
                    format!("{enc}{n}"),
                    Tensor::from_vec(v, s.as_slice(), &Device::Cpu).unwrap(),
                );
            }
            write_safetensors(&a.dir.join(ENCODER_FILE), &m, &[("format", "pt")]).unwrap();
            a
        };
        let (x, y) = (make("x", 10), make("y", 20));
        let m = merge(&t.path().join("m"), &[&x, &y], &[0.3, 0.7], Mode::Factors).unwrap();
        let (xv, yv) = (Value::Artifact(x.clone()), Value::Artifact(y.clone()));
        let (ex, ey) = (tensors(&xv, ENCODER_FILE), tensors(&yv, ENCODER_FILE));
        let em = tensors(&m, ENCODER_FILE);
        let avg = |n: &str| -> Vec<f32> {
            let k = format!("{enc}{n}");
            ex[&k]
                .iter()
                .zip(&ey[&k])
                .map(|(a, b)| 0.3 * a + 0.7 * b)
                .collect()
        };
        for n in ["embedding.weight", "transform.0.weight", "transform.2.bias"] {
            assert_eq!(em[&format!("{enc}{n}")], avg(n));
        }
        let want = mlp(
            &avg("embedding.weight"),
            &avg("transform.0.weight"),
            &avg("transform.0.bias"),
            &avg("transform.2.weight"),
            &avg("transform.2.bias"),
            (p, d, e, out),
        );
        let got = &tensors(&m, MAIN_FILE)["prompt_embeddings"];
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{diff}");
    }

    /// `tanh(E W₁ᵀ + b₁) W₂ᵀ + b₂` by loops.
    fn mlp(
        emb: &[f32],
        w1: &[f32],
        b1: &[f32],
        w2: &[f32],
        b2: &[f32],
        (p, d, e, out): (usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut res = vec![0f32; p * out];
        for i in 0..p {
            let h: Vec<f64> = (0..e)
                .map(|k| {
                    let z: f64 = (0..d)
                        .map(|j| (emb[i * d + j] * w1[k * d + j]) as f64)
                        .sum();
                    (z + b1[k] as f64).tanh()
                })
                .collect();
            for o in 0..out {
                let z: f64 = (0..e).map(|k| h[k] * w2[o * e + k] as f64).sum();
                res[i * out + o] = (z + b2[o] as f64) as f32;
            }
        }
        res
    }
}
