//! The ImageNet-1k → Glimpse category table (contract, section Responses).
//! STUB: the table is filled in by the core-image work.

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

/// Category of an ImageNet-1k class index; unmapped indices are `Other`.
pub fn category_of(_imagenet_index: usize) -> Category {
    Category::Other
}
