//! What the store records of an item ([`ItemMeta`]) and its byte layout in
//! the metadata database.

/// Version byte of the metadata record, so the layout can change later.
const META_V1: u8 = 1;
pub(crate) const META_LEN: usize = 1 + 8 + 32 + 8 + 1;

/// Where an item came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Downloaded from peers.
    Peer,
    /// Downloaded from the upstream mirror.
    Upstream,
    /// Imported from a local package cache or added by hand.
    Import,
}

impl Origin {
    fn to_byte(self) -> u8 {
        match self {
            Origin::Peer => 0,
            Origin::Upstream => 1,
            Origin::Import => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Origin> {
        match b {
            0 => Some(Origin::Peer),
            1 => Some(Origin::Upstream),
            2 => Some(Origin::Import),
            _ => None,
        }
    }
}

/// What the store knows of an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemMeta {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 root of the bao tree (16 KiB chunk groups).
    pub root: [u8; 32],
    /// Last time it was inserted or opened, in Unix seconds.
    pub last_use: u64,
    /// Where it came from.
    pub origin: Origin,
}

impl ItemMeta {
    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = META_V1;
        out[1..9].copy_from_slice(&self.size.to_le_bytes());
        out[9..41].copy_from_slice(&self.root);
        out[41..49].copy_from_slice(&self.last_use.to_le_bytes());
        out[49] = self.origin.to_byte();
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<ItemMeta> {
        if b.len() != META_LEN || b[0] != META_V1 {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[9..41]);
        Some(ItemMeta {
            size: u64_at(1),
            root,
            last_use: u64_at(41),
            origin: Origin::from_byte(b[49])?,
        })
    }
}
