//! `bench_merge [MODEL_DIR] [N] [average|ties]`: how close the streaming merge gets to the I/O floor.
//!
//! Makes N perturbed copies of a model (seeded noise, written with the streaming writer) in a
//! scratch directory, then times (a) reading every byte of every input file with the page cache
//! warm — the floor any merge must pay — (b) reading and converting every tensor to f32,
//! (c) the combine (`mean`, or TIES) and the writer on their own, and (d) merging the N copies with
//! `merge_streaming` (best of 5). Prints wall times, input GB/s and the peak RSS of the merges
//! (VmHWM, reset just before them). Defaults: the MiniLM test model, N = 4. With `ties` the
//! timed merge is TIES (first copy as base, density 0.2, sign `sum`) instead of the average.

use smelt::bench::{main_with, reset_peak_rss, status_mb};
use smelt::diag::OpError;
use smelt::ops::merge::elect::{SignRule, TiesMerge};
use smelt::tensors::merge::{mean, merge_streaming_with, MergeOptions, Part, CHUNK};
use smelt::tensors::{merge_streaming, Dtype, ModelDir, SafetensorsWriter, WriterOptions};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DEFAULT_MODEL: &str = "/work/shared/assets/models/minilm-l3-v8k";
const REPEATS: usize = 5;

/// Removes the scratch directory on exit.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        // `SMELT_BENCH_KEEP=1` keeps the copies (e.g. for benches/mergekit_compare.sh).
        if std::env::var_os("SMELT_BENCH_KEEP").is_some() {
            println!("kept the copies in {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files holding the model's weights (shards plus index).
fn weight_files(m: &ModelDir) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = m.shards().iter().map(|s| s.path.clone()).collect();
    files.extend(m.index_path().map(Path::to_path_buf));
    files
}

fn read_all(files: &[PathBuf], buf: &mut [u8]) -> Result<u64, OpError> {
    let mut total = 0;
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

fn best_of<T>(mut f: impl FnMut() -> Result<T, OpError>) -> Result<(f64, T), OpError> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..REPEATS {
        let t = Instant::now();
        last = Some(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, last.ok_or_else(|| OpError::msg("no runs"))?))
}

/// Time `mean` and the writer on their own (inputs decoded beforehand, untimed); best of runs.
/// The combine under test: one buffer per input in, merged values out.
type Combine<'a> = dyn FnMut(&[Vec<f32>]) -> Result<Vec<f32>, OpError> + 'a;

fn phases(
    copies: &[ModelDir],
    out: &Path,
    dtype: Dtype,
    combine: &mut Combine,
) -> Result<(f64, f64), OpError> {
    let specs: Vec<_> = copies[0]
        .signature()
        .into_iter()
        .map(|(n, d, s)| (n, if d.is_float() { dtype } else { d }, s))
        .collect();
    let (mut best_c, mut best_w) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..REPEATS {
        let (mut c, mut w) = (0.0, 0.0);
        let t = Instant::now();
        let mut writer = SafetensorsWriter::create(out, &specs, WriterOptions::default())?;
        w += t.elapsed().as_secs_f64();
        for (name, (_, info)) in copies[0].tensors() {
            if !info.dtype.is_float() {
                writer.write_raw(name, copies[0].read_raw(name)?)?;
                continue;
            }
            let bufs = copies
                .iter()
                .map(|m| m.read_f32(name))
                .collect::<Result<Vec<_>, _>>()?;
            let t = Instant::now();
            let merged = combine(&bufs)?;
            c += t.elapsed().as_secs_f64();
            let t = Instant::now();
            writer.write_f32(name, &merged)?;
            w += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        writer.finish()?;
        w += t.elapsed().as_secs_f64();
        std::fs::remove_file(out)?;
        best_c = best_c.min(c);
        best_w = best_w.min(w);
    }
    Ok((best_c, best_w))
}

fn run() -> Result<(), OpError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map(String::as_str).unwrap_or(DEFAULT_MODEL);
    let n: usize = match args.get(1) {
        Some(s) => s
            .parse()
            .map_err(|_| OpError::msg(format!("N must be a positive integer, got `{s}`")))?,
        None => 4,
    };
    let method = args.get(2).map(String::as_str).unwrap_or("average");
    if !matches!(method, "average" | "ties") {
        return Err(OpError::msg(format!(
            "METHOD must be `average` or `ties`, got `{method}`"
        )));
    }
    let base = ModelDir::open(model)?;
    let dtype = base
        .tensors()
        .values()
        .map(|(_, t)| t.dtype)
        .find(|d| matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32))
        .unwrap_or(Dtype::F32);
    let scratch =
        Scratch(std::env::temp_dir().join(format!("smelt-bench-merge-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    println!(
        "model {model}: {} tensors, {:.1} MB of {dtype}; n={n}",
        base.tensors().len(),
        base.data_bytes() as f64 / 1e6
    );

    let t = Instant::now();
    let mut copies = Vec::new();
    for i in 0..n {
        let dir = scratch.0.join(format!("copy{i}"));
        let mut state =
            0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut noise = |_: Part, v: &[Vec<f32>]| -> Result<Vec<f32>, OpError> {
            Ok(v[0]
                .iter()
                .map(|x| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    x + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2e-3
                })
                .collect())
        };
        let meta = BTreeMap::from([("smelt.bench".to_string(), format!("copy {i}"))]);
        merge_streaming(&[&base], &dir, dtype, meta, &mut noise)?;
        copies.push(ModelDir::open(&dir)?);
    }
    println!(
        "made {n} perturbed copies in {:.3} s",
        t.elapsed().as_secs_f64()
    );

    let files: Vec<PathBuf> = copies.iter().flat_map(weight_files).collect();
    let mut buf = vec![0u8; 4 << 20];
    read_all(&files, &mut buf)?; // warm the page cache
    let (io_s, io_bytes) = best_of(|| read_all(&files, &mut buf))?;
    let gb = io_bytes as f64 / 1e9;
    println!(
        "io floor: read {:.1} MB in {io_s:.4} s ({:.2} GB/s)",
        io_bytes as f64 / 1e6,
        gb / io_s
    );

    let mut vals = Vec::new();
    let (conv_s, _) = best_of(|| {
        for c in &copies {
            for name in c.tensors().keys() {
                c.read_f32_into(name, &mut vals)?;
            }
        }
        Ok(())
    })?;
    println!(
        "read+convert to f32: {conv_s:.4} s ({:.2} GB/s input)",
        gb / conv_s
    );
    drop(vals);
    let mut ties = TiesMerge::new(vec![0.2; n.saturating_sub(1)], SignRule::Sum, 1.0);
    let mut combine = |v: &[Vec<f32>]| match method {
        "ties" => ties.combine(v),
        _ => Ok(mean(v)),
    };
    let out = scratch.0.join("phases.safetensors");
    let (combine_s, write_s) = phases(&copies, &out, dtype, &mut combine)?;
    println!(
        "phases alone: combine ({method}) {combine_s:.4} s, convert+write output {write_s:.4} s"
    );

    let refs: Vec<&ModelDir> = copies.iter().collect();
    let out = scratch.0.join("merged");
    // Unmap the inputs' pages touched above, so the peak reflects the merge alone.
    for c in &copies {
        c.tensors().keys().for_each(|name| c.evict(name));
    }
    let rss_before = status_mb("VmRSS:");
    reset_peak_rss();
    let mut named = |_: Part, v: &[Vec<f32>]| combine(v);
    // As the operators do: the average is elementwise and runs in parts; TIES sees whole tensors.
    let opts = MergeOptions {
        chunk: (method != "ties").then_some(CHUNK),
        ..MergeOptions::default()
    };
    let (merge_s, stats) =
        best_of(|| merge_streaming_with(&refs, &out, dtype, BTreeMap::new(), &opts, &mut named))?;
    let peak = status_mb("VmHWM:");
    println!(
        "{method} n={n}: {merge_s:.3} s, {:.2} GB/s input, peak RSS {peak:.0} MB; io floor {io_s:.3} s \
         (ratio {:.1}x; RSS before the merges {rss_before:.0} MB)",
        stats.bytes_read as f64 / 1e9 / merge_s,
        merge_s / io_s
    );
    println!(
        "  {} tensors, read {:.1} MB, wrote {:.1} MB",
        stats.tensors,
        stats.bytes_read as f64 / 1e6,
        stats.bytes_written as f64 / 1e6
    );
    Ok(())
}

fn main() {
    main_with(run);
}
