//! Any string as `labels=`: parsing must never panic, and accepted labels obey the contract's
//! rules (1..=64 labels, each 1..=100 characters, no control characters).
#![no_main]

use glimpse_core::labels::parse_labels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(labels) = parse_labels(Some(raw)) else {
        return;
    };
    assert!(!labels.is_empty() && labels.len() <= 64, "{labels:?}");
    for l in &labels {
        let n = l.chars().count();
        assert!((1..=100).contains(&n), "{l:?}");
        assert!(!l.chars().any(char::is_control), "{l:?}");
    }
});
