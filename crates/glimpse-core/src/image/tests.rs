use super::*;
use image::{ImageEncoder, Rgb, Rgba};

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 77]))
}

fn invalid_message(r: Result<RgbImage>) -> String {
    match r {
        Err(CoreError::InvalidImage(m)) => m,
        other => panic!("expected InvalidImage, got {other:?}"),
    }
}

fn too_large_message(r: Result<RgbImage>) -> String {
    match r {
        Err(CoreError::ImageTooLarge(m)) => m,
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
}

/// CRC-32 (PNG's), to hand-craft valid chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

#[test]
fn png_rgb_is_lossless() {
    let img = pattern(7, 5);
    let bytes = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png);
    assert_eq!(decode(&bytes, &limits()).unwrap(), img);
}

#[test]
fn png_rgba_is_composited_onto_white() {
    let img = image::RgbaImage::from_fn(4, 1, |x, _| match x {
        0 => Rgba([10, 20, 30, 255]),
        1 => Rgba([10, 20, 30, 0]),
        2 => Rgba([0, 0, 0, 128]),
        _ => Rgba([200, 100, 0, 51]),
    });
    let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
    let out = decode(&bytes, &limits()).unwrap();
    let px: Vec<[u8; 3]> = out.pixels().map(|p| p.0).collect();
    // (c*a + 255*(255-a) + 127) // 255: black at a=128 -> 127; 200 at a=51 -> 244.
    assert_eq!(
        px,
        [
            [10, 20, 30],
            [255, 255, 255],
            [127, 127, 127],
            [244, 224, 204]
        ]
    );
}

#[test]
fn over_white_matches_pil_formula_at_the_edges() {
    for c in 0..=255u8 {
        assert_eq!(over_white(c, 255), c);
        assert_eq!(over_white(c, 0), 255);
    }
    assert_eq!(over_white(0, 1), 254);
    assert_eq!(over_white(100, 200), 133); // (20000 + 14025 + 127) // 255 = 133
}

#[test]
fn grey_and_grey_alpha_are_replicated() {
    let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 50 + y) as u8]));
    let out = decode(
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
        &limits(),
    )
    .unwrap();
    assert_eq!(out.get_pixel(2, 1).0, [101, 101, 101]);
    let la = image::GrayAlphaImage::from_pixel(2, 2, image::LumaA([0, 128]));
    let out = decode(
        &encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png),
        &limits(),
    )
    .unwrap();
    assert_eq!(out.get_pixel(0, 0).0, [127, 127, 127]);
}

#[test]
fn sixteen_bit_png_is_rounded_to_eight() {
    let img = image::ImageBuffer::<Rgb<u16>, _>::from_fn(3, 1, |x, _| match x {
        0 => Rgb([0, 257 * 200, 65535]),
        1 => Rgb([128, 129, 385]), // 128/257 -> 0 (0.498), 129/257 -> 1 (0.502), 385 -> 1
        _ => Rgb([257 * 10 + 128, 257 * 10 + 129, 1000]),
    });
    let bytes = encode(&DynamicImage::ImageRgb16(img), ImageFormat::Png);
    let out = decode(&bytes, &limits()).unwrap();
    let px: Vec<[u8; 3]> = out.pixels().map(|p| p.0).collect();
    assert_eq!(px, [[0, 200, 255], [0, 1, 1], [10, 11, 4]]);
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    let img = RgbImage::from_pixel(16, 16, Rgb([200, 60, 30]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
        .write_image(img.as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let out = decode(&bytes, &limits()).unwrap();
    assert_eq!(out.dimensions(), (16, 16));
    for (a, b) in out.as_raw().iter().zip(img.as_raw()) {
        assert!(a.abs_diff(*b) <= 3, "{a} vs {b}");
    }
}

/// SOI + an APP1 Exif segment with the given orientation, spliced in front of a JPEG's tail.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    // Left half dark, right half bright, 16x8; orientation 6 = rotate 90° clockwise to display.
    let img = RgbImage::from_fn(
        16,
        8,
        |x, _| if x < 8 { Rgb([0; 3]) } else { Rgb([255; 3]) },
    );
    let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let out = decode(&with_exif_orientation(&jpeg, 6), &limits()).unwrap();
    assert_eq!(out.dimensions(), (8, 16));
    // After a clockwise turn the old left (dark) half is on top.
    assert!(out.get_pixel(4, 2).0[0] < 30);
    assert!(out.get_pixel(4, 13).0[0] > 225);
    assert_eq!(
        probe_dimensions(&with_exif_orientation(&jpeg, 6)).unwrap(),
        (16, 8)
    );
    // Two EXIF blocks: the first one is read, as PIL does (its JPEG plugin keeps the first
    // APP1 Exif segment; `ImageOps.exif_transpose` turns by it: checked with Pillow 13.0 on a
    // file with blocks 6 then 8). Here 6 then 8 (8 alone would turn the other way, the dark
    // half at the bottom), then 6 then 1 (1 alone: upright).
    let twice = with_exif_orientation(&with_exif_orientation(&jpeg, 8), 6);
    let out = decode(&twice, &limits()).unwrap();
    assert_eq!(out.dimensions(), (8, 16));
    assert!(out.get_pixel(4, 2).0[0] < 30 && out.get_pixel(4, 13).0[0] > 225);
    let then_upright = with_exif_orientation(&with_exif_orientation(&jpeg, 1), 6);
    assert_eq!(
        decode(&then_upright, &limits()).unwrap().dimensions(),
        (8, 16)
    );
    let upright_first = with_exif_orientation(&with_exif_orientation(&jpeg, 6), 1);
    assert_eq!(
        decode(&upright_first, &limits()).unwrap().dimensions(),
        (16, 8)
    );
    // An EXIF block that is not TIFF, or an orientation out of range, leaves the image upright.
    for broken in [with_exif_orientation(&jpeg, 9), {
        let mut b = with_exif_orientation(&jpeg, 6);
        b[12..16].copy_from_slice(b"XX*\0");
        b
    }] {
        assert_eq!(decode(&broken, &limits()).unwrap().dimensions(), (16, 8));
    }
}

#[test]
fn gif_gives_the_first_frame() {
    let red = image::RgbaImage::from_pixel(6, 4, Rgba([255, 0, 0, 255]));
    let blue = image::RgbaImage::from_pixel(6, 4, Rgba([0, 0, 255, 255]));
    let mut bytes = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut bytes);
        enc.encode_frames([image::Frame::new(red), image::Frame::new(blue)])
            .unwrap();
    }
    let out = decode(&bytes, &limits()).unwrap();
    assert_eq!(out.dimensions(), (6, 4));
    assert!(out.pixels().all(|p| p.0 == [255, 0, 0]));
}

#[test]
fn bmp_and_webp_decode() {
    let img = pattern(9, 3);
    let bmp = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Bmp);
    assert_eq!(decode(&bmp, &limits()).unwrap(), img);
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .write_image(img.as_raw(), 9, 3, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(sniff_format(&webp).unwrap(), Format::WebP);
    assert_eq!(decode(&webp, &limits()).unwrap(), img);
}

#[test]
fn unsupported_formats_are_named() {
    let cases: [(&[u8], &str); 8] = [
        (b"II*\0\x08\0\0\0", "TIFF"),
        (b"MM\0*\0\0\0\x08", "TIFF"),
        (
            b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            "SVG",
        ),
        (b"<svg width=\"10\"></svg>", "SVG"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIC"),
        (b"%PDF-1.7\n", "PDF"),
        (b"hello, this is not an image\n", "text"),
        (&[0x00, 0x9F, 0x13, 0x88, 0x01], "unrecognised"),
    ];
    for (bytes, name) in cases {
        let m = invalid_message(decode(bytes, &limits()));
        assert!(m.contains(name), "{m}");
        assert!(m.contains("send JPEG, PNG, WebP, GIF or BMP"), "{m}");
    }
    let m = invalid_message(decode(&[], &limits()));
    assert!(m.contains("empty"), "{m}");
}

#[test]
fn huge_png_header_is_refused_before_decoding() {
    let m = too_large_message(decode(&png_declaring(100_000, 100_000), &limits()));
    assert_eq!(
        m,
        "image is 100000×100000 pixels; the limit is 12000 px per side and 40 MP"
    );
    assert_eq!(
        probe_dimensions(&png_declaring(100_000, 100_000)).unwrap(),
        (100_000, 100_000)
    );
    // Under the side limit but over the pixel limit.
    too_large_message(decode(&png_declaring(10_000, 10_000), &limits()));
}

#[test]
fn huge_jpeg_header_is_refused() {
    let mut jpeg = encode(&DynamicImage::ImageRgb8(pattern(8, 8)), ImageFormat::Jpeg);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes()); // height
    jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes()); // width
    let m = too_large_message(decode(&jpeg, &limits()));
    assert!(m.contains("60000×60000"), "{m}");
}

#[test]
fn huge_bmp_header_is_refused() {
    let mut bmp = encode(&DynamicImage::ImageRgb8(pattern(4, 4)), ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&100_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&(-50_000i32).to_le_bytes()); // top-down rows
    let m = too_large_message(decode(&bmp, &limits()));
    assert!(m.contains("100000×50000"), "{m}");
}

#[test]
fn pixel_limit_counts_width_times_height() {
    let bytes = encode(&DynamicImage::ImageRgb8(pattern(100, 60)), ImageFormat::Png);
    let tight = DecodeLimits {
        max_pixels: 5_999,
        max_side: 1000,
        ..DecodeLimits::default()
    };
    too_large_message(decode(&bytes, &tight));
    let just = DecodeLimits {
        max_pixels: 6_000,
        max_side: 100,
        ..DecodeLimits::default()
    };
    assert!(decode(&bytes, &just).is_ok());
}

#[test]
fn gif_screen_and_frame_sizes_are_checked() {
    // Logical screen 65535x65535, then a 1x1 frame.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    assert!(too_large_message(decode(&gif, &limits())).contains("65535×65535"));
    // Small screen, huge first frame after an extension block.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0]);
    gif.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]);
    gif.extend_from_slice(&[
        0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 2, 2, 0x4C, 0x01, 0, 0x3B,
    ]);
    assert!(too_large_message(decode(&gif, &limits())).contains("65535×65535"));
}

#[test]
fn truncated_files_are_invalid() {
    let jpeg = encode(&DynamicImage::ImageRgb8(pattern(32, 32)), ImageFormat::Jpeg);
    for cut in [3, 20, jpeg.len() / 2] {
        let m = invalid_message(decode(&jpeg[..cut], &limits()));
        assert!(m.contains("JPEG"), "{m}");
    }
    let png = encode(&DynamicImage::ImageRgb8(pattern(32, 32)), ImageFormat::Png);
    invalid_message(decode(&png[..png.len() / 2], &limits()));
    invalid_message(decode(&png_declaring(10, 10), &limits()));
    invalid_message(decode(b"GIF89a", &limits()));
    invalid_message(decode(b"RIFF\0\0\0\0WEBPVP8 ", &limits()));
}

#[test]
fn corrupt_bytes_never_panic() {
    // Flip bytes all over valid files: each must decode or fail with an error, never panic.
    let sources = [
        encode(&DynamicImage::ImageRgb8(pattern(24, 16)), ImageFormat::Jpeg),
        encode(&DynamicImage::ImageRgb8(pattern(24, 16)), ImageFormat::Png),
        encode(&DynamicImage::ImageRgb8(pattern(24, 16)), ImageFormat::Bmp),
        encode(&DynamicImage::ImageRgb8(pattern(24, 16)), ImageFormat::Gif),
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for src in &sources {
        for _ in 0..200 {
            let mut b = src.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len();
                b[i] = (state >> 32) as u8;
            }
            match decode(&b, &limits()) {
                Ok(img) => assert!(img.width() > 0),
                Err(e) => assert!(e.is_client_error(), "{e:?}"),
            }
        }
    }
}

/// Insert a chunk right after IHDR (PNG chunks: length, type, data, CRC; the CRC is not checked
/// by the stripping code, and the decoder never sees dropped chunks).
fn with_chunk_after_ihdr(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let at = 8 + 12 + 13;
    let mut out = png[..at].to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&png[at..]);
    out
}

#[test]
fn compressed_text_and_icc_chunks_are_skipped_unread() {
    let clean = encode(&DynamicImage::ImageRgb8(pattern(9, 7)), ImageFormat::Png);
    let want = decode(&clean, &limits()).unwrap();
    for kind in [b"iCCP", b"zTXt", b"iTXt", b"tEXt"] {
        // Garbage where a deflate stream should be: read, it would fail the decode.
        let bytes = with_chunk_after_ihdr(&clean, kind, b"name\0\0\xde\xad\xbe\xef");
        let got = decode(&bytes, &limits()).unwrap();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(kind));
        let cost = decode_cost(&bytes, &limits()).unwrap();
        assert!(cost >= 9 * 7 * 3, "{cost}");
        assert_eq!(probe_dimensions(&bytes).unwrap(), (9, 7));
    }
}

#[test]
fn decode_errors_name_no_decoder_internals() {
    let mut png = encode(&DynamicImage::ImageRgb8(pattern(40, 30)), ImageFormat::Png);
    // Corrupt the IDAT's deflate stream.
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut png[idat + 6..idat + 30] {
        *b ^= 0x5A;
    }
    let e = decode(&png, &limits()).unwrap_err().to_string();
    assert!(e.starts_with("cannot decode this PNG"), "{e}");
    assert!(!e.contains('{') && !e.contains("ChunkType"), "{e}");
}

#[test]
fn jpeg_scans_are_counted_and_capped() {
    let prog = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/images/astronaut_progressive.jpg"),
    )
    .unwrap();
    let h = jpeg::header(&prog).unwrap();
    assert!(h.progressive && (2..=20).contains(&h.scans), "{h:?}");
    assert_eq!((h.width, h.height, h.components), (512, 512, 3));
    // Progressive: libjpeg's coefficient buffer is part of the cost.
    let cost = decode_cost(&prog, &limits()).unwrap();
    assert!(cost >= 512 * 512 * (3 * 2 + 3 + 6), "{cost}");
    let tight = DecodeLimits {
        max_jpeg_scans: h.scans - 1,
        ..limits()
    };
    for r in [decode(&prog, &tight).map(|_| 0), decode_cost(&prog, &tight)] {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(&format!("{} scans", h.scans)), "{e}");
    }
    let baseline = encode(&DynamicImage::ImageRgb8(pattern(16, 16)), ImageFormat::Jpeg);
    let h = jpeg::header(&baseline).unwrap();
    assert!(!h.progressive && h.scans == 1, "{h:?}");
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images");
    std::fs::read(dir.join(name)).unwrap()
}

/// A smooth picture with a dark left quarter, so a quarter turn shows.
fn big_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        if x < w / 4 {
            Rgb([10, 10, 10])
        } else {
            Rgb([(x / 8) as u8, (y / 8) as u8, ((x + y) / 16) as u8])
        }
    });
    encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

const CLIP_224: DecodeSize = DecodeSize::AtLeast(ResizeTarget::ShortestEdge(224));

#[test]
fn jpeg_scale_keeps_the_margin_on_the_axes_the_resize_reads() {
    // A 12 MP phone photo for a 224 shortest edge: 1/8 leaves 378 < 448, 1/4 leaves 756.
    assert_eq!(jpeg_scale(4032, 3024, false, CLIP_224), 2);
    let vit = DecodeSize::AtLeast(ResizeTarget::Exact(224, 224));
    assert_eq!(jpeg_scale(4032, 3024, false, vit), 2);
    // Under twice the target: no scaling; exact mode: never.
    assert_eq!(jpeg_scale(600, 400, false, CLIP_224), 8);
    assert_eq!(jpeg_scale(4032, 3024, false, DecodeSize::Full), 8);
    // 1/2 exactly reaches 448 on 896 (libjpeg rounds sizes up: 895 at 1/2 is 448 too).
    assert_eq!(jpeg_scale(896, 2000, false, CLIP_224), 4);
    assert_eq!(jpeg_scale(895, 2000, false, CLIP_224), 4);
    assert_eq!(jpeg_scale(894, 2000, false, CLIP_224), 8);
    // A tall target on an image stored wide and turned upright by EXIF: the stored width is the
    // upright height.
    let tall = DecodeSize::AtLeast(ResizeTarget::Exact(400, 100));
    assert_eq!(jpeg_scale(3200, 800, true, tall), 2);
    assert_eq!(jpeg_scale(3200, 800, false, tall), 8);
}

#[test]
fn fast_decode_of_a_large_jpeg_is_scaled_and_preprocesses_alike() {
    let bytes = big_jpeg(2048, 1536);
    let exact = decode(&bytes, &limits()).unwrap();
    let fast = decode_sized(&bytes, &limits(), CLIP_224).unwrap();
    assert_eq!(exact.dimensions(), (2048, 1536));
    // 1/2: 768 ≥ 2 × 224; 1/4 would leave 384.
    assert_eq!(fast.dimensions(), (1024, 768));
    let cfg = crate::preprocess::PreprocessConfig::clip(224);
    assert_eq!(
        cfg.decode_size(DecodeMode::Fast),
        CLIP_224,
        "the resize target reaches the decoder"
    );
    assert_eq!(cfg.decode_size(DecodeMode::Exact), DecodeSize::Full);
    let (a, b) = (cfg.preprocess(&exact), cfg.preprocess(&fast));
    assert_eq!(b.len(), 3 * 224 * 224);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean < 0.02 && worst < 0.5, "mean {mean}, worst {worst}");
    // The memory charged is the scaled decode's.
    let (full, scaled) = (
        decode_cost(&bytes, &limits()).unwrap(),
        decode_cost_sized(&bytes, &limits(), CLIP_224).unwrap(),
    );
    assert_eq!(full - scaled, (2048 * 1536 - 1024 * 768) * (3 * 2 + 3));
}

#[test]
fn fast_decode_below_twice_the_target_is_the_exact_decode() {
    for name in [
        "coffee.jpg",
        "chelsea_exif6.jpg",
        "page.jpg",
        "coffee_cmyk.jpg",
    ] {
        let bytes = fixture(name);
        let exact = decode(&bytes, &limits()).unwrap();
        let fast = decode_sized(&bytes, &limits(), CLIP_224).unwrap();
        assert_eq!(exact.dimensions(), fast.dimensions(), "{name}");
        assert!(exact.as_raw() == fast.as_raw(), "{name}");
        assert_eq!(
            decode_cost(&bytes, &limits()).unwrap(),
            decode_cost_sized(&bytes, &limits(), CLIP_224).unwrap()
        );
    }
}

#[test]
fn fast_decode_scales_the_upright_axes_of_a_rotated_jpeg() {
    // Stored 2048 × 1024, EXIF 6: upright 1024 × 2048. A target 448 high and 112 wide needs
    // 896 × 224 upright: 1/2 of the upright image, where the stored axes would need all of it.
    let bytes = with_exif_orientation(&big_jpeg(2048, 1024), 6);
    let exact = decode(&bytes, &limits()).unwrap();
    let tall = DecodeSize::AtLeast(ResizeTarget::Exact(448, 112));
    let fast = decode_sized(&bytes, &limits(), tall).unwrap();
    assert_eq!(exact.dimensions(), (1024, 2048));
    assert_eq!(fast.dimensions(), (512, 1024));
    // Same picture, same way up: the dark quarter is on top in both.
    let small = |img: &RgbImage| {
        image::imageops::resize(img, 64, 128, image::imageops::FilterType::Triangle).into_raw()
    };
    let (a, b) = (small(&exact), small(&fast));
    assert!(mean_abs_diff(&a, &b) < 2.0, "{}", mean_abs_diff(&a, &b));
    let top = |img: &RgbImage| img.get_pixel(img.width() / 2, img.height() / 16).0[0];
    assert!(top(&exact) < 30 && top(&fast) < 30);
    // Turned the wrong way it would differ a lot: the check can fail.
    let wrong = image::imageops::rotate180(&exact);
    assert!(mean_abs_diff(&small(&wrong), &b) > 10.0);
}

#[test]
fn fast_mode_leaves_png_and_webp_alone() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(1200, 1000, |x, y| {
        Rgb([(x / 5) as u8, (y / 4) as u8, 9])
    }));
    for format in [ImageFormat::Png, ImageFormat::WebP] {
        let bytes = encode(&img, format);
        let exact = decode(&bytes, &limits()).unwrap();
        let fast = decode_sized(&bytes, &limits(), CLIP_224).unwrap();
        assert_eq!(fast.dimensions(), (1200, 1000), "{format:?}");
        assert!(exact.as_raw() == fast.as_raw(), "{format:?}");
        assert_eq!(
            decode_cost(&bytes, &limits()).unwrap(),
            decode_cost_sized(&bytes, &limits(), CLIP_224).unwrap()
        );
    }
}
