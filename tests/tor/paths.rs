//! An item from a peer, over every Tor path a node can take.

use std::sync::Arc;

use anonmirror_channel::Listener;
use anonmirror_channel::transport::Transport;
use anonmirror_channel::transport::control::{ControlPort, DaemonOnionListener};
use anonmirror_channel::transport::socks::SocksTransport;

use crate::support::{self, on_tor_net};

/// arti (the `tor` transport) reaches a peer on a non-loopback address
/// through an exit relay, and the item verifies.
#[test]
fn arti_fetches_from_a_peer_through_an_exit() {
    on_tor_net(|_net| async {
        let net = anonmirror_testnet::TorNet::shared().expect("network");
        let dir = tempfile::tempdir().expect("tempdir");
        let item = support::item(dir.path(), 3 << 20, 1);
        let (_server, peer) = support::serve_on_peer_ip(&item).await;
        let arti: Arc<dyn Transport> = Arc::new(support::arti(net, dir.path()).await);
        assert!(arti.is_tor());
        assert_eq!(arti.describe(), "tor (arti)");
        let got = support::fetch(arti, &peer, &item).await;
        assert!(got == item.bytes, "the item, verified");
    });
}

/// The SOCKS5 fallback (`tor-socks`): the same fetch through a Tor
/// daemon's SOCKS port.
#[test]
fn a_tor_daemon_socks_port_fetches_from_a_peer() {
    on_tor_net(|net| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let item = support::item(dir.path(), 3 << 20, 2);
        let (_server, peer) = support::serve_on_peer_ip(&item).await;
        let daemon = net.start_client("socks-user", &[]).expect("tor daemon");
        let socks: Arc<dyn Transport> =
            Arc::new(SocksTransport::new(daemon.socks).expect("dialer"));
        let got = support::fetch(socks, &peer, &item).await;
        assert!(got == item.bytes, "the item, verified");
    });
}

/// A volunteer reachable only as an arti-hosted onion service (a fresh
/// address) serves an item to an arti client, and to a Tor daemon's
/// SOCKS port (onion destinations go through SOCKS unresolved).
#[test]
fn a_volunteer_serves_as_an_onion_service() {
    on_tor_net(|net| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let item = support::item(dir.path(), 2 << 20, 3);
        let host = support::arti(net, &dir.path().join("host")).await;
        let listener = host.host_onion_service(7879).await.expect("onion service");
        let (_server, peer) = support::serve(listener, &item);
        assert!(peer.contact.is_onion(), "{}", peer.contact);
        let client: Arc<dyn Transport> =
            Arc::new(support::arti(net, &dir.path().join("client")).await);
        let got = support::fetch(client, &peer, &item).await;
        assert!(
            got == item.bytes,
            "the item, from the onion service, via arti"
        );
        let daemon = net.start_client("onion-user", &[]).expect("tor daemon");
        let socks: Arc<dyn Transport> =
            Arc::new(SocksTransport::new(daemon.socks).expect("dialer"));
        let got = support::fetch(socks, &peer, &item).await;
        assert!(
            got == item.bytes,
            "the item, from the onion service, via SOCKS"
        );
    });
}

/// A `tor-socks` volunteer reachable only as an onion service of its Tor
/// daemon (`ADD_ONION` through the control port, cookie authentication:
/// SAFECOOKIE, as C tor offers it) serves an item to an arti client and
/// to another Tor daemon's SOCKS port; each listener gets a fresh
/// address, and the service ends with the listener.
#[test]
fn a_volunteer_serves_as_an_onion_service_of_its_tor_daemon() {
    on_tor_net(|net| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let item = support::item(dir.path(), 2 << 20, 4);
        let host = net.start_client("daemon-host", &[]).expect("tor daemon");
        let control = ControlPort::Tcp(host.control);
        let listener = DaemonOnionListener::launch(&control, 7879)
            .await
            .expect("the daemon's onion service");
        let contact = listener.local_contact().expect("contact");
        assert!(contact.is_onion(), "{contact}");
        // A second session: a new address, nothing shared with the first.
        let next = DaemonOnionListener::launch(&control, 7879)
            .await
            .expect("another onion service");
        assert_ne!(next.local_contact().expect("contact"), contact);
        next.close().await.expect("DEL_ONION");

        let (_server, peer) = support::serve(listener, &item);
        let client: Arc<dyn Transport> =
            Arc::new(support::arti(net, &dir.path().join("client")).await);
        let got = support::fetch(client, &peer, &item).await;
        assert!(
            got == item.bytes,
            "the item, from the daemon's onion service, via arti"
        );
        let daemon = net.start_client("daemon-user", &[]).expect("tor daemon");
        let socks: Arc<dyn Transport> =
            Arc::new(SocksTransport::new(daemon.socks).expect("dialer"));
        let got = support::fetch(socks, &peer, &item).await;
        assert!(
            got == item.bytes,
            "the item, from the daemon's onion service, via SOCKS"
        );
    });
}
