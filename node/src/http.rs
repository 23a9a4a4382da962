//! The little HTTP client the command line needs (`status`, `demo`):
//! one GET, bounded in time, the whole body.

use std::time::Duration;

use anyhow::{Result, anyhow};
use axum::http::StatusCode;
use http_body_util::BodyExt;

/// GET `url`, the whole body.
pub async fn get(url: &str) -> Result<(StatusCode, Vec<u8>)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.get(url.parse()?))
        .await
        .map_err(|_| anyhow!("GET {url}: no answer in 60 s"))??;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect())
        .await
        .map_err(|_| anyhow!("GET {url}: body not complete in 120 s"))??
        .to_bytes();
    Ok((status, body.to_vec()))
}
