//! Image decoding with limits, for bytes from strangers.
//!
//! The format is sniffed from the magic bytes (never from a file name or Content-Type); the
//! dimensions are read from the header and checked before any pixel is decoded; for formats other
//! than JPEG (libjpeg, see `jpeg.rs`) the `image` crate's own `Limits` are set as a second guard;
//! a decoder panic or libjpeg's fatal error is caught and reported as an
//! invalid image. The result is what the Hugging Face pipeline sees after PIL: first frame, EXIF
//! orientation applied, 16-bit samples rounded to 8 bits, alpha composited onto white exactly as
//! PIL's `Image.alpha_composite` does, greyscale replicated to RGB.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::preprocess::ResizeTarget;
use crate::{CoreError, Result};

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Most scans a JPEG may have. A progressive JPEG's decode cost grows with its scan count (each
    /// scan is a pass over the whole coefficient buffer): thousands of empty scans make a 143 KB
    /// file cost seconds of CPU. Real encoders write about 10 (libjpeg) to 20 (mozjpeg).
    pub max_jpeg_scans: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 40_000_000,
            max_side: 12_000,
            max_jpeg_scans: MAX_JPEG_SCANS,
        }
    }
}

/// How a JPEG is decoded (`GLIMPSE_DECODE`). Other formats are always decoded in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeMode {
    /// Every pixel, then the Pillow-exact resize: preprocessing byte-identical to Pillow.
    #[default]
    Exact,
    /// libjpeg's DCT-domain scaling (1/2, 1/4 or 1/8) down to the smallest size that still holds
    /// [`FAST_MARGIN`] times the resize target, then the same exact resampler.
    Fast,
}

/// How much a fast decode keeps above the resize target on each axis the resize reads, so the
/// exact resampler still downsamples by at least this factor (and its filter, not libjpeg's
/// scaled IDCT, sets the result's look).
pub const FAST_MARGIN: u32 = 2;

/// How much of a JPEG's resolution [`decode_sized`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeSize {
    /// Every pixel (what Pillow decodes).
    Full,
    /// Enough for this resize of the upright (EXIF-oriented) image, times [`FAST_MARGIN`].
    AtLeast(ResizeTarget),
}

/// libjpeg's scale numerator (over 8) for a JPEG of `width × height` as stored: the smallest of
/// 1/8, 1/4, 1/2 whose output, turned upright (`swapped` when EXIF rotates it a quarter turn),
/// still holds `FAST_MARGIN` times the target on the axes the resize reads; 8 (no scaling) when
/// none does. libjpeg's scaled size is `ceil(side * num / 8)`.
pub fn jpeg_scale(width: u32, height: u32, swapped: bool, size: DecodeSize) -> u8 {
    let DecodeSize::AtLeast(target) = size else {
        return 8;
    };
    let (w, h) = if swapped {
        (u64::from(height), u64::from(width))
    } else {
        (u64::from(width), u64::from(height))
    };
    let m = u64::from(FAST_MARGIN);
    for num in [1u8, 2, 4] {
        let (sw, sh) = (
            (w * u64::from(num)).div_ceil(8),
            (h * u64::from(num)).div_ceil(8),
        );
        let enough = match target {
            ResizeTarget::ShortestEdge(s) => sw.min(sh) >= u64::from(s) * m,
            ResizeTarget::Exact(th, tw) => sh >= u64::from(th) * m && sw >= u64::from(tw) * m,
        };
        if enough {
            return num;
        }
    }
    8
}

/// Default for [`DecodeLimits::max_jpeg_scans`].
pub const MAX_JPEG_SCANS: u32 = 100;

/// Working memory every decode is charged on top of its pixel buffers (decoder state, row
/// buffers, the resampler's strip).
const DECODE_SLACK_BYTES: u64 = 4 << 20;

/// The formats Glimpse decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Bmp,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Gif => "GIF",
            Format::WebP => "WebP",
            Format::Bmp => "BMP",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::Gif => ImageFormat::Gif,
            Format::WebP => ImageFormat::WebP,
            Format::Bmp => ImageFormat::Bmp,
        }
    }
}

const SUPPORTED: &str = "send JPEG, PNG, WebP, GIF or BMP";

/// The format of `bytes`, from their magic numbers. Anything else is `InvalidImage`, naming what
/// the bytes look like ("unsupported image format: TIFF; send JPEG, PNG, WebP, GIF or BMP").
pub fn sniff_format(bytes: &[u8]) -> Result<Format> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    if starts(b"BM") && bytes.len() >= 26 {
        return Ok(Format::Bmp);
    }
    if bytes.is_empty() {
        return Err(CoreError::InvalidImage(
            "the image is empty (0 bytes)".into(),
        ));
    }
    Err(CoreError::InvalidImage(format!(
        "unsupported image format: {}; {SUPPORTED}",
        describe_unsupported(bytes)
    )))
}

/// A human name for bytes we do not decode.
fn describe_unsupported(bytes: &[u8]) -> &'static str {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return "TIFF";
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => "HEIC/HEIF",
            _ => "an ISO media file (MP4/MOV/HEIF family)",
        };
    }
    if starts(b"\0\0\0\x0cjP  ") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return "JPEG 2000";
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL ") {
        return "JPEG XL";
    }
    if starts(b"%PDF") {
        return "PDF";
    }
    if starts(b"8BPS") {
        return "Photoshop (PSD)";
    }
    if starts(&[0, 0, 1, 0]) || starts(&[0, 0, 2, 0]) {
        return "ICO/CUR";
    }
    if starts(b"qoif") {
        return "QOI";
    }
    if starts(b"BM") {
        return "a truncated BMP";
    }
    let head = &bytes[..bytes.len().min(1024)];
    if let Ok(text) = std::str::from_utf8(head) {
        let lower = text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .to_ascii_lowercase();
        if lower.contains("<svg") {
            return "SVG";
        }
        if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
            return "HTML";
        }
        if lower.starts_with("<?xml") {
            return "XML";
        }
        if lower.starts_with('{') || lower.starts_with('[') {
            return "JSON";
        }
        if text.chars().all(|c| !c.is_control() || c.is_whitespace()) {
            return "text";
        }
    }
    "unrecognised binary data"
}

fn invalid(format: Format, e: impl std::fmt::Display) -> CoreError {
    CoreError::InvalidImage(format!("cannot decode this {}: {e}", format.name()))
}

/// An `image` crate error as a client can read it: its own text names decoder internals
/// (`ChunkType { type: IDAT, .. }`), so only the kind of failure is told; the detail is logged.
fn image_error(format: Format, e: image::ImageError) -> CoreError {
    match e {
        image::ImageError::Limits(_) => CoreError::ImageTooLarge(format!(
            "this {} needs more memory to decode than the limits allow",
            format.name()
        )),
        image::ImageError::Unsupported(_) => {
            invalid(format, "it uses a feature Glimpse does not decode")
        }
        _ => invalid(format, "the data is corrupt or truncated"),
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(CoreError::InvalidImage(format!(
            "the image header declares {width}×{height} pixels"
        )));
    }
    if width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(CoreError::ImageTooLarge(format!(
            "image is {width}×{height} pixels; the limit is {} px per side and {} MP",
            limits.max_side,
            limits.max_pixels as f64 / 1e6
        )));
    }
    Ok(())
}

/// Sizes the header declares, read straight from the bytes for the formats where that is a few
/// fixed offsets, so that they are refused before any decoder runs (PNG's decoder reads on to the
/// first IDAT; GIF's reports only the logical screen, and allocates the first frame's own size).
fn declared_sizes(bytes: &[u8], format: Format) -> Vec<(u32, u32)> {
    let u16_le = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_be = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let i32_le = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match format {
        Format::Png if bytes.get(12..16) == Some(b"IHDR") => {
            u32_be(16).zip(u32_be(20)).into_iter().collect()
        }
        // BITMAPINFOHEADER and later; a negative height means top-down rows.
        Format::Bmp if i32_le(14).is_some_and(|n| n >= 40) => i32_le(18)
            .zip(i32_le(22))
            .map(|(w, h)| (w.unsigned_abs(), h.unsigned_abs()))
            .into_iter()
            .collect(),
        Format::Gif => gif_sizes(bytes, u16_le),
        _ => Vec::new(),
    }
}

/// GIF: the logical screen and the first frame's descriptor.
fn gif_sizes(bytes: &[u8], u16_le: impl Fn(usize) -> Option<u32>) -> Vec<(u32, u32)> {
    let mut sizes: Vec<(u32, u32)> = u16_le(6).zip(u16_le(8)).into_iter().collect();
    let Some(&flags) = bytes.get(10) else {
        return sizes;
    };
    let mut i = 13;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    // Skip extension blocks (0x21, label, sub-blocks ending with a zero length) to the first
    // image descriptor (0x2C).
    while let Some(&b) = bytes.get(i) {
        match b {
            0x21 => {
                i += 2;
                while let Some(&len) = bytes.get(i) {
                    i += 1 + len as usize;
                    if len == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                sizes.extend(u16_le(i + 5).zip(u16_le(i + 7)));
                break;
            }
            _ => break,
        }
    }
    sizes
}

/// `(width, height)` as the header declares them (before EXIF orientation), without decoding.
pub fn probe_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    let format = sniff_format(bytes)?;
    if let Some(&size) = declared_sizes(bytes, format).first() {
        return Ok(size);
    }
    let bytes = strip_png_text(bytes, format);
    guarded(format, || {
        let reader = ImageReader::with_format(Cursor::new(&bytes[..]), format.image_format());
        reader.into_dimensions().map_err(|e| image_error(format, e))
    })
}

/// The most memory [`decode`] (plus preprocessing's small strip) can hold at once for these
/// bytes, from the header alone: the decoder's output buffer, the copy that EXIF rotation or the
/// flattening to RGB8 makes while it is alive, the RGB8 result, and for a progressive JPEG
/// libjpeg's whole-image coefficient buffer (2 bytes per sample). Refuses what [`decode`] would
/// refuse from the header (size limits, too many JPEG scans), so a caller can admit the decode
/// against a memory budget before any pixel is allocated.
pub fn decode_cost(bytes: &[u8], limits: &DecodeLimits) -> Result<u64> {
    decode_cost_sized(bytes, limits, DecodeSize::Full)
}

/// [`decode_cost`] for [`decode_sized`]: a JPEG decoded at a reduced scale is charged its scaled
/// pixel buffers (the progressive coefficient buffer stays full size). The EXIF orientation is
/// not read here, so the scale charged is the larger of the upright and the rotated choice.
pub fn decode_cost_sized(bytes: &[u8], limits: &DecodeLimits, size: DecodeSize) -> Result<u64> {
    let format = sniff_format(bytes)?;
    for (w, h) in declared_sizes(bytes, format) {
        check_dimensions(w, h, limits)?;
    }
    if format == Format::Jpeg {
        let info = jpeg::header(bytes).map_err(|e| invalid(format, e))?;
        check_dimensions(info.width, info.height, limits)?;
        check_scans(&info, limits)?;
        let full = u64::from(info.width) * u64::from(info.height);
        let num = jpeg_scale(info.width, info.height, false, size).max(jpeg_scale(
            info.width,
            info.height,
            true,
            size,
        ));
        let scaled = |side: u32| (u64::from(side) * u64::from(num)).div_ceil(8);
        let px = scaled(info.width) * scaled(info.height);
        let decoded = px * u64::from(info.components.clamp(1, 4));
        let coefficients = if info.progressive {
            full * u64::from(info.components) * 2
        } else {
            0
        };
        return Ok(decoded * 2 + px * 3 + coefficients + DECODE_SLACK_BYTES);
    }
    let stripped = strip_png_text(bytes, format);
    let (w, h, decoded) = guarded(format, || {
        let reader = ImageReader::with_format(Cursor::new(&stripped[..]), format.image_format());
        let decoder = reader.into_decoder().map_err(|e| image_error(format, e))?;
        let (w, h) = decoder.dimensions();
        Ok((w, h, decoder.total_bytes()))
    })?;
    check_dimensions(w, h, limits)?;
    let px = u64::from(w) * u64::from(h);
    // GIF: the first frame's own buffer beside the RGBA canvas.
    let frame = if format == Format::Gif { decoded } else { 0 };
    Ok(decoded * 2 + frame + px * 3 + DECODE_SLACK_BYTES)
}

fn check_scans(info: &jpeg::Header, limits: &DecodeLimits) -> Result<()> {
    if info.scans > limits.max_jpeg_scans {
        return Err(CoreError::InvalidImage(format!(
            "this JPEG has {} scans; at most {} are decoded (ordinary progressive JPEGs have 10 to 20)",
            info.scans, limits.max_jpeg_scans
        )));
    }
    Ok(())
}

/// PNG without its compressed text and ICC profile chunks (`zTXt`, `iTXt`, `tEXt`, `iCCP`): none
/// changes the pixels Glimpse (or PIL's `convert("RGB")`) produces, and a few KB of deflate in
/// them inflate to hundreds of MB when a decoder reads the header. Other formats pass unchanged.
fn strip_png_text(bytes: &[u8], format: Format) -> std::borrow::Cow<'_, [u8]> {
    const DROP: [&[u8; 4]; 4] = [b"zTXt", b"iTXt", b"tEXt", b"iCCP"];
    if format != Format::Png {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut i = 8;
    let mut spans = Vec::new();
    while let Some(len) = bytes.get(i..i + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = i.saturating_add(12).saturating_add(len).min(bytes.len());
        let kind = bytes.get(i + 4..i + 8);
        if kind.is_some_and(|k| DROP.iter().any(|d| k == &d[..])) {
            spans.push(i..end);
        }
        if kind == Some(b"IEND") || end == bytes.len() {
            break;
        }
        i = end;
    }
    if spans.is_empty() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for span in spans {
        out.extend_from_slice(&bytes[from..span.start]);
        from = span.end;
    }
    out.extend_from_slice(&bytes[from..]);
    std::borrow::Cow::Owned(out)
}

/// Run `f`, turning a decoder panic into `InvalidImage`.
fn guarded<T>(format: Format, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        // libjpeg's fatal errors arrive as a String payload; other panics say nothing useful.
        let why = payload
            .downcast_ref::<String>()
            .map(|s| s.trim_start_matches("libjpeg fatal error: ").to_string())
            .unwrap_or_else(|| "the decoder failed on malformed data".into());
        Err(invalid(format, why))
    })
}

/// Decode bytes into RGB8: sniff the format from the bytes, check dimensions before decoding,
/// decode the first frame, apply EXIF orientation, flatten alpha onto white.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    decode_sized(bytes, limits, DecodeSize::Full)
}

/// [`decode`], decoding a JPEG only as large as `size` needs (see [`jpeg_scale`]); with
/// [`DecodeSize::Full`], and for every other format, exactly [`decode`].
pub fn decode_sized(bytes: &[u8], limits: &DecodeLimits, size: DecodeSize) -> Result<RgbImage> {
    let format = sniff_format(bytes)?;
    for (w, h) in declared_sizes(bytes, format) {
        check_dimensions(w, h, limits)?;
    }
    if format == Format::Jpeg {
        let info = jpeg::header(bytes).map_err(|e| invalid(format, e))?;
        check_scans(&info, limits)?;
        check_dimensions(info.width, info.height, limits)?;
        let img = guarded(format, || decode_jpeg(bytes, &info, size))?;
        return Ok(flatten_to_rgb8(img));
    }
    let bytes = strip_png_text(bytes, format);
    let img = guarded(format, || decode_checked(&bytes, format, limits))?;
    Ok(flatten_to_rgb8(img))
}

/// A JPEG through libjpeg, at the scale `size` allows, turned upright by its EXIF orientation
/// (read from the block [`jpeg::header`] found; a broken one counts as upright). The header was
/// read and checked by the caller, so no other decoder looks at the bytes first.
fn decode_jpeg(bytes: &[u8], info: &jpeg::Header, size: DecodeSize) -> Result<DynamicImage> {
    use image::metadata::Orientation as O;
    let orientation = info
        .exif
        .clone()
        .and_then(|r| bytes.get(r))
        .and_then(O::from_exif_chunk)
        .unwrap_or(O::NoTransforms);
    let swapped = matches!(
        orientation,
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH
    );
    let num = jpeg_scale(info.width, info.height, swapped, size);
    let mut img = jpeg::decode(bytes, num).map_err(|e| invalid(Format::Jpeg, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn decode_checked(bytes: &[u8], format: Format, limits: &DecodeLimits) -> Result<DynamicImage> {
    // The reader parses only the header here; the default limits (512 MiB) still bound anything
    // a decoder might allocate while doing so.
    let reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut decoder = reader.into_decoder().map_err(|e| image_error(format, e))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h, limits)?;

    // Second guard: the decoder's own limits. Sixteen-bit RGBA is 8 bytes a pixel; the slack
    // covers GIF frame buffers and decoder scratch space.
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // What this image's pixels need (the header said so), not what the largest allowed image
    // would: nothing a decoder allocates beyond its own buffers gets more than 64 MB.
    lim.max_alloc = Some(decoder.total_bytes().saturating_add(64 << 20));
    decoder
        .set_limits(lim)
        .map_err(|e| CoreError::ImageTooLarge(format!("image over the limits: {e}")))?;

    // A broken EXIF block is not worth refusing the image for: treat it as upright.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_error(format, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// 16-bit sample to 8 bits, rounded: `(v + 128) // 257` (there are no ties). This is what the
/// reference fixtures do for 16-bit greyscale (PIL's own `convert` would clip it at 255). For
/// 16-bit RGB(A) PNGs PIL keeps the high byte (`v >> 8`), at most 1 lower; we round them too.
#[inline]
pub fn to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

/// Colour `c` with alpha `a` over opaque white: PIL's `alpha_composite` onto white, which equals
/// `(c*a + 255*(255-a) + 127) // 255` for every `c`, `a` (checked against PIL by
/// tools/make_fixtures.py).
#[inline]
pub fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

fn flatten_to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let rgb = |f: &mut dyn FnMut(usize) -> [u8; 3]| -> RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for i in 0..w as usize * h as usize {
            out.extend_from_slice(&f(i));
        }
        RgbImage::from_raw(w, h, out).expect("buffer sized for the image")
    };
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => {
            let p = i.as_raw();
            rgb(&mut |k| [p[k]; 3])
        }
        DynamicImage::ImageLumaA8(i) => {
            let p = i.as_raw();
            rgb(&mut |k| [over_white(p[2 * k], p[2 * k + 1]); 3])
        }
        DynamicImage::ImageRgba8(i) => {
            let p = i.as_raw();
            rgb(&mut |k| {
                let a = p[4 * k + 3];
                [0, 1, 2].map(|c| over_white(p[4 * k + c], a))
            })
        }
        DynamicImage::ImageLuma16(i) => {
            let p = i.as_raw();
            rgb(&mut |k| [to_u8(p[k]); 3])
        }
        DynamicImage::ImageLumaA16(i) => {
            let p = i.as_raw();
            rgb(&mut |k| [over_white(to_u8(p[2 * k]), to_u8(p[2 * k + 1])); 3])
        }
        DynamicImage::ImageRgb16(i) => {
            let p = i.as_raw();
            rgb(&mut |k| [0, 1, 2].map(|c| to_u8(p[3 * k + c])))
        }
        DynamicImage::ImageRgba16(i) => {
            let p = i.as_raw();
            rgb(&mut |k| {
                let a = to_u8(p[4 * k + 3]);
                [0, 1, 2].map(|c| over_white(to_u8(p[4 * k + c]), a))
            })
        }
        // Float images do not come out of the decoders enabled here; flatten them the same way.
        other => {
            let rgba = other.to_rgba8();
            let p = rgba.as_raw();
            rgb(&mut |k| {
                let a = p[4 * k + 3];
                [0, 1, 2].map(|c| over_white(p[4 * k + c], a))
            })
        }
    }
}

mod jpeg;

#[cfg(test)]
#[path = "image/tests.rs"]
mod tests;
