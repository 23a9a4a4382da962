//! A private Tor network on 127.0.0.1, inside the test [`Namespace`].
//!
//! [`TorNet::start`] brings up 3 directory authorities, 2 middle relays and
//! 2 exits (C tor, each its own process, each on ports of its own) and
//! returns once the microdescriptor consensus lists all 7 with the exits
//! flagged `Exit`: a client started before that may get a consensus
//! without an exit and fail with "could not construct a path". Bring-up
//! took 16–25 s here (key generation included), most of it waiting for the
//! first votes (a 15 s voting interval). [`TorNet::start_client`] adds C-tor clients, each with
//! a SOCKS port, a control port (cookie authentication) and any number of
//! onion services, and
//! [`TorNet::arti_config_toml`] writes arti's configuration for the network.
//!
//! The recipe and the reasons for each option are in
//! ../shared/TOR-TESTNET.md. In short:
//!
//! - every node trusts exactly these authorities (`DirAuthority` lines with
//!   their v3 identities from `tor-gencert` and relay fingerprints from
//!   `tor --list-fingerprint`), and runs with `TestingTorNetwork 1`, which
//!   shortens timers and allows private addresses;
//! - relays publish at once (`AssumeReachable 1`), and the authorities
//!   vote every node Guard, Exit-capable and HSDir, with measured
//!   bandwidths from a `V3BandwidthsFile` so no relay has zero weight;
//! - `ConsensusParams hsdir_interval=6`: C tor in testing mode uses an
//!   onion-service time period of 24 voting intervals (6 minutes), arti
//!   reads the period from this consensus parameter, and the two must
//!   agree for arti to find C tor's onion services and the other way round;
//! - exits accept every address and port (`ExitPolicy accept *:*`,
//!   `ExitPolicyRejectPrivate 0`): arti reads microdescriptors, whose
//!   policy summaries cannot express "127.0.0.0/8 only". The namespace is
//!   what keeps traffic local;
//! - only the authorities are directory caches (`DirCache 0` on the
//!   others): a relay cache lags a consensus behind at first, and a client
//!   that asked it for microdescriptors waited ~10 s more to bootstrap;
//! - exits resolve names against 127.0.0.1, where nothing answers: no DNS
//!   query leaves either.
//!
//! Every tor runs with `__OwningControllerProcess` set to this process, so
//! it exits by itself (within about 15 s) when this process is gone, even
//! when nothing dropped the [`TorNet`] — the network behind
//! [`TorNet::shared`] lives in a static that is never dropped.

mod arti;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Namespace;
use crate::process::{POLL, require_program, run, tail};

/// How long the network may take until the consensus lists every relay
/// (about 20–30 s when the machine is idle; CI machines are not always).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a C-tor client may take to bootstrap once the network is up
/// (a few seconds when idle).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long key generation (`tor-gencert`, `tor --list-fingerprint`) may
/// take per node.
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The voting interval, in seconds. At least 13 s: arti's onion-service
/// time period is at least 5 minutes, and C tor's is 24 intervals.
const VOTING_INTERVAL: u32 = 15;

/// How many lines of each log an error quotes.
const LOG_TAIL_LINES: usize = 8;

/// What a node does in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Authority,
    Middle,
    Exit,
}

/// The network's nodes, authorities first.
const NODES: [(&str, Role); 7] = [
    ("auth0", Role::Authority),
    ("auth1", Role::Authority),
    ("auth2", Role::Authority),
    ("middle0", Role::Middle),
    ("middle1", Role::Middle),
    ("exit0", Role::Exit),
    ("exit1", Role::Exit),
];

/// One tor relay (an authority is one too), its keys and its process.
#[derive(Debug)]
struct Node {
    nickname: &'static str,
    role: Role,
    data_dir: PathBuf,
    or_port: u16,
    /// Authorities only: where they serve directory documents over HTTP.
    dir_port: Option<u16>,
    /// The relay's RSA identity fingerprint, 40 hex digits.
    rsa_fingerprint: String,
    /// The relay's Ed25519 identity, unpadded base64 (as arti reads it).
    ed_identity: String,
    /// Authorities only: the v3 identity that signs their votes.
    v3ident: Option<String>,
}

/// A running private Tor network; see the [module docs](self). Dropping it
/// kills and reaps every tor process it started.
#[derive(Debug)]
pub struct TorNet {
    dir: PathBuf,
    tor: PathBuf,
    nodes: Vec<Node>,
    /// The relays' processes, in the order of `nodes`.
    children: Vec<Child>,
    /// What every torrc (relays' and clients') starts with.
    common_torrc: String,
    /// From [`TorNet::start`]'s call until the consensus listed every
    /// relay.
    bring_up: Duration,
}

/// A C-tor client of a [`TorNet`]: a SOCKS5 port, a control port and the
/// onion services it hosts. Dropping it kills and reaps its process.
#[derive(Debug)]
pub struct CTorClient {
    /// Its SOCKS5 port (with `ExtendedErrors`: onion-service failures get
    /// their own reply codes).
    pub socks: SocketAddr,
    /// Its control port, with cookie authentication (`CookieAuthentication
    /// 1`: the cookie is `control_auth_cookie` in its data directory, which
    /// `PROTOCOLINFO` names).
    pub control: SocketAddr,
    /// `<56 characters>.onion`, one per onion service asked for, in order.
    pub onions: Vec<String>,
    data_dir: PathBuf,
    child: Child,
}

impl TorNet {
    /// The network of this process, started on first use in a fresh
    /// directory under the system's temporary directory
    /// (`anonmirror-tornet-<pid>`; those of processes that are gone are
    /// removed first, those of live ones are kept for their logs).
    ///
    /// Enters the [`Namespace`] on the calling thread first (see
    /// [`Namespace::enter`]), so a test calls this before it builds a
    /// runtime or spawns anything. Every test of a test binary shares one
    /// network: bringing one up costs about 30 s.
    pub fn shared() -> io::Result<&'static TorNet> {
        static SHARED: OnceLock<Result<TorNet, String>> = OnceLock::new();
        Namespace::shared()?.enter()?;
        SHARED
            .get_or_init(|| {
                let tmp = std::env::temp_dir();
                remove_stale_dirs(&tmp);
                let dir = tmp.join(format!("{SHARED_PREFIX}{}", std::process::id()));
                TorNet::start(&dir).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))
    }

    /// Starts a network with its files in `dir` (created if missing; it
    /// must not hold an earlier network). The calling thread must be in
    /// the [`Namespace`] ([`Namespace::enter`]): every tor process is its
    /// child. Returns once the microdescriptor consensus lists every relay,
    /// or fails after [`START_TIMEOUT`] with the tail of every log.
    pub fn start(dir: &Path) -> io::Result<TorNet> {
        let started = Instant::now();
        require_namespace()?;
        let tor = require_program("tor")?;
        let gencert = require_program("tor-gencert")?;
        make_private_dir(dir)?;
        let dir = dir.canonicalize()?;

        let mut nodes = Vec::new();
        for (nickname, role) in NODES {
            let data_dir = dir.join(nickname);
            make_private_dir(&data_dir)?;
            nodes.push(Node {
                nickname,
                role,
                data_dir,
                or_port: next_port()?,
                dir_port: (role == Role::Authority).then(next_port).transpose()?,
                rsa_fingerprint: String::new(),
                ed_identity: String::new(),
                v3ident: None,
            });
        }

        // Keys, every node at once: RSA key generation is most of the time.
        thread::scope(|s| -> io::Result<()> {
            let jobs: Vec<_> = nodes
                .iter_mut()
                .map(|node| s.spawn(|| node.make_keys(&tor, &gencert)))
                .collect();
            for job in jobs {
                job.join()
                    .map_err(|_| io::Error::other("key generation panicked"))??;
            }
            Ok(())
        })?;

        let resolv_conf = dir.join("resolv.conf");
        // A nameserver nobody runs: exits' DNS lookups fail at once, locally.
        fs::write(&resolv_conf, "nameserver 127.0.0.1\n")?;
        let bandwidths = dir.join("bandwidths");
        fs::write(&bandwidths, bandwidth_file(&nodes))?;
        let common_torrc = common_torrc(&nodes, &resolv_conf);

        let mut net = TorNet {
            dir,
            tor,
            nodes,
            children: Vec::new(),
            common_torrc,
            bring_up: Duration::ZERO,
        };
        for i in 0..net.nodes.len() {
            let node = &net.nodes[i];
            let torrc = node.data_dir.join("torrc");
            fs::write(&torrc, net.relay_torrc(node, &bandwidths))?;
            let child = spawn_tor(&net.tor, &torrc, &node.data_dir)?;
            net.children.push(child);
        }
        // On failure `net` is dropped here, which kills what was started.
        net.wait_for_consensus(started + START_TIMEOUT)?;
        net.bring_up = started.elapsed();
        Ok(net)
    }

    /// Starts a C-tor client named `name` (its files go in
    /// `<dir>/clients/<name>`, so names must differ) with a SOCKS5 port and
    /// a control port on 127.0.0.1 and one onion service per
    /// `(virtual port, target)` entry, and waits until it has bootstrapped
    /// (at most [`CLIENT_TIMEOUT`]).
    ///
    /// The calling thread must be in the [`Namespace`]. An onion service's
    /// descriptor is published some seconds after bootstrap: connect to it
    /// with retries.
    pub fn start_client(
        &self,
        name: &str,
        onion_services: &[(u16, SocketAddr)],
    ) -> io::Result<CTorClient> {
        require_namespace()?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("client name {name:?}: use letters, digits and '-'"),
            ));
        }
        let clients = self.dir.join("clients");
        make_private_dir(&clients)?;
        let data_dir = clients.join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&data_dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", data_dir.display())))?;
        let socks = SocketAddr::from((Ipv4Addr::LOCALHOST, next_port()?));
        let control = SocketAddr::from((Ipv4Addr::LOCALHOST, next_port()?));

        let mut torrc = self.common_torrc.clone();
        let _ = writeln!(torrc, "Nickname {}", name.replace('-', ""));
        let _ = writeln!(torrc, "DataDirectory {}", data_dir.display());
        let _ = writeln!(torrc, "Log notice file {}", log_path(&data_dir).display());
        let _ = writeln!(torrc, "SocksPort {socks} ExtendedErrors");
        let _ = writeln!(torrc, "ControlPort {control}");
        let _ = writeln!(torrc, "CookieAuthentication 1");
        let mut hs_dirs = Vec::new();
        for (i, (virtual_port, target)) in onion_services.iter().enumerate() {
            let hs_dir = data_dir.join(format!("hs{i}"));
            let _ = writeln!(torrc, "HiddenServiceDir {}", hs_dir.display());
            let _ = writeln!(torrc, "HiddenServicePort {virtual_port} {target}");
            hs_dirs.push(hs_dir);
        }
        let torrc_path = data_dir.join("torrc");
        fs::write(&torrc_path, torrc)?;
        let child = spawn_tor(&self.tor, &torrc_path, &data_dir)?;
        let mut client = CTorClient {
            socks,
            control,
            onions: Vec::new(),
            data_dir,
            child,
        };
        client.wait_for_bootstrap(Instant::now() + CLIENT_TIMEOUT)?;
        for hs_dir in hs_dirs {
            let hostname = fs::read_to_string(hs_dir.join("hostname"))?;
            let onion = hostname.trim().to_owned();
            if onion.len() != 62 || !onion.ends_with(".onion") {
                return Err(io::Error::other(format!(
                    "{}: not a v3 onion address: {onion:?}",
                    hs_dir.display()
                )));
            }
            client.onions.push(onion);
        }
        Ok(client)
    }

    /// The directory holding the network's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every relay's notice log, for debugging a test.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| log_path(&n.data_dir)).collect()
    }

    /// How long [`TorNet::start`] took: key generation (a few seconds),
    /// then the wait for a consensus listing every relay (12–22 s,
    /// depending on where in the 15 s voting cycle the relays published).
    pub fn bring_up_time(&self) -> Duration {
        self.bring_up
    }

    /// The authorities' directory ports on 127.0.0.1 (HTTP; e.g.
    /// `/tor/status-vote/current/consensus-microdesc`).
    pub fn authority_dir_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter_map(|n| n.dir_port).collect()
    }

    /// A relay's torrc: the common part and what its role adds.
    fn relay_torrc(&self, node: &Node, bandwidths: &Path) -> String {
        let mut t = self.common_torrc.clone();
        let _ = writeln!(t, "Nickname {}", node.nickname);
        let _ = writeln!(t, "DataDirectory {}", node.data_dir.display());
        let _ = writeln!(t, "Log notice file {}", log_path(&node.data_dir).display());
        let _ = writeln!(t, "Address 127.0.0.1");
        let _ = writeln!(t, "ORPort 127.0.0.1:{}", node.or_port);
        let _ = writeln!(t, "SocksPort 0");
        let _ = writeln!(t, "ContactInfo {}@anonmirror.invalid", node.nickname);
        // Publish the descriptor at once instead of after a self-test.
        let _ = writeln!(t, "AssumeReachable 1");
        if node.role != Role::Authority {
            // Only the authorities serve directory documents: a relay
            // that caches them lags a consensus behind at first, and a
            // client that asks it for microdescriptors then waits ~10 s
            // for its next try.
            let _ = writeln!(t, "DirCache 0");
        }
        match node.role {
            Role::Authority => {
                let dir_port = node.dir_port.unwrap_or_default();
                let i = VOTING_INTERVAL;
                let _ = write!(
                    t,
                    "DirPort 127.0.0.1:{dir_port}\n\
                     AuthoritativeDirectory 1\n\
                     V3AuthoritativeDirectory 1\n\
                     TestingV3AuthInitialVotingInterval {i}\n\
                     TestingV3AuthInitialVoteDelay 3\n\
                     TestingV3AuthInitialDistDelay 3\n\
                     TestingV3AuthVotingStartOffset 0\n\
                     V3AuthVotingInterval {i}\n\
                     V3AuthVoteDelay 3\n\
                     V3AuthDistDelay 3\n\
                     ConsensusParams hsdir_interval={}\n\
                     V3BandwidthsFile {}\n\
                     AuthDirMaxServersPerAddr 0\n\
                     ExitPolicy reject *:*\n",
                    24 * i / 60,
                    bandwidths.display()
                );
            }
            Role::Middle => {
                let _ = writeln!(t, "ExitRelay 0\nExitPolicy reject *:*");
            }
            Role::Exit => {
                let _ = writeln!(
                    t,
                    "ExitRelay 1\n\
                     RefuseUnknownExits 0\n\
                     ExitPolicyRejectPrivate 0\n\
                     ExitPolicy accept *:*"
                );
            }
        }
        t
    }

    /// Polls the authorities until every one serves a microdescriptor
    /// consensus that lists every relay, with both exits flagged `Exit`.
    /// Every one: clients fetch from whichever they pick, and the
    /// authorities publish a new consensus at slightly different moments.
    fn wait_for_consensus(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            self.check_alive()?;
            let problems: Vec<String> = self
                .authority_dir_ports()
                .into_iter()
                .filter_map(|port| match fetch_consensus(port) {
                    Ok(consensus) => self
                        .missing_from(&consensus)
                        .map(|m| format!("127.0.0.1:{port}: {m}")),
                    Err(e) => Some(format!("127.0.0.1:{port}: {e}")),
                })
                .collect();
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the private Tor network was not up within {START_TIMEOUT:?} \
                         ({}); files in {}\n{}",
                        problems.join("; "),
                        self.dir.display(),
                        self.log_tails()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// What `consensus` lacks, or None when it lists every relay and both
    /// exits have the `Exit` flag.
    fn missing_from(&self, consensus: &str) -> Option<String> {
        let mut flags: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut current = None;
        for line in consensus.lines() {
            if let Some(r) = line.strip_prefix("r ") {
                current = r.split(' ').next();
                if let Some(nick) = current {
                    flags.insert(nick, Vec::new());
                }
            } else if let (Some(s), Some(nick)) = (line.strip_prefix("s "), current) {
                flags.insert(nick, s.split(' ').collect());
            }
        }
        let missing: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| match flags.get(n.nickname) {
                None => true,
                Some(f) => n.role == Role::Exit && !f.contains(&"Exit"),
            })
            .map(|n| n.nickname)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "the consensus lacks (or lacks the Exit flag for) {}",
                missing.join(", ")
            )
        })
    }

    /// An error if a relay's process has exited.
    fn check_alive(&mut self) -> io::Result<()> {
        for (node, child) in self.nodes.iter().zip(&mut self.children) {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "tor {} exited ({status}):\n{}",
                    node.nickname,
                    node_tail(&node.data_dir)
                )));
            }
        }
        Ok(())
    }

    /// The last lines of every relay's log, one block per relay.
    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.nickname, node_tail(&n.data_dir)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl CTorClient {
    /// The client's notice log.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.data_dir)
    }

    /// Waits for "Bootstrapped 100%" in the client's log.
    fn wait_for_bootstrap(&mut self, deadline: Instant) -> io::Result<()> {
        let log = self.log_path();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "tor client exited ({status}):\n{}",
                    node_tail(&self.data_dir)
                )));
            }
            if fs::read_to_string(&log).is_ok_and(|l| l.contains("Bootstrapped 100%")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "tor client in {} did not bootstrap within {CLIENT_TIMEOUT:?}:\n{}",
                        self.data_dir.display(),
                        node_tail(&self.data_dir)
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for CTorClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Creates the node's keys: the authority's v3 keys and certificate
    /// (`tor-gencert`), then the relay keys (`tor --list-fingerprint`),
    /// and reads the identities back.
    fn make_keys(&mut self, tor: &Path, gencert: &Path) -> io::Result<()> {
        if self.role == Role::Authority {
            let keys = self.data_dir.join("keys");
            make_private_dir(&keys)?;
            let dir_port = self.dir_port.unwrap_or_default();
            // An empty passphrase on standard input.
            run(
                Command::new(gencert)
                    .current_dir(&keys)
                    .args(["--create-identity-key", "--passphrase-fd", "0", "-m", "12"])
                    .arg("-a")
                    .arg(format!("127.0.0.1:{dir_port}"))
                    .args(["-i", "authority_identity_key"])
                    .args(["-s", "authority_signing_key"])
                    .args(["-c", "authority_certificate"]),
                b"\n",
                KEYGEN_TIMEOUT,
            )?;
            let cert = fs::read_to_string(keys.join("authority_certificate"))?;
            let v3ident = cert
                .lines()
                .find_map(|l| l.strip_prefix("fingerprint "))
                .map(|f| f.trim().to_owned())
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "{}: no fingerprint line in authority_certificate",
                        keys.display()
                    ))
                })?;
            self.v3ident = Some(v3ident);
        }

        let torrc = self.data_dir.join("torrc.keys");
        fs::write(
            &torrc,
            format!(
                "DataDirectory {}\nORPort 127.0.0.1:{}\nAddress 127.0.0.1\nNickname {}\n",
                self.data_dir.display(),
                self.or_port,
                self.nickname
            ),
        )?;
        run(
            Command::new(tor)
                .args(["--defaults-torrc", "/dev/null", "-f"])
                .arg(&torrc)
                .arg("--list-fingerprint"),
            b"",
            KEYGEN_TIMEOUT,
        )?;
        self.rsa_fingerprint = read_identity(&self.data_dir.join("fingerprint"))?;
        self.ed_identity = read_identity(&self.data_dir.join("fingerprint-ed25519"))?;
        Ok(())
    }

    /// The torrc line that makes every node trust this authority.
    fn dir_authority_line(&self) -> Option<String> {
        Some(format!(
            "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}",
            self.nickname,
            self.or_port,
            self.v3ident.as_ref()?,
            self.dir_port?,
            self.rsa_fingerprint
        ))
    }
}

/// The options every node and client shares: the authorities, testing
/// mode, and voting rules (see the module docs).
fn common_torrc(nodes: &[Node], resolv_conf: &Path) -> String {
    let mut t = String::from("# Written by anonmirror-testnet: a private test network.\n");
    for line in nodes.iter().filter_map(Node::dir_authority_line) {
        let _ = writeln!(t, "{line}");
    }
    let _ = write!(
        t,
        "TestingTorNetwork 1\n\
         __OwningControllerProcess {}\n\
         RunAsDaemon 0\n\
         SafeLogging 0\n\
         ShutdownWaitLength 0\n\
         PathsNeededToBuildCircuits 0.67\n\
         TestingDirAuthVoteExit *\n\
         TestingDirAuthVoteGuard *\n\
         TestingDirAuthVoteHSDir *\n\
         TestingMinExitFlagThreshold 0\n\
         V3AuthNIntervalsValid 2\n\
         ServerDNSResolvConfFile {}\n\
         ServerDNSDetectHijacking 0\n\
         ServerDNSTestAddresses 127.0.0.1\n",
        std::process::id(),
        resolv_conf.display()
    );
    t
}

/// A bandwidth file (version 1.0.0: a timestamp line, then one line per
/// relay) giving every relay the same measured bandwidth.
fn bandwidth_file(nodes: &[Node]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut f = format!("{now}\n");
    for node in nodes {
        let _ = writeln!(f, "node_id=${} bw=1000", node.rsa_fingerprint);
    }
    f
}

/// Starts `tor -f torrc`, its standard output and error in `stdout.log`
/// beside its log (tor reports torrc mistakes there, before its log is
/// open).
fn spawn_tor(tor: &Path, torrc: &Path, data_dir: &Path) -> io::Result<Child> {
    let out = fs::File::create(data_dir.join("stdout.log"))?;
    Command::new(tor)
        .args(["--defaults-torrc", "/dev/null", "-f"])
        .arg(torrc)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", tor.display())))
}

/// `GET /tor/status-vote/current/consensus-microdesc` from an authority.
fn fetch_consensus(dir_port: u16) -> io::Result<String> {
    let timeout = Duration::from_secs(5);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, dir_port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        b"GET /tor/status-vote/current/consensus-microdesc HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("malformed HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(io::Error::other(status.to_owned()));
    }
    Ok(body.to_owned())
}

/// The identity in a `fingerprint` or `fingerprint-ed25519` file
/// (`<nickname> <identity>`).
fn read_identity(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("{}: no identity in {text:?}", path.display())))
}

/// The notice log of the tor whose data directory is `data_dir`.
fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("notice.log")
}

/// The tail of a tor's notice log, and of its standard output when that
/// has anything (a torrc error ends up there).
fn node_tail(data_dir: &Path) -> String {
    let mut text = tail(&log_path(data_dir), LOG_TAIL_LINES);
    let stdout = data_dir.join("stdout.log");
    if fs::metadata(&stdout).is_ok_and(|m| m.len() > 0) {
        text.push_str("\n(stdout) ");
        text.push_str(&tail(&stdout, LOG_TAIL_LINES));
    }
    text
}

/// Creates `dir` with mode 0700 if it is missing (tor refuses data
/// directories others can read).
fn make_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("create {}: {e}", dir.display()),
        )),
    }
}

/// A port on 127.0.0.1 that is free in the namespace. Ports come from a
/// process-wide counter below the kernel's ephemeral range, so they never
/// collide with each other nor with servers that bind port 0; the bind
/// check skips any a test took explicitly.
fn next_port() -> io::Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(20_000);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        if port >= 32_000 {
            return Err(io::Error::other("no free port left below 32000"));
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
}

/// An error unless the calling thread is inside the test namespace: a tor
/// started outside would listen on the machine's real interfaces.
fn require_namespace() -> io::Result<()> {
    if Namespace::shared()?.is_entered()? {
        Ok(())
    } else {
        Err(io::Error::other(
            "the calling thread is outside the test namespace: call Namespace::enter first",
        ))
    }
}

/// The directory name prefix of [`TorNet::shared`]'s networks.
const SHARED_PREFIX: &str = "anonmirror-tornet-";

/// Removes `<tmp>/anonmirror-tornet-<pid>` directories whose process is
/// gone.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHARED_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
