//! bf16 linear layers: weights rounded to bf16 once at load time, activations rounded per call,
//! products accumulated in f32 with AVX-512 BF16 (`vdpbf16ps`: 32 bf16 multiply-adds into 16 f32
//! lanes per instruction, 2× an f32 FMA). Same panel layout and tiling as [`crate::int8`], with
//! pairs of `k` instead of quads; the bias and residual are added in the epilogue.

use rayon::prelude::*;

const PANEL: usize = 64;
const MR: usize = 6;
const MB: usize = 96;

/// Round to nearest even (finite inputs; weights and activations here are finite).
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `[k, n]` in panel order: per 64-column panel, per pair of `k`, 64 columns × 2 bf16.
#[derive(Debug, Clone)]
pub(crate) struct Bf16Weight {
    n: usize,
    kp: usize,
    np: usize,
    data: Vec<u16>,
}

impl Bf16Weight {
    /// `w` is `[n, k]` row-major.
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let (kp, np) = (k.div_ceil(2) * 2, n.div_ceil(PANEL) * PANEL);
        let mut data = vec![0u16; np * kp];
        for c in 0..n {
            let (p, j) = (c / PANEL, c % PANEL);
            for kk in 0..k {
                data[p * PANEL * kp + (kk / 2) * PANEL * 2 + j * 2 + kk % 2] =
                    to_bf16(w[c * k + kk]);
            }
        }
        Bf16Weight { n, kp, np, data }
    }
}

crate::kernels::multiversion! {
    fn round_row(x: &[f32], q: &mut [u16]) {
        for (q, &x) in q.iter_mut().zip(x) {
            *q = to_bf16(x);
        }
    }
}

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes its own rows × panel block.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `dst[m×n] (+)= x·W + bias`.
pub(crate) fn matmul(
    x: &[f32],
    k: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
) {
    let (m, kp) = (x.len() / k, w.kp);
    let mut a = vec![0u16; m * kp];
    a.par_chunks_mut(kp)
        .zip(x.par_chunks(k))
        .for_each(|(q, x)| round_row(x, &mut q[..k]));
    let out = Out(dst.as_mut_ptr());
    let panels = w.np / PANEL;
    let fast = has_bf16();
    (0..m.div_ceil(MB) * panels).into_par_iter().for_each(|t| {
        let (b, p) = (t / panels, t % panels);
        let rows = b * MB..((b + 1) * MB).min(m);
        let ctx = Tile {
            a: &a,
            w,
            bias,
            out,
            accumulate,
            panel: p,
        };
        let mut r = rows.start;
        while r < rows.end {
            let h = (rows.end - r).min(MR);
            // SAFETY: rows and panel in range; the BF16 kernel only when detected.
            unsafe {
                match (fast, h) {
                    (true, 6) => ctx.avx512::<6>(r),
                    (true, 5) => ctx.avx512::<5>(r),
                    (true, 4) => ctx.avx512::<4>(r),
                    (true, 3) => ctx.avx512::<3>(r),
                    (true, 2) => ctx.avx512::<2>(r),
                    (true, _) => ctx.avx512::<1>(r),
                    (false, _) => ctx.portable(r, h),
                }
            }
            r += h;
        }
    });
}

fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

struct Tile<'a> {
    a: &'a [u16],
    w: &'a Bf16Weight,
    bias: Option<&'a [f32]>,
    out: Out,
    accumulate: bool,
    panel: usize,
}

impl Tile<'_> {
    unsafe fn portable(&self, r0: usize, h: usize) {
        let (k, n) = (self.w.kp, self.w.n);
        let base = &self.w.data[self.panel * PANEL * k..(self.panel + 1) * PANEL * k];
        for r in r0..r0 + h {
            let a = &self.a[r * k..(r + 1) * k];
            for j in 0..PANEL.min(n - self.panel * PANEL) {
                let mut acc = 0f32;
                for (kk, &av) in a.iter().enumerate() {
                    acc += from_bf16(av) * from_bf16(base[(kk / 2) * PANEL * 2 + j * 2 + kk % 2]);
                }
                let c = self.panel * PANEL + j;
                let v = acc + self.bias.map_or(0.0, |b| b[c]);
                let d = self.out.0.add(r * n + c);
                *d = if self.accumulate { *d + v } else { v };
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn avx512<const H: usize>(&self, r0: usize) {
        use std::arch::x86_64::*;
        let (k, n) = (self.w.kp, self.w.n);
        let wp = self.w.data.as_ptr().add(self.panel * PANEL * k);
        let a0 = self.a.as_ptr().add(r0 * k);
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for kk in 0..k / 2 {
            let w = wp.add(kk * PANEL * 2);
            let wv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(32) as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(64) as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(96) as *const _)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = (a0.add(i * k + kk * 2) as *const i32).read_unaligned();
                let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for j in 0..4 {
                    row[j] = _mm512_dpbf16_ps(row[j], a, wv[j]);
                }
            }
        }
        let c0 = self.panel * PANEL;
        for (i, row) in acc.iter().enumerate() {
            let d = self.out.0.add((r0 + i) * n + c0);
            for (j, &v) in row.iter().enumerate() {
                let live = n.saturating_sub(c0 + 16 * j).min(16);
                if live == 0 {
                    break;
                }
                let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
                let mut y = v;
                if let Some(b) = self.bias {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0 + 16 * j)));
                }
                if self.accumulate {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, d.add(16 * j)));
                }
                _mm512_mask_storeu_ps(d.add(16 * j), mask, y);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn avx512<const H: usize>(&self, r0: usize) {
        self.portable(r0, H)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_matmul_tracks_f32() {
        let (m, k, n) = (13, 41, 150);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.2)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let bw = Bf16Weight::new(&w, n, k);
        let mut got = vec![1.0f32; m * n];
        matmul(&x, k, &bw, Some(&bias), &mut got, true);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
                let want = 1.0 + exact + bias[c];
                let g = got[r * n + c];
                assert!((g - want).abs() < 0.05, "[{r},{c}] {g} vs {want}");
            }
        }
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }
}
