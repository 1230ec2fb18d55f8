//! The host's file system.
//!
//! Reads and writes go to the page cache and are done inline: they cost microseconds, less
//! than handing them to a thread. `fdatasync` and directory syncs, which wait for the
//! device, run on tokio's blocking pool so a sync never stalls the tasks of a runtime
//! worker.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub(crate) struct RealDir {
    path: Arc<PathBuf>,
}

#[derive(Clone, Debug)]
pub(crate) struct RealFile {
    inner: Arc<RealFileInner>,
}

#[derive(Debug)]
struct RealFileInner {
    file: fs::File,
    /// The length as written through this handle. Kept here so that `append` costs no
    /// `fstat`; the log is the only writer of its files.
    len: AtomicU64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("blocking IO task failed: {e}")))?
    }
    // The simulator has no threads to block; nothing simulated uses the host disk, but tests
    // of this module still run there.
    #[cfg(madsim)]
    {
        f()
    }
}

impl RealDir {
    pub(crate) fn open_root(path: PathBuf) -> io::Result<RealDir> {
        fs::create_dir_all(&path)?;
        if !fs::metadata(&path)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(RealDir {
            path: Arc::new(path),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn wrap(file: fs::File) -> io::Result<RealFile> {
        let len = file.metadata()?.len();
        Ok(RealFile {
            inner: Arc::new(RealFileInner {
                file,
                len: AtomicU64::new(len),
            }),
        })
    }

    pub(crate) fn create(&self, name: &str) -> io::Result<RealFile> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))?;
        Self::wrap(file)
    }

    pub(crate) fn open(&self, name: &str) -> io::Result<RealFile> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        Self::wrap(file)
    }

    pub(crate) fn sub_dir(&self, name: &str) -> io::Result<RealDir> {
        let path = self.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
        Ok(RealDir {
            path: Arc::new(path),
        })
    }

    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))
    }

    /// The rename is one system call (atomic); the checks before it are not, which is
    /// enough for names that only their maker chooses.
    pub(crate) fn rename_dir(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.path.join(from), self.path.join(to));
        if !fs::symlink_metadata(&from)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", from.display()),
            ));
        }
        if fs::symlink_metadata(&to).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        fs::rename(&from, &to)
    }

    /// On the blocking pool: unlinking large segment files can take a while.
    pub(crate) async fn remove_all(&self, name: &str) -> io::Result<()> {
        let path = self.path.join(name);
        blocking(move || {
            if !fs::symlink_metadata(&path)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", path.display()),
                ));
            }
            fs::remove_dir_all(&path)
        })
        .await
    }

    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        let path = self.path.join(name);
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        }
    }

    pub(crate) fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&*self.path)? {
            let entry = entry?;
            // Names that are not UTF-8 are not ours; skip rather than fail the whole listing.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    pub(crate) async fn sync(&self) -> io::Result<()> {
        let path = Arc::clone(&self.path);
        blocking(move || fs::File::open(&*path)?.sync_all()).await
    }
}

impl RealFile {
    pub(crate) fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .inner
                .file
                .read_at(&mut buf[done..], pos + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    pub(crate) fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.inner.file.write_all_at(data, pos)?;
        self.inner
            .len
            .fetch_max(pos + data.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    pub(crate) fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Acquire)
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.file.set_len(len)?;
        self.inner.len.store(len, Ordering::Release);
        Ok(())
    }

    /// Off the caller's thread where a runtime has a blocking pool: dropping pages takes
    /// milliseconds for large ranges, and a runtime with one worker would stall meanwhile.
    pub(crate) fn evict(&self, pos: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            let Some(len) = std::num::NonZeroU64::new(len) else {
                return;
            };
            let inner = Arc::clone(&self.inner);
            let advise = move || {
                // Only a hint: an error (a file system without the advice) changes nothing.
                if let Err(e) =
                    rustix::fs::fadvise(&inner.file, pos, Some(len), rustix::fs::Advice::DontNeed)
                {
                    tracing::debug!(error = %e, "page cache eviction refused");
                }
            };
            #[cfg(not(madsim))]
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Not awaited: nothing waits for a hint.
                drop(rt.spawn_blocking(advise));
                return;
            }
            advise();
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (pos, len);
    }

    pub(crate) async fn sync_data(&self) -> io::Result<()> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.file.sync_data()).await
    }
}
