//! Intel AMX (Sapphire Rapids and later) for the bf16 and int8 linear layers and, in those modes,
//! the attention products.
//!
//! AMX adds eight 16-row × 64-byte tile registers and one instruction that multiplies two tiles
//! into a third: `tdpbf16ps` (16×32 bf16 · 32×16 bf16 → 16×16 f32, 8192 multiply-adds) and
//! `tdpbusd` (16×64 u8 · 64×16 i8 → 16×16 i32, 16384). On these cores that is 16× (bf16) and
//! 32× (int8) an AVX-512 FMA's work per cycle, while `vdpbf16ps` runs no faster than f32 FMAs.
//!
//! The B operand is read in the "VNNI" order both weight formats already use (a row per pair
//! (bf16) or quad (int8) of `k`, 64 columns × 4 bytes = 256 bytes per panel row), so a B tile is
//! 16 such rows × 16 columns: at stride 256 in int8's panels (shared with the VNNI kernel), or
//! as one contiguous 1 kB tile in bf16 weights built for AMX ([`panel_tile_order`]). An A tile is
//! 16 activation rows × 64 bytes of `k`: at the row stride (int8, attention), or contiguous in a
//! bf16 layer's rounded activations ([`tile_order`]). Hence the activation buffers are padded to
//! [`ROWS`] rows and `k` to [`K_BYTES`] bytes.
//!
//! Stable Rust has no AMX intrinsics: the instructions are written as inline assembly, on tile
//! registers the compiler never allocates. Linux hands out the tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`available`] makes once per process;
//! `GLIMPSE_AMX=0` turns the AMX path off (to measure the AVX-512 kernels on the same CPU).

/// Activation rows per block: two A tiles.
pub(crate) const ROWS: usize = 32;
/// Bytes of `k` per tile step: one A tile row, 32 bf16 or 64 u8.
pub(crate) const K_BYTES: usize = 64;
/// Bytes of activation rows per row block of a bf16 linear layer: a block's rows stay in L2
/// (2 MiB per core on the AMX CPUs measured) while every 64-column weight panel streams past
/// them, so each panel comes from L3 once per block. 128 rows at any `k` (as the AVX-512 kernels
/// use) left 1.5 kB rows in 192 kB blocks, and the weights streamed ~4× as often as needed.
/// int8 on AMX keeps 128 rows: the same rule made CLIP B/32 int8 at batch 8 slower there
/// (42.1 / 42.4 ms against 38.7 / 40.6 ms) and left ViT-B/16 unchanged.
const BLOCK_BYTES: usize = 800 << 10;

/// Most rows per cache block of a bf16 linear layer whose activation rows are `row_bytes` long:
/// as many as [`BLOCK_BYTES`] hold, in whole 32-row tile blocks, 64 to 512 (`k` 768 → 512 rows,
/// 3072 → 128; see docs/BENCHMARKS.md for the measured gain).
pub(crate) fn block_rows(row_bytes: usize) -> usize {
    (BLOCK_BYTES / row_bytes.max(1)).clamp(2 * ROWS, 512) / ROWS * ROWS
}

/// Where value `kk` of activation row `row` goes when rows of `kp` values (`kp` whole tile steps
/// of `per_step` values) are stored tile by tile: per 16-row group, per tile step, one A tile of
/// 16 rows × 64 bytes, contiguous. A 32-row block then starts where it would in row-major order
/// (`row · kp`), each tile is one 1 kB run instead of 16 lines a row apart, and a step moves on
/// 1 kB. In a stand-alone AMX loop over ViT-B/16's shapes this was 10 % faster at `k` 768 (rows
/// 1.5 kB apart put a tile's 16 lines on up to seven pages). Consecutive steps of one row are
/// 16 tile rows (`16 · per_step` values) apart.
#[inline(always)]
pub(crate) fn tile_order(row: usize, kk: usize, kp: usize, per_step: usize) -> usize {
    let (group, i) = (row / 16, row % 16);
    let (step, j) = (kk / per_step, kk % per_step);
    group * 16 * kp + step * 16 * per_step + i * per_step + j
}

/// Tile steps per `k` chunk of a bf16 panel: [`Block`]s over a chunk of `k` for both 32-column
/// halves of the panel before the next chunk, so the second half reads the 32 rows' A chunk from
/// L1 (accumulators saved and reloaded between chunks). At `k` 768 (24 steps; a 32-row A block
/// of 48 kB, L1's size) halves of 12 steps made ViT-B/16's layers 8–12 % faster; at 3072 any
/// split was slower (the reloads cost more than the reuse saves), and at 512 it made no
/// difference. So: halves for 17 to 32 steps, whole `k` otherwise.
pub(crate) fn k_chunk(steps: usize) -> usize {
    if (17..=32).contains(&steps) {
        steps.div_ceil(2)
    } else {
        steps
    }
}

/// Bytes per row of a packed weight panel (64 columns × one bf16 pair or int8 quad).
pub(crate) const PANEL_ROW: usize = 256;

/// Where entry `(row, col)` of a weight panel (`row` a pair (bf16) or quad (int8) row of `k`,
/// `col` one of the panel's 64 columns, `unit` values per entry) goes when the panel is stored
/// B tile by B tile: per tile step (16 rows), per 16-column quarter, one 1 kB tile. The row-major
/// panel puts a tile's 16 rows 256 bytes apart instead. Each step still spans 4 kB. In a
/// stand-alone AMX loop over ViT-B/16's shapes, B tiles in this order on top of A in
/// [`tile_order`] gave another 3–5 %.
#[inline(always)]
pub(crate) fn panel_tile_order(row: usize, col: usize, unit: usize) -> usize {
    let (step, i) = (row / 16, row % 16);
    let (quarter, j) = (col / 16, col % 16);
    ((step * 4 + quarter) * 16 + i) * 16 * unit + j * unit
}

/// Whether the CPU has AMX-TILE, AMX-BF16 and AMX-INT8 (and AVX-512 for the epilogues), the
/// kernel granted this process the tile state, and `GLIMPSE_AMX` is not `0`. Checked once.
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::env::var("GLIMPSE_AMX").map_or(true, |v| v.trim() != "0")
            && crate::kernels::isa() == crate::kernels::Isa::Avx512
            && detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (checked by the caller). `unsafe`
    // for the declared minimum Rust; newer ones made `__cpuid_count` safe.
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    let want = (1 << 22) | (1 << 24) | (1 << 25);
    if edx & want != want {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it fails cleanly on kernels without AMX.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Which tile product: bf16 pairs into f32, or u8 × i8 quads into i32.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Bf16,
    Int8,
}

/// Palette 1, all eight tiles 16 rows × 64 bytes: tmm0–3 the 2×2 accumulators, tmm4–5 two A
/// tiles (row halves), tmm6–7 two B tiles (column halves).
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    Config(c)
};

/// The tile state of the current thread, configured for [`Block::run`] and released on drop
/// (not `Send`: the configuration belongs to the thread that made it).
pub(crate) struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    /// # Safety
    /// [`available`] returned true.
    #[inline]
    pub(crate) unsafe fn configure() -> Tiles {
        #[cfg(target_arch = "x86_64")]
        std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        Tiles(std::marker::PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Tiles` exists only after `ldtilecfg` on this same thread (it is not `Send`),
        // so the tile state is configured here and releasing it is valid.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        }
    }
}

/// A 32-row × 32-column block of `A·B` over `steps` tile steps of `k`, into `out` as four
/// 16×16 tiles (rows 0–15 × cols 0–15, rows 0–15 × cols 16–31, rows 16–31 × cols 0–15,
/// rows 16–31 × cols 16–31), f32 for [`Op::Bf16`], i32 for [`Op::Int8`].
pub(crate) struct Block {
    /// First byte of the first A tile (rows 0–15, step 0); its rows at stride `lda` bytes.
    pub a: *const u8,
    pub lda: usize,
    /// Bytes from one tile step's A tile to the next one's (64 in row-major activations, 1024
    /// in [`tile_order`]), and from rows 0–15's A tiles to rows 16–31's.
    pub a_step: usize,
    pub a_half: usize,
    /// First byte of the first B tile (columns 0–15, step 0); its rows at stride `ldb` bytes,
    /// the second B tile (columns 16–31) `b_next` bytes on. Panel rows of 256 bytes: stride 256,
    /// next 64; [`panel_tile_order`]: stride 64, next 1024. Either way a step moves on 4 kB.
    pub b: *const u8,
    pub ldb: usize,
    pub b_next: usize,
    pub steps: usize,
}

impl Block {
    /// # Safety
    /// A [`Tiles`] is live on this thread; 32 rows × `64·steps` bytes of `a` and
    /// `16·steps` panel rows × 128 bytes of `b` are in bounds.
    #[inline]
    pub(crate) unsafe fn run(&self, op: Op, out: &mut [[u32; 256]; 4], resume: bool) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::asm;
            if resume {
                asm!(
                    "tileloadd tmm0, [{o0} + {s}*1]",
                    "tileloadd tmm1, [{o1} + {s}*1]",
                    "tileloadd tmm2, [{o2} + {s}*1]",
                    "tileloadd tmm3, [{o3} + {s}*1]",
                    o0 = in(reg) out[0].as_ptr(),
                    o1 = in(reg) out[1].as_ptr(),
                    o2 = in(reg) out[2].as_ptr(),
                    o3 = in(reg) out[3].as_ptr(),
                    s = in(reg) 64usize,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            let (mut a0, mut a1) = (self.a, self.a.add(self.a_half));
            let (mut b0, mut b1) = (self.b, self.b.add(self.b_next));
            // Loads interleaved with the products that free their registers: tiles are not
            // renamed, so a load into tmm4–7 waits for every product still reading that tile.
            // Four loads then four products left each step's loads behind the last step's
            // products; in this order B1's load overlaps C00, A1's C01, and the next step's A0
            // and B0 loads C10 and C11.
            macro_rules! steps {
                ($dp:literal) => {
                    for _ in 0..self.steps {
                        asm!(
                            "tileloadd tmm4, [{a0} + {lda}*1]",
                            "tileloadd tmm6, [{b0} + {ldb}*1]",
                            concat!($dp, " tmm0, tmm4, tmm6"),
                            "tileloadd tmm7, [{b1} + {ldb}*1]",
                            concat!($dp, " tmm1, tmm4, tmm7"),
                            "tileloadd tmm5, [{a1} + {lda}*1]",
                            concat!($dp, " tmm2, tmm5, tmm6"),
                            concat!($dp, " tmm3, tmm5, tmm7"),
                            a0 = in(reg) a0,
                            a1 = in(reg) a1,
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            lda = in(reg) self.lda,
                            ldb = in(reg) self.ldb,
                            options(nostack, readonly)
                        );
                        a0 = a0.add(self.a_step);
                        a1 = a1.add(self.a_step);
                        b0 = b0.add(16 * PANEL_ROW);
                        b1 = b1.add(16 * PANEL_ROW);
                    }
                };
            }
            match op {
                Op::Bf16 => steps!("tdpbf16ps"),
                Op::Int8 => steps!("tdpbusd"),
            }
            asm!(
                "tilestored [{o0} + {s}*1], tmm0",
                "tilestored [{o1} + {s}*1], tmm1",
                "tilestored [{o2} + {s}*1], tmm2",
                "tilestored [{o3} + {s}*1], tmm3",
                o0 = in(reg) out[0].as_mut_ptr(),
                o1 = in(reg) out[1].as_mut_ptr(),
                o2 = in(reg) out[2].as_mut_ptr(),
                o3 = in(reg) out[3].as_mut_ptr(),
                s = in(reg) 64usize,
                options(nostack)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (op, out);
            unreachable!("AMX is x86-64 only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_splits_in_two_only_between_17_and_32_steps() {
        assert_eq!(k_chunk(24), 12);
        assert_eq!(k_chunk(17), 9);
        assert_eq!(k_chunk(32), 16);
        for steps in [1, 2, 16, 33, 96] {
            assert_eq!(k_chunk(steps), steps);
        }
    }

    #[test]
    fn row_blocks_fill_the_l2_budget_in_whole_tile_blocks() {
        // ViT-B/16 bf16: rows of 768 and 3072 values (2 bytes each).
        assert_eq!(block_rows(768 * 2), 512);
        assert_eq!(block_rows(3072 * 2), 128);
        for bytes in [1, 64, 1000, 1536, 4096, 6144, 10_000, 1 << 20] {
            let rows = block_rows(bytes);
            assert!(
                rows.is_multiple_of(ROWS) && (2 * ROWS..=512).contains(&rows),
                "{bytes}: {rows}"
            );
            assert!(
                rows == 2 * ROWS || rows * bytes <= BLOCK_BYTES,
                "{bytes}: {rows}"
            );
        }
    }
}
