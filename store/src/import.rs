//! Bringing files already on disk into the store: linked (or copied) into
//! its `tmp/`, and hashed as they are read.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::err::{Error, io_err};

/// Hard-links `path` at `tmp`, or copies it where a link cannot be made
/// (another file system).
pub(crate) fn link_or_copy(path: &Path, tmp: &Path) -> Result<(), Error> {
    if fs::hard_link(path, tmp).is_err() {
        fs::copy(path, tmp).map_err(io_err("copy", path))?;
    }
    Ok(())
}

/// Hashes what passes through, for imports (the bytes are already on disk).
pub(crate) struct HashingReader<'a, R> {
    pub(crate) src: R,
    pub(crate) sha: &'a mut ring::digest::Context,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}
