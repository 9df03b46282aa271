//! Single-pass CPU kernels over contiguous `[rows, cols]` f32 buffers: layer norm, activations,
//! softmax and bias adds.
//!
//! The element-wise loops are plain Rust written so LLVM vectorises them (16 independent
//! accumulators for reductions, no libm calls: `exp` and `erf` are polynomial). The release build
//! targets baseline x86-64, so [`multiversion!`](super::multiversion) compiles each loop for AVX-512, AVX2+FMA and the
//! baseline and picks one at run time; the helpers they call are `#[inline(always)]`.

use rayon::prelude::*;

/// Rows per rayon task for the row-wise passes: large enough to amortise the task, small enough
/// to split a batch-1 pass (50 or 197 tokens) between threads.
const ROW_CHUNK: usize = 8;

/// `e^x` to about 2 ulp for the range that matters (inputs are clamped to f32's finite range),
/// without a libm call so it vectorises: `2^k · p(r)`, `r = x − k·ln2`, degree-6 polynomial.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round-to-nearest by the 1.5·2^23 trick (no `round()` call on baseline x86-64).
    const MAGIC: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_42 + r * (0.008_333_63 + r * 0.001_398_2)))));
    // SAFETY: k is a whole number in [-126, 127] after the clamp (a plain `as` would add
    // saturation checks that stop vectorisation).
    let k: i32 = unsafe { k.to_int_unchecked() };
    p * f32::from_bits(((k + 127) as u32) << 23)
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - t * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))))
            * exp(-a * a);
    y.copysign(x)
}

/// The activations the two model families use, applied in place to a contiguous buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// `x · σ(1.702x)` (openai CLIP).
    QuickGelu,
    /// `0.5x(1 + erf(x/√2))` (ViT, and CLIP configs that say "gelu").
    GeluErf,
    /// `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    GeluTanh,
    Relu,
    Silu,
}

#[inline(always)]
fn act_one(a: Act, x: f32) -> f32 {
    match a {
        Act::QuickGelu => x / (1.0 + exp(-1.702 * x)),
        Act::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::GeluTanh => {
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            // tanh(u) = 1 − 2/(e^{2u} + 1)
            0.5 * x * (2.0 - 2.0 / (exp(2.0 * u) + 1.0))
        }
        Act::Relu => x.max(0.0),
        Act::Silu => x / (1.0 + exp(-x)),
    }
}

/// `dst[i] = round(act(src[i]))` (no activation: `round(src[i])`), one straight loop per
/// activation so each vectorises in the caller's target features (a matmul epilogue that rounds
/// its output for the next layer).
#[inline(always)]
pub(crate) fn activate_rounding(
    act: Option<Act>,
    src: &[f32],
    dst: &mut [u16],
    round: impl Fn(f32) -> u16,
) {
    let pairs = dst.iter_mut().zip(src);
    match act {
        None => pairs.for_each(|(d, &x)| *d = round(x)),
        Some(Act::QuickGelu) => pairs.for_each(|(d, &x)| *d = round(act_one(Act::QuickGelu, x))),
        Some(Act::GeluErf) => pairs.for_each(|(d, &x)| *d = round(act_one(Act::GeluErf, x))),
        Some(Act::GeluTanh) => pairs.for_each(|(d, &x)| *d = round(act_one(Act::GeluTanh, x))),
        Some(Act::Relu) => pairs.for_each(|(d, &x)| *d = round(act_one(Act::Relu, x))),
        Some(Act::Silu) => pairs.for_each(|(d, &x)| *d = round(act_one(Act::Silu, x))),
    }
}

super::multiversion! {
    pub(crate) fn activate_chunk(act: Act, c: &mut [f32]) {
        // One loop per variant so each is a straight-line vectorised body.
        match act {
            Act::QuickGelu => c.iter_mut().for_each(|x| *x = act_one(Act::QuickGelu, *x)),
            Act::GeluErf => c.iter_mut().for_each(|x| *x = act_one(Act::GeluErf, *x)),
            Act::GeluTanh => c.iter_mut().for_each(|x| *x = act_one(Act::GeluTanh, *x)),
            Act::Relu => c.iter_mut().for_each(|x| *x = act_one(Act::Relu, *x)),
            Act::Silu => c.iter_mut().for_each(|x| *x = act_one(Act::Silu, *x)),
        }
    }
}

/// `act` over `rows` rows of `cols` values at `c`, stride `ldc`: a matmul epilogue's just-stored
/// tile, while it is still in L1 (saves the separate pass over the whole output).
///
/// # Safety
/// The rows are in bounds and no other thread touches them.
#[inline]
pub(crate) unsafe fn activate_tile(act: Act, c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        activate_chunk(act, std::slice::from_raw_parts_mut(c.add(i * ldc), cols));
    }
}

/// Apply `act` in place, in parallel over chunks.
pub(crate) fn activate(act: Act, xs: &mut [f32]) {
    xs.par_chunks_mut(16 * 1024)
        .for_each(|c| activate_chunk(act, c));
}

/// Sum with 16 independent lanes, so it vectorises without reassociation licence.
#[inline(always)]
fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&x| f(x)).sum::<f32>()
}

super::multiversion! {
    fn layer_norm_rows(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let cols = w.len();
        for (d, s) in dst.chunks_exact_mut(cols).zip(src.chunks_exact(cols)) {
            let mean = sum16(s, |x| x) / cols as f32;
            let var = sum16(s, |x| (x - mean) * (x - mean)) / cols as f32;
            let r = 1.0 / (var + eps).sqrt();
            for i in 0..cols {
                d[i] = (s[i] - mean) * r * w[i] + b[i];
            }
        }
    }
}

/// Layer norm of each `cols`-wide row of `src` into `dst` (two passes over a row that sits in L1).
pub(crate) fn layer_norm(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let cols = w.len();
    dst.par_chunks_mut(cols * ROW_CHUNK)
        .zip(src.par_chunks(cols * ROW_CHUNK))
        .for_each(|(d, s)| layer_norm_rows(s, d, w, b, eps));
}

/// `row[i] = e^(row[i] − max)`, returning `1 / Σ` (the softmax's scale). The row's last
/// `len % 16` values go through the same 16-lane body, padded (an attention row of 197 scores
/// left 5 to scalar code that cost about a third of the row's vector work), and the sum is taken
/// in the exponentials' pass.
#[inline(always)]
fn exp_row(row: &mut [f32]) -> f32 {
    let full = row.len() / 16 * 16;
    let (body, rest) = row.split_at_mut(full);
    let mut tail = [f32::NEG_INFINITY; 16];
    tail[..rest.len()].copy_from_slice(rest);
    // `>` rather than `f32::max`: no NaN handling in the loop (a NaN score makes a NaN row
    // either way).
    let mut m16 = tail;
    for c in body.chunks_exact(16) {
        for i in 0..16 {
            m16[i] = if c[i] > m16[i] { c[i] } else { m16[i] };
        }
    }
    let m = m16
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut acc = [0f32; 16];
    for c in body.chunks_exact_mut(16) {
        for i in 0..16 {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    for i in 0..16 {
        tail[i] = exp(tail[i] - m);
        // The padding lanes (e^-87 after `exp`'s clamp, not 0) stay out of the sum.
        acc[i] += if i < rest.len() { tail[i] } else { 0.0 };
    }
    rest.copy_from_slice(&tail[..rest.len()]);
    1.0 / acc.iter().sum::<f32>()
}

super::multiversion! {
    /// Softmax of each `cols`-wide row, in place.
    pub(crate) fn softmax_rows(xs: &mut [f32], cols: usize) {
        for row in xs.chunks_exact_mut(cols) {
            let inv = exp_row(row);
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

super::multiversion! {
    /// Softmax of each `cols`-wide row of `xs` rounded to bf16 into `p`'s rows (stride `sp`,
    /// the first `cols` of each): the values [`softmax_rows`] then rounding would give, in one
    /// pass less (`xs` is left holding the unscaled exponentials).
    pub(crate) fn softmax_rows_bf16(xs: &mut [f32], cols: usize, p: &mut [u16], sp: usize) {
        for (row, p) in xs.chunks_exact_mut(cols).zip(p.chunks_exact_mut(sp)) {
            let inv = exp_row(row);
            for (q, &x) in p[..cols].iter_mut().zip(row.iter()) {
                *q = super::bf16::to_bf16(x * inv);
            }
        }
    }
}

/// `dst[r] = bias` (or `dst[r] += bias` when `add`) for every `bias.len()`-wide row.
pub(crate) fn fill_bias(dst: &mut [f32], bias: Option<&[f32]>, cols: usize, add: bool) {
    match (bias, add) {
        (None, true) => {}
        (None, false) => dst.par_chunks_mut(cols * 64).for_each(|c| c.fill(0.0)),
        (Some(b), _) => dst
            .par_chunks_mut(cols * ROW_CHUNK)
            .for_each(|c| bias_rows(c, b, add)),
    }
}

super::multiversion! {
    fn bias_rows(c: &mut [f32], b: &[f32], add: bool) {
        for row in c.chunks_exact_mut(b.len()) {
            if add {
                row.iter_mut().zip(b).for_each(|(d, b)| *d += b);
            } else {
                row.copy_from_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        for i in -2000..2000 {
            let x = i as f32 / 50.0;
            let (e, want) = (exp(x), x.exp());
            assert!(
                (e - want).abs() <= 3e-7 * want,
                "exp({x}) = {e}, want {want}"
            );
            let g = act_one(Act::GeluErf, x);
            let want = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()));
            assert!(
                (g as f64 - want).abs() < 2e-6 * (1.0 + x.abs() as f64),
                "gelu({x})"
            );
        }
    }

    /// SigLIP's `gelu_pytorch_tanh`, as the vectorised pass runs it, against the exact formula
    /// in f64 (`0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`, std's tanh).
    #[test]
    fn gelu_tanh_matches_the_exact_formula() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 / 200.0).collect();
        let mut got = xs.clone();
        activate(Act::GeluTanh, &mut got);
        let mut worst = 0f64;
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044_715 * x64.powi(3));
            let want = 0.5 * x64 * (1.0 + u.tanh());
            let err = (g as f64 - want).abs() / (1.0 + x64.abs());
            worst = worst.max(err);
            assert!(err < 5e-7, "gelu_tanh({x}) = {g}, want {want}");
            assert_eq!(
                g,
                act_one(Act::GeluTanh, x),
                "the pass and the scalar agree"
            );
        }
        eprintln!("gelu_tanh: worst |error| / (1 + |x|) {worst:.1e}");
        // Not the erf GELU, which differs by 3.4e-4 at x = 2.3 (this test tells them apart).
        let d = act_one(Act::GeluTanh, 2.3) - act_one(Act::GeluErf, 2.3);
        assert!(d.abs() > 1e-4, "{d}");
    }

    /// erf by its Taylor/continued series in f64, as an independent reference.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n!(2n+1)) converges fast enough for |x| ≤ 3;
        // beyond, erf is 1 to f32 precision.
        if x.abs() > 3.5 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn layer_norm_and_softmax_rows() {
        let src: Vec<f32> = (0..3 * 37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let w: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mut dst = vec![0.0; src.len()];
        layer_norm(&src, &mut dst, &w, &b, 1e-5);
        for (s, d) in src.chunks(37).zip(dst.chunks(37)) {
            let mean = s.iter().sum::<f32>() / 37.0;
            let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 37.0;
            for i in 0..37 {
                let want = (s[i] - mean) / (var + 1e-5).sqrt() * w[i] + b[i];
                assert!((d[i] - want).abs() < 1e-5);
            }
        }
        // Rows shorter than, equal to, and past a 16-lane body, with and without a tail.
        for cols in [5, 16, 37, 197] {
            let x: Vec<f32> = (0..3 * cols)
                .map(|i| (i as f32 * 0.37).sin() * 9.0)
                .collect();
            let mut sm = x.clone();
            softmax_rows(&mut sm, cols);
            for (s, p) in x.chunks(cols).zip(sm.chunks(cols)) {
                let z: f64 = s.iter().map(|&x| (x as f64).exp()).sum();
                for i in 0..cols {
                    let want = (s[i] as f64).exp() / z;
                    assert!(
                        (p[i] as f64 - want).abs() < 1e-6,
                        "{cols}: {} vs {want}",
                        p[i]
                    );
                }
            }
        }
        let mut sm = src.clone();
        softmax_rows(&mut sm, 37);
        // The bf16 variant: the same probabilities rounded, into rows of a wider stride whose
        // padding it leaves alone.
        let mut scratch = src.clone();
        let mut p = vec![7u16; 3 * 40];
        softmax_rows_bf16(&mut scratch, 37, &mut p, 40);
        for (want, got) in sm.chunks(37).zip(p.chunks(40)) {
            for i in 0..37 {
                assert_eq!(got[i], crate::kernels::bf16::to_bf16(want[i]), "{i}");
            }
            assert_eq!(got[37..], [7, 7, 7]);
        }
    }
}
