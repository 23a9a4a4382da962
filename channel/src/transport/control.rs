//! A Tor daemon's control port: the onion service a `tor-socks`
//! volunteer serves through, a fresh one per session.
//!
//! Just enough of Tor's control protocol (control-spec,
//! <https://spec.torproject.org/control-spec/>) for that:
//!
//! - `PROTOCOLINFO 1`, then `AUTHENTICATE` the way the daemon asks: with
//!   nothing (`NULL`); with `SAFECOOKIE`, preferred, where
//!   `AUTHCHALLENGE` carries a random client nonce and the daemon must
//!   prove it knows the cookie before this side proves it does, so
//!   something posing as the control port learns nothing it could replay;
//!   or with `COOKIE`, the cookie file's 32 bytes in hex. Password
//!   authentication (`HASHEDPASSWORD`) is not supported: the error says
//!   to turn on cookie authentication instead.
//! - `ADD_ONION NEW:ED25519-V3 Flags=DiscardPK
//!   Port=<virtual port>,127.0.0.1:<local port>`: a new service whose key
//!   Tor makes and forgets (`DiscardPK`: it is never sent here nor written
//!   anywhere), so each session's address is new and nothing links it to
//!   the last one. Without `Flags=Detach` the service belongs to the
//!   control connection and ends with it: a [`DaemonOnionListener`] holds
//!   the connection, and dropping the listener (or this process ending)
//!   removes the service; [`DaemonOnionListener::close`] also says
//!   `DEL_ONION`.
//!
//! # Wire format
//!
//! A command is one line of ASCII ending in CRLF. A reply is one or more
//! lines `<3-digit status><separator><text>` ending in CRLF, all with the
//! same status; the separator is `-` when more lines follow, ` ` on the
//! last line, and `+` when a data block follows: lines up to one holding
//! only `.`, a leading `.` doubled. Status 2xx is success, 4xx and 5xx an
//! error whose text is Tor's reason, 6xx an asynchronous event (never
//! asked for here; skipped). Values are `KEY=VALUE` or `KEY="..."` with
//! C-style escapes (`\"`, `\\`, `\n`, octal `\ooo`). Lines longer than
//! [`MAX_LINE`] bytes and replies longer than [`MAX_REPLY`] are errors,
//! and every exchange is bounded in time ([`EXCHANGE_TIMEOUT`]).
//!
//! The control port must be on this machine (the policy insists on a
//! loopback address or a Unix socket): the connection is plain text, and
//! whoever holds it runs the service.
//!
//! This module must never log, nor put in an error, the onion address or
//! the cookie: the address goes through [`Contact::redacted`], the
//! cookie nowhere but the `AUTHENTICATE` line.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub use anonmirror_privacy::ControlPort;

use super::{BoxStream, Contact, Listener, TcpTransport, TcpTransportListener};

/// The longest reply line accepted (a cookie file's path is the longest
/// thing Tor sends here).
pub const MAX_LINE: usize = 16 * 1024;
/// The longest reply accepted, all lines together.
pub const MAX_REPLY: usize = 64 * 1024;
/// How long connecting to the control port, or one command and its
/// reply, may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A control cookie's length (control-spec: 32 random bytes).
const COOKIE_LEN: usize = 32;
/// SAFECOOKIE's nonces are as long as the cookie.
const NONCE_LEN: usize = 32;
const SERVER_TO_CONTROLLER: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
const CONTROLLER_TO_SERVER: &[u8] = b"Tor safe cookie authentication controller-to-server hash";
/// What this user must do to read the cookie (or open the socket) on
/// Debian, said in errors.
const DEBIAN_HINT: &str = "on Debian, add this user to the debian-tor group";

/// An authenticated connection to a Tor daemon's control port.
pub struct ControlConn {
    io: BufReader<BoxStream>,
    /// The control port, for messages.
    at: String,
}

impl fmt::Debug for ControlConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConn")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// Whether the Tor daemon's control port at `at` answers and lets this
/// process in (what serving through it needs); the connection is closed
/// again.
pub async fn probe(at: &ControlPort) -> io::Result<()> {
    let mut c = ControlConn::connect(at).await?;
    // Authenticated is what counts; a failing QUIT changes nothing.
    let _ = c.quit().await;
    Ok(())
}

impl ControlConn {
    /// Connects to the control port at `at` and authenticates as the
    /// daemon asks (see the module docs).
    pub async fn connect(at: &ControlPort) -> io::Result<ControlConn> {
        let reach = |e: io::Error| {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                format!(" ({DEBIAN_HINT})")
            } else {
                String::new()
            };
            io::Error::new(
                e.kind(),
                format!("cannot reach the Tor daemon's control port {at}: {e}{hint}"),
            )
        };
        let connecting = async {
            Ok::<BoxStream, io::Error>(match at {
                ControlPort::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
                ControlPort::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            })
        };
        let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                reach(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection in {EXCHANGE_TIMEOUT:?}"),
                ))
            })?
            .map_err(reach)?;
        let mut c = ControlConn {
            io: BufReader::new(stream),
            at: at.to_string(),
        };
        c.authenticate().await?;
        Ok(c)
    }

    async fn authenticate(&mut self) -> io::Result<()> {
        let info = self.command("PROTOCOLINFO 1", "PROTOCOLINFO").await?;
        let auth = AuthInfo::from_reply(&info).map_err(|e| self.malformed("PROTOCOLINFO", &e))?;
        let method = auth.choose().map_err(|e| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the Tor daemon's control port {}: {e}", self.at),
            )
        })?;
        match method {
            Method::Null => {
                self.command("AUTHENTICATE", "authentication").await?;
            }
            Method::Cookie => {
                let cookie = read_cookie(auth.cookie_file()?)?;
                let line = format!("AUTHENTICATE {}", hex::encode(cookie));
                self.command(&line, "authentication").await?;
            }
            Method::SafeCookie => {
                let cookie = read_cookie(auth.cookie_file()?)?;
                self.safe_cookie(&cookie).await?;
            }
        }
        tracing::debug!(method = method.name(), "authenticated to the Tor daemon");
        Ok(())
    }

    /// SAFECOOKIE: the daemon proves it knows the cookie, then we do.
    async fn safe_cookie(&mut self, cookie: &[u8; COOKIE_LEN]) -> io::Result<()> {
        let mut client_nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut client_nonce)
            .map_err(|e| io::Error::other(format!("drawing a nonce: {e}")))?;
        let line = format!("AUTHCHALLENGE SAFECOOKIE {}", hex::encode(client_nonce));
        let reply = self.command(&line, "AUTHCHALLENGE").await?;
        let (server_hash, server_nonce) =
            challenge(&reply).map_err(|e| self.malformed("AUTHCHALLENGE", &e))?;
        let mut message = Vec::with_capacity(COOKIE_LEN + 2 * NONCE_LEN);
        message.extend_from_slice(cookie);
        message.extend_from_slice(&client_nonce);
        message.extend_from_slice(&server_nonce);
        let server_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SERVER_TO_CONTROLLER);
        if ring::hmac::verify(&server_key, &message, &server_hash).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the control port {} does not know the Tor daemon's cookie (its \
                     AUTHCHALLENGE answer is wrong): is it the Tor daemon?",
                    self.at
                ),
            ));
        }
        let client_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, CONTROLLER_TO_SERVER);
        let client_hash = ring::hmac::sign(&client_key, &message);
        let line = format!("AUTHENTICATE {}", hex::encode(client_hash.as_ref()));
        self.command(&line, "authentication").await?;
        Ok(())
    }

    /// Asks for a new onion service (a fresh key, discarded by Tor) whose
    /// streams to `virtual_port` go to `target`; returns its service ID
    /// (the address without `.onion`). It lives as long as this
    /// connection, or until [`ControlConn::del_onion`].
    pub async fn add_onion(&mut self, virtual_port: u16, target: SocketAddr) -> io::Result<String> {
        if virtual_port == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an onion service's port cannot be 0",
            ));
        }
        let line = format!("ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port={virtual_port},{target}");
        let reply = self.command(&line, "an onion service (ADD_ONION)").await?;
        let id = reply
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("ServiceID="))
            .ok_or_else(|| self.malformed("ADD_ONION", "no ServiceID"))?;
        if !is_v3_service_id(id) {
            return Err(self.malformed("ADD_ONION", "the ServiceID is not a v3 onion address"));
        }
        Ok(id.to_owned())
    }

    /// Removes the onion service `service_id`.
    pub async fn del_onion(&mut self, service_id: &str) -> io::Result<()> {
        self.command(
            &format!("DEL_ONION {service_id}"),
            "removing the onion service",
        )
        .await?;
        Ok(())
    }

    /// Ends the connection politely (the daemon then closes it).
    pub async fn quit(&mut self) -> io::Result<()> {
        self.command("QUIT", "QUIT").await?;
        Ok(())
    }

    /// Sends `line` and returns the reply when it is a success; `what`
    /// names the command in errors (never the line: it may hold the
    /// cookie).
    async fn command(&mut self, line: &str, what: &str) -> io::Result<Reply> {
        debug_assert!(!line.contains(['\r', '\n']), "one line");
        let exchange = async {
            let stream = self.io.get_mut();
            stream.write_all(format!("{line}\r\n").as_bytes()).await?;
            stream.flush().await?;
            self.read_reply().await
        };
        let reply = match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("the Tor daemon's control port {}, at {what}: {e}", self.at),
                ));
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the Tor daemon's control port {} did not answer {what} in \
                         {EXCHANGE_TIMEOUT:?}",
                        self.at
                    ),
                ));
            }
        };
        if !(200..300).contains(&reply.status) {
            return Err(self.refused(what, &reply));
        }
        Ok(reply)
    }

    /// The next reply that is not an asynchronous event.
    async fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            let mut parser = ReplyParser::default();
            let reply = loop {
                let line = self.read_line().await?;
                match parser.feed(&line) {
                    Ok(Some(reply)) => break reply,
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            };
            if !(600..700).contains(&reply.status) {
                return Ok(reply);
            }
        }
    }

    /// One line, without its CRLF (or bare LF).
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        let limit = (MAX_LINE + 2) as u64;
        let n = (&mut self.io)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        if line.pop() != Some(b'\n') {
            return Err(if n as u64 >= limit {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a reply line longer than {MAX_LINE} bytes"),
                )
            } else {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                )
            });
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    /// Waits until the daemon ends the connection, reading and dropping
    /// whatever it sends unasked (it is asked for no events, so nothing
    /// is expected); says why it ended. Cancel safe.
    async fn closed(&mut self) -> String {
        loop {
            match self.io.fill_buf().await {
                Ok([]) => return "the daemon closed it".into(),
                Ok(unasked) => {
                    let n = unasked.len();
                    self.io.consume(n);
                }
                Err(e) => return e.to_string(),
            }
        }
    }

    fn malformed(&self, what: &str, problem: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the Tor daemon's control port {} answered {what} oddly: {problem}",
                self.at
            ),
        )
    }

    fn refused(&self, what: &str, reply: &Reply) -> io::Error {
        let kind = match reply.status {
            515 => io::ErrorKind::PermissionDenied,
            510 | 512 | 513 | 552 => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        let reason = reply.lines.first().map_or(String::new(), |l| printable(l));
        io::Error::new(
            kind,
            format!(
                "the Tor daemon's control port {} refused {what}: {} {reason}",
                self.at, reply.status
            ),
        )
    }
}

/// Tor's words, safe to print: printable ASCII only, at most 200
/// characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

/// `<56 base32 characters>`: a v3 onion service ID.
fn is_v3_service_id(id: &str) -> bool {
    id.len() == 56
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// Reads a control cookie: exactly 32 bytes, or an error (so that a
/// fake control port naming some other file cannot have more than 32
/// bytes of it sent back in COOKIE authentication).
fn read_cookie(path: &Path) -> io::Result<[u8; COOKIE_LEN]> {
    use std::io::Read;
    let named = |e: io::Error| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            format!(" (this user must be able to read it: {DEBIAN_HINT})")
        } else {
            String::new()
        };
        io::Error::new(
            e.kind(),
            format!(
                "reading the Tor daemon's cookie file {}: {e}{hint}",
                path.display()
            ),
        )
    };
    let mut bytes = Vec::with_capacity(COOKIE_LEN + 1);
    std::fs::File::open(path)
        .and_then(|f| f.take(COOKIE_LEN as u64 + 1).read_to_end(&mut bytes))
        .map_err(named)?;
    bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the Tor daemon's cookie file {} is not {COOKIE_LEN} bytes long",
                path.display()
            ),
        )
    })
}

/// One reply: its status and each line's text (a data block joined to
/// its line by newlines).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    lines: Vec<String>,
}

/// Puts a reply together from its lines (no I/O).
#[derive(Debug, Default)]
struct ReplyParser {
    status: Option<u16>,
    lines: Vec<String>,
    size: usize,
    in_data: bool,
}

impl ReplyParser {
    /// Takes the next line (without CRLF); the reply once it is complete.
    fn feed(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
        self.size += line.len() + 2;
        if self.size > MAX_REPLY {
            return Err(format!("a reply longer than {MAX_REPLY} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "a reply that is not text".to_owned())?;
        if self.in_data {
            if text == "." {
                self.in_data = false;
            } else if let Some(last) = self.lines.last_mut() {
                last.push('\n');
                last.push_str(text.strip_prefix('.').unwrap_or(text));
            }
            return Ok(None);
        }
        let b = text.as_bytes();
        if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err("not a control-protocol reply (no status code)".into());
        }
        let status: u16 = text[..3]
            .parse()
            .map_err(|_| "not a control-protocol reply (no status code)".to_owned())?;
        if self.status.is_some_and(|s| s != status) {
            return Err("a reply whose status changes midway".into());
        }
        self.status = Some(status);
        self.lines.push(text[4..].to_owned());
        match b[3] {
            b'-' => Ok(None),
            b'+' => {
                self.in_data = true;
                Ok(None)
            }
            b' ' => {
                let lines = std::mem::take(self).lines;
                Ok(Some(Reply { status, lines }))
            }
            _ => Err("not a control-protocol reply (no separator after the status)".into()),
        }
    }
}

/// `KEY=VALUE` and `KEY="quoted"` pairs of a reply line, values
/// unescaped; words without `=` are skipped.
fn key_values(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != b' ' && b[i] != b'=' {
            i += 1;
        }
        let key = text[start..i].to_owned();
        if i >= b.len() || b[i] == b' ' {
            continue;
        }
        i += 1; // '='
        let mut value = Vec::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("{key}: a quoted string without its end")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        i += 1;
                        let Some(&c) = b.get(i) else {
                            return Err(format!("{key}: a quoted string without its end"));
                        };
                        if (b'0'..=b'7').contains(&c) {
                            // Up to three octal digits.
                            let mut n: u32 = 0;
                            let mut digits = 0;
                            while digits < 3 && b.get(i).is_some_and(|d| (b'0'..=b'7').contains(d))
                            {
                                n = n * 8 + u32::from(b[i] - b'0');
                                i += 1;
                                digits += 1;
                            }
                            value
                                .push(u8::try_from(n).map_err(|_| {
                                    format!("{key}: an octal escape beyond a byte")
                                })?);
                            continue;
                        }
                        value.push(match c {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            other => other,
                        });
                        i += 1;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && b[i] != b' ' {
                value.push(b[i]);
                i += 1;
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// What `PROTOCOLINFO` said about authentication.
#[derive(Debug, PartialEq, Eq)]
struct AuthInfo {
    methods: Vec<String>,
    cookie_file: Option<PathBuf>,
}

/// How to authenticate, in the order preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Null,
    SafeCookie,
    Cookie,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Null => "NULL",
            Method::SafeCookie => "SAFECOOKIE",
            Method::Cookie => "COOKIE",
        }
    }
}

impl AuthInfo {
    fn from_reply(reply: &Reply) -> Result<AuthInfo, String> {
        let line = reply
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("AUTH "))
            .ok_or("no AUTH line")?;
        let mut info = AuthInfo {
            methods: Vec::new(),
            cookie_file: None,
        };
        for (key, value) in key_values(line)? {
            match key.as_str() {
                "METHODS" => {
                    info.methods = String::from_utf8_lossy(&value)
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "COOKIEFILE" => {
                    use std::os::unix::ffi::OsStringExt;
                    info.cookie_file = Some(PathBuf::from(std::ffi::OsString::from_vec(value)));
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// The method to use: none when none is needed, SAFECOOKIE over
    /// COOKIE.
    fn choose(&self) -> Result<Method, String> {
        let offers = |m: &str| self.methods.iter().any(|o| o == m);
        if offers("NULL") {
            Ok(Method::Null)
        } else if offers("SAFECOOKIE") {
            Ok(Method::SafeCookie)
        } else if offers("COOKIE") {
            Ok(Method::Cookie)
        } else if offers("HASHEDPASSWORD") {
            Err(
                "it asks for a password (HashedControlPassword), which anonmirror does not \
                 support: set `CookieAuthentication 1` in the daemon's torrc and let this \
                 user read the cookie file"
                    .into(),
            )
        } else {
            Err(format!(
                "it offers no authentication anonmirror supports (it offers: {}); set \
                 `CookieAuthentication 1` in the daemon's torrc",
                printable(&self.methods.join(","))
            ))
        }
    }

    fn cookie_file(&self) -> io::Result<&Path> {
        self.cookie_file.as_deref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the Tor daemon offers cookie authentication without naming its cookie file",
            )
        })
    }
}

/// SERVERHASH and SERVERNONCE of an `AUTHCHALLENGE` reply.
fn challenge(reply: &Reply) -> Result<([u8; 32], [u8; NONCE_LEN]), String> {
    let line = reply
        .lines
        .first()
        .and_then(|l| l.strip_prefix("AUTHCHALLENGE "))
        .ok_or("not an AUTHCHALLENGE reply")?;
    let pairs = key_values(line)?;
    let field = |name: &str| -> Result<[u8; 32], String> {
        let (_, value) = pairs
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| format!("no {name}"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(value, &mut out)
            .map_err(|_| format!("{name} is not 32 bytes of hex"))?;
        Ok(out)
    };
    Ok((field("SERVERHASH")?, field("SERVERNONCE")?))
}

/// The streams of an onion service a Tor daemon hosts for this process
/// (`ADD_ONION`), to a TCP listener on 127.0.0.1 that only the daemon
/// is told of. The service lives as long as this (see the module docs).
pub struct DaemonOnionListener {
    listener: TcpTransportListener,
    contact: Contact,
    service_id: String,
    control: ControlConn,
    /// The control connection ended: the service is gone (the daemon
    /// stopped or restarted), said once by [`Listener::accept`].
    control_lost: bool,
}

impl fmt::Debug for DaemonOnionListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonOnionListener")
            .field("contact", &self.contact.redacted())
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl DaemonOnionListener {
    /// Listens on 127.0.0.1 (a free port) and asks the Tor daemon at
    /// `control` for a new onion service (a fresh address) whose virtual
    /// port `port` leads there.
    pub async fn launch(control: &ControlPort, port: u16) -> io::Result<DaemonOnionListener> {
        let listener = TcpTransport
            .listen(&Contact::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
            .await?;
        let Contact::Tcp(target) = listener.local_contact()? else {
            return Err(io::Error::other("a TCP listener without a socket address"));
        };
        let mut control = ControlConn::connect(control).await?;
        let service_id = control.add_onion(port, target).await?;
        let contact = Contact::Onion {
            host: format!("{service_id}.onion"),
            port,
        };
        tracing::info!("onion service of the Tor daemon added");
        tracing::debug!(contact = %contact.redacted(), "onion service address");
        Ok(DaemonOnionListener {
            listener,
            contact,
            service_id,
            control,
            control_lost: false,
        })
    }

    /// Removes the onion service (`DEL_ONION`) and closes the control
    /// connection. Dropping the listener removes it too, as the
    /// connection closes.
    pub async fn close(mut self) -> io::Result<()> {
        if self.control_lost {
            return Ok(());
        }
        self.control.del_onion(&self.service_id).await?;
        self.control.quit().await
    }
}

impl Listener for DaemonOnionListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, Option<Contact>)> {
        if !self.control_lost {
            let lost = tokio::select! {
                accepted = self.listener.accept() => {
                    // An onion service never learns who connects: that is
                    // the point (the remote address is the daemon's).
                    return accepted.map(|(s, _)| (s, None));
                }
                why = self.control.closed() => why,
            };
            self.control_lost = true;
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "the connection to the Tor daemon's control port ended ({lost}): this \
                     session's onion service is gone"
                ),
            ));
        }
        let (s, _) = self.listener.accept().await?;
        Ok((s, None))
    }

    fn local_contact(&self) -> io::Result<Contact> {
        Ok(self.contact.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx";

    /// What a fake control port does after a command line.
    enum Act {
        /// Sends this (CRLFs included) and reads on.
        Say(String),
        /// Sends this, then hangs up.
        SayAndHangUp(String),
        /// Says nothing and reads on.
        Silent,
    }

    type Script = Box<dyn FnMut(&str) -> Act + Send>;

    /// Serves one control connection on `stream` by `script`; returns the
    /// command lines it got.
    async fn run_fake(stream: BoxStream, mut script: Script) -> Vec<String> {
        let mut io = BufReader::new(stream);
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let act = script(&line);
            seen.push(line);
            match act {
                Act::Say(reply) => {
                    if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return seen;
                    }
                }
                Act::SayAndHangUp(reply) => {
                    let _ = io.get_mut().write_all(reply.as_bytes()).await;
                    return seen;
                }
                Act::Silent => {}
            }
        }
    }

    /// A fake control port on 127.0.0.1 for one connection.
    async fn fake(script: Script) -> (ControlPort, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let at = ControlPort::Tcp(l.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            run_fake(Box::new(s), script).await
        });
        (at, task)
    }

    /// `path` as a control-protocol quoted string.
    fn quoted(path: &Path) -> String {
        let mut q = String::from("\"");
        for c in path.to_str().expect("UTF-8").chars() {
            match c {
                '"' | '\\' => {
                    q.push('\\');
                    q.push(c);
                }
                c => q.push(c),
            }
        }
        q.push('"');
        q
    }

    fn protocolinfo(methods: &str, cookie_file: Option<&Path>) -> String {
        let file = cookie_file
            .map(|p| format!(" COOKIEFILE={}", quoted(p)))
            .unwrap_or_default();
        format!(
            "250-PROTOCOLINFO 1\r\n250-AUTH METHODS={methods}{file}\r\n\
             250-VERSION Tor=\"0.4.9.11\"\r\n250 OK\r\n"
        )
    }

    fn hmac(key: &[u8], cookie: &[u8], client: &[u8], server: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let mut m = cookie.to_vec();
        m.extend_from_slice(client);
        m.extend_from_slice(server);
        hex::encode_upper(ring::hmac::sign(&key, &m).as_ref())
    }

    /// A control port that behaves like Tor's: offers `methods` (with
    /// `cookie` in a file, when given), checks authentication, and hosts
    /// onion services. Given a cookie file that holds another cookie than
    /// `cookie`, it is an impostor that cannot answer SAFECOOKIE's
    /// challenge.
    fn tor_like(methods: &'static str, cookie: Option<(PathBuf, [u8; 32])>) -> Script {
        let mut client_nonce = Vec::new();
        let server_nonce = [7u8; 32];
        let mut authenticated = false;
        Box::new(move |line: &str| {
            let cookie_bytes = cookie.as_ref().map(|(_, c)| c.to_vec()).unwrap_or_default();
            let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
            match cmd {
                "PROTOCOLINFO" => Act::Say(protocolinfo(
                    methods,
                    cookie.as_ref().map(|(p, _)| p.as_path()),
                )),
                "AUTHCHALLENGE" => {
                    let nonce = arg.strip_prefix("SAFECOOKIE ").unwrap_or_default();
                    client_nonce = hex::decode(nonce).unwrap_or_default();
                    if client_nonce.len() != 32 {
                        return Act::Say("513 Invalid base16 client nonce\r\n".into());
                    }
                    Act::Say(format!(
                        "250 AUTHCHALLENGE SERVERHASH={} SERVERNONCE={}\r\n",
                        hmac(
                            SERVER_TO_CONTROLLER,
                            &cookie_bytes,
                            &client_nonce,
                            &server_nonce
                        ),
                        hex::encode_upper(server_nonce)
                    ))
                }
                "AUTHENTICATE" => {
                    let want = if methods.contains("NULL") {
                        String::new()
                    } else if methods.contains("SAFECOOKIE") {
                        hmac(
                            CONTROLLER_TO_SERVER,
                            &cookie_bytes,
                            &client_nonce,
                            &server_nonce,
                        )
                    } else {
                        hex::encode(&cookie_bytes)
                    };
                    if arg.eq_ignore_ascii_case(&want) {
                        authenticated = true;
                        Act::Say("250 OK\r\n".into())
                    } else {
                        Act::SayAndHangUp("515 Authentication failed: Wrong cookie.\r\n".into())
                    }
                }
                _ if !authenticated => Act::SayAndHangUp("514 Authentication required.\r\n".into()),
                "ADD_ONION" => Act::Say(format!("250-ServiceID={ID}\r\n250 OK\r\n")),
                "DEL_ONION" if arg == ID => Act::Say("250 OK\r\n".into()),
                "DEL_ONION" => Act::Say("552 Unknown Onion Service id\r\n".into()),
                "QUIT" => Act::SayAndHangUp("250 closing connection\r\n".into()),
                _ => Act::Say("510 Unrecognized command\r\n".into()),
            }
        })
    }

    /// A cookie file in `dir` (under a name that needs quoting).
    fn cookie_in(dir: &Path) -> (PathBuf, [u8; 32]) {
        let sub = dir.join("a \"quoted\" dir\\");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let path = sub.join("control_auth_cookie");
        let cookie = [0x5au8; 32];
        std::fs::write(&path, cookie).expect("cookie");
        (path, cookie)
    }

    #[tokio::test]
    async fn null_authentication_and_a_service_removed_on_close() {
        let (at, seen) = fake(tor_like("NULL", None)).await;
        let mut l = DaemonOnionListener::launch(&at, 7879)
            .await
            .expect("onion service");
        let contact = l.local_contact().expect("contact");
        assert_eq!(
            contact,
            Contact::Onion {
                host: format!("{ID}.onion"),
                port: 7879
            }
        );
        assert!(!format!("{l:?}").contains(ID), "redacted: {l:?}");
        let Contact::Tcp(target) = l.listener.local_contact().expect("target") else {
            panic!("a TCP target");
        };
        assert!(target.ip().is_loopback());
        // What the daemon forwards arrives, from nobody known.
        let (client, accepted) = tokio::join!(TcpStream::connect(target), l.accept());
        let mut client = client.expect("connect");
        let (mut server, from) = accepted.expect("accept");
        assert_eq!(from, None, "an onion service never knows who connects");
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        l.close().await.expect("close");
        assert_eq!(
            seen.await.expect("fake"),
            [
                "PROTOCOLINFO 1".to_owned(),
                "AUTHENTICATE".to_owned(),
                format!("ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=7879,{target}"),
                format!("DEL_ONION {ID}"),
                "QUIT".to_owned(),
            ]
        );
    }

    #[tokio::test]
    async fn a_unix_control_socket_works_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control");
        let l = tokio::net::UnixListener::bind(&path).expect("bind");
        let seen = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            run_fake(Box::new(s), tor_like("NULL", None)).await
        });
        probe(&ControlPort::Unix(path)).await.expect("probe");
        assert_eq!(
            seen.await.expect("fake"),
            ["PROTOCOLINFO 1", "AUTHENTICATE", "QUIT"]
        );
    }

    #[tokio::test]
    async fn cookie_authentication_sends_the_cookie_file_in_hex() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, cookie) = cookie_in(dir.path());
        let (at, seen) = fake(tor_like("COOKIE,HASHEDPASSWORD", Some((path, cookie)))).await;
        probe(&at).await.expect("probe");
        let seen = seen.await.expect("fake");
        assert_eq!(seen[1], format!("AUTHENTICATE {}", hex::encode(cookie)));
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[tokio::test]
    async fn safecookie_is_preferred_and_the_daemon_proves_itself_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, cookie) = cookie_in(dir.path());
        let (at, seen) = fake(tor_like(
            "COOKIE,SAFECOOKIE,HASHEDPASSWORD",
            Some((path.clone(), cookie)),
        ))
        .await;
        let mut c = ControlConn::connect(&at).await.expect("authenticated");
        let target = SocketAddr::from(([127, 0, 0, 1], 4321));
        assert_eq!(c.add_onion(80, target).await.expect("service"), ID);
        drop(c);
        let seen = seen.await.expect("fake");
        let nonce = seen[1]
            .strip_prefix("AUTHCHALLENGE SAFECOOKIE ")
            .expect("a challenge");
        assert_eq!(nonce.len(), 64, "32 bytes of hex");
        assert!(seen[2].starts_with("AUTHENTICATE "), "{seen:?}");
        assert!(
            !seen.iter().any(|l| l.contains(&hex::encode(cookie))),
            "the cookie itself never crosses the wire: {seen:?}"
        );

        // Something that does not know the cookie gets no proof from us.
        let (at, seen) = fake(tor_like(
            "SAFECOOKIE",
            Some((dir.path().join("other"), [1u8; 32])),
        ))
        .await;
        std::fs::write(dir.path().join("other"), [2u8; 32]).expect("another cookie");
        let e = probe(&at).await.expect_err("an impostor");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("does not know"), "{e}");
        let seen = seen.await.expect("fake");
        assert!(
            !seen.iter().any(|l| l.starts_with("AUTHENTICATE")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn password_authentication_is_refused_saying_what_to_do() {
        let (at, _seen) = fake(tor_like("HASHEDPASSWORD", None)).await;
        let e = probe(&at).await.expect_err("password only");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("password"), "{e}");
        assert!(e.to_string().contains("CookieAuthentication 1"), "{e}");
        let (at, _seen) = fake(tor_like("FANCY", None)).await;
        let e = probe(&at).await.expect_err("unknown method");
        assert!(e.to_string().contains("offers: FANCY"), "{e}");
    }

    #[tokio::test]
    async fn cookie_files_are_read_with_care() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let (at, _seen) = fake(tor_like("COOKIE", Some((missing, [0; 32])))).await;
        let e = probe(&at).await.expect_err("no cookie");
        assert!(e.to_string().contains("cookie file"), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        // A file of another length is not a cookie, and is not sent.
        let long = dir.path().join("long");
        std::fs::write(&long, [3u8; 64]).expect("write");
        let (at, seen) = fake(Box::new(move |line: &str| {
            Act::Say(match line {
                "PROTOCOLINFO 1" => protocolinfo("COOKIE", Some(&long)),
                _ => "250 OK\r\n".into(),
            })
        }))
        .await;
        let e = probe(&at).await.expect_err("not a cookie");
        assert!(e.to_string().contains("not 32 bytes"), "{e}");
        assert_eq!(seen.await.expect("fake"), ["PROTOCOLINFO 1"]);
        let (at, _seen) = fake(Box::new(|_: &str| Act::Say(protocolinfo("COOKIE", None)))).await;
        let e = probe(&at).await.expect_err("no cookie file named");
        assert!(e.to_string().contains("without naming"), "{e}");
    }

    #[tokio::test]
    async fn error_replies_carry_tors_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, cookie) = cookie_in(dir.path());
        let (at, _seen) = fake(Box::new(move |line: &str| {
            Act::Say(match line {
                "PROTOCOLINFO 1" => protocolinfo("COOKIE", Some(&path)),
                _ => "515 Authentication failed: Wrong length on authentication cookie.\r\n".into(),
            })
        }))
        .await;
        let e = probe(&at).await.expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let msg = e.to_string();
        assert!(msg.contains("refused authentication: 515"), "{msg}");
        assert!(
            msg.contains("Wrong length on authentication cookie"),
            "{msg}"
        );
        assert!(!msg.contains(&hex::encode(cookie)), "no cookie: {msg}");

        let (at, _seen) = fake(Box::new(|line: &str| {
            Act::Say(match line.split(' ').next() {
                Some("PROTOCOLINFO") => protocolinfo("NULL", None),
                Some("AUTHENTICATE") => "250 OK\r\n".into(),
                _ => "512 Invalid VIRTPORT/TARGET\r\n".into(),
            })
        }))
        .await;
        let mut c = ControlConn::connect(&at).await.expect("connected");
        let e = c
            .add_onion(7879, SocketAddr::from(([127, 0, 0, 1], 1)))
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("512 Invalid VIRTPORT/TARGET"), "{e}");
        let e = c
            .add_onion(0, SocketAddr::from(([127, 0, 0, 1], 1)))
            .await
            .expect_err("port 0");
        assert!(e.to_string().contains("cannot be 0"), "{e}");
    }

    /// A control port that answers PROTOCOLINFO with `reply`.
    async fn answering(reply: &'static str) -> io::Error {
        let (at, _seen) = fake(Box::new(move |_: &str| Act::Say(reply.into()))).await;
        probe(&at).await.expect_err("malformed")
    }

    #[tokio::test]
    async fn malformed_replies_are_errors() {
        for (reply, says) in [
            ("hello there\r\n", "no status code"),
            ("25\r\n", "no status code"),
            ("250-PROTOCOLINFO 1\r\n251 OK\r\n", "changes midway"),
            ("250*PROTOCOLINFO 1\r\n", "no separator"),
            ("250 OK\r\n", "no AUTH line"),
            (
                "250-AUTH METHODS=COOKIE COOKIEFILE=\"/unterminated\r\n250 OK\r\n",
                "without its end",
            ),
        ] {
            let e = answering(reply).await;
            assert!(e.to_string().contains(says), "{reply:?}: {e}");
        }
        let (at, _seen) = fake(Box::new(|_: &str| {
            Act::SayAndHangUp("250-PROTOCOLINFO 1\r\n".into())
        }))
        .await;
        let e = probe(&at).await.expect_err("cut short");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("closed the connection"), "{e}");
        let e = answering(Box::leak(
            format!("250-{}\r\n250 OK\r\n", "x".repeat(MAX_LINE)).into_boxed_str(),
        ))
        .await;
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = answering(Box::leak(
            "250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
                .repeat(MAX_REPLY / 40)
                .into_boxed_str(),
        ))
        .await;
        assert!(e.to_string().contains("reply longer than"), "{e}");

        for (reply, says) in [
            ("250 OK\r\n", "no ServiceID"),
            ("250-ServiceID=tooshort\r\n250 OK\r\n", "not a v3 onion"),
        ] {
            let (at, _seen) = fake(Box::new(move |line: &str| {
                Act::Say(match line.split(' ').next() {
                    Some("PROTOCOLINFO") => protocolinfo("NULL", None),
                    Some("AUTHENTICATE") => "250 OK\r\n".into(),
                    _ => reply.into(),
                })
            }))
            .await;
            let e = DaemonOnionListener::launch(&at, 7879)
                .await
                .expect_err("no service");
            assert!(e.to_string().contains(says), "{reply:?}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_control_port_times_out() {
        let (at, _seen) = fake(Box::new(|_: &str| Act::Silent)).await;
        let e = probe(&at).await.expect_err("silent");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("did not answer PROTOCOLINFO"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_control_port_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed = l.local_addr().expect("addr");
        drop(l);
        let e = probe(&ControlPort::Tcp(closed))
            .await
            .expect_err("nothing there");
        assert!(e.to_string().contains("cannot reach"), "{e}");
        assert!(e.to_string().contains(&closed.to_string()), "{e}");
        let e = probe(&ControlPort::Unix("/nonexistent/control".into()))
            .await
            .expect_err("no socket");
        assert!(e.to_string().contains("/nonexistent/control"), "{e}");
    }

    #[tokio::test]
    async fn events_are_skipped_and_data_blocks_read() {
        let (at, seen) = fake(Box::new(|line: &str| {
            Act::Say(match line.split(' ').next() {
                Some("PROTOCOLINFO") => "650 CIRC 1 BUILT\r\n\
                     650+NS\r\nr relay\r\n.\r\n650 OK\r\n\
                     250+PROTOCOLINFO 1\r\n..dotted\r\n.\r\n\
                     250-AUTH METHODS=NULL\r\n250 OK\r\n"
                    .into(),
                _ => "250 OK\r\n".into(),
            })
        }))
        .await;
        probe(&at).await.expect("events skipped");
        assert_eq!(seen.await.expect("fake").len(), 3);
    }

    #[tokio::test]
    async fn losing_the_control_connection_is_said_once() {
        let (at, _seen) = fake(Box::new(|line: &str| match line.split(' ').next() {
            Some("PROTOCOLINFO") => Act::Say(protocolinfo("NULL", None)),
            Some("ADD_ONION") => Act::SayAndHangUp(format!("250-ServiceID={ID}\r\n250 OK\r\n")),
            _ => Act::Say("250 OK\r\n".into()),
        }))
        .await;
        let mut l = DaemonOnionListener::launch(&at, 7879)
            .await
            .expect("onion service");
        let e = l.accept().await.expect_err("the service is gone");
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        assert!(e.to_string().contains("onion service is gone"), "{e}");
        assert!(!e.to_string().contains(ID), "{e}");
        // Then it accepts as before (nobody will come), without spinning.
        let Contact::Tcp(target) = l.listener.local_contact().expect("target") else {
            panic!("a TCP target");
        };
        let (client, accepted) = tokio::join!(TcpStream::connect(target), l.accept());
        client.expect("connect");
        accepted.expect("accepted");
        l.close().await.expect("nothing to remove");
    }

    #[test]
    fn replies_are_put_together_line_by_line() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"250-ServiceID=x"), Ok(None));
        assert_eq!(p.feed(b"250+Data"), Ok(None));
        assert_eq!(p.feed(b"..one"), Ok(None));
        assert_eq!(p.feed(b"two"), Ok(None));
        assert_eq!(p.feed(b"."), Ok(None));
        assert_eq!(
            p.feed(b"250 OK"),
            Ok(Some(Reply {
                status: 250,
                lines: vec!["ServiceID=x".into(), "Data\n.one\ntwo".into(), "OK".into()],
            }))
        );
        assert_eq!(
            ReplyParser::default().feed(b"250-\xff"),
            Err("a reply that is not text".into())
        );
        // The parser starts over after a reply.
        assert_eq!(
            p.feed(b"552 Unknown"),
            Ok(Some(Reply {
                status: 552,
                lines: vec!["Unknown".into()]
            }))
        );
    }

    #[test]
    fn values_unquote_with_escapes() {
        let kv = key_values(
            r#"METHODS=COOKIE,SAFECOOKIE COOKIEFILE="/a \"b\"\\c\n\101\0" FLAG X="" Y=1"#,
        )
        .expect("parses");
        assert_eq!(
            kv,
            vec![
                ("METHODS".to_owned(), b"COOKIE,SAFECOOKIE".to_vec()),
                ("COOKIEFILE".to_owned(), b"/a \"b\"\\c\nA\0".to_vec()),
                ("X".to_owned(), Vec::new()),
                ("Y".to_owned(), b"1".to_vec()),
            ]
        );
        assert!(key_values("K=\"\\777\"").is_err(), "beyond a byte");
        assert!(key_values("K=\"open").is_err());
        assert!(key_values("K=\"open\\").is_err());
    }
}
