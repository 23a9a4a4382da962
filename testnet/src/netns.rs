//! One private network namespace for the whole test process.
//!
//! A new network namespace has nothing but a loopback interface (brought
//! up here) and whatever addresses a test adds with
//! [`Namespace::add_address`]: no route leads out of it, so a test inside
//! it cannot send a packet off the machine, and ports there are free of
//! every other program on the machine.
//!
//! Network namespaces belong to threads, not processes. The namespace is
//! created by a short-lived thread of its own, which keeps a handle to it
//! (an open `/proc/thread-self/ns/net`, held for the life of the process);
//! a thread joins it with [`Namespace::enter`]. Threads and child processes
//! created by a thread after it entered are inside too; those created
//! before are not. So a test enters first, then builds its tokio runtime
//! and spawns processes. The process's other threads (the test harness's
//! main thread, other tests) stay where they were.
//!
//! Creating a network namespace needs root or `CAP_SYS_ADMIN`; entering it
//! needs `CAP_SYS_ADMIN` too.
//!
//! [`NetNs`] is the primitive (one anonymous namespace, held by a file
//! descriptor, gone when the last holder and the last process inside are);
//! [`Namespace`] is the one the Tor tests share, and the testbed
//! ([`crate::testbed`]) makes one a host.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns, unshare};

use crate::process::{require_program, run};

/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The dummy interface [`Namespace::add_address`] puts addresses on.
const DUMMY: &str = "am0";

/// One anonymous network namespace: alive while this value (or a process
/// inside it) is, with its loopback interface up.
#[derive(Debug)]
pub struct NetNs {
    /// `/proc/thread-self/ns/net` of the thread that created it: what
    /// `setns` takes, and what keeps the namespace alive once that thread
    /// is gone.
    fd: File,
}

impl NetNs {
    /// Creates a namespace on a thread of its own, so the caller's thread
    /// stays where it is, and brings its loopback interface up.
    pub fn create() -> io::Result<NetNs> {
        let ip = require_program("ip")?;
        let fd = thread::scope(|s| {
            s.spawn(|| -> io::Result<File> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("unshare(CLONE_NEWNET) needs root or CAP_SYS_ADMIN: {e}"),
                    )
                })?;
                let fd = File::open("/proc/thread-self/ns/net").map_err(|e| {
                    io::Error::new(e.kind(), format!("open /proc/thread-self/ns/net: {e}"))
                })?;
                // `ip` runs as a child of this thread: inside the namespace.
                run(
                    Command::new(&ip).args(["link", "set", "lo", "up"]),
                    b"",
                    IP_TIMEOUT,
                )?;
                Ok(fd)
            })
            .join()
            .map_err(|_| io::Error::other("the namespace-creating thread panicked"))?
        })?;
        Ok(NetNs { fd })
    }

    /// Moves the calling thread into this namespace (`setns(2)`).
    ///
    /// Only this thread moves: threads and child processes it creates
    /// afterwards are inside, everything created before (including a
    /// tokio runtime's worker threads) stays outside.
    pub fn enter(&self) -> io::Result<()> {
        setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("setns(CLONE_NEWNET) needs CAP_SYS_ADMIN: {e}"),
            )
        })
    }

    /// Whether the calling thread is inside this namespace.
    pub fn is_entered(&self) -> io::Result<bool> {
        let ours = self.fd.metadata()?;
        let current = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(ours.dev() == current.dev() && ours.ino() == current.ino())
    }

    /// Runs `f` on a thread of its own inside this namespace and returns
    /// what it returns: sockets, devices and processes it creates are
    /// inside, and the caller's thread stays where it is.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("a thread inside the namespace panicked"))?
        })
    }

    /// Runs `ip ARGS` inside the namespace; the error names the command and
    /// carries what `ip` said.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        self.program("ip", args, b"").map(drop)
    }

    /// Runs `program ARGS` inside the namespace with `stdin`, to completion
    /// (at most 10 s), and returns its standard output.
    pub fn program(&self, program: &str, args: &[&str], stdin: &[u8]) -> io::Result<Vec<u8>> {
        let path = require_program(program)?;
        self.run(|| run(Command::new(&path).args(args), stdin, IP_TIMEOUT))
    }
}

/// A private network namespace; see the [module docs](self).
#[derive(Debug)]
pub struct Namespace {
    ns: NetNs,
    /// The device added addresses go on, chosen at the first
    /// [`Namespace::add_address`]: the dummy interface, or `lo` where the
    /// kernel has no dummy driver (containers often lack the module).
    device: Mutex<Option<&'static str>>,
}

impl Namespace {
    /// The process's namespace: the first call creates it, later calls
    /// return the same one (or the same failure).
    pub fn shared() -> io::Result<&'static Namespace> {
        static SHARED: OnceLock<Result<Namespace, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                NetNs::create()
                    .map(|ns| Namespace {
                        ns,
                        device: Mutex::new(None),
                    })
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))
    }

    /// Moves the calling thread into this namespace (`setns(2)`).
    ///
    /// Only this thread moves: threads and child processes it creates
    /// afterwards are inside, everything created before (including a
    /// tokio runtime's worker threads) stays outside. Enter before building
    /// a runtime or spawning a process.
    pub fn enter(&self) -> io::Result<()> {
        self.ns.enter()
    }

    /// Whether the calling thread is inside this namespace.
    pub fn is_entered(&self) -> io::Result<bool> {
        self.ns.is_entered()
    }

    /// Adds `cidr` (like `10.77.0.1/24`) to an interface inside the
    /// namespace, so a test has an address that is not loopback and still
    /// cannot be reached from, or lead to, anywhere outside.
    ///
    /// The address goes on a dummy interface (`am0`) where the kernel has
    /// the dummy driver, else on `lo`; either way it is a local address of
    /// the namespace only. Adding an address twice is not an error.
    pub fn add_address(&self, cidr: &str) -> io::Result<()> {
        let mut device = self
            .device
            .lock()
            .map_err(|_| io::Error::other("namespace device lock poisoned"))?;
        let dev = match *device {
            Some(dev) => dev,
            None if self.ns.ip(&["link", "add", DUMMY, "type", "dummy"]).is_ok() => {
                self.ns.ip(&["link", "set", DUMMY, "up"])?;
                DUMMY
            }
            None => "lo",
        };
        match self.ns.ip(&["addr", "add", cidr, "dev", dev]) {
            Ok(()) => {}
            // Added before (by another test of the same process).
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("add {cidr} in the namespace: {e}"),
                ));
            }
        }
        *device = Some(dev);
        Ok(())
    }
}
