//! `measure.*`: numbers computed from artifacts (distances, memory, timings).

pub mod distance;
pub mod score;
