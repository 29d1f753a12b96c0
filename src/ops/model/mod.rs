//! `model.*`: operators that transform one model's weights.

pub mod apply;
pub mod perturb;
