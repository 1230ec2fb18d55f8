//! Compression of a batch's records section, in the formats Kafka clients write.
//!
//! The codec is named by bits 0-2 of the attributes. The records section (everything after
//! the 61-byte header) is compressed as one unit; the header stays uncompressed and the
//! batch CRC covers the compressed bytes.
//!
//! | codec | written by [`compress`] | read by [`decompress`] |
//! |---|---|---|
//! | gzip | one gzip member (RFC 1952), default level | gzip members (several are concatenated) |
//! | snappy | xerial framing in 32 KiB chunks, as the Java client (snappy-java) and kafka-python write it | xerial framing, or one raw snappy block (what librdkafka writes), told apart by the xerial magic |
//! | lz4 | one LZ4 frame: independent 64 KiB blocks, no checksums, as Java's `Lz4BlockOutputStream` | any LZ4 frame: independent or linked blocks, block and content checksums (verified), content size (verified); concatenated and skippable frames |
//! | zstd | one zstd frame (the pure-Rust encoder's "fastest" level, about zstd level 1, with a content checksum) | zstd frames (content checksum and size verified); concatenated and skippable frames |
//!
//! # Decompression is bounded
//!
//! A few kilobytes of gzip, lz4, snappy or zstd can expand to gigabytes, so [`decompress`]
//! takes a limit and fails with [`BatchError::DecompressedTooLarge`] as soon as the output
//! would pass it. Output buffers grow with what was actually decoded and never past the
//! limit: sizes the input declares (a snappy block's length, an lz4 or zstd content size)
//! are checked against the limit before anything is allocated, and a zstd frame that
//! declares a window larger than the limit is decoded with a window just large enough for
//! the limit (which is enough for any output within it). Decoder state beyond the output is
//! small and bounded: inflate's 32 KiB window, and a zstd window of at most
//! max(limit, 128 KiB), never more than 128 MiB (libzstd's default limit; frames declaring
//! more are refused when the limit is larger than that).
//!
//! Corrupt, truncated or foreign input is a [`BatchError::Decompress`], never a panic.
//! Trailing bytes after the last frame are an error too: they are covered by the CRC but
//! would be invisible to every reader. One truncation cannot be seen here: xerial framing
//! has no end mark, so snappy data cut between two chunks decodes to a prefix; the batch
//! CRC and the record count catch it.

use std::io::{self, Read, Write};

use super::{BatchError, Compression};

/// The magic that starts snappy-java's ("xerial") framing: `0x82 "SNAPPY" 0x00`. Two
/// big-endian i32 fields follow (version and minimum compatible version, both 1 as
/// written), then chunks of `[big-endian i32 length][raw snappy block]`.
pub const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic plus the two version fields.
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed bytes per xerial chunk: snappy-java's and kafka-python's default.
const XERIAL_CHUNK: usize = 32 * 1024;

/// Magic of an LZ4 frame (little-endian on the wire).
const LZ4_MAGIC: u32 = 0x184D_2204;
/// Skippable frames (LZ4 and zstd share the range): `0x184D2A50..=0x184D2A5F`.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// How far back a linked LZ4 block may refer.
const LZ4_WINDOW: usize = 64 * 1024;

/// Magic of a zstd frame (little-endian on the wire).
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// The largest zstd window accepted: libzstd's default limit (window log 27).
const ZSTD_MAX_WINDOW: u64 = 128 << 20;
/// The smallest window a frame is given: a zstd block may hold up to 128 KiB, so a smaller
/// window would turn a too-large output into a decoding error instead of
/// [`BatchError::DecompressedTooLarge`].
const ZSTD_MIN_WINDOW: u64 = 128 << 10;

/// Bytes read from a streaming decoder at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Compresses `data` (a records section) with `codec`, in the format Kafka clients write
/// (see the [module documentation](self)). [`Compression::None`] returns a copy.
///
/// # Errors
/// [`BatchError::Compress`] if the encoder fails, which for in-memory data only happens
/// for inputs far larger than a batch can be.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => gzip_compress(data),
        Compression::Snappy => snappy_compress(data),
        Compression::Lz4 => lz4_compress(data),
        Compression::Zstd => Ok(zstd_compress(data)),
    }
}

/// Decompresses `data` (a compressed records section) written with `codec`, producing at
/// most `limit_bytes` bytes. [`Compression::None`] returns a copy (subject to the limit).
///
/// # Errors
/// [`BatchError::DecompressedTooLarge`] if the output would exceed `limit_bytes` (checked
/// before allocating where the input declares its size, otherwise as it is decoded);
/// [`BatchError::Decompress`] if `data` is not valid for the codec: corrupt, truncated,
/// empty, failing a checksum, or followed by trailing bytes.
pub fn decompress(
    codec: Compression,
    data: &[u8],
    limit_bytes: usize,
) -> Result<Vec<u8>, BatchError> {
    if codec == Compression::None {
        if data.len() > limit_bytes {
            return Err(too_large(codec, limit_bytes));
        }
        return Ok(data.to_vec());
    }
    if data.is_empty() {
        return Err(corrupt(codec, "no compressed data"));
    }
    let out = Output {
        codec,
        limit: limit_bytes,
        buf: Vec::new(),
    };
    match codec {
        Compression::Gzip => gzip_decompress(data, out),
        Compression::Snappy => snappy_decompress(data, out),
        Compression::Lz4 => lz4_decompress(data, out),
        Compression::Zstd => zstd_decompress(data, out),
        Compression::None => Ok(out.buf),
    }
}

fn corrupt(codec: Compression, reason: impl std::fmt::Display) -> BatchError {
    BatchError::Decompress {
        codec,
        reason: reason.to_string(),
    }
}

fn too_large(codec: Compression, limit: usize) -> BatchError {
    BatchError::DecompressedTooLarge { codec, limit }
}

fn compress_failed(codec: Compression, reason: impl std::fmt::Display) -> BatchError {
    BatchError::Compress {
        codec,
        reason: reason.to_string(),
    }
}

/// The decompressed output, which never grows past `limit`.
struct Output {
    codec: Compression,
    limit: usize,
    buf: Vec<u8>,
}

impl Output {
    fn too_large(&self) -> BatchError {
        too_large(self.codec, self.limit)
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> BatchError {
        corrupt(self.codec, reason)
    }

    /// Room left under the limit.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    /// Makes room for the output to reach `len` bytes (within the limit), growing the
    /// capacity geometrically but never past the limit.
    fn reserve_to(&mut self, len: usize) -> Result<(), BatchError> {
        if len > self.limit {
            return Err(self.too_large());
        }
        if len > self.buf.capacity() {
            let target = len.max(self.buf.capacity().saturating_mul(2).min(self.limit));
            self.buf.reserve_exact(target - self.buf.len());
        }
        Ok(())
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), BatchError> {
        let len = self
            .buf
            .len()
            .checked_add(bytes.len())
            .ok_or_else(|| self.too_large())?;
        self.reserve_to(len)?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends everything `r` yields, failing once it passes the limit.
    fn read_all(&mut self, mut r: impl Read) -> Result<(), BatchError> {
        let mut chunk = [0_u8; READ_CHUNK];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.extend(chunk.get(..n).unwrap_or_default())?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.corrupt(e)),
            }
        }
    }
}

// ---- gzip ---------------------------------------------------------------------------------

fn gzip_compress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    enc.write_all(data)
        .map_err(|e| compress_failed(Compression::Gzip, e))?;
    enc.finish()
        .map_err(|e| compress_failed(Compression::Gzip, e))
}

fn gzip_decompress(data: &[u8], mut out: Output) -> Result<Vec<u8>, BatchError> {
    // Members one after another decode as their concatenation (RFC 1952 2.2), as Java's
    // GZIPInputStream reads them; anything after the last member that is not a member is
    // an error.
    out.read_all(flate2::bufread::MultiGzDecoder::new(data))?;
    Ok(out.buf)
}

// ---- snappy -------------------------------------------------------------------------------

fn snappy_compress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let fail = |e| compress_failed(Compression::Snappy, e);
    let chunks = data.len().div_ceil(XERIAL_CHUNK);
    let mut out = Vec::with_capacity(
        XERIAL_HEADER_LEN + chunks * 4 + snap::raw::max_compress_len(data.len().min(XERIAL_CHUNK)),
    );
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&1_i32.to_be_bytes()); // version
    out.extend_from_slice(&1_i32.to_be_bytes()); // minimum compatible version
    let mut enc = snap::raw::Encoder::new();
    for chunk in data.chunks(XERIAL_CHUNK) {
        let at = out.len();
        let max = snap::raw::max_compress_len(chunk.len());
        out.resize(at + 4 + max, 0);
        let block = out.get_mut(at + 4..).unwrap_or_default();
        let n = enc.compress(chunk, block).map_err(fail)?;
        // A 32 KiB chunk compresses to well under 2 GiB.
        let len = i32::try_from(n)
            .map_err(|_| compress_failed(Compression::Snappy, "chunk too large"))?;
        out.truncate(at + 4 + n);
        if let Some(prefix) = out.get_mut(at..at + 4) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(out)
}

fn snappy_decompress(data: &[u8], mut out: Output) -> Result<Vec<u8>, BatchError> {
    let mut dec = snap::raw::Decoder::new();
    let Some(framed) = data.strip_prefix(&XERIAL_MAGIC) else {
        // No xerial magic: one raw block, as librdkafka writes it.
        snappy_block(&mut dec, data, &mut out)?;
        return Ok(out.buf);
    };
    // The version fields are not checked: every reader ignores them, and some producers
    // are known to write them little-endian.
    let mut rest = framed
        .get(XERIAL_HEADER_LEN - XERIAL_MAGIC.len()..)
        .ok_or_else(|| out.corrupt("xerial header is truncated"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| out.corrupt("xerial chunk length is truncated"))?;
        let len = usize::try_from(i32::from_be_bytes(*len))
            .map_err(|_| out.corrupt("xerial chunk length is negative"))?;
        let (block, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| out.corrupt("xerial chunk runs past the end of the data"))?;
        snappy_block(&mut dec, block, &mut out)?;
        rest = tail;
    }
    Ok(out.buf)
}

/// Decodes one raw snappy block onto the output. The block states its decoded length up
/// front, which is checked against the limit before the output grows.
fn snappy_block(
    dec: &mut snap::raw::Decoder,
    block: &[u8],
    out: &mut Output,
) -> Result<(), BatchError> {
    let n = snap::raw::decompress_len(block).map_err(|e| out.corrupt(e))?;
    let start = out.buf.len();
    let end = start.checked_add(n).ok_or_else(|| out.too_large())?;
    out.reserve_to(end)?;
    out.buf.resize(end, 0);
    let target = out.buf.get_mut(start..).unwrap_or_default();
    match dec.decompress(block, target) {
        Ok(written) if written == n => Ok(()),
        Ok(_) => Err(out.corrupt("snappy block is shorter than its stated length")),
        Err(e) => Err(out.corrupt(e)),
    }
}

// ---- lz4 ----------------------------------------------------------------------------------

fn lz4_compress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    // What Java's Lz4BlockOutputStream writes; its reader requires independent blocks.
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .block_checksums(false)
        .content_checksum(false);
    let mut enc = FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2 + 64));
    enc.write_all(data)
        .map_err(|e| compress_failed(Compression::Lz4, e))?;
    enc.finish()
        .map_err(|e| compress_failed(Compression::Lz4, e))
}

fn take<'a>(
    rest: &mut &'a [u8],
    n: usize,
    out: &Output,
    what: &str,
) -> Result<&'a [u8], BatchError> {
    let Some((head, tail)) = rest.split_at_checked(n) else {
        return Err(out.corrupt(format_args!("{what} is truncated")));
    };
    *rest = tail;
    Ok(head)
}

fn take_u32_le(rest: &mut &[u8], out: &Output, what: &str) -> Result<u32, BatchError> {
    let (word, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| out.corrupt(format_args!("{what} is truncated")))?;
    *rest = tail;
    Ok(u32::from_le_bytes(*word))
}

/// Skips a skippable frame whose magic has been read.
fn skip_frame(rest: &mut &[u8], out: &Output) -> Result<(), BatchError> {
    let len = take_u32_le(rest, out, "skippable frame length")?;
    let len = usize::try_from(len).map_err(|_| out.corrupt("skippable frame is truncated"))?;
    take(rest, len, out, "skippable frame")?;
    Ok(())
}

fn lz4_decompress(data: &[u8], mut out: Output) -> Result<Vec<u8>, BatchError> {
    let mut rest = data;
    let mut frames = 0_usize;
    while !rest.is_empty() {
        let magic = take_u32_le(&mut rest, &out, "lz4 magic")?;
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
            skip_frame(&mut rest, &out)?;
        } else if magic == LZ4_MAGIC {
            lz4_frame(&mut rest, &mut out)?;
            frames += 1;
        } else {
            return Err(out.corrupt(format_args!("not an lz4 frame (magic {magic:#010x})")));
        }
    }
    if frames == 0 {
        return Err(out.corrupt("no lz4 frame"));
    }
    Ok(out.buf)
}

/// Decodes one LZ4 frame (after its magic) onto the output, per the LZ4 frame format
/// (v1.6): frame descriptor with its checksum, blocks, end mark, optional content checksum.
fn lz4_frame(rest: &mut &[u8], out: &mut Output) -> Result<(), BatchError> {
    let descriptor = *rest;
    let flags = take(rest, 2, out, "lz4 frame descriptor")?;
    let (flg, bd) = (flags.first().copied(), flags.get(1).copied());
    let (Some(flg), Some(bd)) = (flg, bd) else {
        return Err(out.corrupt("lz4 frame descriptor is truncated"));
    };
    if flg >> 6 != 1 {
        return Err(out.corrupt(format_args!("lz4 frame version {} is not 1", flg >> 6)));
    }
    if flg & 0x02 != 0 || bd & 0x8F != 0 {
        return Err(out.corrupt("lz4 frame descriptor has reserved bits set"));
    }
    let independent = flg & 0x20 != 0;
    let block_checksums = flg & 0x10 != 0;
    let has_content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let has_dict_id = flg & 0x01 != 0;
    let max_block = match (bd >> 4) & 0x07 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        other => {
            return Err(out.corrupt(format_args!("lz4 block size id {other} is not 4 to 7")));
        }
    };
    let content_size = if has_content_size {
        let b = take(rest, 8, out, "lz4 content size")?;
        let mut le = [0; 8];
        le.copy_from_slice(b);
        Some(u64::from_le_bytes(le))
    } else {
        None
    };
    if has_dict_id {
        return Err(out.corrupt("lz4 frame needs a dictionary (unsupported)"));
    }
    let descriptor_len = 2 + if has_content_size { 8 } else { 0 };
    let hc = take(rest, 1, out, "lz4 frame descriptor checksum")?;
    let covered = descriptor.get(..descriptor_len).unwrap_or_default();
    let expected = (twox_hash::XxHash32::oneshot(0, covered) >> 8) as u8;
    if hc != [expected] {
        return Err(out.corrupt("lz4 frame descriptor checksum mismatch"));
    }
    if let Some(size) = content_size {
        if usize::try_from(size).map_or(true, |s| s > out.room()) {
            return Err(out.too_large());
        }
    }

    let frame_start = out.buf.len();
    // Bytes decoded so far: the output may run ahead (zeroed room for the next block), so
    // that room is zeroed once rather than once per block.
    let mut filled = frame_start;
    let result = lz4_blocks(
        rest,
        out,
        &mut filled,
        frame_start,
        max_block,
        independent,
        block_checksums,
    );
    out.buf.truncate(filled);
    result?;

    if content_checksum {
        let stored = take_u32_le(rest, out, "lz4 content checksum")?;
        let content = out.buf.get(frame_start..).unwrap_or_default();
        if twox_hash::XxHash32::oneshot(0, content) != stored {
            return Err(out.corrupt("lz4 content checksum mismatch"));
        }
    }
    if let Some(size) = content_size {
        let decoded = out.buf.len() - frame_start;
        if u64::try_from(decoded).ok() != Some(size) {
            return Err(out.corrupt(format_args!(
                "lz4 frame decoded to {decoded} bytes, its header says {size}"
            )));
        }
    }
    Ok(())
}

/// The blocks of an LZ4 frame up to and including its end mark. Decoded bytes end at
/// `filled`; the output buffer may be longer (zeroed room), never longer than the limit.
fn lz4_blocks(
    rest: &mut &[u8],
    out: &mut Output,
    filled: &mut usize,
    frame_start: usize,
    max_block: usize,
    independent: bool,
    block_checksums: bool,
) -> Result<(), BatchError> {
    loop {
        let word = take_u32_le(rest, out, "lz4 block size (or end mark)")?;
        if word == 0 {
            return Ok(());
        }
        let stored = word & 0x8000_0000 != 0;
        let len = usize::try_from(word & 0x7FFF_FFFF).unwrap_or(usize::MAX);
        if len > max_block {
            return Err(out.corrupt("lz4 block is larger than the frame's block size"));
        }
        let block = take(rest, len, out, "lz4 block")?;
        if block_checksums {
            let sum = take_u32_le(rest, out, "lz4 block checksum")?;
            if twox_hash::XxHash32::oneshot(0, block) != sum {
                return Err(out.corrupt("lz4 block checksum mismatch"));
            }
        }
        if stored {
            out.buf.truncate(*filled);
            out.extend(block)?;
            *filled = out.buf.len();
            continue;
        }
        // Room for a whole block, or up to the limit if that is nearer: a block that does
        // not fit then is too large rather than corrupt.
        let room = out.limit.saturating_sub(*filled);
        let cap = max_block.min(room);
        let end = *filled + cap;
        if out.buf.len() < end {
            out.reserve_to(end)?;
            out.buf.resize(end, 0);
        }
        let (before, after) = out.buf.split_at_mut(*filled);
        let target = after.get_mut(..cap).unwrap_or_default();
        let decoded = if independent {
            lz4_flex::block::decompress_into(block, target)
        } else {
            // A linked block may refer to the previous 64 KiB of this frame.
            let from = before.len().saturating_sub(LZ4_WINDOW).max(frame_start);
            let dict = before.get(from..).unwrap_or_default();
            lz4_flex::block::decompress_into_with_dict(block, target, dict)
        };
        match decoded {
            Ok(n) => *filled += n,
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if cap < max_block => {
                return Err(out.too_large());
            }
            Err(e) => return Err(out.corrupt(e)),
        }
    }
}

// ---- zstd ---------------------------------------------------------------------------------

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The window size a zstd window descriptor byte stands for (RFC 8878 3.1.1.1.2).
fn zstd_window(descriptor: u8) -> u64 {
    let base = 1_u64 << (10 + u32::from(descriptor >> 3));
    base + base / 8 * u64::from(descriptor & 0x07)
}

/// The smallest window descriptor whose window is at least `size`, if any (window sizes
/// grow with the descriptor's value).
fn zstd_descriptor_for(size: u64) -> Option<u8> {
    (0..=u8::MAX).find(|&d| zstd_window(d) >= size)
}

fn zstd_decompress(data: &[u8], mut out: Output) -> Result<Vec<u8>, BatchError> {
    // A window of the limit is enough for any output within the limit, so a frame that
    // declares more (stream compressors declare 2 MiB or more whatever the input) is decoded
    // with a window of max(limit, 128 KiB), clamped to 128 MiB. Frames that declare more than
    // 128 MiB are refused when the limit is larger, as libzstd refuses them by default.
    let wanted = u64::try_from(out.limit).unwrap_or(u64::MAX);
    let window = wanted.clamp(ZSTD_MIN_WINDOW, ZSTD_MAX_WINDOW);
    let cap = zstd_descriptor_for(window).unwrap_or(u8::MAX);
    let cap_window = zstd_window(cap);
    // Shrinking a declared window is sound only while the output cannot outgrow it.
    let may_shrink = cap_window >= wanted;

    // One decoder for all frames: it keeps its buffers from frame to frame.
    let mut decoder = ruzstd::decoding::FrameDecoder::new();
    decoder.set_max_window_size(cap_window);
    let window = Window {
        cap,
        cap_window,
        may_shrink,
    };
    let mut rest = data;
    let mut frames = 0_usize;
    while !rest.is_empty() {
        let magic = rest.first_chunk::<4>().map(|m| u32::from_le_bytes(*m));
        if magic.is_some_and(|m| m & SKIPPABLE_MASK == SKIPPABLE_MAGIC) {
            rest = rest.get(4..).unwrap_or_default();
            skip_frame(&mut rest, &out)?;
            continue;
        }
        if magic != Some(ZSTD_MAGIC) {
            return Err(out.corrupt("not a zstd frame (bad magic)"));
        }
        rest = zstd_frame(rest, &mut out, &mut decoder, &window)?;
        frames += 1;
    }
    if frames == 0 {
        return Err(out.corrupt("no zstd frame"));
    }
    Ok(out.buf)
}

/// Decodes the zstd frame at the start of `data` onto the output; returns the bytes after
/// it.
/// The window frames are decoded with (see [`zstd_decompress`]).
struct Window {
    /// The window descriptor for the largest window used.
    cap: u8,
    /// Its window size.
    cap_window: u64,
    /// Whether a frame declaring a larger window may be decoded with this one.
    may_shrink: bool,
}

fn zstd_frame<'a>(
    data: &'a [u8],
    out: &mut Output,
    decoder: &mut ruzstd::decoding::FrameDecoder,
    window: &Window,
) -> Result<&'a [u8], BatchError> {
    let Window {
        cap,
        cap_window,
        may_shrink,
    } = *window;
    use ruzstd::decoding::errors::FrameDecoderError;
    use ruzstd::decoding::StreamingDecoder;

    // The frame header descriptor and, unless the frame is a single segment, the window
    // descriptor right after it.
    let mut head = [0_u8; 6];
    let head_len = data.len().min(head.len());
    head.get_mut(..head_len)
        .unwrap_or_default()
        .copy_from_slice(data.get(..head_len).unwrap_or_default());
    let fhd = data.get(4).copied().unwrap_or(0);
    let single_segment = fhd & 0x20 != 0;
    let has_content_size = single_segment || fhd >> 6 != 0;
    let has_checksum = fhd & 0x04 != 0;
    if !single_segment && head_len == head.len() && zstd_window(head[5]) > cap_window {
        if !may_shrink {
            return Err(out.corrupt(format_args!(
                "zstd window of {} bytes is larger than {ZSTD_MAX_WINDOW}",
                zstd_window(head[5])
            )));
        }
        head[5] = cap;
    }
    let tail = data.get(head_len..).unwrap_or_default();
    let source = io::Cursor::new(head.get(..head_len).unwrap_or_default()).chain(tail);

    let mut dec = match StreamingDecoder::new_with_decoder(source, decoder) {
        Ok(dec) => dec,
        // Only a single-segment frame can get here: its window is its content size, which
        // is then past the limit, or (for limits past 128 MiB) past the largest window.
        Err(FrameDecoderError::WindowSizeTooBig { requested, .. }) => {
            return Err(if may_shrink {
                out.too_large()
            } else {
                out.corrupt(format_args!(
                    "zstd window of {requested} bytes is larger than {ZSTD_MAX_WINDOW}"
                ))
            });
        }
        Err(e) => return Err(out.corrupt(e)),
    };
    let content_size = dec.decoder.content_size();
    if has_content_size && usize::try_from(content_size).map_or(true, |s| s > out.room()) {
        return Err(out.too_large());
    }
    let start = out.buf.len();
    out.read_all(&mut dec)?;
    let decoded = out.buf.len() - start;
    if has_content_size && u64::try_from(decoded).ok() != Some(content_size) {
        return Err(out.corrupt(format_args!(
            "zstd frame decoded to {decoded} bytes, its header says {content_size}"
        )));
    }
    if has_checksum {
        let stored = dec.decoder.get_checksum_from_data();
        if stored.is_none() || stored != dec.decoder.get_calculated_checksum() {
            return Err(out.corrupt("zstd content checksum mismatch"));
        }
    }
    let (head_rest, after) = dec.into_inner().into_inner();
    if head_rest.position() < u64::try_from(head_len).unwrap_or(u64::MAX) {
        return Err(out.corrupt("zstd frame is truncated"));
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_window_descriptors() {
        assert_eq!(zstd_window(0), 1024);
        assert_eq!(zstd_window(1), 1024 + 128);
        assert_eq!(zstd_window(8), 2048);
        assert!((1..=u8::MAX).all(|d| zstd_window(d) > zstd_window(d - 1)));
        assert_eq!(zstd_descriptor_for(0), Some(0));
        assert_eq!(zstd_descriptor_for(1 << 20), Some(10 << 3));
        assert_eq!(zstd_descriptor_for((1 << 20) + 1), Some((10 << 3) | 1));
        assert_eq!(zstd_descriptor_for(u64::MAX), None);
    }

    #[test]
    fn output_never_reserves_past_the_limit() {
        let mut out = Output {
            codec: Compression::Gzip,
            limit: 100,
            buf: Vec::new(),
        };
        for _ in 0..10 {
            out.extend(&[1; 10]).unwrap();
            assert!(out.buf.capacity() <= 100, "{}", out.buf.capacity());
        }
        assert_eq!(out.extend(&[1]), Err(too_large(Compression::Gzip, 100)));
        assert_eq!(out.buf.len(), 100);
    }

    #[test]
    fn every_codec_round_trips_empty_and_small_input() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            for data in [&b""[..], b"a", b"hello hello hello hello"] {
                let c = compress(codec, data).unwrap();
                assert_eq!(decompress(codec, &c, data.len()).unwrap(), data, "{codec}");
            }
        }
    }
}
