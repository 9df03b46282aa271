//! The CPU kernels: what this CPU can run (detected once), how work is cut between threads
//! ([`schedule`]), the element-wise passes ([`elementwise`]) and the linear-layer kernels per
//! precision ([`f32`], [`bf16`], [`int8`], the last two on [`amx`] tiles where the CPU has them).

pub(crate) mod aligned;
pub(crate) mod amx;
pub(crate) mod bf16;
pub(crate) mod elementwise;
pub(crate) mod f32;
pub(crate) mod int8;
pub(crate) mod schedule;
pub(crate) mod spare;

pub(crate) use elementwise::*;
pub(crate) use f32::{gemm, Mat};

/// The f32 matmul: weights packed once for the AVX-512 register tile ([`f32`]), or the `gemm`
/// crate over Wᵀ elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum F32Kernel {
    Avx512,
    Gemm,
}

/// The bf16 tile product ([`bf16`]): AMX tiles, AVX-512 BF16 (`vdpbf16ps`), or the scalar loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bf16Kernel {
    Amx,
    Avx512Bf16,
    Scalar,
}

/// The int8 tile product ([`int8`]): AMX tiles, AVX-512 VNNI (`vpdpbusd`), or the scalar loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    Amx,
    Vnni,
    Scalar,
}

/// The kernels a model runs, chosen once when it is built: the model's precision and what this
/// CPU offers (its instructions, the AMX tile state, and whether its bf16 dot product beats its
/// f32 FMAs). Every layer and attention block is built from this value and keeps its choice, so
/// no kernel call asks the CPU again, and [`crate::kernel_for`] describes the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernels {
    /// The precision of the layers built from this value.
    pub(crate) precision: crate::Precision,
    pub(crate) f32: F32Kernel,
    pub(crate) bf16: Bf16Kernel,
    /// bf16 weights stay bf16: the CPU multiplies bf16 faster than f32 (AMX tiles, or AVX-512
    /// BF16 known or raced to beat the FMAs, see [`bf16::Bf16Choice`]). Otherwise they are
    /// rounded to bf16 and widened back to f32 for the f32 kernel.
    pub(crate) bf16_native: bool,
    /// Why `bf16_native` is what it is (AMX, no BF16, a known CPU family, or the race's times).
    pub(crate) bf16_choice: bf16::Bf16Choice,
    /// The reduced modes run attention's two products in bf16 (AVX-512 BF16 present and bf16
    /// native); f32 attention otherwise.
    pub(crate) bf16_attention: bool,
    pub(crate) int8: Int8Kernel,
}

impl Kernels {
    /// The kernels for `precision` on this CPU. The CPU is examined once per process (the
    /// AMX permission is a syscall and the bf16 race takes ~1 ms); every model copies the result.
    pub(crate) fn choose(precision: crate::Precision) -> Kernels {
        static CPU: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        Kernels {
            precision,
            ..*CPU.get_or_init(Kernels::detect)
        }
    }

    fn detect() -> Kernels {
        let amx = amx::available();
        let has_bf16 = bf16::has_bf16();
        let bf16_choice = bf16::Bf16Choice::detect(amx);
        let bf16_native = bf16_choice.native();
        Kernels {
            precision: crate::Precision::F32,
            f32: if isa() == Isa::Avx512 {
                F32Kernel::Avx512
            } else {
                F32Kernel::Gemm
            },
            bf16: if amx {
                Bf16Kernel::Amx
            } else if has_bf16 {
                Bf16Kernel::Avx512Bf16
            } else {
                Bf16Kernel::Scalar
            },
            bf16_native,
            bf16_choice,
            bf16_attention: has_bf16 && bf16_native,
            int8: if amx {
                Int8Kernel::Amx
            } else if int8::has_vnni() {
                Int8Kernel::Vnni
            } else {
                Int8Kernel::Scalar
            },
        }
    }

    /// The same CPU choices for layers of another precision (the patch embedding runs bf16 in
    /// the reduced modes; projections and classifiers stay f32).
    pub(crate) fn at(self, precision: crate::Precision) -> Kernels {
        Kernels { precision, ..self }
    }

    /// The matmul kernel of this precision, and whether it is a fast one (for start-up logs and
    /// `glimpse bench`): a reduced precision without its instructions is no faster than fp32
    /// (bf16) or much slower (int8 on the scalar tile). bf16 adds why (see [`bf16::Bf16Choice`]).
    pub(crate) fn describe(self) -> (String, bool) {
        let (kernel, fast) = self.kernel();
        if self.precision == crate::Precision::Bf16 {
            (format!("{kernel} ({})", self.bf16_choice.reason()), fast)
        } else {
            (kernel.to_string(), fast)
        }
    }

    fn kernel(self) -> (&'static str, bool) {
        use crate::Precision;
        match self.precision {
            Precision::F32 => match self.f32 {
                F32Kernel::Avx512 => ("f32 on AVX-512 FMA", true),
                F32Kernel::Gemm => ("f32 on gemm (no AVX-512)", true),
            },
            Precision::Bf16 => match self.bf16 {
                Bf16Kernel::Amx => ("bf16 on AMX tiles", true),
                Bf16Kernel::Avx512Bf16 if self.bf16_native => ("bf16 on AVX-512 BF16", true),
                Bf16Kernel::Avx512Bf16 | Bf16Kernel::Scalar => {
                    ("bf16 weights widened to f32: fp32 speed", false)
                }
            },
            Precision::Int8 => match self.int8 {
                Int8Kernel::Amx => ("int8 on AMX tiles", true),
                Int8Kernel::Vnni => ("int8 on AVX-512 VNNI", true),
                Int8Kernel::Scalar => (
                    "int8 on the scalar tile (no AVX-512 VNNI or AMX on this CPU): slower than \
                     fp32",
                    false,
                ),
            },
        }
    }
}

/// Which vector unit [`multiversion!`] functions run on, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

pub(crate) fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Define `fn $name(args)` compiled three times (AVX-512, AVX2+FMA, baseline) and dispatching on
/// [`isa`]. Helpers it calls are `#[inline(always)]`, so they are compiled into each version.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn v4($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3($($arg: $ty),*) $(-> $ret)? $body
            fn v0($($arg: $ty),*) $(-> $ret)? $body
            match $crate::kernels::isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` detected AVX-512 F/BW/DQ/VL (and so AVX2 and FMA) at run time;
                // the body is the same safe code as `v0`.
                $crate::kernels::Isa::Avx512 => unsafe { v4($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` detected AVX2 and FMA at run time; the body is `v0`'s safe code.
                $crate::kernels::Isa::Avx2 => unsafe { v3($($arg),*) },
                _ => v0($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// Operands shared by the kernels' unit tests (a module of its own: inside `kernels`, `f32` names
/// the [`f32`] module, not the type).
#[cfg(test)]
pub(crate) mod test_support {
    /// Deterministic `x` (`m×k`), `w` (`n×k`) and `bias` (`n`) for the matmul tests: values of
    /// either sign, small enough that the reduced-precision paths stay near the f32 product.
    #[cfg(test)]
    pub(crate) fn test_operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.2)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0)
            .collect();
        (x, w, (0..n).map(|i| i as f32 * 0.01).collect())
    }

    /// `len` activations of either sign, a different set per `salt` (for the buffer-reuse tests).
    pub(crate) fn salted_rows(len: usize, salt: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + salt) * 7919 % 1013) as f32 / 300.0) - 1.5)
            .collect()
    }
}
