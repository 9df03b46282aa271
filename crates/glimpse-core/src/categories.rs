//! The ImageNet-1k → Glimpse category table (contract, section Responses).
//!
//! The ViT endpoint sums the 1000 ImageNet probabilities into six categories. ImageNet-1k has no
//! plain "car", "truck", "motorcycle", "person" or "document" class, so each category gathers the
//! classes a user would file under it; every class not listed is `other`.
//!
//! | category     | ImageNet-1k classes (index name)                                                |
//! |--------------|-----------------------------------------------------------------------------------|
//! | `car`        | 407 ambulance, 436 beach wagon, 468 cab, 511 convertible, 609 jeep, 627 limousine, 656 minivan, 661 Model T, 751 racer, 817 sports car |
//! | `document`   | 446 binder, 549 envelope, 916 web site, 917 comic book, 918 crossword puzzle, 921 book jacket, 922 menu |
//! | `motorcycle` | 665 moped, 670 motor scooter                                                      |
//! | `truck`      | 555 fire engine, 569 garbage truck, 675 moving van, 717 pickup, 734 police van, 864 tow truck, 867 trailer truck |
//! | `person`     | 981 ballplayer, 982 groom, 983 scuba diver                                        |
//! | `other`      | everything else                                                                   |
//!
//! Deliberately left in `other`: 705 passenger car (a railway carriage), 565 freight car, 829
//! streetcar, 654 minibus, 779 school bus, 874 trolleybus (buses and rail), 757 recreational
//! vehicle, 586 half track, 847 tank, 866 tractor, 561 forklift, 573 go-kart, 575 golfcart (neither
//! road cars nor trucks), 444 tandem, 671 mountain bike, 870 tricycle, 880 unicycle (pedal cycles,
//! not motorcycles), 692 packet, 919 street sign, 781 scoreboard (print, but not documents).
//! The pickup is a truck because the contract says so. The same table, with reasons, is in
//! `docs/categories.md`.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Category {
    Car = 0,
    Document = 1,
    Motorcycle = 2,
    Truck = 3,
    Person = 4,
    Other = 5,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Car,
        Category::Document,
        Category::Motorcycle,
        Category::Truck,
        Category::Person,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Car => "car",
            Category::Document => "document",
            Category::Motorcycle => "motorcycle",
            Category::Truck => "truck",
            Category::Person => "person",
            Category::Other => "other",
        }
    }
}

/// Every mapped class: `(ImageNet-1k index, fragment of its label, category)`. The fragment is the
/// start of the class's label in the standard `id2label` (e.g. "sports car, sport car"), so a test
/// can check the indices against a real model config and catch an off-by-one.
pub const TABLE: &[(usize, &str, Category)] = &[
    (407, "ambulance", Category::Car),
    (436, "beach wagon", Category::Car),
    (446, "binder", Category::Document),
    (468, "cab", Category::Car),
    (511, "convertible", Category::Car),
    (549, "envelope", Category::Document),
    (555, "fire engine", Category::Truck),
    (569, "garbage truck", Category::Truck),
    (609, "jeep", Category::Car),
    (627, "limousine", Category::Car),
    (656, "minivan", Category::Car),
    (661, "Model T", Category::Car),
    (665, "moped", Category::Motorcycle),
    (670, "motor scooter", Category::Motorcycle),
    (675, "moving van", Category::Truck),
    (717, "pickup", Category::Truck),
    (734, "police van", Category::Truck),
    (751, "racer", Category::Car),
    (817, "sports car", Category::Car),
    (864, "tow truck", Category::Truck),
    (867, "trailer truck", Category::Truck),
    (916, "web site", Category::Document),
    (917, "comic book", Category::Document),
    (918, "crossword puzzle", Category::Document),
    (921, "book jacket", Category::Document),
    (922, "menu", Category::Document),
    (981, "ballplayer", Category::Person),
    (982, "groom", Category::Person),
    (983, "scuba diver", Category::Person),
];

/// Number of ImageNet-1k classes.
pub const IMAGENET_CLASSES: usize = 1000;

/// The table expanded to one entry per class, built at compile time so `category_of` is a lookup.
static BY_INDEX: [Category; IMAGENET_CLASSES] = {
    let mut out = [Category::Other; IMAGENET_CLASSES];
    let mut i = 0;
    while i < TABLE.len() {
        out[TABLE[i].0] = TABLE[i].2;
        i += 1;
    }
    out
};

/// Category of an ImageNet-1k class index; unmapped indices (and indices past 999) are `Other`.
pub fn category_of(imagenet_index: usize) -> Category {
    BY_INDEX
        .get(imagenet_index)
        .copied()
        .unwrap_or(Category::Other)
}

/// The standard ImageNet-1k `id2label` names by index (as `google/vit-base-patch16-224`,
/// `facebook/deit-*` and the `transformers` label files have them), one per line.
const IMAGENET_1K_LABELS: &str = include_str!("imagenet_1k_labels.txt");

/// Whether a classifier's labels are the ImageNet-1k set the category table is indexed by: exactly
/// [`IMAGENET_CLASSES`] labels, equal by index to the standard names. Any other label set (a
/// fine-tune's own classes, a renamed or reordered ImageNet head) is answered with its own labels
/// instead of categories.
pub fn is_imagenet_1k(labels: &[String]) -> bool {
    labels.len() == IMAGENET_CLASSES
        && labels
            .iter()
            .map(String::as_str)
            .eq(IMAGENET_1K_LABELS.lines())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indices_of(cat: Category) -> Vec<usize> {
        (0..IMAGENET_CLASSES)
            .filter(|&i| category_of(i) == cat)
            .collect()
    }

    #[test]
    fn car_classes() {
        assert_eq!(
            indices_of(Category::Car),
            vec![407, 436, 468, 511, 609, 627, 656, 661, 751, 817]
        );
        // A railway passenger car is not a car.
        assert_eq!(category_of(705), Category::Other);
    }

    #[test]
    fn document_classes() {
        assert_eq!(
            indices_of(Category::Document),
            vec![446, 549, 916, 917, 918, 921, 922]
        );
    }

    #[test]
    fn motorcycle_classes() {
        assert_eq!(indices_of(Category::Motorcycle), vec![665, 670]);
        // Pedal cycles stay out.
        assert_eq!(category_of(671), Category::Other);
    }

    #[test]
    fn truck_classes() {
        assert_eq!(
            indices_of(Category::Truck),
            vec![555, 569, 675, 717, 734, 864, 867]
        );
    }

    #[test]
    fn person_classes() {
        assert_eq!(indices_of(Category::Person), vec![981, 982, 983]);
    }

    #[test]
    fn everything_else_is_other() {
        assert_eq!(
            indices_of(Category::Other).len(),
            IMAGENET_CLASSES - TABLE.len()
        );
        assert_eq!(category_of(0), Category::Other);
        assert_eq!(category_of(1000), Category::Other);
        assert_eq!(category_of(usize::MAX), Category::Other);
    }

    #[test]
    fn table_is_sorted_without_duplicates() {
        assert!(TABLE.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(TABLE.iter().all(|r| r.2 != Category::Other));
    }

    #[test]
    fn as_str_matches_contract_names() {
        let names: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            ["car", "document", "motorcycle", "truck", "person", "other"]
        );
        for c in Category::ALL {
            assert_eq!(Category::ALL[c as usize], c);
        }
    }

    #[test]
    fn imagenet_1k_is_recognised_exactly() {
        let names: Vec<String> = IMAGENET_1K_LABELS.lines().map(str::to_string).collect();
        assert_eq!(names.len(), IMAGENET_CLASSES);
        for &(idx, fragment, _) in TABLE {
            assert!(names[idx].starts_with(fragment), "{idx}: {}", names[idx]);
        }
        assert!(is_imagenet_1k(&names));
        let mut renamed = names.clone();
        renamed[5] = "electric ray".to_string();
        assert!(!is_imagenet_1k(&renamed));
        assert!(!is_imagenet_1k(&names[..999]));
        let own: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
        assert!(!is_imagenet_1k(&own));
    }
}
