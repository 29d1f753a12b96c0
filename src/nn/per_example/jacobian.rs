//! Per-example Jacobians of a few outputs and their dot products: the empirical NTK.
//!
//! One probed forward of a block of `B` examples and one backward per output `c` (of
//! `Σ_b out_{b,c}`; the examples do not interact) give, through [`super::rebuild`], every
//! example's gradient of every output. [`JacobianBlock`] keeps them as `B·C` rows (row
//! `b·C + c` = `∇θ out_c(x_b)`), per parameter: dense `[B·C, numel]`, or row-sparse for the
//! embedding rows and label-word decoder rows a block touches (`rows` + `[B·C, R, cols]`).
//! [`JacobianBlock::dot`] forms `⟨row_i, row_j⟩` for all pairs of two blocks, parameter by
//! parameter, in f64 (each part is cast to f64 before its product, and the parts are summed in
//! f64), so a kernel `K = J_a J_bᵀ` never needs the `N × D` Jacobian of a whole split: memory
//! is two blocks. [`JacobianBlock::sign`] gives the elementwise sign (`sign 0 = 0`) for the
//! SignGD kernels (methods.md §4.5).

use super::gram::{gram_f32_f64, with_cpu_f32};
use super::{dense, rebuild, scatter, Grad, ParamIndex, CODE};
use crate::diag::OpError;
use crate::nn::probe::Recording;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// One parameter's rows of a block.
#[derive(Debug, Clone)]
enum Part {
    /// `[R, numel]`.
    Dense(Tensor),
    /// Rows `rows` (sorted, distinct) of a 2-D parameter: `[R, rows.len(), cols]`; the other
    /// rows of the parameter are zero.
    Rows { rows: Vec<u32>, data: Tensor },
}

/// Per-example Jacobian rows of a block of examples over the parameters of a [`ParamIndex`].
#[derive(Debug, Clone)]
pub struct JacobianBlock {
    rows: usize,
    parts: BTreeMap<usize, Part>,
}

impl JacobianBlock {
    /// The block of `batch` examples whose probed forward recorded `rec`; `stores[c]` is the
    /// backward of `Σ_b out_{b,c}`. Row `b·C + c` is `∇θ out_c(x_b)`.
    pub fn from_backwards(
        index: &ParamIndex,
        rec: &Recording,
        stores: &[GradStore],
        batch: usize,
    ) -> Result<JacobianBlock, OpError> {
        let c = stores.len();
        let mut per = stores
            .iter()
            .map(|g| rebuild(index, rec, g, batch))
            .collect::<Result<Vec<_>, _>>()?;
        let keys: BTreeSet<usize> = per.iter().flat_map(|m| m.keys().copied()).collect();
        let mut parts = BTreeMap::new();
        for p in keys {
            let shape = &index.entry(p).shape;
            let numel = index.entry(p).numel();
            let cols = numel / shape.first().copied().unwrap_or(1).max(1);
            let grads: Vec<Option<Grad>> = per.iter_mut().map(|m| m.remove(&p)).collect();
            let (dtype, device) = grads
                .iter()
                .flatten()
                .map(|g| match g {
                    Grad::Dense(t) | Grad::Outer { g: t, .. } | Grad::Rows { data: t, .. } => {
                        (t.dtype(), t.device().clone())
                    }
                })
                .next()
                .ok_or_else(|| OpError::new("smelt::internal", "a parameter without gradients"))?;
            let all_rows = grads
                .iter()
                .all(|g| matches!(g, None | Some(Grad::Rows { .. })));
            let part = if all_rows {
                let union: Vec<u32> = grads
                    .iter()
                    .flatten()
                    .flat_map(|g| match g {
                        Grad::Rows { rows, .. } => rows.clone(),
                        _ => Vec::new(),
                    })
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let datas = grads
                    .into_iter()
                    .map(|g| match g {
                        Some(Grad::Rows { rows, data }) => {
                            let at: Vec<u32> = rows
                                .iter()
                                .map(|r| union.binary_search(r).unwrap_or(0) as u32)
                                .collect();
                            scatter(&data, &at, union.len())
                        }
                        _ => Ok(Tensor::zeros((batch, union.len(), cols), dtype, &device)?),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let data = Tensor::stack(&datas, 1)?.reshape((batch * c, union.len(), cols))?;
                Part::Rows { rows: union, data }
            } else {
                let flats = grads
                    .into_iter()
                    .map(|g| -> Result<Tensor, OpError> {
                        Ok(match g.map(dense).transpose()? {
                            Some(Grad::Dense(t)) => t.reshape((batch, numel))?,
                            Some(Grad::Rows { rows, data }) => {
                                scatter(&data, &rows, numel / cols)?.reshape((batch, numel))?
                            }
                            Some(Grad::Outer { .. }) => {
                                return Err(OpError::new(
                                    "smelt::internal",
                                    "a factored gradient was not formed",
                                ))
                            }
                            None => Tensor::zeros((batch, numel), dtype, &device)?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Part::Dense(match flats.len() {
                    1 => flats.into_iter().next().expect("one output"),
                    _ => Tensor::stack(&flats, 1)?.reshape((batch * c, numel))?,
                })
            };
            parts.insert(p, part);
        }
        Ok(JacobianBlock {
            rows: batch * c,
            parts,
        })
    }

    /// Rows of the block (examples × outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The elementwise sign of every row (`sign 0 = 0`; untouched rows stay zero).
    pub fn sign(&self) -> Result<JacobianBlock, OpError> {
        let parts = self
            .parts
            .iter()
            .map(|(&p, part)| {
                Ok((
                    p,
                    match part {
                        Part::Dense(t) => Part::Dense(t.sign()?),
                        Part::Rows { rows, data } => Part::Rows {
                            rows: rows.clone(),
                            data: data.sign()?,
                        },
                    },
                ))
            })
            .collect::<Result<_, OpError>>()?;
        Ok(JacobianBlock {
            rows: self.rows,
            parts,
        })
    }

    /// `⟨self_i, other_j⟩` for every row pair, row-major `[self.rows(), other.rows()]`, summed
    /// over the parameters in f64.
    pub fn dot(&self, other: &JacobianBlock) -> Result<Vec<f64>, OpError> {
        let mut acc = vec![0f64; self.rows * other.rows];
        for (p, a) in &self.parts {
            let Some(b) = other.parts.get(p) else {
                continue; // no gradient in one block: the product is zero
            };
            let Some(m) = part_dot(a, b)? else { continue };
            let v = m.flatten_all()?.to_vec1::<f64>()?;
            if v.len() != acc.len() {
                return Err(OpError::new(
                    CODE,
                    format!("blocks of {} and {} rows", self.rows, other.rows),
                ));
            }
            acc.iter_mut().zip(v).for_each(|(s, x)| *s += x);
        }
        Ok(acc)
    }

    /// Every row as a flat f64 vector over all parameters of `index`, in index order
    /// (parameters without gradient are zeros). `rows × D` memory: for checks and tiny models.
    pub fn flatten(&self, index: &ParamIndex) -> Result<Vec<Vec<f64>>, OpError> {
        let d = index.numel();
        let mut out = vec![vec![0f64; d]; self.rows];
        let mut offset = 0;
        for p in 0..index.len() {
            let numel = index.entry(p).numel();
            match self.parts.get(&p) {
                None => {}
                Some(Part::Dense(t)) => {
                    let v = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                    for (row, src) in out.iter_mut().zip(v) {
                        row[offset..offset + numel].copy_from_slice(&src);
                    }
                }
                Some(Part::Rows { rows, data }) => {
                    let cols = data.dim(2)?;
                    let v = data.to_dtype(DType::F64)?.to_vec3::<f64>()?;
                    for (row, src) in out.iter_mut().zip(v) {
                        for (&r, g) in rows.iter().zip(src) {
                            let at = offset + r as usize * cols;
                            row[at..at + cols].copy_from_slice(&g);
                        }
                    }
                }
            }
            offset += numel;
        }
        Ok(out)
    }
}

fn f64_2d(t: &Tensor, rows: usize) -> Result<Tensor, OpError> {
    Ok(t.reshape((rows, ()))?.to_dtype(DType::F64)?)
}

/// The `[Ra, Rb]` f64 products of one parameter's rows in two blocks (`None`: no common rows).
fn part_dot(a: &Part, b: &Part) -> Result<Option<Tensor>, OpError> {
    Ok(match (a, b) {
        (Part::Dense(x), Part::Dense(y)) => {
            let (ra, rb) = (x.dim(0)?, y.dim(0)?);
            if let Some(v) =
                with_cpu_f32(x, |a| with_cpu_f32(y, |b| gram_f32_f64(a, ra, b, rb))).flatten()
            {
                return Ok(Some(Tensor::from_vec(v, (ra, rb), x.device())?));
            }
            Some(f64_2d(x, ra)?.matmul(&f64_2d(y, rb)?.t()?)?)
        }
        (Part::Rows { rows: ka, data: da }, Part::Rows { rows: kb, data: db }) => {
            let common: Vec<u32> = ka
                .iter()
                .filter(|r| kb.binary_search(r).is_ok())
                .copied()
                .collect();
            if common.is_empty() {
                return Ok(None);
            }
            let pick = |keys: &[u32], data: &Tensor| -> Result<Tensor, OpError> {
                let at: Vec<u32> = common
                    .iter()
                    .map(|r| keys.binary_search(r).unwrap_or(0) as u32)
                    .collect();
                let at = Tensor::new(at.as_slice(), data.device())?;
                f64_2d(&data.index_select(&at, 1)?, data.dim(0)?)
            };
            Some(pick(ka, da)?.matmul(&pick(kb, db)?.t()?)?)
        }
        (Part::Rows { rows, data }, Part::Dense(y)) => {
            let y = rows_of(y, rows, data.dim(2)?)?;
            part_dot(a, &y)?
        }
        (Part::Dense(x), Part::Rows { rows, data }) => {
            let x = rows_of(x, rows, data.dim(2)?)?;
            part_dot(&x, b)?
        }
    })
}

/// Rows `rows` of a dense `[R, total·cols]` part, as a row-sparse part.
fn rows_of(t: &Tensor, rows: &[u32], cols: usize) -> Result<Part, OpError> {
    let r = t.dim(0)?;
    let total = t.dim(1)? / cols.max(1);
    let at = Tensor::new(rows, t.device())?;
    let data = t.reshape((r, total, cols))?.index_select(&at, 1)?;
    Ok(Part::Rows {
        rows: rows.to_vec(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::per_example::testnet::{forward, randn};
    use crate::nn::probe::Probe;
    use candle_core::{Device, Var};

    fn params(dtype: DType) -> Vec<(&'static str, Tensor)> {
        let (v, h) = (9, 6);
        vec![
            ("emb", randn(&[v, h], 1, dtype)),
            ("ln.w", randn(&[h], 2, dtype).affine(0.1, 1.0).unwrap()),
            ("ln.b", randn(&[h], 3, dtype)),
            ("lin.w", randn(&[h, h], 4, dtype)),
            ("lin.b", randn(&[h], 5, dtype)),
            ("rms.w", randn(&[h], 6, dtype).affine(0.1, 1.0).unwrap()),
        ]
    }

    fn ids(rows: &[[u32; 4]]) -> Tensor {
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 4), &Device::Cpu).unwrap()
    }

    /// The block of the tiny network's outputs (one per label word) for `ids`.
    fn block(
        words: &[u32],
        ps: &[(&str, Tensor)],
        ids: &Tensor,
        skip: &[&str],
    ) -> (ParamIndex, JacobianBlock) {
        let p = |i: usize| &ps[i].1;
        let probe = Probe::new();
        let z = forward(
            words,
            p(0),
            (p(1), p(2)),
            (p(3), p(4)),
            p(5),
            ids,
            Some(&probe),
        );
        let rec = probe.take();
        let stores: Vec<GradStore> = (0..words.len())
            .map(|c| {
                z.narrow(1, c, 1)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            })
            .collect();
        let mut index = ParamIndex::new();
        for (n, t) in ps {
            if skip.contains(n) {
                index.skip(t);
            } else {
                index.register(n, t).unwrap();
            }
        }
        let b = ids.dim(0).unwrap();
        let jb = JacobianBlock::from_backwards(&index, &rec, &stores, b).unwrap();
        (index, jb)
    }

    /// Reference rows: every parameter a `Var`, one ordinary backward per (example, output).
    fn loop_rows(
        words: &[u32],
        ps: &[(&str, Tensor)],
        ids: &Tensor,
        skip: &[&str],
    ) -> Vec<Vec<f64>> {
        let vars: Vec<Var> = ps
            .iter()
            .map(|(_, t)| Var::from_tensor(t).unwrap())
            .collect();
        let vt = |i: usize| vars[i].as_tensor();
        let mut out = Vec::new();
        for row in 0..ids.dim(0).unwrap() {
            let one = ids.narrow(0, row, 1).unwrap();
            let z = forward(
                words,
                vt(0),
                (vt(1), vt(2)),
                (vt(3), vt(4)),
                vt(5),
                &one,
                None,
            );
            for c in 0..words.len() {
                let g = z
                    .narrow(1, c, 1)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mut flat = Vec::new();
                for (i, (n, _)) in ps.iter().enumerate() {
                    if skip.contains(n) {
                        continue;
                    }
                    let t = g.get(vt(i)).unwrap().to_dtype(DType::F64).unwrap();
                    flat.extend(t.flatten_all().unwrap().to_vec1::<f64>().unwrap());
                }
                out.push(flat);
            }
        }
        out
    }

    fn gram(
        a: &[Vec<f64>],
        b: &[Vec<f64>],
        f: impl Fn(f64) -> f64,
        g: impl Fn(f64) -> f64,
    ) -> Vec<f64> {
        a.iter()
            .flat_map(|x| {
                b.iter()
                    .map(|y| x.iter().zip(y).map(|(u, v)| f(*u) * g(*v)).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn close(got: &[f64], want: &[f64], tol: f64) {
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "the reference is zero");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol * scale, "{g} vs {w} (scale {scale})");
        }
        assert_eq!(got.len(), want.len());
    }

    #[test]
    fn f64_jacobian_rows_and_kernels_equal_single_example_backwards() {
        let ps = params(DType::F64);
        let a = ids(&[[1, 3, 3, 0], [5, 2, 7, 1], [4, 4, 4, 8]]);
        let b = ids(&[[2, 2, 6, 0], [1, 8, 8, 3]]);
        // 2 label words: row-sparse decoder; 6 of 9: the per-output rows are still sparse.
        for words in [&[3u32, 5][..], &[0, 1, 2, 3, 5, 7]] {
            let (index, ja) = block(words, &ps, &a, &[]);
            let (_, jb) = block(words, &ps, &b, &[]);
            assert_eq!(ja.rows(), 3 * words.len());
            let (ra, rb) = (
                loop_rows(words, &ps, &a, &[]),
                loop_rows(words, &ps, &b, &[]),
            );
            let flat = ja.flatten(&index).unwrap();
            for (got, want) in flat.iter().zip(&ra) {
                close(got, want, 1e-12);
            }
            let id = |x: f64| x;
            let sg = |x: f64| (x > 0.0) as i32 as f64 - (x < 0.0) as i32 as f64;
            close(&ja.dot(&jb).unwrap(), &gram(&ra, &rb, id, id), 1e-12);
            close(&ja.dot(&ja).unwrap(), &gram(&ra, &ra, id, id), 1e-12);
            let (sa, sb) = (ja.sign().unwrap(), jb.sign().unwrap());
            assert_eq!(sa.dot(&sb).unwrap(), gram(&ra, &rb, sg, sg));
            close(&sa.dot(&jb).unwrap(), &gram(&ra, &rb, sg, id), 1e-12);
            // Dense parts against row-sparse ones give the same products.
            let dense = densified(&ja, &index);
            close(&dense.dot(&jb).unwrap(), &gram(&ra, &rb, id, id), 1e-12);
            close(&jb.dot(&dense).unwrap(), &gram(&rb, &ra, id, id), 1e-12);
        }
    }

    /// Every part of `j` made dense.
    fn densified(j: &JacobianBlock, index: &ParamIndex) -> JacobianBlock {
        let parts = j
            .parts
            .iter()
            .map(|(&p, part)| {
                let t = match part {
                    Part::Dense(t) => t.clone(),
                    Part::Rows { rows, data } => {
                        let total = index.entry(p).shape[0];
                        let r = data.dim(0).unwrap();
                        scatter(data, rows, total)
                            .unwrap()
                            .reshape((r, ()))
                            .unwrap()
                    }
                };
                (p, Part::Dense(t))
            })
            .collect();
        JacobianBlock {
            rows: j.rows,
            parts,
        }
    }

    #[test]
    fn skipped_parameters_are_left_out_and_f32_agrees_with_f64() {
        let words = [3u32, 5];
        let skip = ["emb", "lin.w"];
        let a = ids(&[[1, 3, 3, 0], [5, 2, 7, 1]]);
        let (index, j) = block(&words, &params(DType::F64), &a, &skip);
        assert_eq!(index.len(), 4);
        assert_eq!(index.numel(), 6 * 4);
        let want = loop_rows(&words, &params(DType::F64), &a, &skip);
        for (got, want) in j.flatten(&index).unwrap().iter().zip(&want) {
            close(got, want, 1e-12);
        }
        let (_, j32) = block(&words, &params(DType::F32), &a, &skip);
        close(&j32.dot(&j32).unwrap(), &j.dot(&j).unwrap(), 1e-5);
        // An unknown tensor is still a wiring error.
        let mut bare = ParamIndex::new();
        bare.register("ln.w", &params(DType::F64)[1].1).unwrap();
        let ps = params(DType::F64);
        let p = |i: usize| &ps[i].1;
        let probe = Probe::new();
        let z = forward(
            &words,
            p(0),
            (p(1), p(2)),
            (p(3), p(4)),
            p(5),
            &a,
            Some(&probe),
        );
        let g = z.sum_all().unwrap().backward().unwrap();
        let e = JacobianBlock::from_backwards(&bare, &probe.take(), &[g], 2).unwrap_err();
        assert_eq!(e.code, CODE);
    }
}
