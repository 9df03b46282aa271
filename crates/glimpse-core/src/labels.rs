//! Parsing and validation of the `labels` request field (contract, section Requests).

use crate::CoreError;

/// The labels used when a request gives none.
pub const DEFAULT_LABELS: [&str; 6] = ["car", "document", "motorcycle", "truck", "person", "other"];
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_CHARS: usize = 100;
/// The CLIP paper's default prompt.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {label}.";

/// Split a comma-separated list: trim each, drop empties, drop case-insensitive duplicates keeping
/// the first spelling, then check the bounds. `None` gives the default labels.
pub fn parse_labels(raw: Option<&str>) -> Result<Vec<String>, CoreError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LABELS.iter().map(|s| s.to_string()).collect());
    };
    let mut out: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for part in raw.split(',') {
        let label = part.trim();
        if label.is_empty() {
            continue;
        }
        let chars = label.chars().count();
        if chars > MAX_LABEL_CHARS {
            return Err(CoreError::Validation(format!(
                "each label must be 1 to {MAX_LABEL_CHARS} characters; one has {chars}"
            )));
        }
        if label.chars().any(|c| c.is_control()) {
            return Err(CoreError::Validation(
                "labels must not contain control characters".into(),
            ));
        }
        let folded = label.to_lowercase();
        if seen.contains(&folded) {
            continue;
        }
        seen.push(folded);
        out.push(label.to_string());
    }
    if out.is_empty() {
        return Err(CoreError::Validation(
            "labels must hold at least 1 non-empty label".into(),
        ));
    }
    if out.len() > MAX_LABELS {
        return Err(CoreError::Validation(format!(
            "at most {MAX_LABELS} labels are allowed; got {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Turn a label into prompts, one per template (`{label}` is replaced).
pub fn prompts_for(label: &str, templates: &[String]) -> Vec<String> {
    templates
        .iter()
        .map(|t| t.replace("{label}", label))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_when_absent() {
        assert_eq!(parse_labels(None).unwrap(), DEFAULT_LABELS.to_vec());
    }

    #[test]
    fn trims_drops_empties_and_dedups_case_insensitively() {
        let got = parse_labels(Some(" Car, ,car,Document,,CAR , truck")).unwrap();
        assert_eq!(got, vec!["Car", "Document", "truck"]);
    }

    #[test]
    fn empty_list_is_refused() {
        let err = parse_labels(Some(" , ,")).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn too_many_labels_is_refused() {
        let raw: Vec<String> = (0..65).map(|i| format!("l{i}")).collect();
        let err = parse_labels(Some(&raw.join(","))).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        let raw: Vec<String> = (0..64).map(|i| format!("l{i}")).collect();
        assert_eq!(parse_labels(Some(&raw.join(","))).unwrap().len(), 64);
    }

    #[test]
    fn too_long_label_is_refused_counting_chars_not_bytes() {
        let ok = "é".repeat(100);
        assert!(parse_labels(Some(&ok)).is_ok());
        let err = parse_labels(Some(&"a".repeat(101))).unwrap_err();
        assert!(err.to_string().contains("1 to 100"), "{err}");
    }

    #[test]
    fn prompts_fill_every_template() {
        let t = vec![
            DEFAULT_TEMPLATE.to_string(),
            "a picture of {label}".to_string(),
        ];
        assert_eq!(
            prompts_for("car", &t),
            vec!["a photo of a car.", "a picture of car"]
        );
    }
}
