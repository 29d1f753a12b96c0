//! Fast conversions between stored tensor bytes (little-endian safetensors payloads) and `f32`.
//!
//! Merges spend most of their time here, so the common cases take vectorised paths: F16 uses
//! `half`'s slice conversion (F16C on x86 when the CPU has it) when the bytes are 2-aligned, BF16
//! is a shift, F32 a memcpy. Everything else falls back to simple `chunks_exact` loops, which are
//! also the path for unaligned data and big-endian targets. Integer types convert numerically
//! (lossy above 2^24); 8-bit float formats are refused rather than guessed.

use super::dtype::Dtype;
use crate::diag::OpError;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::mem::MaybeUninit;

fn unsupported(dtype: Dtype, dir: &str) -> OpError {
    OpError::new(
        "smelt::io::unsupported_dtype",
        format!("cannot convert {dtype} {dir} f32"),
    )
    .with_help("supported: F16, BF16, F32, F64 (and integer types when reading)")
}

/// Decode `bytes` (a whole tensor of `dtype`) into `out`, replacing its contents.
///
/// The values are written straight into the vector's spare capacity (no zero-fill pass; a
/// buffer that is too small is grown in place by `reserve`, which glibc does with `mremap`).
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), OpError> {
    let n = bytes.len() / dtype.size();
    out.clear();
    out.reserve(n);
    decode_uninit(dtype, bytes, &mut out.spare_capacity_mut()[..n])?;
    // SAFETY: `decode_uninit` succeeded, so it wrote all `n` elements.
    unsafe { out.set_len(n) };
    Ok(())
}

/// Decode into a slice of exactly `bytes.len() / dtype.size()` elements.
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), OpError> {
    // SAFETY: same layout; `decode_uninit` only ever stores initialised values.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    decode_uninit(dtype, bytes, out)
}

/// The decoders: on success every element of `out` has been written.
fn decode_uninit(dtype: Dtype, bytes: &[u8], out: &mut [MaybeUninit<f32>]) -> Result<(), OpError> {
    if bytes.len() != out.len() * dtype.size() {
        return Err(OpError::msg(format!(
            "internal: {} bytes of {dtype} do not fill {} values",
            bytes.len(),
            out.len()
        )));
    }
    match dtype {
        Dtype::F16 => decode_f16(bytes, out),
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                o.write(f32::from_bits(
                    (u16::from_le_bytes([c[0], c[1]]) as u32) << 16,
                ));
            }
        }
        Dtype::F32 => {
            if cfg!(target_endian = "little") {
                // SAFETY: lengths were checked above; byte copies have no alignment needs.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        out.as_mut_ptr() as *mut u8,
                        bytes.len(),
                    )
                };
            } else {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    o.write(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                o.write(
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
                );
            }
        }
        Dtype::Bool | Dtype::U8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                o.write(b as f32);
            }
        }
        Dtype::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                o.write(b as i8 as f32);
            }
        }
        Dtype::I16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                o.write(i16::from_le_bytes([c[0], c[1]]) as f32);
            }
        }
        Dtype::U16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                o.write(u16::from_le_bytes([c[0], c[1]]) as f32);
            }
        }
        Dtype::I32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                o.write(i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32);
            }
        }
        Dtype::U32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                o.write(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32);
            }
        }
        Dtype::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                o.write(
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
                );
            }
        }
        Dtype::U64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                o.write(
                    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
                );
            }
        }
        Dtype::F8E5M2 | Dtype::F8E4M3 => return Err(unsupported(dtype, "to")),
    }
    Ok(())
}

/// F16 bytes → f32: the F16C instruction on whole 16-element blocks when the CPU has it
/// (`half`'s slice conversion calls a non-inlined helper per 8 values, ~3× slower).
fn decode_f16(bytes: &[u8], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::decode_f16(bytes, out) };
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        o.write(f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32());
    }
}

/// f32 → F16 bytes (round to nearest even), F16C when available.
fn encode_f16(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::encode_f16(src, dst) };
    }
    // SAFETY: any bit pattern is a valid f16; alignment is checked via the prefix.
    let (pre, mid, post) = unsafe { dst.align_to_mut::<f16>() };
    if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
        mid.convert_from_f32_slice(src);
    } else {
        for (c, x) in dst.chunks_exact_mut(2).zip(src) {
            c.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Requires `bytes.len() == 2 * out.len()` (checked by the caller; the tail loop is safe).
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn decode_f16(bytes: &[u8], out: &mut [MaybeUninit<f32>]) {
        let n = out.len().min(bytes.len() / 2);
        let (src, dst) = (bytes.as_ptr(), out.as_mut_ptr() as *mut f32);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n keeps both 16-element accesses in bounds; loads are unaligned.
            unsafe {
                let a = _mm_loadu_si128(src.add(2 * i) as *const __m128i);
                let b = _mm_loadu_si128(src.add(2 * i + 16) as *const __m128i);
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(a));
                _mm256_storeu_ps(dst.add(i + 8), _mm256_cvtph_ps(b));
            }
            i += 16;
        }
        for (o, c) in out[i..n].iter_mut().zip(bytes[2 * i..].chunks_exact(2)) {
            o.write(f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32());
        }
    }

    /// Requires `dst.len() == 2 * src.len()` (checked by the caller; the tail loop is safe).
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn encode_f16(src: &[f32], dst: &mut [u8]) {
        let n = src.len().min(dst.len() / 2);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n keeps both 16-element accesses in bounds; stores are unaligned.
            unsafe {
                let a = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
                let b = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i + 8)));
                _mm_storeu_si128(d.add(2 * i) as *mut __m128i, a);
                _mm_storeu_si128(d.add(2 * i + 16) as *mut __m128i, b);
            }
            i += 16;
        }
        for (c, x) in dst[2 * i..].chunks_exact_mut(2).zip(&src[i..n]) {
            c.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
        }
    }
}

/// Round-to-nearest-even f32 → bf16 bits (NaN stays NaN), written so that it vectorises.
#[inline]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) as u16) | 0x0040;
    if x.is_nan() {
        nan
    } else {
        rounded
    }
}

/// Encode `src` as `dtype` (F32, F16, BF16 or F64), appending little-endian bytes to `out`.
pub fn f32_to_bytes(dtype: Dtype, src: &[f32], out: &mut Vec<u8>) -> Result<(), OpError> {
    let start = out.len();
    out.resize(start + src.len() * dtype.size(), 0);
    let dst = &mut out[start..];
    match dtype {
        Dtype::F32 => {
            for (c, x) in dst.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        Dtype::F16 => encode_f16(src, dst),
        Dtype::BF16 => {
            for (c, x) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&bf16_bits(*x).to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (c, x) in dst.chunks_exact_mut(8).zip(src) {
                c.copy_from_slice(&(*x as f64).to_le_bytes());
            }
        }
        other => {
            out.truncate(start);
            return Err(unsupported(other, "from"));
        }
    }
    Ok(())
}

/// `bf16::from_f32` without the branchy slow path; exposed for tests and benchmarks.
pub fn f32_to_bf16(x: f32) -> bf16 {
    bf16::from_bits(bf16_bits(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: [f32; 9] = [
        0.0,
        -0.0,
        1.0,
        -2.5,
        1e-3,
        65504.0,
        3.25,
        f32::INFINITY,
        1e-8,
    ];

    #[test]
    fn float_round_trips() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let mut bytes = vec![];
            f32_to_bytes(dtype, &VALUES, &mut bytes).unwrap();
            assert_eq!(bytes.len(), VALUES.len() * dtype.size());
            let mut back = vec![];
            bytes_to_f32(dtype, &bytes, &mut back).unwrap();
            for (a, b) in VALUES.iter().zip(&back) {
                let expect = match dtype {
                    Dtype::F16 => f16::from_f32(*a).to_f32(),
                    Dtype::BF16 => bf16::from_f32(*a).to_f32(),
                    _ => *a,
                };
                assert_eq!(expect.to_bits(), b.to_bits(), "{dtype} {a}");
            }
        }
    }

    #[test]
    fn unaligned_f16_matches_aligned() {
        let mut bytes = vec![0u8];
        f32_to_bytes(Dtype::F16, &VALUES, &mut bytes).unwrap();
        let mut a = vec![];
        bytes_to_f32(Dtype::F16, &bytes[1..], &mut a).unwrap();
        let mut aligned = vec![];
        f32_to_bytes(Dtype::F16, &VALUES, &mut aligned).unwrap();
        let mut b = vec![];
        bytes_to_f32(Dtype::F16, &aligned, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn f16_paths_match_half() {
        let mut x = 0x9e37_79b9u32;
        let vals: Vec<f32> = (0..10_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                f32::from_bits(x)
            })
            .filter(|v| !v.is_nan())
            .collect();
        let mut bytes = vec![];
        f32_to_bytes(Dtype::F16, &vals, &mut bytes).unwrap();
        for (v, c) in vals.iter().zip(bytes.chunks_exact(2)) {
            assert_eq!(
                u16::from_le_bytes([c[0], c[1]]),
                f16::from_f32(*v).to_bits(),
                "{v}"
            );
        }
        // Every f16 bit pattern decodes like `half` (NaNs stay NaN).
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut out = vec![];
        bytes_to_f32(Dtype::F16, &all, &mut out).unwrap();
        for (h, o) in (0..=u16::MAX).zip(&out) {
            let want = f16::from_bits(h).to_f32();
            assert!(
                want.to_bits() == o.to_bits() || (want.is_nan() && o.is_nan()),
                "{h:#x}"
            );
        }
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            let ours = f32_to_bf16(f);
            let theirs = bf16::from_f32(f);
            if f.is_nan() {
                assert!(ours.is_nan());
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{f}");
            }
        }
    }

    #[test]
    fn integers_and_refusals() {
        let bytes: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![];
        bytes_to_f32(Dtype::I64, &bytes, &mut out).unwrap();
        assert_eq!(out, vec![-3.0, 7.0]);
        assert!(bytes_to_f32(Dtype::F8E4M3, &[1, 2], &mut out).is_err());
        assert!(f32_to_bytes(Dtype::I32, &[1.0], &mut vec![]).is_err());
        assert!(decode_into(Dtype::F32, &[0; 5], &mut [0.0]).is_err());
    }
}
