//! Port forwards asked of a router (PCP, NAT-PMP, UPnP IGD), against
//! testnet's port-mapping servers, which answer as RFC 6887, RFC 6886 and
//! the UPnP IGD specification (SSDP, SOAP) say, on 127.0.0.x (a different
//! address for each test).

use std::net::Ipv4Addr;
use std::time::Duration;

use anonmirror_node::mapping::{PortMap, Protocol};
use anonmirror_testnet::portmap::{PortMapServer, Request, Speaks};

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
/// How long a wait may take before the test counts as hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

async fn server(ip: Ipv4Addr, speaks: Speaks, max_lifetime: u32) -> PortMapServer {
    PortMapServer::start(ip, speaks, EXTERNAL, max_lifetime, Box::new(|_, _, _| {}))
        .await
        .expect("port-mapping server")
}

fn asked(r: &Request) -> (&'static str, u16, u16, u32) {
    (r.protocol, r.internal_port, r.external_port, r.lifetime)
}

#[tokio::test]
async fn a_pcp_router_forwards_the_port_and_the_forward_is_removed_at_the_end() {
    let gw = Ipv4Addr::new(127, 0, 0, 51);
    let s = server(gw, Speaks::Pcp, u32::MAX).await;
    let m = PortMap::request_from(gw, 7879).await.expect("mapped");
    assert_eq!((m.protocol, m.external_port), (Protocol::Pcp, 7879));
    m.remove().await;
    let got: Vec<_> = s.requests();
    let got: Vec<_> = got.iter().map(asked).collect();
    assert_eq!(
        got,
        [("PCP", 7879, 7879, 3600), ("PCP", 7879, 0, 0)],
        "a map for an hour, then a delete"
    );
}

#[tokio::test]
async fn a_nat_pmp_router_is_used_when_pcp_is_not_spoken() {
    let gw = Ipv4Addr::new(127, 0, 0, 52);
    let s = server(gw, Speaks::NatPmpOnly, u32::MAX).await;
    let m = PortMap::request_from(gw, 7879).await.expect("mapped");
    assert_eq!((m.protocol, m.external_port), (Protocol::NatPmp, 7879));
    m.remove().await;
    let got: Vec<_> = s.requests();
    let got: Vec<_> = got.iter().map(asked).collect();
    assert_eq!(
        got,
        [("NAT-PMP", 7879, 7879, 3600), ("NAT-PMP", 7879, 0, 0)]
    );
}

#[tokio::test]
async fn a_router_that_answers_neither_gets_no_forward_and_says_so() {
    let gw = Ipv4Addr::new(127, 0, 0, 53);
    let _s = server(gw, Speaks::Nothing, u32::MAX).await;
    let e = PortMap::request_from(gw, 7879)
        .await
        .expect_err("no forward");
    let text = e.to_string();
    assert!(text.contains("PCP") && text.contains("NAT-PMP"), "{text}");
}

#[tokio::test]
async fn a_forward_is_renewed_before_its_lifetime_ends() {
    let gw = Ipv4Addr::new(127, 0, 0, 54);
    // The router grants four seconds: renewed after two.
    let s = server(gw, Speaks::Pcp, 4).await;
    let m = PortMap::request_from(gw, 7879).await.expect("mapped");
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while s.requests().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", s.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.remove().await;
    let got = s.requests();
    // Each renewal asks for the lifetime granted, for the same ports.
    assert!(
        got[1..]
            .iter()
            .take_while(|r| r.lifetime > 0)
            .all(|r| asked(r) == ("PCP", 7879, 7879, 4)),
        "{got:?}"
    );
    assert_eq!(
        got.last().map(|r| r.lifetime),
        Some(0),
        "deleted at the end"
    );
}

#[tokio::test]
async fn a_upnp_router_forwards_the_port_when_pcp_and_nat_pmp_go_unanswered() {
    use anonmirror_testnet::portmap::{IgdServer, SSDP_PORT};
    let gw = Ipv4Addr::new(127, 0, 0, 55);
    let igd = IgdServer::start(gw, false, Box::new(|_, _, _| {}))
        .await
        .expect("IGD");
    let ssdp = [std::net::SocketAddr::new(gw.into(), SSDP_PORT)];
    let m = PortMap::request_via(gw, &ssdp, 7879).await.expect("mapped");
    assert_eq!((m.protocol, m.external_port), (Protocol::Upnp, 7879));
    m.remove().await;
    let got = igd.requests();
    let got: Vec<_> = got.iter().map(asked).collect();
    assert_eq!(got, [("UPnP", 7879, 7879, 3600), ("UPnP", 0, 7879, 0)]);
}

#[tokio::test]
async fn a_upnp_router_that_grants_only_permanent_forwards_gets_one_removed_at_the_end() {
    use anonmirror_testnet::portmap::{IgdServer, SSDP_PORT};
    let gw = Ipv4Addr::new(127, 0, 0, 56);
    let igd = IgdServer::start(gw, true, Box::new(|_, _, _| {}))
        .await
        .expect("IGD");
    let ssdp = [std::net::SocketAddr::new(gw.into(), SSDP_PORT)];
    let m = PortMap::request_via(gw, &ssdp, 7879).await.expect("mapped");
    m.remove().await;
    let got = igd.requests();
    let got: Vec<_> = got.iter().map(asked).collect();
    assert_eq!(
        got,
        [
            ("UPnP", 7879, 7879, 3600),
            ("UPnP", 7879, 7879, 0),
            ("UPnP", 0, 7879, 0)
        ],
        "refused an hour (725), granted as permanent, deleted at the end"
    );
}
