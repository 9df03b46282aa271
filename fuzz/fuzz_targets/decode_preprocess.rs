//! Any bytes through the upload path: sniff → header-first limits → decode → CLIP preprocess.
//! Must never panic, and a decoded image must preprocess to exactly 3×224×224 finite floats.
#![no_main]

use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::preprocess::{PreprocessConfig, ResizeTarget, CLIP_MEAN, CLIP_STD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Tighter than production (40 MP) so one input cannot eat the run's time budget; the checks
    // exercised are the same.
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_side: 4_096,
    };
    let Ok(img) = decode(data, &limits) else {
        return;
    };
    assert!(img.width() as u64 * img.height() as u64 <= limits.max_pixels);
    let cfg = PreprocessConfig {
        do_resize: true,
        size: ResizeTarget::ShortestEdge(224),
        resample: 3,
        do_center_crop: true,
        crop_size: (224, 224),
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: true,
        image_mean: CLIP_MEAN,
        image_std: CLIP_STD,
    };
    let px = cfg.preprocess(&img);
    assert_eq!(px.len(), 3 * 224 * 224);
    assert!(px.iter().all(|v| v.is_finite()));
});
