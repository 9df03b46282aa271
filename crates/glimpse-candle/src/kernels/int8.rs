//! Dynamic int8 linear layers, the scheme ONNX Runtime's `quantize_dynamic` uses, a little finer:
//! weights quantised once per output channel (symmetric, i8), activations per row at run time
//! (asymmetric, u8 with a zero point), products summed in i32 with AVX-512 VNNI (`vpdpbusd`:
//! 64 u8×i8 multiply-adds per instruction, 4× an f32 FMA) and rescaled to f32 in the epilogue,
//! where the bias and the residual are added too.
//!
//! `x ≈ sa·(qa − za)`, `w ≈ sw·qw`, so `x·w ≈ sa·sw·(Σ qa·qw − za·Σ qw)`; `Σ qw` per column is
//! computed at load time.

use rayon::prelude::*;

use crate::kernels::schedule::SharedOut;
use crate::kernels::spare::Spares;
use crate::kernels::{Act, Int8Kernel};

/// Columns per panel: four 16-lane registers.
pub(crate) const PANEL: usize = 64;
/// Rows per register tile (6 rows × 4 registers = 24 accumulators of the 32).
const MR: usize = 6;
/// Most rows per cache block: 128 rows of 3072 u8 plus one 3072-deep panel fit in a 1 MiB L2
/// (see [`crate::kernels::schedule::row_blocks`]).
const MB: usize = 128;
/// `k` is padded (zero weights) to whole AMX tile steps: 64 bytes.
const K_ALIGN: usize = crate::kernels::amx::K_BYTES;

/// A `[k, n]` weight in VNNI panel order: for each 64-column panel, for each group of 4 `k`,
/// 64 columns × 4 consecutive `k` bytes (one 256-byte stretch per step of the inner loop).
/// `k` is padded to [`K_ALIGN`] and `n` to whole panels with zero weights. This is also the
/// AMX B-tile order (16 quads × 16 columns at stride 256 bytes).
#[derive(Debug, Clone)]
pub(crate) struct QuantWeight {
    n: usize,
    /// Padded sizes.
    kp: usize,
    np: usize,
    data: crate::kernels::aligned::Aligned<i8>,
    scale: Vec<f32>,
    col_sum: Vec<i32>,
}

impl QuantWeight {
    /// `w` is `[n, k]` row-major (PyTorch's `Linear.weight`).
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let (kp, np) = (k.div_ceil(K_ALIGN) * K_ALIGN, n.div_ceil(PANEL) * PANEL);
        let mut data = crate::kernels::aligned::Aligned::zeroed(np * kp);
        let mut scale = vec![1f32; np];
        let mut col_sum = vec![0i32; np];
        for c in 0..n {
            let row = &w[c * k..(c + 1) * k];
            let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale[c] = s;
            let (p, j) = (c / PANEL, c % PANEL);
            for (kk, &x) in row.iter().enumerate() {
                let q = (x / s).round().clamp(-127.0, 127.0) as i8;
                col_sum[c] += q as i32;
                data[p * PANEL * kp + (kk / 4) * PANEL * 4 + j * 4 + kk % 4] = q;
            }
        }
        QuantWeight {
            n,
            kp,
            np,
            data,
            scale,
            col_sum,
        }
    }
}

/// Activations quantised per row: `q` is `[m, kp]` u8 (`k` rounded up to [`K_ALIGN`]; the
/// padding meets zero weights), with rows after `m` up to a whole AMX block where AMX runs (their
/// results are never stored). `q` goes back to its thread's [`Spares`] when dropped.
pub(crate) struct QuantRows {
    k: usize,
    kp: usize,
    q: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

thread_local! {
    /// Dropped `QuantRows::q` buffers.
    static SPARE_Q: Spares<u8> = const { Spares::new() };
}

impl Drop for QuantRows {
    fn drop(&mut self) {
        let q = std::mem::take(&mut self.q);
        SPARE_Q.with(|s| s.give(self.k, q));
    }
}

/// Quantise each `k`-wide row of `x` to u8 with its own scale and zero point (the range always
/// includes 0 so that zero stays exact, as ONNX Runtime does), laid out for `kernel`.
pub(crate) fn quantize_rows(x: &[f32], k: usize, kernel: Int8Kernel) -> QuantRows {
    let (m, kp) = (x.len() / k, k.div_ceil(K_ALIGN) * K_ALIGN);
    let rows = if kernel == Int8Kernel::Amx {
        m.next_multiple_of(crate::kernels::amx::ROWS)
    } else {
        m
    };
    let mut q = SPARE_Q.with(|s| s.take(k, rows * kp));
    let mut scale = vec![0f32; m];
    let mut zero = vec![0i32; m];
    q.par_chunks_mut(kp)
        .zip(x.par_chunks(k))
        .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
        .for_each(|((q, x), (s, z))| {
            // AMX and VNNI both imply AVX-512 F/BW; the two quantisers give the same bytes.
            (*s, *z) = if kernel != Int8Kernel::Scalar {
                // SAFETY: AVX-512 F and BW are present: `kernel` is VNNI (detected with
                // AVX-512 F/BW) or AMX (chosen only on an `Isa::Avx512` CPU).
                unsafe { quantize_row_avx512(x, &mut q[..k]) }
            } else {
                quantize_row(x, &mut q[..k])
            }
        });
    QuantRows {
        k,
        kp,
        q,
        scale,
        zero,
    }
}

crate::kernels::multiversion! {
    /// One row to u8; returns its (scale, zero point).
    fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, i32) {
        let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
        for c in x.chunks_exact(16) {
            for i in 0..16 {
                lo[i] = lo[i].min(c[i]);
                hi[i] = hi[i].max(c[i]);
            }
        }
        let tail = &x[x.len() / 16 * 16..];
        let lo = tail.iter().chain(&lo).fold(0f32, |a, &b| a.min(b));
        let hi = tail.iter().chain(&hi).fold(0f32, |a, &b| a.max(b));
        let sc = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zp = (-lo / sc + 0.5).floor().clamp(0.0, 255.0);
        let inv = 1.0 / sc;
        for (q, &x) in q.iter_mut().zip(x) {
            // SAFETY: clamped into [0, 255.5) first, so the truncation is in range.
            *q = unsafe { (x * inv + zp + 0.5).clamp(0.0, 255.0).to_int_unchecked::<i32>() } as u8;
        }
        (sc, zp as i32)
    }
}

/// [`quantize_row`] with AVX-512 (the compiler does not vectorise the float → u8 conversion).
/// The same arithmetic, so the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n16 = x.len() / 16 * 16;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..n16).step_by(16) {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    let tail = &x[n16..];
    let lo = tail.iter().fold(_mm512_reduce_min_ps(lo), |a, &b| a.min(b));
    let hi = tail.iter().fold(_mm512_reduce_max_ps(hi), |a, &b| a.max(b));
    let sc = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zp = (-lo / sc + 0.5).floor().clamp(0.0, 255.0);
    let inv = 1.0 / sc;
    let (vinv, vzp, half) = (_mm512_set1_ps(inv), _mm512_set1_ps(zp), _mm512_set1_ps(0.5));
    let (zero, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    for i in (0..n16).step_by(16) {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        // (x·inv + zp) + 0.5 in two roundings, as the scalar code does.
        let y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(v, vinv), vzp), half);
        let y = _mm512_min_ps(_mm512_max_ps(y, zero), top);
        let b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(y));
        _mm_storeu_si128(q.as_mut_ptr().add(i) as *mut __m128i, b);
    }
    for (q, &x) in q[n16..].iter_mut().zip(tail) {
        *q = (x * inv + zp + 0.5).clamp(0.0, 255.0) as u8;
    }
    (sc, zp as i32)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    quantize_row(x, q)
}

/// `dst[m×n] (+)= x·W + bias`, then `act` on the result, `x` already quantised (for the same
/// `kernel`), on `kernel` (chosen at load, see [`crate::kernels::Kernels`]); the activation is
/// applied to each tile task's output while it is still in cache (not with `accumulate`).
pub(crate) fn matmul(
    x: &QuantRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
    act: Option<Act>,
    kernel: Int8Kernel,
) {
    let m = x.scale.len();
    assert!(act.is_none() || !accumulate);
    assert!(dst.len() >= m * w.n && x.kp == w.kp);
    let out = SharedOut::new(dst);
    if kernel == Int8Kernel::Amx {
        assert!(x.q.len() >= m.next_multiple_of(crate::kernels::amx::ROWS) * x.kp);
        crate::kernels::schedule::par_tiles(
            m,
            MB,
            crate::kernels::amx::ROWS,
            w.np / PANEL,
            |rows, p| {
                let ctx = Tile {
                    x,
                    w,
                    bias,
                    out,
                    accumulate,
                    act,
                    panel: p,
                };
                // SAFETY: `kernel` is `Amx` only where `amx::available()` (tile state granted,
                // AVX-512 F/BW present); `x.q` holds whole 32-row blocks (asserted) of `kp`, the
                // weight's `kp` (asserted). Each task writes its own rows × panel of `dst`.
                unsafe { ctx.amx(rows) }
            },
        );
        return;
    }
    let vnni = kernel == Int8Kernel::Vnni;
    crate::kernels::schedule::par_tiles(m, MB, MR, w.np / PANEL, |rows, p| {
        let ctx = Tile {
            x,
            w,
            bias,
            out,
            accumulate,
            act,
            panel: p,
        };
        for (r, h) in crate::kernels::schedule::row_tiles(rows.clone(), MR) {
            // SAFETY: `r..r + h` and panel `p` are in range (`par_tiles` stays below `m` and the
            // panel count; `dst` holds m·n, asserted); the VNNI tile runs only when `kernel` is
            // `Vnni`, chosen where the CPU has AVX-512 F/BW/VNNI. Each task writes its own
            // rows × panel of `dst`.
            unsafe {
                match (vnni, h) {
                    (true, 6) => ctx.vnni::<6>(r),
                    (true, 5) => ctx.vnni::<5>(r),
                    (true, 4) => ctx.vnni::<4>(r),
                    (true, 3) => ctx.vnni::<3>(r),
                    (true, 2) => ctx.vnni::<2>(r),
                    (true, _) => ctx.vnni::<1>(r),
                    (false, _) => ctx.portable(r, h),
                }
            }
        }
        // The block's rows × the panel's 64 columns were just stored (at most MB × 64 floats,
        // L1/L2-hot): the activation here instead of a separate pass over the whole output
        // (10 % of a ViT-B/16 int8 batch-8 pass on VNNI, bound by reading 19 MB back per layer).
        if let Some(a) = act {
            let (c0, n) = (p * PANEL, w.n);
            // SAFETY: rows `rows` of panel `p`'s live columns lie inside `dst` (asserted to hold
            // m·n) and belong to this task alone.
            unsafe {
                crate::kernels::activate_tile(
                    a,
                    out.at(rows.start * n + c0),
                    n,
                    rows.len(),
                    (n - c0).min(PANEL),
                )
            };
        }
    });
}

pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

struct Tile<'a> {
    x: &'a QuantRows,
    w: &'a QuantWeight,
    bias: Option<&'a [f32]>,
    out: SharedOut,
    accumulate: bool,
    /// Applied in the AMX epilogue (the VNNI and portable paths apply it per task, after the
    /// tiles).
    act: Option<Act>,
    panel: usize,
}

impl Tile<'_> {
    /// The epilogue for one output element of row `r`, column `c` (absolute).
    #[inline(always)]
    fn finish(&self, r: usize, c: usize, acc: i32) -> f32 {
        let (x, w) = (self.x, self.w);
        let v = (acc - x.zero[r] * w.col_sum[c]) as f32 * (x.scale[r] * w.scale[c]);
        v + self.bias.map_or(0.0, |b| b[c])
    }

    /// Scalar reference path for CPUs without VNNI (and the ground truth the tests compare to).
    unsafe fn portable(&self, r0: usize, h: usize) {
        let (k, n) = (self.w.kp, self.w.n);
        let base = &self.w.data[self.panel * PANEL * k..(self.panel + 1) * PANEL * k];
        for r in r0..r0 + h {
            let a = &self.x.q[r * k..(r + 1) * k];
            for j in 0..PANEL.min(n - self.panel * PANEL) {
                let mut acc = 0i32;
                for (kk, &av) in a.iter().enumerate() {
                    acc += av as i32 * base[(kk / 4) * PANEL * 4 + j * 4 + kk % 4] as i32;
                }
                let c = self.panel * PANEL + j;
                let v = self.finish(r, c, acc);
                let d = self.out.at(r * n + c);
                *d = if self.accumulate { *d + v } else { v };
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni<const H: usize>(&self, r0: usize) {
        use std::arch::x86_64::*;
        let k = self.w.kp;
        let wp = self.w.data.as_ptr().add(self.panel * PANEL * k);
        let a0 = self.x.q.as_ptr().add(r0 * k);
        let mut acc = [[_mm512_setzero_si512(); 4]; H];
        for kk in 0..k / 4 {
            let w = wp.add(kk * PANEL * 4);
            let wv = [
                _mm512_loadu_si512(w as *const _),
                _mm512_loadu_si512(w.add(64) as *const _),
                _mm512_loadu_si512(w.add(128) as *const _),
                _mm512_loadu_si512(w.add(192) as *const _),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32((a0.add(i * k + kk * 4) as *const i32).read_unaligned());
                for j in 0..4 {
                    row[j] = _mm512_dpbusd_epi32(row[j], a, wv[j]);
                }
            }
        }
        // Rows by constant index, not a loop: with a loop over five or six rows (not unrolled,
        // the epilogue is long) the accumulators live in a stack array that was zeroed with a
        // 1.5 KB `memset` per tile (4 % of a ViT-B/16 int8 pass in `perf`).
        macro_rules! finish {
            ($($i:literal)*) => {$(
                if let Some(row) = acc.get($i) {
                    self.finish_row(r0 + $i, self.panel * PANEL, row);
                }
            )*};
        }
        const { assert!(H <= 6, "finish! covers six rows") };
        finish!(0 1 2 3 4 5);
    }

    /// The epilogue of row `r`: `16·V` i32 sums for columns from `c0` on, rescaled to f32, plus
    /// the bias (and the destination when accumulating); columns past `n` are not written.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn finish_row<const V: usize>(
        &self,
        r: usize,
        c0: usize,
        row: &[std::arch::x86_64::__m512i; V],
    ) {
        use std::arch::x86_64::*;
        let n = self.w.n;
        let cs = self.w.col_sum.as_ptr().add(c0);
        let ws = self.w.scale.as_ptr().add(c0);
        let zp = _mm512_set1_epi32(self.x.zero[r]);
        let sa = _mm512_set1_ps(self.x.scale[r]);
        let d = self.out.at(r * n + c0);
        for (j, &v) in row.iter().enumerate() {
            let live = n.saturating_sub(c0 + 16 * j).min(16);
            if live == 0 {
                break;
            }
            let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
            let corr = _mm512_mullo_epi32(zp, _mm512_loadu_si512(cs.add(16 * j) as *const _));
            let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, corr));
            let mut y = _mm512_mul_ps(f, _mm512_mul_ps(sa, _mm512_loadu_ps(ws.add(16 * j))));
            if let Some(b) = self.bias {
                let bv = _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0 + 16 * j));
                y = _mm512_add_ps(y, bv);
            }
            if self.accumulate {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, d.add(16 * j)));
            }
            _mm512_mask_storeu_ps(d.add(16 * j), mask, y);
        }
    }

    /// Rows `rows` of this panel with AMX tiles: per 32-row block and 32-column half, one
    /// [`crate::kernels::amx::Block`] over all of `k`, then the same epilogue as the VNNI tile.
    ///
    /// # Safety
    /// [`crate::kernels::amx::available`]; `x.q` holds `rows.end` rounded up to 32 rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn amx(&self, rows: std::ops::Range<usize>) {
        use crate::kernels::amx::{Block, Op, Tiles, ROWS};
        use std::arch::x86_64::*;
        let kp = self.w.kp;
        let _tiles = Tiles::configure();
        let mut acc = [[0u32; 256]; 4];
        for r in rows.clone().step_by(ROWS) {
            let h = (rows.end - r).min(ROWS);
            for half in 0..2 {
                let c0 = self.panel * PANEL + half * 32;
                if c0 >= self.w.n {
                    break;
                }
                Block {
                    a: self.x.q.as_ptr().add(r * kp),
                    lda: kp,
                    a_step: crate::kernels::amx::K_BYTES,
                    a_half: 16 * kp,
                    b: (self
                        .w
                        .data
                        .as_ptr()
                        .add(self.panel * PANEL * kp + half * 128))
                        as *const u8,
                    ldb: crate::kernels::amx::PANEL_ROW,
                    b_next: 64,
                    steps: kp / crate::kernels::amx::K_BYTES,
                }
                .run(Op::Int8, &mut acc, false);
                for i in 0..h {
                    let t = (i / 16) * 2;
                    let row = [
                        _mm512_loadu_si512(acc[t][(i % 16) * 16..].as_ptr() as *const _),
                        _mm512_loadu_si512(acc[t + 1][(i % 16) * 16..].as_ptr() as *const _),
                    ];
                    self.finish_row(r + i, c0, &row);
                }
            }
            // Over the panel's 64 columns at once (32-wide slices ran the activation's loop
            // ~20 % slower per element).
            if let Some(a) = self.act {
                let (c0, n) = (self.panel * PANEL, self.w.n);
                let d = self.out.at(r * n + c0);
                crate::kernels::activate_tile(a, d, n, h, (n - c0).min(PANEL));
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn amx(&self, _: std::ops::Range<usize>) {
        unreachable!("AMX is x86-64 only")
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn vnni<const H: usize>(&self, r0: usize) {
        self.portable(r0, H)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;
    use crate::Precision;

    /// The int8 kernel this CPU runs.
    fn here() -> Int8Kernel {
        Kernels::choose(Precision::Int8).int8
    }

    /// A reused `q` buffer holds what a new one would in every row that is used (the padding
    /// columns included), after a call of the same size with other values.
    #[test]
    fn quantize_rows_reuses_cleanly() {
        let (m, k) = (5, 70);
        let x = |salt| crate::kernels::test_support::salted_rows(m * k, salt);
        let (first, second) = (x(0), x(311));
        let fresh = std::thread::spawn({
            let second = second.clone();
            move || {
                let r = quantize_rows(&second, k, here());
                (r.q[..m * r.kp].to_vec(), r.scale.clone(), r.zero.clone())
            }
        })
        .join()
        .unwrap();
        drop(quantize_rows(&first, k, here()));
        // Same buffer size, wider rows: its padding columns are not zero, so it must not be
        // taken for rows of `k`.
        let wide = k.div_ceil(K_ALIGN) * K_ALIGN - 2;
        let other: Vec<f32> = (0..m * wide).map(|i| 1.0 + i as f32).collect();
        drop(quantize_rows(&other, wide, here()));
        let reused = quantize_rows(&second, k, here());
        assert_eq!(reused.q[..m * reused.kp], fresh.0[..]);
        assert_eq!((&reused.scale, &reused.zero), (&fresh.1, &fresh.2));
        assert!(reused.kp > k, "the test needs padding columns");
    }

    /// The VNNI kernel (where the CPU has it) and the scalar path agree exactly with each other
    /// and approximately with the f32 product, for every row-tile height.
    #[test]
    fn int8_matmul_tracks_f32() {
        // Tiles of 1 to 5 rows alone, then 6 + 6 + 1.
        for m in [1, 2, 3, 4, 5, 13] {
            matmul_tracks_f32(m, 42, 150);
        }
    }

    fn matmul_tracks_f32(m: usize, k: usize, n: usize) {
        let (x, w, bias) = crate::kernels::test_support::test_operands(m, k, n);
        let qw = QuantWeight::new(&w, n, k);
        let qx = quantize_rows(&x, k, here());
        let mut got = vec![1.0f32; m * n];
        matmul(&qx, &qw, Some(&bias), &mut got, true, None, here());
        let mut scalar = vec![1.0f32; m * n];
        for p in 0..n.div_ceil(PANEL) {
            let t = Tile {
                x: &qx,
                w: &qw,
                bias: Some(&bias),
                out: SharedOut::new(&mut scalar),
                accumulate: true,
                act: None,
                panel: p,
            };
            // SAFETY: `scalar` holds m·n values, panel `p` is below n's panel count and `qx`
            // holds `m` rows; the scalar tile has no CPU-feature precondition.
            unsafe { t.portable(0, m) };
        }
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
                let want = 1.0 + exact + bias[c];
                let (g, s) = (got[r * n + c], scalar[r * n + c]);
                assert!((g - s).abs() <= 1e-4 * s.abs().max(1.0), "{g} vs {s}");
                assert!((g - want).abs() < 0.05, "[{r},{c}] {g} vs {want}");
            }
        }
    }

    /// On AMX CPUs the tile path gives exactly the VNNI path's results (both sum the same i32
    /// products and share the epilogue), over partial row blocks, partial panels and a `k` that
    /// is several tile steps plus padding.
    #[test]
    fn amx_and_vnni_paths_agree_exactly() {
        if here() != Int8Kernel::Amx || !has_vnni() {
            eprintln!("no AMX here: nothing to compare");
            return;
        }
        for (m, k, n) in [(13, 42, 150), (70, 200, 64), (33, 768, 100), (197, 96, 200)] {
            let (x, w, bias) = crate::kernels::test_support::test_operands(m, k, n);
            let (qw, qx) = (QuantWeight::new(&w, n, k), quantize_rows(&x, k, here()));
            for accumulate in [false, true] {
                let mut amx = vec![0.5f32; m * n];
                let mut vnni = amx.clone();
                matmul(
                    &qx,
                    &qw,
                    Some(&bias),
                    &mut amx,
                    accumulate,
                    None,
                    Int8Kernel::Amx,
                );
                matmul(
                    &qx,
                    &qw,
                    Some(&bias),
                    &mut vnni,
                    accumulate,
                    None,
                    Int8Kernel::Vnni,
                );
                assert!(amx == vnni, "m {m} k {k} n {n} accumulate {accumulate}");
            }
            // The activation fused into the AMX epilogue equals the separate pass.
            let mut fused = vec![0.5f32; m * n];
            let mut apart = fused.clone();
            matmul(
                &qx,
                &qw,
                Some(&bias),
                &mut fused,
                false,
                Some(Act::GeluErf),
                Int8Kernel::Amx,
            );
            matmul(
                &qx,
                &qw,
                Some(&bias),
                &mut apart,
                false,
                None,
                Int8Kernel::Vnni,
            );
            crate::kernels::activate(Act::GeluErf, &mut apart);
            assert!(fused == apart, "fused activation, m {m} k {k} n {n}");
        }
    }

    /// Off AMX (VNNI, or the portable tiles without it) the activation fused into each tile task
    /// equals a separate pass over the finished output, over partial row blocks and panels.
    #[test]
    fn fused_activation_equals_a_separate_pass_off_amx() {
        for (m, k, n) in [(13, 42, 150), (197, 96, 200), (400, 64, 70)] {
            let (x, w, bias) = crate::kernels::test_support::test_operands(m, k, n);
            let (qw, qx) = (QuantWeight::new(&w, n, k), quantize_rows(&x, k, here()));
            let off_amx = if has_vnni() {
                Int8Kernel::Vnni
            } else {
                Int8Kernel::Scalar
            };
            for act in [Act::GeluErf, Act::QuickGelu] {
                let mut fused = vec![0.5f32; m * n];
                let mut apart = fused.clone();
                matmul(&qx, &qw, Some(&bias), &mut fused, false, Some(act), off_amx);
                matmul(&qx, &qw, Some(&bias), &mut apart, false, None, off_amx);
                crate::kernels::activate(act, &mut apart);
                assert!(fused == apart, "{act:?}, m {m} k {k} n {n}");
            }
        }
    }

    /// The AVX-512 row quantiser gives the portable one's bytes, scale and zero point.
    #[test]
    fn quantize_row_paths_agree() {
        if !has_vnni() {
            return;
        }
        for (k, shift) in [(768, -0.3f32), (37, 0.8), (16, -2.0), (5, 0.0)] {
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 7919 % 1013) as f32 / 97.0).sin() * 3.0 + shift)
                .collect();
            let (mut a, mut b) = (vec![0u8; k], vec![0u8; k]);
            let want = quantize_row(&x, &mut a);
            // SAFETY: VNNI (and so AVX-512 F/BW) checked above.
            let got = unsafe { quantize_row_avx512(&x, &mut b) };
            assert_eq!(want, got, "k {k}");
            assert_eq!(a, b, "k {k}");
        }
    }
}
