//! Where a swarm download's verified bytes go: a [`Sink`].

/// Where verified bytes go, in order.
pub trait Sink: Send {
    /// The next verified bytes of the item (a whole piece, handed over so
    /// that a sink can pass it on to another thread without a copy).
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()>;
    /// Forget everything written: the download restarts from byte 0. Sinks
    /// that cannot take back what they passed on return an error, which
    /// ends the download.
    fn reset(&mut self) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.extend_from_slice(&bytes);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// A sink writing to a file on a thread of its own (restarts truncate it).
///
/// Writing into the page cache costs about as much CPU as everything else
/// a download does; on its own thread it overlaps with decryption,
/// verification and the SHA-256 instead of following them.
#[derive(Debug)]
pub struct FileSink {
    tx: Option<std::sync::mpsc::SyncSender<FileCmd>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<std::fs::File>>>,
}

#[derive(Debug)]
pub(crate) enum FileCmd {
    Write(Vec<u8>),
    Reset,
}

impl FileSink {
    /// Write into `file`, from its start.
    pub fn new(file: std::fs::File) -> FileSink {
        // A few pieces of slack: enough to keep the writer busy, bounded so
        // a slow disk slows the download rather than filling memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<FileCmd>(8);
        let writer = std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut file = file;
            for cmd in rx {
                match cmd {
                    FileCmd::Write(bytes) => file.write_all(&bytes)?,
                    FileCmd::Reset => {
                        file.set_len(0)?;
                        file.seek(std::io::SeekFrom::Start(0))?;
                    }
                }
            }
            Ok(file)
        });
        FileSink {
            tx: Some(tx),
            writer: Some(writer),
        }
    }

    fn send(&mut self, cmd: FileCmd) -> std::io::Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(cmd).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The writer stopped: it failed; say why.
        match self.finish() {
            Err(e) => Err(e),
            Ok(_) => Err(std::io::Error::other("the file writer has stopped")),
        }
    }

    fn finish(&mut self) -> std::io::Result<std::fs::File> {
        self.tx = None;
        match self.writer.take() {
            Some(w) => w
                .join()
                .map_err(|_| std::io::Error::other("the file writer panicked"))?,
            None => Err(std::io::Error::other("the file writer has stopped")),
        }
    }

    /// Wait for every write, and hand back the file.
    pub fn into_file(mut self) -> std::io::Result<std::fs::File> {
        self.finish()
    }
}

impl Sink for FileSink {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.send(FileCmd::Write(bytes))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.send(FileCmd::Reset)
    }
}
