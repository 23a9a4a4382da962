//! Privacy levels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How much a node serves, and so how much it may reveal (DESIGN.md §6).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Gateway only: fetches for the local package manager, serves nobody.
    #[default]
    Off,
    /// Serves everything it holds from the current index, over TCP.
    Open,
    /// Serves common items, padded; Tor preferred.
    Balanced,
    /// Announces the whole canonical set, over Tor only.
    Strict,
}

impl Level {
    /// Every level, from least to most private.
    pub const ALL: [Level; 4] = [Level::Off, Level::Open, Level::Balanced, Level::Strict];

    /// The level's name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Open => "open",
            Level::Balanced => "balanced",
            Level::Strict => "strict",
        }
    }

    /// The byte bound into Noise prologues, so peers of different levels
    /// cannot complete a handshake with each other by mistake.
    pub fn wire_byte(self) -> u8 {
        match self {
            Level::Off => 0,
            Level::Open => 1,
            Level::Balanced => 2,
            Level::Strict => 3,
        }
    }

    /// The level a [`Level::wire_byte`] stands for.
    pub fn from_wire_byte(b: u8) -> Option<Level> {
        match b {
            0 => Some(Level::Off),
            1 => Some(Level::Open),
            2 => Some(Level::Balanced),
            3 => Some(Level::Strict),
            _ => None,
        }
    }

    /// Whether a node at this level serves peers at all.
    pub fn serves(self) -> bool {
        self != Level::Off
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a level name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLevel(pub String);

impl fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown level `{}`: expected one of off, open, balanced, strict",
            self.0
        )
    }
}

impl std::error::Error for UnknownLevel {}

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, UnknownLevel> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_explained() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
        }
        let err = "paranoid".parse::<Level>().expect_err("not a level");
        assert!(err.to_string().contains("expected one of off, open"));
        assert_eq!(Level::default(), Level::Off);
        assert!(!Level::Off.serves() && Level::Strict.serves());
    }
}
