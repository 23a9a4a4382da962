//! The generated repository: package files of deterministic content in
//! the Debian layout, and their index.

use std::path::Path;

use anonmirror_core::{Entropy, SeededEntropy};
use anyhow::Result;

/// A package file of the generated repository.
#[derive(Clone, Debug)]
pub struct Package {
    /// Its path under the repository's root.
    pub path: String,
    /// Its SHA-256, as the index says.
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// 50 MiB or more.
    pub large: bool,
}

/// A mebibyte.
pub const MIB: u64 = 1 << 20;

/// Write the repository under `root` (suite `bench`, component `main`,
/// architecture `all`); returns its packages.
pub fn generate_repository(root: &Path, n: usize, scale: f64, seed: u64) -> Result<Vec<Package>> {
    let mut rng = SeededEntropy::new(seed);
    let mut packages = Vec::with_capacity(n);
    let mut text = String::new();
    let mut buf = Vec::new();
    for i in 0..n {
        let (size, large) = match i % 20 {
            // One in twenty: 50–150 MiB (kernels, firmware, toolchains).
            7 => (50 * MIB + rng.below(100 * MIB), true),
            // Three in twenty: 1–10 MiB.
            2 | 12 | 17 => (MIB + rng.below(9 * MIB), false),
            // The rest: 4 KiB–1 MiB, log-uniform (most .debs are small).
            _ => {
                let u = rng.next_f64();
                ((4096.0 * 256f64.powf(u)) as u64, false)
            }
        };
        let size = ((size as f64 * scale) as u64).max(1024);
        let name = format!("bench-pkg{i}");
        let path = format!("pool/main/b/{name}/{name}_1.0-1_all.deb");
        buf.resize(size as usize, 0);
        SeededEntropy::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)).fill(&mut buf);
        let file = root.join(&path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&file, &buf)?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &buf).as_ref());
        text.push_str(&format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: all\nFilename: {path}\nSize: {size}\n\
             SHA256: {}\nDescription: benchmark package {i}\n\n",
            hex::encode(sha256)
        ));
        packages.push(Package {
            path,
            sha256,
            size,
            large,
        });
    }
    let dists = root.join("dists/bench");
    std::fs::create_dir_all(dists.join("main/binary-all"))?;
    std::fs::write(dists.join("main/binary-all/Packages"), &text)?;
    let sha = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    std::fs::write(
        dists.join("Release"),
        format!(
            "Origin: anonmirror bench\nSuite: bench\nCodename: bench\n\
             Date: Sun, 22 Nov 2026 00:00:00 UTC\nArchitectures: all\nComponents: main\n\
             SHA256:\n {} {} main/binary-all/Packages\n",
            hex::encode(sha.as_ref()),
            text.len()
        ),
    )?;
    Ok(packages)
}

/// The index files a client fetches before the packages.
pub const INDEXES: [&str; 2] = [
    "dists/bench/Release",
    "dists/bench/main/binary-all/Packages",
];
