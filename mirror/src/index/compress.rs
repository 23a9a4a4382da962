//! Compressed indexes: recognising gzip, xz and zstd by their magic numbers,
//! and decompressing them with a bound on the output.
//!
//! bzip2 is not supported: Debian no longer publishes `Packages.bz2`, and
//! pacman databases are gzip or zstd. [`Compression::from_path`] says
//! `None` for such files, so the caller can ask for another variant.

use std::cell::Cell;
use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use lzma_rust2::XzReader;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use super::error::{Format, IndexError, Problem};

/// The default bound on a decompressed index: 1 GiB, over ten times
/// Debian's largest `Packages` file and Arch's largest database.
pub const DECOMPRESS_LIMIT: u64 = 1 << 30;

/// The largest xz dictionary accepted (256 MiB; `xz -9` uses 64 MiB). A
/// header declaring a larger one is refused before anything is allocated.
const XZ_MEM_LIMIT_KIB: u32 = 256 * 1024;

/// The largest zstd window accepted (128 MiB, libzstd's default limit
/// without `--long`).
const ZSTD_MAX_WINDOW: u64 = 1 << 27;

/// How an index file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Not compressed (or compressed in a way not recognised here).
    None,
    /// gzip (RFC 1952), possibly several concatenated members.
    Gzip,
    /// xz, possibly several concatenated streams.
    Xz,
    /// Zstandard, possibly several concatenated frames.
    Zstd,
}

impl Compression {
    /// By magic number; anything unrecognised is [`Compression::None`].
    pub fn detect(bytes: &[u8]) -> Compression {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// By file name extension: `.gz`, `.xz`, `.zst` name a compression;
    /// a name with none of the compressed extensions known to apt or
    /// pacman is [`Compression::None`] (e.g. `Packages`, `core.db`, whose
    /// content must then be [detected](Compression::detect)). `None` (the
    /// `Option`) for compressions not supported here: `.bz2`, `.lzma`,
    /// `.lz4`, `.lz`, `.Z`.
    pub fn from_path(path: &str) -> Option<Compression> {
        let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
        match ext {
            "gz" => Some(Compression::Gzip),
            "xz" => Some(Compression::Xz),
            "zst" => Some(Compression::Zstd),
            "bz2" | "lzma" | "lz4" | "lz" | "Z" => None,
            _ => Some(Compression::None),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// Decompresses `bytes` according to their [magic number](Compression::detect)
/// (uncompressed input is copied), refusing to produce more than `limit`
/// bytes: a decompression bomb is [`Problem::TooLarge`], never an
/// out-of-memory kill. Trailing garbage after the last member, stream or
/// frame, a truncated stream and a bad checksum are [`Problem::Corrupt`].
pub fn decompress(bytes: &[u8], limit: u64) -> Result<Vec<u8>, IndexError> {
    let compression = Compression::detect(bytes);
    let exceeded = Cell::new(false);
    let mut out = Vec::new();
    let mut reader = Bounded::new(Decoder::new(bytes), limit, &exceeded);
    match reader.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(IndexError::new(
            Format::Compressed,
            compression.label(),
            stream_problem(&e, &exceeded, limit),
        )),
    }
}

/// The problem an I/O error from a [`Bounded`] reader stands for.
pub(crate) fn stream_problem(e: &io::Error, exceeded: &Cell<bool>, limit: u64) -> Problem {
    if exceeded.get() {
        Problem::TooLarge { limit }
    } else {
        Problem::Corrupt(e.to_string())
    }
}

/// A reader of the decompressed content of `bytes`, by magic number.
pub(crate) enum Decoder<'a> {
    Plain(&'a [u8]),
    Gzip(Box<MultiGzDecoder<&'a [u8]>>),
    Xz(Box<XzReader<&'a [u8]>>),
    Zstd(Box<ZstdFrames<'a>>),
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Decoder<'a> {
        match Compression::detect(bytes) {
            Compression::None => Decoder::Plain(bytes),
            Compression::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(bytes))),
            Compression::Xz => Decoder::Xz(Box::new(XzReader::new_mem_limit(
                bytes,
                true,
                XZ_MEM_LIMIT_KIB,
            ))),
            Compression::Zstd => Decoder::Zstd(Box::new(ZstdFrames {
                rest: bytes,
                frame: None,
            })),
        }
    }

    /// The compression's name, for messages.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Decoder::Plain(_) => Compression::None.label(),
            Decoder::Gzip(_) => Compression::Gzip.label(),
            Decoder::Xz(_) => Compression::Xz.label(),
            Decoder::Zstd(_) => Compression::Zstd.label(),
        }
    }
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Xz(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Concatenated zstd frames (what `zstd` writes for concatenated inputs,
/// and what `zstd -d` reads), each checked against its content checksum
/// when it has one.
pub(crate) struct ZstdFrames<'a> {
    rest: &'a [u8],
    frame: Option<StreamingDecoder<&'a [u8], FrameDecoder>>,
}

impl Read for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                let (rest, decoder) = match self.frame.take() {
                    Some(frame) => frame.into_parts(),
                    None => return Ok(0),
                };
                if let (Some(stated), Some(computed)) = (
                    decoder.get_checksum_from_data(),
                    decoder.get_calculated_checksum(),
                ) && stated != computed
                {
                    return Err(io::Error::other("zstd frame checksum mismatch"));
                }
                self.rest = rest;
            }
            if self.rest.is_empty() {
                return Ok(0);
            }
            let before = self.rest.len();
            let frame = StreamingDecoder::new_with_max_window_size(self.rest, ZSTD_MAX_WINDOW)
                .map_err(io::Error::other)?;
            if frame.get_ref().len() >= before {
                // Cannot happen (a frame header has bytes), but an endless
                // loop must not be possible on any input.
                return Err(io::Error::other("zstd frame made no progress"));
            }
            self.frame = Some(frame);
        }
    }
}

/// A reader that fails, and sets `exceeded`, rather than yield more than
/// `limit` bytes.
pub(crate) struct Bounded<'c, R> {
    inner: R,
    left: u64,
    exceeded: &'c Cell<bool>,
}

impl<'c, R: Read> Bounded<'c, R> {
    pub(crate) fn new(inner: R, limit: u64, exceeded: &'c Cell<bool>) -> Self {
        Bounded {
            inner,
            left: limit,
            exceeded,
        }
    }
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other("decompression limit exceeded"))
                }
            };
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::index::fixtures::{gzip, xz, zstd};

    const TEXT: &[u8] = b"Package: hello\nVersion: 2.10-3\n\n";

    #[test]
    fn detects_and_round_trips() {
        for (c, bytes) in [
            (Compression::None, TEXT.to_vec()),
            (Compression::Gzip, gzip(TEXT)),
            (Compression::Xz, xz(TEXT)),
            (Compression::Zstd, zstd(TEXT)),
        ] {
            assert_eq!(Compression::detect(&bytes), c);
            assert_eq!(decompress(&bytes, 1 << 20).unwrap(), TEXT, "{c:?}");
        }
    }

    #[test]
    fn concatenated_members_are_one_stream() {
        for f in [gzip, xz, zstd] {
            let mut two = f(b"abc");
            two.extend(f(b"def"));
            assert_eq!(decompress(&two, 100).unwrap(), b"abcdef");
        }
    }

    #[test]
    fn from_path() {
        assert_eq!(
            Compression::from_path("main/binary-amd64/Packages.xz"),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::from_path("Packages.gz"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_path("core.db.tar.zst"),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_path("core.db"), Some(Compression::None));
        assert_eq!(Compression::from_path("Packages"), Some(Compression::None));
        assert_eq!(Compression::from_path("Packages.bz2"), None);
    }

    #[test]
    fn bombs_are_refused() {
        let zeros = vec![0u8; 1 << 20];
        for (name, bytes) in [
            ("uncompressed", zeros.clone()),
            ("gzip", gzip(&zeros)),
            ("xz", xz(&zeros)),
            ("zstd", zstd(&zeros)),
        ] {
            let e = decompress(&bytes, 1000).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "compressed index: {name}: decompressed size exceeds the limit of 1000 bytes"
                )
            );
            // Exactly at the limit is fine.
            assert_eq!(decompress(&bytes, 1 << 20).unwrap().len(), 1 << 20);
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for f in [gzip, xz, zstd] {
            let full = f(&data);
            let cut = &full[..full.len() - 5];
            let e = decompress(cut, 1 << 30).unwrap_err();
            assert!(matches!(e.problem(), Problem::Corrupt(_)), "{e}");
            let mut flipped = full.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x55;
            assert!(decompress(&flipped, 1 << 30).is_err());
            let mut trailing = full;
            trailing.extend_from_slice(b"garbage!");
            assert!(decompress(&trailing, 1 << 30).is_err());
        }
    }
}
