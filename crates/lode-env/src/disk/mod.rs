//! The disk: a directory of files, on the host's file system or on the simulated disk.
//!
//! The interface is the small set of operations a log needs, with the durability contract
//! spelled out, because the simulated disk enforces it:
//!
//! - [`File::write_at`], [`File::append`] and [`File::set_len`] are volatile until
//!   [`File::sync_data`] succeeds. A crash may keep, tear (at 512-byte sector granularity
//!   within a 4 KiB page) or drop each unsynced page, and may keep the old or the new length.
//! - Creating, renaming and removing names are volatile until [`Dir::sync`] of the directory
//!   that holds them. A file whose data was synced but whose name was not may vanish.
//! - A failed `sync_data` leaves the file's unsynced data undefined (the "fsyncgate"
//!   lesson): callers must treat everything written since the last successful sync as lost
//!   and must not retry the sync expecting it to mean anything.
//!
//! Errors are [`std::io::Error`]s with the same kinds and OS codes a real disk gives
//! (`EIO`, `ENOSPC`, `NotFound`, ...), so callers handle both implementations alike.

mod real;
pub mod sim;

use std::io;
use std::path::PathBuf;

pub use sim::{CrashStats, Evictions, Faults, Latency, Op, SimDisk};

/// `EIO`, as the kernel reports a failed read, write or sync.
pub(crate) const EIO: i32 = 5;
/// `ENOSPC`: no space left on the device.
pub(crate) const ENOSPC: i32 = 28;

/// The page and sector sizes of the durability model.
pub const PAGE_SIZE: u64 = 4096;
/// See [`PAGE_SIZE`].
pub const SECTOR_SIZE: u64 = 512;

/// A directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Dir {
    imp: DirImp,
}

#[derive(Clone, Debug)]
enum DirImp {
    Real(real::RealDir),
    Sim(sim::SimDir),
}

/// An open file. Cheap to clone; clones share the handle.
#[derive(Clone, Debug)]
pub struct File {
    imp: FileImp,
}

#[derive(Clone, Debug)]
enum FileImp {
    Real(real::RealFile),
    Sim(sim::SimFile),
}

/// Rejects names that would escape the directory or address a subdirectory implicitly.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad file name {name:?}"),
        ));
    }
    Ok(())
}

impl Dir {
    /// A directory of the host's file system, created (with its parents) if missing.
    ///
    /// # Errors
    /// When the directory cannot be created or is not a directory.
    pub fn real(path: impl Into<PathBuf>) -> io::Result<Dir> {
        Ok(Dir {
            imp: DirImp::Real(real::RealDir::open_root(path.into())?),
        })
    }

    /// The root directory of a simulated disk.
    #[must_use]
    pub fn sim(disk: &SimDisk) -> Dir {
        Dir {
            imp: DirImp::Sim(disk.root()),
        }
    }

    /// A readable description of where this directory is, for messages.
    #[must_use]
    pub fn display(&self) -> String {
        match &self.imp {
            DirImp::Real(d) => d.path().display().to_string(),
            DirImp::Sim(d) => d.display(),
        }
    }

    /// Creates a new file, failing with `AlreadyExists` if the name is taken.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidInput` for a bad name, or an IO error.
    pub async fn create(&self, name: &str) -> io::Result<File> {
        check_name(name)?;
        let imp = match &self.imp {
            DirImp::Real(d) => FileImp::Real(d.create(name)?),
            DirImp::Sim(d) => FileImp::Sim(d.create(name).await?),
        };
        Ok(File { imp })
    }

    /// Opens an existing file for reading and writing.
    ///
    /// # Errors
    /// `NotFound`, `InvalidInput` for a bad name, or an IO error.
    pub async fn open(&self, name: &str) -> io::Result<File> {
        check_name(name)?;
        let imp = match &self.imp {
            DirImp::Real(d) => FileImp::Real(d.open(name)?),
            DirImp::Sim(d) => FileImp::Sim(d.open(name).await?),
        };
        Ok(File { imp })
    }

    /// Opens a subdirectory, creating it if missing. A new directory's name is volatile
    /// until this directory is synced.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name, `AlreadyExists` if a file holds the name, or an IO
    /// error.
    pub async fn sub_dir(&self, name: &str) -> io::Result<Dir> {
        check_name(name)?;
        let imp = match &self.imp {
            DirImp::Real(d) => DirImp::Real(d.sub_dir(name)?),
            DirImp::Sim(d) => DirImp::Sim(d.sub_dir(name).await?),
        };
        Ok(Dir { imp })
    }

    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    ///
    /// # Errors
    /// `NotFound` if `from` is missing, or an IO error.
    pub async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        match &self.imp {
            DirImp::Real(d) => d.rename(from, to),
            DirImp::Sim(d) => d.rename(from, to).await,
        }
    }

    /// Atomically renames subdirectory `from` to `to`, which must not exist, with all it
    /// holds. Volatile until this directory is synced: a crash keeps the directory under
    /// one name or the other, whole. Handles ([`Dir`], [`File`]) opened through the old
    /// name keep their files, but a [`Dir`] opened as `from` names files by path: it
    /// addresses whatever is called `from` later, so stop using it first.
    ///
    /// # Errors
    /// `NotFound` if `from` is missing, `NotADirectory` if it is a file, `AlreadyExists` if
    /// `to` exists, `InvalidInput` for a bad name, or an IO error.
    pub async fn rename_dir(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        match &self.imp {
            DirImp::Real(d) => d.rename_dir(from, to),
            DirImp::Sim(d) => d.rename_dir(from, to).await,
        }
    }

    /// Removes a file or an empty subdirectory.
    ///
    /// # Errors
    /// `NotFound` if missing, or an IO error.
    pub async fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match &self.imp {
            DirImp::Real(d) => d.remove(name),
            DirImp::Sim(d) => d.remove(name).await,
        }
    }

    /// Removes subdirectory `name` and everything in it. Volatile until this directory is
    /// synced; a crash before then (or a failure part way) may leave the directory with
    /// some of its contents gone.
    ///
    /// # Errors
    /// `NotFound` if missing, `NotADirectory` if it is a file, `InvalidInput` for a bad
    /// name, or an IO error (some contents may be removed already).
    pub async fn remove_all(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match &self.imp {
            DirImp::Real(d) => d.remove_all(name).await,
            DirImp::Sim(d) => d.remove_all(name).await,
        }
    }

    /// The names in this directory (files and subdirectories), sorted.
    ///
    /// # Errors
    /// An IO error.
    pub async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = match &self.imp {
            DirImp::Real(d) => d.list()?,
            DirImp::Sim(d) => d.list().await?,
        };
        names.sort();
        Ok(names)
    }

    /// Makes the creations, renames and removals in this directory durable.
    ///
    /// # Errors
    /// An IO error (injected as `EIO` in simulation).
    pub async fn sync(&self) -> io::Result<()> {
        match &self.imp {
            DirImp::Real(d) => d.sync().await,
            DirImp::Sim(d) => d.sync().await,
        }
    }
}

impl File {
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at the end of the file.
    ///
    /// # Errors
    /// An IO error (injected `EIO` in simulation).
    pub async fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        match &self.imp {
            FileImp::Real(f) => f.read_at(pos, buf),
            FileImp::Sim(f) => f.read_at(pos, buf).await,
        }
    }

    /// Reads exactly `buf.len()` bytes at `pos`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file ends first, or an IO error.
    pub async fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.read_at(pos, buf).await?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("wanted {} bytes at {pos}, file has {n}", buf.len()),
            ));
        }
        Ok(())
    }

    /// Writes all of `data` at `pos`, extending the file if needed (with zeros in any gap).
    ///
    /// # Errors
    /// An IO error (`EIO`, `ENOSPC`).
    pub async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        match &self.imp {
            FileImp::Real(f) => f.write_at(pos, data),
            FileImp::Sim(f) => f.write_at(pos, data).await,
        }
    }

    /// Writes all of `data` at the end of the file and returns where it starts.
    ///
    /// # Errors
    /// An IO error (`EIO`, `ENOSPC`).
    pub async fn append(&self, data: &[u8]) -> io::Result<u64> {
        let pos = self.len().await?;
        self.write_at(pos, data).await?;
        Ok(pos)
    }

    /// The file's length as this handle sees it (including unsynced writes).
    ///
    /// # Errors
    /// An IO error.
    pub async fn len(&self) -> io::Result<u64> {
        match &self.imp {
            FileImp::Real(f) => Ok(f.len()),
            FileImp::Sim(f) => f.len(),
        }
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    ///
    /// # Errors
    /// An IO error.
    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        match &self.imp {
            FileImp::Real(f) => f.set_len(len),
            FileImp::Sim(f) => f.set_len(len).await,
        }
    }

    /// Asks the OS to drop `[pos, pos + len)` from its page cache, as far as it is written
    /// back (dirty pages stay). A hint for data written and not to be read soon: reads still
    /// return the data (from the device), and nothing becomes durable or is lost by it. On
    /// virtual machines like the development one, pages the guest has not touched cost several times a warm one
    /// to fill, so a log that never lets go of its page cache writes at the speed of fresh
    /// pages; evicting what is behind the tail lets the kernel reuse warm ones. The
    /// simulated disk has no page cache: it only counts what was asked
    /// ([`SimDisk::evictions`]).
    pub fn evict(&self, pos: u64, len: u64) {
        match &self.imp {
            FileImp::Real(f) => f.evict(pos, len),
            FileImp::Sim(f) => f.evict(pos, len),
        }
    }

    /// Makes the file's data and length durable (`fdatasync`).
    ///
    /// # Errors
    /// An IO error. After an error, everything written since the last successful sync is
    /// undefined and must be treated as lost.
    pub async fn sync_data(&self) -> io::Result<()> {
        match &self.imp {
            FileImp::Real(f) => f.sync_data().await,
            FileImp::Sim(f) => f.sync_data().await,
        }
    }
}

#[cfg(test)]
mod tests;
