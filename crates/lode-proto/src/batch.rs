//! Kafka RecordBatch v2 (magic 2): the unit a client produces and the log stores.
//!
//! Layout (big-endian), offsets in bytes:
//!
//! | at | field | notes |
//! |---|---|---|
//! | 0 | baseOffset i64 | patched by the broker, outside the CRC |
//! | 8 | batchLength i32 | bytes after this field |
//! | 12 | partitionLeaderEpoch i32 | stamped by the leader, outside the CRC |
//! | 16 | magic i8 | 2 |
//! | 17 | crc u32 | CRC-32C of bytes 21.. end |
//! | 21 | attributes i16 | compression, timestamp type, transactional, control |
//! | 23 | lastOffsetDelta i32 | |
//! | 27 | baseTimestamp i64 | |
//! | 35 | maxTimestamp i64 | |
//! | 43 | producerId i64 | |
//! | 51 | producerEpoch i16 | |
//! | 53 | baseSequence i32 | |
//! | 57 | recordsCount i32 | |
//! | 61 | records | see [`Record`] |
//!
//! Because base offset and leader epoch sit outside the CRC, the broker assigns offsets and
//! stamps its epoch in place ([`set_base_offset`], [`set_partition_leader_epoch`]) and
//! stores the client's bytes as sent, with the client's CRC still valid.
//!
//! # Levels of checking
//!
//! Checks are layered so each caller pays for what it needs:
//!
//! 1. [`RecordBatch::parse`]: the frame (length, magic 2, a known codec) and the CRC. Enough
//!    to trust the header and to copy the batch around. [`RecordBatch::parse_unchecked_crc`]
//!    skips the CRC for bytes already verified.
//! 2. [`RecordBatch::validate`]: what a batch from a client must also satisfy: at least one
//!    record and `lastOffsetDelta == recordsCount - 1`. The produce path and log recovery
//!    use it.
//! 3. [`RecordBatch::validate_records`]: decodes every record of an uncompressed batch and
//!    requires offset deltas `0..recordsCount` and records that fill the section exactly
//!    ([`RecordBatch::validate_records_in`] for the decompressed records of a compressed
//!    one).
//!
//! # Compression
//!
//! The records section of a compressed batch (gzip, snappy, lz4, zstd: attribute bits 0-2)
//! is one compressed unit; the header and CRC are as for any batch, the CRC covering the
//! compressed bytes. [`RecordBatch::records`] iterates uncompressed batches in place; for
//! any batch, decompress with a bound on the output, then iterate the buffer:
//!
//! ```
//! use lode_proto::batch::{Compression, RecordBatch, RecordBatchBuilder};
//! use lode_proto::Offset;
//!
//! let mut b = RecordBatchBuilder::new(Offset(0));
//! b.compression(Compression::Lz4)
//!     .push(Some(b"key"), Some(b"value"), &[], 0);
//! let bytes = b.build();
//! let (batch, _) = RecordBatch::parse(&bytes).unwrap();
//! let buf = batch.decompressed_records(1 << 20).unwrap();
//! for r in batch.records_in(&buf).unwrap() {
//!     assert_eq!(r.unwrap().value, Some(&b"value"[..]));
//! }
//! ```
//!
//! See [`compression`] for the formats read and written and how decompression is bounded.
//!
//! # Never panics on input
//!
//! Every function here takes arbitrary bytes: corrupt or truncated input is a
//! [`BatchError`], never a panic, and offsets and timestamps derived from header fields
//! saturate instead of overflowing. Header fields are read from a `&[u8; HEADER_SIZE]` at
//! offsets checked at compile time. A fuzz target (`fuzz/`) drives
//! [`fuzzing::fuzz_record_batch`] and its corpus is replayed by `cargo test`.

use std::borrow::Cow;
use std::fmt;
use std::iter::FusedIterator;

use crate::types::{Epoch, Offset};

mod builder;
pub mod compression;
#[doc(hidden)]
pub mod fuzzing;
mod records;
pub(crate) mod varint;

pub use builder::RecordBatchBuilder;
pub use compression::{compress, decompress};
pub use records::{Header, HeaderIter, Headers, Record, Records};

/// Bytes of the batch header, up to the first record.
pub const HEADER_SIZE: usize = 61;
/// Bytes before `batchLength` starts counting: the base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// The only magic this crate reads: RecordBatch v2 (Kafka 0.11 and later).
pub const MAGIC_V2: i8 = 2;
/// The smallest valid `batchLength`: a header with an empty records section.
pub const MIN_BATCH_LENGTH: i32 = 49; // HEADER_SIZE - LOG_OVERHEAD
/// `maxTimestamp` of a batch with no records, and Kafka's "no timestamp" in general.
pub const NO_TIMESTAMP: i64 = -1;
/// `producerId` of a batch from a producer that is neither idempotent nor transactional.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producerEpoch` when there is no producer id.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `baseSequence` when there is no producer id.
pub const NO_SEQUENCE: i32 = -1;

// Field positions, matching the table above.
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

// Attribute bits.
const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
const DELETE_HORIZON_BIT: i16 = 0x40;

const _: () = assert!(HEADER_SIZE == RECORDS_COUNT_AT + 4);
const _: () = assert!(MIN_BATCH_LENGTH as usize == HEADER_SIZE - LOG_OVERHEAD);
const _: () = assert!(LOG_OVERHEAD == BATCH_LENGTH_AT + 4);

/// Copies the `N` bytes at `AT` out of a header. The bounds are asserted when the function
/// is instantiated, so the slice below cannot fail at run time whatever the input.
fn get<const AT: usize, const N: usize>(h: &[u8; HEADER_SIZE]) -> [u8; N] {
    const { assert!(AT + N <= HEADER_SIZE) };
    let mut out = [0; N];
    out.copy_from_slice(&h[AT..AT + N]);
    out
}

/// Writes `v` at `AT` into a header, bounds checked at compile time like [`get`].
fn put<const AT: usize, const N: usize>(h: &mut [u8; HEADER_SIZE], v: [u8; N]) {
    const { assert!(AT + N <= HEADER_SIZE) };
    h[AT..AT + N].copy_from_slice(&v);
}

fn i16_at<const AT: usize>(h: &[u8; HEADER_SIZE]) -> i16 {
    i16::from_be_bytes(get::<AT, 2>(h))
}
fn i32_at<const AT: usize>(h: &[u8; HEADER_SIZE]) -> i32 {
    i32::from_be_bytes(get::<AT, 4>(h))
}
fn i64_at<const AT: usize>(h: &[u8; HEADER_SIZE]) -> i64 {
    i64::from_be_bytes(get::<AT, 8>(h))
}

/// The CRC-32C the format defines: over the header from `attributes` on, then the records.
fn crc_of(h: &[u8; HEADER_SIZE], records: &[u8]) -> u32 {
    let (_, covered) = h.split_at(ATTRIBUTES_AT);
    crc32c::crc32c_append(crc32c::crc32c(covered), records)
}

/// Why bytes are not a valid batch, or not a valid batch for the operation asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The buffer ends before the batch does. When reading a stream or a file, more bytes
    /// may complete it.
    #[error("batch truncated: needed {needed} bytes, have {available}")]
    TooShort {
        /// Bytes needed: the header, or the whole batch once its length is known.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `batchLength` is too small to hold a header (possibly negative). The frame is
    /// broken, so nothing after it can be located either.
    #[error("batch length {0} is below the minimum of {min}", min = MIN_BATCH_LENGTH)]
    BadLength(i32),
    /// Not magic 2: a legacy message set (magic 0 or 1) or garbage.
    #[error("unsupported magic {0} (only RecordBatch v2 is accepted)")]
    BadMagic(i8),
    /// The CRC does not match the bytes: the batch was corrupted after the client wrote it.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes it covers.
        computed: u32,
    },
    /// The record count is negative, or (for [`RecordBatch::validate`]) not at least one
    /// and equal to `lastOffsetDelta + 1`.
    #[error(
        "record count {count} with last offset delta {last_offset_delta}: a batch needs \
         count >= 1 and last offset delta = count - 1"
    )]
    BadRecordCount {
        /// `recordsCount`.
        count: i32,
        /// `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// A record's offset delta is not its index (from [`RecordBatch::validate_records`]).
    #[error("record {index} has offset delta {delta}, expected {index}")]
    BadOffsetDelta {
        /// The record's index in the batch.
        index: i32,
        /// Its offset delta.
        delta: i32,
    },
    /// The compression bits of the attributes are 5, 6 or 7, which name no codec.
    #[error("unknown compression codec {0}")]
    BadCompression(u8),
    /// The records are compressed, so they cannot be read in place: decompress them with
    /// [`RecordBatch::decompressed_records`] and iterate with [`RecordBatch::records_in`].
    #[error("records are compressed with {0}; decompress them to read records")]
    Compressed(Compression),
    /// The compressed records are not valid for their codec: corrupt, truncated, failing a
    /// checksum, or with bytes after the compressed data.
    #[error("{codec} decompression failed: {reason}")]
    Decompress {
        /// The codec of the batch.
        codec: Compression,
        /// What the decoder reported.
        reason: String,
    },
    /// Decompressing would produce more bytes than the caller's limit (a decompression bomb,
    /// or simply a batch larger than the caller accepts). Nothing past the limit was
    /// allocated.
    #[error("{codec} records decompress to more than the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The codec of the batch.
        codec: Compression,
        /// The limit that was passed.
        limit: usize,
    },
    /// The encoder failed to compress the records.
    #[error("{codec} compression failed: {reason}")]
    Compress {
        /// The codec asked for.
        codec: Compression,
        /// What the encoder reported.
        reason: String,
    },
    /// A record is malformed.
    #[error("record {index} is malformed: {reason}")]
    BadRecord {
        /// The record's index in the batch.
        index: i32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The records section ends before `recordsCount` records.
    #[error("records end after {found} of {count} records")]
    Truncated {
        /// `recordsCount`.
        count: i32,
        /// Records found before the section ended.
        found: i32,
    },
    /// Bytes follow the last of `recordsCount` records inside the batch.
    #[error("{extra} bytes follow the last of {count} records")]
    TrailingRecordBytes {
        /// `recordsCount`.
        count: i32,
        /// Bytes left over.
        extra: usize,
    },
    /// Bytes follow the single batch expected (for callers that require exactly one).
    #[error("trailing bytes after the batch")]
    TrailingBytes,
    /// The batch a builder would produce is too large for `batchLength` (an i32) or has
    /// more than `i32::MAX` records.
    #[error("batch of {size} bytes and {records} records does not fit the format")]
    TooLarge {
        /// The batch size in bytes.
        size: usize,
        /// Its number of records.
        records: usize,
    },
}

/// Compression codec of a batch's records (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Records stored as is.
    None,
    /// gzip.
    Gzip,
    /// snappy (xerial framing written; xerial framing or a raw block read).
    Snappy,
    /// lz4 (frame format).
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The codec for the 3-bit id in the attributes, `None` if 5, 6 or 7.
    #[must_use]
    pub const fn from_id(id: u8) -> Option<Compression> {
        match id {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The codec's id in the attributes.
    #[must_use]
    pub const fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec's name as Kafka's `compression.type` spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The total size of the batch at the start of `buf`, read from its length field, so a
/// reader scanning a log file knows how many bytes to fetch next.
///
/// Returns `Ok(None)` if fewer than [`LOG_OVERHEAD`] bytes are present (read more). Does
/// not look past the length field: the batch itself may still be invalid or incomplete.
///
/// # Errors
/// [`BatchError::BadLength`] if the length is below [`MIN_BATCH_LENGTH`] (including
/// negative): the bytes are not a batch and the scan cannot continue past them.
pub fn peek_size(buf: &[u8]) -> Result<Option<usize>, BatchError> {
    let Some(length) = buf
        .get(BATCH_LENGTH_AT..LOG_OVERHEAD)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    let length = i32::from_be_bytes(length);
    if length < MIN_BATCH_LENGTH {
        return Err(BatchError::BadLength(length));
    }
    usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(LOG_OVERHEAD))
        .map(Some)
        .ok_or(BatchError::BadLength(length))
}

/// The header of the batch at the start of `buf`, for patching: it must be a whole header
/// of magic 2. Checking the magic matters: in a legacy (magic 0/1) message the bytes at 12
/// are its CRC, so stamping an epoch there would corrupt it.
fn header_mut(buf: &mut [u8]) -> Result<&mut [u8; HEADER_SIZE], BatchError> {
    let available = buf.len();
    let h = buf
        .first_chunk_mut::<HEADER_SIZE>()
        .ok_or(BatchError::TooShort {
            needed: HEADER_SIZE,
            available,
        })?;
    let [magic] = get::<MAGIC_AT, 1>(h);
    let magic = i8::from_be_bytes([magic]);
    if magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(magic));
    }
    Ok(h)
}

/// Sets the base offset of the batch at the start of `buf`, in place. The field is outside
/// the CRC, so the CRC stays valid: this is how the leader assigns offsets to a client's
/// batch without touching its bytes otherwise.
///
/// # Errors
/// [`BatchError::TooShort`] if `buf` cannot hold a header, [`BatchError::BadMagic`] if it
/// is not a v2 batch. Nothing else is checked.
pub fn set_base_offset(buf: &mut [u8], offset: Offset) -> Result<(), BatchError> {
    put::<BASE_OFFSET_AT, 8>(header_mut(buf)?, offset.0.to_be_bytes());
    Ok(())
}

/// Sets the partition leader epoch of the batch at the start of `buf`, in place. Like the
/// base offset it is outside the CRC, which stays valid.
///
/// # Errors
/// As [`set_base_offset`].
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: Epoch) -> Result<(), BatchError> {
    put::<PARTITION_LEADER_EPOCH_AT, 4>(header_mut(buf)?, epoch.0.to_be_bytes());
    Ok(())
}

/// A zero-copy view of exactly one RecordBatch v2 whose frame (length, magic, codec) has
/// been checked, so every accessor is infallible.
#[derive(Clone, Copy)]
pub struct RecordBatch<'a> {
    /// The whole batch.
    bytes: &'a [u8],
    /// Its first [`HEADER_SIZE`] bytes.
    header: &'a [u8; HEADER_SIZE],
    /// The rest: the records section.
    records: &'a [u8],
    /// Decoded from the attributes at parse time, where an unknown codec is an error.
    compression: Compression,
}

/// The pieces of the batch framed at the start of a buffer.
struct Frame<'a> {
    bytes: &'a [u8],
    header: &'a [u8; HEADER_SIZE],
    records: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits off the batch at the start of `buf` by its length, and checks the magic.
    ///
    /// The magic is checked first, as soon as its byte is present: byte 16 is the magic in
    /// every Kafka message format, by design, so a legacy (magic 0/1) message is reported
    /// as [`BatchError::BadMagic`] (which a broker answers with
    /// `UNSUPPORTED_FOR_MESSAGE_FORMAT`) even though its shorter layout would otherwise
    /// fail the length check first.
    fn split(buf: &'a [u8]) -> Result<Frame<'a>, BatchError> {
        let available = buf.len();
        if let Some(&magic) = buf.get(MAGIC_AT) {
            let magic = i8::from_be_bytes([magic]);
            if magic != MAGIC_V2 {
                return Err(BatchError::BadMagic(magic));
            }
        }
        let size = peek_size(buf)?.ok_or(BatchError::TooShort {
            needed: HEADER_SIZE,
            available,
        })?;
        let (bytes, rest) = buf.split_at_checked(size).ok_or(BatchError::TooShort {
            needed: size,
            available,
        })?;
        // `size >= HEADER_SIZE` by `peek_size`, so this is the full header.
        let (header, records) =
            bytes
                .split_first_chunk::<HEADER_SIZE>()
                .ok_or(BatchError::TooShort {
                    needed: HEADER_SIZE,
                    available,
                })?;
        Ok(Frame {
            bytes,
            header,
            records,
            rest,
        })
    }

    fn check_crc(&self) -> Result<(), BatchError> {
        let stored = u32::from_be_bytes(get::<CRC_AT, 4>(self.header));
        let computed = crc_of(self.header, self.records);
        if stored == computed {
            Ok(())
        } else {
            Err(BatchError::BadCrc { stored, computed })
        }
    }

    fn into_batch(self) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        // The mask keeps 3 bits, so the cast is exact.
        let id = (i16_at::<ATTRIBUTES_AT>(self.header) & COMPRESSION_MASK) as u8;
        let compression = Compression::from_id(id).ok_or(BatchError::BadCompression(id))?;
        let batch = RecordBatch {
            bytes: self.bytes,
            header: self.header,
            records: self.records,
            compression,
        };
        Ok((batch, self.rest))
    }
}

impl<'a> RecordBatch<'a> {
    /// Parses the batch at the start of `buf`, checking its frame (length, magic, codec)
    /// and its CRC; returns it and the bytes after it.
    ///
    /// The CRC is checked before the codec: the attributes are covered by the CRC, so for
    /// corrupted bytes the CRC mismatch is the accurate diagnosis.
    ///
    /// # Errors
    /// [`BatchError::BadMagic`] (checked first, from 17 bytes on), [`BatchError::TooShort`]
    /// (more bytes may complete it), [`BatchError::BadLength`], [`BatchError::BadCrc`],
    /// [`BatchError::BadCompression`].
    pub fn parse(buf: &'a [u8]) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        let frame = Frame::split(buf)?;
        frame.check_crc()?;
        frame.into_batch()
    }

    /// Like [`RecordBatch::parse`] but without the CRC check, for bytes already verified
    /// (for example a log segment that recovery has scanned).
    ///
    /// # Errors
    /// As [`RecordBatch::parse`], except [`BatchError::BadCrc`].
    pub fn parse_unchecked_crc(buf: &'a [u8]) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        Frame::split(buf)?.into_batch()
    }

    /// The whole batch.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Total size in bytes: [`LOG_OVERHEAD`] + `batchLength`.
    #[must_use]
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
    /// `batchLength`: the bytes after the length field.
    #[must_use]
    pub fn batch_length(&self) -> i32 {
        i32_at::<BATCH_LENGTH_AT>(self.header)
    }
    /// `baseOffset`: the offset of the first record (as assigned by the leader; a client
    /// writes 0).
    #[must_use]
    pub fn base_offset(&self) -> Offset {
        Offset(i64_at::<BASE_OFFSET_AT>(self.header))
    }
    /// `lastOffsetDelta`.
    #[must_use]
    pub fn last_offset_delta(&self) -> i32 {
        i32_at::<LAST_OFFSET_DELTA_AT>(self.header)
    }
    /// Offset of the last record: base offset + last offset delta, saturating so that a
    /// corrupt header cannot overflow.
    #[must_use]
    pub fn last_offset(&self) -> Offset {
        Offset(
            self.base_offset()
                .0
                .saturating_add(i64::from(self.last_offset_delta())),
        )
    }
    /// Offset after the last record, where the next batch starts (saturating).
    #[must_use]
    pub fn next_offset(&self) -> Offset {
        Offset(self.last_offset().0.saturating_add(1))
    }
    /// `partitionLeaderEpoch`: the epoch of the leader that appended the batch.
    #[must_use]
    pub fn partition_leader_epoch(&self) -> Epoch {
        Epoch(i32_at::<PARTITION_LEADER_EPOCH_AT>(self.header))
    }
    /// `magic` (always [`MAGIC_V2`] for a parsed batch).
    #[must_use]
    pub fn magic(&self) -> i8 {
        i8::from_be_bytes(get::<MAGIC_AT, 1>(self.header))
    }
    /// The CRC stored in the header.
    #[must_use]
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes(get::<CRC_AT, 4>(self.header))
    }
    /// The CRC-32C of the bytes the CRC covers (attributes to the end).
    #[must_use]
    pub fn compute_crc(&self) -> u32 {
        crc_of(self.header, self.records)
    }
    /// `attributes`.
    #[must_use]
    pub fn attributes(&self) -> i16 {
        i16_at::<ATTRIBUTES_AT>(self.header)
    }
    /// The compression codec of the records.
    #[must_use]
    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// Whether timestamps are log-append time (set by the broker) rather than create time
    /// (set by the producer).
    #[must_use]
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }
    /// Whether the batch is part of a transaction.
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    /// Whether this is a control batch (a transaction marker), not user data.
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
    /// Whether the delete-horizon flag is set: compaction then stores the delete horizon in
    /// `baseTimestamp` (KIP-534).
    #[must_use]
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes() & DELETE_HORIZON_BIT != 0
    }
    /// `baseTimestamp`: record timestamps are deltas from it.
    #[must_use]
    pub fn base_timestamp(&self) -> i64 {
        i64_at::<BASE_TIMESTAMP_AT>(self.header)
    }
    /// `maxTimestamp`: the largest record timestamp, used by time indexes.
    #[must_use]
    pub fn max_timestamp(&self) -> i64 {
        i64_at::<MAX_TIMESTAMP_AT>(self.header)
    }
    /// `producerId` ([`NO_PRODUCER_ID`] if not idempotent).
    #[must_use]
    pub fn producer_id(&self) -> i64 {
        i64_at::<PRODUCER_ID_AT>(self.header)
    }
    /// `producerEpoch`.
    #[must_use]
    pub fn producer_epoch(&self) -> i16 {
        i16_at::<PRODUCER_EPOCH_AT>(self.header)
    }
    /// `baseSequence`: the idempotent producer's sequence number of the first record.
    #[must_use]
    pub fn base_sequence(&self) -> i32 {
        i32_at::<BASE_SEQUENCE_AT>(self.header)
    }
    /// `recordsCount` as declared in the header (not yet checked against the records).
    #[must_use]
    pub fn record_count(&self) -> i32 {
        i32_at::<RECORDS_COUNT_AT>(self.header)
    }
    /// The records section, compressed or not.
    #[must_use]
    pub fn records_bytes(&self) -> &'a [u8] {
        self.records
    }

    /// The records section decompressed: borrowed from the batch if it is uncompressed
    /// (the limit then does not apply: nothing is allocated), otherwise decompressed into
    /// a buffer of at most `limit_bytes` bytes. Iterate it with [`RecordBatch::records_in`].
    ///
    /// # Errors
    /// [`BatchError::DecompressedTooLarge`] if the records decompress to more than
    /// `limit_bytes`, [`BatchError::Decompress`] if they are not valid for the codec (see
    /// [`compression::decompress`]).
    pub fn decompressed_records(&self, limit_bytes: usize) -> Result<Cow<'a, [u8]>, BatchError> {
        if self.compression == Compression::None {
            return Ok(Cow::Borrowed(self.records));
        }
        compression::decompress(self.compression, self.records, limit_bytes).map(Cow::Owned)
    }

    /// The records of `records_bytes`, the decompressed records section of this batch (from
    /// [`RecordBatch::decompressed_records`]), decoded lazily with this batch's record count;
    /// see [`Records`] for what the iterator checks. For an uncompressed batch,
    /// `records_in(batch.records_bytes())` is [`RecordBatch::records`].
    ///
    /// # Errors
    /// [`BatchError::BadRecordCount`] if the record count is negative.
    pub fn records_in<'b>(&self, records_bytes: &'b [u8]) -> Result<Records<'b>, BatchError> {
        let count = self.record_count();
        if count < 0 {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta: self.last_offset_delta(),
            });
        }
        Ok(Records::new(records_bytes, count))
    }

    /// Checks what a batch from a client must satisfy beyond its frame: the CRC (again, so
    /// that batches from [`RecordBatch::parse_unchecked_crc`] are covered), at least one
    /// record, and `lastOffsetDelta == recordsCount - 1`, because a client numbers its
    /// records 0, 1, 2, ... without gaps. The produce path and log recovery rely on the
    /// last relation to compute offsets from the header alone.
    ///
    /// Batches rewritten by compaction may have gaps or no records and fail this; such
    /// batches never come from clients. Records are not decoded here: see
    /// [`RecordBatch::validate_records`].
    ///
    /// # Errors
    /// [`BatchError::BadCrc`] or [`BatchError::BadRecordCount`].
    pub fn validate(&self) -> Result<(), BatchError> {
        let computed = self.compute_crc();
        if computed != self.crc() {
            return Err(BatchError::BadCrc {
                stored: self.crc(),
                computed,
            });
        }
        let (count, last_offset_delta) = (self.record_count(), self.last_offset_delta());
        if count < 1 || i64::from(last_offset_delta) != i64::from(count) - 1 {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta,
            });
        }
        Ok(())
    }

    /// Decodes every record of an uncompressed batch and checks that there are exactly
    /// `recordsCount` of them, filling the records section, with offset deltas
    /// `0, 1, ..., recordsCount - 1`. Together with [`RecordBatch::validate`] this is
    /// everything a well-formed client batch satisfies.
    ///
    /// # Errors
    /// [`BatchError::Compressed`] (records cannot be checked without decompressing), the
    /// first error of [`RecordBatch::records`], or [`BatchError::BadOffsetDelta`].
    pub fn validate_records(&self) -> Result<(), BatchError> {
        check_offset_deltas(self.records()?)
    }

    /// [`RecordBatch::validate_records`] for the decompressed records section of a
    /// compressed batch (or the records section of an uncompressed one), from
    /// [`RecordBatch::decompressed_records`].
    ///
    /// # Errors
    /// The first error of [`RecordBatch::records_in`] or of its records, or
    /// [`BatchError::BadOffsetDelta`].
    pub fn validate_records_in(&self, records_bytes: &[u8]) -> Result<(), BatchError> {
        check_offset_deltas(self.records_in(records_bytes)?)
    }

    /// The records of an uncompressed batch, decoded lazily and without copying; see
    /// [`Records`] for what the iterator checks.
    ///
    /// # Errors
    /// [`BatchError::Compressed`] for a compressed batch, [`BatchError::BadRecordCount`] if
    /// the record count is negative.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        if self.compression != Compression::None {
            return Err(BatchError::Compressed(self.compression));
        }
        let count = self.record_count();
        if count < 0 {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta: self.last_offset_delta(),
            });
        }
        Ok(Records::new(self.records, count))
    }
}

/// Requires every record to decode and offset deltas `0, 1, ..., count - 1`.
fn check_offset_deltas(records: Records<'_>) -> Result<(), BatchError> {
    for (index, r) in (0_i32..).zip(records) {
        let delta = r?.offset_delta;
        if delta != index {
            return Err(BatchError::BadOffsetDelta { index, delta });
        }
    }
    Ok(())
}

impl fmt::Debug for RecordBatch<'_> {
    /// The header fields, not the bytes: a batch can be megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatch")
            .field("base_offset", &self.base_offset())
            .field("last_offset_delta", &self.last_offset_delta())
            .field("size", &self.size())
            .field("partition_leader_epoch", &self.partition_leader_epoch())
            .field("crc", &format_args!("{:#010x}", self.crc()))
            .field("attributes", &format_args!("{:#06x}", self.attributes()))
            .field("compression", &self.compression)
            .field("base_timestamp", &self.base_timestamp())
            .field("max_timestamp", &self.max_timestamp())
            .field("producer_id", &self.producer_id())
            .field("producer_epoch", &self.producer_epoch())
            .field("base_sequence", &self.base_sequence())
            .field("record_count", &self.record_count())
            .finish()
    }
}

/// Iterates the consecutive batches in `buf` (a log segment, a fetch response's records),
/// each CRC-checked by [`RecordBatch::parse`].
pub fn batches(buf: &[u8]) -> Batches<'_> {
    Batches {
        rest: buf,
        position: 0,
        failed: false,
    }
}

/// Iterator over consecutive batches, from [`batches`].
///
/// Yields each batch, then stops at the end of the buffer or after yielding the first
/// error: once a batch cannot be framed, nothing after it can be located. A buffer that
/// ends inside a batch yields [`BatchError::TooShort`] last (Kafka fetch responses may end
/// with a partial batch; a log file may end with a torn write).
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Bytes consumed by the valid batches yielded so far: where the next batch (or the
    /// error) starts. After an error, the length of the cleanly readable prefix, which is
    /// where log recovery truncates.
    #[must_use]
    pub fn position(&self) -> usize {
        self.position
    }

    /// The bytes from [`Batches::position`] on.
    #[must_use]
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<RecordBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match RecordBatch::parse(self.rest) {
            Ok((batch, rest)) => {
                self.position = self.position.saturating_add(batch.size());
                self.rest = rest;
                Some(Ok(batch))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Batches<'_> {}
