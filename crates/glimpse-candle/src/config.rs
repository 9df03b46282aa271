//! `config.json` → model dimensions, with the defaults `transformers` fills in for missing fields
//! (`CLIPTextConfig`, `CLIPVisionConfig`, `CLIPConfig`, `ViTConfig` of transformers 5). A field of
//! the wrong type is an error naming the field; `null` counts as missing, as it does there.

use std::path::Path;

use serde_json::{Map, Value};

use crate::Error;
use glimpse_core::ModelFamily;

/// Activation functions of `transformers.activations.ACT2FN` that these models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (openai CLIP).
    QuickGelu,
    /// Exact GELU with erf (`"gelu"`, ViT).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the same formula).
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" | "gelu_fast" => {
                Activation::GeluTanh
            }
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// One pre-LN transformer stack (CLIP text, CLIP vision or ViT).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Bias on the query/key/value projections (always true for CLIP).
    pub qkv_bias: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub encoder: EncoderConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Picks the pooling rule: 2 (legacy configs) pools at `argmax(input_ids)`.
    pub eos_token_id: i64,
}

/// Image side lengths are `(height, width)`; transformers accepts an int or a pair.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub encoder: EncoderConfig,
    pub num_channels: usize,
    pub image_size: (usize, usize),
    pub patch_size: (usize, usize),
}

impl VisionConfig {
    pub fn grid(&self) -> (usize, usize) {
        (
            self.image_size.0 / self.patch_size.0,
            self.image_size.1 / self.patch_size.1,
        )
    }
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text: ClipTextConfig,
    pub vision: VisionConfig,
    pub projection_dim: usize,
    /// Used only to initialise random models; real models read the `logit_scale` weight.
    pub logit_scale_init_value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub vision: VisionConfig,
    /// Class names by index; `LABEL_i` where `id2label` has no entry.
    pub id2label: Vec<String>,
}

pub(crate) fn model_err(msg: impl Into<String>) -> Error {
    Error::Model(msg.into())
}

/// Read and parse `<dir>/config.json` into a JSON object.
pub fn read_config_json(dir: &Path) -> Result<Map<String, Value>, Error> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(model_err(format!(
            "model folder {} has no config.json",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: path.display().to_string(),
        source,
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(model_err(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(source) => Err(Error::Json {
            context: path.display().to_string(),
            source,
        }),
    }
}

pub fn kind_of(cfg: &Map<String, Value>) -> Result<ModelFamily, Error> {
    let model_type = cfg.get("model_type").and_then(Value::as_str);
    if let Some(f) = model_type.and_then(ModelFamily::from_model_type) {
        return Ok(f);
    }
    let supported = ModelFamily::supported();
    // A model_type Glimpse does not know is refused even where `architectures` names a known
    // class: the weights are that model_type's, and running them as another family would give
    // wrong numbers, not an error. `architectures` only stands in for a missing model_type.
    if let Some(t) = model_type {
        return Err(model_err(format!(
            "config.json: unknown model_type '{t}'; Glimpse runs {supported}"
        )));
    }
    let archs: Vec<&str> = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(f) = ModelFamily::ALL
        .into_iter()
        .find(|f| archs.contains(&f.architecture()))
    {
        return Ok(f);
    }
    Err(model_err(format!(
        "config.json: no model_type (or architectures) saying {}",
        supported.replace(" and ", " or ")
    )))
}

/// A JSON object plus the path used in error messages (`config.json: text_config.`).
struct Section<'a> {
    obj: Option<&'a Map<String, Value>>,
    prefix: String,
}

impl<'a> Section<'a> {
    fn root(obj: &'a Map<String, Value>) -> Self {
        Section {
            obj: Some(obj),
            prefix: String::new(),
        }
    }

    fn field(&self, key: &str) -> Option<&'a Value> {
        self.obj?.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        model_err(format!(
            "config.json: {}{key} must be {want}, got {got}",
            self.prefix
        ))
    }

    /// A nested object; missing means "all defaults", as in transformers.
    fn sub(&self, key: &str) -> Result<Section<'a>, Error> {
        let prefix = format!("{}{key}.", self.prefix);
        match self.field(key) {
            None => Ok(Section { obj: None, prefix }),
            Some(Value::Object(m)) => Ok(Section {
                obj: Some(m),
                prefix,
            }),
            Some(v) => Err(self.wrong(key, "an object", v)),
        }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, Error> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    fn positive(&self, key: &str, default: usize) -> Result<usize, Error> {
        match self.usize(key, default)? {
            0 => Err(model_err(format!(
                "config.json: {}{key} must be positive",
                self.prefix
            ))),
            n => Ok(n),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64, Error> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.field(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    fn activation(&self, key: &str, default: Activation) -> Result<Activation, Error> {
        match self.field(key) {
            None => Ok(default),
            Some(Value::String(s)) => Activation::parse(s).ok_or_else(|| {
                model_err(format!(
                    "config.json: {}{key} '{s}' is not supported (quick_gelu, gelu, gelu_new, \
                     gelu_pytorch_tanh, gelu_fast, relu, silu)",
                    self.prefix
                ))
            }),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// An int or an `[height, width]` pair.
    fn size2(&self, key: &str, default: usize) -> Result<(usize, usize), Error> {
        let v = match self.field(key) {
            None => return Ok((default, default)),
            Some(v) => v,
        };
        let pair = match v {
            Value::Number(n) => n.as_u64().map(|n| (n, n)),
            Value::Array(a) if a.len() == 2 => a[0].as_u64().zip(a[1].as_u64()),
            _ => None,
        };
        match pair {
            Some((h, w)) if h > 0 && w > 0 => Ok((h as usize, w as usize)),
            _ => Err(self.wrong(key, "a positive integer or [height, width]", v)),
        }
    }

    fn encoder(
        &self,
        defaults: &EncoderConfig,
        qkv_bias_key: Option<&str>,
    ) -> Result<EncoderConfig, Error> {
        let hidden_size = self.positive("hidden_size", defaults.hidden_size)?;
        let num_attention_heads =
            self.positive("num_attention_heads", defaults.num_attention_heads)?;
        if hidden_size % num_attention_heads != 0 {
            return Err(model_err(format!(
                "config.json: {}hidden_size {hidden_size} is not a multiple of \
                 num_attention_heads {num_attention_heads}",
                self.prefix
            )));
        }
        Ok(EncoderConfig {
            hidden_size,
            num_attention_heads,
            intermediate_size: self.positive("intermediate_size", defaults.intermediate_size)?,
            num_hidden_layers: self.usize("num_hidden_layers", defaults.num_hidden_layers)?,
            hidden_act: self.activation("hidden_act", defaults.hidden_act)?,
            layer_norm_eps: self.f64("layer_norm_eps", defaults.layer_norm_eps)?,
            qkv_bias: match qkv_bias_key {
                Some(k) => self.bool(k, defaults.qkv_bias)?,
                None => defaults.qkv_bias,
            },
        })
    }

    fn vision(
        &self,
        defaults: &VisionConfig,
        qkv_bias_key: Option<&str>,
    ) -> Result<VisionConfig, Error> {
        Ok(VisionConfig {
            encoder: self.encoder(&defaults.encoder, qkv_bias_key)?,
            num_channels: self.positive("num_channels", defaults.num_channels)?,
            image_size: self.size2("image_size", defaults.image_size.0)?,
            patch_size: self.size2("patch_size", defaults.patch_size.0)?,
        })
    }
}

impl ClipConfig {
    /// transformers' defaults: openai/clip-vit-base-patch32.
    pub fn default_b32() -> Self {
        ClipConfig {
            text: ClipTextConfig {
                encoder: EncoderConfig {
                    hidden_size: 512,
                    intermediate_size: 2048,
                    num_hidden_layers: 12,
                    num_attention_heads: 8,
                    hidden_act: Activation::QuickGelu,
                    layer_norm_eps: 1e-5,
                    qkv_bias: true,
                },
                vocab_size: 49408,
                max_position_embeddings: 77,
                eos_token_id: 49407,
            },
            vision: VisionConfig {
                encoder: EncoderConfig {
                    hidden_size: 768,
                    intermediate_size: 3072,
                    num_hidden_layers: 12,
                    num_attention_heads: 12,
                    hidden_act: Activation::QuickGelu,
                    layer_norm_eps: 1e-5,
                    qkv_bias: true,
                },
                num_channels: 3,
                image_size: (224, 224),
                patch_size: (32, 32),
            },
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    pub fn from_json(cfg: &Map<String, Value>) -> Result<Self, Error> {
        let d = Self::default_b32();
        let root = Section::root(cfg);
        let text = root.sub("text_config")?;
        let vision = root.sub("vision_config")?;
        let eos_token_id = match text.field("eos_token_id") {
            None => d.text.eos_token_id,
            Some(v) => v
                .as_i64()
                .or_else(|| match v.as_array().map(Vec::as_slice) {
                    Some([one]) => one.as_i64(),
                    _ => None,
                })
                .ok_or_else(|| text.wrong("eos_token_id", "an integer", v))?,
        };
        Ok(ClipConfig {
            text: ClipTextConfig {
                encoder: text.encoder(&d.text.encoder, None)?,
                vocab_size: text.positive("vocab_size", d.text.vocab_size)?,
                max_position_embeddings: text
                    .positive("max_position_embeddings", d.text.max_position_embeddings)?,
                eos_token_id,
            },
            vision: vision.vision(&d.vision, None)?,
            // CLIPModel sizes both projections from the top-level projection_dim.
            projection_dim: root.positive("projection_dim", d.projection_dim)?,
            logit_scale_init_value: root.f64("logit_scale_init_value", d.logit_scale_init_value)?,
        })
    }
}

impl VitConfig {
    /// transformers' `ViTConfig()` defaults (google/vit-base-patch16-224 without its labels).
    pub fn default_vision() -> VisionConfig {
        VisionConfig {
            encoder: EncoderConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                hidden_act: Activation::Gelu,
                layer_norm_eps: 1e-12,
                qkv_bias: true,
            },
            num_channels: 3,
            image_size: (224, 224),
            patch_size: (16, 16),
        }
    }

    pub fn from_json(cfg: &Map<String, Value>) -> Result<Self, Error> {
        let root = Section::root(cfg);
        let vision = root.vision(&Self::default_vision(), Some("qkv_bias"))?;
        Ok(VitConfig {
            vision,
            id2label: id2label(&root)?,
        })
    }
}

/// `id2label` ordered by index, `LABEL_i` for gaps; without `id2label`, `num_labels` (default 2)
/// `LABEL_i`s, as `PretrainedConfig` does.
fn id2label(root: &Section) -> Result<Vec<String>, Error> {
    let map = match root.field("id2label") {
        None => {
            let n = root.usize("num_labels", 2)?;
            return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
        }
        Some(Value::Object(m)) => m,
        Some(v) => return Err(root.wrong("id2label", "an object", v)),
    };
    let mut entries = Vec::with_capacity(map.len());
    for (k, v) in map {
        let idx: usize = k.trim().parse().map_err(|_| {
            model_err(format!(
                "config.json: id2label key '{k}' is not a class index"
            ))
        })?;
        let name = v
            .as_str()
            .ok_or_else(|| root.wrong(&format!("id2label.{k}"), "a string", v))?;
        entries.push((idx, name.to_string()));
    }
    let n = entries.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
    let mut labels: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
    for (i, name) in entries {
        labels[i] = name;
    }
    Ok(labels)
}

/// SigLIP's text tower (`SiglipTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipTextConfig {
    pub encoder: EncoderConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Output width of the text head (`projection_size`, default `hidden_size`).
    pub projection_size: usize,
}

/// `SiglipConfig` (model_type `siglip`: SigLIP and the fixed-resolution SigLIP 2 checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipConfig {
    pub text: SiglipTextConfig,
    pub vision: VisionConfig,
}

/// The text length transformers' zero-shot pipeline pads SigLIP prompts to.
pub const SIGLIP_TEXT_LENGTH: usize = 64;

impl SiglipConfig {
    /// transformers' defaults: google/siglip-base-patch16-224.
    pub fn default_base() -> Self {
        let encoder = EncoderConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
        };
        SiglipConfig {
            text: SiglipTextConfig {
                encoder: encoder.clone(),
                vocab_size: 32000,
                max_position_embeddings: 64,
                projection_size: 768,
            },
            vision: VisionConfig {
                encoder,
                num_channels: 3,
                image_size: (224, 224),
                patch_size: (16, 16),
            },
        }
    }

    pub fn from_json(cfg: &Map<String, Value>) -> Result<Self, Error> {
        let d = Self::default_base();
        let root = Section::root(cfg);
        let text = root.sub("text_config")?;
        let vision = root.sub("vision_config")?;
        if !vision.bool("vision_use_head", true)? {
            return Err(model_err(
                "config.json: vision_config.vision_use_head is false; a SiglipModel's image \
                 embedding is its attention-pooling head's output, so Glimpse needs the head",
            ));
        }
        let encoder = text.encoder(&d.text.encoder, None)?;
        let projection_size = text.positive("projection_size", encoder.hidden_size)?;
        let vision = vision.vision(&d.vision, None)?;
        if projection_size != vision.encoder.hidden_size {
            return Err(model_err(format!(
                "config.json: text_config.projection_size {projection_size} differs from \
                 vision_config.hidden_size {}; the two embeddings must share a width",
                vision.encoder.hidden_size
            )));
        }
        if vision.image_size.0 % vision.patch_size.0 != 0
            || vision.image_size.1 % vision.patch_size.1 != 0
        {
            return Err(model_err(format!(
                "config.json: vision_config.image_size {:?} is not a multiple of patch_size {:?}",
                vision.image_size, vision.patch_size
            )));
        }
        Ok(SiglipConfig {
            text: SiglipTextConfig {
                vocab_size: text.positive("vocab_size", d.text.vocab_size)?,
                max_position_embeddings: text
                    .positive("max_position_embeddings", d.text.max_position_embeddings)?,
                projection_size,
                encoder,
            },
            vision,
        })
    }

    /// The length every prompt is padded (and truncated) to: 64, as transformers' zero-shot
    /// pipeline pads SigLIP text, or the position table's size if that is shorter.
    pub fn text_length(&self) -> usize {
        SIGLIP_TEXT_LENGTH.min(self.text.max_position_embeddings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn empty_clip_config_is_openai_b32() {
        assert_eq!(
            ClipConfig::from_json(&obj("{}")).unwrap(),
            ClipConfig::default_b32()
        );
    }

    #[test]
    fn fields_override_defaults_and_pairs_are_accepted() {
        let c = ClipConfig::from_json(&obj(
            r#"{"projection_dim": 16, "text_config": {"hidden_size": 32, "num_attention_heads": 4,
                "eos_token_id": 2, "layer_norm_eps": null},
                "vision_config": {"hidden_act": "gelu", "image_size": [30, 40], "patch_size": 10}}"#,
        ))
        .unwrap();
        assert_eq!(c.projection_dim, 16);
        assert_eq!(c.text.encoder.hidden_size, 32);
        assert_eq!(c.text.encoder.layer_norm_eps, 1e-5);
        assert_eq!(c.text.eos_token_id, 2);
        assert_eq!(c.vision.encoder.hidden_act, Activation::Gelu);
        assert_eq!(c.vision.grid(), (3, 4));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = ClipConfig::from_json(&obj(r#"{"vision_config": {"hidden_size": "big"}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vision_config.hidden_size"), "{e}");
        let e = VitConfig::from_json(&obj(r#"{"qkv_bias": 1}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("qkv_bias"), "{e}");
        let e = VitConfig::from_json(&obj(r#"{"hidden_act": "mish"}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act 'mish'"), "{e}");
        let e = VitConfig::from_json(&obj(r#"{"hidden_size": 100, "num_attention_heads": 12}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple"), "{e}");
    }

    #[test]
    fn id2label_is_ordered_with_gaps_filled() {
        let c = VitConfig::from_json(&obj(r#"{"id2label": {"2": "c", "0": "a"}}"#)).unwrap();
        assert_eq!(c.id2label, ["a", "LABEL_1", "c"]);
        let c = VitConfig::from_json(&obj("{}")).unwrap();
        assert_eq!(c.id2label, ["LABEL_0", "LABEL_1"]);
    }

    #[test]
    fn kind_from_model_type_or_architectures() {
        assert_eq!(
            kind_of(&obj(r#"{"model_type": "vit"}"#)).unwrap(),
            ModelFamily::Vit
        );
        assert_eq!(
            kind_of(&obj(r#"{"architectures": ["CLIPModel"]}"#)).unwrap(),
            ModelFamily::Clip
        );
        let e = kind_of(&obj(r#"{"model_type": "bert"}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown model_type 'bert'"), "{e}");
        // An unknown model_type is not overridden by a known architectures entry.
        let e = kind_of(&obj(
            r#"{"model_type": "convnext", "architectures": ["ViTForImageClassification"]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown model_type 'convnext'"), "{e}");
    }
}
