//! Tor mode on a private Tor network: 3 authorities, 2 middles, 2 exits,
//! all C tor, inside a network namespace this test process makes
//! (anonmirror-testnet), shared by every test of this binary.
//!
//! Peers listen on 10.77.0.1, a non-loopback address that exists only in
//! the namespace; the relays are on 127.0.0.1. Every path a node takes in
//! Tor mode is exercised for real: arti through an exit, a Tor daemon's
//! SOCKS port, arti-hosted onion services for a volunteer and for the
//! rendezvous, a Tor daemon's onion service (through its control port)
//! for a volunteer.

mod daemon;
mod no_leaks;
mod paths;
mod rendezvous;
mod support;
