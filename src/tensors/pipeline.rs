//! The merge inner loop: read, combine and write every tensor, using both cores.
//!
//! A merge is bound by memory traffic (decode N inputs to f32, combine, encode, write). A scoped
//! helper thread decodes the first `r` inputs of the next tensor while the calling thread
//! combines and writes the current one and then decodes the remaining inputs itself; `r` adapts
//! per tensor so neither thread waits for the other. The `combine` callback stays on the calling
//! thread (it need not be `Send`). Decode buffers are recycled through a pool, so memory is
//! bounded by about two tensors' worth of inputs plus one combined result.

use super::merge::CombineFn;
use super::model_dir::ModelDir;
use super::writer::SafetensorsWriter;
use crate::diag::OpError;
use std::time::{Duration, Instant};

/// Decode tensor `name` of `inputs` into `bufs` (one per input) and drop the mapped pages.
fn read_inputs(inputs: &[&ModelDir], name: &str, bufs: &mut [Vec<f32>]) -> Result<(), OpError> {
    for (input, buf) in inputs.iter().zip(bufs.iter_mut()) {
        input.read_f32_into(name, buf)?;
        input.evict(name);
    }
    Ok(())
}

/// Work for the helper thread: decode `name` from the first `r` inputs into `bufs`.
struct Job<'a> {
    name: &'a str,
    r: usize,
    bufs: Vec<Vec<f32>>,
}

struct Decoded {
    bufs: Vec<Vec<f32>>,
    busy: Duration,
    result: Result<(), OpError>,
}

/// Take `k` buffers for a tensor of `numel` values, best fit first: reusing a buffer that is
/// already big enough avoids growing (and page-faulting) a fresh one, which dominates otherwise.
fn take(pool: &mut Vec<Vec<f32>>, k: usize, numel: usize) -> Vec<Vec<f32>> {
    (0..k)
        .map(|_| {
            let fit = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= numel)
                .min_by_key(|&i| pool[i].capacity());
            let pick = fit.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        })
        .collect()
}

/// Receive, spinning briefly before blocking: a blocked thread is woken on the waker's core
/// and would time-share it with the waker for a while, which costs more than the spin.
fn recv_spinning<T>(rx: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    let start = Instant::now();
    if std::env::var_os("NOSPIN").is_some() { return rx.recv().ok(); }
    loop {
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if start.elapsed() > Duration::from_millis(5) {
            return rx.recv().ok();
        }
    }
}

/// Running cost estimates that decide how many inputs the helper decodes.
#[derive(Default)]
struct Balance {
    decode: Duration,
    decoded_bytes: u64,
    main: Duration,
    main_bytes: u64,
}

impl Balance {
    /// Inputs for the helper: with per-byte decode cost `d` and combine+write cost `c` (per byte
    /// of one input), the helper's `r·d` equals the caller's `c + (n - r)·d` at `r = (c/d + n)/2`.
    fn helper_share(&self, n: usize) -> usize {
        if self.decoded_bytes == 0 || self.main_bytes == 0 || self.decode.is_zero() {
            return n;
        }
        let d = self.decode.as_secs_f64() / self.decoded_bytes as f64;
        let c = self.main.as_secs_f64() / self.main_bytes as f64;
        let r = ((c / d + n as f64) / 2.0).round();
        (r as usize).clamp(1, n)
    }
}

/// Read, combine and write every tensor in name order; returns the tensor bytes read.
///
/// Two cores, two threads: a scoped helper decodes the first `r` inputs of tensor k+1 while
/// this thread combines and writes tensor k and then decodes the remaining `n - r` inputs of
/// k+1 itself; `r` follows measured costs (see [`Balance`]). Buffers are recycled through a
/// pool, so at most two tensors' worth of inputs (plus one combined result) are alive.
pub(crate) fn stream_tensors(
    inputs: &[&ModelDir],
    writer: &mut SafetensorsWriter,
    combine: &mut CombineFn<'_>,
) -> Result<u64, OpError> {
    let n = inputs.len();
    let first = inputs[0];
    let floats: Vec<(&str, usize)> = first
        .tensors()
        .iter()
        .filter(|(_, (_, t))| t.dtype.is_float())
        .map(|(k, (_, t))| (k.as_str(), t.numel()))
        .collect();
    let mut bytes_read = 0u64;
    std::thread::scope(|scope| -> Result<u64, OpError> {
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Decoded>();
        scope.spawn(move || {
            while let Some(mut job) = recv_spinning(&job_rx) {
                let start = Instant::now();
                let result = read_inputs(&inputs[..job.r], job.name, &mut job.bufs);
                let busy = start.elapsed();
                if done_tx
                    .send(Decoded {
                        bufs: job.bufs,
                        busy,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut pool: Vec<Vec<f32>> = Vec::new();
        let mut wait = Duration::ZERO;
        let mut rs = vec![];
        let mut owndec = Duration::ZERO; let mut hbusy = Duration::ZERO; let t_all = Instant::now();
        let mut balance = Balance::default();
        let mut next = 0usize;
        let mut send = |pool: &mut Vec<Vec<f32>>, r: usize| -> usize {
            if let Some(&(name, numel)) = floats.get(next) {
                let _ = job_tx.send(Job {
                    name,
                    r,
                    bufs: take(pool, r, numel),
                });
                next += 1;
            }
            r
        };
        let mut r = send(&mut pool, n);
        for (name, (_, info)) in first.tensors() {
            if !info.dtype.is_float() {
                let raw = first.read_raw(name)?;
                bytes_read += raw.len() as u64;
                writer.write_raw(name, raw)?;
                continue;
            }
            let bytes = info.byte_len() as u64;
            let start = Instant::now();
            let mut own = take(&mut pool, n - r, info.numel());
            read_inputs(&inputs[r..], name, &mut own)?;
            balance.decode += start.elapsed();
            owndec += start.elapsed();
            balance.decoded_bytes += bytes * (n - r) as u64;
            let tw = Instant::now();
            let done = recv_spinning(&done_rx)
                .ok_or(()).map_err(|_| OpError::msg("merge: the reader thread stopped early"))?;
            done.result?;
            wait += tw.elapsed();
            rs.push(r);
            balance.decode += done.busy;
            hbusy += done.busy;
            balance.decoded_bytes += bytes * r as u64;
            let next_r = send(&mut pool, balance.helper_share(n));
            let mut bufs = done.bufs;
            bufs.append(&mut own);
            bytes_read += inputs
                .iter()
                .map(|m| m.info(name).map_or(0, |t| t.byte_len() as u64))
                .sum::<u64>();
            let start = Instant::now();
            let merged = combine(name, &bufs)
                .map_err(|e| e.context(format!("while merging tensor `{name}`")))?;
            writer.write_f32(name, &merged)?;
            drop(merged);
            balance.main += start.elapsed();
            balance.main_bytes += bytes;
            pool.append(&mut bufs);
            r = next_r;
        }
        eprintln!("all {:?} owndec {owndec:?} helper {hbusy:?}", t_all.elapsed());
        eprintln!(
            "wait {wait:?} decode {:?} main {:?} r {rs:?} pool {:?}",
            balance.decode,
            balance.main,
            pool.iter().map(|b| b.capacity()).collect::<Vec<_>>()
        );
        Ok(bytes_read)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::dtype::Dtype;
    use crate::tensors::writer::WriterOptions;
    use std::path::Path;

    /// A model with tensors `a` (F32 [3]), `b` (F8_E4M3 [2] when `with_f8`) and `c` (F32 [2]).
    fn model(path: &Path, base: f32, with_f8: bool) -> ModelDir {
        let mut specs = vec![
            ("a".into(), Dtype::F32, vec![3]),
            ("c".into(), Dtype::F32, vec![2]),
        ];
        if with_f8 {
            specs.push(("b".into(), Dtype::F8E4M3, vec![2]));
        }
        let mut w = SafetensorsWriter::create(path, &specs, WriterOptions::default()).unwrap();
        w.write_f32("a", &[base, base + 1.0, base + 2.0]).unwrap();
        if with_f8 {
            w.write_raw("b", &[0, 0]).unwrap();
        }
        w.write_f32("c", &[base; 2]).unwrap();
        w.finish().unwrap();
        ModelDir::open(path).unwrap()
    }

    fn sink(dir: &Path, m: &ModelDir) -> SafetensorsWriter {
        let specs: Vec<_> = m
            .signature()
            .into_iter()
            .filter(|s| s.1 == Dtype::F32)
            .collect();
        SafetensorsWriter::create(
            &dir.join("out.safetensors"),
            &specs,
            WriterOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn combine_sees_sorted_names_and_ordered_inputs() {
        let d = tempfile::tempdir().unwrap();
        let ms: Vec<ModelDir> = (0..4)
            .map(|i| model(&d.path().join(format!("{i}.st")), i as f32 * 10.0, false))
            .collect();
        let refs: Vec<&ModelDir> = ms.iter().collect();
        let mut w = sink(d.path(), &ms[0]);
        let mut seen = Vec::new();
        let read = stream_tensors(&refs, &mut w, &mut |name, v| {
            seen.push(name.to_string());
            assert_eq!(
                v.iter().map(|x| x[0]).collect::<Vec<_>>(),
                vec![0.0, 10.0, 20.0, 30.0]
            );
            Ok(v[3].clone())
        })
        .unwrap();
        assert_eq!(seen, vec!["a", "c"]);
        assert_eq!(read, 4 * (12 + 8));
        w.finish().unwrap();
    }

    #[test]
    fn helper_errors_reach_the_caller() {
        let d = tempfile::tempdir().unwrap();
        let ms: Vec<ModelDir> = (0..2)
            .map(|i| model(&d.path().join(format!("{i}.st")), 1.0, true))
            .collect();
        let refs: Vec<&ModelDir> = ms.iter().collect();
        let mut w = sink(d.path(), &ms[0]);
        let e = stream_tensors(&refs, &mut w, &mut |_, v| Ok(v[0].clone())).unwrap_err();
        assert_eq!(e.code, "smelt::io::unsupported_dtype");
        assert!(e.message.contains("`b`"), "{}", e.message);
    }
}
