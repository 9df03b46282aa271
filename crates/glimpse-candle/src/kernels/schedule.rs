//! How a kernel's work is cut into tasks for the rayon pool: register tiles, cache blocks of rows,
//! one task per (row block, weight panel), per-thread scratch, and the output pointer those tasks
//! share. Every precision's matmul and the attention kernels use these.

use rayon::prelude::*;

/// `(first row, rows)` of each register tile of at most `mr` rows covering `rows`.
pub(crate) fn row_tiles(
    rows: std::ops::Range<usize>,
    mr: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let end = rows.end;
    rows.step_by(mr).map(move |r| (r, (end - r).min(mr)))
}

/// `(blocks, rows per block)` for `m` rows and blocks of at most `max` rows, each a multiple of
/// `align` rows (the register tile, or [`crate::kernels::amx::ROWS`]).
pub(crate) fn row_blocks(m: usize, max: usize, align: usize) -> (usize, usize) {
    let blocks = m.div_ceil(max).max(1);
    let mb = m.div_ceil(blocks).div_ceil(align) * align;
    (m.div_ceil(mb).max(1), mb)
}

/// Run `tile(rows, panel)` for every (row block, panel) of an `m`-row matmul with `panels`
/// weight panels, rows cut by [`row_blocks`] into blocks of at most `max_rows` (multiples of
/// `align` rows). One rayon task
/// per tile: rayon's default splitting leaves a thread with a run of tasks it cannot hand off,
/// and the other idle at the end of every matmul (16 % of the threads' time in matmul, measured
/// on CLIP B/32 at batch 8).
pub(crate) fn par_tiles(
    m: usize,
    max_rows: usize,
    align: usize,
    panels: usize,
    tile: impl Fn(std::ops::Range<usize>, usize) + Sync + Send,
) {
    let (blocks, mb) = row_blocks(m, max_rows, align);
    (0..blocks * panels)
        .into_par_iter()
        .with_max_len(1)
        .for_each(|t| {
            let (b, p) = (t / panels, t % panels);
            tile(b * mb..((b + 1) * mb).min(m), p)
        });
}

/// An output buffer's pointer handed to parallel tasks that each write their own disjoint part
/// (a rows × panel block of a matmul, an (image, head) block of attention).
pub(crate) struct SharedOut<T = f32>(*mut T);
// SAFETY: users only write disjoint elements from different tasks, and the buffer outlives the
// parallel loop that shares it.
unsafe impl<T> Send for SharedOut<T> {}
// SAFETY: as for `Send`: no two tasks touch the same element.
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(buf: &mut [T]) -> Self {
        SharedOut(buf.as_mut_ptr())
    }

    /// A method (not a field access), so closures capture the `Send` wrapper, not the pointer.
    pub(crate) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// Per-thread scratch for a parallel loop over `task`s: `body(scratch, task)`, with a scratch made
/// by `init` once per thread and `shape` and then reused by that thread's later tasks and calls
/// (rayon's `for_each_init` makes one per task when tasks are split one by one, and zeroing
/// 0.3 MB of attention buffers per (image, head) was 1.6 % of a ViT-B/16 int8 pass on AMX).
/// `init` must make the same buffers for the same `shape`, and `body` must leave them fit for the
/// next task: every write pattern of the loops here depends only on the shape, so a region a
/// task reads before writing is one no task ever writes (zero padding).
pub(crate) fn per_thread<S, I, F>(shape: [usize; 3], init: I, body: F) -> impl Fn(usize) + Sync
where
    S: std::any::Any,
    I: Fn() -> S + Sync,
    F: Fn(&mut S, usize) + Sync,
{
    use std::any::{Any, TypeId};
    use std::cell::RefCell;
    type Kept = (TypeId, [usize; 3], Box<dyn Any>);
    thread_local! {
        static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    }
    /// Scratch sets kept per thread (one per model input shape and attention kind in use).
    const KEEP: usize = 8;
    move |task| {
        let id = TypeId::of::<S>();
        // Taken out while in use: a task nested on this thread (rayon work stealing) makes its own.
        let kept = KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let i = k.iter().position(|(t, s, _)| *t == id && *s == shape)?;
            k.swap_remove(i).2.downcast::<S>().ok()
        });
        let mut scratch = kept.unwrap_or_else(|| Box::new(init()));
        body(&mut scratch, task);
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if k.len() == KEEP {
                k.remove(0);
            }
            k.push((id, shape, scratch));
        });
    }
}

/// Size of CPU 0's level-2 cache, from Linux's sysfs (`None` elsewhere or when unreadable).
pub(crate) fn l2_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{i}/{f}"))).ok();
        if read("level")?.trim() != "2" || read("type")?.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(&read("size")?)
    })
}

/// `"2048K"` → 2 MiB; also `M` and plain bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::f32::{MB, MR};

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn row_blocks_cover_m_evenly() {
        for m in [1, 5, 50, 197, 252, 253, 400, 1576, 5000] {
            for (max, align) in [(MB, MR), (128, 32), (32, 32)] {
                let (blocks, mb) = row_blocks(m, max, align);
                assert!(
                    mb % align == 0 && mb <= max.div_ceil(align) * align,
                    "{m}: {mb}"
                );
                assert!(
                    blocks * mb >= m && (blocks - 1) * mb < m,
                    "{m}: {blocks} × {mb}"
                );
            }
        }
        assert_eq!(row_blocks(197, MB, MR), (1, 198));
        assert_eq!(row_blocks(400, MB, MR), (2, 204));
        assert_eq!(row_blocks(400, 128, 32), (4, 128));
        assert_eq!(row_blocks(50, 128, 32), (1, 64));
    }
}
