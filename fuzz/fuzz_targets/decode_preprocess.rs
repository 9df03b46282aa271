//! Any bytes through the upload path: sniff → header-first limits → decode → CLIP preprocess.
//! Must never panic, and a decoded image must preprocess to exactly 3×224×224 finite floats.
#![no_main]

use glimpse_core::image::{decode, DecodeLimits};
use glimpse_core::preprocess::PreprocessConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Tighter than production (40 MP) so one input cannot eat the run's time budget; the checks
    // exercised are the same.
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_side: 4_096,
        ..DecodeLimits::default()
    };
    let Ok(img) = decode(data, &limits) else {
        return;
    };
    assert!(img.width() as u64 * img.height() as u64 <= limits.max_pixels);
    let cfg = PreprocessConfig::clip(224);
    let px = cfg.preprocess(&img);
    assert_eq!(px.len(), 3 * 224 * 224);
    assert!(px.iter().all(|v| v.is_finite()));
});
