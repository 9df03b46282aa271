//! Turning model outputs into scores: CLIP similarity softmax with prompt ensembling, ViT category sums.

use crate::backend::Scoring;
use crate::categories::{category_of, Category};
use crate::response::{ImagenetPrediction, Prediction};

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// Average the normalised embeddings of one label's prompts and normalise again (CLIP paper's
/// prompt ensembling). With one template this is the prompt's own embedding.
pub fn ensemble(prompt_embeddings: &[Vec<f32>]) -> Vec<f32> {
    let dim = prompt_embeddings.first().map(|v| v.len()).unwrap_or(0);
    let mut acc = vec![0f32; dim];
    for e in prompt_embeddings {
        for (a, x) in acc.iter_mut().zip(e) {
            *a += x;
        }
    }
    l2_normalize(&mut acc);
    acc
}

/// Softmax over `logit_scale * cosine(image, label)` for every label.
pub fn clip_probabilities(image: &[f32], labels: &[Vec<f32>], logit_scale: f32) -> Vec<f32> {
    let logits: Vec<f32> = labels
        .iter()
        .map(|t| logit_scale * image.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
        .collect();
    softmax(&logits)
}

/// `sigmoid(logit_scale * cosine(image, label) + bias)` for every label (SigLIP): independent per
/// label, as transformers' zero-shot pipeline scores SigLIP models.
pub fn sigmoid_probabilities(
    image: &[f32],
    labels: &[Vec<f32>],
    logit_scale: f32,
    bias: f32,
) -> Vec<f32> {
    labels
        .iter()
        .map(|t| {
            let logit = logit_scale * image.iter().zip(t).map(|(a, b)| a * b).sum::<f32>() + bias;
            (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32
        })
        .collect()
}

/// An image's scores against label embeddings, as the model's [`Scoring`] says.
pub fn zero_shot_scores(
    image: &[f32],
    labels: &[Vec<f32>],
    logit_scale: f32,
    scoring: Scoring,
) -> Vec<f32> {
    match scoring {
        Scoring::Softmax => clip_probabilities(image, labels, logit_scale),
        Scoring::Sigmoid { bias } => sigmoid_probabilities(image, labels, logit_scale, bias),
    }
}

pub fn clip_predictions(labels: &[String], probs: &[f32]) -> Vec<Prediction> {
    labels
        .iter()
        .zip(probs)
        .map(|(l, &p)| Prediction {
            label: l.clone(),
            score: p,
        })
        .collect()
}

/// Sum ImageNet probabilities into the contract's categories (all six always present).
pub fn vit_category_predictions(probs: &[f32]) -> Vec<Prediction> {
    let mut sums = [0f64; Category::ALL.len()];
    for (idx, &p) in probs.iter().enumerate() {
        sums[category_of(idx) as usize] += p as f64;
    }
    Category::ALL
        .iter()
        .map(|c| Prediction {
            label: c.as_str().to_string(),
            score: sums[*c as usize] as f32,
        })
        .collect()
}

/// The `k` most likely raw classes with their category.
pub fn top_k_imagenet(probs: &[f32], id2label: &[String], k: usize) -> Vec<ImagenetPrediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.into_iter()
        .take(k)
        .map(|i| ImagenetPrediction {
            label: id2label
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score: probs[i],
            category: category_of(i).as_str().to_string(),
        })
        .collect()
}

/// Most labels a fine-tune's answer lists (its `predictions`), highest first: a checkpoint with
/// thousands of classes (ImageNet-21k) would otherwise answer megabytes per call.
pub const MAX_OWN_LABEL_PREDICTIONS: usize = 100;

/// A classifier whose labels are not ImageNet-1k: its own labels with their probabilities, highest
/// first (ties keep index order), at most [`MAX_OWN_LABEL_PREDICTIONS`].
pub fn own_label_predictions(probs: &[f32], id2label: &[String]) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.into_iter()
        .take(MAX_OWN_LABEL_PREDICTIONS)
        .map(|i| Prediction {
            label: id2label
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score: probs[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn clip_probabilities_prefer_the_closest_label() {
        let img = vec![1.0, 0.0];
        let labels = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        let p = clip_probabilities(&img, &labels, 100.0);
        assert!(p[1] > 0.999, "{p:?}");
    }

    #[test]
    fn sigmoid_scores_are_independent_per_label() {
        let img = vec![1.0, 0.0];
        let labels = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, 0.0]];
        // logits 10·cos − 2: 8, −2, −12.
        let p = sigmoid_probabilities(&img, &labels, 10.0, -2.0);
        let want = [8f64, -2.0, -12.0].map(|l| 1.0 / (1.0 + (-l).exp()));
        for (got, want) in p.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-7, "{p:?}");
        }
        // A label's score does not depend on the others.
        let alone = sigmoid_probabilities(&img, &labels[1..2], 10.0, -2.0);
        assert_eq!(alone[0], p[1]);
        let softmax = zero_shot_scores(&img, &labels, 10.0, Scoring::Softmax);
        assert!((softmax.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(
            zero_shot_scores(&img, &labels, 10.0, Scoring::Sigmoid { bias: -2.0 }),
            p
        );
    }

    #[test]
    fn ensemble_of_one_is_identity_and_normalised() {
        let e = ensemble(&[vec![0.6, 0.8]]);
        assert!((e[0] - 0.6).abs() < 1e-6 && (e[1] - 0.8).abs() < 1e-6);
        let e = ensemble(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!((e[0] - e[1]).abs() < 1e-6);
        assert!(((e[0] * e[0] + e[1] * e[1]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn vit_categories_sum_all_probability() {
        let probs = vec![1.0 / 1000.0; 1000];
        let preds = vit_category_predictions(&probs);
        assert_eq!(preds.len(), 6);
        let total: f32 = preds.iter().map(|p| p.score).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn own_labels_are_sorted_and_capped() {
        let labels: Vec<String> = ["cat", "dog", "bird"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = own_label_predictions(&[0.2, 0.7, 0.1], &labels);
        let names: Vec<&str> = p.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["dog", "cat", "bird"]);
        assert_eq!(p[0].score, 0.7);
        let many = vec![1.0 / 300.0; 300];
        let labels: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
        let p = own_label_predictions(&many, &labels);
        assert_eq!(p.len(), MAX_OWN_LABEL_PREDICTIONS);
        assert_eq!(p[0].label, "c0");
    }
}
