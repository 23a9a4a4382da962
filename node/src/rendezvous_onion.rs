//! The rendezvous as an onion service (`anonmirror rendezvous
//! --onion-service-port`): arti hosts a service whose key lives under the
//! rendezvous's state directory, so its address stays the same across
//! restarts, and every stream it accepts is handed to the rendezvous.

use std::path::{Path, PathBuf};

// The transports.
use anonmirror_channel::Listener;
use anonmirror_channel::transport::tor::{OnionKeys, TorConfig, TorTransport};
use anonmirror_core::Contact;
use anonmirror_rendezvous::Rendezvous;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::err::{Error, Result};

/// The arti nickname of the service: its key is stored under it.
const NICKNAME: &str = "anonmirror-rendezvous";

/// A running onion service whose streams go to the rendezvous.
#[derive(Debug)]
pub struct RendezvousOnion {
    /// `HOST.onion:PORT`, as a policy's `rendezvous.address` says it.
    pub address: String,
    _arti: TorTransport,
    /// Stops the forwarding task.
    cancel: CancellationToken,
    forward: TaskTracker,
}

impl RendezvousOnion {
    /// Bootstraps arti (state under `state_dir`), launches the service on
    /// virtual port `port` and hands its streams to `r`.
    pub async fn serve(
        r: &Rendezvous,
        state_dir: &Path,
        port: u16,
        arti_config: Option<PathBuf>,
    ) -> Result<RendezvousOnion> {
        let mut config = TorConfig::new(state_dir.join("arti-state"), state_dir.join("arti-cache"));
        config.onion_keys = OnionKeys::Persistent;
        config.arti_config = arti_config;
        let arti = crate::carrier::bootstrap_arti(&config, "--dangerous-arti-config")
            .await
            .map_err(|e| Error::Tor(format!("starting arti: {e}")))?;
        let mut listener = arti
            .host_named_onion_service(NICKNAME, port)
            .await
            .map_err(|e| Error::Tor(format!("launching the onion service: {e}")))?;
        let address = match listener
            .local_contact()
            .map_err(|e| Error::Tor(format!("the onion service's address: {e}")))?
        {
            Contact::Onion { host, port } => format!("{host}:{port}"),
            other => {
                return Err(Error::Internal(format!("not an onion service: {other}")));
            }
        };
        let streams = r.streams();
        let cancel = CancellationToken::new();
        let forward = TaskTracker::new();
        let stop = cancel.clone();
        forward.spawn(async move {
            loop {
                let s = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    },
                    _ = stop.cancelled() => return,
                };
                if streams.send(s).await.is_err() {
                    return;
                }
            }
        });
        forward.close();
        Ok(RendezvousOnion {
            address,
            _arti: arti,
            cancel,
            forward,
        })
    }

    /// Stops handing streams to the rendezvous, and waits until it has.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.forward.wait().await;
    }
}

impl Drop for RendezvousOnion {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
