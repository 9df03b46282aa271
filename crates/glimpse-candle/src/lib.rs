//! CLIP and ViT forward passes on candle, loaded from Hugging Face model folders.
