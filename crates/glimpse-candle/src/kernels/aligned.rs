//! A zeroed buffer whose first element sits on a 64-byte boundary, for packed weights: every
//! 64-byte panel row the kernels load then lies in one cache line. A plain `Vec` of a large size
//! usually starts 16 bytes into a line, so each AVX-512 load of it touched two lines.

use std::ops::{Deref, DerefMut};

const ALIGN: usize = 64;

pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let buf = vec![T::default(); len + ALIGN / size];
        let misalign = buf.as_ptr() as usize % ALIGN;
        // `size` divides ALIGN and the allocation's alignment, so this is a whole number of T.
        let off = ((ALIGN - misalign) % ALIGN) / size;
        Aligned { buf, off, len }
    }
}

impl<T> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl<T: Copy + Default> Clone for Aligned<T> {
    /// A new allocation has its own offset, so the clone is laid out afresh.
    fn clone(&self) -> Self {
        let mut c = Self::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl<T> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} elements)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_clones_keep_contents() {
        for len in [1, 17, 4096, 100_003] {
            let mut a: Aligned<f32> = Aligned::zeroed(len);
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % ALIGN, 0);
            a[len - 1] = 3.5;
            let b = a.clone();
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b[len - 1], 3.5);
            let c: Aligned<u16> = Aligned::zeroed(len);
            assert_eq!(c.as_ptr() as usize % ALIGN, 0);
            let d: Aligned<i8> = Aligned::zeroed(len);
            assert_eq!(d.as_ptr() as usize % ALIGN, 0);
        }
    }
}
