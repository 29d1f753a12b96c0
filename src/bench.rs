//! Helpers shared by the benchmark binaries (`src/bin/bench_*.rs`): process memory figures from
//! `/proc/self/status` and the error exit, so each binary measures peak RSS the same way.

use crate::diag::OpError;

/// A `/proc/self/status` field in MB (`"VmRSS:"`, `"VmHWM:"`); NaN where unavailable.
pub fn status_mb(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = text
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// Resets the peak-RSS counter (VmHWM) to the current RSS (Linux ≥ 4.0; ignored elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs a benchmark's `run`, printing an error with its help line and exiting 1 on failure.
pub fn main_with(run: impl FnOnce() -> Result<(), OpError>) {
    if let Err(e) = run() {
        eprintln!("error[{}]: {}", e.code, e.message);
        if let Some(h) = e.help {
            eprintln!("help: {h}");
        }
        std::process::exit(1);
    }
}
