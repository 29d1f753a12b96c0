//! `measure.*`: numbers computed from artifacts (distances, memory, timings).

pub mod approx_error;
pub mod distance;
pub mod memory;
pub mod score;
