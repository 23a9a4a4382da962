//! Index parsers at Debian scale: 60 000 entries per format.
//!
//! 1. A Debian `Packages` file (paragraphs shaped like Debian's, about
//!    900 bytes each): parsing the decompressed text, against SHA-256 of
//!    the same bytes (what apt must do to the file anyway), plus the cost
//!    of decompressing its `.xz` and `.gz` forms.
//! 2. A pacman database (a `desc` per package, shaped like `repo-add`'s,
//!    about 1 KiB each), gzip and zstd: the whole parse (decompress, read
//!    the tar, parse each `desc`), against decompressing alone.
//! 3. A `SHA256SUMS` file, against SHA-256 of its bytes; and an
//!    `InRelease` of 600 index files.
//!
//! Decompression is also timed with the C tools (`xz -dc`, `gzip -dc`,
//! `zstd -dc`, output to /dev/null), when installed, to compare the
//! pure-Rust decoders with liblzma, zlib and libzstd.
//!
//! Each figure is the median of `--reps` runs.
//!
//! `cargo run --release -p anonmirror-bench --bin index`

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anonmirror_mirror::index::{
    decompress, parse_packages, parse_pacman_db, parse_release, parse_sha256sums,
};
use anyhow::Context;
use clap::Parser;

/// Index parser benchmark.
#[derive(Parser)]
struct Args {
    /// Entries per index.
    #[arg(long, default_value_t = 60_000)]
    entries: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Only these indexes (packages, pacman, sums); all when empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn median(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `tool -dc` on `packed`, output discarded; `None` if `tool` is missing.
fn c_tool(reps: usize, tool: &str, packed: &[u8]) -> anyhow::Result<Option<Duration>> {
    let present = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        return Ok(None);
    }
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(packed)?;
    median(reps, || {
        let status = Command::new(tool)
            .arg("-dc")
            .arg(file.path())
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "{tool} -dc failed");
        Ok(())
    })
    .map(Some)
}

/// ", C `tool -dc` N ms" or nothing.
fn c_figure(tool: &str, d: Option<Duration>) -> String {
    d.map_or(String::new(), |d| {
        format!("; C `{tool} -dc` {:.0} ms", ms(d))
    })
}

fn sha256(bytes: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes)
}

fn hex(i: usize, salt: u8) -> String {
    hex::encode(sha256(&[&i.to_le_bytes()[..], &[salt]].concat()))
}

fn packages_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 950);
    for i in 0..n {
        let _ = write!(
            s,
            "Package: pkg{i}\nSource: src{}\nVersion: 1.{i}.0-{}\nInstalled-Size: {}\n\
             Maintainer: Debian Someone Team <team+pkg{i}@tracker.debian.org>\n\
             Architecture: amd64\nDepends: libc6 (>= 2.34), libgcc-s1 (>= 3.0), \
             libstdc++6 (>= 12), zlib1g (>= 1:1.2.0)\n\
             Description: example package number {i} for the benchmark\n\
             Multi-Arch: same\nHomepage: https://example.org/pkg{i}\n\
             Description-md5: {}\nTag: devel::library, implemented-in::c++, role::shared-lib\n\
             Section: libs\nPriority: optional\n\
             Filename: pool/main/p/src{}/pkg{i}_1.{i}.0-{}_amd64.deb\nSize: {}\n\
             MD5sum: {}\nSHA256: {}\n\n",
            i / 3,
            i % 7 + 1,
            100 + i % 5000,
            &hex(i, 1)[..32],
            i / 3,
            i % 7 + 1,
            20_000 + i * 13,
            &hex(i, 2)[..32],
            hex(i, 3),
        );
    }
    s
}

fn pacman_db(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(n * 2048));
    let sig = "iHUEABYKAB0WIQRizEfakefakefakefakefakefakefakeFiEEfakefakefake\
               fakefakefakefakefakefakefakefakefakefakefakefakefakefakefakefake==";
    for i in 0..n {
        let dir = format!("pkg{i}-1.{i}-1");
        let desc = format!(
            "%FILENAME%\npkg{i}-1.{i}-1-x86_64.pkg.tar.zst\n\n%NAME%\npkg{i}\n\n\
             %BASE%\npkg{i}\n\n%VERSION%\n1.{i}-1\n\n%DESC%\nExample package {i}\n\n\
             %CSIZE%\n{}\n\n%ISIZE%\n{}\n\n%MD5SUM%\n{}\n\n%SHA256SUM%\n{}\n\n\
             %PGPSIG%\n{sig}\n\n%URL%\nhttps://example.org/pkg{i}\n\n\
             %LICENSE%\nGPL-3.0-or-later\n\n%ARCH%\nx86_64\n\n%BUILDDATE%\n1700000000\n\n\
             %PACKAGER%\nSomeone <someone@archlinux.org>\n\n\
             %DEPENDS%\nglibc\ngcc-libs\nzlib\n\n%MAKEDEPENDS%\ncmake\nninja\n\n",
            20_000 + i * 13,
            80_000 + i * 29,
            &hex(i, 2)[..32],
            hex(i, 3),
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("{dir}/"), &[][..])?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(desc.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("{dir}/desc"), desc.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn xz(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6))?;
    w.write_all(data)?;
    Ok(w.finish()?)
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.entries;
    let reps = args.reps;
    let run = |what: &str| args.only.is_empty() || args.only.iter().any(|o| o == what);
    println!("{n} entries per index, median of {reps} runs");

    if run("packages") {
        packages(n, reps)?;
    }
    if run("pacman") {
        pacman(n, reps)?;
    }
    if run("sums") {
        sums(n, reps)?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Millions of entries per second.
fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64() / 1e6
}

fn packages(n: usize, reps: usize) -> anyhow::Result<()> {
    let text = packages_text(n);
    let parse = median(reps, || {
        let e = parse_packages(text.as_bytes())?;
        anyhow::ensure!(e.len() == n, "parsed {} entries", e.len());
        black_box(e);
        Ok(())
    })?;
    let hash = median(reps, || {
        black_box(sha256(text.as_bytes()));
        Ok(())
    })?;
    println!(
        "Packages ({:.1} MiB): parse {:.0} ms = {:.2} M entries/s; SHA-256 of the same bytes (baseline) {:.0} ms; ratio {:.2}x",
        mib(text.len()),
        ms(parse),
        rate(n, parse),
        ms(hash),
        parse.as_secs_f64() / hash.as_secs_f64()
    );
    for (ext, tool, packed) in [
        ("xz", "xz", xz(text.as_bytes())?),
        ("gz", "gzip", gzip(text.as_bytes())?),
    ] {
        let unpack = median(reps, || {
            black_box(decompress(&packed, 1 << 30)?);
            Ok(())
        })?;
        println!(
            "  Packages.{ext} ({:.1} MiB): decompress {:.0} ms; decompress + parse {:.0} ms{}",
            mib(packed.len()),
            ms(unpack),
            ms(unpack + parse),
            c_figure(tool, c_tool(reps, tool, &packed)?)
        );
    }
    Ok(())
}

fn pacman(n: usize, reps: usize) -> anyhow::Result<()> {
    let tar = pacman_db(n)?;
    for (name, tool, packed) in [
        ("uncompressed", None, tar.clone()),
        ("gzip -6", Some("gzip"), gzip(&tar)?),
        ("zstd (ruzstd fastest)", Some("zstd"), zstd(&tar)),
    ] {
        let parse = median(reps, || {
            let e = parse_pacman_db(&packed)?;
            anyhow::ensure!(e.len() == n, "parsed {} entries", e.len());
            black_box(e);
            Ok(())
        })?;
        let unpack = median(reps, || {
            black_box(decompress(&packed, 1 << 30)?);
            Ok(())
        })?;
        let c = match tool {
            Some(tool) => c_figure(tool, c_tool(reps, tool, &packed)?),
            None => String::new(),
        };
        println!(
            "pacman db, {name} ({:.1} MiB, {:.1} MiB as tar): parse {:.0} ms = {:.2} M entries/s; decompress alone (baseline) {:.0} ms; ratio {:.2}x{c}",
            mib(packed.len()),
            mib(tar.len()),
            ms(parse),
            rate(n, parse),
            ms(unpack),
            parse.as_secs_f64() / unpack.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

fn sums(n: usize, reps: usize) -> anyhow::Result<()> {
    let sums: String = (0..n)
        .map(|i| format!("{}  images/file-{i}.iso\n", hex(i, 4)))
        .collect();
    let parse = median(reps, || {
        let e = parse_sha256sums(sums.as_bytes())?;
        anyhow::ensure!(e.len() == n, "parsed {} entries", e.len());
        black_box(e);
        Ok(())
    })?;
    let hash = median(reps, || {
        black_box(sha256(sums.as_bytes()));
        Ok(())
    })?;
    println!(
        "SHA256SUMS ({:.1} MiB): parse {:.0} ms = {:.2} M entries/s; SHA-256 of the same bytes (baseline) {:.1} ms; ratio {:.2}x",
        mib(sums.len()),
        ms(parse),
        rate(n, parse),
        ms(hash),
        parse.as_secs_f64() / hash.as_secs_f64()
    );
    let mut release = String::from(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nSuite: stable\n\
         Codename: bookworm\nDate: Sat, 10 Feb 2024 10:06:00 UTC\nAcquire-By-Hash: yes\nSHA256:\n",
    );
    for i in 0..600 {
        let _ = writeln!(
            release,
            " {} {:>9} main/binary-arch{i}/Packages.xz",
            hex(i, 5),
            i * 1000
        );
    }
    release.push_str("-----BEGIN PGP SIGNATURE-----\n\nfake\n-----END PGP SIGNATURE-----\n");
    let parse = median(reps, || {
        let r = parse_release(release.as_bytes()).context("InRelease")?;
        anyhow::ensure!(r.files.len() == 600);
        black_box(r);
        Ok(())
    })?;
    println!(
        "InRelease, 600 files ({:.0} KiB): parse {:.2} ms",
        release.len() as f64 / 1024.0,
        ms(parse)
    );
    Ok(())
}
