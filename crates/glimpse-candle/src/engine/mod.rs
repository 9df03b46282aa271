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
//!
//! [`dense`] holds the linear and layer-norm layers, [`attention`] the three attention kernels,
//! [`encoder`] the transformer block and the image encoder that strings them together.

mod attention;
mod dense;
mod encoder;

pub(crate) use attention::AttentionKernel;
pub(crate) use dense::{Dense, Norm};
pub(crate) use encoder::{conv_dense, Block, TextEncoder, TokenTable, VisionEncoder};
