//! Per-thread spare buffers for the activations a reduced-precision matmul converts its input
//! into (int8: quantised rows; bf16: rounded rows). Allocating and zeroing one per matmul was
//! 1.2 % of a ViT-B/16 int8 pass on AMX, plus page faults; a dropped buffer goes back to its
//! thread's list instead, for the next call of the same shape.

use std::cell::RefCell;

/// Buffers kept per thread (one per activation shape in use).
const KEEP: usize = 6;

/// A thread's spare buffers, each with the row width `k` it was last filled for, newest last.
pub(crate) struct Spares<T>(RefCell<Vec<(usize, Vec<T>)>>);

impl<T: Copy + Default> Spares<T> {
    pub(crate) const fn new() -> Self {
        Spares(RefCell::new(Vec::new()))
    }

    /// A spare of `len` elements last used for rows of `k` (so the padding columns past `k` in
    /// each row are still zero: every use writes only its rows' first `k`), or a new zeroed one.
    pub(crate) fn take(&self, k: usize, len: usize) -> Vec<T> {
        let mut s = self.0.borrow_mut();
        match s.iter().rposition(|(sk, v)| *sk == k && v.len() == len) {
            Some(i) => s.swap_remove(i).1,
            None => vec![T::default(); len],
        }
    }

    /// Keeps `v` (rows of `k`) for a later [`Spares::take`], dropping the oldest past [`KEEP`].
    pub(crate) fn give(&self, k: usize, v: Vec<T>) {
        let mut s = self.0.borrow_mut();
        if s.len() == KEEP {
            s.remove(0);
        }
        s.push((k, v));
    }
}
