//! The API's success shape (contract, section Responses). Shared by the server and `classify --json`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
}

/// One raw ImageNet class in a ViT answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagenetPrediction {
    pub label: String,
    pub score: f32,
    pub category: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassificationResponse {
    pub result: String,
    pub confidence: f32,
    /// Set when `minConfidence` was not reached: `result` is then the fallback label (see
    /// `crate::decision`). Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abstained: bool,
    /// `"clip"` or `"vit"`.
    pub model: String,
    /// Every label (CLIP) or category (ViT), highest score first.
    pub predictions: Vec<Prediction>,
    /// `multiLabel=true` only: every label at or above `minConfidence`, highest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<Prediction>>,
    pub model_id: String,
    pub timing_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imagenet: Option<Vec<ImagenetPrediction>>,
}

impl ClassificationResponse {
    /// Set `timingMs`, rounded to 0.1 ms as every answer shows it (no float noise such as
    /// `2.7854020000000004`).
    pub fn set_timing_ms(&mut self, ms: f64) {
        self.timing_ms = (ms * 10.0).round() / 10.0;
    }

    /// Build from unsorted predictions: sorts highest first (stable, so ties keep label order) and
    /// takes `result`/`confidence` from the first.
    pub fn new(model: &str, model_id: &str, mut predictions: Vec<Prediction>) -> Self {
        predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
        let (result, confidence) = predictions
            .first()
            .map(|p| (p.label.clone(), p.score))
            .unwrap_or_default();
        ClassificationResponse {
            result,
            confidence,
            abstained: false,
            model: model.to_string(),
            predictions,
            results: None,
            model_id: model_id.to_string(),
            timing_ms: 0.0,
            imagenet: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_highest_first_and_camel_case() {
        let r = ClassificationResponse::new(
            "clip",
            "m",
            vec![
                Prediction {
                    label: "a".into(),
                    score: 0.2,
                },
                Prediction {
                    label: "b".into(),
                    score: 0.7,
                },
                Prediction {
                    label: "c".into(),
                    score: 0.1,
                },
            ],
        );
        assert_eq!(r.result, "b");
        assert_eq!(r.confidence, 0.7);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["modelId"], "m");
        assert!(v.get("timingMs").is_some());
        assert!(v.get("imagenet").is_none());
        assert_eq!(v["predictions"][2]["label"], "c");
    }
}
