//! Hostile uploads against a real `glimpse serve` process, measured from outside: its peak
//! resident memory (`VmHWM`) and the CPU time it burns after answering (`/proc/PID/stat`).
//! Loopback only.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::*;

/// `/proc/PID/status` field in kB, as bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`, which may hold spaces: utime and stime are 14th and 15th.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

fn zlib_of_zeros(rows: usize, row_len: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let row = vec![0u8; row_len];
    for _ in 0..rows {
        z.write_all(&row).unwrap();
    }
    z.finish().unwrap()
}

/// A flat 16-bit RGBA PNG of `side`²: a few hundred KB that decode to `side² × 8` bytes.
fn png_rgba16(side: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit, RGBA
    png_chunk(&mut out, b"IHDR", &ihdr);
    // Each row: filter byte 0 then 8 bytes a pixel.
    png_chunk(
        &mut out,
        b"IDAT",
        &zlib_of_zeros(side as usize, 1 + side as usize * 8),
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A 1×1 PNG whose ICC profile chunk inflates to `mb` MB.
fn png_iccp_bomb(mb: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
    let mut iccp = b"icc\0\0".to_vec(); // name, NUL, compression method 0
    iccp.extend(zlib_of_zeros(mb, 1 << 20));
    png_chunk(&mut out, b"iCCP", &iccp);
    png_chunk(&mut out, b"IDAT", &zlib_of_zeros(1, 4));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// The fixture's flat progressive JPEG with its last luma AC refinement scan repeated `copies`
/// times (tools/make_hostile_fixtures.py says why that costs CPU).
fn jpeg_with_extra_scans(copies: usize) -> Vec<u8> {
    let b = std::fs::read(fixtures().join("hostile/flat_progressive.jpg")).unwrap();
    let refinement = [0x01, 0x01, 0x00, 0x01, 0x3f, 0x21];
    let mut out = b[..2].to_vec();
    let mut i = 2;
    let mut repeated = false;
    while i + 1 < b.len() {
        let marker = b[i + 1];
        if marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let mut end = i + 2 + len;
        if marker == 0xDA {
            let header = &b[i + 4..end];
            while b[end] != 0xFF || matches!(b[end + 1], 0x00 | 0xFF | 0xD0..=0xD7) {
                end += 1;
            }
            out.extend_from_slice(&b[i..end]);
            if header == refinement {
                repeated = true;
                for _ in 0..copies {
                    out.extend_from_slice(&b[i..end]);
                }
            }
        } else {
            out.extend_from_slice(&b[i..end]);
        }
        i = end;
    }
    assert!(repeated, "the fixture has no luma refinement scan");
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// Send each body as an upload on its own thread, all at once; their answers.
fn burst(server: &Server, key: &str, bodies: Vec<Vec<u8>>) -> Vec<Response> {
    let addr = server.addr;
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let key = key.to_string();
            std::thread::spawn(move || {
                upload(addr, "/api/image-classification/vit", &key, &b)
                    .expect("the server answers every upload (no dropped connection)")
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Many decode-expensive uploads at once: 16-bit RGBA PNGs at the pixel cap (~440 MB each to
/// decode) and PNGs whose ICC chunk inflates to 300 MB. Peak RSS stays within the decode budget
/// above what the idle server held; every call gets an answer (200, or 503 with Retry-After).
/// Before the budget: 8 at once took the server's peak to several GB.
#[test]
fn decode_memory_stays_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let (_, key) = create_key(&db, 100);
    const BUDGET_MB: u64 = 900;
    let server = start_server(
        &db,
        &[
            ("GLIMPSE_DECODE_MEMORY_MB", "900"),
            ("GLIMPSE_DECODE_THREADS", "8"),
            ("GLIMPSE_DECODE_TIMEOUT_SECS", "60"),
        ],
    );
    let pid = server.child.id();
    // One small call first, so the idle figure includes a warmed-up request path.
    let r = upload(
        server.addr,
        "/api/image-classification/vit",
        &key,
        &std::fs::read(fixtures().join("images/astronaut.png")).unwrap(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let idle = status_bytes(pid, "VmRSS:");
    let big = png_rgba16(6324);
    let bomb = png_iccp_bomb(300);
    eprintln!(
        "uploads: {} KB PNG16, {} KB iCCP bomb",
        big.len() >> 10,
        bomb.len() >> 10
    );
    let mut bodies = vec![big; 6];
    bodies.extend(std::iter::repeat_n(bomb, 4));
    let started = Instant::now();
    let answers = burst(&server, &key, bodies);
    let peak = status_bytes(pid, "VmHWM:");
    let grew_mb = peak.saturating_sub(idle) >> 20;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    eprintln!(
        "idle {} MB, peak {} MB (+{grew_mb} MB) in {:.1} s; statuses {statuses:?}",
        idle >> 20,
        peak >> 20,
        started.elapsed().as_secs_f64()
    );
    for r in &answers {
        match r.status {
            200 => {}
            503 => assert_eq!(r.header("retry-after"), Some("1")),
            s => panic!("unexpected {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 5,
        "most calls should be served, one after another: {statuses:?}"
    );
    // The budget, plus allocator slack (freed pages glibc keeps) and the answers' own buffers.
    assert!(
        grew_mb <= BUDGET_MB + 200,
        "peak RSS grew {grew_mb} MB over idle; budget {BUDGET_MB} MB"
    );
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(&format!(
            "glimpse_decode_memory_budget_bytes {}",
            BUDGET_MB << 20
        )),
        "{text}"
    );
    assert!(text.contains("glimpse_decode_memory_bytes 0"), "{text}");
}

/// Progressive JPEGs with hundreds of repeated scans (each a pass over 187 500 blocks) are
/// refused from their headers, so after the answers the server burns no CPU on them. Before the
/// scan cap each decoded for seconds, past its 400 "took too long", on threads nobody waited for.
#[test]
fn many_scan_jpegs_are_refused_before_they_burn_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let (key_id, key) = create_key(&db, 100);
    let server = start_server(&db, &[("GLIMPSE_DECODE_TIMEOUT_SECS", "1")]);
    let pid = server.child.id();
    let jpeg = jpeg_with_extra_scans(600);
    eprintln!("hostile JPEG: {} KB", jpeg.len() >> 10);
    let answers = burst(&server, &key, vec![jpeg; 6]);
    for r in &answers {
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["code"], "VALIDATION_ERROR");
        assert!(
            body["message"].as_str().unwrap().contains("scans"),
            "{body}"
        );
    }
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let burned = cpu_seconds(pid) - before;
    eprintln!("CPU after the answers: {burned:.2} s in 3 s");
    assert!(
        burned < 0.5,
        "the server burned {burned:.2} s of CPU after answering"
    );
    // Refused images are free.
    let out = keys(&db, &["list", "--json"]);
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let k = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap();
    assert_eq!(k["credits"], 100, "{k}");
}

/// The same file with the scan count of an ordinary progressive JPEG still decodes.
#[test]
fn an_ordinary_progressive_jpeg_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let (_, key) = create_key(&db, 10);
    let server = start_server(&db, &[]);
    let r = upload(
        server.addr,
        "/api/image-classification/vit",
        &key,
        &jpeg_with_extra_scans(20),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A key revoked by the CLI (another process: the server's 5 s authentication cache still holds
/// it) is answered 401 on its next call, never 404, and is not charged.
#[test]
fn a_key_revoked_elsewhere_is_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let (key_id, key) = create_key(&db, 10);
    let server = start_server(&db, &[]);
    let png = std::fs::read(fixtures().join("images/astronaut.png")).unwrap();
    let r = upload(server.addr, "/api/image-classification/vit", &key, &png).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = keys(&db, &["revoke", &key_id]);
    assert_success(&out);
    for _ in 0..2 {
        let r = upload(server.addr, "/api/image-classification/vit", &key, &png).unwrap();
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], "UNAUTHORIZED");
    }
}
