//! JPEG pixels through libjpeg-turbo's decoder (vendored in the `mozjpeg` crate, built with the C
//! compiler, plus its SIMD code when `nasm` is on the build machine: libjpeg-turbo's SIMD paths give
//! the C paths' bytes, and `tests/preprocess_parity.rs` holds both to PIL's output), because that is
//! the decoder PIL uses: with the same accurate
//! integer IDCT and "fancy" chroma upsampling the RGB8 output is bit-identical to PIL's, where the
//! `image` crate's zune-jpeg differs by up to 5 per sample on 10–16% of samples of ordinary photos.
//! The dimensions, scan count and EXIF block come from [`header`], our own walk of the markers
//! (no other decoder copies or parses the bytes first); the `image` crate reads the orientation
//! out of that EXIF block.

use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg::{ColorSpace, Decompress};

/// Pillow's `MULDIV255(a, b)`: `a * b / 255`, rounded, in integers.
#[inline]
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// A CMYK sample as stored in the file to RGB, as PIL does it: PIL always assumes Adobe's inverted
/// polarity (`rawmode = "CMYK;I"`), then `convert("RGB")` computes `nk - MULDIV255(c, nk)` with
/// `nk = 255 - k`. With `stored = 255 - value` that is `sk - MULDIV255(255 - sc, sk)`.
#[inline]
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = u32::from(p[3]);
    [0, 1, 2].map(|i| (nk - muldiv255(255 - u32::from(p[i]), nk)) as u8)
}

/// Whether the bytes hold a complete image: an end-of-image marker after the first start-of-scan.
/// libjpeg pads a truncated file with grey and only warns; PIL refuses it ("image file is
/// truncated"), and so do we. Entropy-coded data cannot contain `FF D9`, and walking the marker
/// segments skips any thumbnail inside EXIF.
pub(super) fn is_complete(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1; // extraneous bytes between segments: libjpeg skips them too
            continue;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1,
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                let end = i + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                if marker == 0xDA {
                    // The end marker is almost always the file's last two bytes: search backwards.
                    return bytes
                        .get(end..)
                        .is_some_and(|rest| memchr::memmem::rfind(rest, &[0xFF, 0xD9]).is_some());
                }
                i = end;
            }
        }
    }
    false
}

/// What the markers before the pixels say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    /// SOF2/SOF6/SOF10/SOF14: libjpeg keeps the whole image's coefficients in memory.
    pub progressive: bool,
    /// Start-of-scan markers in the file: each is one more pass over the coefficients.
    pub scans: u32,
    /// Where the first EXIF block before the first scan lies (the APP1 payload after
    /// `Exif\0\0`): the one PIL reads, so the orientation transformers' `load_image` applies.
    pub exif: Option<std::ops::Range<usize>>,
}

/// Read the frame header and count the scans, walking the marker segments (so an EXIF thumbnail
/// inside APP1 counts nothing) and, from the first scan on, the entropy-coded data, where `FF`
/// is only ever followed by `00` (stuffing), `FF` (fill) or a marker.
pub(super) fn header(bytes: &[u8]) -> Result<Header, String> {
    let mut frame = None;
    let mut i = 2;
    let mut scans = 0u32;
    let mut exif = None;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF | 0x00 | 0x01 | 0xD0..=0xD7 => i += if marker == 0xFF { 1 } else { 2 },
            0xD9 => break,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    break;
                };
                let end = i + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                let seg = bytes.get(i + 4..end.min(bytes.len())).unwrap_or_default();
                let sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
                if sof && frame.is_none() && seg.len() >= 6 {
                    frame = Some(Header {
                        height: u32::from(u16::from_be_bytes([seg[1], seg[2]])),
                        width: u32::from(u16::from_be_bytes([seg[3], seg[4]])),
                        components: u32::from(seg[5]),
                        progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
                        scans: 0,
                        exif: None,
                    });
                }
                if marker == 0xE1
                    && scans == 0
                    && exif.is_none()
                    && seg.len() > 6
                    && seg.starts_with(b"Exif\0\0")
                {
                    exif = Some(i + 10..end.min(bytes.len()));
                }
                if marker == 0xDA {
                    scans += 1;
                    // Skip the entropy-coded data up to the next marker.
                    i = next_marker(bytes, end);
                    continue;
                }
                i = end;
            }
        }
    }
    let mut h = frame.ok_or("no frame header (SOF) before the image data")?;
    h.scans = scans;
    h.exif = exif;
    Ok(h)
}

/// The index of the first marker at or after `from` in entropy-coded data (`bytes.len()` when
/// there is none): an `FF` not followed by `00` (stuffing), `FF` (fill) or a restart marker.
/// `memchr` finds the `FF`s, so a 3 MB scan is read at memory speed, not a byte per step.
fn next_marker(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(off) = bytes.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) {
        i += off;
        match bytes.get(i + 1) {
            None => return bytes.len(),
            Some(0x00 | 0xFF | 0xD0..=0xD7) => i += 1,
            Some(_) => return i,
        }
    }
    bytes.len()
}

/// Decode to RGB8 or L8, scaled by `num / 8` in the DCT domain (8: every pixel, untouched
/// settings). Errors are libjpeg's messages; libjpeg's fatal errors unwind, and the caller's
/// `catch_unwind` turns them into `InvalidImage`.
pub(super) fn decode(bytes: &[u8], num: u8) -> Result<DynamicImage, String> {
    if !is_complete(bytes) {
        return Err("the file is truncated".into());
    }
    let mut d = Decompress::new_mem(bytes).map_err(|e| e.to_string())?;
    if num != 8 {
        d.scale(num);
    }
    let io = |e: std::io::Error| e.to_string();
    // The output size: libjpeg's `ceil(side * num / 8)` once scaled.
    let size =
        |s: &mozjpeg::decompress::DecompressStarted<&[u8]>| (s.width() as u32, s.height() as u32);
    let img = match d.color_space() {
        ColorSpace::JCS_GRAYSCALE => {
            let mut s = d.grayscale().map_err(io)?;
            let (w, h) = size(&s);
            let px: Vec<u8> = s.read_scanlines().map_err(io)?;
            s.finish().map_err(io)?;
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).ok_or("short read")?)
        }
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut s = d.to_colorspace(ColorSpace::JCS_CMYK).map_err(io)?;
            let (w, h) = size(&s);
            let px: Vec<[u8; 4]> = s.read_scanlines().map_err(io)?;
            s.finish().map_err(io)?;
            let rgb: Vec<u8> = px.iter().flat_map(|p| cmyk_to_rgb(p)).collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, rgb).ok_or("short read")?)
        }
        _ => {
            let mut s = d.rgb().map_err(io)?;
            let (w, h) = size(&s);
            let px: Vec<[u8; 3]> = s.read_scanlines().map_err(io)?;
            s.finish().map_err(io)?;
            // The same allocation, seen as bytes (no second copy of a 40 MP image).
            let raw: Vec<u8> = px.into_flattened();
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, raw).ok_or("short read")?)
        }
    };
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_follows_pil() {
        // Stored values are inverted: stored 255 everywhere is no ink, i.e. white.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        // Full black ink (stored k = 0) is black whatever the colour inks.
        assert_eq!(cmyk_to_rgb(&[17, 200, 3, 0]), [0, 0, 0]);
        // Full cyan (stored c = 0), no black: red channel 0, others 255.
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
        // nk = 128, c = 255 - 100 = 155: 128 - round(155 * 128 / 255) = 128 - 78 = 50.
        assert_eq!(cmyk_to_rgb(&[100, 255, 255, 128])[0], 50);
    }

    #[test]
    fn the_marker_search_skips_stuffing_fill_and_restarts() {
        // Entropy-coded bytes with a stuffed FF 00, a restart marker and fill bytes, then EOI.
        let data = [
            0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF, 0xD9, 0x00,
        ];
        assert_eq!(next_marker(&data, 0), 8);
        assert_eq!(next_marker(&data, 9), data.len());
        // A lone FF at the very end is not a marker.
        assert_eq!(next_marker(&[0x01, 0xFF], 0), 2);
        assert_eq!(next_marker(&[0xFF, 0xC4, 0x00], 0), 0);
        // Two scans (a progressive file's DC and AC passes) are both counted.
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x08, 8, 0, 16, 0, 32, 3]);
        for _ in 0..2 {
            j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x01, 0xFF, 0x00, 0xFF, 0xD0, 0x02]);
        }
        j.extend_from_slice(&[0xFF, 0xD9]);
        let h = header(&j).unwrap();
        assert_eq!(
            (h.width, h.height, h.scans, h.progressive),
            (32, 16, 2, true)
        );
    }

    #[test]
    fn completeness_needs_an_end_marker_after_the_scan() {
        let mut j = vec![0xFF, 0xD8];
        // An APP1 segment whose payload contains FF D9 (like an EXIF thumbnail) does not count.
        j.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00]);
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0x00, 0x56]);
        assert!(!is_complete(&j));
        j.extend_from_slice(&[0xFF, 0xD9]);
        assert!(is_complete(&j));
        assert!(!is_complete(&[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(!is_complete(&[0xFF, 0xD8, 0xFF]));
    }
}
