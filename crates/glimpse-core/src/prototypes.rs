//! Saved classifiers (issue 24): a label's stored embedding (its *prototype*) from its prompt and
//! example-image embeddings, and the scores of an image embedding against stored prototypes.
//!
//! **Weighting.** A label's prototype is the L2-normalised sum of the mean of its prompt
//! embeddings (CLIP's prompt ensemble, [`crate::scoring::ensemble`]) counted once, and of each of
//! its example-image embeddings counted once each:
//! `normalize(ensemble(prompts) + Σ examples)`. The prompts weigh as much as one example, so a
//! label taught by examples is mostly what its examples look like (four examples: 80 %), while a
//! label with no examples is exactly its zero-shot text embedding. Example embeddings live in the
//! image side of CLIP's joint space, which is why they separate images that one prompt text
//! (the same for every label) cannot.
//!
//! **Scores.** An image's score for a label is the cosine similarity of its embedding and the
//! label's prototype, clamped to 0–1. Unlike the zero-shot softmax the scores are independent of
//! each other (adding a label changes no other label's score), so `multiLabel` is allowed and
//! `minConfidence` is a per-label similarity threshold.

use crate::error::{CoreError, Result};
use crate::response::{ClassificationResponse, Prediction};
use crate::scoring::{ensemble, l2_normalize};

/// One stored label: its name and prototype.
#[derive(Debug, Clone, Copy)]
pub struct Prototype<'a> {
    pub label: &'a str,
    pub embedding: &'a [f32],
}

/// A label's prototype from its prompt embeddings and its example-image embeddings (each
/// L2-normalised, all of one length); at least one of the two must be non-empty.
pub fn prototype(prompts: &[Vec<f32>], examples: &[Vec<f32>]) -> Result<Vec<f32>> {
    let dim = prompts
        .first()
        .or(examples.first())
        .map(Vec::len)
        .ok_or_else(|| CoreError::internal("a prototype needs a prompt or an example"))?;
    if dim == 0 || prompts.iter().chain(examples).any(|v| v.len() != dim) {
        return Err(CoreError::internal(
            "prototype embeddings of different lengths",
        ));
    }
    let mut acc = if prompts.is_empty() {
        vec![0f32; dim]
    } else {
        ensemble(prompts)
    };
    for e in examples {
        for (a, x) in acc.iter_mut().zip(e) {
            *a += x;
        }
    }
    l2_normalize(&mut acc);
    Ok(acc)
}

/// Scores of `image` (an L2-normalised embedding) against `prototypes`, as a
/// [`ClassificationResponse`] of endpoint `model` and model `model_id`, highest first (so
/// [`crate::decision::Decision::apply`] works on it as on any answer). A prototype of another
/// length than the image's (a classifier made with another model under the same id) is a
/// validation error that says so.
pub fn score(
    image: &[f32],
    prototypes: &[Prototype<'_>],
    model: &str,
    model_id: &str,
) -> Result<ClassificationResponse> {
    let mut predictions = Vec::with_capacity(prototypes.len());
    for p in prototypes {
        if p.embedding.len() != image.len() {
            return Err(CoreError::Validation(format!(
                "label '{}' was saved with {}-value embeddings but model '{model_id}' makes \
                 {}-value ones; save the classifier again",
                p.label,
                p.embedding.len(),
                image.len()
            )));
        }
        let cos: f32 = image.iter().zip(p.embedding).map(|(a, b)| a * b).sum();
        predictions.push(Prediction {
            label: p.label.to_string(),
            score: cos.clamp(0.0, 1.0),
        });
    }
    Ok(ClassificationResponse::new(model, model_id, predictions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn no_examples_is_the_prompt_ensemble() {
        let prompts = vec![unit(&[1.0, 0.0, 0.0]), unit(&[0.0, 1.0, 0.0])];
        let p = prototype(&prompts, &[]).unwrap();
        assert_eq!(p, ensemble(&prompts));
    }

    #[test]
    fn examples_pull_the_prototype_and_prompts_count_as_one() {
        let prompt = vec![unit(&[1.0, 0.0])];
        let examples = vec![unit(&[0.0, 1.0]); 3];
        let p = prototype(&prompt, &examples).unwrap();
        // (1, 0) + 3 × (0, 1), normalised.
        let want = unit(&[1.0, 3.0]);
        assert!(
            (p[0] - want[0]).abs() < 1e-6 && (p[1] - want[1]).abs() < 1e-6,
            "{p:?}"
        );
        let only_examples = prototype(&[], &examples).unwrap();
        assert!((only_examples[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_prompts_different_examples_separate_labels() {
        let prompt = vec![unit(&[1.0, 0.0, 0.0])];
        let a = prototype(&prompt, &[unit(&[0.0, 1.0, 0.0])]).unwrap();
        let b = prototype(&prompt, &[unit(&[0.0, 0.0, 1.0])]).unwrap();
        let protos = [
            Prototype {
                label: "a",
                embedding: &a,
            },
            Prototype {
                label: "b",
                embedding: &b,
            },
        ];
        let r = score(&unit(&[0.2, 0.1, 0.9]), &protos, "clip", "m").unwrap();
        assert_eq!(r.result, "b");
        let r = score(&unit(&[0.2, 0.9, 0.1]), &protos, "clip", "m").unwrap();
        assert_eq!(r.result, "a");
        assert_eq!(r.model_id, "m");
    }

    #[test]
    fn scores_are_clamped_cosines_independent_of_other_labels() {
        let x = unit(&[1.0, 0.0]);
        let y = unit(&[0.0, 1.0]);
        let neg = unit(&[-1.0, 0.0]);
        let img = unit(&[1.0, 1.0]);
        let two = [
            Prototype {
                label: "x",
                embedding: &x,
            },
            Prototype {
                label: "y",
                embedding: &y,
            },
        ];
        let r = score(&img, &two, "clip", "m").unwrap();
        assert!((r.predictions[0].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        let three = [
            two[0],
            two[1],
            Prototype {
                label: "neg",
                embedding: &neg,
            },
        ];
        let r3 = score(&img, &three, "clip", "m").unwrap();
        assert_eq!(r3.predictions[0].score, r.predictions[0].score);
        assert_eq!(r3.predictions[2].label, "neg");
        assert_eq!(r3.predictions[2].score, 0.0);
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        assert!(prototype(&[], &[]).is_err());
        assert!(prototype(&[vec![1.0, 0.0]], &[vec![1.0]]).is_err());
        let short = [0.5f32];
        let e = score(
            &[1.0, 0.0],
            &[Prototype {
                label: "a",
                embedding: &short,
            }],
            "clip",
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("save the classifier again"), "{e}");
    }
}
