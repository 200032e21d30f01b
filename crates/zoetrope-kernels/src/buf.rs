//! 64-byte-aligned scratch buffers, kept per thread so a kernel call allocates nothing once warm.

use std::cell::RefCell;

/// One cache line of zeros; the unit of an [`AlignedBuf`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A growable, 64-byte-aligned, zero-initialised byte buffer viewed as `T`s.
#[derive(Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    /// A buffer of at least `len` `T`s; contents unspecified (zero when new).
    pub fn with_len<T: Copy>(len: usize) -> Self {
        let mut b = Self::default();
        b.ensure::<T>(len);
        b
    }

    /// Grows to hold at least `len` `T`s.
    pub fn ensure<T: Copy>(&mut self, len: usize) {
        let bytes = len * std::mem::size_of::<T>();
        let lines = bytes.div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
    }

    /// The first `len` elements as `T`s (`T` must be a plain number type: f32, u16, …).
    pub fn slice_mut<T: Copy>(&mut self, len: usize) -> &mut [T] {
        self.ensure::<T>(len);
        // SAFETY: the storage holds at least `len * size_of::<T>()` initialised bytes, aligned
        // to 64 (≥ align_of::<T>() for the number types used), and every bit pattern is a valid
        // f32/u16.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, len) }
    }

    /// The first `len` elements, read-only.
    pub fn slice<T: Copy>(&self, len: usize) -> &[T] {
        assert!(len * std::mem::size_of::<T>() <= self.lines.len() * 64);
        // SAFETY: as in `slice_mut`, and the bound is checked above.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, len) }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<AlignedBuf>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `N` scratch buffers owned by this thread (taken out of the thread's pool for the
/// duration, so a nested call gets fresh ones rather than a borrow error).
pub fn with_scratch<const N: usize, R>(f: impl FnOnce(&mut [AlignedBuf; N]) -> R) -> R {
    let mut bufs: [AlignedBuf; N] =
        std::array::from_fn(|_| SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default());
    let r = f(&mut bufs);
    SCRATCH.with(|s| s.borrow_mut().extend(bufs));
    r
}
