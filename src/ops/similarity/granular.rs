//! Granularity of a similarity score (paper 2's module-importance analysis, methods.md §2.7):
//! which delta tensors one score looks at.
//!
//! * `model` — one score over every delta tensor (the ordinary target × source matrix);
//! * `block` — one score per transformer block (all delta tensors of `…layer.N.…` /
//!   `…layers.N.…` together), giving a `[block, target, source]` array;
//! * `layer` — one score per adapted sub-layer (one LoRA module = its A and B, one bottleneck
//!   adapter = its down/up weights and biases), giving a `[layer, target, source]` array.
//!
//! Each slice of a granular array is an ordinary target × source matrix; `similarity block`
//! takes one out, so every block's (or layer's) weights merge the *whole* delta, as the paper
//! does. Prefixes re-parameterise all blocks through one MLP and have no per-block tensors.

use crate::diag::OpError;
use crate::tensors::matrix::{Axis, Matrix};

pub const GRANULARITIES: &[&str] = &["model", "block", "layer"];

/// Groups of delta tensor names: `(group label, indices into names)`, in model order.
pub fn groups(names: &[String], granularity: &str) -> Result<Vec<(String, Vec<usize>)>, OpError> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    if granularity == "model" {
        return Ok(vec![("model".into(), (0..names.len()).collect())]);
    }
    for (i, n) in names.iter().enumerate() {
        let label = match granularity {
            "block" => block_of(n).map(|b| format!("block {b}")),
            _ => module_of(n),
        }
        .ok_or_else(|| {
            OpError::new(
                "smelt::run::granularity",
                format!("delta tensor `{n}` belongs to no {granularity} of the model"),
            )
            .with_help(
                "block and layer granularity need per-block deltas (LoRA or bottleneck \
                 adapters); a prefix is re-parameterised across all blocks — use granularity=model",
            )
        })?;
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, ix)) => ix.push(i),
            None => out.push((label, vec![i])),
        }
    }
    if granularity == "block" {
        out.sort_by_key(|(l, _)| l[6..].parse::<usize>().unwrap_or(usize::MAX));
    }
    Ok(out)
}

/// The block index of a tensor name: the number after a `layer` / `layers` / `h` / `block`
/// component (`encoder.layer.3.…`, `model.layers.3.…`).
pub fn block_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layer" | "layers" | "h" | "block" | "blocks")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

/// The adapted sub-layer a tensor belongs to: its name without the PEFT prefix and the factor
/// suffix (`….query.lora_A.weight` → `….query`, `….output.adapter.up.bias` → `….output`).
pub fn module_of(name: &str) -> Option<String> {
    let n = name
        .strip_prefix(crate::nn::peft::lora::PREFIX)
        .unwrap_or(name);
    for cut in [".lora_A.", ".lora_B.", ".adapter."] {
        if let Some(at) = n.find(cut) {
            return Some(n[..at].to_string());
        }
    }
    None
}

/// Per-group scores `[G][n·n]` as one `[G, target, source]` array (or the plain target × source
/// matrix when there is a single `model` group).
pub fn stack(
    what: &str,
    granularity: &str,
    group_labels: Vec<String>,
    labels: &[String],
    per_group: Vec<Vec<f64>>,
) -> Result<Matrix, OpError> {
    let n = labels.len();
    if granularity == "model" {
        let values = per_group.into_iter().next().unwrap_or_default();
        return Matrix::new2(
            what,
            Axis::new("target", labels.to_vec()),
            Axis::new("source", labels.to_vec()),
            values,
        );
    }
    let g = group_labels.len();
    Matrix::new(
        what,
        vec![g, n, n],
        vec![
            Axis::new(granularity, group_labels),
            Axis::new("target", labels.to_vec()),
            Axis::new("source", labels.to_vec()),
        ],
        per_group.concat(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn blocks_and_layers_group_tensors_in_model_order() {
        let n = names(&[
            "base_model.model.encoder.layer.10.attention.self.query.lora_A.weight",
            "base_model.model.encoder.layer.10.attention.self.query.lora_B.weight",
            "base_model.model.encoder.layer.2.attention.self.value.lora_A.weight",
            "base_model.model.encoder.layer.2.attention.self.query.lora_A.weight",
            "base_model.model.encoder.layer.2.attention.self.query.lora_B.weight",
        ]);
        let b = groups(&n, "block").unwrap();
        assert_eq!(b[0], ("block 2".to_string(), vec![2, 3, 4]));
        assert_eq!(b[1], ("block 10".to_string(), vec![0, 1]));
        let l = groups(&n, "layer").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].0, "encoder.layer.10.attention.self.query");
        assert_eq!(l[0].1, vec![0, 1]);
        assert_eq!(l[2].1, vec![3, 4]);
        assert_eq!(groups(&n, "model").unwrap()[0].1.len(), 5);
        assert_eq!(
            block_of("model.layers.7.self_attn.q_proj.lora_B.weight"),
            Some(7)
        );
        assert_eq!(
            module_of("encoder.layer.0.output.adapter.up.bias").as_deref(),
            Some("encoder.layer.0.output")
        );
    }

    #[test]
    fn a_prefix_has_no_blocks() {
        let n = names(&["prefix.embedding", "prefix.mlp.0.weight"]);
        let e = groups(&n, "block").unwrap_err();
        assert!(e.message.contains("belongs to no block"), "{}", e.message);
        assert!(groups(&n, "layer").is_err());
    }

    #[test]
    fn stacking_makes_a_block_target_source_array() {
        let labels = names(&["a", "b"]);
        let m = stack(
            "s",
            "block",
            names(&["block 0", "block 1"]),
            &labels,
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0, 7.0]],
        )
        .unwrap();
        assert_eq!(m.shape, vec![2, 2, 2]);
        assert_eq!(m.axes[0].name, "block");
        let s = m.slice(1).unwrap();
        assert_eq!(s.shape, vec![2, 2]);
        assert_eq!(s.get(1, 0), 6.0);
        assert_eq!(s.meta["block"], "block 1");
    }
}
