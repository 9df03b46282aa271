//! Random-weight models at the real architectures' sizes, for `glimpse bench`.

use glimpse_candle::{random_clip, random_vit, ClipPreset, ModelFamily, VitPreset};
use glimpse_core::backend::{ImageClassifier, PixelBatch, ZeroShotModel};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::CoreError;

fn image(side: usize) -> PixelBatch {
    let data = (0..3 * side * side)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    PixelBatch {
        data,
        batch: 1,
        height: side,
        width: side,
    }
}

#[test]
fn random_clip_has_the_openai_shapes() {
    for preset in [ClipPreset::B32, ClipPreset::B16] {
        let model = random_clip(preset);
        let (h, w) = model.preprocess_config().output_size();
        assert_eq!((h, w), (224, 224));
        assert_eq!(
            model.config().vision.patch_size.0,
            if preset == ClipPreset::B32 { 32 } else { 16 }
        );
        let emb = model.embed_images(&image(224)).unwrap();
        assert_eq!(emb[0].len(), 512);
        let norm: f32 = emb[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!((model.logit_scale() - 2.6592f32.exp()).abs() < 1e-3);
        // No tokenizer: a clear error, while token ids still run through the text tower.
        match model.embed_texts(&["a photo of a car.".to_string()]) {
            Err(CoreError::Model { message: m, .. }) => assert!(m.contains("no tokenizer"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            model.embed_token_ids(&[vec![49406, 320, 49407]]).unwrap()[0].len(),
            512
        );
    }
}

#[test]
fn random_vit_has_imagenet_shapes() {
    let model = random_vit(VitPreset::B16);
    assert_eq!(model.id2label().len(), 1000);
    let probs = model.classify(&image(224)).unwrap();
    assert_eq!(probs[0].len(), 1000);
    assert!((probs[0].iter().sum::<f32>() - 1.0).abs() < 1e-4);
}

/// The DeiT presets are DeiT: the distillation token makes 198 tokens, the distilled one has
/// two heads, and the small one is 384 wide.
#[test]
fn random_deit_presets_have_their_shapes() {
    for preset in [VitPreset::DeitB16, VitPreset::DeitS16] {
        let model = random_vit(preset);
        assert_eq!(model.family(), ModelFamily::Deit, "{preset:?}");
        assert_eq!(model.is_distilled(), preset == VitPreset::DeitB16);
        assert_eq!(model.preprocess_config().output_size(), (224, 224));
        let probs = model.classify(&image(224)).unwrap();
        assert_eq!(probs[0].len(), 1000);
        assert!((probs[0].iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    let width = |p: VitPreset| p.config().vision.encoder.hidden_size;
    assert_eq!(
        (width(VitPreset::DeitB16), width(VitPreset::DeitS16)),
        (768, 384)
    );
}

#[test]
fn presets_parse_by_name() {
    assert_eq!("clip-b16".parse::<ClipPreset>().unwrap(), ClipPreset::B16);
    assert_eq!("vit-b16".parse::<VitPreset>().unwrap(), VitPreset::B16);
    assert_eq!("deit-b16".parse::<VitPreset>().unwrap(), VitPreset::DeitB16);
    assert_eq!("deit-s16".parse::<VitPreset>().unwrap(), VitPreset::DeitS16);
    assert!("deit-t16".parse::<VitPreset>().is_err());
    assert!("clip-l14".parse::<ClipPreset>().is_ok());
    assert!("clip-h14".parse::<ClipPreset>().is_err());
}

/// The fixture folders carry the openai CLIP and google ViT `preprocessor_config.json` verbatim.
#[test]
fn preset_preprocessing_is_the_real_models() {
    let root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
    let clip =
        PreprocessConfig::from_file(&root.join("clip-tiny/preprocessor_config.json")).unwrap();
    assert_eq!(ClipPreset::B32.preprocess(), clip);
    assert_eq!(ClipPreset::B16.preprocess(), clip);
    let vit = PreprocessConfig::from_file(&root.join("vit-tiny/preprocessor_config.json")).unwrap();
    assert_eq!(VitPreset::B16.preprocess(), vit);
    // The tiny DeiT fixture's processor is the real one scaled down (72 → 64 for 256 → 224).
    let deit =
        PreprocessConfig::from_file(&root.join("deit-tiny/preprocessor_config.json")).unwrap();
    let real = VitPreset::DeitB16.preprocess();
    assert_eq!(real, VitPreset::DeitS16.preprocess());
    assert_eq!(
        (
            real.resample,
            real.do_center_crop,
            real.image_mean,
            real.image_std
        ),
        (
            deit.resample,
            deit.do_center_crop,
            deit.image_mean,
            deit.image_std
        )
    );
    assert_eq!(real.output_size(), (224, 224));
}
