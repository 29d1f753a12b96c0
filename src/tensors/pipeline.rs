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
    /// How long the helper sat idle before this job arrived.
    idle: Duration,
    result: Result<(), OpError>,
}

fn take(pool: &mut Vec<Vec<f32>>, k: usize) -> Vec<Vec<f32>> {
    (0..k).map(|_| pool.pop().unwrap_or_default()).collect()
}

/// Read, combine and write every tensor in name order; returns the tensor bytes read.
///
/// Two cores, two threads: a scoped helper decodes the first `r` inputs of tensor k+1 while
/// this thread combines and writes tensor k and then decodes the remaining `n - r` inputs of
/// k+1 itself. `r` adapts so that neither side waits for the other. Buffers are recycled through
/// a pool, so at most two tensors' worth of inputs (plus one combined result) are alive.
pub(crate) fn stream_tensors(
    inputs: &[&ModelDir],
    writer: &mut SafetensorsWriter,
    combine: &mut CombineFn<'_>,
) -> Result<u64, OpError> {
    let n = inputs.len();
    let first = inputs[0];
    let floats: Vec<&str> = first
        .tensors()
        .iter()
        .filter(|(_, (_, t))| t.dtype.is_float())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut bytes_read = 0u64;
    std::thread::scope(|scope| -> Result<u64, OpError> {
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Decoded>();
        scope.spawn(move || {
            let mut since = Instant::now();
            let mut busy = Duration::ZERO;
            struct P(*const Duration);
            impl Drop for P { fn drop(&mut self) { eprintln!("helper busy {:?}", unsafe { *self.0 }); } }
            let _p = P(&busy);
            while let Ok(mut job) = job_rx.recv() {
                let idle = since.elapsed();
                let t0 = Instant::now();
                let result = read_inputs(&inputs[..job.r], job.name, &mut job.bufs);
                busy += t0.elapsed();
                if done_tx
                    .send(Decoded {
                        bufs: job.bufs,
                        idle,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                since = Instant::now();
            }
        });
        let mut pool: Vec<Vec<f32>> = Vec::new();
        let mut tm = [Duration::ZERO; 4]; let mut rs = vec![];
        struct Q(*const [Duration; 4], *const Vec<usize>);
        impl Drop for Q { fn drop(&mut self) { eprintln!("main own-decode/wait/combine/write {:?} r={:?}", unsafe { *self.0 }, unsafe { &*self.1 }); } }
        let _q = Q(&tm, &rs);
        let (mut r, mut next) = (n, 0usize);
        let mut send = |pool: &mut Vec<Vec<f32>>, r: usize| {
            if let Some(name) = floats.get(next) {
                let _ = job_tx.send(Job {
                    name,
                    r,
                    bufs: take(pool, r),
                });
                next += 1;
            }
        };
        send(&mut pool, r);
        let mut r_sent = r;
        for (name, (_, info)) in first.tensors() {
            if !info.dtype.is_float() {
                let raw = first.read_raw(name)?;
                bytes_read += raw.len() as u64;
                writer.write_raw(name, raw)?;
                continue;
            }
            let t0 = Instant::now();
            let mut own = take(&mut pool, n - r_sent);
            read_inputs(&inputs[r_sent..], name, &mut own)?;
            tm[0] += t0.elapsed();
            let waited = Instant::now();
            let done = done_rx
                .recv()
                .map_err(|_| OpError::msg("merge: the reader thread stopped early"))?;
            let waited = waited.elapsed();
            tm[1] += waited; rs.push(r_sent);
            done.result?;
            // Shift inputs towards whichever side waited less (±1 per tensor, ignoring jitter).
            if waited > done.idle + Duration::from_micros(50) && r > 1 {
                r -= 1;
            } else if done.idle > waited + Duration::from_micros(50) && r < n {
                r += 1;
            }
            send(&mut pool, r);
            let mut bufs = done.bufs;
            bufs.append(&mut own);
            bytes_read += inputs
                .iter()
                .map(|m| m.info(name).map_or(0, |t| t.byte_len() as u64))
                .sum::<u64>();
            let t2 = Instant::now();
            let merged = combine(name, &bufs)
                .map_err(|e| e.context(format!("while merging tensor `{name}`")))?;
            tm[2] += t2.elapsed();
            let t3 = Instant::now();
            writer.write_f32(name, &merged)?;
            drop(merged);
            tm[3] += t3.elapsed();
            pool.append(&mut bufs);
            r_sent = r;
        }
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
