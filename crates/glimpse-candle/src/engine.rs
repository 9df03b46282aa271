//! The image towers' forward pass on plain `[tokens, features]` f32 buffers.
//!
//! candle runs a pre-LN block as ~25 separate passes (three Q/K/V matmuls, head split transposes
//! with `contiguous()` copies, a scale, a softmax, a merge transpose, bias adds, a multi-op
//! activation, residual adds), most of them single-threaded. Here one block is: layer norm (one
//! pass), one fused QKV matmul with the bias pre-filled into its output, attention per
//! (image, head) reading Q/K/V in place with strides (softmax in place over contiguous rows, the
//! 1/√d scale folded into the Q weights), the output projection accumulated straight into the
//! residual stream, layer norm, fc1 + activation, fc2 accumulated into the residual stream.
//! The patch embedding is im2col + one matmul. Weights are re-laid out once at load time.

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use crate::bf16::{self, Bf16Weight};
use crate::f32mm::{self, PackedWeight};
use crate::int8::{self, QuantWeight};
use crate::kernels::{self, Act, Mat, SharedOut};
use crate::Precision;

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()
}

/// A linear layer `y = x·Wᵀ + b` in the chosen precision.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    k: usize,
    n: usize,
    bias: Option<Vec<f32>>,
    w: DenseWeight,
}

#[derive(Debug, Clone)]
enum DenseWeight {
    /// `[k, n]` row-major (Wᵀ), the layout gemm reads without a transpose.
    F32(Vec<f32>),
    /// Packed once for the AVX-512 kernel ([`crate::f32mm`]).
    F32Packed(PackedWeight),
    Int8(QuantWeight),
    Bf16(Bf16Weight),
}

impl Dense {
    /// `w` is `[n, k]` row-major, as PyTorch stores it.
    pub(crate) fn from_parts(
        w: Vec<f32>,
        n: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        precision: Precision,
    ) -> Self {
        let w = match precision {
            Precision::Int8 => DenseWeight::Int8(QuantWeight::new(&w, n, k)),
            Precision::Bf16 => Self::bf16_weight(w, n, k, bf16::native()),
            Precision::F32 => Self::f32_weight(&w, n, k),
        };
        Dense { k, n, bias, w }
    }

    fn f32_weight(w: &[f32], n: usize, k: usize) -> DenseWeight {
        if PackedWeight::available() {
            DenseWeight::F32Packed(PackedWeight::new(w, n, k))
        } else {
            Self::gemm_layout(w, n, k)
        }
    }

    /// bf16 weights. Without the CPU's bf16 dot product (`native` false) the rounded values are
    /// widened back to f32 and run on the f32 kernel: the scalar bf16 tile is ~60× slower than
    /// that (CLIP B/32 batch 1: 3.6 s vs 59 ms on a Cascade Lake Xeon), and an f32 FMA is what an
    /// emulated bf16 product would cost anyway.
    fn bf16_weight(mut w: Vec<f32>, n: usize, k: usize, native: bool) -> DenseWeight {
        if native {
            return DenseWeight::Bf16(Bf16Weight::new(&w, n, k));
        }
        for x in &mut w {
            *x = bf16::round(*x);
        }
        Self::f32_weight(&w, n, k)
    }

    /// Wᵀ for gemm (CPUs without AVX-512).
    fn gemm_layout(w: &[f32], n: usize, k: usize) -> DenseWeight {
        let mut t = vec![0f32; n * k];
        for (r, row) in w.chunks_exact(k).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                t[c * n + r] = x;
            }
        }
        DenseWeight::F32(t)
    }

    pub(crate) fn from_linear(l: &Linear, precision: Precision) -> Result<Self> {
        let (n, k) = l.weight().dims2()?;
        let bias = l.bias().map(vec1).transpose()?;
        Ok(Self::from_parts(vec1(l.weight())?, n, k, bias, precision))
    }

    /// Q, K and V as one `[3h, h]` layer, Q (weight and bias) pre-multiplied by `q_scale`.
    pub(crate) fn fused_qkv(
        q: &Linear,
        k: &Linear,
        v: &Linear,
        q_scale: f32,
        precision: Precision,
    ) -> Result<Self> {
        let (h, kin) = q.weight().dims2()?;
        let mut w = vec1(q.weight())?;
        w.iter_mut().for_each(|x| *x *= q_scale);
        w.extend(vec1(k.weight())?);
        w.extend(vec1(v.weight())?);
        let bias = match (q.bias(), k.bias(), v.bias()) {
            (Some(bq), Some(bk), Some(bv)) => {
                let mut b = vec1(bq)?;
                b.iter_mut().for_each(|x| *x *= q_scale);
                b.extend(vec1(bk)?);
                b.extend(vec1(bv)?);
                Some(b)
            }
            _ => None,
        };
        Ok(Self::from_parts(w, 3 * h, kin, bias, precision))
    }

    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// `dst[m×n] = x·Wᵀ + b`, or `dst += x·Wᵀ + b` when `accumulate` (the residual add).
    pub(crate) fn forward(&self, x: &[f32], dst: &mut [f32], accumulate: bool) {
        self.run(x, dst, accumulate, None, None)
    }

    /// [`Dense::forward`], then `act` (never with `accumulate`); `then` is the layer that runs
    /// next, whose first weights the packed f32 kernel fetches ahead.
    pub(crate) fn run(
        &self,
        x: &[f32],
        dst: &mut [f32],
        accumulate: bool,
        act: Option<kernels::Act>,
        then: Option<&Dense>,
    ) {
        let m = x.len() / self.k;
        debug_assert_eq!(dst.len(), m * self.n);
        match &self.w {
            DenseWeight::F32(w) => {
                kernels::fill_bias(dst, self.bias.as_deref(), self.n, accumulate);
                let a = Mat {
                    ptr: x.as_ptr(),
                    rs: self.k as isize,
                    cs: 1,
                };
                let b = Mat {
                    ptr: w.as_ptr(),
                    rs: self.n as isize,
                    cs: 1,
                };
                let read = accumulate || self.bias.is_some();
                // SAFETY: shapes checked above; x is [m, k], w is [k, n], dst is [m, n].
                unsafe {
                    kernels::gemm(
                        m,
                        self.n,
                        self.k,
                        dst.as_mut_ptr(),
                        self.n,
                        read,
                        a,
                        b,
                        true,
                    )
                }
            }
            DenseWeight::Int8(w) => {
                let q = int8::quantize_rows(x, self.k);
                return int8::matmul(&q, w, self.bias.as_deref(), dst, accumulate, act);
            }
            DenseWeight::F32Packed(w) => {
                let then = then.and_then(|d| match &d.w {
                    DenseWeight::F32Packed(w) => Some(w),
                    _ => None,
                });
                return f32mm::matmul(x, w, self.bias.as_deref(), dst, accumulate, act, then);
            }
            DenseWeight::Bf16(w) => {
                let b = self.bias.as_deref();
                return bf16::matmul(x, self.k, w, b, dst, accumulate, act);
            }
        }
        // gemm has no activation epilogue.
        if let Some(a) = act {
            kernels::activate(a, dst);
        }
    }
}

/// Layer-norm parameters.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub(crate) fn new(ln: &LayerNorm) -> Result<Self> {
        let w = vec1(ln.weight())?;
        let b = match ln.bias() {
            Some(b) => vec1(b)?,
            None => vec![0.0; w.len()],
        };
        Ok(Norm {
            w,
            b,
            eps: ln.eps() as f32,
        })
    }

    pub(crate) fn forward(&self, src: &[f32], dst: &mut [f32]) {
        kernels::layer_norm(src, dst, &self.w, &self.b, self.eps);
    }
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) ln1: Norm,
    pub(crate) qkv: Dense,
    pub(crate) o: Dense,
    pub(crate) ln2: Norm,
    pub(crate) fc1: Dense,
    pub(crate) act: Act,
    pub(crate) fc2: Dense,
    pub(crate) heads: usize,
    /// Q·Kᵀ and P·V in bf16 (the reduced-precision modes, on CPUs with AVX-512 BF16: AMX tiles
    /// where present, else `vdpbf16ps`).
    pub(crate) bf16_attention: bool,
}

impl Block {
    /// `xs`: `[batch·seq, h]`, updated in place.
    /// `next`: the block after this one (its first weights are fetched ahead).
    fn forward(&self, xs: &mut [f32], seq: usize, s: &mut Scratch, next: Option<&Block>) {
        self.attend(xs, seq, s);
        let mid = &mut s.mid[..xs.len() / self.ln1.w.len() * self.fc1.out_features()];
        self.finish(xs, &mut s.ln, mid, next);
    }

    /// This block for the class tokens only (rows `0, seq, 2·seq, …` of `xs`), as `[batch,
    /// hidden]`: what the last block owes a model that reads nothing else. Attention still
    /// reads every token; the output projection and the MLP (three quarters of the block's
    /// matmuls) run on `batch` rows instead of `batch·seq`. The rows come out as
    /// [`Block::forward`] computes them: each of those steps works row by row.
    fn forward_class_tokens(&self, xs: &[f32], seq: usize, s: &mut Scratch) -> Vec<f32> {
        let h = self.ln1.w.len();
        let batch = xs.len() / h / seq;
        let mut x = class_rows(xs, batch, seq, h);
        self.attend(xs, seq, s);
        let mut attn = class_rows(&s.ln, batch, seq, h);
        let mid = &mut s.mid[..batch * self.fc1.out_features()];
        self.finish(&mut x, &mut attn, mid, None);
        x
    }

    /// The attention half: `s.ln` = attention(ln1(xs)) for every row (before the output
    /// projection).
    fn attend(&self, xs: &[f32], seq: usize, s: &mut Scratch) {
        let h = self.ln1.w.len();
        let t = xs.len() / h;
        self.ln1.forward(xs, &mut s.ln);
        self.qkv.run(&s.ln, &mut s.qkv, false, None, Some(&self.o));
        self.attention(&s.qkv, &mut s.ln, t / seq, seq, h);
    }

    /// The rest, on the rows of `xs`: `xs += o(attn)`, then `xs += fc2(act(fc1(ln2(xs))))`.
    /// `ln` holds the attention output on entry and is reused for ln2's; `mid` is `fc1`'s.
    fn finish(&self, xs: &mut [f32], ln: &mut [f32], mid: &mut [f32], next: Option<&Block>) {
        self.o.run(ln, xs, true, None, Some(&self.fc1));
        self.ln2.forward(xs, ln);
        self.fc1
            .run(ln, mid, false, Some(self.act), Some(&self.fc2));
        self.fc2.run(mid, xs, true, None, next.map(|b| &b.qkv));
    }

    /// softmax(Q·Kᵀ)·V per (image, head), straight out of the fused `[t, 3h]` buffer into
    /// `out` `[t, h]` (heads side by side, the layout the output projection reads).
    fn attention(&self, qkv: &[f32], out: &mut [f32], batch: usize, seq: usize, h: usize) {
        let (heads, d) = (self.heads, h / self.heads);
        if d == f32mm::PANEL && self.bf16_attention {
            attention_bf16_d64(qkv, out, batch, seq, h, heads);
        } else if d == f32mm::PANEL && PackedWeight::available() {
            attention_d64(qkv, out, batch, seq, h, heads);
        } else {
            attention_gemm(qkv, out, batch, seq, h, heads);
        }
    }
}

/// Attention for any head size, with gemm.
fn attention_gemm(qkv: &[f32], out: &mut [f32], batch: usize, seq: usize, h: usize, heads: usize) {
    let d = h / heads;
    assert!(qkv.len() >= batch * seq * 3 * h && out.len() >= batch * seq * h);
    let dst = SharedOut::new(out);
    let src = qkv.as_ptr() as usize;
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(kernels::per_thread(
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
                // SAFETY: all views stay inside this image's rows of qkv / out.
                unsafe {
                    kernels::gemm(seq, seq, d, scores.as_mut_ptr(), seq, false, q, kt, false);
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

/// [`Block::attention`] for 64-wide heads on AVX-512, with the f32 matmul's register tile: per
/// (image, head), Kᵀ is packed into 64-column panels (zero-padded), Q·Kᵀ and P·V run as tiles of
/// 6 rows × 64 columns; V is copied out contiguous (read in place at its row stride of 3h, its
/// rows fall on few L1 sets and evict each other).
fn attention_d64(qkv: &[f32], out: &mut [f32], batch: usize, seq: usize, h: usize, heads: usize) {
    const D: usize = f32mm::PANEL;
    let panels = seq.div_ceil(D);
    let dst = SharedOut::new(out);
    let src = qkv.as_ptr() as usize;
    let row = 3 * h;
    assert!(qkv.len() >= batch * seq * row && out.len() >= batch * seq * h);
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(kernels::per_thread(
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
                // SAFETY: every read stays inside this image's `seq` rows of qkv (row stride 3h, the
                // head's 64 columns of Q, K or V); every write inside this image's rows of `out` (the
                // head's 64 columns) or the task's own buffers; AVX-512 checked by the caller.
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
                        for (r, rows) in f32mm::row_tiles(0..seq, f32mm::MR) {
                            f32mm::Tile {
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
                                prefetch: f32mm::Prefetch::NONE,
                            }
                            .run_rows(rows);
                        }
                    }
                    kernels::softmax_rows(scores, seq);
                    let o = dst.at(b * seq * h + hd * D);
                    for (r, rows) in f32mm::row_tiles(0..seq, f32mm::MR) {
                        f32mm::Tile {
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
                            prefetch: f32mm::Prefetch::NONE,
                        }
                        .run_rows(rows);
                    }
                }
            },
        ));
}

/// [`attention_d64`] with bf16 products (f32 sums and softmax), for the reduced-precision modes:
/// Q, Kᵀ, the probabilities and V are rounded to bf16 in the pair layout of [`bf16::Tile`].
fn attention_bf16_d64(
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    seq: usize,
    h: usize,
    heads: usize,
) {
    const D: usize = f32mm::PANEL;
    let panels = seq.div_ceil(D);
    // With AMX ([`bf16::amx_panel`]): Q and P padded to whole 32-row blocks, the sequence as a
    // `k` to whole 32-value tile steps. Otherwise the sequence as a `k` in whole pairs. The
    // padding stays zero.
    let amx = crate::amx::available();
    let rows = if amx { seq.next_multiple_of(32) } else { seq };
    let sp = if amx {
        seq.next_multiple_of(32)
    } else {
        seq.div_ceil(2) * 2
    };
    let row = 3 * h;
    assert!(qkv.len() >= batch * seq * row && out.len() >= batch * seq * h);
    let dst = SharedOut::new(out);
    (0..batch * heads)
        .into_par_iter()
        .with_max_len(1)
        .for_each(kernels::per_thread(
            [seq, rows, sp],
            || Bf16Scratch {
                q: vec![0u16; rows * D],
                kt: vec![0u32; panels * D * D / 2],
                scores: vec![0f32; seq * seq],
                p: vec![0u16; rows * sp],
                v: vec![0u32; sp / 2 * D],
            },
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
                // zero-padded; P rows and V hold `sp` entries) and write `scores` or this image's rows
                // of `out` in the head's 64 columns; AVX-512 BF16 checked when the block was built.
                unsafe {
                    if amx {
                        let kt = s.kt.as_ptr() as *const u16;
                        for p in 0..panels {
                            let (c, live) =
                                (s.scores.as_mut_ptr().add(p * D), (seq - p * D).min(D));
                            bf16::amx_panel(
                                s.q.as_ptr(),
                                D,
                                D,
                                kt.add(p * D * D),
                                seq,
                                live,
                                c,
                                seq,
                                None,
                                false,
                                None,
                            );
                        }
                        kernels::softmax_rows(&mut s.scores, seq);
                        for (pr, sr) in s.p.chunks_exact_mut(sp).zip(s.scores.chunks_exact(seq)) {
                            bf16::round_row(sr, &mut pr[..seq]);
                        }
                        let o = dst.at(b * seq * h + hd * D);
                        let v = s.v.as_ptr() as *const u16;
                        bf16::amx_panel(s.p.as_ptr(), sp, sp, v, seq, D, o, h, None, false, None);
                        return;
                    }
                    for p in 0..panels {
                        for (r, rows) in f32mm::row_tiles(0..seq, bf16::MR) {
                            bf16::Tile {
                                a: s.q.as_ptr().add(r * D),
                                lda: D,
                                b: (s.kt.as_ptr() as *const u16).add(p * D * D),
                                ldb: 2 * D,
                                pairs: D / 2,
                                c: s.scores.as_mut_ptr().add(r * seq + p * D),
                                ldc: seq,
                                live: (seq - p * D).min(D),
                                bias: None,
                                add_dst: false,
                            }
                            .run_rows(rows);
                        }
                    }
                    kernels::softmax_rows(&mut s.scores, seq);
                    for (pr, sr) in s.p.chunks_exact_mut(sp).zip(s.scores.chunks_exact(seq)) {
                        bf16::round_row(sr, &mut pr[..seq]);
                    }
                    let o = dst.at(b * seq * h + hd * D);
                    for (r, rows) in f32mm::row_tiles(0..seq, bf16::MR) {
                        bf16::Tile {
                            a: s.p.as_ptr().add(r * sp),
                            lda: sp,
                            b: s.v.as_ptr() as *const u16,
                            ldb: 2 * D,
                            pairs: sp / 2,
                            c: o.add(r * h),
                            ldc: h,
                            live: D,
                            bias: None,
                            add_dst: false,
                        }
                        .run_rows(rows);
                    }
                }
            },
        ));
}

struct Bf16Scratch {
    q: Vec<u16>,
    /// Kᵀ panels, bf16 pairs as u32.
    kt: Vec<u32>,
    scores: Vec<f32>,
    /// Probabilities, rows padded to an even length with zeros.
    p: Vec<u16>,
    /// V, bf16 pairs of tokens as u32.
    v: Vec<u32>,
}

/// Work buffers reused across blocks.
struct Scratch {
    ln: Vec<f32>,
    qkv: Vec<f32>,
    mid: Vec<f32>,
}

/// Patch embedding (im2col + one matmul), class token, position embeddings, then the blocks.
#[derive(Debug, Clone)]
pub(crate) struct VisionEncoder {
    pub(crate) patch: usize,
    pub(crate) channels: usize,
    pub(crate) image: (usize, usize),
    /// `[hidden, c·p·p]` → gemm over im2col rows.
    pub(crate) conv: Dense,
    pub(crate) cls: Vec<f32>,
    /// `[1 + patches, hidden]`.
    pub(crate) pos: Vec<f32>,
    pub(crate) pre_norm: Option<Norm>,
    pub(crate) blocks: Vec<Block>,
}

impl VisionEncoder {
    pub(crate) fn seq(&self) -> usize {
        (self.image.0 / self.patch) * (self.image.1 / self.patch) + 1
    }

    /// `pixels`: `[batch, c, H, W]`. Returns each image's class token out of the encoder,
    /// `[batch, hidden]` (the other tokens' last-block outputs are never computed).
    pub(crate) fn class_tokens(&self, pixels: &[f32], batch: usize) -> Vec<f32> {
        let (p, c, (ih, iw)) = (self.patch, self.channels, self.image);
        let (gh, gw) = (ih / p, iw / p);
        let (np, seq, hidden) = (gh * gw, self.seq(), self.cls.len());
        let kdim = c * p * p;
        // im2col: one row per patch, columns in the conv weight's (c, ky, kx) order.
        let mut cols = vec![0f32; batch * np * kdim];
        cols.par_chunks_mut(kdim).enumerate().for_each(|(r, row)| {
            let (b, pi) = (r / np, r % np);
            let (py, px) = (pi / gw, pi % gw);
            for ch in 0..c {
                for ky in 0..p {
                    let src = ((b * c + ch) * ih + py * p + ky) * iw + px * p;
                    let at = (ch * p + ky) * p;
                    row[at..at + p].copy_from_slice(&pixels[src..src + p]);
                }
            }
        });
        let mut emb = vec![0f32; batch * np * hidden];
        self.conv.forward(&cols, &mut emb, false);
        drop(cols);
        let mut xs = vec![0f32; batch * seq * hidden];
        xs.par_chunks_mut(seq * hidden)
            .enumerate()
            .for_each(|(b, img)| {
                for (t, row) in img.chunks_exact_mut(hidden).enumerate() {
                    let pos = &self.pos[t * hidden..(t + 1) * hidden];
                    let src = if t == 0 {
                        &self.cls[..]
                    } else {
                        &emb[(b * np + t - 1) * hidden..(b * np + t) * hidden]
                    };
                    row.iter_mut()
                        .zip(src.iter().zip(pos))
                        .for_each(|(d, (s, q))| *d = s + q);
                }
            });
        let t = batch * seq;
        let mut s = Scratch {
            ln: vec![0f32; t * hidden],
            qkv: vec![0f32; t * 3 * hidden],
            mid: vec![0f32; t * self.blocks.first().map_or(0, |b| b.fc1.out_features())],
        };
        if let Some(norm) = &self.pre_norm {
            norm.forward(&xs, &mut s.ln);
            std::mem::swap(&mut xs, &mut s.ln);
        }
        let Some((last, rest)) = self.blocks.split_last() else {
            return class_rows(&xs, batch, seq, hidden);
        };
        for (i, block) in rest.iter().enumerate() {
            block.forward(&mut xs, seq, &mut s, self.blocks.get(i + 1));
        }
        last.forward_class_tokens(&xs, seq, &mut s)
    }
}

/// Rows `0, seq, 2·seq, …` of `[batch·seq, h]` `xs` (each image's class token), as `[batch, h]`.
fn class_rows(xs: &[f32], batch: usize, seq: usize, h: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| xs[b * seq * h..b * seq * h + h].iter().copied())
        .collect()
}

/// Convert a candle conv2d (`[hidden, c, p, p]`, optional bias) into the im2col matmul.
pub(crate) fn conv_dense(conv: &candle_nn::Conv2d, precision: Precision) -> Result<Dense> {
    let (hidden, c, p, _) = conv.weight().dims4()?;
    let bias = conv.bias().map(vec1).transpose()?;
    Ok(Dense::from_parts(
        vec1(conv.weight())?,
        hidden,
        c * p * p,
        bias,
        precision,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gemm fallback and the packed kernel (where the CPU has AVX-512) agree, with and without
    /// bias and accumulation.
    #[test]
    fn f32_layouts_agree() {
        let (m, k, n) = (11, 70, 96);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        for (bias, acc) in [(None, false), (Some(b.clone()), false), (Some(b), true)] {
            let packed = Dense::from_parts(w.clone(), n, k, bias.clone(), Precision::F32);
            let gemm = Dense {
                k,
                n,
                bias,
                w: Dense::gemm_layout(&w, n, k),
            };
            let mut a = vec![0.5f32; m * n];
            let mut g = a.clone();
            packed.forward(&x, &mut a, acc);
            gemm.forward(&x, &mut g, acc);
            for r in 0..m {
                for c in 0..n {
                    let naive: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                    assert!((g[r * n + c] - a[r * n + c]).abs() < 1e-3);
                    let want = naive
                        + gemm.bias.as_ref().map_or(0.0, |b| b[c])
                        + if acc { 0.5 } else { 0.0 };
                    assert!(
                        (g[r * n + c] - want).abs() < 1e-3,
                        "{} vs {want}",
                        g[r * n + c]
                    );
                }
            }
        }
    }

    /// bf16 weights on a CPU without the bf16 dot product run the f32 kernel on the bf16-rounded
    /// values: exactly what an f32 layer built from those rounded values answers, and close to
    /// the bf16 kernel where the CPU has one.
    #[test]
    fn bf16_without_the_instructions_runs_rounded_weights_in_f32() {
        let (m, k, n) = (5, 70, 96);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 / 44.0 - 1.0) * 1.001)
            .collect();
        let rounded: Vec<f32> = w.iter().map(|&v| bf16::round(v)).collect();
        assert!(
            rounded.iter().zip(&w).any(|(r, v)| r != v),
            "rounding changes some weights"
        );
        let bias = Some((0..n).map(|i| i as f32 * 0.1).collect::<Vec<_>>());
        let widened = Dense {
            k,
            n,
            bias: bias.clone(),
            w: Dense::bf16_weight(w.clone(), n, k, false),
        };
        assert!(!matches!(widened.w, DenseWeight::Bf16(_)));
        let f32_rounded = Dense::from_parts(rounded, n, k, bias.clone(), Precision::F32);
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        widened.forward(&x, &mut a, false);
        f32_rounded.forward(&x, &mut b, false);
        assert_eq!(a, b);
        let native = Dense {
            k,
            n,
            bias,
            w: Dense::bf16_weight(w, n, k, true),
        };
        let mut c = vec![0f32; m * n];
        native.forward(&x, &mut c, false);
        for (g, want) in c.iter().zip(&a) {
            assert!(
                (g - want).abs() < 5e-2 * want.abs().max(1.0),
                "{g} vs {want}"
            );
        }
    }

    /// What `kernel_for` reports is what the layers are built with on this CPU.
    #[test]
    fn kernel_report_matches_the_layers_built() {
        let w = vec![0.25f32; 64 * 32];
        let built = |p| Dense::from_parts(w.clone(), 64, 32, None, p).w;
        let (f32_kernel, fast) = crate::kernel_for(Precision::F32);
        assert!(fast);
        assert_eq!(
            f32_kernel.contains("AVX-512"),
            matches!(built(Precision::F32), DenseWeight::F32Packed(_)),
            "{f32_kernel}"
        );
        let (bf16_kernel, fast) = crate::kernel_for(Precision::Bf16);
        assert_eq!(
            fast,
            matches!(built(Precision::Bf16), DenseWeight::Bf16(_)),
            "{bf16_kernel}"
        );
    }

    /// The AVX-512 attention (f32, and bf16 where the CPU has it) against the gemm one, with a
    /// sequence over two key panels (the second partial) and an odd length (the bf16 pad).
    #[test]
    fn attention_paths_agree() {
        let (batch, seq, heads) = (2, 77, 3);
        let h = heads * f32mm::PANEL;
        let qkv: Vec<f32> = (0..batch * seq * 3 * h)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0)
            .collect();
        let mut want = vec![f32::NAN; batch * seq * h];
        attention_gemm(&qkv, &mut want, batch, seq, h, heads);
        assert!(want.iter().all(|x| x.is_finite()));
        if PackedWeight::available() {
            let mut got = vec![f32::NAN; batch * seq * h];
            attention_d64(&qkv, &mut got, batch, seq, h, heads);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "f32 attention {g} vs {w}");
            }
        }
        if crate::bf16::has_bf16() {
            let mut got = vec![f32::NAN; batch * seq * h];
            attention_bf16_d64(&qkv, &mut got, batch, seq, h, heads);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 2e-2, "bf16 attention {g} vs {w}");
            }
        }
    }

    /// Every attention path keeps its buffers per thread between calls
    /// ([`kernels::per_thread`]): a call after another of the same shape answers exactly what it
    /// answers on threads that never ran one (the zero padding is still zero).
    #[test]
    fn attention_scratch_is_clean_when_reused() {
        let (batch, seq, heads) = (2, 77, 3);
        let h = heads * f32mm::PANEL;
        let input = |salt: usize| -> Vec<f32> {
            (0..batch * seq * 3 * h)
                .map(|i| (((i + salt) * 7919 % 1013) as f32 / 506.0) - 1.0)
                .collect()
        };
        let (first, second) = (input(0), input(517));
        type Path = fn(&[f32], &mut [f32], usize, usize, usize, usize);
        let mut paths: Vec<(&str, Path)> = vec![("gemm", attention_gemm)];
        if PackedWeight::available() {
            paths.push(("f32 d64", attention_d64));
        }
        if crate::bf16::has_bf16() {
            paths.push(("bf16 d64", attention_bf16_d64));
        }
        let pool = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap()
        };
        for (name, path) in paths {
            let run = |qkv: &[f32]| {
                let mut out = vec![f32::NAN; batch * seq * h];
                path(qkv, &mut out, batch, seq, h, heads);
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
