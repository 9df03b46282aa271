//! SigLIP and SigLIP 2 against transformers on the tiny reference models: tokenizer ids (SigLIP
//! v1's SentencePiece `spiece.model`, SigLIP 2's Gemma `tokenizer.json`, padded to 64), text and
//! image embeddings, `logit_scale` and `logit_bias`, and the zero-shot pipeline's sigmoid scores,
//! for safetensors and pytorch_model.bin weights, a batch against single images.

use crate::common::*;
use glimpse_candle::{load_siglip, LoadOptions, Precision, SiglipModel};
use glimpse_core::backend::{PixelBatch, Scoring, ZeroShotModel};
use glimpse_core::scoring::{ensemble, zero_shot_scores};

const TOL: f32 = 1e-4;

fn load(name: &str) -> SiglipModel {
    load_siglip(&model_dir(name), &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn id_rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn check_model(name: &str) {
    let model = load(name);
    let exp = expected(name);
    let prompts = strings(&exp["prompts"]);
    let tok = model.tokenizer().unwrap();
    let ids = id_rows(&exp["input_ids"]);
    assert_eq!(tok.encode_batch(&prompts).unwrap().ids, ids, "{name} ids");
    assert!(ids.iter().all(|r| r.len() == 64), "padded to 64");

    let want_text = rows(&exp["text_embeds"]);
    let text = model.embed_texts(&prompts).unwrap();
    let d_text = max_abs_diff_rows(&text, &want_text);
    assert!(d_text <= TOL, "{name}: text embeds differ by {d_text}");

    let scale = model.logit_scale();
    let want_scale = exp["logit_scale_exp"].as_f64().unwrap() as f32;
    assert!(
        (scale - want_scale).abs() <= TOL * want_scale,
        "{name} scale {scale} vs {want_scale}"
    );
    let want_bias = exp["logit_bias"].as_f64().unwrap() as f32;
    let Scoring::Sigmoid { bias } = model.scoring() else {
        panic!("{name}: SigLIP scores must be sigmoids");
    };
    assert!(
        (bias - want_bias).abs() <= TOL,
        "{name} bias {bias} vs {want_bias}"
    );

    let (mut d_img, mut d_logit, mut d_prob) = (0f32, 0f32, 0f32);
    let cases = images_with_pixels(&exp);
    assert!(cases.len() >= 4, "{name}: too few reference images");
    for (img_name, rel, e) in &cases {
        let emb = model.embed_images(&single(pixels(rel))).unwrap().remove(0);
        d_img = d_img.max(max_abs_diff(&emb, &f32s(&e["image_embeds"])));
        let logits: Vec<f32> = text
            .iter()
            .map(|t| scale * emb.iter().zip(t).map(|(a, b)| a * b).sum::<f32>() + bias)
            .collect();
        d_logit = d_logit.max(max_abs_diff(&logits, &f32s(&e["logits"])));
        let p = zero_shot_scores(&emb, &text, scale, model.scoring());
        d_prob = d_prob.max(max_abs_diff(&p, &f32s(&e["probs"])));
        assert!(
            d_img <= TOL,
            "{name}/{img_name}: image embeds differ by {d_img}"
        );
    }
    eprintln!(
        "{name}: max |diff| text {d_text:.2e}, image {d_img:.2e}, logits {d_logit:.2e}, \
         probs {d_prob:.2e} over {} images",
        cases.len()
    );
    assert!(d_logit <= TOL * 10.0, "{name}: logits {d_logit}");
    assert!(d_prob <= TOL, "{name}: probs {d_prob}");

    // The reference batch, and batch == singles.
    let names = strings(&exp["batch"]["images"]);
    let (h, w) = model.config().vision.image_size;
    let px: Vec<Vec<f32>> = names
        .iter()
        .map(|n| pixels(exp["images"][n]["pixel_values"].as_str().unwrap()))
        .collect();
    let batch = model.embed_images(&PixelBatch::stack(&px, h, w)).unwrap();
    let singles: Vec<Vec<f32>> = px
        .into_iter()
        .map(|p| model.embed_images(&single(p)).unwrap().remove(0))
        .collect();
    let d_batch = max_abs_diff_rows(&batch, &singles);
    assert!(d_batch <= 1e-5, "{name}: batch vs singles {d_batch}");
    let probs: Vec<Vec<f32>> = batch
        .iter()
        .map(|b| zero_shot_scores(b, &text, scale, model.scoring()))
        .collect();
    let d_bprob = max_abs_diff_rows(&probs, &rows(&exp["batch"]["probs"]));
    eprintln!(
        "{name}: batch of {} vs singles {d_batch:.2e}, batch probs {d_bprob:.2e}",
        names.len()
    );
    assert!(d_bprob <= TOL, "{name}: batch probs {d_bprob}");
    // Independent sigmoids: the reference's scores do not sum to 1.
    let sum: f32 = probs[0].iter().sum();
    assert!((sum - 1.0).abs() > 1e-3, "{name}: scores sum to {sum}");
}

#[test]
fn siglip_tiny_safetensors_matches_transformers() {
    check_model("siglip-tiny");
}

#[test]
fn siglip_tiny_pytorch_bin_matches_transformers() {
    check_model("siglip-tiny-bin");
}

#[test]
fn siglip2_tiny_matches_transformers() {
    check_model("siglip2-tiny");
}

#[test]
fn siglip2_tiny_pytorch_bin_matches_transformers() {
    check_model("siglip2-tiny-bin");
}

/// Every tokenizer case of the fixtures (punctuation, capitals, whitespace of every kind, NFKC,
/// unknown characters, literal special tokens, truncation of long text), ids as transformers'
/// `tokenizer(text, padding="max_length", truncation=True, max_length=64)` gives them.
#[test]
fn tokenizers_match_transformers_case_by_case() {
    for name in ["siglip-tiny", "siglip2-tiny"] {
        let model = load(name);
        let exp = expected(name);
        let tok = model.tokenizer().unwrap();
        let cases = exp["tokenizer_cases"].as_array().unwrap();
        assert!(cases.len() > 30, "{name}: too few cases");
        let mut wrong = Vec::new();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text).unwrap();
            if got != want {
                wrong.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{name}: {} cases differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        // A long text is truncated to 64 tokens, the end token kept last.
        let long = tok
            .encode_unpadded(&"the quick brown fox ".repeat(40))
            .unwrap();
        assert_eq!(long.len(), 64, "{name}");
        let short = tok.encode_unpadded("car").unwrap();
        assert_eq!(long.last(), short.last(), "{name}: the end token");
    }
}

#[test]
fn prompt_ensemble_matches_transformers() {
    let model = load("siglip-tiny");
    let exp = expected("siglip-tiny");
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
    assert!(d <= TOL, "ensemble text embeds differ by {d}");
}

/// A tokenizer config that asks for an attention mask gets the padding masked, as transformers
/// does when its tokenizer returns one (the real checkpoints' do not).
#[test]
fn attention_mask_is_honoured_when_the_tokenizer_config_asks() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir("siglip-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["model_input_names"] = serde_json::json!(["input_ids", "attention_mask"]);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let masked = load_siglip(dir.path(), &LoadOptions::default()).unwrap();
    let exp = expected("siglip-tiny");
    let prompts = strings(&exp["prompts"]);
    let got = masked.embed_texts(&prompts).unwrap();
    let d = max_abs_diff_rows(&got, &rows(&exp["masked_text"]["text_embeds"]));
    assert!(d <= TOL, "masked text embeds differ by {d}");
    let unmasked = max_abs_diff_rows(&got, &rows(&exp["text_embeds"]));
    assert!(unmasked > 1e-3, "the mask changed nothing ({unmasked})");
}

#[test]
fn a_folder_without_a_tokenizer_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(model_dir("siglip-tiny").join(f), dir.path().join(f)).unwrap();
    }
    let e = load_siglip(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spiece.model") && e.contains("tokenizer.json"),
        "{e}"
    );
}

/// bf16 and int8 run the image tower on the reduced kernels: cosine ≥ 0.999 to f32 (the bar the
/// CLIP and ViT fixtures meet), and not identical.
#[test]
fn reduced_precision_tracks_f32() {
    let exp = expected("siglip-tiny");
    let (_, rel, _) = images_with_pixels(&exp).remove(0);
    let px = single(pixels(&rel));
    let want = load("siglip-tiny").embed_images(&px).unwrap().remove(0);
    for precision in [Precision::Bf16, Precision::Int8] {
        let opts = LoadOptions {
            precision,
            threads: None,
        };
        let m = load_siglip(&model_dir("siglip-tiny"), &opts).unwrap();
        let got = m.embed_images(&px).unwrap().remove(0);
        let cos: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        eprintln!("siglip-tiny {precision:?}: cosine {cos:.6} to f32");
        assert!(cos >= 0.999, "{precision:?}: cosine {cos}");
        assert!(got != want, "{precision:?}: identical to f32");
    }
}

/// The text tower on the reduced kernels (bf16; int8 models run it in bf16, as CLIP's): every
/// prompt keeps cosine ≥ 0.999 to f32, every image's sigmoid scores stay within 0.02 of f32's
/// (README's bound for reduced precision), and the bf16 text really ran (not identical).
#[test]
fn reduced_precision_text_tracks_f32() {
    let exp = expected("siglip-tiny");
    let prompts = strings(&exp["prompts"]);
    let f32m = load("siglip-tiny");
    let want_text = f32m.embed_texts(&prompts).unwrap();
    let cases = images_with_pixels(&exp);
    let images: Vec<Vec<f32>> = cases
        .iter()
        .map(|(_, rel, _)| f32m.embed_images(&single(pixels(rel))).unwrap().remove(0))
        .collect();
    for precision in [Precision::Bf16, Precision::Int8] {
        let opts = LoadOptions {
            precision,
            threads: None,
        };
        let m = load_siglip(&model_dir("siglip-tiny"), &opts).unwrap();
        let text = m.embed_texts(&prompts).unwrap();
        for (i, (g, w)) in text.iter().zip(&want_text).enumerate() {
            let cos: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
            assert!(cos >= 0.999, "{precision:?} prompt {i}: cosine {cos}");
        }
        assert!(text != want_text, "{precision:?}: text identical to f32");
        let mut worst = 0f32;
        for ((img_name, rel, _), want_emb) in cases.iter().zip(&images) {
            let emb = m.embed_images(&single(pixels(rel))).unwrap().remove(0);
            let got = zero_shot_scores(&emb, &text, m.logit_scale(), m.scoring());
            let want = zero_shot_scores(want_emb, &want_text, f32m.logit_scale(), f32m.scoring());
            let d = max_abs_diff(&got, &want);
            worst = worst.max(d);
            assert!(d <= 0.02, "{precision:?} {img_name}: scores moved by {d}");
        }
        eprintln!("siglip-tiny {precision:?}: text and image, max |Δ score| {worst:.2e}");
    }
}

/// The bench presets build, and a random SigLIP embeds an image at 224 (row-normalised).
#[test]
fn random_siglip_preset_embeds_images() {
    use glimpse_candle::{random_siglip, SiglipPreset};
    let m = random_siglip(SiglipPreset::B16);
    assert_eq!(m.config().vision.image_size, (224, 224));
    let px = PixelBatch::stack(&[vec![0.1f32; 3 * 224 * 224]], 224, 224);
    let e = m.embed_images(&px).unwrap().remove(0);
    assert_eq!(e.len(), 768);
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
}
