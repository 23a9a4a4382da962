//! The end of every download: the verified copy linked into the store.
//!
//! The store takes the proof the download made while the bytes went by
//! ([`Verified`]), so it links the work file without reading it again.

use std::path::Path;
use std::sync::Arc;

use anonmirror_store::Origin;
use anonmirror_store::Verified;

use crate::err::FetchError;
use crate::job::feed::Job;
use crate::job::sources::{Sources, Want};
use crate::metrics::Source;

impl Sources {
    /// Link the completed copy into the store and end the job.
    pub(super) async fn finish(
        &self,
        job: &Arc<Job>,
        want: &Want,
        source: Source,
        proof: &Verified,
    ) -> Result<(), FetchError> {
        let path = job
            .state
            .borrow()
            .feed
            .as_ref()
            .map(|f| f.path.as_path().to_path_buf())
            .ok_or(FetchError::NoFeed)?;
        // Counted when the last byte is there, before the store links it.
        self.metrics.item_completed(source, want.size);
        let origin = match source {
            Source::Peers => Origin::Peer,
            _ => Origin::Upstream,
        };
        debug_assert_eq!(proof.key(), want.key);
        self.import(proof, &path, origin).await
    }

    /// Link the verified file at `path` into the store. A store that
    /// cannot keep it is no failure of the job.
    pub(super) async fn import(
        &self,
        proof: &Verified,
        path: &Path,
        origin: Origin,
    ) -> Result<(), FetchError> {
        let store = self.store.clone();
        let (proof, path) = (proof.clone(), path.to_path_buf());
        match tokio::task::spawn_blocking(move || store.import_verified(&proof, &path, origin))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            // The package manager has its bytes either way; a full disk
            // only costs the cache.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not keep the item in the store");
                Ok(())
            }
            Err(e) => Err(FetchError::task(e)),
        }
    }
}
