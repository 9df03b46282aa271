//! CLIP against transformers' outputs on the tiny reference models: tokenizer ids, text and image
//! embeddings, logits and probabilities, for safetensors (f32, fp16, bf16) and pytorch_model.bin
//! weights, at several sizes and sources (openai B/32-, B/16-, L/14@336-shaped; LAION-shaped).

use crate::common::*;
use glimpse_candle::{load_clip, ClipModel, LoadOptions};
use glimpse_core::backend::{PixelBatch, ZeroShotModel};
use glimpse_core::scoring::{clip_probabilities, ensemble};

const TOL: f32 = 1e-4;

fn load(name: &str) -> ClipModel {
    load_clip(&model_dir(name), &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn logits(img: &[f32], texts: &[Vec<f32>], scale: f32) -> Vec<f32> {
    texts
        .iter()
        .map(|t| scale * img.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
        .collect()
}

fn check_model(name: &str) {
    let model = load(name);
    let exp = expected(name);
    let prompts = strings(&exp["prompts"]);

    // Tokenizer ids as transformers made them, then the text tower on those ids and on the text.
    let ids: Vec<Vec<u32>> = exp["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    assert_eq!(
        model.tokenizer().unwrap().encode_batch(&prompts).unwrap(),
        ids,
        "{name} ids"
    );
    let want_text = rows(&exp["text_embeds"]);
    let text = model.embed_texts(&prompts).unwrap();
    let d_text = max_abs_diff_rows(&text, &want_text);
    let d_ids = max_abs_diff_rows(&model.embed_token_ids(&ids).unwrap(), &want_text);

    let scale = model.logit_scale();
    let want_scale = exp["logit_scale_exp"].as_f64().unwrap() as f32;
    assert!(
        (scale - want_scale).abs() <= TOL * want_scale,
        "{name} scale {scale} vs {want_scale}"
    );

    let (mut d_img, mut d_logit, mut d_prob) = (0f32, 0f32, 0f32);
    let cases = images_with_pixels(&exp);
    assert!(!cases.is_empty(), "{name}: no reference pixels");
    for (img_name, rel, e) in &cases {
        let emb = model.embed_images(&single(pixels(rel))).unwrap().remove(0);
        d_img = d_img.max(max_abs_diff(&emb, &f32s(&e["image_embeds"])));
        d_logit = d_logit.max(max_abs_diff(
            &logits(&emb, &text, scale),
            &f32s(&e["logits"]),
        ));
        let p = clip_probabilities(&emb, &text, scale);
        d_prob = d_prob.max(max_abs_diff(&p, &f32s(&e["probs"])));
        assert!(
            d_img <= TOL,
            "{name}/{img_name}: image_embeds differ by {d_img}"
        );
    }
    eprintln!(
        "{name}: max |diff| text {d_text:.2e} (from ids {d_ids:.2e}), image {d_img:.2e}, \
         logits {d_logit:.2e}, probs {d_prob:.2e} over {} images",
        cases.len()
    );
    assert!(
        d_text <= TOL && d_ids <= TOL,
        "{name}: text {d_text} / {d_ids}"
    );
    assert!(d_logit <= TOL, "{name}: logits {d_logit}");
    assert!(d_prob <= TOL, "{name}: probs {d_prob}");

    // The reference batch, and batch == singles.
    let names = strings(&exp["batch"]["images"]);
    let side = model.config().vision.image_size.0;
    let px: Vec<Vec<f32>> = names
        .iter()
        .map(|n| pixels(exp["images"][n]["pixel_values"].as_str().unwrap()))
        .collect();
    let batch = model
        .embed_images(&PixelBatch::stack(&px, side, side))
        .unwrap();
    let singles: Vec<Vec<f32>> = px
        .into_iter()
        .map(|p| model.embed_images(&single(p)).unwrap().remove(0))
        .collect();
    let d_batch = max_abs_diff_rows(&batch, &singles);
    assert!(d_batch <= 1e-5, "{name}: batch vs singles {d_batch}");
    let probs: Vec<Vec<f32>> = batch
        .iter()
        .map(|b| clip_probabilities(b, &text, scale))
        .collect();
    let d_bprob = max_abs_diff_rows(&probs, &rows(&exp["batch"]["probs"]));
    eprintln!(
        "{name}: batch of {} vs singles {d_batch:.2e}, batch probs {d_bprob:.2e}",
        names.len()
    );
    assert!(d_bprob <= TOL, "{name}: batch probs {d_bprob}");
}

#[test]
fn clip_tiny_safetensors_matches_transformers() {
    check_model("clip-tiny");
}

#[test]
fn clip_tiny_pytorch_bin_matches_transformers() {
    check_model("clip-tiny-bin");
}

#[test]
fn clip_tiny_b16_matches_transformers() {
    check_model("clip-tiny-b16");
}

/// openai/clip-vit-large-patch14-336's shape scaled down: patch 14 at 56 px (not 224), text and
/// vision widths that differ, a projection unlike both, an old-style preprocessor config; fp16
/// weights.
#[test]
fn clip_l14_336_shape_matches_transformers() {
    let model = load("clip-tiny-l14-336");
    let c = model.config();
    assert_eq!(
        (c.vision.image_size, c.vision.patch_size),
        ((56, 56), (14, 14))
    );
    assert_eq!(
        (
            c.text.encoder.hidden_size,
            c.vision.encoder.hidden_size,
            c.projection_dim
        ),
        (4, 24, 12)
    );
    check_model("clip-tiny-l14-336");
}

/// A LAION/OpenCLIP checkpoint converted to `CLIPModel`: gelu, its own layer_norm_eps (1e-3 text,
/// 1e-2 vision: read as the default 1e-5 they would move the probabilities by 4e-3, see the
/// reference's `sensitivity`), its own projection size, the legacy `eos_token_id: 2`, pad token
/// `!`; bf16 weights.
#[test]
fn clip_laion_shape_matches_transformers() {
    let model = load("clip-tiny-laion");
    let c = model.config();
    assert_eq!(c.text.encoder.layer_norm_eps, 1e-3);
    assert_eq!(c.vision.encoder.layer_norm_eps, 1e-2);
    assert_eq!(c.text.eos_token_id, 2);
    assert_eq!(model.tokenizer().unwrap().pad_id(), 0, "pad token '!'");
    let moved = expected("clip-tiny-laion")["sensitivity"]["layer_norm_eps_as_default"]
        .as_f64()
        .unwrap();
    assert!(
        moved > 10.0 * f64::from(TOL),
        "eps must matter here: {moved}"
    );
    check_model("clip-tiny-laion");
}

#[test]
fn prompt_ensemble_matches_transformers() {
    let model = load("clip-tiny");
    let exp = expected("clip-tiny");
    let templates = strings(&exp["ensemble"]["templates"]);
    let mut got = Vec::new();
    for label in strings(&exp["labels"]) {
        let prompts: Vec<String> = templates
            .iter()
            .map(|t| t.replace("{label}", &label))
            .collect();
        got.push(ensemble(&model.embed_texts(&prompts).unwrap()));
    }
    let d = max_abs_diff_rows(&got, &rows(&exp["ensemble"]["text_embeds"]));
    eprintln!("clip-tiny ensemble text embeds: max |diff| {d:.2e}");
    assert!(d <= TOL, "{d}");
}

#[test]
fn padding_after_the_end_token_changes_nothing() {
    let model = load("clip-tiny");
    let texts = vec![
        "car".to_string(),
        "a photo of a very long motorcycle on a road".to_string(),
    ];
    let together = model.embed_texts(&texts).unwrap();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            model
                .embed_texts(std::slice::from_ref(t))
                .unwrap()
                .remove(0)
        })
        .collect();
    let d = max_abs_diff_rows(&together, &alone);
    assert!(
        d <= 1e-5,
        "padded vs unpadded text embeddings differ by {d}"
    );
}

/// Legacy configs (`eos_token_id: 2`, like openai/clip-vit-base-patch32's) pool at
/// `argmax(input_ids)`; on tokenizer output that is the end token, so the answer is unchanged.
/// Without an end token the two rules part: first-eos falls back to position 0, argmax does not.
#[test]
fn legacy_eos_token_id_pools_at_the_largest_id() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir("clip-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["eos_token_id"] = 2.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let legacy = load_clip(dir.path(), &LoadOptions::default()).unwrap();
    let modern = load("clip-tiny");
    let exp = expected("clip-tiny");
    let d = max_abs_diff_rows(
        &legacy.embed_texts(&strings(&exp["prompts"])).unwrap(),
        &rows(&exp["text_embeds"]),
    );
    assert!(d <= TOL, "{d}");

    let no_eos = vec![vec![320u32, 1125, 49406]];
    let (a, b) = (
        legacy.embed_token_ids(&no_eos).unwrap(),
        modern.embed_token_ids(&no_eos).unwrap(),
    );
    let first = modern.embed_token_ids(&[vec![320u32]]).unwrap();
    assert!(
        max_abs_diff_rows(&a, &b) > 1e-3,
        "the rules should differ here"
    );
    assert!(
        max_abs_diff_rows(&b, &first) <= 1e-6,
        "first-eos without eos pools position 0"
    );
}
