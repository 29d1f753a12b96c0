//! Classification metrics with scikit-learn's definitions (methods.md §5.14).
//!
//! * accuracy `= #{pred = gold} / N`;
//! * macro-F1 `= mean_c F1_c` over the labels present in gold ∪ pred (sklearn's default
//!   `labels`), `F1_c = 2TP / (2TP + FP + FN)`, 0 when the denominator is 0;
//! * MCC (Gorodkin's multiclass R_K, sklearn `matthews_corrcoef`): with `t_c`, `p_c` the gold
//!   and predicted counts of class `c`, `k` the correct count and `s = N`,
//!   `MCC = (k·s − Σ t_c p_c) / √((s² − Σ p_c²)(s² − Σ t_c²))`, 0 when the denominator is 0.
//!   For two classes it equals `(TP·TN − FP·FN)/√((TP+FP)(TP+FN)(TN+FP)(TN+FN))`.
//!
//! Mismatched or empty inputs are `smelt::train::metric` errors.

use crate::diag::OpError;
use std::collections::BTreeMap;

fn check(pred: &[u32], gold: &[u32]) -> Result<(), OpError> {
    if pred.len() != gold.len() || pred.is_empty() {
        return Err(OpError::new(
            "smelt::train::metric",
            format!("{} predictions for {} gold labels", pred.len(), gold.len()),
        )
        .with_help("metrics need one prediction per example and at least one example"));
    }
    Ok(())
}

pub fn accuracy(pred: &[u32], gold: &[u32]) -> Result<f64, OpError> {
    check(pred, gold)?;
    let hit = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    Ok(hit as f64 / pred.len() as f64)
}

pub fn macro_f1(pred: &[u32], gold: &[u32]) -> Result<f64, OpError> {
    check(pred, gold)?;
    let mut counts: BTreeMap<u32, (usize, usize, usize)> = BTreeMap::new(); // tp, fp, fn
    for (&p, &g) in pred.iter().zip(gold) {
        if p == g {
            counts.entry(p).or_default().0 += 1;
        } else {
            counts.entry(p).or_default().1 += 1;
            counts.entry(g).or_default().2 += 1;
        }
    }
    let f1s: Vec<f64> = counts
        .values()
        .map(|&(tp, fp, fn_)| {
            let d = 2 * tp + fp + fn_;
            if d == 0 {
                0.0
            } else {
                2.0 * tp as f64 / d as f64
            }
        })
        .collect();
    Ok(f1s.iter().sum::<f64>() / f1s.len() as f64)
}

pub fn mcc(pred: &[u32], gold: &[u32]) -> Result<f64, OpError> {
    check(pred, gold)?;
    let mut t: BTreeMap<u32, f64> = BTreeMap::new();
    let mut p: BTreeMap<u32, f64> = BTreeMap::new();
    let mut k = 0f64;
    for (&pp, &g) in pred.iter().zip(gold) {
        *t.entry(g).or_default() += 1.0;
        *p.entry(pp).or_default() += 1.0;
        if pp == g {
            k += 1.0;
        }
    }
    let s = pred.len() as f64;
    let tp: f64 = t
        .iter()
        .map(|(c, tc)| tc * p.get(c).copied().unwrap_or(0.0))
        .sum();
    let pp: f64 = p.values().map(|x| x * x).sum();
    let tt: f64 = t.values().map(|x| x * x).sum();
    let den = ((s * s - pp) * (s * s - tt)).sqrt();
    Ok(if den == 0.0 { 0.0 } else { (k * s - tp) / den })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_metrics_match_hand_computation() {
        // TP=3, TN=2, FP=1, FN=2
        let gold = [1, 1, 1, 1, 1, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 0, 0, 1];
        assert_eq!(accuracy(&pred, &gold).unwrap(), 5.0 / 8.0);
        let want = (3.0 * 2.0 - 1.0 * 2.0) / ((4.0f64) * 5.0 * 3.0 * 4.0).sqrt();
        assert!((mcc(&pred, &gold).unwrap() - want).abs() < 1e-12);
        let f1_pos = 6.0 / (6.0 + 1.0 + 2.0);
        let f1_neg = 4.0 / (4.0 + 2.0 + 1.0);
        assert!((macro_f1(&pred, &gold).unwrap() - (f1_pos + f1_neg) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn degenerate_cases() {
        assert_eq!(mcc(&[1, 1, 1], &[0, 1, 1]).unwrap(), 0.0);
        assert_eq!(mcc(&[0, 1, 2], &[0, 1, 2]).unwrap(), 1.0);
        // sklearn: f1_score([0,1,2],[0,2,1], average="macro") = 1/3
        assert!((macro_f1(&[0, 2, 1], &[0, 1, 2]).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(accuracy(&[], &[]).unwrap_err().code, "smelt::train::metric");
        assert!(mcc(&[1], &[1, 0]).is_err());
    }
}
