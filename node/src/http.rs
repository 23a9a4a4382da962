//! The little HTTP client the demo and the command line (`status`) need:
//! one GET, bounded in time, the whole body.

use std::time::Duration;

use axum::http::StatusCode;
use http_body_util::BodyExt;

use crate::err::{Error, Result};

/// GET `url`, the whole body.
pub async fn get(url: &str) -> Result<(StatusCode, Vec<u8>)> {
    let failed = |reason: String| Error::Http {
        url: url.to_owned(),
        reason,
    };
    let uri = url.parse().map_err(|e| failed(format!("{e}")))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.get(uri))
        .await
        .map_err(|_| failed("no answer in 60 s".into()))?
        .map_err(|e| failed(chain(&e)))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect())
        .await
        .map_err(|_| failed("body not complete in 120 s".into()))?
        .map_err(|e| failed(chain(&e)))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// `e` and its sources, as `e: source: source…` (hyper's own message is
/// only the outermost, "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}
