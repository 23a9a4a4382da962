//! Bootstrapping: published install statistics as a prior popularity
//! snapshot, until enough peers report.
//!
//! Two formats are read, from bytes the caller loaded:
//!
//! - **Debian popcon `by_inst`** (`popcon.debian.org/by_inst`): `#` lines
//!   are comments, then `rank name inst vote old recent no-files
//!   (maintainer)` per package, a dashed line, and a `Total` line whose
//!   columns are sums. The file does not state how many systems reported;
//!   the most installed package (dpkg, on every Debian system) is taken as
//!   that number.
//! - **Arch pkgstats JSON** (`pkgstats.archlinux.de/api/packages`): an
//!   object with `packagePopularities`, a list of `{name, samples, count,
//!   …}` where `samples` is the number of reporting systems and `count` the
//!   number with the package installed.
//!
//! Install statistics are of packages, not files: [`prior_snapshot`] maps
//! each name to the item of its latest version in the current index. The
//! result is marked [`PopularitySnapshot::prior`]; its standard error is
//! binomial (the statistics are a sample of all users, not a census of
//! peers), and it knows no level populations.

use std::collections::BTreeMap;

use anonmirror_core::Epoch;
use serde::Deserialize;

use crate::aggregate::confidence_z;
use crate::err::Error;
use crate::index::CurrentIndex;
use crate::snapshot::{Estimate, LevelPeers, PopularitySnapshot};

/// Install counts by package name, and how many systems reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallStats {
    /// Where they come from, for people (and the snapshot's source label).
    pub source: &'static str,
    /// Reporting systems.
    pub systems: u64,
    /// Systems with each package installed.
    pub installs: BTreeMap<String, u64>,
}

const POPCON: &str = "debian popcon by_inst";
const PKGSTATS: &str = "arch pkgstats";

fn prior_err(format: &'static str, line: usize, reason: impl Into<String>) -> Error {
    Error::Prior {
        format,
        line,
        reason: reason.into(),
    }
}

/// Parse popcon's `by_inst`.
pub fn parse_popcon_by_inst(text: &str) -> Result<InstallStats, Error> {
    let mut installs = BTreeMap::new();
    let mut saw_total = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.chars().all(|c| c == '-') {
            continue;
        }
        if saw_total {
            return Err(prior_err(POPCON, n, "data after the Total line"));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(prior_err(
                POPCON,
                n,
                format!("expected `rank name inst …`, got `{line}`"),
            ));
        }
        fields[0]
            .parse::<u64>()
            .map_err(|_| prior_err(POPCON, n, format!("rank `{}` is not a number", fields[0])))?;
        if fields[1] == "Total" {
            saw_total = true;
            continue;
        }
        let inst: u64 = fields[2]
            .parse()
            .map_err(|_| prior_err(POPCON, n, format!("inst `{}` is not a number", fields[2])))?;
        if installs.insert(fields[1].to_owned(), inst).is_some() {
            return Err(prior_err(
                POPCON,
                n,
                format!("package `{}` listed twice", fields[1]),
            ));
        }
    }
    let systems = installs.values().copied().max().unwrap_or(0);
    if systems == 0 {
        return Err(prior_err(
            POPCON,
            0,
            "no package with a non-zero install count",
        ));
    }
    Ok(InstallStats {
        source: POPCON,
        systems,
        installs,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PkgstatsPage {
    package_popularities: Vec<PkgstatsEntry>,
}

#[derive(Deserialize)]
struct PkgstatsEntry {
    name: String,
    samples: u64,
    count: u64,
}

/// Parse a pkgstats `/api/packages` JSON page.
pub fn parse_pkgstats_json(text: &str) -> Result<InstallStats, Error> {
    let page: PkgstatsPage =
        serde_json::from_str(text).map_err(|e| prior_err(PKGSTATS, e.line(), e.to_string()))?;
    let mut installs = BTreeMap::new();
    let mut systems = 0;
    for e in page.package_popularities {
        if e.count > e.samples {
            return Err(prior_err(
                PKGSTATS,
                0,
                format!(
                    "`{}`: count {} exceeds samples {}",
                    e.name, e.count, e.samples
                ),
            ));
        }
        systems = systems.max(e.samples);
        if installs.insert(e.name.clone(), e.count).is_some() {
            return Err(prior_err(
                PKGSTATS,
                0,
                format!("package `{}` listed twice", e.name),
            ));
        }
    }
    if systems == 0 {
        return Err(prior_err(PKGSTATS, 0, "no samples: an empty page?"));
    }
    Ok(InstallStats {
        source: PKGSTATS,
        systems,
        installs,
    })
}

/// A prior snapshot: each package's install fraction given to the item of
/// its latest version in `index` (every repository), marked as a prior.
pub fn prior_snapshot(
    stats: &InstallStats,
    index: &CurrentIndex,
    epoch: Epoch,
) -> PopularitySnapshot {
    let n = stats.systems as f64;
    let mut items = BTreeMap::new();
    for entry in index.entries() {
        if let Some(&count) = stats.installs.get(&entry.name) {
            let p = (count as f64 / n).clamp(0.0, 1.0);
            items.insert(
                entry.key,
                Estimate {
                    holders: count as f64,
                    se: (n * p * (1.0 - p)).sqrt(),
                },
            );
        }
    }
    PopularitySnapshot {
        epoch,
        prior: true,
        source: stats.source.into(),
        peers: stats.systems,
        level_peers: LevelPeers::default(),
        params: None,
        z: confidence_z(1),
        items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexEntry;
    use anonmirror_core::ItemKey;

    const BY_INST: &str = "#Format\n#\n#<name> is the package name;\n\
#rank name                            inst  vote   old recent no-files (maintainer)\n\
1     dpkg                           200000 190000  1468 14359    21 (Dpkg Developers)\n\
2     bash                           199000 180000     3 12762    13 (Matthias Klose)\n\
3     rarepkg                            20      2     1     0     0 (Not in sid)\n\
------------------------------------------------------------------------------------\n\
3     Total                          399020 370002  1472 27121    34\n";

    #[test]
    fn popcon_parses_and_maps_to_latest_items() {
        let stats = parse_popcon_by_inst(BY_INST).expect("parses");
        assert_eq!(stats.systems, 200_000);
        assert_eq!(stats.installs["bash"], 199_000);
        let e = |b: u8, name: &str, v: &str| IndexEntry {
            key: ItemKey([b; 32]),
            repo: "debian".into(),
            name: name.into(),
            version: v.into(),
            no_announce: false,
        };
        let index = CurrentIndex::new([
            e(1, "bash", "5.1"),
            e(2, "bash", "5.2"),
            e(3, "rarepkg", "1"),
        ]);
        let snap = prior_snapshot(&stats, &index, Epoch(9));
        assert!(snap.prior);
        assert!(!snap.items.contains_key(&ItemKey([1; 32])));
        assert!((snap.fraction(&ItemKey([2; 32])) - 0.995).abs() < 1e-12);
        assert!(snap.conservative_fraction(&ItemKey([3; 32])) < 0.001);
        let bytes = snap.to_bytes().expect("encodes");
        assert_eq!(PopularitySnapshot::from_bytes(&bytes), Ok(snap));
    }

    #[test]
    fn popcon_errors_name_the_line() {
        let err = parse_popcon_by_inst("#c\n1 bash many 3\n").expect_err("bad inst");
        assert_eq!(
            err.to_string(),
            "debian popcon by_inst: line 2: inst `many` is not a number"
        );
        let err = parse_popcon_by_inst("1 a 3\n1 a 4\n").expect_err("twice");
        assert!(
            err.to_string().contains("line 2: package `a` listed twice"),
            "{err}"
        );
        assert!(parse_popcon_by_inst("#only comments\n").is_err());
        let err = parse_popcon_by_inst("3 Total 9\n4 late 1\n").expect_err("after total");
        assert!(err.to_string().contains("after the Total"), "{err}");
    }

    #[test]
    fn pkgstats_parses_and_refuses_nonsense() {
        let json = r#"{"total": 2, "count": 2, "limit": 2, "offset": 0, "query": null,
            "packagePopularities": [
              {"name": "pacman", "samples": 30000, "count": 30000, "popularity": 100, "startMonth": 202401, "endMonth": 202401},
              {"name": "vim", "samples": 30000, "count": 9000, "popularity": 30, "startMonth": 202401, "endMonth": 202401}
            ]}"#;
        let stats = parse_pkgstats_json(json).expect("parses");
        assert_eq!(stats.systems, 30_000);
        assert_eq!(stats.installs["vim"], 9_000);
        let err = parse_pkgstats_json("{\"packagePopularities\": [{\"name\": \"x\"}]}")
            .expect_err("fields");
        assert!(
            err.to_string()
                .starts_with("arch pkgstats: line 1: missing field"),
            "{err}"
        );
        let bad = r#"{"packagePopularities": [{"name": "x", "samples": 1, "count": 2}]}"#;
        assert!(
            parse_pkgstats_json(bad)
                .expect_err("count > samples")
                .to_string()
                .contains("exceeds")
        );
    }
}
