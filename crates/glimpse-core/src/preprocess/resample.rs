//! A port of Pillow's `Image.resize` for RGB8 images (libImaging/Resample.c, the 8-bit path, and
//! Geometry.c's `ImagingScaleAffine` for NEAREST), so that our resized pixels are byte-identical
//! to what the Hugging Face (PIL-backed) image processors feed their models.
//!
//! Convolution filters: separable, in Pillow 13's order (horizontal pass first over only the rows
//! the vertical pass needs, unless the height shrinks by more than twice the width: then vertical
//! first); the filter support grows with the downscale factor (antialiasing); coefficients are
//! normalised in f64, then turned into fixed point with `PRECISION_BITS` fractional bits, and each
//! output is rounded and clipped to u8 after each pass, exactly as Pillow does. Every constant and
//! every float → int conversion below mirrors the C code; change none of them without re-running
//! `tools/make_resize_fixtures.py` and the `resize_matches_pillow` test.

use std::f64::consts::PI;
use std::ops::Range;

/// Pillow's resampling filter numbers (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Filter {
    pub fn from_pil(n: u32) -> Option<Filter> {
        Some(match n {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// Half-width of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
            Filter::Nearest => 0.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    // The C source writes `0.54f + 0.46f * cos(x)`: float literals widened to double.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Nearest => 0.0,
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * PI;
        x.sin() / x
    }
}

/// Fractional bits of the fixed-point coefficients: 8 bits for the result, 2 for overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, number of taps, and `ksize` fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full-image box `[0, in_size)`, for the
/// output indices `outs` only (each output pixel's taps depend on nothing else).
fn precompute(in_size: usize, out_size: usize, outs: Range<usize>, filter: Filter) -> Coeffs {
    // Pillow keeps the box in C `float`; for sizes < 2^24 that is exact, as it is here.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(outs.len());
    let mut weights = vec![0i32; outs.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in outs.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, xmax) = (xmin as usize, xmax.clamp(0, ksize as i64) as usize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[i * ksize..i * ksize + ksize];
        for (x, out) in row.iter_mut().enumerate().take(xmax) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            *out = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

impl Coeffs {
    /// The input indices all these outputs read: from the first's first tap to past the last's
    /// last (taps move forward with the output index).
    fn span(&self) -> (usize, usize) {
        let (a, _) = self.bounds[0];
        let (b, n) = self.bounds[self.bounds.len() - 1];
        (a, b + n)
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (min, n) = self.bounds[i];
        (min, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// Pillow's `clip8`: drop the fractional bits (arithmetic shift) and clamp to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A rectangle of the output image: `resize_window_rgb8` computes only these pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Resize an interleaved RGB8 buffer of `w × h` to `out_w × out_h` exactly as Pillow's
/// `Image.resize((out_w, out_h), filter)` does for an `RGB` image.
///
/// # Panics
/// If `src` is not `w * h * 3` bytes or a size is zero (callers check; decoded images never are).
pub fn resize_rgb8(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    let all = Window {
        x: 0,
        y: 0,
        width: out_w,
        height: out_h,
    };
    resize_window_rgb8(src, (w, h), (out_w, out_h), all, filter)
}

/// The pixels of `win` (interleaved RGB8, `win.width × win.height`) out of the `out_w × out_h`
/// resize of `src`: the same bytes as resizing the whole image with Pillow and cropping.
///
/// # Panics
/// If `src` is not `w * h * 3` bytes, a size is zero, or `win` is not inside the output.
pub fn resize_window_rgb8(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    win: Window,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "buffer does not match its size");
    assert!(w > 0 && h > 0 && out_w > 0 && out_h > 0, "empty image");
    assert!(win.x + win.width <= out_w && win.y + win.height <= out_h);
    if win.width == 0 || win.height == 0 {
        return Vec::new();
    }
    if filter == Filter::Nearest {
        return nearest(src, (w, h), (out_w, out_h), win);
    }
    let cols = win.x..win.x + win.width;
    let rows = win.y..win.y + win.height;
    // Pillow skips a pass whose size does not change.
    let need_h = out_w != w;
    let need_v = out_h != h;
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the
    // width does (signed: any vertical downscale beside a horizontal upscale). The order changes
    // the bytes (each pass rounds to u8), so it is Pillow's rule, integer for integer.
    let (hi, wi, ohi, owi) = (h as i64, w as i64, out_h as i64, out_w as i64);
    let horizontal_first = !(hi - ohi > 0 && hi - ohi > (wi - owi) * 2);
    if horizontal_first {
        horizontal_then_vertical(
            src,
            (w, h),
            (out_w, out_h),
            cols,
            rows,
            (need_h, need_v),
            filter,
        )
    } else {
        vertical_then_horizontal(src, (w, h), (out_w, out_h), cols, rows, need_h, filter)
    }
}

/// The window's pixels, horizontal pass first (over only the source rows the vertical pass reads).
fn horizontal_then_vertical(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
    (need_h, need_v): (bool, bool),
    filter: Filter,
) -> Vec<u8> {
    let (win_w, win_h) = (cols.len(), rows.len());
    let vert = precompute(h, out_h, rows.clone(), filter);
    // Source rows the horizontal pass must produce: those the vertical pass reads, or the
    // window's own rows when there is no vertical pass.
    let (first_row, last_row) = if need_v {
        vert.span()
    } else {
        (rows.start, rows.end)
    };

    let tmp = if need_h {
        let horiz = precompute(w, out_w, cols, filter);
        let mut tmp = vec![0u8; win_w * (last_row - first_row) * 3];
        horizontal(src, w, first_row..last_row, &horiz, &mut tmp);
        tmp
    } else {
        crop_rows(src, w, cols, first_row..last_row)
    };
    if !need_v {
        return tmp;
    }
    let row_len = win_w * 3;
    let mut out = vec![0u8; win_w * win_h * 3];
    let mut acc = vec![0i32; row_len];
    for (yy, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, k) = vert.taps(yy);
        let ymin = ymin - first_row;
        vertical_row(&tmp[ymin * row_len..], row_len, k, &mut acc, dst);
    }
    out
}

/// The window's pixels, vertical pass first (over only the source columns the horizontal pass
/// reads), then the horizontal pass over that narrow strip.
fn vertical_then_horizontal(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
    need_h: bool,
    filter: Filter,
) -> Vec<u8> {
    let (win_w, win_h) = (cols.len(), rows.len());
    let vert = precompute(h, out_h, rows, filter);
    let mut horiz = need_h.then(|| precompute(w, out_w, cols.clone(), filter));
    // Source columns the horizontal pass reads (or the window's own without one).
    let (first_col, last_col) = match &horiz {
        Some(c) => c.span(),
        None => (cols.start, cols.end),
    };
    let strip_w = last_col - first_col;
    // The vertical pass: the window's rows, `strip_w` columns wide.
    let row_len = strip_w * 3;
    let mut strip = vec![0u8; row_len * win_h];
    let mut acc = vec![0i32; row_len];
    let stride = w * 3;
    for (yy, dst) in strip.chunks_exact_mut(row_len).enumerate() {
        let (ymin, k) = vert.taps(yy);
        let start = ymin * stride + first_col * 3;
        vertical_row_strided(&src[start..], stride, row_len, k, &mut acc, dst);
    }
    let Some(horiz) = horiz.as_mut() else {
        return strip;
    };
    // The strip starts at `first_col`: shift the taps to it.
    for b in &mut horiz.bounds {
        b.0 -= first_col;
    }
    let mut out = vec![0u8; win_w * win_h * 3];
    horizontal(&strip, strip_w, 0..win_h, horiz, &mut out);
    out
}

/// Columns `cols` of source rows `rows`, as a packed buffer.
fn crop_rows(src: &[u8], w: usize, cols: Range<usize>, rows: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(cols.len() * rows.len() * 3);
    for y in rows {
        out.extend_from_slice(&src[(y * w + cols.start) * 3..(y * w + cols.end) * 3]);
    }
    out
}

thread_local! {
    static SCALAR_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: make this thread's resizes take the portable code paths instead of the AVX2 ones, so
/// one machine checks both against Pillow.
#[doc(hidden)]
pub fn force_scalar(on: bool) {
    SCALAR_ONLY.set(on);
}

/// The horizontal pass over source `rows` of `src` (`w` pixels wide): one output row of
/// `horiz.bounds.len()` pixels per source row, into `dst`.
fn horizontal(src: &[u8], w: usize, rows: Range<usize>, horiz: &Coeffs, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !SCALAR_ONLY.get() {
        // SAFETY: AVX2 is present.
        return unsafe { horizontal_avx2(src, w, rows, horiz, dst) };
    }
    horizontal_generic(src, w, rows, horiz, dst)
}

fn horizontal_generic(src: &[u8], w: usize, rows: Range<usize>, horiz: &Coeffs, dst: &mut [u8]) {
    let row_len = horiz.bounds.len() * 3;
    for (y, out) in rows.zip(dst.chunks_exact_mut(row_len)) {
        let in_row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, o) in out.chunks_exact_mut(3).enumerate() {
            horizontal_pixel(in_row, horiz.taps(xx), o);
        }
    }
}

/// One output pixel of the horizontal pass: `o[c] = clip8(HALF + Σ_t k[t]·row[(xmin+t)·3 + c])`.
#[inline(always)]
fn horizontal_pixel(in_row: &[u8], (xmin, k): (usize, &[i32]), o: &mut [u8]) {
    let px = &in_row[xmin * 3..(xmin + k.len()) * 3];
    let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
    for (p, &kx) in px.chunks_exact(3).zip(k) {
        s0 = s0.wrapping_add(p[0] as i32 * kx);
        s1 = s1.wrapping_add(p[1] as i32 * kx);
        s2 = s2.wrapping_add(p[2] as i32 * kx);
    }
    o.copy_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
}

/// Two source rows at a time, four taps per step with `vpmaddwd`: a row's 16 bytes from tap
/// `t` fill both 128-bit lanes, and one shuffle gives `[R_t, R_t+1, G_t, G_t+1, B_t, B_t+1, 0, 0]`
/// (16-bit) in the low lane and the same of taps `t+2, t+3` in the high one, so one multiply-add
/// gives the three channels' sums over four taps. The 22-bit weights do not fit 16 bits: each is
/// split into `k = hi·2^15 + lo` (`lo` in `0..2^15`), the halves summed apart and joined as
/// `(Σhi << 15) + Σlo`. In wrapping i32 arithmetic that is `Σ p·k` modulo 2^32, the value the
/// scalar code's wrapping sum reaches, and the same shift-and-clamp follows (saturating packs;
/// |sum >> 22| < 2^10 never reaches their limits): the same bytes as [`horizontal_generic`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2(
    src: &[u8],
    w: usize,
    rows: Range<usize>,
    horiz: &Coeffs,
    dst: &mut [u8],
) {
    use std::arch::x86_64::*;
    let width = horiz.bounds.len();
    let row_len = width * 3;
    // Per output pixel, per four taps: 16 `lo` halves in the lanes' order, then 16 `hi` halves
    // (the empty fourth pair of each lane, and taps past the last, stay 0).
    let quads = horiz.ksize.div_ceil(4);
    let mut split = vec![0i16; width * quads * 32];
    for xx in 0..width {
        let (_, k) = horiz.taps(xx);
        for (t, &kx) in k.iter().enumerate() {
            let at = (xx * quads + t / 4) * 32 + (t % 4 / 2) * 8 + t % 2;
            for c in 0..3 {
                split[at + 2 * c] = (kx & 0x7fff) as i16;
                split[at + 16 + 2 * c] = (kx >> 15) as i16;
            }
        }
    }
    // Pixels t, t+1 (bytes 0..6) to the low lane, t+2, t+3 (bytes 6..12) to the high one; -1
    // gives 0.
    #[rustfmt::skip]
    let shuffle = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    let half = _mm_set1_epi32(HALF);
    // One row's `[R, G, B, _]` sums: halves joined, lanes added, rounded and shifted.
    let finish = |lo: __m256i, hi: __m256i| {
        let s = _mm256_add_epi32(_mm256_slli_epi32::<15>(hi), lo);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm_add_epi32(s, half))
    };
    let mut y = rows.start;
    let mut out = dst.chunks_exact_mut(row_len);
    while y + 2 <= rows.end {
        let (Some(d0), Some(d1)) = (out.next(), out.next()) else {
            return;
        };
        let (o0, o1) = (y * w * 3, (y + 1) * w * 3);
        for xx in 0..width {
            let (xmin, k) = horiz.taps(xx);
            let steps = k.len().div_ceil(4);
            let o = &mut d0[xx * 3..xx * 3 + 3];
            // Each step loads 16 bytes from its first tap's pixel: at the very end of `src`
            // take the scalar path.
            if steps == 0 || o1 + (xmin + 4 * steps - 4) * 3 + 16 > src.len() {
                horizontal_pixel(&src[o0..o0 + w * 3], (xmin, k), o);
                horizontal_pixel(&src[o1..o1 + w * 3], (xmin, k), &mut d1[xx * 3..xx * 3 + 3]);
                continue;
            }
            let p = src.as_ptr();
            let kp = split.as_ptr().add(xx * quads * 32);
            let (mut lo0, mut hi0) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let (mut lo1, mut hi1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for step in 0..steps {
                let at = (xmin + 4 * step) * 3;
                // SAFETY: both loads end at most at `o1 + (xmin + 4 * steps - 4) * 3 + 16 <=
                // src.len()`; the weights hold `quads >= steps` groups of 32 for this pixel.
                let a = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(o0 + at) as *const _));
                let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(o1 + at) as *const _));
                let (a, b) = (
                    _mm256_shuffle_epi8(a, shuffle),
                    _mm256_shuffle_epi8(b, shuffle),
                );
                let wl = _mm256_loadu_si256(kp.add(step * 32) as *const _);
                let wh = _mm256_loadu_si256(kp.add(step * 32 + 16) as *const _);
                lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(a, wl));
                hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(a, wh));
                lo1 = _mm256_add_epi32(lo1, _mm256_madd_epi16(b, wl));
                hi1 = _mm256_add_epi32(hi1, _mm256_madd_epi16(b, wh));
            }
            let halves = _mm_packus_epi32(finish(lo0, hi0), finish(lo1, hi1));
            let bytes = (_mm_cvtsi128_si64(_mm_packus_epi16(halves, halves)) as u64).to_le_bytes();
            o.copy_from_slice(&bytes[0..3]);
            d1[xx * 3..xx * 3 + 3].copy_from_slice(&bytes[4..7]);
        }
        y += 2;
    }
    if y < rows.end {
        horizontal_generic(src, w, y..rows.end, horiz, out.next().unwrap_or_default());
    }
}

/// One output row of the vertical pass: `dst[i] = clip8(HALF + Σ_t k[t]·rows[t·row_len + i])`,
/// a whole row at a time so the compiler vectorises it (integer sums in any order are the same
/// sums: the bytes stay Pillow's).
fn vertical_row(rows: &[u8], row_len: usize, k: &[i32], acc: &mut [i32], dst: &mut [u8]) {
    vertical_row_strided(rows, row_len, row_len, k, acc, dst)
}

/// [`vertical_row`] over rows `stride` bytes apart of which the first `len` are used.
fn vertical_row_strided(
    rows: &[u8],
    stride: usize,
    len: usize,
    k: &[i32],
    acc: &mut [i32],
    dst: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !SCALAR_ONLY.get() {
        // SAFETY: AVX2 is present.
        return unsafe { vertical_row_avx2(rows, stride, len, k, acc, dst) };
    }
    vertical_row_generic(rows, stride, len, k, acc, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_row_avx2(
    rows: &[u8],
    stride: usize,
    len: usize,
    k: &[i32],
    acc: &mut [i32],
    dst: &mut [u8],
) {
    vertical_row_generic(rows, stride, len, k, acc, dst)
}

#[inline(always)]
fn vertical_row_generic(
    rows: &[u8],
    stride: usize,
    len: usize,
    k: &[i32],
    acc: &mut [i32],
    dst: &mut [u8],
) {
    let acc = &mut acc[..len];
    acc.fill(HALF);
    for (t, &ky) in k.iter().enumerate() {
        let row = &rows[t * stride..t * stride + len];
        for (a, &p) in acc.iter_mut().zip(row) {
            *a = a.wrapping_add(p as i32 * ky);
        }
    }
    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
        *d = clip8(a);
    }
}

/// NEAREST goes through Pillow's affine transform with a pure scale (`ImagingScaleAffine`):
/// sample at the pixel centre, stepping by accumulated floating-point increments (so the
/// positions are walked from 0 even for a window, to accumulate the same rounding).
fn nearest(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    win: Window,
) -> Vec<u8> {
    // `COORD(v)`: negative → -1 (outside), otherwise truncate; outside pixels stay 0.
    let positions = |step: f64, size: usize, range: Range<usize>| -> Vec<Option<usize>> {
        let mut v = step * 0.5;
        let mut out = Vec::with_capacity(range.len());
        for i in 0..range.end {
            if i >= range.start {
                out.push((v >= 0.0 && (v as usize) < size).then_some(v as usize));
            }
            v += step;
        }
        out
    };
    let xs = positions(w as f64 / out_w as f64, w, win.x..win.x + win.width);
    let ys = positions(h as f64 / out_h as f64, h, win.y..win.y + win.height);
    let mut out = vec![0u8; win.width * win.height * 3];
    for (out_row, y) in out.chunks_exact_mut(win.width * 3).zip(ys) {
        let Some(y) = y else { continue };
        for (o, x) in out_row.chunks_exact_mut(3).zip(&xs) {
            if let Some(x) = x {
                let i = (y * w + x) * 3;
                o.copy_from_slice(&src[i..i + 3]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        for f in 0..6 {
            let out = resize_rgb8(&src, (5, 4), (5, 4), Filter::from_pil(f).unwrap());
            assert_eq!(out, src);
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let src = [10u8, 200, 255].repeat(13 * 7);
        for f in 0..6 {
            let out = resize_rgb8(&src, (13, 7), (4, 19), Filter::from_pil(f).unwrap());
            assert_eq!(out, [10u8, 200, 255].repeat(4 * 19), "filter {f}");
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        let c = precompute(100, 7, 0..7, Filter::Bicubic);
        for (i, &(_, n)) in c.bounds.iter().enumerate() {
            let s: i32 = c.weights[i * c.ksize..i * c.ksize + n].iter().sum();
            assert!(
                (s - (1 << PRECISION_BITS)).abs() <= n as i32,
                "row {i}: {s}"
            );
        }
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let (w, h) = (23, 17);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        for f in 0..6 {
            let filter = Filter::from_pil(f).unwrap();
            for (ow, oh) in [(9, 40), (23, 5), (50, 17), (7, 7)] {
                let full = resize_rgb8(&src, (w, h), (ow, oh), filter);
                let win = Window {
                    x: ow / 3,
                    y: oh / 4,
                    width: ow - ow / 3 - 1,
                    height: oh / 2,
                };
                let part = resize_window_rgb8(&src, (w, h), (ow, oh), win, filter);
                let mut expected = Vec::new();
                for y in win.y..win.y + win.height {
                    let s = (y * ow + win.x) * 3;
                    expected.extend_from_slice(&full[s..s + win.width * 3]);
                }
                assert_eq!(part, expected, "filter {f} size {ow}x{oh}");
            }
        }
    }

    #[test]
    fn vector_horizontal_pass_equals_scalar() {
        // Odd and even row counts, up- and downscales (bicubic and lanczos have negative taps),
        // tap counts of every remainder mod 4 (a 12 MP photo to 224 takes ~54), rows ending at
        // the very end of the buffer (the scalar tail of the vector path).
        for (w, h, ow) in [
            (600, 7, 336),
            (37, 6, 224),
            (5, 3, 9),
            (224, 4, 224 * 3),
            (1, 2, 3),
            (4032, 3, 298),
            (1000, 5, 13),
            (301, 4, 97),
            (302, 3, 98),
            (303, 2, 99),
            (64, 5, 63),
        ] {
            let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 131 % 256) as u8).collect();
            for f in [
                Filter::Bicubic,
                Filter::Lanczos,
                Filter::Bilinear,
                Filter::Box,
                Filter::Hamming,
            ] {
                for rows in [0..h, 1..h, 0..h - 1] {
                    let c = precompute(w, ow, 0..ow, f);
                    let mut a = vec![0u8; rows.len() * ow * 3];
                    let mut b = a.clone();
                    horizontal_generic(&src, w, rows.clone(), &c, &mut a);
                    horizontal(&src, w, rows.clone(), &c, &mut b);
                    assert_eq!(a, b, "{w}x{h} -> {ow}, {f:?}, rows {rows:?}");
                }
            }
        }
    }

    #[test]
    fn unknown_filter_number_is_refused() {
        assert_eq!(Filter::from_pil(6), None);
        assert_eq!(Filter::from_pil(3), Some(Filter::Bicubic));
    }
}
