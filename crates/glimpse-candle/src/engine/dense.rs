//! A linear layer in the chosen precision, and layer norm, on `[rows, features]` f32 buffers.

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::kernels::bf16::{self, Bf16Weight};
use crate::kernels::f32::{self as f32k, PackedWeight};
use crate::kernels::int8::{self, QuantWeight};
use crate::kernels::{self, F32Kernel, Int8Kernel, Kernels, Mat};
use crate::Precision;

pub(super) fn vec1(t: &Tensor) -> Result<Vec<f32>> {
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
    /// Packed once for the AVX-512 kernel ([`crate::kernels::f32`]).
    F32Packed(PackedWeight),
    /// With the kernel chosen for it at load.
    Int8(QuantWeight, Int8Kernel),
    Bf16(Bf16Weight),
}

impl Dense {
    /// `w` is `[n, k]` row-major, as PyTorch stores it; laid out for the kernel `kernels` picks
    /// for its precision, which the layer keeps.
    pub(crate) fn from_parts(
        w: Vec<f32>,
        n: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        kernels: Kernels,
    ) -> Self {
        let w = match kernels.precision {
            Precision::Int8 => DenseWeight::Int8(QuantWeight::new(&w, n, k), kernels.int8),
            Precision::Bf16 => Self::bf16_weight(w, n, k, kernels),
            Precision::F32 => Self::f32_weight(&w, n, k, kernels.f32),
        };
        Dense { k, n, bias, w }
    }

    fn f32_weight(w: &[f32], n: usize, k: usize, kernel: F32Kernel) -> DenseWeight {
        match kernel {
            F32Kernel::Avx512 => DenseWeight::F32Packed(PackedWeight::new(w, n, k)),
            F32Kernel::Gemm => Self::gemm_layout(w, n, k),
        }
    }

    /// bf16 weights. Without the CPU's bf16 dot product (`bf16_native` false) the rounded values are
    /// widened back to f32 and run on the f32 kernel: the scalar bf16 tile is ~60× slower than
    /// that (CLIP B/32 batch 1: 3.6 s vs 59 ms on a Cascade Lake Xeon), and an f32 FMA is what an
    /// emulated bf16 product would cost anyway.
    fn bf16_weight(mut w: Vec<f32>, n: usize, k: usize, kernels: Kernels) -> DenseWeight {
        if kernels.bf16_native {
            return DenseWeight::Bf16(Bf16Weight::new(&w, n, k, kernels.bf16));
        }
        for x in &mut w {
            *x = bf16::round(*x);
        }
        Self::f32_weight(&w, n, k, kernels.f32)
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

    pub(crate) fn from_linear(l: &Linear, kernels: Kernels) -> Result<Self> {
        let (n, k) = l.weight().dims2()?;
        let bias = l.bias().map(vec1).transpose()?;
        Ok(Self::from_parts(vec1(l.weight())?, n, k, bias, kernels))
    }

    /// Q, K and V as one `[3h, h]` layer, Q (weight and bias) pre-multiplied by `q_scale`.
    pub(crate) fn fused_qkv(
        q: &Linear,
        k: &Linear,
        v: &Linear,
        q_scale: f32,
        kernels: Kernels,
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
        Ok(Self::from_parts(w, 3 * h, kin, bias, kernels))
    }

    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// `act(x·Wᵀ + b)` as `next`'s input, already rounded and laid out for it, where both
    /// layers run bf16 on AMX or both on the AVX-512 BF16 tile ([`bf16::chains`]); `None`
    /// otherwise (then [`Dense::run`] and `next.run` as usual). The f32 output is never written
    /// nor read back: for ViT-B/16's MLP that is 19 MB per layer at batch 8.
    pub(crate) fn run_into(
        &self,
        x: &[f32],
        act: Option<kernels::Act>,
        next: &Dense,
    ) -> Option<bf16::Rounded> {
        match (&self.w, &next.w) {
            (DenseWeight::Bf16(w), DenseWeight::Bf16(nw))
                if next.k == self.n && bf16::chains(w, nw) =>
            {
                Some(bf16::matmul_to_rounded(
                    x,
                    self.k,
                    w,
                    self.bias.as_deref(),
                    act,
                ))
            }
            _ => None,
        }
    }

    /// `x·Wᵀ + b` rounded to bf16, row-major ([`bf16::Rounded::rows`]), where this layer runs
    /// on the AVX-512 BF16 tile ([`bf16::matmul_to_rows`]); `None` otherwise.
    pub(crate) fn run_to_rows(&self, x: &[f32]) -> Option<bf16::Rounded> {
        match &self.w {
            DenseWeight::Bf16(w) => bf16::matmul_to_rows(x, self.k, w, self.bias.as_deref()),
            _ => None,
        }
    }

    /// [`Dense::forward`] on the input the layer before made for this one ([`Dense::run_into`]).
    pub(crate) fn forward_rounded(&self, x: &bf16::Rounded, dst: &mut [f32], accumulate: bool) {
        let DenseWeight::Bf16(w) = &self.w else {
            panic!("a rounded input is made by `run_into` only for a bf16 layer");
        };
        bf16::matmul_rounded(x, w, self.bias.as_deref(), dst, accumulate, None)
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
                // SAFETY: `m` is x's rows (x is [m, k]), w holds Wᵀ as [k, n] (built so by
                // `gemm_layout`), and dst holds m·n values (debug-asserted above; every caller
                // sizes it from the same `m`). gemm has no CPU-feature precondition.
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
            DenseWeight::Int8(w, kernel) => {
                let q = int8::quantize_rows(x, self.k, *kernel);
                return int8::matmul(&q, w, self.bias.as_deref(), dst, accumulate, act, *kernel);
            }
            DenseWeight::F32Packed(w) => {
                let then = then.and_then(|d| match &d.w {
                    DenseWeight::F32Packed(w) => Some(w),
                    _ => None,
                });
                return f32k::matmul(x, w, self.bias.as_deref(), dst, accumulate, act, then);
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
    /// One weight per feature (its length is the layer's width).
    pub(super) w: Vec<f32>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let packed = Dense::from_parts(
                w.clone(),
                n,
                k,
                bias.clone(),
                Kernels::choose(Precision::F32),
            );
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
        let here = Kernels::choose(Precision::Bf16);
        let widen = Kernels {
            bf16_native: false,
            ..here
        };
        let keep = Kernels {
            bf16_native: true,
            ..here
        };
        let widened = Dense {
            k,
            n,
            bias: bias.clone(),
            w: Dense::bf16_weight(w.clone(), n, k, widen),
        };
        assert!(!matches!(widened.w, DenseWeight::Bf16(..)));
        let f32_rounded = Dense::from_parts(rounded, n, k, bias.clone(), here.at(Precision::F32));
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        widened.forward(&x, &mut a, false);
        f32_rounded.forward(&x, &mut b, false);
        assert_eq!(a, b);
        let native = Dense {
            k,
            n,
            bias,
            w: Dense::bf16_weight(w, n, k, keep),
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
        let built = |p| Dense::from_parts(w.clone(), 64, 32, None, Kernels::choose(p)).w;
        let (f32_kernel, fast) = crate::kernel_for(Precision::F32);
        assert!(fast);
        // "f32 on gemm (no AVX-512)" names AVX-512 too: match the kernel, not the word.
        assert_eq!(
            f32_kernel.starts_with("f32 on AVX-512"),
            matches!(built(Precision::F32), DenseWeight::F32Packed(_)),
            "{f32_kernel}"
        );
        let (bf16_kernel, fast) = crate::kernel_for(Precision::Bf16);
        assert_eq!(
            fast,
            matches!(built(Precision::Bf16), DenseWeight::Bf16(..)),
            "{bf16_kernel}"
        );
    }
}
