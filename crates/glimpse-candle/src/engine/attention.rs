//! softmax(Q·Kᵀ)·V per (image, head), straight out of the fused `[t, 3h]` QKV buffer: with gemm
//! for any head size, and with the f32 or bf16 register tiles for 64-wide heads.

use rayon::prelude::*;

use crate::kernels::bf16;
use crate::kernels::f32 as f32k;
use crate::kernels::schedule::{per_thread, row_tiles, SharedOut};
use crate::kernels::{self, Bf16Kernel, F32Kernel, Kernels, Mat};
use crate::Precision;

/// The attention kernel a block runs, chosen once when it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionKernel {
    /// Any head size, with gemm ([`attention_gemm`]).
    Gemm,
    /// [`AttentionKernel::Gemm`] with a causal mask: token `i` attends to tokens `0..=i` only
    /// (CLIP's text tower).
    GemmCausal,
    /// 64-wide heads on the f32 AVX-512 register tile ([`attention_d64`]).
    F32Tile,
    /// 64-wide heads with bf16 products: on AMX tiles where `amx` ([`attention_bf16_amx`]), else
    /// AVX-512 BF16.
    Bf16Tile { amx: bool },
}

impl AttentionKernel {
    /// What `kernels` runs for heads of `head_dim`: bf16 products in the reduced modes where the
    /// CPU multiplies bf16 fast, the f32 tile for 64-wide heads on AVX-512, gemm otherwise.
    pub(crate) fn choose(kernels: Kernels, head_dim: usize) -> Self {
        if head_dim != f32k::PANEL {
            AttentionKernel::Gemm
        } else if kernels.precision != Precision::F32 && kernels.bf16_attention {
            AttentionKernel::Bf16Tile {
                amx: kernels.bf16 == Bf16Kernel::Amx,
            }
        } else if kernels.f32 == F32Kernel::Avx512 {
            AttentionKernel::F32Tile
        } else {
            AttentionKernel::Gemm
        }
    }

    /// Whether this kernel reads Q, K and V as bf16 rows ([`attention_bf16_rows`]): the bf16
    /// tile off AMX, where the QKV layer's epilogue can round them ([`AttentionKernel::run`]
    /// rounds the f32 QKV itself otherwise).
    pub(crate) fn reads_bf16(self) -> bool {
        self == AttentionKernel::Bf16Tile { amx: false }
    }

    /// softmax(Q·Kᵀ)·V per (image, head), straight out of the fused `[t, 3h]` buffer into
    /// `out` `[t, h]` (heads side by side, the layout the output projection reads).
    pub(crate) fn run(
        self,
        qkv: &[f32],
        out: &mut [f32],
        batch: usize,
        seq: usize,
        h: usize,
        heads: usize,
    ) {
        match self {
            AttentionKernel::Gemm => attention_gemm(qkv, out, batch, seq, h, heads, false, None),
            AttentionKernel::GemmCausal => {
                attention_gemm(qkv, out, batch, seq, h, heads, true, None)
            }
            AttentionKernel::F32Tile => attention_d64(qkv, out, batch, seq, h, heads),
            AttentionKernel::Bf16Tile { amx: true } => {
                attention_bf16_amx(qkv, out, batch, seq, h, heads)
            }
            AttentionKernel::Bf16Tile { amx: false } => {
                // One parallel pass rounds the whole QKV (a call per head and token cost more).
                let rounded = bf16::round_rows(&qkv[..batch * seq * 3 * h], 3 * h);
                let (rows, ld) = rounded.rows().expect("round_rows is row-major");
                attention_bf16_rows(rows, ld, out, batch, seq, h, heads)
            }
        }
    }

    /// [`AttentionKernel::run`] with a key mask: `keep[b·seq + j]` false means no token of
    /// sequence `b` attends to token `j` (SigLIP's text padding, where its tokenizer asks for
    /// a mask). transformers adds `f32::MIN` to those scores; so does this. Masked passes run
    /// on gemm in f32 whichever kernel was chosen (they are rare: the real checkpoints'
    /// tokenizers give no mask); a causal kernel stays causal.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_masked(
        self,
        qkv: &[f32],
        out: &mut [f32],
        batch: usize,
        seq: usize,
        h: usize,
        heads: usize,
        keep: &[bool],
    ) {
        let causal = self == AttentionKernel::GemmCausal;
        attention_gemm(qkv, out, batch, seq, h, heads, causal, Some(keep));
    }
}

/// Attention for any head size, with gemm. `causal`: scores above the diagonal are masked out
/// before the softmax (to -inf, which its exp clamps to e^-87: a weight of 1.6e-38, as
/// transformers' additive `f32::MIN` mask gives 0). `keep`: per sequence and key, whether it is
/// attended to (`f32::MIN` added to the others' scores, as transformers' bidirectional mask).
#[allow(clippy::too_many_arguments)]
fn attention_gemm(
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    seq: usize,
    h: usize,
    heads: usize,
    causal: bool,
    keep: Option<&[bool]>,
) {
    let d = h / heads;
    assert!(qkv.len() >= batch * seq * 3 * h && out.len() >= batch * seq * h);
    assert!(keep.is_none_or(|k| k.len() == batch * seq));
    let dst = SharedOut::new(out);
    let src = qkv.as_ptr() as usize;
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(per_thread(
            [seq, d, 0],
            || vec![0f32; seq * seq],
            |scores, task| {
                let (b, hd) = (task / heads, task % heads);
                let base = (src as *const f32).wrapping_add(b * seq * 3 * h + hd * d);
                let row = 3 * h as isize;
                let q = Mat {
                    ptr: base,
                    rs: row,
                    cs: 1,
                };
                // Kᵀ: element (j, i) is K[i][j].
                let kt = Mat {
                    ptr: base.wrapping_add(h),
                    rs: 1,
                    cs: row,
                };
                let v = Mat {
                    ptr: base.wrapping_add(2 * h),
                    rs: row,
                    cs: 1,
                };
                // SAFETY: the asserts above guarantee `batch·seq` rows of qkv (stride 3h) and of
                // out (stride h). Q, Kᵀ and V are this (image, head)'s `seq` × `d` views inside
                // those rows; `scores` is this task's own `seq × seq` buffer; the output view is
                // this image's rows in this head's `d` columns, which no other task writes.
                unsafe {
                    kernels::gemm(seq, seq, d, scores.as_mut_ptr(), seq, false, q, kt, false);
                    if causal {
                        for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                            row[i + 1..].fill(f32::NEG_INFINITY);
                        }
                    }
                    if let Some(keep) = keep {
                        let keep = &keep[b * seq..(b + 1) * seq];
                        for row in scores.chunks_exact_mut(seq) {
                            for (s, _) in row.iter_mut().zip(keep).filter(|(_, &k)| !k) {
                                *s += f32::MIN;
                            }
                        }
                    }
                    kernels::softmax_rows(scores, seq);
                    let p = Mat {
                        ptr: scores.as_ptr(),
                        rs: seq as isize,
                        cs: 1,
                    };
                    let o = dst.at(b * seq * h + hd * d);
                    kernels::gemm(seq, d, seq, o, h, false, p, v, false);
                }
            },
        ));
}

/// Attention for 64-wide heads on AVX-512, with the f32 matmul's register tile: per
/// (image, head), Kᵀ is packed into 64-column panels (zero-padded), Q·Kᵀ and P·V run as tiles of
/// 6 rows × 64 columns; V is copied out contiguous (read in place at its row stride of 3h, its
/// rows fall on few L1 sets and evict each other).
fn attention_d64(qkv: &[f32], out: &mut [f32], batch: usize, seq: usize, h: usize, heads: usize) {
    const D: usize = f32k::PANEL;
    let panels = seq.div_ceil(D);
    let dst = SharedOut::new(out);
    let src = qkv.as_ptr() as usize;
    let row = 3 * h;
    assert!(qkv.len() >= batch * seq * row && out.len() >= batch * seq * h);
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(per_thread(
            [seq, 0, 0],
            || {
                (
                    vec![0f32; seq * seq],
                    vec![0f32; panels * D * D],
                    vec![0f32; seq * D],
                )
            },
            |(scores, kt, vp), task| {
                let (b, hd) = (task / heads, task % heads);
                let base = (src as *const f32).wrapping_add(b * seq * row + hd * D);
                // SAFETY: every read stays inside this image's `seq` rows of qkv (row stride 3h,
                // asserted above; the head's 64 columns of Q, K or V); every write inside this
                // image's rows of `out` in the head's 64 columns (no other task's) or the task's
                // own buffers. The f32 tile needs AVX-512: this kernel is chosen only where
                // `Kernels::f32` is `Avx512` (`AttentionKernel::choose`).
                unsafe {
                    for t in 0..seq {
                        let vrow = std::slice::from_raw_parts(base.add(t * row + 2 * h), D);
                        vp[t * D..(t + 1) * D].copy_from_slice(vrow);
                        let krow = base.add(t * row + h);
                        let (p, j) = (t / D, t % D);
                        for kk in 0..D {
                            kt[p * D * D + kk * D + j] = *krow.add(kk);
                        }
                    }
                    for p in 0..panels {
                        let live = (seq - p * D).min(D);
                        for (r, rows) in row_tiles(0..seq, f32k::MR) {
                            f32k::Tile {
                                a: base.add(r * row),
                                lda: row,
                                b: kt.as_ptr().add(p * D * D),
                                ldb: D,
                                k: D,
                                c: scores.as_mut_ptr().add(r * seq + p * D),
                                ldc: seq,
                                live,
                                bias: None,
                                add_dst: false,
                                prefetch: f32k::Prefetch::NONE,
                            }
                            .run_rows(rows);
                        }
                    }
                    kernels::softmax_rows(scores, seq);
                    let o = dst.at(b * seq * h + hd * D);
                    for (r, rows) in row_tiles(0..seq, f32k::MR) {
                        f32k::Tile {
                            a: scores.as_ptr().add(r * seq),
                            lda: seq,
                            b: vp.as_ptr(),
                            ldb: D,
                            k: seq,
                            c: o.add(r * h),
                            ldc: h,
                            live: D,
                            bias: None,
                            add_dst: false,
                            prefetch: f32k::Prefetch::NONE,
                        }
                        .run_rows(rows);
                    }
                }
            },
        ));
}

/// [`attention_d64`] with bf16 products (f32 sums and softmax) on AMX tiles, for the
/// reduced-precision modes: Q, Kᵀ, the probabilities and V are rounded to bf16 in the pair
/// layout of [`bf16::amx_panel`].
fn attention_bf16_amx(
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    seq: usize,
    h: usize,
    heads: usize,
) {
    const D: usize = f32k::PANEL;
    let panels = seq.div_ceil(D);
    // Q and P padded to whole 32-row blocks, the sequence as a `k` to whole 32-value tile
    // steps ([`bf16::amx_panel`]). The padding stays zero.
    let rows = seq.next_multiple_of(32);
    let sp = rows;
    let row = 3 * h;
    assert!(qkv.len() >= batch * seq * row && out.len() >= batch * seq * h);
    let dst = SharedOut::new(out);
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(per_thread(
            [seq, rows, sp],
            || Bf16Scratch::new(rows, rows, seq, sp),
            |s, task| {
                let (b, hd) = (task / heads, task % heads);
                let base = b * seq * row + hd * D;
                let zeros = [0f32; D];
                let mut krow = [0u16; D];
                for t in 0..seq {
                    let r = &qkv[base + t * row..];
                    bf16::round_row(&r[..D], &mut s.q[t * D..(t + 1) * D]);
                    // Kᵀ: token t is column t % 64 of panel t / 64; one u32 holds the pair (kk, kk+1).
                    bf16::round_row(&r[h..h + D], &mut krow);
                    let (p, j) = (t / D, t % D);
                    for kk2 in 0..D / 2 {
                        s.kt[p * D * D / 2 + kk2 * D + j] =
                            krow[2 * kk2] as u32 | (krow[2 * kk2 + 1] as u32) << 16;
                    }
                    // V: tokens t and t+1 pair up in every column.
                    if t % 2 == 0 {
                        let next = if t + 1 < seq {
                            &qkv[base + (t + 1) * row + 2 * h..][..D]
                        } else {
                            &zeros[..]
                        };
                        bf16::interleave_pairs(
                            &r[2 * h..2 * h + D],
                            next,
                            &mut s.v[(t / 2) * D..][..D],
                        );
                    }
                }
                // SAFETY: the tiles read the task's own buffers in bounds (Kᵀ panels are whole,
                // zero-padded; Q and P hold `rows` rows, whole 32-row blocks; P rows and V hold
                // `sp` entries, whole tile steps) and write `scores` or this image's rows of
                // `out` in the head's 64 columns (no other task's). The CPU features:
                // `AttentionKernel::choose` picks this kernel only where `Kernels::bf16` is
                // `Amx`.
                unsafe {
                    let kt = s.kt.as_ptr() as *const u16;
                    for p in 0..panels {
                        let (c, live) = (s.scores.as_mut_ptr().add(p * D), (seq - p * D).min(D));
                        let to = bf16::PanelOut::F32 {
                            c,
                            ldc: seq,
                            add_dst: false,
                        };
                        bf16::amx_panel(
                            s.q.as_ptr(),
                            false,
                            D,
                            D,
                            kt.add(p * D * D),
                            seq,
                            live,
                            to,
                            None,
                            None,
                        );
                    }
                    kernels::softmax_rows_bf16(&mut s.scores, seq, &mut s.p, sp);
                    let o = dst.at(b * seq * h + hd * D);
                    let v = s.v.as_ptr() as *const u16;
                    let to = bf16::PanelOut::F32 {
                        c: o,
                        ldc: h,
                        add_dst: false,
                    };
                    bf16::amx_panel(s.p.as_ptr(), false, sp, sp, v, seq, D, to, None, None);
                }
            },
        ));
}

/// One (image, head) of the AVX-512 BF16 attention once its operands are bf16: Q (`seq` rows at
/// stride `lda`) times the Kᵀ panels into `scores`, the softmax rounded into `p` (rows of
/// `sp`), `p` times V (pairs of tokens) into `o` (`seq` rows of 64 at stride `ldo`).
///
/// # Safety
/// AVX-512 BF16; `q` holds `seq` rows of 64 at stride `lda`, `kt` whole 64 × 64 panels over
/// `seq`, `scores` `seq × seq`, `p` `seq` rows of `sp` (an even length ≥ `seq`, padding zero),
/// `v` `sp / 2` pair rows of 64; `o`'s rows are the caller's alone.
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_tiles(
    q: *const u16,
    lda: usize,
    kt: &[u32],
    scores: &mut [f32],
    p: &mut [u16],
    v: &[u32],
    seq: usize,
    o: *mut f32,
    ldo: usize,
) {
    const D: usize = f32k::PANEL;
    let sp = p.len() / seq;
    for panel in 0..seq.div_ceil(D) {
        for (r, rows) in row_tiles(0..seq, bf16::MR) {
            bf16::Tile {
                a: q.add(r * lda),
                lda,
                b: (kt.as_ptr() as *const u16).add(panel * D * D),
                ldb: 2 * D,
                pairs: D / 2,
                c: scores.as_mut_ptr().add(r * seq + panel * D),
                ldc: seq,
                live: (seq - panel * D).min(D),
                bias: None,
                add_dst: false,
            }
            .run_rows(rows);
        }
    }
    kernels::softmax_rows_bf16(scores, seq, p, sp);
    for (r, rows) in row_tiles(0..seq, bf16::MR) {
        bf16::Tile {
            a: p.as_ptr().add(r * sp),
            lda: sp,
            b: v.as_ptr() as *const u16,
            ldb: 2 * D,
            pairs: sp / 2,
            c: o.add(r * ldo),
            ldc: ldo,
            live: D,
            bias: None,
            add_dst: false,
        }
        .run_rows(rows);
    }
}

/// [`AttentionKernel::Bf16Tile`] off AMX on a QKV output already rounded to bf16: `qkv` holds
/// `batch·seq` rows of `3h` values at stride `ld` ([`crate::kernels::bf16::Rounded::rows`]).
/// Q is read in place; Kᵀ and V are regrouped into pairs ([`AttentionKernel::run`] rounds an f32
/// QKV into such rows first).
pub(crate) fn attention_bf16_rows(
    qkv: &[u16],
    ld: usize,
    out: &mut [f32],
    batch: usize,
    seq: usize,
    h: usize,
    heads: usize,
) {
    const D: usize = f32k::PANEL;
    assert!(
        bf16::has_bf16(),
        "the bf16 attention tile needs AVX-512 BF16"
    );
    assert_eq!(h, heads * D);
    assert!(ld >= 3 * h && qkv.len() >= batch * seq * ld && out.len() >= batch * seq * h);
    let sp = seq.div_ceil(2) * 2;
    let dst = SharedOut::new(out);
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(per_thread(
            // Not `attention_bf16_amx`'s shape key (its third entry is `sp`, never this): its
            // scratch holds a Q buffer, this one none.
            [seq, sp, usize::MAX],
            || Bf16Scratch::new(0, seq, seq, sp),
            |s, task| {
                let (b, hd) = (task / heads, task % heads);
                let base = b * seq * ld + hd * D;
                for t in 0..seq {
                    let k = &qkv[base + t * ld + h..][..D];
                    let (p, j) = (t / D, t % D);
                    for kk2 in 0..D / 2 {
                        s.kt[p * D * D / 2 + kk2 * D + j] =
                            k[2 * kk2] as u32 | (k[2 * kk2 + 1] as u32) << 16;
                    }
                }
                for t in (0..seq).step_by(2) {
                    let lo = &qkv[base + t * ld + 2 * h..][..D];
                    let pairs = &mut s.v[(t / 2) * D..][..D];
                    if t + 1 < seq {
                        let hi = &qkv[base + (t + 1) * ld + 2 * h..][..D];
                        for ((o, &a), &b) in pairs.iter_mut().zip(lo).zip(hi) {
                            *o = a as u32 | (b as u32) << 16;
                        }
                    } else {
                        for (o, &a) in pairs.iter_mut().zip(lo) {
                            *o = a as u32;
                        }
                    }
                }
                // SAFETY: AVX-512 BF16 is asserted above; Q is this (image, head)'s `seq` rows
                // of 64 inside `qkv` (asserted length, stride `ld`); the scratch is sized for
                // `seq` and `sp`, its padding never written (zero); `o` is this image's rows in
                // this head's 64 columns of `out`, which no other task writes.
                unsafe {
                    let o = dst.at(b * seq * h + hd * D);
                    bf16_tiles(
                        qkv.as_ptr().add(base),
                        ld,
                        &s.kt,
                        &mut s.scores,
                        &mut s.p,
                        &s.v,
                        seq,
                        o,
                        h,
                    );
                }
            },
        ));
}

/// The bf16 attention's per-thread buffers ([`attention_bf16_amx`], [`attention_bf16_rows`]).
struct Bf16Scratch {
    /// Q rounded (empty where Q is read in place from rounded rows).
    q: Vec<u16>,
    /// Kᵀ panels, bf16 pairs as u32.
    kt: Vec<u32>,
    scores: Vec<f32>,
    /// Probabilities, rows padded to an even length with zeros.
    p: Vec<u16>,
    /// V, bf16 pairs of tokens as u32.
    v: Vec<u32>,
}

impl Bf16Scratch {
    /// `q_rows` rows of Q (0: none), `p_rows` rows of P of `sp`, Kᵀ panels and scores for `seq`.
    fn new(q_rows: usize, p_rows: usize, seq: usize, sp: usize) -> Self {
        const D: usize = f32k::PANEL;
        Bf16Scratch {
            q: vec![0u16; q_rows * D],
            kt: vec![0u32; seq.div_ceil(D) * D * D / 2],
            scores: vec![0f32; seq * seq],
            p: vec![0u16; p_rows * sp],
            v: vec![0u32; sp / 2 * D],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention kernels this CPU can run besides gemm.
    fn tiles_here() -> Vec<(&'static str, AttentionKernel)> {
        let here = Kernels::choose(Precision::Bf16);
        let mut tiles = Vec::new();
        if here.f32 == F32Kernel::Avx512 {
            tiles.push(("f32 d64", AttentionKernel::F32Tile));
        }
        if crate::kernels::bf16::has_bf16() {
            let amx = here.bf16 == Bf16Kernel::Amx;
            tiles.push(("bf16 d64", AttentionKernel::Bf16Tile { amx }));
        }
        tiles
    }

    /// The AVX-512 attention (f32, and bf16 where the CPU has it) against the gemm one, with a
    /// sequence over two key panels (the second partial) and an odd length (the bf16 pad).
    #[test]
    fn attention_paths_agree() {
        let (batch, seq, heads) = (2, 77, 3);
        let h = heads * f32k::PANEL;
        let qkv: Vec<f32> = (0..batch * seq * 3 * h)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect();
        let mut want = vec![f32::NAN; batch * seq * h];
        attention_gemm(&qkv, &mut want, batch, seq, h, heads, false, None);
        assert!(want.iter().all(|x| x.is_finite()));
        for (name, kernel) in tiles_here() {
            let mut got = vec![f32::NAN; batch * seq * h];
            kernel.run(&qkv, &mut got, batch, seq, h, heads);
            let tol = if kernel == AttentionKernel::F32Tile {
                1e-5
            } else {
                2e-2
            };
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < tol, "{name} attention {g} vs {w}");
            }
        }
    }

    /// The bf16 tile on a QKV output its layer already rounded, element by element, in rows at
    /// a wider stride, gives exactly what the tile gives when it rounds the f32 QKV itself
    /// (`bf16::round_rows`, rows of 3h).
    #[test]
    fn attention_on_rounded_qkv_is_exact() {
        if !crate::kernels::bf16::has_bf16() {
            eprintln!("no AVX-512 BF16 here: no rounded-QKV attention");
            return;
        }
        let tile = AttentionKernel::Bf16Tile { amx: false };
        assert!(tile.reads_bf16() && !AttentionKernel::Bf16Tile { amx: true }.reads_bf16());
        for (batch, seq, heads) in [(2, 77, 3), (1, 64, 2), (3, 5, 1)] {
            let h = heads * f32k::PANEL;
            let qkv: Vec<f32> = (0..batch * seq * 3 * h)
                .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
                .collect();
            let mut want = vec![f32::NAN; batch * seq * h];
            tile.run(&qkv, &mut want, batch, seq, h, heads);
            let ld = 3 * h + 32;
            let mut rows = vec![0u16; batch * seq * ld];
            for (r, x) in rows.chunks_exact_mut(ld).zip(qkv.chunks_exact(3 * h)) {
                r.iter_mut()
                    .zip(x)
                    .for_each(|(r, &x)| *r = bf16::to_bf16(x));
            }
            let mut got = vec![f32::NAN; batch * seq * h];
            attention_bf16_rows(&rows, ld, &mut got, batch, seq, h, heads);
            assert!(got == want, "batch {batch} seq {seq} heads {heads}");
        }
    }

    /// The causal gemm path against a plain loop over keys `0..=i`: row `i` ignores every later
    /// token (changing them changes nothing before them).
    #[test]
    fn causal_attention_reads_only_earlier_tokens() {
        let (batch, seq, heads, d) = (2, 9, 2, 8);
        let h = heads * d;
        let qkv: Vec<f32> = (0..batch * seq * 3 * h)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect();
        let mut got = vec![f32::NAN; batch * seq * h];
        AttentionKernel::GemmCausal.run(&qkv, &mut got, batch, seq, h, heads);
        for b in 0..batch {
            for hd in 0..heads {
                for i in 0..seq {
                    let at = |t: usize, part: usize, k: usize| {
                        qkv[(b * seq + t) * 3 * h + part * h + hd * d + k]
                    };
                    let scores: Vec<f32> = (0..=i)
                        .map(|j| (0..d).map(|k| at(i, 0, k) * at(j, 1, k)).sum())
                        .collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let w: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = w.iter().sum();
                    for k in 0..d {
                        let want: f32 = (0..=i).map(|j| w[j] / z * at(j, 2, k)).sum();
                        let g = got[(b * seq + i) * h + hd * d + k];
                        assert!((g - want).abs() < 1e-5, "b{b} h{hd} t{i}: {g} vs {want}");
                    }
                }
            }
        }
        // Without the mask the answer differs (the test can fail).
        let mut full = vec![0f32; batch * seq * h];
        AttentionKernel::Gemm.run(&qkv, &mut full, batch, seq, h, heads);
        assert!(full.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    /// A key mask: each sequence's masked keys get no weight (as if they were not there), the
    /// others' rows are untouched, and masking nothing is the plain pass.
    #[test]
    fn masked_keys_get_no_weight() {
        let (batch, seq, heads, d) = (2, 9, 2, 8);
        let h = heads * d;
        let qkv: Vec<f32> = (0..batch * seq * 3 * h)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect();
        // Sequence 0 keeps its first 6 tokens, sequence 1 all but tokens 2 and 8.
        let keep: Vec<bool> = (0..batch * seq)
            .map(|r| match r / seq {
                0 => r % seq < 6,
                _ => r % seq != 2 && r % seq != 8,
            })
            .collect();
        let mut got = vec![f32::NAN; batch * seq * h];
        AttentionKernel::Gemm.run_masked(&qkv, &mut got, batch, seq, h, heads, &keep);
        for b in 0..batch {
            let kept: Vec<usize> = (0..seq).filter(|&j| keep[b * seq + j]).collect();
            for hd in 0..heads {
                for i in 0..seq {
                    let at = |t: usize, part: usize, k: usize| {
                        qkv[(b * seq + t) * 3 * h + part * h + hd * d + k]
                    };
                    let scores: Vec<f32> = kept
                        .iter()
                        .map(|&j| (0..d).map(|k| at(i, 0, k) * at(j, 1, k)).sum())
                        .collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let w: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = w.iter().sum();
                    for k in 0..d {
                        let want: f32 =
                            kept.iter().zip(&w).map(|(&j, w)| w / z * at(j, 2, k)).sum();
                        let g = got[(b * seq + i) * h + hd * d + k];
                        assert!((g - want).abs() < 1e-5, "b{b} h{hd} t{i}: {g} vs {want}");
                    }
                }
            }
        }
        let mut full = vec![0f32; batch * seq * h];
        AttentionKernel::Gemm.run(&qkv, &mut full, batch, seq, h, heads);
        assert!(full.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-3));
        let mut all = vec![0f32; batch * seq * h];
        let none_masked = vec![true; batch * seq];
        AttentionKernel::Gemm.run_masked(&qkv, &mut all, batch, seq, h, heads, &none_masked);
        assert_eq!(all, full);
    }

    /// Every attention path keeps its buffers per thread between calls
    /// ([`per_thread`]): a call after another of the same shape answers exactly what it
    /// answers on threads that never ran one (the zero padding is still zero).
    #[test]
    fn attention_scratch_is_clean_when_reused() {
        let (batch, seq, heads) = (2, 77, 3);
        let h = heads * f32k::PANEL;
        let input = |salt: usize| -> Vec<f32> {
            (0..batch * seq * 3 * h)
                .map(|i| (((i + salt) * 7919 % 1013) as f32 / 506.0) - 1.0)
                .collect()
        };
        let (first, second) = (input(0), input(517));
        let mut paths = vec![("gemm", AttentionKernel::Gemm)];
        paths.extend(tiles_here());
        let pool = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap()
        };
        for (name, path) in paths {
            let run = |qkv: &[f32]| {
                let mut out = vec![f32::NAN; batch * seq * h];
                path.run(qkv, &mut out, batch, seq, h, heads);
                out
            };
            let fresh = pool().install(|| run(&second));
            let reused = pool().install(|| {
                run(&first);
                run(&second)
            });
            assert!(fresh.iter().all(|x| x.is_finite()), "{name}");
            assert!(
                fresh
                    .iter()
                    .zip(&reused)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: a second call differs from a first"
            );
        }
    }
}
