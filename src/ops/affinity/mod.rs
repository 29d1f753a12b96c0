//! `affinity.*`: task-affinity matrices from fitted surrogates (paper 1, methods.md §1.7–1.8).
//!
//! `first_order` samples task subsets, fits the first-order surrogate (`surrogate`) on each
//! subset's projected gradients, maps the weights back into the adapter and scores the real
//! network there; `subsets` holds the seeded sampler of distinct subsets and the affinity
//! `T_ij = mean over subsets containing i and j of task i's score`.

pub mod first_order;
pub mod subsets;
pub mod surrogate;
