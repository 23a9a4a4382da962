use super::*;
use proptest::prelude::*;

fn ann() -> AnnouncementWire {
    AnnouncementWire {
        contact: ContactWire::from(SocketAddr::from(([192, 0, 2, 7], 7879))),
        key: PeerKey([3; 32]),
        max_clients: 8,
        upload_rate: 2 << 20,
        region: Some("eu".into()),
        snapshots: vec![("arch-core".into(), 7), ("debian".into(), 300)],
        filter: vec![1, 2, 3],
    }
}

/// Known answers: the module docs' layout, byte for byte.
#[test]
fn known_answers() {
    assert_eq!(Up::Keys.encode().expect("enc"), [0x01]);
    assert_eq!(
        Up::Pong { nonce: 300 }.encode().expect("enc"),
        [0x04, 0xac, 0x02]
    );
    assert_eq!(Down::Ack.encode().expect("enc"), [0x09]);
    assert_eq!(
        Down::Refused(Refusal::TokenSpent).encode().expect("enc"),
        [0x0a, 0x07]
    );
    let stamp = Stamp {
        time: 1,
        random: [0xaa; 16],
        counter: 128,
    };
    let mut want = vec![0x00, 0x01];
    want.extend([0xaa; 16]);
    want.extend([0x80, 0x01]);
    assert_eq!(Up::Register(stamp).encode().expect("enc"), want);
    let c = ContactWire::from(SocketAddr::from(([10, 0, 0, 1], 300)));
    assert_eq!(
        postcard::to_allocvec(&c).expect("enc"),
        [0x00, 0x00, 10, 0, 0, 1, 0xac, 0x02]
    );
    let sc = Down::SnapshotChanged {
        repository: "ab".into(),
        version: 2,
    };
    assert_eq!(sc.encode().expect("enc"), [0x05, 0x02, b'a', b'b', 0x02]);
}

/// The largest session opening the bounds allow still fits one Noise
/// message: a filter at its limit is never refused for its size.
#[test]
fn the_largest_opening_fits_one_message() {
    let a = AnnouncementWire {
        contact: ContactWire::Onion {
            host: format!("{}.onion", "a".repeat(56)),
            port: 65535,
        },
        key: PeerKey([3; 32]),
        max_clients: u32::MAX,
        upload_rate: u64::MAX,
        region: Some("r".repeat(MAX_REGION)),
        snapshots: (0..MAX_REPOSITORIES)
            .map(|i| (format!("{i:02}{}", "n".repeat(MAX_NAME - 2)), u64::MAX))
            .collect(),
        filter: vec![0xff; MAX_FILTER],
    };
    let open = Up::OpenSession {
        token: ByteBuf::from(vec![0xff; TOKEN_LEN]),
        announcement: a,
    };
    let bytes = open.encode().expect("within every bound");
    assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
    assert_eq!(Up::decode(&bytes).expect("decodes"), open);
}

#[test]
fn bounds_are_enforced_both_ways() {
    let mut a = ann();
    a.snapshots.reverse();
    let open = |announcement| Up::OpenSession {
        token: ByteBuf::from(vec![0; TOKEN_LEN]),
        announcement,
    };
    assert!(open(a).encode().is_err(), "unsorted repositories");
    let mut a = ann();
    a.region = Some("Europe/Berlin".into());
    assert!(open(a).encode().is_err(), "region");
    let mut a = ann();
    a.filter = vec![0; MAX_FILTER + 1];
    assert!(open(a).encode().is_err(), "filter");
    let mut a = ann();
    a.contact = ContactWire::Onion {
        host: "short.onion".into(),
        port: 80,
    };
    assert!(open(a).encode().is_err(), "onion");
    let mut a = ann();
    a.contact = ContactWire::Onion {
        host: format!("{}.onion", "a".repeat(56)),
        port: 80,
    };
    assert!(open(a).encode().is_ok());
    // Encoded by hand past the encoder's checks: the decoder refuses too.
    let mut a = ann();
    a.max_clients = 0;
    let bytes = postcard::to_allocvec(&open(a)).expect("raw");
    assert!(Up::decode(&bytes).is_err());
    let bytes = postcard::to_allocvec(&Up::Lookup {
        item: ItemKey([0; 32]),
        size: 1,
        repository: "r".into(),
        version: 1,
        region: None,
        want: 0,
    })
    .expect("raw");
    assert!(Up::decode(&bytes).is_err());
}

#[test]
fn non_canonical_and_unknown_are_refused() {
    // Pong with nonce 0 as an over-long varint.
    assert!(Up::decode(&[0x04, 0x80, 0x00]).is_err());
    assert!(Up::decode(&[0x04, 0x00]).is_ok());
    assert_eq!(Up::decode(&[0x0a]).ok(), Some(Up::PopularityCounts));
    assert!(Up::decode(&[0x0b]).is_err(), "unknown tag");
    assert_eq!(Down::decode(&[0x0d]).ok(), Some(Down::NoCounts));
    assert!(Down::decode(&[0x0e]).is_err(), "unknown tag");
    assert!(Down::decode(&[0x0b, 0x00]).is_err(), "empty counts");
    assert_eq!(
        Down::decode(&[0x0a, 0x0d]).ok(),
        Some(Down::Refused(Refusal::ContactUnreached))
    );
    assert!(Down::decode(&[0x0a, 0x0e]).is_err(), "unknown refusal");
    assert!(Up::decode(&[0x0d]).is_err(), "unknown tag");
    assert!(Down::decode(&[0x0f]).is_err(), "unknown tag");
    // Reach: port 7879, a key, level open, epoch 5; port 0 and level 4
    // are refused.
    let mut reach = vec![0x0c, 0xc7, 0x3d];
    reach.extend_from_slice(&[9; 32]);
    reach.extend_from_slice(&[0x01, 0x05]);
    assert!(matches!(
        Up::decode(&reach),
        Ok(Up::Reach {
            port: 7879,
            level: 1,
            epoch: 5,
            ..
        })
    ));
    let mut port0 = vec![0x0c, 0x00];
    port0.extend_from_slice(&reach[3..]);
    assert!(Up::decode(&port0).is_err(), "port 0");
    let mut level4 = reach.clone();
    level4[35] = 4;
    assert!(Up::decode(&level4).is_err(), "level 4");
    // Reached: seen 192.0.2.1, timed out.
    assert_eq!(
        Down::decode(&[0x0e, 0x01, 0x00, 192, 0, 2, 1, 0x02]).ok(),
        Some(Down::Reached {
            seen: Some(Ip::V4([192, 0, 2, 1])),
            outcome: ReachOutcome::TimedOut
        })
    );
    assert!(
        Down::decode(&[0x0e, 0x00, 0x06]).is_err(),
        "unknown outcome"
    );
    assert!(Up::decode(&[]).is_err());
    assert!(Up::decode(&vec![0x01; MAX_MESSAGE + 1]).is_err());
}

fn arb_contact() -> impl Strategy<Value = ContactWire> {
    let announceable = |c: &ContactWire| {
        c.socket_addr()
            .is_none_or(|a| crate::msg::announceable(a.ip()))
    };
    prop_oneof![
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(b, port)| ContactWire::Tcp {
            ip: Ip::V4(b),
            port
        }),
        (any::<[u8; 16]>(), 1..=u16::MAX).prop_map(|(b, port)| ContactWire::Tcp {
            ip: Ip::V6(b),
            port
        }),
        ("[a-z2-7]{56}", 1..=u16::MAX).prop_map(|(h, port)| ContactWire::Onion {
            host: format!("{h}.onion"),
            port
        }),
    ]
    .prop_filter("an announceable address", announceable)
}

fn arb_region() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9-]{1,16}")
}

fn arb_announcement() -> impl Strategy<Value = AnnouncementWire> {
    (
        arb_contact(),
        any::<[u8; 32]>(),
        1..=u32::MAX,
        1..=u64::MAX,
        arb_region(),
        proptest::collection::btree_map("[a-z-]{1,64}", any::<u64>(), 0..=MAX_REPOSITORIES),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(contact, key, mc, up, region, snaps, filter)| AnnouncementWire {
                contact,
                key: PeerKey(key),
                max_clients: mc,
                upload_rate: up,
                region,
                snapshots: snaps.into_iter().collect(),
                filter,
            },
        )
}

fn bytes(n: usize) -> impl Strategy<Value = ByteBuf> {
    proptest::collection::vec(any::<u8>(), n).prop_map(ByteBuf::from)
}

fn arb_up() -> impl Strategy<Value = Up> {
    prop_oneof![
        (any::<u64>(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(time, random, counter)| {
            Up::Register(Stamp {
                time,
                random,
                counter,
            })
        }),
        Just(Up::Keys),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            proptest::collection::vec(bytes(TOKEN_REQUEST_LEN), 1..4)
        )
            .prop_map(|(credential, epoch, requests)| Up::Issue {
                credential,
                epoch,
                requests
            }),
        (bytes(TOKEN_LEN), arb_announcement()).prop_map(|(token, announcement)| {
            Up::OpenSession {
                token,
                announcement,
            }
        }),
        any::<u64>().prop_map(|nonce| Up::Pong { nonce }),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            "[a-z]{1,64}",
            any::<u64>(),
            arb_region(),
            1..=MAX_WANT
        )
            .prop_map(
                |(item, size, repository, version, region, want)| Up::Lookup {
                    item: ItemKey(item),
                    size,
                    repository,
                    version,
                    region,
                    want
                }
            ),
        arb_region().prop_map(|region| Up::Directory { region }),
        arb_region().prop_map(|region| Up::WatchDirectory { region }),
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(s, i, offset, len)| Up::Report {
                session: PeerKey(s),
                item: ItemKey(i),
                offset,
                len
            }),
        (any::<[u8; 32]>(), "[a-z]{1,64}", any::<u64>()).prop_map(
            |(secret, repository, version)| Up::Notify {
                secret,
                repository,
                version
            }
        ),
        (bytes(TOKEN_LEN), (1usize..500).prop_flat_map(bytes))
            .prop_map(|(token, report)| Up::Popularity { token, report }),
        Just(Up::PopularityCounts),
    ]
}

fn arb_down() -> impl Strategy<Value = Down> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(credential, expires)| Down::Registered {
            credential,
            expires
        }),
        proptest::collection::vec(
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..400))
                .prop_map(|(epoch, key)| PublishedKey { epoch, key }),
            0..=3
        )
        .prop_map(Down::Keys),
        (
            any::<u64>(),
            proptest::collection::vec(bytes(TOKEN_RESPONSE_LEN), 0..4)
        )
            .prop_map(|(epoch, responses)| Down::Issued { epoch, responses }),
        (any::<u32>(), any::<u32>()).prop_map(|(ping_secs, silence_secs)| {
            Down::SessionOpened {
                ping_secs,
                silence_secs,
            }
        }),
        any::<u64>().prop_map(|nonce| Down::Ping { nonce }),
        ("[a-z]{1,64}", any::<u64>()).prop_map(|(repository, version)| {
            Down::SnapshotChanged {
                repository,
                version,
            }
        }),
        proptest::collection::vec(
            (
                arb_contact(),
                any::<[u8; 32]>(),
                arb_region(),
                0u8..4,
                any::<u64>()
            )
                .prop_map(|(contact, k, region, level, epoch)| CandidateWire {
                    contact,
                    key: PeerKey(k),
                    region,
                    level,
                    epoch,
                }),
            0..=usize::from(MAX_WANT)
        )
        .prop_map(Down::Peers),
        (
            0..=MAX_DIRECTORY,
            proptest::collection::vec(any::<u8>(), 64)
        )
            .prop_map(|(total, s)| {
                let mut sig = [0u8; 64];
                sig.copy_from_slice(&s);
                Down::DirectoryHead {
                    total,
                    signature: Sig(sig),
                }
            }),
        (1usize..2000)
            .prop_flat_map(bytes)
            .prop_map(Down::DirectoryPart),
        Just(Down::Ack),
        (1..=MAX_COUNTS, proptest::collection::vec(any::<u8>(), 64)).prop_map(|(total, s)| {
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&s);
            Down::CountsHead {
                total,
                signature: Sig(sig),
            }
        }),
        (1usize..2000)
            .prop_flat_map(bytes)
            .prop_map(Down::CountsPart),
        Just(Down::NoCounts),
        prop_oneof![
            Just(Refusal::BadRequest),
            Just(Refusal::TokenSpent),
            Just(Refusal::ShuttingDown)
        ]
        .prop_map(Down::Refused),
    ]
}

proptest! {
    #[test]
    fn up_round_trips_and_every_cut_or_extension_fails(msg in arb_up(), extra in any::<u8>()) {
        let bytes = msg.encode().expect("valid messages encode");
        prop_assert_eq!(Up::decode(&bytes).expect("decodes"), msg);
        for cut in 0..bytes.len() {
            prop_assert!(Up::decode(&bytes[..cut]).is_err(), "prefix {} accepted", cut);
        }
        let mut long = bytes.clone();
        long.push(extra);
        prop_assert!(Up::decode(&long).is_err());
    }

    #[test]
    fn down_round_trips_and_every_cut_or_extension_fails(msg in arb_down(), extra in any::<u8>()) {
        let bytes = msg.encode().expect("valid messages encode");
        prop_assert_eq!(Down::decode(&bytes).expect("decodes"), msg);
        for cut in 0..bytes.len() {
            prop_assert!(Down::decode(&bytes[..cut]).is_err(), "prefix {} accepted", cut);
        }
        let mut long = bytes.clone();
        long.push(extra);
        prop_assert!(Down::decode(&long).is_err());
    }

    #[test]
    fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Up::decode(&input);
        let _ = Down::decode(&input);
    }
}

/// The one conversion between the wire contact and the domain one: an
/// address and an onion service go both ways unchanged; a name has no wire
/// form.
#[test]
fn contacts_convert_to_and_from_the_domain_type() {
    let onion = format!("{}.onion", "a".repeat(56));
    for wire in [
        ContactWire::from(SocketAddr::from(([192, 0, 2, 7], 7879))),
        ContactWire::from(SocketAddr::from((
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            443,
        ))),
        ContactWire::Onion {
            host: onion.clone(),
            port: 80,
        },
    ] {
        let domain = Contact::from(wire.clone());
        assert_eq!(ContactWire::try_from(domain).expect("announceable"), wire);
    }
    assert_eq!(
        Contact::from(ContactWire::from(SocketAddr::from(([192, 0, 2, 7], 7879)))),
        Contact::Tcp(SocketAddr::from(([192, 0, 2, 7], 7879)))
    );
    let name = Contact::Host {
        host: "rendezvous.example.org".into(),
        port: 443,
    };
    assert!(matches!(
        ContactWire::try_from(name),
        Err(Error::NameNotAnnounceable)
    ));
}
