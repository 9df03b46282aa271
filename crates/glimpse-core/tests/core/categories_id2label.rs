//! The category table against a real ViT config's `id2label` (the ImageNet-1k names as the
//! Hugging Face models ship them): every mapped index must carry the name the table expects, so
//! an off-by-one or a wrong index fails here rather than silently moving probability mass.

use std::path::PathBuf;

use glimpse_core::categories::{category_of, Category, IMAGENET_CLASSES, TABLE};

fn id2label() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models/vit-tiny/config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = config["id2label"].as_object().expect("id2label");
    let mut labels = vec![String::new(); map.len()];
    for (k, v) in map {
        labels[k.parse::<usize>().unwrap()] = v.as_str().unwrap().to_string();
    }
    labels
}

#[test]
fn every_mapped_index_has_the_expected_imagenet_name() {
    let labels = id2label();
    assert_eq!(labels.len(), IMAGENET_CLASSES);
    for &(idx, fragment, cat) in TABLE {
        // The label's first synonym, e.g. "sports car" in "sports car, sport car".
        let first = labels[idx].split(',').next().unwrap();
        assert_eq!(first, fragment, "index {idx} is {:?}", labels[idx]);
        assert_eq!(category_of(idx), cat);
    }
}

#[test]
fn contract_examples_land_in_their_categories() {
    let labels = id2label();
    let by_name = |name: &str| {
        labels
            .iter()
            .position(|l| l.split(", ").any(|syn| syn == name))
            .unwrap_or_else(|| panic!("no ImageNet class named {name}"))
    };
    let cases = [
        ("sports car", Category::Car),
        ("cab", Category::Car),
        ("minivan", Category::Car),
        ("moped", Category::Motorcycle),
        ("motor scooter", Category::Motorcycle),
        ("trailer truck", Category::Truck),
        ("garbage truck", Category::Truck),
        ("pickup", Category::Truck),
        ("envelope", Category::Document),
        ("book jacket", Category::Document),
        ("menu", Category::Document),
        ("web site", Category::Document),
        ("scuba diver", Category::Person),
        ("tench", Category::Other),
        ("passenger car", Category::Other),
    ];
    for (name, cat) in cases {
        assert_eq!(category_of(by_name(name)), cat, "{name}");
    }
}
