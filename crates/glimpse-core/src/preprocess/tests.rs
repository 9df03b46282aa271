use super::*;

const CLIP_NEW: &str = r#"{
  "crop_size": {"height": 224, "width": 224},
  "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
  "do_resize": true,
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_processor_type": "CLIPImageProcessor",
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3, "rescale_factor": 0.00392156862745098,
  "size": {"shortest_edge": 224}
}"#;

const CLIP_OLD: &str = r#"{
  "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
  "feature_extractor_type": "CLIPFeatureExtractor",
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3, "size": 224
}"#;

const VIT_OLD: &str = r#"{
  "do_normalize": true, "do_resize": true,
  "feature_extractor_type": "ViTFeatureExtractor",
  "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
  "resample": 2, "size": 224
}"#;

#[test]
fn clip_new_and_old_styles_agree() {
    let new = PreprocessConfig::from_json_str(CLIP_NEW).unwrap();
    let old = PreprocessConfig::from_json_str(CLIP_OLD).unwrap();
    assert_eq!(new, old);
    assert_eq!(new.size, ResizeTarget::ShortestEdge(224));
    assert_eq!(new.crop_size, (224, 224));
    assert_eq!(new.resample, 3);
    assert!(new.do_center_crop);
    assert_eq!(new.output_size(), (224, 224));
    // The real openai processor configs are what the `clip` constructor builds.
    assert_eq!(new, PreprocessConfig::clip(224));
}

#[test]
fn vit_int_size_is_square() {
    let c = PreprocessConfig::from_json_str(VIT_OLD).unwrap();
    assert_eq!(c.size, ResizeTarget::Exact(224, 224));
    assert!(!c.do_center_crop);
    assert_eq!(c.resample, 2);
    assert_eq!(c.rescale_factor, 1.0 / 255.0);
    assert_eq!(c.output_size(), (224, 224));
}

#[test]
fn defaults_follow_the_processor_type() {
    let clip = PreprocessConfig::from_json_str(r#"{"image_processor_type": "CLIPImageProcessor"}"#)
        .unwrap();
    assert_eq!(clip.resample, 3);
    assert_eq!(clip.image_mean, CLIP_MEAN);
    assert_eq!(clip.size, ResizeTarget::ShortestEdge(224));
    let vit = PreprocessConfig::from_json_str(
        r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 48}}"#,
    )
    .unwrap();
    assert_eq!(vit.resample, 2);
    assert_eq!(vit.image_std, IMAGENET_STANDARD_STD);
    assert_eq!(vit.output_size(), (32, 48));
}

fn model_error(json: &str) -> String {
    match PreprocessConfig::from_json_str(json) {
        Err(e @ CoreError::Model { .. }) => e.to_string(),
        other => panic!("expected a Model error, got {other:?}"),
    }
}

#[test]
fn malformed_fields_name_the_field() {
    assert!(model_error("[1]").contains("object"));
    assert!(model_error("{").contains("JSON"));
    assert!(
        model_error(r#"{"feature_extractor_type":"ViTFeatureExtractor","size":"big"}"#)
            .contains("`size`")
    );
    assert!(
        model_error(r#"{"feature_extractor_type":"ViTFeatureExtractor","size":0}"#)
            .contains("`size`")
    );
    assert!(
        model_error(r#"{"feature_extractor_type":"ViTFeatureExtractor","resample":9}"#)
            .contains("`resample`")
    );
    assert!(
        model_error(r#"{"feature_extractor_type":"ViTFeatureExtractor","image_mean":[1,2]}"#)
            .contains("`image_mean`")
    );
    assert!(
        model_error(r#"{"feature_extractor_type":"ViTFeatureExtractor","do_resize":"yes"}"#)
            .contains("`do_resize`")
    );
    assert!(model_error(
        r#"{"image_processor_type":"CLIPImageProcessor","crop_size":{"shortest_edge":3}}"#
    )
    .contains("`crop_size`"));
    // Unknown processor: nothing to default the mean from.
    assert!(
        model_error(r#"{"size": {"height": 8, "width": 8}, "resample": 2}"#)
            .contains("`image_mean`")
    );
    // Variable output size cannot feed a fixed-size model.
    assert!(
        model_error(r#"{"image_processor_type":"CLIPImageProcessor","do_center_crop":false}"#)
            .contains("do_center_crop")
    );
}

#[test]
fn shortest_edge_size_matches_python_int_division() {
    let c = PreprocessConfig::from_json_str(CLIP_NEW).unwrap();
    assert_eq!(c.resized_size(480, 640), (224, 298)); // int(224 * 640 / 480) = 298
    assert_eq!(c.resized_size(640, 480), (298, 224));
    assert_eq!(c.resized_size(100, 100), (224, 224));
    assert_eq!(c.resized_size(3, 1000), (224, 74666));
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 128]))
}

#[test]
fn output_is_channels_first_and_normalised() {
    let c = PreprocessConfig::from_json_str(
        r#"{"image_processor_type":"ViTImageProcessor","size":{"height":4,"width":6},"resample":0}"#,
    )
    .unwrap();
    // Same size: no resampling, so the values are the pixels themselves.
    let img = gradient(6, 4);
    let t = c.preprocess(&img);
    assert_eq!(t.len(), 3 * 4 * 6);
    let at = |ch: usize, y: usize, x: usize| t[ch * 24 + y * 6 + x];
    let expect = |v: u8| ((v as f64 / 255.0) as f32 - 0.5) / 0.5;
    assert_eq!(at(0, 2, 3), expect(15));
    assert_eq!(at(1, 3, 1), expect(9));
    assert_eq!(at(2, 0, 5), expect(128));
}

#[test]
fn small_image_is_padded_with_zeros_centred() {
    // No resize, crop 5x5 out of a 2x3 (h x w) image: padding top ceil(3/2)=2, left ceil(2/2)=1.
    let c = PreprocessConfig::from_json_str(
        r#"{"image_processor_type":"CLIPImageProcessor","do_resize":false,
            "crop_size":{"height":5,"width":5},"do_normalize":false,"do_rescale":false}"#,
    )
    .unwrap();
    let img = image::RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
    let t = c.preprocess(&img);
    let red: Vec<f32> = t[..25].to_vec();
    let ones: Vec<(usize, usize)> = (0..25)
        .filter(|i| red[*i] != 0.0)
        .map(|i| (i / 5, i % 5))
        .collect();
    assert_eq!(ones, [(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)]);
}

#[test]
fn centre_crop_uses_floor_offsets() {
    // 7 wide, crop 4: left = (7 - 4) // 2 = 1.
    let c = PreprocessConfig::from_json_str(
        r#"{"image_processor_type":"CLIPImageProcessor","do_resize":false,
            "crop_size":{"height":1,"width":4},"do_normalize":false,"do_rescale":false}"#,
    )
    .unwrap();
    let img = gradient(7, 3);
    let t = c.preprocess(&img);
    assert_eq!(&t[..4], &[5.0, 10.0, 15.0, 20.0]);
    // Green plane starts at 4 (1 x 4 output); the crop's row is (3 - 1) // 2 = 1, green = 1 * 3.
    assert_eq!(t[4], 3.0);
}

#[test]
fn extreme_aspect_ratio_does_not_materialise_the_full_resize() {
    let c = PreprocessConfig::from_json_str(CLIP_NEW).unwrap();
    // 1 x 12000 would resize to 224 x 2_688_000 before cropping.
    let img = image::RgbImage::from_pixel(1, 12_000, image::Rgb([200, 100, 50]));
    let t = c.preprocess(&img);
    assert_eq!(t.len(), 3 * 224 * 224);
    let expect = ((200.0f64 / 255.0) as f32 - CLIP_MEAN[0]) / CLIP_STD[0];
    assert!(t[..224 * 224].iter().all(|v| *v == expect));
}

#[test]
fn empty_image_gives_padding_not_a_panic() {
    let c = PreprocessConfig::from_json_str(CLIP_NEW).unwrap();
    let t = c.preprocess(&image::RgbImage::new(0, 0));
    assert_eq!(t.len(), 3 * 224 * 224);
    assert_eq!(t[0], (0.0 - CLIP_MEAN[0]) / CLIP_STD[0]);
}

#[test]
fn hand_built_zero_sizes_do_not_panic() {
    let mut c = PreprocessConfig::from_json_str(CLIP_NEW).unwrap();
    c.size = ResizeTarget::ShortestEdge(0);
    assert_eq!(c.preprocess(&gradient(5, 5)).len(), 3 * 224 * 224);
    c.crop_size = (0, 7);
    assert!(c.preprocess(&gradient(5, 5)).is_empty());
}

#[test]
fn deit_int_size_is_a_square_then_cropped() {
    // facebook/deit-base-distilled-patch16-224's preprocessor_config.json.
    let c = PreprocessConfig::from_json_str(
        r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 256}"#,
    )
    .unwrap();
    assert_eq!(c.size, ResizeTarget::Exact(256, 256));
    assert!(c.do_center_crop);
    assert_eq!(c.output_size(), (224, 224));
    let d = PreprocessConfig::from_json_str(r#"{"image_processor_type": "DeiTImageProcessor"}"#)
        .unwrap();
    assert_eq!(d.size, ResizeTarget::Exact(256, 256));
    assert_eq!(d.resample, 3);
    assert_eq!(d.output_size(), (224, 224));
}
