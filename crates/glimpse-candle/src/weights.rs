//! Opening a folder's weights: `model.safetensors` (memory-mapped) or, failing that,
//! `pytorch_model.bin` (torch's zip pickle). Tensors are converted to f32 as they are read, so
//! fp16/bf16 checkpoints load too.

use std::path::{Path, PathBuf};

use crate::config::model_err;
use crate::Error;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// The weights file a folder would be loaded from.
pub fn weights_file(dir: &Path) -> Result<PathBuf, Error> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if dir.join("model.safetensors.index.json").is_file()
        || dir.join("pytorch_model.bin.index.json").is_file()
    {
        return Err(model_err(format!(
            "model folder {} holds sharded weights; Glimpse loads a single model.safetensors or \
             pytorch_model.bin",
            dir.display()
        )));
    }
    Err(model_err(format!(
        "model folder {} has no model.safetensors or pytorch_model.bin",
        dir.display()
    )))
}

/// A `VarBuilder` over the folder's weights, handing out f32 tensors on `device`.
pub fn open(dir: &Path, device: &Device) -> Result<(VarBuilder<'static>, PathBuf), Error> {
    let file = weights_file(dir)?;
    let bad = |source| Error::Weights {
        context: file.display().to_string(),
        source,
    };
    let vb = if file.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is mapped read-only; as with every mmap, it must not be truncated
        // while the model is loaded (model folders are not rewritten in place).
        unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, device) }.map_err(bad)?
    } else {
        VarBuilder::from_pth(&file, DType::F32, device).map_err(bad)?
    };
    Ok((vb, file))
}
