//! LoRA merged exactly in weight-delta space: `ΔW = Σᵢ wᵢ sᵢ Bᵢ Aᵢ` (`sᵢ` = each input's
//! `α/r`), re-factorised to a LoRA of rank `rank` (default `Σ rᵢ`, which is exact).
//!
//! Per module the factors are stacked, `B = [w₁s₁B₁ | … | wₙsₙBₙ]` and `A = [A₁; …; Aₙ]`, and
//! [`product_svd`] gives `ΔW = U Σ Vᵀ` in f64 without forming the `out × in` matrix. The result
//! keeps the first input's `lora_alpha` (and rsLoRA flag), so `s = α/rank`, and splits the
//! singular values evenly: `B = U √(Σ/s)`, `A = √(Σ/s) Vᵀ`; modules with fewer non-zero singular
//! values than `rank` are zero padded (still exact). With a smaller `rank` the relative Frobenius
//! error `√(Σ_{j≥rank} σⱼ²)/‖ΔW‖` of every module and their maximum go into the record. Negative
//! weights subtract exactly — there are no cross terms `Bᵢ Aⱼ`, unlike a factor-wise merge.
//! Tensors that are not LoRA factors (saved heads) are weighted sums; a module the name filter
//! leaves out keeps the first input's ΔW.

use super::adapter_set::{lora_factor, AdapterIn, Tensor32};
use super::adapter_space::{missing, weighted, Spec};
use super::lowrank::{product_svd, truncation_error, Mat};
use crate::diag::OpError;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// LoRA in ΔW space; returns the output rank and the record (rank, truncation errors).
pub(super) fn delta_merge(
    ins: &[AdapterIn],
    mains: &[&BTreeMap<String, Tensor32>],
    spec: &Spec,
    rank: Option<usize>,
    out: &mut BTreeMap<String, Tensor32>,
) -> Result<(usize, Json), OpError> {
    let ranks: Vec<usize> = ins
        .iter()
        .map(AdapterIn::lora_r)
        .collect::<Result<_, _>>()?;
    let scales: Vec<f64> = ins
        .iter()
        .map(AdapterIn::lora_scale)
        .collect::<Result<_, _>>()?;
    let r_out = rank.unwrap_or_else(|| ranks.iter().sum());
    if r_out == 0 {
        return Err(OpError::new(
            "smelt::run::argument",
            "rank must be positive",
        ));
    }
    let mut cfg_out = crate::nn::peft::config_from_json(&ins[0].config)?;
    cfg_out.r = r_out;
    let s_out = cfg_out.scale();
    let w32: Vec<f32> = spec.weights.iter().map(|&w| w as f32).collect();
    let mut truncation = BTreeMap::new();
    let mut max_err: f64 = 0.0;
    for (name, _) in mains[0].iter() {
        let Some((module, which)) = lora_factor(name) else {
            let t = weighted(name, mains, &w32, (spec.select)(name))?;
            out.insert(name.clone(), t);
            continue;
        };
        if which == 1 {
            let a_name = name.replacen(".lora_B.", ".lora_A.", 1);
            if !mains[0].contains_key(&a_name) {
                return Err(OpError::new(
                    "smelt::peft::missing_key",
                    format!("`{module}` has lora_B but no lora_A"),
                ));
            }
            continue; // merged with its A
        }
        let b_name = name.replacen(".lora_A.", ".lora_B.", 1);
        let (sel_a, sel_b) = ((spec.select)(name), (spec.select)(&b_name));
        if sel_a != sel_b {
            return Err(OpError::new(
                "smelt::merge::split_factors",
                format!("the name filter selects only one of `{name}` and `{b_name}`"),
            )
            .with_help(
                "in mode=delta a LoRA module merges as a whole: select both factors or neither",
            ));
        }
        // Members and their coefficients cᵢ = wᵢ·sᵢ (unselected: the first input's ΔW).
        let members: Vec<(usize, f64)> = if sel_a {
            (0..ins.len())
                .map(|i| (i, spec.weights[i] * scales[i]))
                .collect()
        } else {
            vec![(0, scales[0])]
        };
        let mut a_rows: Vec<f64> = Vec::new();
        let mut b_blocks: Vec<(Mat, f64)> = Vec::new();
        let (mut dim_in, mut dim_out, mut total_r) = (0, 0, 0);
        for &(i, c) in &members {
            let (sa, va) = mains[i].get(name).ok_or_else(|| missing(name, i + 1))?;
            let (sb, vb) = mains[i]
                .get(&b_name)
                .ok_or_else(|| missing(&b_name, i + 1))?;
            if sa.len() != 2 || sb.len() != 2 || sa[0] != sb[1] {
                return Err(OpError::new(
                    "smelt::peft::shape",
                    format!("adapter {}: `{module}` has A {sa:?} and B {sb:?}", i + 1),
                ));
            }
            (dim_in, dim_out) = (sa[1], sb[0]);
            total_r += sa[0];
            a_rows.extend(va.iter().map(|&x| x as f64));
            b_blocks.push((Mat::from_f32(sb[0], sb[1], vb), c));
        }
        let a_cat = Mat {
            rows: total_r,
            cols: dim_in,
            data: a_rows,
        };
        let mut b_cat = Mat::zeros(dim_out, total_r);
        let mut col = 0;
        for (b, c) in &b_blocks {
            for i in 0..b.rows {
                for j in 0..b.cols {
                    b_cat.set(i, col + j, c * b.at(i, j));
                }
            }
            col += b.cols;
        }
        let svd = product_svd(&b_cat, &a_cat);
        let err = truncation_error(&svd.s, r_out);
        max_err = max_err.max(err);
        truncation.insert(module.to_string(), err);
        let mut new_b = Mat::zeros(dim_out, r_out);
        let mut new_a = Mat::zeros(r_out, dim_in);
        for (j, &sigma) in svd.s.iter().enumerate().take(r_out) {
            let f = (sigma / s_out).sqrt();
            for i in 0..dim_out {
                new_b.set(i, j, svd.u.at(i, j) * f);
            }
            for i in 0..dim_in {
                new_a.set(j, i, svd.v.at(i, j) * f);
            }
        }
        out.insert(name.clone(), (vec![r_out, dim_in], new_a.to_f32()));
        out.insert(b_name, (vec![dim_out, r_out], new_b.to_f32()));
    }
    Ok((
        r_out,
        json!({
            "rank": r_out,
            "input_ranks": ranks,
            "truncation": {"max": max_err, "modules": truncation},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::adapter_set::Mode;
    use crate::ops::merge::adapter_fixtures::*;
    use serde_json::json;

    #[test]
    fn delta_mode_with_negative_weights_has_no_cross_terms() {
        let t = tempfile::tempdir().unwrap();
        let dims = (7, 5);
        let (a1, b1) = (rand(2 * 5, 11), rand(7 * 2, 12));
        let (a2, b2) = (rand(3 * 5, 13), rand(7 * 3, 14));
        let x = lora(
            &t.path().join("x"),
            2,
            16.0,
            a1.clone(),
            b1.clone(),
            dims,
            "base",
        );
        let y = lora(
            &t.path().join("y"),
            3,
            6.0,
            a2.clone(),
            b2.clone(),
            dims,
            "base",
        );
        let m = merge(
            &t.path().join("m"),
            &[&x, &y],
            &[-1.0, 2.0],
            Mode::Delta { rank: None },
        );
        let m = m.unwrap();
        let (w, r) = merged_delta(&m, dims);
        assert_eq!(r, 5, "the sum of the input ranks");
        let want: Vec<f64> = dense(&a1, &b1, 2, dims, 8.0)
            .iter()
            .zip(dense(&a2, &b2, 3, dims, 2.0))
            .map(|(p, q)| -p + 2.0 * q)
            .collect();
        assert!(max_diff(&w, &want) < 1e-5, "{}", max_diff(&w, &want));
        let rec = &m.as_artifact().unwrap().data["merge"];
        assert!(rec["truncation"]["max"].as_f64().unwrap() < 1e-6);
        assert_eq!(rec["input_ranks"], json!([2, 3]));
        // the first input's alpha is kept; the scale follows the new rank
        let cfg = crate::nn::peft::io::read_json(
            &m.as_artifact().unwrap().dir.join("adapter_config.json"),
        )
        .unwrap();
        assert_eq!(
            (cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()),
            (Some(5), Some(16.0))
        );
    }

    #[test]
    fn truncation_error_is_the_discarded_singular_energy() {
        // ΔW = diag(4, 3) from x plus diag(2, 1) on the other two coordinates from y:
        // singular values 4, 3, 2, 1; rank 2 keeps 4 and 3.
        let t = tempfile::tempdir().unwrap();
        let unit = |rows: &[(usize, usize, f32)], n: usize, m: usize| {
            let mut v = vec![0f32; n * m];
            rows.iter().for_each(|&(i, j, x)| v[i * m + j] = x);
            v
        };
        let x = lora(
            &t.path().join("x"),
            2,
            2.0,
            unit(&[(0, 0, 1.0), (1, 1, 1.0)], 2, 4),
            unit(&[(0, 0, 4.0), (1, 1, 3.0)], 4, 2),
            (4, 4),
            "base",
        );
        let y = lora(
            &t.path().join("y"),
            2,
            2.0,
            unit(&[(0, 2, 1.0), (1, 3, 1.0)], 2, 4),
            unit(&[(2, 0, 2.0), (3, 1, 1.0)], 4, 2),
            (4, 4),
            "base",
        );
        let m = merge(
            &t.path().join("m"),
            &[&x, &y],
            &[1.0, 1.0],
            Mode::Delta { rank: Some(2) },
        );
        let m = m.unwrap();
        let (w, r) = merged_delta(&m, (4, 4));
        assert_eq!(r, 2);
        let full = [
            4.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        ];
        let residual: f64 = w
            .iter()
            .zip(full)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = full.iter().map(|x| x * x).sum::<f64>().sqrt();
        let want = (5.0f64 / 30.0).sqrt();
        assert!((residual / norm - want).abs() < 1e-6, "{}", residual / norm);
        let rec = &m.as_artifact().unwrap().data["merge"]["truncation"];
        assert!((rec["max"].as_f64().unwrap() - want).abs() < 1e-12);
        assert!((rec["modules"]["base_model.model.m.q"].as_f64().unwrap() - want).abs() < 1e-12);
        // A rank above the available singular values pads with zeros and stays exact.
        let p = merge(
            &t.path().join("p"),
            &[&x, &y],
            &[1.0, 1.0],
            Mode::Delta { rank: Some(6) },
        );
        let (w, r) = merged_delta(&p.unwrap(), (4, 4));
        assert_eq!(r, 6);
        assert!(max_diff(&w, &full) < 1e-6);
    }
}
