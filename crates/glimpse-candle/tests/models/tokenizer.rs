//! The Rust tokenizer gives the ids transformers' CLIPTokenizer gives, truncation included.

use crate::common::*;
use glimpse_candle::tokenizer::ClipTokenizer;

#[test]
fn every_reference_case_tokenizes_identically() {
    let cases = expected("tokenizer_cases");
    let max = cases["max_length"].as_u64().unwrap() as usize;
    let tok = ClipTokenizer::from_dir(&model_dir("clip-tiny"), max).unwrap();
    let mut truncated = 0;
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "text {text:?}");
        truncated += usize::from(want.len() == max);
    }
    assert!(truncated >= 3, "the cases exercise truncation");
}

#[test]
fn batches_are_right_padded_with_the_pad_token() {
    let tok = ClipTokenizer::from_dir(&model_dir("clip-tiny"), 77).unwrap();
    assert_eq!(tok.pad_id(), 49407);
    let ids = tok
        .encode_batch(&["car".to_string(), "a photo of a car.".to_string()])
        .unwrap();
    assert_eq!(
        ids[0],
        [49406, 1615, 49407, 49407, 49407, 49407, 49407, 49407]
    );
    assert_eq!(ids[1].len(), 8);
}
