//! f32 linear layers with the weight packed once at load time (AVX-512 CPUs): the same 64-column
//! panels and 6-row register tiles as [`crate::int8`], f32 FMAs, and `k` split into blocks so a
//! block of activation rows and a panel slice stay in L2. Bias and residual are added in the last
//! pass over each tile. gemm (which packs the weight again on every call and has no epilogue) is
//! the fallback on other CPUs.

use rayon::prelude::*;

const PANEL: usize = 64;
const MR: usize = 6;
const MB: usize = 96;
/// `k` per block: 96 rows × 384 × 4 B = 144 KiB of activations, 96 KiB of panel.
const KC: usize = 384;

/// `[k, n]` in panel order: per 64-column panel, per `k`, 64 consecutive columns.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    n: usize,
    k: usize,
    np: usize,
    data: Vec<f32>,
}

impl PackedWeight {
    pub(crate) fn available() -> bool {
        crate::kernels::isa() == crate::kernels::Isa::Avx512
    }

    /// `w` is `[n, k]` row-major.
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let np = n.div_ceil(PANEL) * PANEL;
        let mut data = vec![0f32; np * k];
        for c in 0..n {
            let (p, j) = (c / PANEL, c % PANEL);
            for kk in 0..k {
                data[p * PANEL * k + kk * PANEL + j] = w[c * k + kk];
            }
        }
        PackedWeight { n, k, np, data }
    }
}

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes its own rows × panel block.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `dst[m×n] (+)= x·W + bias`. Only call when [`PackedWeight::available`].
pub(crate) fn matmul(
    x: &[f32],
    w: &PackedWeight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
) {
    assert!(PackedWeight::available());
    let m = x.len() / w.k;
    assert!(dst.len() >= m * w.n && x.len() == m * w.k);
    let out = Out(dst.as_mut_ptr());
    let panels = w.np / PANEL;
    (0..m.div_ceil(MB) * panels).into_par_iter().for_each(|t| {
        let (b, p) = (t / panels, t % panels);
        let rows = b * MB..((b + 1) * MB).min(m);
        let mut k0 = 0;
        while k0 < w.k {
            let k1 = (k0 + KC).min(w.k);
            let ctx = Tile {
                x,
                w,
                out,
                panel: p,
                k: k0..k1,
                // The first block starts from the bias (and the residual); later ones add on.
                bias: if k0 == 0 { bias } else { None },
                add_dst: accumulate || k0 > 0,
            };
            let mut r = rows.start;
            while r < rows.end {
                let h = (rows.end - r).min(MR);
                // SAFETY: rows, panel and k range in bounds; AVX-512 checked above.
                unsafe {
                    match h {
                        6 => ctx.run::<6>(r),
                        5 => ctx.run::<5>(r),
                        4 => ctx.run::<4>(r),
                        3 => ctx.run::<3>(r),
                        2 => ctx.run::<2>(r),
                        _ => ctx.run::<1>(r),
                    }
                }
                r += h;
            }
            k0 = k1;
        }
    });
}

struct Tile<'a> {
    x: &'a [f32],
    w: &'a PackedWeight,
    out: Out,
    panel: usize,
    k: std::ops::Range<usize>,
    bias: Option<&'a [f32]>,
    add_dst: bool,
}

impl Tile<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run<const H: usize>(&self, r0: usize) {
        use std::arch::x86_64::*;
        let (k, n) = (self.w.k, self.w.n);
        let wp = self.w.data.as_ptr().add(self.panel * PANEL * k);
        let a0 = self.x.as_ptr().add(r0 * k);
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for kk in self.k.clone() {
            let w = wp.add(kk * PANEL);
            let wv = [
                _mm512_loadu_ps(w),
                _mm512_loadu_ps(w.add(16)),
                _mm512_loadu_ps(w.add(32)),
                _mm512_loadu_ps(w.add(48)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*a0.add(i * k + kk));
                for j in 0..4 {
                    row[j] = _mm512_fmadd_ps(a, wv[j], row[j]);
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
                if self.add_dst {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, d.add(16 * j)));
                }
                _mm512_mask_storeu_ps(d.add(16 * j), mask, y);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run<const H: usize>(&self, _r0: usize) {
        unreachable!("PackedWeight::available() is false off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_f32_matmul_matches_naive() {
        if !PackedWeight::available() {
            return;
        }
        // k over two blocks, n over two panels with a partial one, m over a partial row tile.
        let (m, k, n) = (13, KC + 41, 150);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.2)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let pw = PackedWeight::new(&w, n, k);
        let mut got = vec![1.0f32; m * n];
        matmul(&x, &pw, Some(&bias), &mut got, true);
        for r in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>();
                let want = 1.0 + exact + bias[c] as f64;
                let g = got[r * n + c] as f64;
                assert!((g - want).abs() < 1e-3, "[{r},{c}] {g} vs {want}");
            }
        }
    }
}
