//! Deterministic random weights for the benchmark models: the init each weight would get in
//! transformers/candle (constant, normal, uniform, Kaiming), drawn from a generator seeded by the
//! weight's name. The same preset therefore gives the same weights at every precision (which the
//! reduced-precision tests compare against f32), and building one is fast.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// splitmix64: small, fast and good enough for weights.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Self {
        // FNV-1a of the name.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

struct Seeded;

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut rng = Rng::new(name);
        let n = s.elem_count();
        let draw = |f: &mut dyn FnMut(&mut Rng) -> f64, rng: &mut Rng| -> Vec<f32> {
            (0..n).map(|_| f(rng) as f32).collect()
        };
        let data = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => draw(&mut |r| lo + (up - lo) * r.unit(), &mut rng),
            Init::Randn { mean, stdev } => draw(&mut |r| mean + stdev * r.normal(), &mut rng),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        draw(&mut |r| b * (2.0 * r.unit() - 1.0), &mut rng)
                    }
                    NormalOrUniform::Normal => draw(&mut |r| std * r.normal(), &mut rng),
                }
            }
        };
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights have no shape for '{name}'")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// A builder whose every weight is drawn deterministically from its name.
pub(crate) fn seeded_vb(device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Seeded), DType::F32, device.clone())
}
