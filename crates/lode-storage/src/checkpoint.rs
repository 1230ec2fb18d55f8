//! Checkpoint files: small records written atomically (temporary file, sync, rename,
//! directory sync) and framed with a magic, a version and a CRC-32C, so that a torn or
//! corrupt checkpoint is recognised and recovery falls back to scanning the log.

use lode_env::{Dir, File};

use crate::error::LogError;

const MAGIC: &[u8; 8] = b"LODECKPT";
const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 4;

/// Why a checkpoint could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// Wrong magic, version, length or CRC.
    #[error("checkpoint {name} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Encodes `payload` as a checkpoint file's bytes.
#[must_use]
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a checkpoint file's bytes into its payload.
///
/// # Errors
/// [`CheckpointError::Corrupt`] for anything but an intact checkpoint.
pub fn unframe<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a [u8], CheckpointError> {
    let corrupt = |reason| CheckpointError::Corrupt {
        name: name.to_owned(),
        reason,
    };
    if bytes.len() < HEADER + 4 {
        return Err(corrupt("too short"));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if bytes[8..10] != VERSION.to_be_bytes() {
        return Err(corrupt("unknown version"));
    }
    let len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    if bytes.len() != HEADER + len + 4 {
        return Err(corrupt("length mismatch"));
    }
    let (body, crc) = bytes.split_at(HEADER + len);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Err(corrupt("crc mismatch"));
    }
    Ok(&body[HEADER..])
}

/// Writes `payload` as checkpoint `name` in `dir`, atomically and durably.
///
/// # Errors
/// [`LogError::Io`] if any step fails; the previous checkpoint then still stands (or the
/// new one, if only the final directory sync failed).
pub async fn write(dir: &Dir, name: &str, payload: &[u8]) -> Result<(), LogError> {
    replace(dir, name, &frame(payload)).await.map(|_| ())
}

/// Replaces file `name` in `dir` with `bytes`, atomically and durably: a temporary file,
/// synced, renamed over it, and the directory synced. Returns the new file.
///
/// # Errors
/// [`LogError::Io`] if any step fails; the previous file then still stands (or the new one,
/// if only the final directory sync failed).
pub async fn replace(dir: &Dir, name: &str, bytes: &[u8]) -> Result<File, LogError> {
    let tmp = format!("{name}.tmp");
    match dir.remove(&tmp).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::io("remove", &tmp)(e)),
    }
    let file = dir
        .create(&tmp)
        .await
        .map_err(LogError::io("create", &tmp))?;
    file.write_at(0, bytes)
        .await
        .map_err(LogError::io("write", &tmp))?;
    file.sync_data().await.map_err(LogError::io("sync", &tmp))?;
    dir.rename(&tmp, name)
        .await
        .map_err(LogError::io("rename", &tmp))?;
    dir.sync()
        .await
        .map_err(LogError::io("sync directory", dir.display()))?;
    Ok(file)
}

/// Reads checkpoint `name`: `Ok(None)` if it does not exist, `Ok(Some(Err(..)))` if it is
/// corrupt (the caller falls back), `Err` if the disk failed.
///
/// # Errors
/// [`LogError::Io`] when reading fails.
pub async fn read(
    dir: &Dir,
    name: &str,
) -> Result<Option<Result<Vec<u8>, CheckpointError>>, LogError> {
    let file = match dir.open(name).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("open", name)(e)),
    };
    let len = file.len().await.map_err(LogError::io("stat", name))?;
    if len > 64 << 20 {
        return Ok(Some(Err(CheckpointError::Corrupt {
            name: name.to_owned(),
            reason: "implausibly large",
        })));
    }
    let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(0, &mut buf)
        .await
        .map_err(LogError::io("read", name))?;
    Ok(Some(unframe(name, &buf).map(<[u8]>::to_vec)))
}

/// Removes checkpoint `name` if it exists (not durable until the directory is synced).
///
/// # Errors
/// [`LogError::Io`] when removing fails.
pub async fn remove(dir: &Dir, name: &str) -> Result<bool, LogError> {
    match dir.remove(name).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LogError::io("remove", name)(e)),
    }
}

/// A cursor over big-endian fields of a checkpoint payload.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_every_corruption_is_caught() {
        let f = frame(b"payload");
        assert_eq!(unframe("x", &f).unwrap(), b"payload");
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[i] ^= 1 << bit;
                assert!(unframe("x", &g).is_err(), "flip at {i}.{bit} undetected");
            }
        }
        for n in 0..f.len() {
            assert!(unframe("x", &f[..n]).is_err());
        }
    }
}
