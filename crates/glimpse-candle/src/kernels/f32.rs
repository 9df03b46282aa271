//! f32 linear layers with the weight packed once at load time (AVX-512 CPUs): the same 64-column
//! panels and 6-row register tiles as [`crate::int8`], f32 FMAs, and `k` split into blocks so a
//! block of activation rows and a panel slice stay in L2. Bias and residual are added in the last
//! pass over each tile. gemm (which packs the weight again on every call and has no epilogue) is
//! the fallback on other CPUs.

use super::schedule::{par_tiles, row_blocks, row_tiles, SharedOut};

pub(crate) const PANEL: usize = 64;
pub(crate) const MR: usize = 6;
/// Most rows per cache block; `m` is cut into equal blocks of at most this (a multiple of `MR`),
/// so no block is a sliver that pays a whole read of the weight for a few rows (ViT-B/16 at
/// batch 1: 197 rows as 96 + 96 + 5 was ~8 % slower than one block).
pub(crate) const MB: usize = 252;

/// `k` per block on a 1 MiB L2: 96 rows × 256 × 4 B = 96 KiB of activations, 64 KiB of panel
/// (384 measured ~3 % slower on a 1 MiB-L2 Zen 5; 128 to 512 otherwise within noise).
const KC: usize = 256;
/// `k` per block on a 2 MiB-or-larger L2: 768 (the whole `k` of most layers) was 4–8 % faster
/// than 256 on ViT-B/16 batch 1 on a 2 MiB-L2 Xeon (3 alternating runs of 11, 145 vs 155 ms).
const KC_LARGE_L2: usize = 768;

/// The `k` block for this CPU: [`KC_LARGE_L2`] where the L2 (per Linux's sysfs) is 2 MiB or more.
fn kc() -> usize {
    static KC_HERE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KC_HERE.get_or_init(|| match super::schedule::l2_bytes() {
        Some(b) if b >= 2 << 20 => KC_LARGE_L2,
        _ => KC,
    })
}

/// `[k, n]` in panel order: per 64-column panel, per `k`, 64 consecutive columns.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    n: usize,
    k: usize,
    np: usize,
    data: crate::kernels::aligned::Aligned<f32>,
}

impl PackedWeight {
    /// `w` is `[n, k]` row-major. Only on AVX-512 CPUs ([`F32Kernel::Avx512`]): a packed weight
    /// is what lets [`matmul`] run the AVX-512 tile, so it is checked here, once per layer at
    /// load, not on every call.
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert!(
            super::isa() == super::Isa::Avx512,
            "packed f32 weights need AVX-512"
        );
        assert_eq!(w.len(), n * k);
        let np = n.div_ceil(PANEL) * PANEL;
        let mut data = crate::kernels::aligned::Aligned::zeroed(np * k);
        for c in 0..n {
            let (p, j) = (c / PANEL, c % PANEL);
            for kk in 0..k {
                data[p * PANEL * k + kk * PANEL + j] = w[c * k + kk];
            }
        }
        PackedWeight { n, k, np, data }
    }
}

/// `dst[m×n] (+)= x·W + bias`, then `act` on it (in each tile's last pass, while it is in L1).
pub(crate) fn matmul(
    x: &[f32],
    w: &PackedWeight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
    act: Option<crate::kernels::Act>,
    then: Option<&PackedWeight>,
) {
    let m = x.len() / w.k;
    assert!(dst.len() >= m * w.n && x.len() == m * w.k);
    let out = SharedOut::new(dst);
    let kc = kc();
    let panels = w.np / PANEL;
    let (blocks, mb) = row_blocks(m, MB, MR);
    let tasks = blocks * panels;
    par_tiles(m, MB, MR, panels, |rows, p| {
        let ahead = ahead_of(w, then, (rows.start / mb) * panels + p, tasks);
        let runs = rows.len().div_ceil(MR) * w.k.div_ceil(kc);
        let mut run = 0;
        let mut k0 = 0;
        while k0 < w.k {
            let k1 = (k0 + kc).min(w.k);
            let c0 = p * PANEL;
            let live = (w.n - c0).min(PANEL);
            // The first block starts from the bias (and the residual); later ones add on.
            let b0 = if k0 == 0 {
                bias.map(|b| b[c0..].as_ptr())
            } else {
                None
            };
            let add_dst = accumulate || k0 > 0;
            for (r, h) in row_tiles(rows.clone(), MR) {
                // SAFETY: rows `r..r + h` of x (rows of `k`, asserted) and dst (m·n, asserted),
                // panel `p` and `k0..k1` are in range; the prefetch run lies inside the weights
                // (`ahead_of`). AVX-512: a `PackedWeight` exists only on AVX-512 CPUs (asserted
                // in `PackedWeight::new`). Each task writes its own rows × panel of `dst`.
                unsafe {
                    let a = x.as_ptr().add(r * w.k + k0);
                    let b = w.data.as_ptr().add(p * PANEL * w.k + k0 * PANEL);
                    let c = out.at(r * w.n + c0);
                    let t = Tile {
                        a,
                        lda: w.k,
                        b,
                        ldb: PANEL,
                        k: k1 - k0,
                        c,
                        ldc: w.n,
                        live,
                        bias: b0,
                        add_dst,
                        prefetch: ahead.share(run, runs),
                    };
                    t.run_rows(h);
                    if let (Some(act), true) = (act, k1 == w.k) {
                        crate::kernels::activate_tile(act, c, w.n, h, live);
                    }
                    run += 1;
                }
            }
            k0 = k1;
        }
    });
}

/// What task `t` of `tasks` (in [`par_tiles`] order) should pull into L2 while it computes: the
/// weight panel its thread most likely takes next. Rayon hands the two halves of the task range
/// to the two threads and each runs its half in order, so that is task `t + 1`'s panel, except
/// for the last task of each half: the next layer's (`then`) first panels, one of which the
/// thread starts on once this matmul ends (which is not known, so half of each: the pass
/// otherwise starts both threads on cold weights).
fn ahead_of(w: &PackedWeight, then: Option<&PackedWeight>, t: usize, tasks: usize) -> Ahead {
    let panel = |w: &PackedWeight, p: usize| Ahead {
        at: [w.data[p * PANEL * w.k..].as_ptr().cast(); 2],
        lines: PANEL * w.k * 4 / 64,
    };
    let next = t + 1;
    if next == tasks || next == tasks / 2 {
        match then {
            Some(n) => {
                let (first, middle) = (panel(n, 0), panel(n, n.np / PANEL / 2));
                Ahead {
                    at: [first.at[0], middle.at[0]],
                    lines: first.lines / 2,
                }
            }
            None => Ahead {
                at: [std::ptr::null(); 2],
                lines: 0,
            },
        }
    } else {
        panel(w, next % (w.np / PANEL))
    }
}

/// One task's prefetch plan: `lines` cache lines from each of `at` (once when both are the same).
struct Ahead {
    at: [*const u8; 2],
    lines: usize,
}

impl Ahead {
    /// Tile run `run` of `runs`' even share of the plan.
    fn share(&self, run: usize, runs: usize) -> Prefetch {
        // Two sources: even runs take the first, odd runs the second (one run: the first only).
        let two = self.at[0] != self.at[1] && runs > 1;
        let (src, i, of) = match (two, run % 2) {
            (false, _) => (0, run, runs),
            (true, 0) => (0, run / 2, runs.div_ceil(2)),
            (true, _) => (1, run / 2, runs / 2),
        };
        let per = self.lines.div_ceil(of.max(1));
        let start = (i * per).min(self.lines);
        Prefetch {
            // SAFETY: `start` ≤ `lines`, and `lines` cache lines from `at` are in bounds (or
            // `lines` is 0 and the pointer is only offset by 0).
            at: unsafe { self.at[src].add(start * 64) },
            lines: per.min(self.lines - start),
        }
    }
}

/// One register tile of at most [`MR`] rows × 64 columns:
/// `c[i·ldc + j] = (c[i·ldc + j] if add_dst) + bias[j] + Σ_kk a[i·lda + kk] · b[kk·ldb + j]`
/// for `j < live`. Columns of `b` up to `live` rounded up to 16 are read (they must be in bounds);
/// only `live` are stored.
pub(crate) struct Tile {
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub k: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub live: usize,
    pub bias: Option<*const f32>,
    pub add_dst: bool,
    pub prefetch: Prefetch,
}

/// Cache lines for a tile to pull into L2 as it goes, one per `k` step: the weight panel the
/// thread most likely works on next. At batch 1 a panel is used by few rows, so the pass is bound
/// by reading the weights from memory, not by the FMAs; fetched ahead, they arrive while this
/// panel's tiles compute instead of stalling the next panel's first tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prefetch {
    pub at: *const u8,
    pub lines: usize,
}

impl Prefetch {
    pub(crate) const NONE: Prefetch = Prefetch {
        at: std::ptr::null(),
        lines: 0,
    };
}

impl Tile {
    /// # Safety
    /// AVX-512 present; `h ≤ MR` rows of `a`, `k` rows of `b`, `h` rows of `c` in bounds.
    #[inline]
    pub(crate) unsafe fn run_rows(&self, h: usize) {
        // Only as many 16-column registers as there are live columns (a partial last panel).
        match self.live.div_ceil(16) {
            1 => self.rows::<1>(h),
            2 => self.rows::<2>(h),
            3 => self.rows::<3>(h),
            _ => self.rows::<4>(h),
        }
    }

    #[inline]
    unsafe fn rows<const V: usize>(&self, h: usize) {
        match h {
            6 => self.run::<6, V>(),
            5 => self.run::<5, V>(),
            4 => self.run::<4, V>(),
            3 => self.run::<3, V>(),
            2 => self.run::<2, V>(),
            _ => self.run::<1, V>(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run<const H: usize, const V: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); V]; H];
        let step = |acc: &mut [[__m512; V]; H], kk: usize| {
            let w = self.b.add(kk * self.ldb);
            let wv: [__m512; V] = std::array::from_fn(|j| _mm512_loadu_ps(w.add(16 * j)));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*self.a.add(i * self.lda + kk));
                for j in 0..V {
                    row[j] = _mm512_fmadd_ps(a, wv[j], row[j]);
                }
            }
        };
        // One line of the prefetch run per `k` step while it lasts (see `Prefetch`).
        let ahead = self.prefetch.lines.min(self.k);
        for kk in 0..ahead {
            _mm_prefetch::<_MM_HINT_T1>(self.prefetch.at.add(kk * 64).cast());
            step(&mut acc, kk);
        }
        for kk in ahead..self.k {
            step(&mut acc, kk);
        }
        store_rows(&acc, self.c, self.ldc, self.live, self.bias, self.add_dst);
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run<const H: usize, const V: usize>(&self) {
        unreachable!("PackedWeight::new refuses CPUs without AVX-512")
    }
}

/// The epilogue of the f32 and bf16 tiles: row `i` of `acc` plus `bias` (plus `c` itself when
/// `add_dst`) into `c[i·ldc ..]`, the first `live` columns only.
///
/// # Safety
/// AVX-512 present; `acc.len()` rows of `c` (and `live` entries of `bias`) in bounds. Always
/// inlined into the (AVX-512) tile, so the accumulators stay in registers: as a call they were
/// spilled to pass `acc` by reference (`store_rows` was 3-4 % of a CLIP B/32 pass in `perf`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store_rows<const V: usize>(
    acc: &[[std::arch::x86_64::__m512; V]],
    c: *mut f32,
    ldc: usize,
    live: usize,
    bias: Option<*const f32>,
    add_dst: bool,
) {
    use std::arch::x86_64::*;
    for (i, row) in acc.iter().enumerate() {
        let d = c.add(i * ldc);
        for (j, &v) in row.iter().enumerate() {
            let live = live.saturating_sub(16 * j).min(16);
            if live == 0 {
                break;
            }
            let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
            let mut y = v;
            if let Some(b) = bias {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, b.add(16 * j)));
            }
            if add_dst {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, d.add(16 * j)));
            }
            _mm512_mask_storeu_ps(d.add(16 * j), mask, y);
        }
    }
}

/// A strided f32 matrix view for [`gemm`].
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    /// Distance between rows and between columns, in elements.
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a `Mat` is only read, from buffers that outlive the call it is passed to.
unsafe impl Send for Mat {}
// SAFETY: as for `Send`: shared views are only read.
unsafe impl Sync for Mat {}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`; `accumulate` adds to what `dst` holds. `threads`: split the
/// product on the current rayon pool (false inside an already-parallel loop).
///
/// # Safety
/// `a`, `b` and `dst` (row stride `dst_rs`, column stride 1) must cover the shapes given.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: bool,
) {
    let par = if threads {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Act, F32Kernel, Kernels};
    use crate::Precision;

    #[test]
    fn prefetch_shares_cover_each_source_once() {
        let buf = vec![0u8; 64 * 1000];
        let (a, b) = (buf.as_ptr(), buf[64 * 500..].as_ptr());
        for (at, lines) in [([a, a], 300), ([a, b], 300), ([a, b], 7), ([a, a], 0)] {
            for runs in [1, 2, 5, 9, 33, 400] {
                let plan = Ahead { at, lines };
                // Per source, the lines fetched by each run, in order.
                let mut seen = [vec![0u32; lines], vec![0u32; lines]];
                for run in 0..runs {
                    let p = plan.share(run, runs);
                    for l in 0..p.lines {
                        let addr = p.at as usize + 64 * l;
                        let (src, base) = if addr >= b as usize && at[1] == b {
                            (1, b as usize)
                        } else {
                            (0, a as usize)
                        };
                        seen[src][(addr - base) / 64] += 1;
                    }
                }
                let sources = if at[0] == at[1] || runs == 1 { 1 } else { 2 };
                for (src, s) in seen.iter().enumerate().take(sources) {
                    assert!(
                        s.iter().all(|&n| n == 1),
                        "{lines} lines, {runs} runs, source {src}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_f32_matmul_matches_naive() {
        if Kernels::choose(Precision::F32).f32 != F32Kernel::Avx512 {
            return;
        }
        // k over two or more blocks (either KC), n over two panels with a partial one, m over a partial row tile.
        let (m, k, n) = (13, KC_LARGE_L2 + 41, 150);
        let (x, w, bias) = crate::kernels::test_support::test_operands(m, k, n);
        let pw = PackedWeight::new(&w, n, k);
        let mut got = vec![1.0f32; m * n];
        matmul(&x, &pw, Some(&bias), &mut got, true, None, None);
        // With the activation fused: ReLU of the plain sum (no residual).
        let mut relu = vec![f32::NAN; m * n];
        matmul(
            &x,
            &pw,
            Some(&bias),
            &mut relu,
            false,
            Some(Act::Relu),
            Some(&pw),
        );
        for r in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>();
                let want = 1.0 + exact + bias[c] as f64;
                let g = got[r * n + c] as f64;
                assert!((g - want).abs() < 1e-3, "[{r},{c}] {g} vs {want}");
                let want = (exact + bias[c] as f64).max(0.0);
                let g = relu[r * n + c] as f64;
                assert!((g - want).abs() < 1e-3, "relu [{r},{c}] {g} vs {want}");
            }
        }
    }
}
