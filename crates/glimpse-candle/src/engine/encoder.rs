//! One pre-LN transformer block on the fused kernels, and the image encoder: patch embedding
//! (im2col + one matmul), class token, position embeddings, then the blocks.

use candle_core::Result;
use rayon::prelude::*;

use super::attention::{attention_bf16_rows, AttentionKernel};
use super::dense::{vec1, Dense, Norm};
use crate::kernels::{bf16, Act, Kernels};
use crate::Precision;

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
    /// softmax(Q·Kᵀ)·V, chosen with the layers' kernels ([`AttentionKernel::choose`]).
    pub(crate) attention: AttentionKernel,
}

impl Block {
    /// `xs`: `[batch·seq, h]`, updated in place.
    /// `next`: the block after this one (its first weights are fetched ahead).
    /// `keep`: per sequence and token, whether it is attended to (`None`: every token).
    fn forward(
        &self,
        xs: &mut [f32],
        seq: usize,
        s: &mut Scratch,
        next: Option<&Block>,
        keep: Option<&[bool]>,
    ) {
        self.attend(xs, seq, s, keep);
        let mid = &mut s.mid[..xs.len() / self.ln1.w.len() * self.fc1.out_features()];
        self.finish(xs, &mut s.ln, mid, next);
    }

    /// This block for each image's `lead` leading tokens only (the class token, and DeiT's
    /// distillation token after it), as `[batch·lead, hidden]`: what the last block owes a
    /// model that reads nothing else. Attention still reads every token; the output projection
    /// and the MLP (three quarters of the block's matmuls) run on `batch·lead` rows instead of
    /// `batch·seq`. The rows come out as [`Block::forward`] computes them: each of those steps
    /// works row by row.
    fn forward_lead_tokens(
        &self,
        xs: &[f32],
        seq: usize,
        lead: usize,
        s: &mut Scratch,
    ) -> Vec<f32> {
        let h = self.ln1.w.len();
        let batch = xs.len() / h / seq;
        let mut x = lead_rows(xs, batch, seq, h, lead);
        self.attend(xs, seq, s, None);
        let mut attn = lead_rows(&s.ln, batch, seq, h, lead);
        let mid = &mut s.mid[..batch * lead * self.fc1.out_features()];
        self.finish(&mut x, &mut attn, mid, None);
        x
    }

    /// The attention half: `s.ln` = attention(ln1(xs)) for every row (before the output
    /// projection).
    fn attend(&self, xs: &[f32], seq: usize, s: &mut Scratch, keep: Option<&[bool]>) {
        let h = self.ln1.w.len();
        let t = xs.len() / h;
        self.ln1.forward(xs, &mut s.ln);
        let batch = t / seq;
        // bf16 attention on the AVX-512 BF16 tile reads Q, K and V as bf16 rows: rounded by
        // QKV's epilogue where that layer runs on the same tile (else, an int8 QKV, the
        // attention rounds its f32 output in one pass).
        if keep.is_none() && self.attention.reads_bf16() {
            if let Some(qkv) = self.qkv.run_to_rows(&s.ln) {
                let (rows, ld) = qkv.rows().expect("the tile's rounded rows are row-major");
                attention_bf16_rows(rows, ld, &mut s.ln, batch, seq, h, self.heads);
                return;
            }
        }
        self.qkv.run(&s.ln, &mut s.qkv, false, None, Some(&self.o));
        let (qkv, out) = (&s.qkv, &mut s.ln);
        match keep {
            None => self.attention.run(qkv, out, batch, seq, h, self.heads),
            Some(k) => self
                .attention
                .run_masked(qkv, out, batch, seq, h, self.heads, k),
        }
    }

    /// The rest, on the rows of `xs`: `xs += o(attn)`, then `xs += fc2(act(fc1(ln2(xs))))`.
    /// `ln` holds the attention output on entry and is reused for ln2's; `mid` is `fc1`'s.
    fn finish(&self, xs: &mut [f32], ln: &mut [f32], mid: &mut [f32], next: Option<&Block>) {
        self.o.run(ln, xs, true, None, Some(&self.fc1));
        self.ln2.forward(xs, ln);
        // bf16 on AMX or AVX-512 BF16: fc1's epilogue rounds its activated output straight
        // into fc2's input.
        if let Some(rounded) = self.fc1.run_into(ln, Some(self.act), &self.fc2) {
            self.fc2.forward_rounded(&rounded, xs, true);
            return;
        }
        self.fc1
            .run(ln, mid, false, Some(self.act), Some(&self.fc2));
        self.fc2.run(mid, xs, true, None, next.map(|b| &b.qkv));
    }
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
    /// The learned tokens in front of the patches, `[lead, hidden]`: the class token (DeiT: then
    /// its distillation token); empty for models without one (SigLIP).
    pub(crate) cls: Vec<f32>,
    /// How many tokens `cls` holds (1; DeiT 2; SigLIP 0).
    pub(crate) lead: usize,
    /// `[lead + patches, hidden]`.
    pub(crate) pos: Vec<f32>,
    pub(crate) pre_norm: Option<Norm>,
    pub(crate) blocks: Vec<Block>,
}

impl VisionEncoder {
    pub(crate) fn seq(&self) -> usize {
        (self.image.0 / self.patch) * (self.image.1 / self.patch) + self.lead
    }

    /// Every token out of the encoder, `[batch·seq, hidden]`, for models that pool all of them
    /// (SigLIP's attention-pooling head).
    pub(crate) fn all_tokens(&self, pixels: &[f32], batch: usize) -> Vec<f32> {
        let seq = self.seq();
        let (mut xs, mut s) = self.embed(pixels, batch);
        for (i, block) in self.blocks.iter().enumerate() {
            block.forward(&mut xs, seq, &mut s, self.blocks.get(i + 1), None);
        }
        xs
    }

    /// `pixels`: `[batch, c, H, W]`. Returns each image's class token out of the encoder,
    /// `[batch, hidden]` (the other tokens' last-block outputs are never computed). With
    /// `lead` > 1 (DeiT), each image's leading tokens in order: `[batch·lead, hidden]`.
    pub(crate) fn class_tokens(&self, pixels: &[f32], batch: usize) -> Vec<f32> {
        let (seq, hidden, lead) = (self.seq(), self.conv.out_features(), self.lead);
        let (mut xs, mut s) = self.embed(pixels, batch);
        let Some((last, rest)) = self.blocks.split_last() else {
            return lead_rows(&xs, batch, seq, hidden, lead);
        };
        for (i, block) in rest.iter().enumerate() {
            block.forward(&mut xs, seq, &mut s, self.blocks.get(i + 1), None);
        }
        last.forward_lead_tokens(&xs, seq, lead, &mut s)
    }

    /// The blocks' input, `[batch·seq, hidden]` (patch embedding, leading tokens, position
    /// embeddings, pre-norm), and their work buffers.
    fn embed(&self, pixels: &[f32], batch: usize) -> (Vec<f32>, Scratch) {
        let (p, c, (ih, iw)) = (self.patch, self.channels, self.image);
        let (gh, gw) = (ih / p, iw / p);
        let lead = self.lead;
        let (np, seq, hidden) = (gh * gw, self.seq(), self.conv.out_features());
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
                    let src = if t < lead {
                        &self.cls[t * hidden..(t + 1) * hidden]
                    } else {
                        &emb[(b * np + t - lead) * hidden..(b * np + t - lead + 1) * hidden]
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
        (xs, s)
    }
}

/// A text tower's token embedding table, `[vocab, hidden]`: f32, or bf16 for towers that run at
/// bf16 (their weights are bf16-rounded already), widened per looked-up row. It is the largest
/// tensor of a CLIP text tower (49 408 × 512: 101 MB in f32), read a few dozen rows per prompt.
#[derive(Debug, Clone)]
pub(crate) enum TokenTable {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl TokenTable {
    /// `table` row-major `[vocab, hidden]`, kept at `precision` (int8 is not used for it).
    pub(crate) fn new(table: Vec<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => TokenTable::F32(table),
            Precision::Bf16 | Precision::Int8 => {
                TokenTable::Bf16(table.into_iter().map(bf16::to_bf16).collect())
            }
        }
    }

    /// `out = table[tok] + pos` (`out` and `pos` one row long).
    fn add_row(&self, tok: usize, pos: &[f32], out: &mut [f32]) {
        let h = out.len();
        match self {
            TokenTable::F32(t) => {
                let e = &t[tok * h..(tok + 1) * h];
                for ((d, a), b) in out.iter_mut().zip(e).zip(pos) {
                    *d = a + b;
                }
            }
            TokenTable::Bf16(t) => {
                let e = &t[tok * h..(tok + 1) * h];
                for ((d, &a), b) in out.iter_mut().zip(e).zip(pos) {
                    *d = f32::from_bits((a as u32) << 16) + b;
                }
            }
        }
    }
}

/// A text transformer on the fused kernels: token + position embeddings, the pre-LN blocks, then,
/// at each row's pooled token only, the final layer norm and the projection (both per token, so
/// applying them to the pooled rows alone is the same). CLIP's blocks attend causally and pool
/// at the end token; SigLIP's attend to every token (padding included, unless masked) and pool
/// at the last position, through a projection with a bias (its `head`).
#[derive(Debug, Clone)]
pub(crate) struct TextEncoder {
    /// `[vocab, hidden]`.
    pub(crate) token: TokenTable,
    /// `[max_positions, hidden]`.
    pub(crate) pos: Vec<f32>,
    /// Their attention: [`AttentionKernel::GemmCausal`] (CLIP), or the kernel chosen for the
    /// layers (SigLIP, full attention).
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Norm,
    pub(crate) projection: Dense,
}

impl TextEncoder {
    /// `ids`: rows of one length (checked by the caller against the vocabulary and the
    /// positions); `pooled_at[i]`: the token row `i` is read at. Projected, not yet normalised
    /// embeddings, one per row. The rows are as long as the longest text, not the context.
    /// `keep`: `[rows·seq]`, whether each token is attended to (`None`: every token).
    pub(crate) fn pooled(
        &self,
        ids: &[Vec<u32>],
        pooled_at: &[usize],
        keep: Option<&[bool]>,
    ) -> Vec<Vec<f32>> {
        let (batch, seq, h) = (ids.len(), ids[0].len(), self.final_norm.w.len());
        let mut xs = vec![0f32; batch * seq * h];
        xs.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let (b, t) = (r / seq, r % seq);
            let p = &self.pos[t * h..(t + 1) * h];
            self.token.add_row(ids[b][t] as usize, p, row);
        });
        let t = batch * seq;
        let mut s = Scratch {
            ln: vec![0f32; t * h],
            qkv: vec![0f32; t * 3 * h],
            mid: vec![0f32; t * self.blocks.first().map_or(0, |b| b.fc1.out_features())],
        };
        for (i, block) in self.blocks.iter().enumerate() {
            block.forward(&mut xs, seq, &mut s, self.blocks.get(i + 1), keep);
        }
        let pooled: Vec<f32> = pooled_at
            .iter()
            .enumerate()
            .flat_map(|(b, &p)| xs[(b * seq + p) * h..(b * seq + p + 1) * h].iter().copied())
            .collect();
        let mut normed = vec![0f32; pooled.len()];
        self.final_norm.forward(&pooled, &mut normed);
        let n = self.projection.out_features();
        let mut out = vec![0f32; batch * n];
        self.projection.forward(&normed, &mut out, false);
        out.chunks_exact(n).map(|r| r.to_vec()).collect()
    }
}

/// The first `lead` rows of each image of `[batch·seq, h]` `xs` (its class token, and DeiT's
/// distillation token), as `[batch·lead, h]`.
fn lead_rows(xs: &[f32], batch: usize, seq: usize, h: usize, lead: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| xs[b * seq * h..(b * seq + lead) * h].iter().copied())
        .collect()
}

/// Convert a candle conv2d (`[hidden, c, p, p]`, optional bias) into the im2col matmul.
pub(crate) fn conv_dense(conv: &candle_nn::Conv2d, kernels: Kernels) -> Result<Dense> {
    let (hidden, c, p, _) = conv.weight().dims4()?;
    let bias = conv.bias().map(vec1).transpose()?;
    Ok(Dense::from_parts(
        vec1(conv.weight())?,
        hidden,
        c * p * p,
        bias,
        kernels,
    ))
}
