//! A job's work file, written past the page cache where the file system
//! allows (`O_DIRECT`).
//!
//! Readers that keep up take a job's bytes from memory, and the store
//! links the finished file without reading it, so nothing needs the work
//! file's pages cached. Buffered writes would still fill the page cache
//! with a second copy of every package beside the package manager's own,
//! and allocating those pages is most of what a gateway costs in CPU
//! (measured in BENCHMARKS.md, "Gateway"). Direct I/O hands the bytes to
//! the disk instead.
//!
//! Direct I/O wants the buffer, the length and the file offset aligned
//! to the device's blocks: bytes are staged in an aligned buffer and
//! written a whole buffer at a time; the tail is written padded to a
//! block and the file then cut to its length. A file system that refuses
//! direct I/O (tmpfs, some network file systems) gets buffered writes, as
//! does the rest of a file whose direct write failed.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment that satisfies direct I/O on every common device (4 KiB
/// logical blocks, and 512-byte ones).
const ALIGN: usize = 4096;
/// Bytes staged per direct write.
const STAGE: usize = 1 << 20;

/// The open work file.
pub(crate) struct WorkFile {
    file: File,
    /// `Some` while writing directly: the staging memory (over-allocated
    /// so that an aligned window of `STAGE` bytes fits) and how much of
    /// that window is filled.
    stage: Option<(Vec<u8>, usize)>,
    /// Bytes in the file (not counting the stage).
    flushed: u64,
}

impl WorkFile {
    /// Opens `path` (created empty by the caller) for writing, directly
    /// if the file system lets it.
    pub(crate) fn open(path: &Path, file: File) -> WorkFile {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match direct {
            Ok(d) => WorkFile {
                file: d,
                stage: Some((vec![0u8; STAGE + ALIGN], 0)),
                flushed: 0,
            },
            Err(e) => {
                tracing::debug!(error = %e, "no direct I/O for work files: buffered writes");
                WorkFile::buffered(file)
            }
        }
    }

    /// Writes through the page cache.
    fn buffered(file: File) -> WorkFile {
        WorkFile {
            file,
            stage: None,
            flushed: 0,
        }
    }

    /// Whether bytes go past the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.stage.is_some()
    }

    /// Bytes a reader can find in the file now.
    pub(crate) fn flushed(&self) -> u64 {
        self.flushed
    }

    fn window(buf: &mut [u8]) -> &mut [u8] {
        let at = buf.as_ptr().align_offset(ALIGN);
        &mut buf[at..at + STAGE]
    }

    /// Appends `bytes`.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let Some((buf, filled)) = self.stage.as_mut() else {
                self.file.write_all(bytes)?;
                self.flushed += bytes.len() as u64;
                return Ok(());
            };
            let window = Self::window(buf);
            let take = bytes.len().min(STAGE - *filled);
            window[*filled..*filled + take].copy_from_slice(&bytes[..take]);
            *filled += take;
            bytes = &bytes[take..];
            if *filled == STAGE {
                self.flush_stage(STAGE)?;
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the stage window (a whole number
    /// of blocks) and empties the stage; if direct I/O fails, switches to
    /// buffered writes for good and writes them that way.
    fn flush_stage(&mut self, len: usize) -> io::Result<()> {
        let Some((buf, filled)) = self.stage.as_mut() else {
            return Ok(());
        };
        let real = (*filled).min(len);
        let window = Self::window(buf);
        match write_at_end(&mut self.file, &window[..len]) {
            Ok(()) => {
                self.flushed += real as u64;
                *filled = 0;
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "direct write failed: buffered writes from here");
                let pending = window[..real].to_vec();
                self.stage = None;
                // Whatever part of the failed write landed is cut off.
                self.file.set_len(self.flushed)?;
                self.file.seek(SeekFrom::Start(self.flushed))?;
                self.write(&pending)
            }
        }
    }

    /// Forgets everything written.
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        if let Some((_, filled)) = self.stage.as_mut() {
            *filled = 0;
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.flushed = 0;
        Ok(())
    }

    /// Writes what is staged, cuts the file to its length and waits for
    /// its data to be on disk.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if let Some((_, filled)) = self.stage.as_ref() {
            let filled = *filled;
            if filled > 0 {
                let padded = filled.div_ceil(ALIGN) * ALIGN;
                if let Some((buf, _)) = self.stage.as_mut() {
                    Self::window(buf)[filled..padded].fill(0);
                }
                self.flush_stage(padded)?;
                self.file.set_len(self.flushed)?;
            }
        }
        self.file.sync_data()
    }
}

/// Writes all of `bytes` where the file's cursor is; a short write that
/// breaks the alignment is an error (the caller falls back).
fn write_at_end(file: &mut File, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = file.write(bytes)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"));
        }
        if !n.is_multiple_of(ALIGN) && n != bytes.len() {
            return Err(io::Error::other("a short direct write"));
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use anonmirror_core::{Entropy, SeededEntropy};

    use super::*;

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut d = vec![0u8; len];
        SeededEntropy::new(seed).fill(&mut d);
        d
    }

    /// Writes `data` in uneven pieces, with a reset after a false start,
    /// and checks the file holds exactly `data`.
    fn round_trip(dir: &Path, len: usize, seed: u64, direct: bool) {
        let path = dir.join(format!("job-{len}"));
        let file = File::create_new(&path).expect("create");
        let mut w = if direct {
            WorkFile::open(&path, file)
        } else {
            WorkFile::buffered(file)
        };
        if !direct {
            assert!(!w.is_direct());
        }
        let junk = pattern(3 * STAGE / 2 + 5, seed + 1);
        w.write(&junk).expect("write");
        w.reset().expect("reset");
        assert_eq!(w.flushed(), 0);
        let data = pattern(len, seed);
        let mut rest = &data[..];
        let mut step = 1usize;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            w.write(&rest[..n]).expect("write");
            rest = &rest[n..];
            step = step * 13 % 300_000 + 1;
            assert!(w.flushed() <= (len - rest.len()) as u64);
        }
        w.finish().expect("finish");
        let back = std::fs::read(&path).expect("read");
        assert!(back == data, "{len} bytes come back as written");
    }

    const LENGTHS: [usize; 9] = [
        0,
        1,
        4095,
        4096,
        4097,
        STAGE - 1,
        STAGE,
        STAGE + 1,
        3 * STAGE + 12_345,
    ];

    /// Directly where the file system allows it (the system's temporary
    /// directory), buffered otherwise: the same bytes either way.
    #[test]
    fn every_length_comes_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, len) in LENGTHS.into_iter().enumerate() {
            round_trip(dir.path(), len, i as u64, true);
        }
    }

    #[test]
    fn buffered_writes_come_back_exactly_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, len) in LENGTHS.into_iter().enumerate() {
            round_trip(dir.path(), len, 20 + i as u64, false);
        }
    }
}
