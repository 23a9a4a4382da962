//! The verified content store: items on disk, metadata in redb.
//!
//! Items are files named by their SHA-256 (lower-case hex) under
//! `<dir>/items/`; their metadata (size, BLAKE3 root, last use, origin) and
//! their bao outboard (16 KiB chunk groups) live in `<dir>/store.redb`.
//!
//! The store must never hold an unverified byte, nor show an item whose
//! metadata and file disagree. Insertion is therefore:
//!
//! 1. stream the bytes into `<dir>/tmp/<random>` while hashing them
//!    (SHA-256 and the bao outboard in the same pass);
//! 2. check the size and the SHA-256 against the caller's (the index's);
//! 3. fsync the file, rename it into `items/`, fsync the directory;
//! 4. commit the metadata, durably.
//!
//! A crash before 3 leaves only a file in `tmp/`, which [`Store::open`]
//! deletes; a crash between 3 and 4 leaves a file without metadata, which
//! `open` deletes too; metadata is never committed before its file exists.
//! `open` also drops metadata whose file went missing or changed size.
//!
//! A size cap is kept by evicting the least recently used items, never one
//! that is pinned (being served) or being written.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anonmirror_core::{Clock, ItemKey, Sensitive};

use crate::err::{Error, db_err, io_err, size_mismatch};
use crate::import::{HashingReader, link_or_copy};
use crate::meta::{ItemMeta, Origin};
use crate::verify::{Tree, Verified};
use bao_tree::BlockSize;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::CreateOutboard;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// The chunk group size of every outboard: 2^4 BLAKE3 chunks of 1 KiB.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");
const OUTBOARDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("outboards");

/// In-memory bookkeeping, guarded by one mutex.
#[derive(Default)]
struct State {
    /// Bytes of all committed items.
    used: u64,
    /// Items currently open for reading, with their open count.
    pins: HashMap<ItemKey, usize>,
    /// Items currently being written (their bytes are reserved in `used`).
    writing: HashSet<ItemKey>,
    /// Bytes reserved for items being written.
    reserved: u64,
    /// Items committed or evicted since the store was opened.
    changes: u64,
}

struct Inner {
    dir: PathBuf,
    db: Database,
    cap: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// The verified content store. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("cap", &self.inner.cap)
            .finish_non_exhaustive()
    }
}

/// An item open for reading. The item stays pinned (never evicted) until
/// this is dropped.
#[derive(Debug)]
pub struct ItemReader {
    store: Store,
    key: ItemKey,
    /// The item's metadata.
    pub meta: ItemMeta,
    /// The open file; its bytes were verified when inserted.
    pub file: File,
}

impl Drop for ItemReader {
    fn drop(&mut self) {
        let mut state = self.store.lock();
        if let Some(n) = state.pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.pins.remove(&self.key);
            }
        }
    }
}

/// Room reserved under the cap for an item being written; released
/// however the write ends.
#[derive(Debug)]
struct Reservation {
    store: Store,
    key: ItemKey,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.store.lock();
        state.writing.remove(&self.key);
        state.reserved -= self.size;
    }
}

/// An item being written: bytes go to a temporary file, in order, while
/// their SHA-256 is computed; nothing is visible until [`ItemWriter::finish`]
/// has checked size and SHA-256 against the index and committed. Dropped
/// unfinished, it deletes its file and releases its room in the cap.
pub struct ItemWriter {
    reservation: Reservation,
    key: ItemKey,
    size: u64,
    origin: Origin,
    tmp: PathBuf,
    file: io::BufWriter<File>,
    sha: ring::digest::Context,
    written: u64,
    committed: bool,
}

impl std::fmt::Debug for ItemWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemWriter")
            .field("size", &self.size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl ItemWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The item being written.
    pub fn key(&self) -> &ItemKey {
        &self.key
    }

    /// Append the next bytes of the item.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.written + bytes.len() as u64 > self.size {
            return Err(Error::Mismatch {
                key: Sensitive::new(self.key),
                what: format!("expected {} bytes, got more", self.size),
            });
        }
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.tmp))?;
        self.sha.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Check the whole item against the index (size and SHA-256) and commit
    /// it with `tree`'s root and outboard. The caller vouches that the tree
    /// describes these bytes (the swarm checked every chunk group against
    /// it); the SHA-256 the store checks itself.
    pub fn finish(self, tree: &Tree) -> Result<ItemMeta, Error> {
        if tree.size() != self.size {
            return Err(Error::Mismatch {
                key: Sensitive::new(self.key),
                what: format!("tree for {} bytes, item of {}", tree.size(), self.size),
            });
        }
        self.finish_with(tree.root(), tree.outboard())
    }

    fn finish_with(mut self, root: [u8; 32], outboard: &[u8]) -> Result<ItemMeta, Error> {
        if self.written != self.size {
            return Err(Error::Mismatch {
                key: Sensitive::new(self.key),
                what: format!("expected {} bytes, got {}", self.size, self.written),
            });
        }
        let sha = std::mem::replace(
            &mut self.sha,
            ring::digest::Context::new(&ring::digest::SHA256),
        )
        .finish();
        if sha.as_ref() != self.key.as_bytes() {
            return Err(Error::Mismatch {
                key: Sensitive::new(self.key),
                what: "SHA-256 of the bytes differs from the index".to_owned(),
            });
        }
        self.file.flush().map_err(io_err("write", &self.tmp))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(io_err("fsync", &self.tmp))?;
        let meta = self.reservation.store.commit(
            &self.key,
            self.size,
            self.origin,
            &self.tmp,
            root,
            outboard,
        )?;
        self.committed = true;
        Ok(meta)
    }
}

impl Drop for ItemWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Feeds what it reads into an [`ItemWriter`], so the outboard, the SHA-256
/// and the file come from one pass over the bytes.
struct Tee<'a, R> {
    src: R,
    writer: &'a mut ItemWriter,
    failed: Option<Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        if let Err(e) = self.writer.write(&buf[..n]) {
            let msg = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

impl Store {
    /// Open (or create) the store in `dir` with a cap of `cap` bytes, and
    /// bring it back to a consistent state after any crash.
    pub fn open(dir: &Path, cap: u64, clock: Arc<dyn Clock>) -> Result<Store, Error> {
        for sub in ["items", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let db_path = dir.join("store.redb");
        let db = Database::create(&db_path).map_err(db_err)?;
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                db,
                cap,
                clock,
                state: Mutex::new(State::default()),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere cannot leave it
        // half-updated in a way that matters more than losing the store.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn item_path(&self, key: &ItemKey) -> PathBuf {
        self.inner.dir.join("items").join(key.to_hex())
    }

    /// Delete leftovers of interrupted inserts and reconcile metadata with
    /// files, then count the bytes in use.
    fn recover(&self) -> Result<(), Error> {
        let tmp = self.inner.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        let mut known: HashMap<ItemKey, ItemMeta> = HashMap::new();
        let mut stale: Vec<ItemKey> = Vec::new();
        {
            let rtx = self.inner.db.begin_read().map_err(db_err)?;
            if let Ok(table) = rtx.open_table(ITEMS) {
                for row in table.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let Ok(raw) = <[u8; 32]>::try_from(k.value()) else {
                        continue;
                    };
                    let key = ItemKey(raw);
                    match ItemMeta::decode(v.value()) {
                        Some(meta)
                            if fs::metadata(self.item_path(&key))
                                .is_ok_and(|m| m.is_file() && m.len() == meta.size) =>
                        {
                            known.insert(key, meta);
                        }
                        _ => stale.push(key),
                    }
                }
            }
        }
        if !stale.is_empty() {
            let wtx = self.inner.db.begin_write().map_err(db_err)?;
            {
                let mut items = wtx.open_table(ITEMS).map_err(db_err)?;
                let mut obs = wtx.open_table(OUTBOARDS).map_err(db_err)?;
                for key in &stale {
                    items.remove(&key.0[..]).map_err(db_err)?;
                    obs.remove(&key.0[..]).map_err(db_err)?;
                    // The file, if any, no longer matches its record.
                    let _ = fs::remove_file(self.item_path(key));
                }
            }
            wtx.commit().map_err(db_err)?;
        }
        let items = self.inner.dir.join("items");
        for entry in fs::read_dir(&items).map_err(io_err("list", &items))? {
            let entry = entry.map_err(io_err("list", &items))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<ItemKey>().ok())
                .is_some_and(|k| known.contains_key(&k));
            if !keep {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        self.lock().used = known.values().map(|m| m.size).sum();
        Ok(())
    }

    /// The store's cap in bytes.
    pub fn cap(&self) -> u64 {
        self.inner.cap
    }

    /// Bytes held by committed items.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// How many items were committed or evicted since the store was
    /// opened: what it holds changed if this did.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// The metadata of an item, if held.
    pub fn meta(&self, key: &ItemKey) -> Result<Option<ItemMeta>, Error> {
        let rtx = self.inner.db.begin_read().map_err(db_err)?;
        let table = match rtx.open_table(ITEMS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match table.get(&key.0[..]).map_err(db_err)? {
            None => Ok(None),
            Some(v) => ItemMeta::decode(v.value())
                .map(Some)
                .ok_or(Error::Corrupt(Sensitive::new(*key))),
        }
    }

    /// The bao outboard of an item (pre-order hash pairs, no size prefix).
    pub fn outboard(&self, key: &ItemKey) -> Result<Option<Vec<u8>>, Error> {
        let rtx = self.inner.db.begin_read().map_err(db_err)?;
        let table = match rtx.open_table(OUTBOARDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table
            .get(&key.0[..])
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Every item held, with its metadata.
    pub fn list(&self) -> Result<Vec<(ItemKey, ItemMeta)>, Error> {
        let rtx = self.inner.db.begin_read().map_err(db_err)?;
        let table = match rtx.open_table(ITEMS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let raw = <[u8; 32]>::try_from(k.value()).map_err(db_err)?;
            let key = ItemKey(raw);
            let meta = ItemMeta::decode(v.value()).ok_or(Error::Corrupt(Sensitive::new(key)))?;
            out.push((key, meta));
        }
        Ok(out)
    }

    /// Open an item for reading, pinning it and marking it used now.
    pub fn open_item(&self, key: &ItemKey) -> Result<Option<ItemReader>, Error> {
        // Pin first, so eviction cannot remove the file between the lookup
        // and the open.
        *self.lock().pins.entry(*key).or_insert(0) += 1;
        let mut reader = ItemReader {
            store: self.clone(),
            key: *key,
            meta: ItemMeta {
                size: 0,
                root: [0; 32],
                last_use: 0,
                origin: Origin::Import,
            },
            file: match File::open(self.item_path(key)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.unpin(key);
                    return Ok(None);
                }
                Err(e) => {
                    self.unpin(key);
                    return Err(io_err("open", &self.item_path(key))(e));
                }
            },
        };
        let Some(mut meta) = self.meta(key)? else {
            return Ok(None);
        };
        meta.last_use = self.inner.clock.unix_secs();
        self.put_meta(key, &meta, Durability::None)?;
        reader.meta = meta;
        Ok(Some(reader))
    }

    fn unpin(&self, key: &ItemKey) {
        let mut state = self.lock();
        if let Some(n) = state.pins.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                state.pins.remove(key);
            }
        }
    }

    fn put_meta(
        &self,
        key: &ItemKey,
        meta: &ItemMeta,
        durability: Durability,
    ) -> Result<(), Error> {
        let mut wtx = self.inner.db.begin_write().map_err(db_err)?;
        wtx.set_durability(durability).map_err(db_err)?;
        {
            let mut items = wtx.open_table(ITEMS).map_err(db_err)?;
            items
                .insert(&key.0[..], &meta.encode()[..])
                .map_err(db_err)?;
        }
        wtx.commit().map_err(db_err)
    }

    /// Reserve room for `size` bytes, evicting least recently used items
    /// that are neither pinned nor being written.
    fn reserve(&self, key: &ItemKey, size: u64) -> Result<Reservation, Error> {
        let cap = self.inner.cap;
        loop {
            let victim = {
                let mut state = self.lock();
                if state.writing.contains(key) {
                    return Err(Error::Busy(Sensitive::new(*key)));
                }
                if state.used + state.reserved + size <= cap {
                    state.writing.insert(*key);
                    state.reserved += size;
                    return Ok(Reservation {
                        store: self.clone(),
                        key: *key,
                        size,
                    });
                }
                let pinned: HashSet<ItemKey> = state
                    .pins
                    .keys()
                    .chain(state.writing.iter())
                    .copied()
                    .collect();
                drop(state);
                let candidates = self.list()?;
                let victim = candidates
                    .iter()
                    .filter(|(k, _)| !pinned.contains(k))
                    .min_by_key(|(k, m)| (m.last_use, *k))
                    .map(|(k, _)| *k);
                match victim {
                    Some(v) => v,
                    None => {
                        let pinned_bytes = candidates
                            .iter()
                            .filter(|(k, _)| pinned.contains(k))
                            .map(|(_, m)| m.size)
                            .sum();
                        return Err(Error::Full {
                            key: Sensitive::new(*key),
                            size,
                            cap,
                            pinned: pinned_bytes,
                        });
                    }
                }
            };
            self.evict(&victim)?;
        }
    }

    /// Remove an item unless it is pinned or being written; returns whether
    /// it was removed.
    pub fn evict(&self, key: &ItemKey) -> Result<bool, Error> {
        let mut state = self.lock();
        if state.pins.contains_key(key) || state.writing.contains(key) {
            return Ok(false);
        }
        // Metadata goes first: a crash after this leaves a file without
        // metadata, which `open` removes.
        let wtx = self.inner.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut items = wtx.open_table(ITEMS).map_err(db_err)?;
            let mut obs = wtx.open_table(OUTBOARDS).map_err(db_err)?;
            obs.remove(&key.0[..]).map_err(db_err)?;
            let old = items.remove(&key.0[..]).map_err(db_err)?;
            old.and_then(|v| ItemMeta::decode(v.value()))
        };
        wtx.commit().map_err(db_err)?;
        let Some(meta) = removed else {
            return Ok(false);
        };
        state.used -= meta.size;
        state.changes += 1;
        drop(state);
        let path = self.item_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Start writing an item of `size` bytes, reserving room for it under
    /// the cap (evicting least recently used items if needed).
    pub fn writer(&self, key: &ItemKey, size: u64, origin: Origin) -> Result<ItemWriter, Error> {
        let reservation = self.reserve(key, size)?;
        let tmp = self.tmp_path();
        let file = File::create_new(&tmp).map_err(io_err("create", &tmp))?;
        Ok(ItemWriter {
            reservation,
            key: *key,
            size,
            origin,
            tmp,
            file: io::BufWriter::with_capacity(1 << 20, file),
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
            committed: false,
        })
    }

    /// Insert an item from a byte stream, verified against the size and
    /// SHA-256 (the item key) the index states, computing its outboard on
    /// the way. Nothing is visible unless the whole item verified.
    pub fn insert(
        &self,
        key: &ItemKey,
        size: u64,
        origin: Origin,
        src: impl Read,
    ) -> Result<ItemMeta, Error> {
        if let Some(meta) = self.meta(key)? {
            return Ok(meta);
        }
        let mut writer = self.writer(key, size, origin)?;
        let mut tee = Tee {
            src: src.take(size.saturating_add(1)),
            writer: &mut writer,
            failed: None,
        };
        let created = PreOrderOutboard::<Vec<u8>>::create_sized(&mut tee, size, BLOCK_SIZE);
        // The outboard reader stops at `size`; one more byte means the
        // source is longer than the index says (the writer refuses it).
        let mut extra = [0u8; 1];
        let more = created.as_ref().ok().map(|_| tee.read(&mut extra));
        if let Some(e) = tee.failed.take() {
            return Err(e);
        }
        let outboard = match created {
            Ok(outboard) => outboard,
            // The source ended before `size` bytes.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Error::Mismatch {
                    key: Sensitive::new(*key),
                    what: format!("expected {size} bytes, got {}", writer.written()),
                });
            }
            Err(e) => return Err(io_err("read the source of", &writer.tmp)(e)),
        };
        if let Some(Err(e)) = more {
            return Err(io_err("read the source of", &writer.tmp)(e));
        }
        writer.finish_with(outboard.root.into(), &outboard.data)
    }

    fn tmp_path(&self) -> PathBuf {
        let mut name = [0u8; 16];
        anonmirror_core::Entropy::fill(&mut anonmirror_core::OsEntropy, &mut name);
        self.inner.dir.join("tmp").join(hex::encode(name))
    }

    /// Move a verified file into place and commit its metadata.
    fn commit(
        &self,
        key: &ItemKey,
        size: u64,
        origin: Origin,
        tmp: &Path,
        root: [u8; 32],
        outboard: &[u8],
    ) -> Result<ItemMeta, Error> {
        let dest = self.item_path(key);
        fs::rename(tmp, &dest).map_err(io_err("rename into", &dest))?;
        let items_dir = self.inner.dir.join("items");
        File::open(&items_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &items_dir))?;
        let meta = ItemMeta {
            size,
            root,
            last_use: self.inner.clock.unix_secs(),
            origin,
        };
        let mut wtx = self.inner.db.begin_write().map_err(db_err)?;
        wtx.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut items = wtx.open_table(ITEMS).map_err(db_err)?;
            items
                .insert(&key.0[..], &meta.encode()[..])
                .map_err(db_err)?;
            let mut obs = wtx.open_table(OUTBOARDS).map_err(db_err)?;
            obs.insert(&key.0[..], outboard).map_err(db_err)?;
        }
        if let Err(e) = wtx.commit() {
            let _ = fs::remove_file(&dest);
            return Err(db_err(e));
        }
        {
            let mut state = self.lock();
            state.used += size;
            state.changes += 1;
        }
        Ok(meta)
    }

    /// Add an existing file, by hard link when it is on the same file
    /// system (no copy), else by copy; verified like any insert against
    /// the size and SHA-256 the index states.
    pub fn import(&self, key: &ItemKey, size: u64, path: &Path) -> Result<ItemMeta, Error> {
        self.import_with(key, size, Origin::Import, |tmp| {
            let linked = self.link_and_hash(path, tmp)?;
            if linked.size != size {
                return Err(size_mismatch(key, size, linked.size));
            }
            if linked.key != *key {
                return Err(Error::Mismatch {
                    key: Sensitive::new(*key),
                    what: "SHA-256 of the file differs from the index".to_owned(),
                });
            }
            Ok((linked.root, Cow::Owned(linked.outboard)))
        })
    }

    /// Keep the file a download wrote, by hard link (else by copy),
    /// without hashing it again: `proof` says its bytes were checked on
    /// their way to the file (by the swarm download, or an
    /// [`ItemHasher`](crate::verify::ItemHasher)), and carries the tree
    /// (root and outboard) they make. Only the size is checked here.
    pub fn import_verified(
        &self,
        proof: &Verified,
        path: &Path,
        origin: Origin,
    ) -> Result<ItemMeta, Error> {
        let (key, size) = (&proof.key, proof.size());
        self.import_with(key, size, origin, |tmp| {
            link_or_copy(path, tmp)?;
            let on_disk = fs::metadata(tmp).map_err(io_err("stat", tmp))?.len();
            if on_disk != size {
                return Err(size_mismatch(key, size, on_disk));
            }
            Ok((proof.tree.root(), Cow::Borrowed(proof.tree.outboard())))
        })
    }

    /// What imports share: nothing to do if the item is held; else room
    /// reserved, `place` puts the file at a fresh temporary path and says
    /// its tree (or why it is not the item), and the file is committed,
    /// or removed if anything failed.
    fn import_with<'a>(
        &self,
        key: &ItemKey,
        size: u64,
        origin: Origin,
        place: impl FnOnce(&Path) -> Result<([u8; 32], Cow<'a, [u8]>), Error>,
    ) -> Result<ItemMeta, Error> {
        if let Some(meta) = self.meta(key)? {
            return Ok(meta);
        }
        let _reservation = self.reserve(key, size)?;
        let tmp = self.tmp_path();
        let result = place(&tmp)
            .and_then(|(root, outboard)| self.commit(key, size, origin, &tmp, root, &outboard));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Add a local file under the SHA-256 of its own bytes (for files no
    /// index names yet, e.g. `anonmirror store add`): one pass computes
    /// the key and the outboard.
    pub fn add_file(&self, path: &Path) -> Result<(ItemKey, ItemMeta), Error> {
        let tmp = self.tmp_path();
        let result = (|| {
            let linked = self.link_and_hash(path, &tmp)?;
            if let Some(meta) = self.meta(&linked.key)? {
                let _ = fs::remove_file(&tmp);
                return Ok((linked.key, meta));
            }
            let _reservation = self.reserve(&linked.key, linked.size)?;
            let meta = self.commit(
                &linked.key,
                linked.size,
                Origin::Import,
                &tmp,
                linked.root,
                &linked.outboard,
            )?;
            Ok((linked.key, meta))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Hard-link (or copy) `path` to `tmp` and hash it: SHA-256, size and
    /// bao outboard in one read.
    fn link_and_hash(&self, path: &Path, tmp: &Path) -> Result<Linked, Error> {
        link_or_copy(path, tmp)?;
        let file = File::open(tmp).map_err(io_err("open", tmp))?;
        let size = file.metadata().map_err(io_err("stat", tmp))?.len();
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut tee = HashingReader {
            src: io::BufReader::with_capacity(1 << 20, file),
            sha: &mut sha,
        };
        let outboard = PreOrderOutboard::<Vec<u8>>::create_sized(&mut tee, size, BLOCK_SIZE)
            .map_err(io_err("read", tmp))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(sha.finish().as_ref());
        Ok(Linked {
            key: ItemKey(key),
            size,
            root: outboard.root.into(),
            outboard: outboard.data,
        })
    }
}

/// A file linked into `tmp/` and hashed.
struct Linked {
    key: ItemKey,
    size: u64,
    root: [u8; 32],
    outboard: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use anonmirror_core::{Entropy, ManualClock, SeededEntropy};

    use super::*;

    fn item(seed: u64, len: usize) -> (ItemKey, Vec<u8>) {
        let mut data = vec![0u8; len];
        SeededEntropy::new(seed).fill(&mut data);
        let digest = ring::digest::digest(&ring::digest::SHA256, &data);
        let key = ItemKey(digest.as_ref().try_into().expect("32 bytes"));
        (key, data)
    }

    fn open(dir: &Path, cap: u64) -> (Store, ManualClock) {
        let clock = ManualClock::at_unix(1_000_000);
        let store = Store::open(dir, cap, Arc::new(clock.clone())).expect("store opens");
        (store, clock)
    }

    fn files_in(dir: &Path) -> usize {
        fs::read_dir(dir).expect("dir").count()
    }

    #[test]
    fn insert_verifies_and_reads_back_with_outboard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path(), 1 << 30);
        let (key, data) = item(1, 200_000);
        let meta = store
            .insert(&key, data.len() as u64, Origin::Peer, &data[..])
            .expect("insert");
        assert_eq!(meta.size, 200_000);
        assert_eq!(
            meta.root,
            *blake3::hash(&data).as_bytes(),
            "bao root equals BLAKE3 of the file"
        );
        let mut reader = store.open_item(&key).expect("open").expect("held");
        let mut back = Vec::new();
        reader.file.read_to_end(&mut back).expect("read");
        assert_eq!(back, data);
        // 200,000 bytes span 13 chunk groups of 16 KiB: 12 parent nodes of 64 bytes.
        assert_eq!(
            store.outboard(&key).expect("ob").expect("held").len(),
            12 * 64
        );
        assert_eq!(store.used_bytes(), 200_000);
    }

    #[test]
    fn wrong_bytes_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path(), 1 << 30);
        let (key, mut data) = item(2, 50_000);
        data[40_000] ^= 1;
        let err = store
            .insert(&key, 50_000, Origin::Peer, &data[..])
            .expect_err("corrupt");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        let short = store
            .insert(&key, 50_001, Origin::Peer, &data[..])
            .expect_err("short");
        assert!(
            short
                .to_string()
                .contains("expected 50001 bytes, got 50000"),
            "{short}"
        );
        let long = store
            .insert(&key, 49_999, Origin::Peer, &data[..])
            .expect_err("long");
        assert!(long.to_string().contains("got more"), "{long}");
        assert_eq!(store.meta(&key).expect("meta"), None);
        assert_eq!(files_in(&dir.path().join("items")), 0);
        assert_eq!(files_in(&dir.path().join("tmp")), 0);
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn eviction_keeps_under_cap_and_spares_pinned_items() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, clock) = open(dir.path(), 100_000);
        let items: Vec<_> = (10..14).map(|s| item(s, 30_000)).collect();
        for (key, data) in &items[..3] {
            store
                .insert(key, 30_000, Origin::Upstream, &data[..])
                .expect("insert");
            clock.advance(std::time::Duration::from_secs(10));
        }
        // The oldest is in use: the next oldest goes instead.
        let pinned = store.open_item(&items[0].0).expect("open").expect("held");
        store
            .insert(&items[3].0, 30_000, Origin::Upstream, &items[3].1[..])
            .expect("insert");
        assert!(store.meta(&items[0].0).expect("meta").is_some());
        assert!(store.meta(&items[1].0).expect("meta").is_none());
        assert!(store.used_bytes() <= store.cap());
        assert_eq!(files_in(&dir.path().join("items")), 3);
        drop(pinned);
        let (big, big_data) = item(20, 120_000);
        let err = store
            .insert(&big, 120_000, Origin::Peer, &big_data[..])
            .expect_err("too big");
        assert!(matches!(err, Error::Full { .. }), "{err}");
    }

    #[test]
    fn open_cleans_up_every_crash_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kept, kept_data) = item(30, 10_000);
        let (gone, gone_data) = item(31, 10_000);
        {
            let (store, _) = open(dir.path(), 1 << 30);
            store
                .insert(&kept, 10_000, Origin::Peer, &kept_data[..])
                .expect("insert");
            store
                .insert(&gone, 10_000, Origin::Peer, &gone_data[..])
                .expect("insert");
        }
        // A crash mid-write: a partial temporary file.
        fs::write(dir.path().join("tmp").join("partial"), b"half").expect("write");
        // A crash between rename and commit: a file without metadata.
        let (orphan, orphan_data) = item(32, 5_000);
        fs::write(dir.path().join("items").join(orphan.to_hex()), &orphan_data).expect("write");
        // Metadata whose file vanished.
        fs::remove_file(dir.path().join("items").join(gone.to_hex())).expect("rm");
        let (store, _) = open(dir.path(), 1 << 30);
        assert_eq!(files_in(&dir.path().join("tmp")), 0);
        assert!(store.meta(&kept).expect("meta").is_some());
        assert!(store.meta(&orphan).expect("meta").is_none());
        assert!(store.meta(&gone).expect("meta").is_none());
        assert_eq!(files_in(&dir.path().join("items")), 1);
        assert_eq!(store.used_bytes(), 10_000);
    }

    #[test]
    fn import_hard_links_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(&dir.path().join("store"), 1 << 30);
        let (key, data) = item(40, 70_000);
        let src = dir.path().join("pkg.tar.zst");
        fs::write(&src, &data).expect("write");
        let meta = store.import(&key, 70_000, &src).expect("import");
        assert_eq!(meta.origin, Origin::Import);
        let stored = fs::metadata(store.item_path(&key)).expect("stat");
        assert_eq!(
            stored.ino(),
            fs::metadata(&src).expect("stat").ino(),
            "hard link, no copy"
        );
        let (other, _) = item(41, 70_000);
        let err = store.import(&other, 70_000, &src).expect_err("wrong key");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        assert!(store.meta(&other).expect("meta").is_none());
        assert!(src.exists(), "the source is never touched");
    }

    #[test]
    fn a_verified_download_is_kept_by_link_with_its_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(&dir.path().join("store"), 1 << 30);
        let (key, data) = item(42, 90_000);
        let ob =
            PreOrderOutboard::<Vec<u8>>::create_sized(&data[..], 90_000, BLOCK_SIZE).expect("ob");
        let tree = Tree::new(90_000, ob.root.into(), ob.data.clone()).expect("tree");
        let proof = Verified { key, tree };
        // A file of another length is not the download the proof is of.
        let short = dir.path().join("short");
        fs::write(&short, &data[..89_999]).expect("write");
        let err = store
            .import_verified(&proof, &short, Origin::Peer)
            .expect_err("short");
        assert!(err.to_string().contains("expected 90000 bytes"), "{err}");
        assert!(store.meta(&key).expect("meta").is_none());
        assert_eq!(files_in(&dir.path().join("store").join("tmp")), 0);

        let src = dir.path().join("job-1");
        fs::write(&src, &data).expect("write");
        let meta = store
            .import_verified(&proof, &src, Origin::Peer)
            .expect("import");
        assert_eq!(meta.origin, Origin::Peer);
        assert_eq!(meta.root, *blake3::hash(&data).as_bytes());
        assert_eq!(store.outboard(&key).expect("ob").expect("held"), ob.data);
        assert_eq!(
            fs::metadata(store.item_path(&key)).expect("stat").ino(),
            fs::metadata(&src).expect("stat").ino(),
            "hard link, no copy"
        );
        assert_eq!(store.used_bytes(), 90_000);
    }

    #[test]
    fn writer_takes_pieces_and_a_tree_and_cleans_up_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path(), 1 << 30);
        let (key, data) = item(50, 100_000);
        let ob =
            PreOrderOutboard::<Vec<u8>>::create_sized(&data[..], 100_000, BLOCK_SIZE).expect("ob");
        let tree = Tree::new(100_000, ob.root.into(), ob.data).expect("tree");
        {
            let mut w = store.writer(&key, 100_000, Origin::Peer).expect("writer");
            w.write(&data[..40_000]).expect("write");
            assert!(matches!(
                store.writer(&key, 100_000, Origin::Peer),
                Err(Error::Busy(_))
            ));
            // Dropped half-way: nothing stays, the room is given back.
        }
        assert_eq!(files_in(&dir.path().join("tmp")), 0);
        let mut w = store
            .writer(&key, 100_000, Origin::Peer)
            .expect("writer again");
        for piece in data.chunks(30_000) {
            w.write(piece).expect("write");
        }
        assert!(w.write(b"x").is_err(), "no byte past the size");
        let meta = w.finish(&tree).expect("finish");
        assert_eq!(meta.root, tree.root());
        assert_eq!(
            store.outboard(&key).expect("ob").as_deref(),
            Some(tree.outboard())
        );
        // Wrong bytes under a right tree: the SHA-256 refuses them.
        let (other, mut bad) = item(51, 100_000);
        bad[0] ^= 1;
        let mut w = store.writer(&other, 100_000, Origin::Peer).expect("writer");
        w.write(&bad).expect("write");
        assert!(
            w.finish(&tree)
                .expect_err("sha")
                .to_string()
                .contains("SHA-256")
        );
        assert!(store.meta(&other).expect("meta").is_none());
        assert_eq!(store.used_bytes(), 100_000);
    }

    #[test]
    fn add_file_keys_a_file_by_its_own_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(&dir.path().join("store"), 1 << 30);
        let (key, data) = item(60, 40_000);
        let src = dir.path().join("local.pkg");
        fs::write(&src, &data).expect("write");
        let (got, meta) = store.add_file(&src).expect("add");
        assert_eq!(got, key);
        assert_eq!(meta.size, 40_000);
        assert_eq!(meta.root, *blake3::hash(&data).as_bytes());
        assert_eq!(
            store.add_file(&src).expect("again").0,
            key,
            "adding twice is harmless"
        );
        assert_eq!(store.list().expect("list").len(), 1);
        assert_eq!(files_in(&dir.path().join("store").join("tmp")), 0);
        assert!(store.add_file(&dir.path().join("missing")).is_err());
    }
}
