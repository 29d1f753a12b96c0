//! `cluster sdp(T, k)`: paper 1's task grouping — the SDP relaxation of `clustering.py`
//! (methods.md §1.9), solved by clarabel's interior-point method with a PSD cone, then the
//! code's greedy rounding (src/ops/cluster/rounding.rs).
//!
//! maximise ⟨T, X⟩ over symmetric n × n X subject to X ⪰ 0, X ≥ 0 entrywise, X·1 = 1 and
//! tr X = k. With `size_penalty = λ` instead of `k` (the code's `run_regularized_sdp_clustering`)
//! the trace constraint is dropped and the objective becomes ⟨T, X⟩ − λ·tr X: a larger λ makes
//! each group cost more, so fewer, larger groups come out.
//!
//! T may be asymmetric (paper 1's affinity is): for symmetric X, ⟨T, X⟩ = ⟨(T + Tᵀ)/2, X⟩, so
//! only T's symmetric part matters — the same as the code's `trace(T @ X)`. The variables are
//! X's upper triangle; the PSD constraint is clarabel's `PSDTriangleConeT(n)` on svec(X) (off
//! diagonals scaled by √2), and X ≥ 0 is imposed on the off-diagonal entries only (the diagonal
//! of a PSD matrix is non-negative already).

use super::rounding::greedy_round;
use super::{check_k, nan_param, partition_value, task_matrix_arg};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::partition::Partition;
use crate::types::Ty;
use crate::value::Value;
use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettings, DefaultSolver, IPSolver, NonnegativeConeT, PSDTriangleConeT, SolverStatus,
    SupportedConeT, ZeroConeT,
};
use serde_json::json;

pub struct ClusterSdp;

static SIG: Signature = Signature {
    id: "cluster.sdp",
    version: 1,
    summary: "Group tasks by the SDP relaxation max ⟨T,X⟩ (X ⪰ 0, X ≥ 0, X·1 = 1, tr X = k) and greedy rounding.",
    doc: "Paper 1's clustering (methods.md §1.9): solves max ⟨T, X⟩ subject to X ⪰ 0, X ≥ 0, \
          rows of X summing to 1 and tr X = k with the clarabel interior-point solver, then \
          rounds B = X > 1/n greedily as the paper's code does (the number of groups may differ \
          from k; a task no row claims becomes its own group, listed in `meta.unclaimed`). Give \
          `size_penalty = λ` instead of `k` for the regularised variant: no trace constraint, \
          objective ⟨T, X⟩ − λ·tr X (larger λ, fewer groups). An asymmetric T enters through \
          its symmetric part (T + Tᵀ)/2, which is what ⟨T, X⟩ means for symmetric X. Higher T \
          must mean more related (use an accuracy-like affinity, or −loss). The partition \
          records the objective, the solver status and iterations, and the relaxed X.",
    params: &[
        Param::req("matrix", Ty::Matrix, "Task × task affinity T (rows and columns the same tasks)."),
        Param::opt("k", Ty::Opt(&Ty::Int), Const::None, "Trace of X: the number of groups aimed at.").range(1.0, 1e9),
        Param::opt("size_penalty", Ty::Opt(&Ty::Float), Const::None, "λ of the regularised variant (instead of `k`)."),
        nan_param(),
    ],
    returns: Ty::Partition,
    ret_fn: None,
    examples: &[
        "let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet p = cluster sdp(t, 2)",
        "let t = matrix(rows=[[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], labels=[\"cb\", \"rte\", \"copa\"])\nlet p = cluster sdp(t, size_penalty=0.2)",
    ],
    reference: Some("Li et al. (ACL 2025) §3.2; methods.md §1.9 (`run_sdp_clustering`)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: false,
};

/// What replaces the trace constraint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// tr X = k.
    Trace(f64),
    /// No trace constraint; objective − λ·tr X.
    Penalty(f64),
}

/// The solver's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SdpSolution {
    /// The relaxed solution, row-major n × n, symmetric.
    pub x: Vec<f64>,
    /// ⟨T, X⟩ (minus λ·tr X for the penalised variant), in the maximisation sense.
    pub objective: f64,
    pub status: String,
    pub iterations: usize,
}

/// Position of X[i, j] (i ≤ j) in svec order: the upper triangle column by column.
fn tri(i: usize, j: usize) -> usize {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    j * (j + 1) / 2 + i
}

/// Solves the relaxation for the row-major n × n affinity `t`.
pub fn solve_sdp(t: &[f64], n: usize, budget: Budget) -> Result<SdpSolution, OpError> {
    let d = n * (n + 1) / 2;
    // Objective: minimise −⟨T, X⟩ (+ λ·tr X).
    let mut q = vec![0.0; d];
    for i in 0..n {
        for j in 0..n {
            q[tri(i, j)] -= t[i * n + j];
        }
    }
    if let Budget::Penalty(l) = budget {
        for i in 0..n {
            q[tri(i, i)] += l;
        }
    }
    // Constraints A·x + s = b, s in: zero cone (rows sum to 1, trace), nonnegative cone (−X_ij
    // ≤ 0 off the diagonal), PSD triangle cone (s = svec(X)).
    let (mut rows, mut cols, mut vals, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut push = |r: usize, c: usize, v: f64| {
        rows.push(r);
        cols.push(c);
        vals.push(v);
    };
    for i in 0..n {
        for j in 0..n {
            push(i, tri(i, j), 1.0);
        }
        b.push(1.0);
    }
    let mut zero = n;
    if let Budget::Trace(k) = budget {
        for i in 0..n {
            push(n, tri(i, i), 1.0);
        }
        b.push(k);
        zero += 1;
    }
    let mut r = zero;
    for j in 0..n {
        for i in 0..j {
            push(r, tri(i, j), -1.0);
            b.push(0.0);
            r += 1;
        }
    }
    let nonneg = r - zero;
    for j in 0..n {
        for i in 0..=j {
            push(
                r,
                tri(i, j),
                if i == j {
                    -1.0
                } else {
                    -std::f64::consts::SQRT_2
                },
            );
            b.push(0.0);
            r += 1;
        }
    }
    let a = CscMatrix::new_from_triplets(r, d, rows, cols, vals);
    let p = CscMatrix::zeros((d, d));
    let mut cones: Vec<SupportedConeT<f64>> = vec![ZeroConeT(zero)];
    if nonneg > 0 {
        cones.push(NonnegativeConeT(nonneg));
    }
    cones.push(PSDTriangleConeT(n));
    let settings = DefaultSettings {
        verbose: false,
        ..DefaultSettings::default()
    };
    let mut solver = DefaultSolver::new(&p, &q, &a, &b, &cones, settings).map_err(|e| {
        OpError::new(
            "smelt::run::sdp_solver",
            format!("the SDP could not be set up: {e}"),
        )
    })?;
    solver.solve();
    let sol = &solver.solution;
    let status = match sol.status {
        SolverStatus::Solved => "solved",
        SolverStatus::AlmostSolved => "almost_solved",
        other => {
            return Err(OpError::new(
                "smelt::run::sdp_solver",
                format!(
                    "the SDP solver stopped without a solution ({other:?} after {} iterations)",
                    sol.iterations
                ),
            )
            .with_help(
                "check the affinity for huge or degenerate values; rescaling T often helps",
            ))
        }
    };
    let mut x = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            x[i * n + j] = sol.x[tri(i, j)];
        }
    }
    let penalty = match budget {
        Budget::Penalty(l) => l * (0..n).map(|i| x[i * n + i]).sum::<f64>(),
        Budget::Trace(_) => 0.0,
    };
    let objective = t.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() - penalty;
    Ok(SdpSolution {
        x,
        objective,
        status: status.to_string(),
        iterations: sol.iterations as usize,
    })
}

/// How far X is from the feasible set: (max |row sum − 1|, min entry, min eigenvalue, trace).
pub fn feasibility(x: &[f64], n: usize) -> (f64, f64, f64, f64) {
    let rows = (0..n)
        .map(|i| (x[i * n..(i + 1) * n].iter().sum::<f64>() - 1.0).abs())
        .fold(0.0, f64::max);
    let min = x.iter().copied().fold(f64::INFINITY, f64::min);
    let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(n, n, x));
    let lmin = eig
        .eigenvalues
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let trace = (0..n).map(|i| x[i * n + i]).sum();
    (rows, min, lmin, trace)
}

fn budget(args: &Args) -> Result<Budget, OpError> {
    match (args.get("k")?, args.get("size_penalty")?) {
        (Value::Int(k), Value::None) => Ok(Budget::Trace(*k as f64)),
        (Value::None, v) if v.as_f64().is_some() => Ok(Budget::Penalty(v.as_f64().unwrap_or(0.0))),
        (Value::None, Value::None) => Err(OpError::new(
            "smelt::check::sdp_budget",
            "`cluster sdp` needs `k` (the number of groups) or `size_penalty`",
        )
        .with_help("e.g. `cluster sdp(T, 3)` or `cluster sdp(T, size_penalty=0.2)`")),
        (Value::Int(_), v) if v.as_f64().is_some() => Err(OpError::new(
            "smelt::check::sdp_budget",
            "`cluster sdp` takes `k` or `size_penalty`, not both",
        )
        .with_help("`size_penalty` replaces the trace constraint tr X = k")),
        // Unrealised values (e.g. a `k` computed by another node): decided at run time.
        _ => Ok(Budget::Trace(0.0)),
    }
}

impl Operator for ClusterSdp {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn validate(&self, args: &Args) -> Result<(), OpError> {
        budget(args).map(|_| ())
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let t = task_matrix_arg(args, "matrix")?;
        let n = t.n();
        let budget = budget(args)?;
        if let Budget::Trace(k) = budget {
            check_k(k as i64, n)?;
        }
        let sol = solve_sdp(&t.values, n, budget)?;
        let rounded = greedy_round(&sol.x, n);
        let name = |i: &usize| t.names[*i].clone();
        let (rows, min, lmin, trace) = feasibility(&sol.x, n);
        let relaxed: Vec<Vec<f64>> = sol.x.chunks(n).map(|r| r.to_vec()).collect();
        let mut meta = serde_json::Map::new();
        meta.insert("threshold".into(), json!(1.0 / n as f64));
        meta.insert(
            "unclaimed".into(),
            json!(rounded.unclaimed.iter().map(name).collect::<Vec<_>>()),
        );
        meta.insert("trace".into(), json!(trace));
        meta.insert("max_row_sum_error".into(), json!(rows));
        meta.insert("min_entry".into(), json!(min));
        meta.insert("min_eigenvalue".into(), json!(lmin));
        meta.insert("relaxation".into(), json!(relaxed));
        let k = match budget {
            Budget::Trace(k) => Some(k as usize),
            Budget::Penalty(l) => {
                meta.insert("size_penalty".into(), json!(l));
                None
            }
        };
        let p = Partition {
            method: SIG.id.to_string(),
            k,
            tasks: t.names.clone(),
            groups: rounded
                .groups
                .iter()
                .map(|g| g.iter().map(name).collect())
                .collect(),
            objective: Some(sol.objective),
            status: sol.status,
            iterations: sol.iterations,
            meta,
        };
        partition_value(cx, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{planted, recovers};
    use super::*;

    fn group_count(t: &[f64], n: usize, budget: Budget) -> usize {
        greedy_round(&solve_sdp(t, n, budget).unwrap().x, n)
            .groups
            .len()
    }

    #[test]
    fn recovers_three_planted_blocks_and_satisfies_the_constraints() {
        let (t, _) = planted(&[2, 4, 3], 1.0, 0.2, 0.15, 7);
        let n = t.n();
        let sol = solve_sdp(&t.values, n, Budget::Trace(3.0)).unwrap();
        assert_eq!(sol.status, "solved");
        let (rows, min, lmin, trace) = feasibility(&sol.x, n);
        assert!(rows < 1e-6, "rows sum to 1: {rows}");
        assert!(min > -1e-7, "entrywise non-negative: {min}");
        assert!(lmin > -1e-6, "PSD: {lmin}");
        assert!((trace - 3.0).abs() < 1e-6, "trace {trace}");
        let r = greedy_round(&sol.x, n);
        let groups: Vec<Vec<String>> = r
            .groups
            .iter()
            .map(|g| g.iter().map(|&i| t.names[i].clone()).collect())
            .collect();
        assert!(recovers(&groups, 3), "{groups:?}");
        // The planted partition's own X (1/|C| on each block) is feasible, so the optimum is
        // at least its objective.
        let block = |i: usize| t.names[i].split('_').next().unwrap().to_string();
        let size = |i: usize| (0..n).filter(|&j| block(j) == block(i)).count() as f64;
        let planted_obj: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|&(i, j)| block(i) == block(j))
            .map(|(i, j)| t.get(i, j) / size(i))
            .sum();
        assert!(
            sol.objective >= planted_obj - 1e-6,
            "{} < {planted_obj}",
            sol.objective
        );
    }

    #[test]
    fn only_the_symmetric_part_of_t_matters() {
        let (t, _) = planted(&[2, 3], 1.0, 0.1, 0.1, 2);
        let n = t.n();
        // Add an antisymmetric part: ⟨A, X⟩ = 0 for symmetric X.
        let skew: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                t.values[k] + 0.7 * (i as f64 - j as f64)
            })
            .collect();
        let a = solve_sdp(&t.values, n, Budget::Trace(2.0)).unwrap();
        let b = solve_sdp(&skew, n, Budget::Trace(2.0)).unwrap();
        assert!((a.objective - b.objective).abs() < 1e-6);
        assert_eq!(greedy_round(&a.x, n), greedy_round(&b.x, n));
    }

    #[test]
    fn a_larger_size_penalty_gives_fewer_groups() {
        // Blocks of 3, 3, 2 (within 1, across 0, noise ±0.05). For block-diagonal X the
        // objective is the average density minus λ·(number of groups): the planted blocks give
        // ≈ 8 − 3λ, merging the 3- and 2-block ≈ 3 + 13/5 − 2λ, so the planted blocks win
        // for 0 < λ < 2.4 and one merge wins just above.
        let (t, _) = planted(&[3, 3, 2], 1.0, 0.0, 0.05, 4);
        let n = t.n();
        let groups =
            |l: f64| greedy_round(&solve_sdp(&t.values, n, Budget::Penalty(l)).unwrap().x, n);
        let names = |r: &super::super::rounding::Rounded| -> Vec<Vec<String>> {
            r.groups
                .iter()
                .map(|g| g.iter().map(|&i| t.names[i].clone()).collect())
                .collect()
        };
        let small = groups(0.5);
        assert!(recovers(&names(&small), 3), "{:?}", names(&small));
        let counts: Vec<usize> = [0.5, 2.0, 2.7]
            .iter()
            .map(|&l| groups(l).groups.len())
            .collect();
        assert_eq!(counts, vec![3, 3, 2]);
        // A huge penalty drives X to 11ᵀ/n, the feasible X of smallest trace (1).
        let sol = solve_sdp(&t.values, n, Budget::Penalty(10.0)).unwrap();
        let (_, _, _, trace) = feasibility(&sol.x, n);
        assert!((trace - 1.0).abs() < 1e-5, "trace {trace}");
    }

    #[test]
    fn k_equal_to_n_gives_singletons_and_k_one_gives_the_all_equal_x() {
        let (t, _) = planted(&[2, 2], 1.0, 0.0, 0.1, 9);
        assert_eq!(group_count(&t.values, 4, Budget::Trace(4.0)), 4);
        // tr X = 1 with X·1 = 1 and X ⪰ 0 forces X = 11ᵀ/n (1 is an eigenvector with
        // eigenvalue 1, so every other eigenvalue is 0): every entry sits exactly at the
        // rounding threshold 1/n, where the code's rounding is decided by solver round-off.
        let sol = solve_sdp(&t.values, 4, Budget::Trace(1.0)).unwrap();
        assert!(sol.x.iter().all(|x| (x - 0.25).abs() < 1e-6), "{:?}", sol.x);
    }

    #[test]
    fn missing_or_doubled_budgets_are_check_errors() {
        let m = |k: Value, l: Value| {
            Args::new(vec![
                ("matrix", Value::None),
                ("k", k),
                ("size_penalty", l),
                ("nan", Value::str("error")),
            ])
        };
        assert!(ClusterSdp.validate(&m(Value::None, Value::None)).is_err());
        assert!(ClusterSdp
            .validate(&m(Value::Int(2), Value::Float(0.1)))
            .is_err());
        assert!(ClusterSdp.validate(&m(Value::Int(2), Value::None)).is_ok());
        assert!(ClusterSdp.validate(&m(Value::None, Value::Int(1))).is_ok());
    }
}
