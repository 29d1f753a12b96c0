//! The merge inner loop: read, combine and write every tensor, using both cores.
//!
//! A merge is bound by memory traffic: decode N inputs to f32, combine, encode, write. The
//! calling thread runs `combine` (it need not be `Send`) and decodes some inputs; a scoped helper
//! thread decodes the other inputs of the next tensor and encodes and writes the previous result.
//! How many inputs each side decodes follows measured costs, so neither waits for the other.
//! Decode buffers are recycled through a pool, so memory stays at about two tensors' worth of
//! inputs plus two combined results. Tensors the merge passes through (integer buffers, tensors
//! outside a merge's selection) are read from the first input only and never reach `combine`.

use super::merge::{CombineFn, Part};
use super::model_dir::ModelDir;
use super::writer::SafetensorsWriter;
use crate::diag::OpError;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// Decode elements `start..start + len` of tensor `name` of `inputs` into `bufs` (one per
/// input) and drop the mapped pages (the whole tensor's once its last part is read).
fn read_inputs(inputs: &[&ModelDir], unit: &Unit, bufs: &mut [Vec<f32>]) -> Result<(), OpError> {
    for (input, buf) in inputs.iter().zip(bufs.iter_mut()) {
        input.read_f32_range_into(unit.name, unit.start, unit.len, buf)?;
        match unit.start + unit.len == unit.numel {
            true => input.evict(unit.name),
            false => input.evict_range(unit.name, unit.start, unit.len),
        }
    }
    Ok(())
}

/// One call of `combine`: a whole tensor, or one part of a large one when the merge is chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit<'a> {
    name: &'a str,
    start: usize,
    len: usize,
    numel: usize,
}

/// The units of a tensor of `numel` elements: parts of at most `chunk` elements, or the whole.
fn units(name: &str, numel: usize, chunk: Option<usize>) -> impl Iterator<Item = Unit<'_>> {
    let step = chunk
        .filter(|&c| c > 0 && c < numel)
        .unwrap_or(numel.max(1));
    (0..numel.max(1)).step_by(step).map(move |start| Unit {
        name,
        start,
        len: step.min(numel - start.min(numel)),
        numel,
    })
}

/// How one output tensor is produced, in the writer's (sorted) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Decode from every input and combine.
    Combine(&'a str),
    /// Copy the first input's stored bytes (the output dtype is the stored one).
    CopyRaw(&'a str),
    /// Decode the first input and write it in the output dtype.
    CopyConvert(&'a str),
}

/// Work for the helper thread, done in the order sent.
enum Job<'a> {
    /// Decode `name` from the first `r` inputs into `bufs` and send them back.
    Decode {
        unit: Unit<'a>,
        r: usize,
        bufs: Vec<Vec<f32>>,
    },
    /// Encode and append a merged tensor or part (`bytes`: its size in one input, for the
    /// balance); `part`: appended with `write_f32_part`.
    Write {
        name: &'a str,
        values: Vec<f32>,
        bytes: u64,
        part: bool,
    },
    /// Append stored bytes unchanged (integer tensors).
    WriteRaw { name: &'a str, raw: &'a [u8] },
}

/// Reply to a `Decode` job, with the helper's timings since the previous reply.
struct Decoded {
    bufs: Vec<Vec<f32>>,
    decode: Duration,
    write: Duration,
    written_bytes: u64,
    /// The decode error, or the first write error since the previous reply.
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

/// Receive, spinning up to 5 ms before blocking. Measured on the 2-core VM: with blocking
/// hand-offs (a futex wake-up per tensor and direction) the whole merge was ~10-20% slower.
fn recv_spinning<T>(rx: &Receiver<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
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
    combine: Duration,
    combined_bytes: u64,
    write: Duration,
    written_bytes: u64,
}

fn per_byte(t: Duration, bytes: u64) -> f64 {
    if bytes == 0 {
        0.0
    } else {
        t.as_secs_f64() / bytes as f64
    }
}

impl Balance {
    /// Inputs for the helper. Per byte of one input, with decode cost `d`, combine cost `c` and
    /// write cost `w`: the helper's `r·d + w` equals the caller's `c + (n - r)·d` at
    /// `r = n/2 + (c - w)/(2d)`. Before anything is measured the helper decodes everything.
    fn helper_share(&self, n: usize) -> usize {
        let d = per_byte(self.decode, self.decoded_bytes);
        if d == 0.0 || self.combined_bytes == 0 {
            return n;
        }
        let c = per_byte(self.combine, self.combined_bytes);
        let w = per_byte(self.write, self.written_bytes);
        let r = (n as f64 / 2.0 + (c - w) / (2.0 * d)).round();
        r.clamp(0.0, n as f64) as usize
    }
}

/// Produce every tensor of `steps` (in the writer's order); returns the tensor bytes read.
///
/// Two cores, two threads. The scoped helper owns the writer: it decodes the first `r` inputs
/// of unit k+1 and then encodes and writes unit k, while this thread decodes the other
/// `n - r` inputs and runs `combine` (which need not be `Send`). A unit is a whole tensor, or
/// with `chunk = Some(c)` a part of at most `c` elements of a larger one, so memory is bounded
/// by the chunk instead of the largest tensor. `r` follows measured costs (see [`Balance`]).
/// Decode buffers are recycled through a pool, so about two units' worth of inputs plus two
/// combined results are alive at once.
pub(crate) fn stream_tensors<'s>(
    inputs: &[&'s ModelDir],
    steps: &[Step<'s>],
    chunk: Option<usize>,
    writer: &mut SafetensorsWriter,
    combine: &mut CombineFn<'_>,
) -> Result<u64, OpError> {
    let n = inputs.len();
    let Some(&first) = inputs.first() else {
        return Ok(0);
    };
    let info = |name: &str| {
        first.info(name).ok_or_else(|| {
            OpError::new(
                "smelt::internal",
                format!("merge plan names `{name}`, which the first input lacks"),
            )
        })
    };
    let mut plan: Vec<Unit<'s>> = Vec::new();
    for s in steps {
        if let Step::Combine(name) = s {
            plan.extend(units(name, info(name)?.numel(), chunk));
        }
    }
    let item_bytes = |m: &ModelDir, name: &str| m.info(name).map_or(0, |t| t.dtype.size() as u64);
    let mut bytes_read = 0u64;
    std::thread::scope(|scope| -> Result<u64, OpError> {
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Decoded>();
        let helper = scope.spawn(move || helper_loop(inputs, writer, job_rx, done_tx));
        let mut pool: Vec<Vec<f32>> = Vec::new();
        let mut balance = Balance::default();
        let mut next = 0usize;
        let write_tx = job_tx.clone();
        let plan = &plan;
        // `move`: dropping the closure must drop `job_tx`, which lets the helper finish.
        let mut send_decode = move |pool: &mut Vec<Vec<f32>>, r: usize| -> usize {
            if let Some(&unit) = plan.get(next) {
                let _ = job_tx.send(Job::Decode {
                    unit,
                    r,
                    bufs: take(pool, r, unit.len),
                });
                next += 1;
            }
            r
        };
        let mut r = send_decode(&mut pool, n);
        let mut k = 0usize;
        for &step in steps {
            let name = match step {
                Step::CopyRaw(name) => {
                    let raw = first.read_raw(name)?;
                    bytes_read += raw.len() as u64;
                    let _ = write_tx.send(Job::WriteRaw { name, raw });
                    continue;
                }
                Step::CopyConvert(name) => {
                    let info = info(name)?;
                    let mut values = take(&mut pool, 1, info.numel()).pop().unwrap_or_default();
                    first.read_f32_into(name, &mut values)?;
                    first.evict(name);
                    let bytes = info.byte_len() as u64;
                    bytes_read += bytes;
                    let _ = write_tx.send(Job::Write {
                        name,
                        values,
                        bytes,
                        part: false,
                    });
                    continue;
                }
                Step::Combine(name) => name,
            };
            while let Some(&unit) = plan.get(k).filter(|u| u.name == name) {
                k += 1;
                let bytes = unit.len as u64 * item_bytes(first, name);
                let start = Instant::now();
                let mut own = take(&mut pool, n - r, unit.len);
                read_inputs(&inputs[r..], &unit, &mut own)?;
                balance.decode += start.elapsed();
                balance.decoded_bytes += bytes * (n - r) as u64;
                let done = recv_spinning(&done_rx)
                    .ok_or_else(|| OpError::msg("merge: the helper thread stopped early"))?;
                done.result?;
                balance.decode += done.decode;
                balance.decoded_bytes += bytes * r as u64;
                balance.write += done.write;
                balance.written_bytes += done.written_bytes;
                let next_r = send_decode(&mut pool, balance.helper_share(n));
                let mut bufs = done.bufs;
                bufs.append(&mut own);
                bytes_read += inputs
                    .iter()
                    .map(|m| unit.len as u64 * item_bytes(m, name))
                    .sum::<u64>();
                let part = Part {
                    name,
                    start: unit.start,
                    numel: unit.numel,
                };
                let start = Instant::now();
                let values = combine(part, &bufs)
                    .map_err(|e| e.context(format!("while merging tensor `{name}`")))?;
                balance.combine += start.elapsed();
                balance.combined_bytes += bytes;
                if values.len() != unit.len {
                    return Err(OpError::new(
                        "smelt::run::shape_mismatch",
                        format!(
                            "merging tensor `{name}` produced {} values for elements {}..{} of its {}",
                            values.len(),
                            unit.start,
                            unit.start + unit.len,
                            unit.numel
                        ),
                    ));
                }
                let _ = write_tx.send(Job::Write {
                    name,
                    values,
                    bytes,
                    part: true,
                });
                pool.append(&mut bufs);
                r = next_r;
            }
        }
        // Closing the job channel lets the helper finish its queue and return.
        drop(write_tx);
        drop(send_decode);
        match helper.join() {
            Ok(None) => Ok(bytes_read),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(OpError::msg("merge: the helper thread panicked")),
        }
    })
}

/// The helper thread: run jobs in order; returns the first write error not yet reported.
fn helper_loop(
    inputs: &[&ModelDir],
    writer: &mut SafetensorsWriter,
    jobs: Receiver<Job<'_>>,
    done: Sender<Decoded>,
) -> Option<OpError> {
    let (mut write, mut written_bytes) = (Duration::ZERO, 0u64);
    let mut write_err: Option<OpError> = None;
    while let Some(job) = recv_spinning(&jobs) {
        let start = Instant::now();
        match job {
            Job::Decode { unit, r, mut bufs } => {
                let mut result = read_inputs(&inputs[..r], &unit, &mut bufs);
                if let Some(e) = write_err.take() {
                    result = Err(e);
                }
                let failed = result.is_err();
                let reply = Decoded {
                    bufs,
                    decode: start.elapsed(),
                    write,
                    written_bytes,
                    result,
                };
                (write, written_bytes) = (Duration::ZERO, 0);
                if done.send(reply).is_err() || failed {
                    return None;
                }
            }
            Job::Write {
                name,
                values,
                bytes,
                part,
            } => {
                if write_err.is_none() {
                    write_err = match part {
                        true => writer.write_f32_part(name, &values).err(),
                        false => writer.write_f32(name, &values).err(),
                    };
                }
                drop(values);
                write += start.elapsed();
                written_bytes += bytes;
            }
            Job::WriteRaw { name, raw } => {
                if write_err.is_none() {
                    write_err = writer.write_raw(name, raw).err();
                }
                inputs[0].evict(name);
            }
        }
    }
    write_err
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

    /// Combine every float tensor, copy the rest (what a merge without options does).
    fn all(m: &ModelDir) -> Vec<Step<'_>> {
        m.tensors()
            .iter()
            .map(|(k, (_, t))| {
                if t.dtype.is_float() {
                    Step::Combine(k)
                } else {
                    Step::CopyRaw(k)
                }
            })
            .collect()
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
        let read = stream_tensors(&refs, &all(&ms[0]), None, &mut w, &mut |part, v| {
            seen.push(part.name.to_string());
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
    fn chunked_streams_see_ordered_parts_and_write_the_same_tensors() {
        let d = tempfile::tempdir().unwrap();
        let ms: Vec<ModelDir> = (0..3)
            .map(|i| model(&d.path().join(format!("{i}.st")), i as f32 * 10.0, false))
            .collect();
        let refs: Vec<&ModelDir> = ms.iter().collect();
        let mut w = sink(d.path(), &ms[0]);
        let mut seen = Vec::new();
        stream_tensors(&refs, &all(&ms[0]), Some(2), &mut w, &mut |part, v| {
            seen.push((part.name.to_string(), part.start, v[0].len(), part.numel));
            Ok(v.iter().fold(vec![0.0; v[0].len()], |acc, x| {
                acc.iter().zip(x).map(|(a, b)| a + b).collect()
            }))
        })
        .unwrap();
        w.finish().unwrap();
        let want = [("a", 0, 2, 3), ("a", 2, 1, 3), ("c", 0, 2, 2)];
        let want: Vec<_> = want
            .iter()
            .map(|&(n, s, l, t)| (n.to_string(), s, l, t))
            .collect();
        assert_eq!(seen, want);
        let out = ModelDir::open(d.path().join("out.safetensors")).unwrap();
        let whole: Vec<f32> = (0..3)
            .map(|j| refs.iter().map(|m| m.read_f32("a").unwrap()[j]).sum())
            .collect();
        assert_eq!(out.read_f32("a").unwrap(), whole);
    }

    #[test]
    fn take_prefers_the_smallest_buffer_that_fits() {
        let mut pool = vec![
            Vec::with_capacity(10),
            Vec::with_capacity(1000),
            Vec::with_capacity(100),
        ];
        let got = take(&mut pool, 2, 50);
        assert_eq!(got[0].capacity(), 100);
        assert_eq!(got[1].capacity(), 1000); // nothing else fits: the largest grows least
        assert_eq!(take(&mut pool, 2, 5).len(), 2); // an empty pool hands out new buffers
    }

    #[test]
    fn balance_splits_by_measured_cost() {
        let mut b = Balance::default();
        assert_eq!(b.helper_share(4), 4);
        // d = 1, c = 2, w = 0 (ms per MB): helper r·1 = 2 + (4 - r)·1 ⇒ r = 3.
        b.decode = Duration::from_millis(10);
        b.decoded_bytes = 10_000_000;
        b.combine = Duration::from_millis(20);
        b.combined_bytes = 10_000_000;
        assert_eq!(b.helper_share(4), 3);
        assert_eq!(b.helper_share(1), 1);
        // A slow writer on the helper moves decoding to the caller: r = 2 + (2 - 4)/2 = 1.
        b.write = Duration::from_millis(40);
        b.written_bytes = 10_000_000;
        assert_eq!(b.helper_share(4), 1);
    }

    #[test]
    fn write_errors_on_the_helper_reach_the_caller() {
        let d = tempfile::tempdir().unwrap();
        let m = model(&d.path().join("m.st"), 1.0, false);
        // The sink lacks `c`, so the helper's write of `c` fails after `a` succeeded.
        let specs = vec![("a".to_string(), Dtype::F32, vec![3])];
        let out = d.path().join("out.safetensors");
        let mut w = SafetensorsWriter::create(&out, &specs, WriterOptions::default()).unwrap();
        let e = stream_tensors(&[&m], &all(&m), None, &mut w, &mut |_, v| Ok(v[0].clone()))
            .unwrap_err();
        assert!(e.message.contains("`c`"), "{}", e.message);
    }

    #[test]
    fn helper_errors_reach_the_caller() {
        let d = tempfile::tempdir().unwrap();
        let ms: Vec<ModelDir> = (0..2)
            .map(|i| model(&d.path().join(format!("{i}.st")), 1.0, true))
            .collect();
        let refs: Vec<&ModelDir> = ms.iter().collect();
        let mut w = sink(d.path(), &ms[0]);
        let e = stream_tensors(&refs, &all(&ms[0]), None, &mut w, &mut |_, v| {
            Ok(v[0].clone())
        })
        .unwrap_err();
        assert_eq!(e.code, "smelt::io::unsupported_dtype");
        assert!(e.message.contains("`b`"), "{}", e.message);
    }
}
