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
//! | 61 | records | |
//!
//! Because base offset and leader epoch sit outside the CRC, the broker assigns offsets and
//! stamps its epoch in place and stores the client's bytes as sent.

use crate::types::{Epoch, Offset};

/// Bytes of the batch header, up to the first record.
pub const HEADER_SIZE: usize = 61;
/// Bytes before `batchLength` counts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// The only magic this crate reads.
pub const MAGIC_V2: i8 = 2;

const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the structure needs.
    #[error("batch truncated: needed {needed} bytes, have {available}")]
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `batchLength` is below the header size or negative.
    #[error("bad batch length {0}")]
    BadLength(i32),
    /// Not magic 2.
    #[error("unsupported magic {0} (only RecordBatch v2 is accepted)")]
    BadMagic(i8),
    /// The CRC does not match.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// Record count and last offset delta disagree, or either is out of range.
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    BadRecordCount {
        /// `recordsCount`.
        count: i32,
        /// `lastOffsetDelta`.
        last_offset_delta: i32,
    },
    /// A record's offset delta is not its index.
    #[error("record {index} has offset delta {delta}")]
    BadOffsetDelta {
        /// The record's index in the batch.
        index: i32,
        /// Its offset delta.
        delta: i32,
    },
    /// Compression bits 5-7 are not a codec.
    #[error("unknown compression codec {0}")]
    BadCompression(u8),
    /// Records of a compressed batch cannot be iterated without decompressing.
    #[error("records are compressed with {0:?}")]
    Compressed(Compression),
    /// A record is malformed.
    #[error("record {index} is malformed: {reason}")]
    BadRecord {
        /// The record's index in the batch.
        index: i32,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes follow the single batch expected.
    #[error("trailing bytes after the batch")]
    TrailingBytes,
}

/// Compression codec of a batch's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as is.
    None,
    /// gzip.
    Gzip,
    /// snappy (xerial framing).
    Snappy,
    /// lz4 (frame format).
    Lz4,
    /// zstd.
    Zstd,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0_u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The total size of the batch at the start of `buf`, from its length field: `Ok(None)` if
/// fewer than 12 bytes are present, an error if the length cannot be a batch's.
///
/// # Errors
/// [`BatchError::BadLength`].
pub fn peek_size(buf: &[u8]) -> Result<Option<usize>, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Ok(None);
    }
    let len = be_i32(buf, 8);
    if len < (HEADER_SIZE - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(len));
    }
    Ok(Some(LOG_OVERHEAD + len as usize))
}

/// Sets the base offset of the batch at the start of `buf`, in place. The CRC stays valid.
///
/// # Errors
/// [`BatchError::TooShort`] if `buf` cannot hold a header.
pub fn set_base_offset(buf: &mut [u8], offset: Offset) -> Result<(), BatchError> {
    let slot = buf.get_mut(0..8).ok_or(BatchError::TooShort {
        needed: HEADER_SIZE,
        available: 0,
    })?;
    slot.copy_from_slice(&offset.0.to_be_bytes());
    Ok(())
}

/// Sets the partition leader epoch of the batch at the start of `buf`, in place. The CRC
/// stays valid.
///
/// # Errors
/// [`BatchError::TooShort`] if `buf` cannot hold a header.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: Epoch) -> Result<(), BatchError> {
    let available = buf.len();
    let slot = buf.get_mut(12..16).ok_or(BatchError::TooShort {
        needed: HEADER_SIZE,
        available,
    })?;
    slot.copy_from_slice(&epoch.0.to_be_bytes());
    Ok(())
}

/// A zero-copy view of exactly one RecordBatch v2.
#[derive(Clone, Copy, Debug)]
pub struct RecordBatch<'a> {
    bytes: &'a [u8],
}

impl<'a> RecordBatch<'a> {
    /// Parses the batch at the start of `buf`, checking its structure and CRC; returns it
    /// and the bytes after it.
    ///
    /// # Errors
    /// Any structural [`BatchError`], or [`BatchError::BadCrc`].
    pub fn parse(buf: &'a [u8]) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        let (b, rest) = Self::parse_unchecked_crc(buf)?;
        let computed = b.compute_crc();
        if computed != b.crc() {
            return Err(BatchError::BadCrc {
                stored: b.crc(),
                computed,
            });
        }
        Ok((b, rest))
    }

    /// Like [`RecordBatch::parse`] but without the CRC check (for data already verified).
    ///
    /// # Errors
    /// Any structural [`BatchError`].
    pub fn parse_unchecked_crc(buf: &'a [u8]) -> Result<(RecordBatch<'a>, &'a [u8]), BatchError> {
        let size = peek_size(buf)?.ok_or(BatchError::TooShort {
            needed: LOG_OVERHEAD,
            available: buf.len(),
        })?;
        if buf.len() < size {
            return Err(BatchError::TooShort {
                needed: size,
                available: buf.len(),
            });
        }
        let (bytes, rest) = buf.split_at(size);
        let magic = bytes[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let b = RecordBatch { bytes };
        let codec = (b.attributes() & 0x7) as u8;
        if codec > 4 {
            return Err(BatchError::BadCompression(codec));
        }
        Ok((b, rest))
    }

    /// The whole batch.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Total size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
    /// `batchLength`.
    #[must_use]
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, 8)
    }
    /// `baseOffset`.
    #[must_use]
    pub fn base_offset(&self) -> Offset {
        Offset(be_i64(self.bytes, 0))
    }
    /// `lastOffsetDelta`.
    #[must_use]
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, 23)
    }
    /// Offset of the last record.
    #[must_use]
    pub fn last_offset(&self) -> Offset {
        self.base_offset().add(i64::from(self.last_offset_delta()))
    }
    /// Offset after the last record.
    #[must_use]
    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }
    /// `partitionLeaderEpoch`.
    #[must_use]
    pub fn partition_leader_epoch(&self) -> Epoch {
        Epoch(be_i32(self.bytes, 12))
    }
    /// `magic`.
    #[must_use]
    pub fn magic(&self) -> i8 {
        self.bytes[16] as i8
    }
    /// The stored CRC.
    #[must_use]
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes([
            self.bytes[CRC_AT],
            self.bytes[CRC_AT + 1],
            self.bytes[CRC_AT + 2],
            self.bytes[CRC_AT + 3],
        ])
    }
    /// The CRC-32C of the bytes it covers.
    #[must_use]
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..])
    }
    /// `attributes`.
    #[must_use]
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, ATTRIBUTES_AT)
    }
    /// The compression codec.
    #[must_use]
    pub fn compression(&self) -> Compression {
        match self.attributes() & 0x7 {
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => Compression::None,
        }
    }
    /// Timestamps are log-append time rather than create time.
    #[must_use]
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes() & 0x8 != 0
    }
    /// Part of a transaction.
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes() & 0x10 != 0
    }
    /// A control batch (transaction marker).
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes() & 0x20 != 0
    }
    /// `baseTimestamp`.
    #[must_use]
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, 27)
    }
    /// `maxTimestamp`.
    #[must_use]
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, 35)
    }
    /// `producerId`.
    #[must_use]
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, 43)
    }
    /// `producerEpoch`.
    #[must_use]
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, 51)
    }
    /// `baseSequence`.
    #[must_use]
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, 53)
    }
    /// `recordsCount`.
    #[must_use]
    pub fn record_count(&self) -> i32 {
        be_i32(self.bytes, 57)
    }
    /// The records section (compressed or not).
    #[must_use]
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_SIZE..]
    }

    /// Checks what a client batch must satisfy beyond structure: the CRC, and a record
    /// count of at least one equal to `lastOffsetDelta + 1` (clients never send gaps).
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
        let (count, delta) = (self.record_count(), self.last_offset_delta());
        if count < 1 || delta < 0 || i64::from(delta) + 1 != i64::from(count) {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta: delta,
            });
        }
        Ok(())
    }

    /// Iterates every record of an uncompressed batch, checking offset deltas are
    /// `0..count` and that the records fill the batch exactly.
    ///
    /// # Errors
    /// The first malformed record, [`BatchError::Compressed`], or a count mismatch.
    pub fn validate_records(&self) -> Result<(), BatchError> {
        for (n, r) in (0_i32..).zip(self.records()?) {
            let r = r?;
            if r.offset_delta != n {
                return Err(BatchError::BadOffsetDelta {
                    index: n,
                    delta: r.offset_delta,
                });
            }
        }
        Ok(())
    }

    /// The records of an uncompressed batch.
    ///
    /// # Errors
    /// [`BatchError::Compressed`] for a compressed batch.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        match self.compression() {
            Compression::None => Ok(Records {
                rest: self.records_bytes(),
                index: 0,
                count: self.record_count(),
                done: false,
            }),
            c => Err(BatchError::Compressed(c)),
        }
    }
}

/// One record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The key (not nullable).
    pub key: &'a [u8],
    /// The value (nullable).
    pub value: Option<&'a [u8]>,
}

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Record attributes (unused by Kafka today).
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// The key, or `None` for null.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in order, repeated keys kept.
    pub headers: Vec<Header<'a>>,
}

/// Iterator over the records of an uncompressed batch.
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    index: i32,
    count: i32,
    done: bool,
}

/// Reads a zigzag varint of at most `max_bytes` bytes.
fn varint(buf: &mut &[u8], max_bytes: u32) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i + 1 == max_bytes && max_bytes == 5 && b > 0x0f {
                return None; // more than 32 bits
            }
            if i + 1 == max_bytes && max_bytes == 10 && b > 0x01 {
                return None; // more than 64 bits
            }
            if i > 0 && b == 0 {
                return None; // overlong encoding
            }
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

fn varint32(buf: &mut &[u8]) -> Option<i32> {
    varint(buf, 5).and_then(|v| i32::try_from(v).ok())
}

fn bytes_field<'a>(buf: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let len = varint32(buf)?;
    if len == -1 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    if buf.len() < len {
        return None;
    }
    let (v, rest) = buf.split_at(len);
    *buf = rest;
    Some(Some(v))
}

fn parse_record<'a>(body: &'a [u8]) -> Result<Record<'a>, &'static str> {
    let mut b = body;
    let (&attributes, rest) = b.split_first().ok_or("missing attributes")?;
    b = rest;
    let timestamp_delta = varint(&mut b, 10).ok_or("bad timestamp delta")?;
    let offset_delta = varint32(&mut b).ok_or("bad offset delta")?;
    let key = bytes_field(&mut b).ok_or("bad key")?;
    let value = bytes_field(&mut b).ok_or("bad value")?;
    let n = varint32(&mut b).ok_or("bad header count")?;
    let n = usize::try_from(n).map_err(|_| "negative header count")?;
    if n > b.len() {
        return Err("header count exceeds the record");
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let key = bytes_field(&mut b)
            .ok_or("bad header key")?
            .ok_or("null header key")?;
        let value = bytes_field(&mut b).ok_or("bad header value")?;
        headers.push(Header { key, value });
    }
    if !b.is_empty() {
        return Err("bytes left inside the record");
    }
    Ok(Record {
        attributes: attributes as i8,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let index = self.index;
        let fail = |s: &mut Self, reason| {
            s.done = true;
            Some(Err(BatchError::BadRecord { index, reason }))
        };
        if self.index >= self.count {
            self.done = true;
            if !self.rest.is_empty() {
                return Some(Err(BatchError::BadRecord {
                    index,
                    reason: "bytes after the last record",
                }));
            }
            return None;
        }
        let mut b = self.rest;
        let Some(len) = varint32(&mut b) else {
            return fail(self, "bad record length");
        };
        let Ok(len) = usize::try_from(len) else {
            return fail(self, "negative record length");
        };
        if len > b.len() {
            return fail(self, "record length exceeds the batch");
        }
        let (body, rest) = b.split_at(len);
        self.rest = rest;
        self.index += 1;
        match parse_record(body) {
            Ok(r) => Some(Ok(r)),
            Err(reason) => fail(self, reason),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_varint(out, -1),
        Some(v) => {
            put_varint(out, v.len() as i64);
            out.extend_from_slice(v);
        }
    }
}

/// Builds uncompressed batches, for tests and the client.
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    base_offset: Offset,
    epoch: Epoch,
    base_timestamp: i64,
    max_timestamp: Option<i64>,
    attributes: i16,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    count: i32,
}

impl RecordBatchBuilder {
    /// An empty batch at `base_offset`, no producer, epoch -1, timestamp 0.
    #[must_use]
    pub fn new(base_offset: Offset) -> RecordBatchBuilder {
        RecordBatchBuilder {
            base_offset,
            epoch: Epoch::NONE,
            base_timestamp: 0,
            max_timestamp: None,
            attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            count: 0,
        }
    }
    /// Sets the partition leader epoch.
    pub fn partition_leader_epoch(&mut self, epoch: Epoch) -> &mut Self {
        self.epoch = epoch;
        self
    }
    /// Sets the base timestamp.
    pub fn base_timestamp(&mut self, ts: i64) -> &mut Self {
        self.base_timestamp = ts;
        self
    }
    /// Sets the idempotent producer fields.
    pub fn producer(&mut self, id: i64, epoch: i16, base_sequence: i32) -> &mut Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }
    /// Marks the batch transactional.
    pub fn transactional(&mut self, on: bool) -> &mut Self {
        self.attributes = if on {
            self.attributes | 0x10
        } else {
            self.attributes & !0x10
        };
        self
    }
    /// Marks the batch a control batch.
    pub fn control(&mut self, on: bool) -> &mut Self {
        self.attributes = if on {
            self.attributes | 0x20
        } else {
            self.attributes & !0x20
        };
        self
    }
    /// Marks timestamps as log-append time.
    pub fn log_append_time(&mut self, on: bool) -> &mut Self {
        self.attributes = if on {
            self.attributes | 0x8
        } else {
            self.attributes & !0x8
        };
        self
    }
    /// Adds a record.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        timestamp_delta: i64,
    ) -> &mut Self {
        let mut body =
            Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        body.push(0);
        put_varint(&mut body, timestamp_delta);
        put_varint(&mut body, i64::from(self.count));
        put_bytes(&mut body, key);
        put_bytes(&mut body, value);
        put_varint(&mut body, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(&mut body, Some(k));
            put_bytes(&mut body, *v);
        }
        put_varint(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(&body);
        let ts = self.base_timestamp.saturating_add(timestamp_delta);
        self.max_timestamp = Some(self.max_timestamp.map_or(ts, |m| m.max(ts)));
        self.count += 1;
        self
    }
    /// The encoded batch.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + self.records.len());
        out.extend_from_slice(&self.base_offset.0.to_be_bytes());
        let len = (HEADER_SIZE - LOG_OVERHEAD + self.records.len()) as i32;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&(self.count - 1).max(0).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(
            &self
                .max_timestamp
                .unwrap_or(self.base_timestamp)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.records);
        let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}
