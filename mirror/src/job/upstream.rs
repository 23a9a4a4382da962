//! The upstream mirror's two roles in a job: the only source, or the
//! hedge beside peers that are late.
//!
//! As the only source its bytes are passed on as they arrive, as a plain
//! mirror would pass them, and stored only if the whole file matches the
//! index. As a hedge it publishes nothing until the whole file matched.
//! Either way its writer hashes the file as it is written, so the store
//! gets its proof without reading the file again.

use std::path::PathBuf;
use std::sync::Arc;

use anonmirror_core::Sensitive;
use anonmirror_store::Verified;
use anonmirror_store::verify::ItemHasher;

use crate::err::FetchError;
use crate::job::feed::{Feed, Job, Recent};
use crate::job::sources::{Sources, Want};
use crate::job::writer::{WorkWriter, Write};
use crate::metrics::Source;

/// How an upstream download's request goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Send {
    /// Behind others on the mirror's warm connection: for answers read to
    /// the end.
    Pipelined,
    /// On a connection of its own.
    Alone,
}

impl Sources {
    /// The upstream as the only source: bytes published as they arrive,
    /// stored if the whole file matches.
    pub(super) async fn upstream_primary(
        &self,
        job: &Arc<Job>,
        want: &Want,
    ) -> Result<(), FetchError> {
        let path = job.work_path(&self.config.work_dir);
        let path = Arc::new(path);
        let recent = Arc::new(Recent::default());
        job.publish(|s| {
            if s.feed.as_ref().is_some_and(|f| f.prefix > 0) {
                s.lineage += 1;
            }
            s.feed = Some(Feed {
                path: path.clone(),
                source: Source::Upstream,
                lineage: s.lineage,
                prefix: 0,
                recent: recent.clone(),
            })
        });
        let proof = self
            .download_upstream(
                want,
                path.as_path().to_owned(),
                Some(&recent),
                Send::Pipelined,
                |n| {
                    job.publish(|s| {
                        if let Some(f) = s.feed.as_mut().filter(|f| Arc::ptr_eq(&f.path, &path)) {
                            f.prefix += n;
                        }
                    })
                },
            )
            .await?;
        let Some(proof) = proof else {
            // Passed on as received; not stored, not shared.
            tracing::info!(
                item = %Sensitive::new(want.key),
                "the upstream's file does not match the index: passed on, not stored"
            );
            return Ok(());
        };
        self.finish(job, want, Source::Upstream, &proof).await
    }

    /// The upstream as a hedge: returns the work file once the whole file
    /// matched the index.
    pub(super) async fn upstream_hedge(
        &self,
        job: &Arc<Job>,
        want: &Want,
    ) -> Result<(PathBuf, Verified), FetchError> {
        let path = job.work_path(&self.config.work_dir);
        match self
            // Abandoned when the peers finish first: on a connection of its
            // own, which dropping closes.
            .download_upstream(want, path.clone(), None, Send::Alone, |_| {})
            .await?
        {
            Some(proof) => Ok((path, proof)),
            None => Err(FetchError::Mismatch),
        }
    }

    /// GET the item into a new work file at `path` (through its own
    /// writer thread, which hashes it), each body frame handed to `recent`
    /// (when given) and announced to `progress` as it arrives. Returns the
    /// proof that the file is the item, or `None` when size or SHA-256
    /// differ from the index.
    async fn download_upstream(
        &self,
        want: &Want,
        path: PathBuf,
        recent: Option<&Arc<Recent>>,
        send: Send,
        progress: impl Fn(u64),
    ) -> Result<Option<Verified>, FetchError> {
        // The file is made while the request goes out.
        let writer = WorkWriter::spawn(
            path,
            recent.cloned().unwrap_or_default(),
            Some(ItemHasher::new(want.size)),
        );
        let resp = self
            .upstream
            .get_item(&want.url, send == Send::Pipelined)
            .await
            .map_err(|e| FetchError::Request(Arc::new(e)))?;
        if resp.status != hyper::StatusCode::OK {
            return Err(FetchError::Status(resp.status));
        }
        let started = std::time::Instant::now();
        let mut body = resp.body;
        let mut got = 0u64;
        while let Some(data) = body.data().await {
            let data = data.map_err(|e| FetchError::Body(Arc::new(e)))?;
            if got + data.len() as u64 > want.size {
                // Longer than the index says: not the item.
                let _ = writer.finish().await;
                return Ok(None);
            }
            if let Some(r) = recent {
                r.push(got, data.clone());
            }
            got += data.len() as u64;
            progress(data.len() as u64);
            writer
                .send(Write::Bytes(data))
                .await
                .map_err(FetchError::work_file)?;
        }
        let hasher = writer.finish().await.map_err(FetchError::work_file)?;
        self.upstream.observe_body(got, started.elapsed());
        Ok(hasher.and_then(|h| h.finish(want.key)))
    }
}
