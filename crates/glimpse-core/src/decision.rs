//! Decision controls (issue 24): what a caller does with the scores, applied to a finished
//! answer. Scoring stays in [`crate::ServedModel::classify`]; [`Decision::apply`] is a pure
//! function on its [`ClassificationResponse`], so every model and endpoint decides the same way.
//!
//! - `minConfidence` (0–1): a top score below it answers the `fallback` label (default `other`)
//!   as `result`, keeps the top score as `confidence` and adds `"abstained": true`.
//! - `topK` (1–64) keeps the K best `predictions` (ViT's `imagenet` keeps its 5).
//! - `multiLabel=true` adds `results`: every label scoring at or above `minConfidence` (0 when not
//!   given). Only for models whose scores are independent of each other
//!   ([`crate::ModelFamily::independent_scores`]); a softmax's scores compete, so a threshold
//!   over them is no per-label decision.
//!
//! With none of the fields the answer is unchanged, byte for byte.

use crate::response::{ClassificationResponse, Prediction};
use crate::CoreError;

/// The fallback label when `fallback` is not given.
pub const DEFAULT_FALLBACK: &str = "other";
/// Longest `fallback`, in characters.
pub const MAX_FALLBACK_CHARS: usize = 64;
/// Largest `topK`.
pub const MAX_TOP_K: usize = 64;

/// The decision fields as sent (query or form text), before validation.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawDecision<'a> {
    pub min_confidence: Option<&'a str>,
    pub fallback: Option<&'a str>,
    pub top_k: Option<&'a str>,
    pub multi_label: Option<&'a str>,
}

/// A validated decision. [`Decision::default`] changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub min_confidence: Option<f32>,
    pub fallback: String,
    pub top_k: Option<usize>,
    pub multi_label: bool,
}

impl Default for Decision {
    fn default() -> Self {
        Decision {
            min_confidence: None,
            fallback: DEFAULT_FALLBACK.to_string(),
            top_k: None,
            multi_label: false,
        }
    }
}

fn invalid(msg: String) -> CoreError {
    CoreError::Validation(msg)
}

impl Decision {
    /// Validate the fields; each error names its field.
    pub fn parse(raw: RawDecision<'_>) -> Result<Decision, CoreError> {
        let mut d = Decision::default();
        if let Some(s) = raw.min_confidence {
            let v: f64 = s.trim().parse().map_err(|_| {
                invalid(format!(
                    "minConfidence must be a number from 0 to 1; got '{s}'"
                ))
            })?;
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(format!(
                    "minConfidence must be a number from 0 to 1; got {s}"
                )));
            }
            d.min_confidence = Some(v as f32);
        }
        if let Some(s) = raw.fallback {
            let s = s.trim();
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_FALLBACK_CHARS {
                return Err(invalid(format!(
                    "fallback must be 1 to {MAX_FALLBACK_CHARS} characters; got {chars}"
                )));
            }
            if s.chars().any(char::is_control) {
                return Err(invalid(
                    "fallback must not contain control characters".into(),
                ));
            }
            d.fallback = s.to_string();
        }
        if let Some(s) = raw.top_k {
            let k: usize = s
                .trim()
                .parse()
                .ok()
                .filter(|k| (1..=MAX_TOP_K).contains(k))
                .ok_or_else(|| {
                    invalid(format!(
                        "topK must be an integer from 1 to {MAX_TOP_K}; got '{s}'"
                    ))
                })?;
            d.top_k = Some(k);
        }
        if let Some(s) = raw.multi_label {
            d.multi_label = match s.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(invalid(format!(
                        "multiLabel must be true or false; got '{s}'"
                    )))
                }
            };
        }
        Ok(d)
    }

    /// Refuse `multiLabel` for a model whose scores are not independent (a softmax).
    pub fn check_model(&self, model_id: &str, independent_scores: bool) -> Result<(), CoreError> {
        if self.multi_label && !independent_scores {
            return Err(invalid(format!(
                "multiLabel needs a model whose scores are independent (SigLIP-family or a saved \
                 classifier); {model_id}'s scores are a softmax over the labels, so they compete \
                 and a threshold over them is no per-label decision"
            )));
        }
        Ok(())
    }

    /// Decide on a finished answer. `predictions` must be highest first, as
    /// [`ClassificationResponse::new`] leaves them.
    pub fn apply(&self, r: &mut ClassificationResponse) {
        if self.multi_label {
            let min = self.min_confidence.unwrap_or(0.0);
            r.results = Some(
                r.predictions
                    .iter()
                    .filter(|p| p.score >= min)
                    .cloned()
                    .collect::<Vec<Prediction>>(),
            );
        }
        if let Some(min) = self.min_confidence {
            if r.confidence < min {
                r.result = self.fallback.clone();
                r.abstained = true;
            }
        }
        if let Some(k) = self.top_k {
            r.predictions.truncate(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(scores: &[(&str, f32)]) -> ClassificationResponse {
        ClassificationResponse::new(
            "clip",
            "m",
            scores
                .iter()
                .map(|(l, s)| Prediction {
                    label: l.to_string(),
                    score: *s,
                })
                .collect(),
        )
    }

    fn raw<'a>(
        min: Option<&'a str>,
        fallback: Option<&'a str>,
        top_k: Option<&'a str>,
        multi: Option<&'a str>,
    ) -> RawDecision<'a> {
        RawDecision {
            min_confidence: min,
            fallback,
            top_k,
            multi_label: multi,
        }
    }

    #[test]
    fn default_changes_nothing_byte_for_byte() {
        let before = answer(&[("car", 0.6), ("dog", 0.3), ("cat", 0.1)]);
        let mut after = before.clone();
        Decision::parse(RawDecision::default())
            .unwrap()
            .apply(&mut after);
        assert_eq!(after, before);
        let json = serde_json::to_string(&after).unwrap();
        assert_eq!(json, serde_json::to_string(&before).unwrap());
        assert!(
            !json.contains("abstained") && !json.contains("results"),
            "{json}"
        );
    }

    #[test]
    fn below_min_confidence_abstains_with_the_fallback() {
        let mut r = answer(&[("car", 0.6), ("dog", 0.4)]);
        let d = Decision::parse(raw(Some("0.7"), Some("unknown"), None, None)).unwrap();
        d.apply(&mut r);
        assert_eq!(r.result, "unknown");
        assert_eq!(r.confidence, 0.6);
        assert!(r.abstained);
        assert_eq!(r.predictions.len(), 2);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["abstained"], true);

        // At or above the threshold: no abstention, nothing added.
        let mut r = answer(&[("car", 0.6), ("dog", 0.4)]);
        let before = r.clone();
        Decision::parse(raw(Some("0.6"), None, None, None))
            .unwrap()
            .apply(&mut r);
        assert_eq!(r, before);

        // The default fallback is `other`.
        let mut r = answer(&[("car", 0.6), ("dog", 0.4)]);
        Decision::parse(raw(Some("1"), None, None, None))
            .unwrap()
            .apply(&mut r);
        assert_eq!(r.result, "other");
    }

    #[test]
    fn top_k_trims_predictions_only() {
        let mut r = answer(&[("a", 0.1), ("b", 0.5), ("c", 0.4)]);
        r.imagenet = Some(vec![]);
        Decision::parse(raw(None, None, Some("2"), None))
            .unwrap()
            .apply(&mut r);
        let labels: Vec<&str> = r.predictions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["b", "c"]);
        assert_eq!(r.result, "b");
        assert_eq!(r.imagenet, Some(vec![]));
        // A K over the label count keeps them all.
        let mut r = answer(&[("a", 0.1), ("b", 0.9)]);
        Decision::parse(raw(None, None, Some("64"), None))
            .unwrap()
            .apply(&mut r);
        assert_eq!(r.predictions.len(), 2);
    }

    /// The multi-label path, on scores that do not sum to 1 (as an independent-score model's).
    #[test]
    fn multi_label_answers_every_label_over_the_threshold() {
        let d = Decision::parse(raw(Some("0.5"), None, Some("1"), Some("true"))).unwrap();
        d.check_model("siglip-fake", true).unwrap();
        let mut r = answer(&[("car", 0.9), ("truck", 0.7), ("dog", 0.1)]);
        d.apply(&mut r);
        let got: Vec<(&str, f32)> = r
            .results
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.label.as_str(), p.score))
            .collect();
        assert_eq!(got, [("car", 0.9), ("truck", 0.7)]);
        assert_eq!(
            r.predictions.len(),
            1,
            "topK trims predictions, not results"
        );
        assert!(!r.abstained);
        assert_eq!(r.result, "car");

        // Nothing over the threshold: empty results, and the answer abstains.
        let d = Decision::parse(raw(Some("0.95"), None, None, Some("true"))).unwrap();
        let mut r = answer(&[("car", 0.9), ("truck", 0.7)]);
        d.apply(&mut r);
        assert_eq!(r.results, Some(vec![]));
        assert!(r.abstained);
        assert_eq!(r.result, "other");

        // No threshold: every label.
        let d = Decision::parse(raw(None, None, None, Some("true"))).unwrap();
        let mut r = answer(&[("car", 0.9), ("truck", 0.0)]);
        d.apply(&mut r);
        assert_eq!(r.results.as_ref().unwrap().len(), 2);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["results"][1]["label"], "truck");
    }

    #[test]
    fn multi_label_is_refused_for_a_softmax_model() {
        let d = Decision::parse(raw(None, None, None, Some("true"))).unwrap();
        let e = d.check_model("clip-tiny", false).unwrap_err();
        assert!(e.is_client_error());
        let msg = e.to_string();
        assert!(
            msg.contains("multiLabel") && msg.contains("clip-tiny") && msg.contains("softmax"),
            "{msg}"
        );
        // multiLabel=false asks nothing of the model.
        let d = Decision::parse(raw(None, None, None, Some("false"))).unwrap();
        d.check_model("clip-tiny", false).unwrap();
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn bad_values_name_their_field() {
        let long = "x".repeat(65);
        let cases: [(RawDecision, &str); 13] = [
            (raw(Some("abc"), None, None, None), "minConfidence"),
            (raw(Some("-0.1"), None, None, None), "minConfidence"),
            (raw(Some("1.01"), None, None, None), "minConfidence"),
            (raw(Some("NaN"), None, None, None), "minConfidence"),
            (raw(Some("inf"), None, None, None), "minConfidence"),
            (raw(None, Some(" "), None, None), "fallback"),
            (raw(None, Some(&long), None, None), "fallback"),
            (raw(None, None, Some("0"), None), "topK"),
            (raw(None, None, Some("65"), None), "topK"),
            (raw(None, None, Some("2.5"), None), "topK"),
            (raw(None, None, Some("two"), None), "topK"),
            (raw(None, None, None, Some("yes")), "multiLabel"),
            (raw(None, None, None, Some("1")), "multiLabel"),
        ];
        for (r, field) in cases {
            let e = Decision::parse(r).unwrap_err();
            assert!(e.is_client_error(), "{r:?}");
            assert!(e.to_string().starts_with(field), "{r:?}: {e}");
        }
        let longest = "x".repeat(64);
        let ok = Decision::parse(raw(Some("0"), Some(&longest), Some("64"), None)).unwrap();
        assert_eq!(ok.min_confidence, Some(0.0));
        assert_eq!(ok.top_k, Some(64));
    }
}
