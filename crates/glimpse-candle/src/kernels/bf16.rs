//! bf16 linear layers: weights rounded to bf16 once at load time, activations rounded per call,
//! products accumulated in f32 with AVX-512 BF16 (`vdpbf16ps`: 32 bf16 multiply-adds into 16 f32
//! lanes per instruction, 2× an f32 FMA). Same panel layout and tiling as [`crate::int8`], with
//! pairs of `k` instead of quads; the bias and residual are added in the epilogue.

use rayon::prelude::*;

use crate::kernels::{Act, Bf16Kernel};

const PANEL: usize = 64;
pub(crate) const MR: usize = 6;
/// Most rows per cache block (see [`crate::kernels::schedule::row_blocks`]).
const MB: usize = 128;
/// `k` is padded (with zero weights) to whole AMX tile steps: 32 bf16.
const K_ALIGN: usize = crate::kernels::amx::K_BYTES / 2;

/// Round to nearest even (finite inputs; weights and activations here are finite).
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16 value, as an f32.
pub(crate) fn round(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// `[k, n]` in panel order: per 64-column panel, per pair of `k`, 64 columns × 2 bf16 (the
/// AMX B-tile order too). `k` is padded to [`K_ALIGN`].
#[derive(Debug, Clone)]
pub(crate) struct Bf16Weight {
    n: usize,
    kp: usize,
    np: usize,
    data: crate::kernels::aligned::Aligned<u16>,
}

impl Bf16Weight {
    /// `w` is `[n, k]` row-major.
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let (kp, np) = (k.div_ceil(K_ALIGN) * K_ALIGN, n.div_ceil(PANEL) * PANEL);
        let mut data = crate::kernels::aligned::Aligned::zeroed(np * kp);
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
    pub(crate) fn round_row(x: &[f32], q: &mut [u16]) {
        for (q, &x) in q.iter_mut().zip(x) {
            *q = to_bf16(x);
        }
    }
}

crate::kernels::multiversion! {
    /// Two f32 rows to one row of bf16 pairs: `out[i] = bf16(lo[i]) | bf16(hi[i]) << 16`.
    pub(crate) fn interleave_pairs(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
            *o = to_bf16(a) as u32 | (to_bf16(b) as u32) << 16;
        }
    }
}

/// `dst[m×n] (+)= x·W + bias`, then `act` on the result, on `kernel` (chosen at load, see
/// [`crate::kernels::Kernels`]): the activation in the AMX tiles' epilogue, a separate pass after
/// the others.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    x: &[f32],
    k: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
    act: Option<Act>,
    kernel: Bf16Kernel,
) {
    if kernel == Bf16Kernel::Amx {
        return matmul_on(x, k, w, bias, dst, accumulate, act, kernel);
    }
    matmul_on(x, k, w, bias, dst, accumulate, None, kernel);
    if let Some(a) = act {
        crate::kernels::activate(a, &mut dst[..x.len() / k * w.n]);
    }
}

/// [`matmul`] with `act` applied in the AMX epilogue only.
#[allow(clippy::too_many_arguments)]
fn matmul_on(
    x: &[f32],
    k: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    dst: &mut [f32],
    accumulate: bool,
    act: Option<Act>,
    kernel: Bf16Kernel,
) {
    let amx = kernel == Bf16Kernel::Amx;
    assert!(act.is_none() || (amx && !accumulate));
    let (m, kp) = (x.len() / k, w.kp);
    // AMX reads whole 32-row blocks: the rows past `m` are zeros whose results are dropped.
    let rows = if amx {
        m.next_multiple_of(crate::kernels::amx::ROWS)
    } else {
        m
    };
    let mut a = vec![0u16; rows * kp];
    a.par_chunks_mut(kp)
        .zip(x.par_chunks(k))
        .for_each(|(q, x)| round_row(x, &mut q[..k]));
    let out = crate::kernels::schedule::SharedOut::new(dst);
    if amx {
        crate::kernels::schedule::par_tiles(
            m,
            MB,
            crate::kernels::amx::ROWS,
            w.np / PANEL,
            |rows, p| {
                // SAFETY: `kernel` is `Amx` only where `amx::available()` (tile state granted,
                // AVX-512 present); blocks of 32 rows of `a` exist (padded above), the panel is
                // `kp / 2` pair rows of 256 bytes, and `kp · 2` is whole 64-byte steps. Each task
                // writes its own rows × panel of `dst`.
                unsafe { amx_tile(&a, w, bias, out, accumulate, act, rows, p) }
            },
        );
        return;
    }
    let fast = kernel == Bf16Kernel::Avx512Bf16;
    crate::kernels::schedule::par_tiles(m, MB, MR, w.np / PANEL, |rows, p| {
        let c0 = p * PANEL;
        let live = (w.n - c0).min(PANEL);
        for (r, h) in crate::kernels::schedule::row_tiles(rows, MR) {
            let t = Tile {
                a: a[r * kp..].as_ptr(),
                lda: kp,
                b: w.data[p * PANEL * kp..].as_ptr(),
                ldb: PANEL * 2,
                pairs: kp / 2,
                c: out.at(r * w.n + c0),
                ldc: w.n,
                live,
                bias: bias.map(|b| b[c0..].as_ptr()),
                add_dst: accumulate,
            };
            // SAFETY: rows `r..r + h` of `a` (rows of `kp`) and `dst`, and the panel's `kp / 2`
            // pair rows, are in range (`par_tiles` stays below `m` and the panel count); the
            // AVX-512 BF16 tile runs only when `kernel` says the CPU has it. Each task writes
            // its own rows × panel of `dst`.
            unsafe {
                if fast {
                    t.run_rows(h);
                } else {
                    t.portable(h);
                }
            }
        }
    });
}

/// Rows `rows` × panel `p` of the linear layer with AMX tiles ([`amx_panel`]).
///
/// # Safety
/// [`crate::kernels::amx::available`]; `a` holds `rows.end` rounded up to 32 rows of `w.kp`.
#[allow(clippy::too_many_arguments)]
unsafe fn amx_tile(
    a: &[u16],
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    out: crate::kernels::schedule::SharedOut,
    accumulate: bool,
    act: Option<Act>,
    rows: std::ops::Range<usize>,
    p: usize,
) {
    let (kp, n, c0) = (w.kp, w.n, p * PANEL);
    amx_panel(
        a.as_ptr().add(rows.start * kp),
        kp,
        kp,
        w.data.as_ptr().add(c0 * kp),
        rows.len(),
        (n - c0).min(PANEL),
        out.at(rows.start * n + c0),
        n,
        bias.map(|b| b[c0..].as_ptr()),
        accumulate,
        act,
    )
}

/// One 64-column panel with AMX tiles: `c[i·ldc + j] = (c[i·ldc + j] if add_dst) + bias[j] +
/// Σ_kk a[i·lda + kk] · B[kk][j]` for `i < m`, `j < live`, then `act` over those columns. `b` is
/// the panel in pair rows of 64 columns (256 bytes), `kp` (a multiple of 32) `k` deep. Per 32-row
/// block and 32-column half, one [`crate::kernels::amx::Block`] over all of `kp`.
///
/// # Safety
/// [`crate::kernels::amx::available`]; `a` holds `m` rounded up to 32 rows of `kp` values at stride
/// `lda`; `b` holds `kp / 2` pair rows; `c` (and `bias`) hold `m` rows of `live` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn amx_panel(
    a: *const u16,
    lda: usize,
    kp: usize,
    b: *const u16,
    m: usize,
    live: usize,
    c: *mut f32,
    ldc: usize,
    bias: Option<*const f32>,
    add_dst: bool,
    act: Option<Act>,
) {
    use crate::kernels::amx::{Block, Op, Tiles, ROWS};
    use std::arch::x86_64::*;
    let _tiles = Tiles::configure();
    let mut acc = [[0u32; 256]; 4];
    for r in (0..m).step_by(ROWS) {
        let h = (m - r).min(ROWS);
        for half in 0..live.div_ceil(32) {
            let c0 = half * 32;
            Block {
                a: a.add(r * lda) as *const u8,
                lda: lda * 2,
                b: b.add(half * 64) as *const u8,
                steps: kp * 2 / crate::kernels::amx::K_BYTES,
            }
            .run(Op::Bf16, &mut acc);
            for i in 0..h {
                let t = (i / 16) * 2;
                let row = [[
                    _mm512_loadu_ps(acc[t][(i % 16) * 16..].as_ptr() as *const f32),
                    _mm512_loadu_ps(acc[t + 1][(i % 16) * 16..].as_ptr() as *const f32),
                ]];
                crate::kernels::f32::store_rows(
                    &row,
                    c.add((r + i) * ldc + c0),
                    ldc,
                    (live - c0).min(32),
                    bias.map(|b| b.add(c0)),
                    add_dst,
                );
            }
        }
        // Over the panel's 64 columns at once (32-wide slices ran ~20 % slower per element).
        if let Some(f) = act {
            crate::kernels::activate_tile(f, c.add(r * ldc), ldc, h, live);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn amx_panel(
    _: *const u16,
    _: usize,
    _: usize,
    _: *const u16,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: Option<*const f32>,
    _: bool,
    _: Option<Act>,
) {
    unreachable!("AMX is x86-64 only")
}

/// Whether this CPU's `vdpbf16ps` beats its f32 FMAs, timed on the two tiles themselves
/// ([`race_tiles`], ~1 ms), once per process by [`crate::kernels::Kernels`]. Having the
/// instruction is not enough: on an Intel Xeon without AMX (Emerald Rapids under KVM, 2026-12-03)
/// one issues every ~2 cycles against two FMAs per cycle, so the bf16 tile does half the f32
/// tile's work per second and CLIP B/32 bf16 ran at 0.7× fp32; on AMD Zen 4 the same tile is
/// ~1.8× fp32.
pub(crate) fn dot_pays() -> bool {
    let (f32_ns, bf16_ns) = race_tiles();
    let pays = bf16_wins(f32_ns, bf16_ns);
    tracing::debug!(f32_ns, bf16_ns, pays, "bf16 dot product vs f32 FMA");
    pays
}

/// The bf16 tile pays when it does the same multiply-adds in less time than the f32 tile (it also
/// reads half the weight bytes, but rounds every activation first, so no margin either way).
fn bf16_wins(f32_ns: u64, bf16_ns: u64) -> bool {
    bf16_ns < f32_ns
}

/// Nanoseconds of the f32 and the AVX-512 BF16 register tile (6 rows × 64 columns × 128 `k`,
/// operands in L1) for the same multiply-adds, best of 5 alternating rounds of 64 tiles (a
/// preempted round only ever reads slower). Both `u64::MAX` where either kernel is missing.
fn race_tiles() -> (u64, u64) {
    if !(has_bf16() && crate::kernels::isa() == crate::kernels::Isa::Avx512) {
        return (u64::MAX, u64::MAX);
    }
    const K: usize = 128;
    const REPS: usize = 64;
    let a32: Vec<f32> = (0..MR * K).map(|i| (i % 7) as f32 * 0.25).collect();
    let b32: Vec<f32> = (0..K * PANEL).map(|i| (i % 5) as f32 * 0.5).collect();
    let a16: Vec<u16> = a32.iter().map(|&x| to_bf16(x)).collect();
    let b16: Vec<u16> = b32.iter().map(|&x| to_bf16(x)).collect();
    let mut c = vec![0f32; MR * PANEL];
    let wide = crate::kernels::f32::Tile {
        a: a32.as_ptr(),
        lda: K,
        b: b32.as_ptr(),
        ldb: PANEL,
        k: K,
        c: c.as_mut_ptr(),
        ldc: PANEL,
        live: PANEL,
        bias: None,
        add_dst: true,
        prefetch: crate::kernels::f32::Prefetch::NONE,
    };
    let pairs = Tile {
        a: a16.as_ptr(),
        lda: K,
        b: b16.as_ptr(),
        ldb: PANEL * 2,
        pairs: K / 2,
        c: c.as_mut_ptr(),
        ldc: PANEL,
        live: PANEL,
        bias: None,
        add_dst: true,
    };
    let (mut best32, mut best16) = (u64::MAX, u64::MAX);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..REPS {
            // SAFETY: AVX-512 checked at the top; `a32` and `c` hold MR rows, `b32` K rows of 64.
            unsafe { wide.run_rows(MR) };
        }
        best32 = best32.min(t.elapsed().as_nanos() as u64);
        let t = std::time::Instant::now();
        for _ in 0..REPS {
            // SAFETY: AVX-512 BF16 checked at the top; `a16` and `c` hold MR rows, `b16` K / 2
            // pair rows of 64 columns.
            unsafe { pairs.run_rows(MR) };
        }
        best16 = best16.min(t.elapsed().as_nanos() as u64);
    }
    std::hint::black_box(&c);
    (best32, best16)
}

pub(crate) fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One register tile of at most [`MR`] rows × 64 columns over bf16 pairs:
/// `c[i·ldc + j] = (c[i·ldc + j] if add_dst) + bias[j] + Σ_kk a[i·lda + kk] · B[kk][j]` for
/// `j < live`, with `B[kk][j]` at `b[(kk / 2)·ldb + 2j + kk % 2]` (the panel layout) and `kk` over
/// `2·pairs`. All 64 columns of `b` are read; only `live` are stored.
pub(crate) struct Tile {
    pub a: *const u16,
    pub lda: usize,
    pub b: *const u16,
    pub ldb: usize,
    pub pairs: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub live: usize,
    pub bias: Option<*const f32>,
    pub add_dst: bool,
}

impl Tile {
    /// Scalar path for CPUs without AVX-512 BF16.
    unsafe fn portable(&self, h: usize) {
        for i in 0..h {
            for j in 0..self.live {
                let mut acc = 0f32;
                for kk in 0..2 * self.pairs {
                    let b = *self.b.add((kk / 2) * self.ldb + j * 2 + kk % 2);
                    acc += from_bf16(*self.a.add(i * self.lda + kk)) * from_bf16(b);
                }
                let v = acc + self.bias.map_or(0.0, |b| *b.add(j));
                let d = self.c.add(i * self.ldc + j);
                *d = if self.add_dst { *d + v } else { v };
            }
        }
    }

    /// # Safety
    /// AVX-512 BF16 present; `h ≤ MR` rows of `a` and `c` and `pairs` pair-rows of `b` in bounds.
    #[inline]
    pub(crate) unsafe fn run_rows(&self, h: usize) {
        match h {
            6 => self.avx512::<6>(),
            5 => self.avx512::<5>(),
            4 => self.avx512::<4>(),
            3 => self.avx512::<3>(),
            2 => self.avx512::<2>(),
            _ => self.avx512::<1>(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn avx512<const H: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for kk in 0..self.pairs {
            let w = self.b.add(kk * self.ldb);
            let wv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(32) as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(64) as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(96) as *const _)),
            ];
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = (self.a.add(i * self.lda + kk * 2) as *const i32).read_unaligned();
                let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for j in 0..4 {
                    row[j] = _mm512_dpbf16_ps(row[j], a, wv[j]);
                }
            }
        }
        crate::kernels::f32::store_rows(&acc, self.c, self.ldc, self.live, self.bias, self.add_dst);
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn avx512<const H: usize>(&self) {
        self.portable(H)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;
    use crate::Precision;

    #[test]
    fn dot_pays_only_when_the_bf16_tile_wins_the_race() {
        assert!(bf16_wins(1000, 550), "Zen 4: bf16 tile ~1.8x the f32 one");
        assert!(!bf16_wins(1000, 2200), "Xeon without AMX: ~0.45x");
        assert!(!bf16_wins(u64::MAX, u64::MAX), "no kernel to race");
        let chosen = Kernels::choose(Precision::Bf16);
        let (f32_ns, bf16_ns) = race_tiles();
        let raced = has_bf16() && crate::kernels::isa() == crate::kernels::Isa::Avx512;
        assert_eq!(f32_ns != u64::MAX, raced);
        assert_eq!(bf16_ns != u64::MAX, raced);
        assert!(f32_ns > 0 && bf16_ns > 0);
        if raced {
            eprintln!("64 tiles: f32 {f32_ns} ns, bf16 {bf16_ns} ns");
            // The race made when the kernels were chosen can land on the other side only when
            // the two tiles are close.
            let ratio = bf16_ns as f64 / f32_ns as f64;
            if chosen.bf16 != Bf16Kernel::Amx && !(0.8..1.25).contains(&ratio) {
                let wins = bf16_wins(f32_ns, bf16_ns);
                assert_eq!(chosen.bf16_native, wins, "ratio {ratio:.2}");
            }
        }
        // AMX always keeps bf16 weights; without AVX-512 BF16 (and AMX) they are always widened.
        if chosen.bf16 == Bf16Kernel::Amx {
            assert!(chosen.bf16_native);
        }
        if chosen.bf16 == Bf16Kernel::Scalar {
            assert!(!chosen.bf16_native && !chosen.bf16_attention);
        }
    }

    #[test]
    fn bf16_matmul_tracks_f32() {
        let (m, k, n) = (13, 41, 150);
        let (x, w, bias) = crate::kernels::test_support::test_operands(m, k, n);
        let bw = Bf16Weight::new(&w, n, k);
        let mut got = vec![1.0f32; m * n];
        let kernel = Kernels::choose(Precision::Bf16).bf16;
        matmul(&x, k, &bw, Some(&bias), &mut got, true, None, kernel);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
                let want = 1.0 + exact + bias[c];
                let g = got[r * n + c];
                assert!((g - want).abs() < 0.05, "[{r},{c}] {g} vs {want}");
            }
        }
        if kernel == Bf16Kernel::Amx && has_bf16() {
            // AMX and AVX-512 BF16 multiply the same bf16 values; only the f32 summation order
            // differs.
            for accumulate in [false, true] {
                for (m, k, n) in [(m, k, n), (70, 200, 64), (33, 768, 100)] {
                    let (x, w, _) = crate::kernels::test_support::test_operands(m, k, n);
                    let bw = Bf16Weight::new(&w, n, k);
                    let mut tiles = vec![0.5f32; m * n];
                    let mut avx = tiles.clone();
                    let b = Some(&bias[..n]);
                    matmul_on(&x, k, &bw, b, &mut tiles, accumulate, None, Bf16Kernel::Amx);
                    let avx512 = Bf16Kernel::Avx512Bf16;
                    matmul_on(&x, k, &bw, b, &mut avx, accumulate, None, avx512);
                    for (t, a) in tiles.iter().zip(&avx) {
                        assert!(
                            (t - a).abs() <= 1e-4 * a.abs().max(1.0),
                            "{t} vs {a} ({m}×{k}×{n})"
                        );
                    }
                }
            }
        } else {
            eprintln!("no AMX here: the AVX-512 path only");
        }
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }
}
