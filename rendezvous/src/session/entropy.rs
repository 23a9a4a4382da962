//! Entropy drawn in blocks, for the many small draws of a lookup.

use anonmirror_core::Entropy;

/// An [`Entropy`] that draws from `E` a block at a time: a lookup draws
/// a few hundred small numbers (probes, two random choices), and one
/// getrandom call (or XOF block) per number would cost more than the
/// lookup itself. The bytes are `E`'s, unchanged; only the calls are
/// batched. For choosing among peers, not for keys.
#[derive(Clone, Debug)]
pub struct BufferedEntropy<E> {
    inner: E,
    buf: Box<[u8; 4096]>,
    pos: usize,
}

impl<E: Entropy> BufferedEntropy<E> {
    /// Draws from `inner` 4 KiB at a time.
    pub fn new(inner: E) -> Self {
        BufferedEntropy {
            inner,
            buf: Box::new([0; 4096]),
            pos: 4096,
        }
    }
}

impl<E: Entropy> Entropy for BufferedEntropy<E> {
    fn fill(&mut self, mut dest: &mut [u8]) {
        while !dest.is_empty() {
            if self.pos == self.buf.len() {
                self.inner.fill(&mut self.buf[..]);
                self.pos = 0;
            }
            let n = dest.len().min(self.buf.len() - self.pos);
            dest[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            dest = &mut dest[n..];
        }
    }
}
