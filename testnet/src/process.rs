//! Running helper programs (`ip`, `tor-gencert`, `tor --list-fingerprint`)
//! with a time limit, and reading the tail of a log for error messages.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often a wait polls a process or a file.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Where `program` is: on `PATH`, else in the sbin directories a non-root
/// `PATH` often lacks (`ip` lives in /usr/sbin).
pub fn program_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `program`'s path, or an error that says it is missing.
pub(crate) fn require_program(program: &str) -> io::Result<PathBuf> {
    program_path(program).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program} is not installed (scripts/system-packages lists it)"),
        )
    })
}

/// Runs `cmd` to completion with `stdin` written to it, killing it after
/// `timeout`. Ok only if it exited with status 0; the error names the
/// command and carries its stderr.
pub(crate) fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {what}: {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        // A program that exits without reading its input is judged by its
        // status below, not by the broken pipe.
        let _ = input.write_all(stdin);
    }
    // Readers on their own threads, so a chatty program cannot fill a pipe
    // and stall while this thread waits for it to exit.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out = thread::spawn(move || read_all(out.as_mut()));
    let err = thread::spawn(move || read_all(err.as_mut()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not finish within {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    Ok(out)
}

fn read_all(pipe: Option<&mut impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf);
    }
    buf
}

/// The last `lines` lines of the file at `path` (at most its last 64 KiB),
/// or a note that it could not be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    };
    read().unwrap_or_else(|e| format!("({} unreadable: {e})", path.display()))
}
