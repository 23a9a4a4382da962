//! The private Tor network, arti clients on it, and a peer with an item.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anonmirror_channel::transport::Transport;
use anonmirror_channel::transport::tor::{TorConfig, TorTransport};
use anonmirror_channel::{ChannelParams, Listener, StaticKeypair, TcpTransport};
use anonmirror_core::Contact;
use anonmirror_core::{Entropy, ItemKey, SeededEntropy, SystemClock};
use anonmirror_overlay::swarm::{self, PeerAddr, SwarmConfig};
use anonmirror_privacy::Level;
use anonmirror_store::{Origin, Store};
use anonmirror_testnet::{Namespace, TorNet, require_tor};

/// The namespace-only address peers listen on.
pub const PEER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));

/// How long a path through the private network may take to work: a
/// fresh arti client builds circuits, a fresh onion service publishes.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Runs `test` on a fresh runtime inside the namespace, with the network
/// up; `None` (the test is skipped, saying why) only outside CI when tor
/// cannot run here.
pub fn on_tor_net<F, T>(test: impl FnOnce(&'static TorNet) -> F) -> Option<T>
where
    F: Future<Output = T>,
{
    if !require_tor() {
        return None;
    }
    // Enters the namespace on this thread: the runtime's threads, built
    // next, inherit it.
    let net = TorNet::shared().expect("private Tor network");
    static ADDRESS: OnceLock<()> = OnceLock::new();
    ADDRESS.get_or_init(|| {
        Namespace::shared()
            .expect("namespace")
            .add_address("10.77.0.1/24")
            .expect("peer address");
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    Some(rt.block_on(test(net)))
}

/// An arti client of the private network, its files under `dir`.
pub async fn arti(net: &TorNet, dir: &Path) -> TorTransport {
    std::fs::create_dir_all(dir).expect("arti's directory");
    let config_file = dir.join("arti.toml");
    std::fs::write(
        &config_file,
        net.arti_config_toml(&dir.join("arti-state"), &dir.join("arti-cache")),
    )
    .expect("arti config");
    let mut config = TorConfig::new(dir.join("arti-state"), dir.join("arti-cache"));
    config.arti_config = Some(config_file);
    config.bootstrap_timeout = PATIENCE;
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let dialer = TorTransport::bootstrap(&config, move |p| {
        if let Ok(mut v) = seen.lock() {
            v.push(p.fraction);
        }
    })
    .await
    .expect("arti bootstraps on the private network");
    let reported = progress.lock().expect("progress").clone();
    assert!(
        reported.last().is_some_and(|f| *f > 0.0),
        "bootstrap progress was reported: {reported:?}"
    );
    dialer
}

/// An item in a fresh store.
pub struct Item {
    pub store: Store,
    pub key: ItemKey,
    pub bytes: Vec<u8>,
}

pub fn item(dir: &Path, size: usize, seed: u64) -> Item {
    let mut bytes = vec![0u8; size];
    SeededEntropy::new(seed).fill(&mut bytes);
    let key = ItemKey(
        ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .try_into()
            .expect("32 bytes"),
    );
    let store = Store::open(&dir.join("store"), 1 << 30, Arc::new(SystemClock)).expect("store");
    store
        .insert(&key, bytes.len() as u64, Origin::Import, &bytes[..])
        .expect("insert");
    Item { store, key, bytes }
}

/// Channel parameters of the tests' overlay.
pub fn params() -> ChannelParams {
    ChannelParams::new(Level::Balanced, anonmirror_core::Epoch(1))
}

/// A peer server for `item` on `listener`.
pub fn serve<L>(listener: L, item: &Item) -> (anonmirror_overlay::server::ServerHandle, PeerAddr)
where
    L: Listener + 'static,
    L::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let keypair = StaticKeypair::generate().expect("keypair");
    let key = keypair.public();
    let server = anonmirror_overlay::server::spawn(
        listener,
        item.store.clone(),
        keypair,
        params(),
        Default::default(),
    )
    .expect("server");
    let contact = server.contact().clone();
    (server, PeerAddr { contact, key })
}

/// A peer server for `item` on the namespace's non-loopback address.
pub async fn serve_on_peer_ip(item: &Item) -> (anonmirror_overlay::server::ServerHandle, PeerAddr) {
    let listener = TcpTransport
        .listen(&Contact::Tcp(SocketAddr::new(PEER_IP, 0)))
        .await
        .expect("listen on the peer address");
    serve(listener, item)
}

/// Downloads `item` from `peer` through `dialer`, retrying (a path
/// through a fresh network or to a fresh onion service takes a while)
/// until it verifies or [`PATIENCE`] runs out.
pub async fn fetch(dialer: Arc<dyn Transport>, peer: &PeerAddr, item: &Item) -> Vec<u8> {
    let transport = dialer;
    let mut cfg = SwarmConfig::new(params());
    cfg.connect_timeout = Duration::from_secs(60);
    cfg.stall_timeout = Duration::from_secs(60);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut got = Vec::new();
        let r = swarm::download(
            &transport,
            &cfg,
            item.key,
            item.bytes.len() as u64,
            std::slice::from_ref(peer),
            &mut got,
        )
        .await;
        match r {
            Ok(_) => return got,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("no download within {PATIENCE:?}: {e}"),
        }
    }
}
