//! Helpers for the hostile-input table: fetcher options with short deadlines (for a server whose
//! fetcher the test builds, so it can inject a DNS map), a raw TCP upstream that misbehaves on
//! purpose, and hand-made hostile files.

use std::io::Cursor;
use std::time::Duration;

use glimpse_server::fetch::FetchOptions;

use super::upstream::{raw_server, redirect, response, Reply};

/// Short deadlines so the slow-upstream rows finish quickly.
pub fn fetch_options(allow_private: bool, max_bytes: usize) -> FetchOptions {
    FetchOptions {
        allow_private,
        max_bytes: max_bytes as u64,
        connect_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_secs(2),
        max_redirects: 3,
        ..FetchOptions::default()
    }
}

/// A raw HTTP/1.1 upstream whose answer depends on the request path, so it can lie about
/// lengths, drip bytes and redirect anywhere. `png` is served as the "good" image.
pub async fn raw_upstream(png: Vec<u8>) -> String {
    let server = raw_server(move |path| misbehave(path, &png)).await;
    format!("http://{}", server.addr)
}

fn misbehave(path: &str, png: &[u8]) -> Reply {
    const PNG: (&str, &str) = ("Content-Type", "image/png");
    let ok =
        |headers: &[(&str, &str)], body: &[u8]| Reply::Bytes(response(200, headers, body, true));
    match path {
        "/png" => ok(&[PNG], png),
        "/redir-file" => redirect(302, "file:///etc/passwd"),
        "/redir-gopher" => redirect(302, "gopher://127.0.0.1:70/_x"),
        "/loop" => redirect(302, "/loop"),
        p if p.starts_with("/hop/") => {
            let n: u32 = p[5..].parse().unwrap_or(0);
            let to = if n <= 1 {
                "/png".to_string()
            } else {
                format!("/hop/{}", n - 1)
            };
            redirect(302, &to)
        }
        "/chunked-over" => {
            // Chunked, no length, 64 chunks of 64 KiB: only the running count can stop it.
            let mut out = response(200, &[PNG, ("Transfer-Encoding", "chunked")], b"", false);
            let data = vec![0x89u8; 64 * 1024];
            for _ in 0..64 {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bytes(out)
        }
        "/declared-over" => {
            let mut head = response(200, &[PNG, ("Content-Length", "100000000")], b"", false);
            head.extend_from_slice(b"\x89PNG");
            Reply::Hang { head }
        }
        // Says 16 bytes, sends the whole image: the client must read only 16.
        "/declared-short" => ok(&[PNG, ("Content-Length", "16")], png),
        "/declared-long-eof" => ok(
            &[PNG, ("Content-Length", "5000")],
            &png[..png.len().min(40)],
        ),
        "/slow" => Reply::Trickle {
            head: response(
                200,
                &[PNG, ("Content-Length", &png.len().to_string())],
                b"",
                false,
            ),
            every: Duration::from_secs(1),
        },
        "/404" => Reply::Bytes(response(404, &[], b"no\n", true)),
        "/500" => Reply::Bytes(response(500, &[], b"", true)),
        "/html" => ok(
            &[PNG],
            b"<!doctype html><html><body>not an image</body></html>",
        ),
        // A gzip stream claiming to be the image: never decompressed, so not an image.
        "/gzip" => ok(
            &[PNG, ("Content-Encoding", "gzip")],
            &[
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        "/empty" => ok(&[PNG], b""),
        _ => Reply::Bytes(response(400, &[], b"", true)),
    }
}

/// A real PNG of `w`×`h` grey pixels.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([120, 130, 140]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG that is only a signature and an IHDR declaring `w`×`h` (no pixel data).
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    push_chunk(&mut out, b"IHDR", &ihdr);
    push_chunk(&mut out, b"IEND", &[]);
    out
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc_input);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A GIF whose logical screen is 65535×65535 with one 1×1 frame.
pub fn gif_big_screen() -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0]); // screen, global table of 2
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // image descriptor 1×1
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3b]); // LZW data, trailer
    g
}

/// A little-endian TIFF whose only IFD declares 4294967295×4294967295 pixels.
pub fn tiff_bomb() -> Vec<u8> {
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    t.extend_from_slice(&2u16.to_le_bytes());
    for tag in [256u16, 257] {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes()); // LONG
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}
