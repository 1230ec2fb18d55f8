//! Encoding batches, compressed or not, for tests and the client.

use std::borrow::Cow;

use super::compression::compress;
use super::varint::{varint_size, varlong_size, write_varint, write_varlong};
use super::{
    crc_of, put, BatchError, Compression, ATTRIBUTES_AT, BASE_OFFSET_AT, BASE_SEQUENCE_AT,
    BASE_TIMESTAMP_AT, BATCH_LENGTH_AT, COMPRESSION_MASK, CONTROL_BIT, CRC_AT, HEADER_SIZE,
    LAST_OFFSET_DELTA_AT, MAGIC_AT, MAGIC_V2, MAX_TIMESTAMP_AT, MIN_BATCH_LENGTH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP, PARTITION_LEADER_EPOCH_AT,
    PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORDS_COUNT_AT, TIMESTAMP_TYPE_BIT, TRANSACTIONAL_BIT,
};
use crate::types::{Epoch, Offset};

/// Builds a RecordBatch v2: push records, then [`RecordBatchBuilder::build`] computes the
/// length, `lastOffsetDelta`, `maxTimestamp`, the count and the CRC, after compressing the
/// records if a codec was set with [`RecordBatchBuilder::compression`].
///
/// Records get offset deltas 0, 1, 2, ... in push order, as a client numbers them. Any
/// flag combination can be set, including a control batch, so tests can build batches the
/// broker must reject.
///
/// ```
/// use lode_proto::batch::{RecordBatch, RecordBatchBuilder};
/// use lode_proto::Offset;
///
/// let mut b = RecordBatchBuilder::new(Offset(0));
/// b.base_timestamp(1_700_000_000_000)
///     .push(Some(b"key"), Some(b"value"), &[], 0)
///     .push(None, None, &[(b"trace", Some(b"abc"))], 5);
/// let bytes = b.build();
/// let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
/// assert!(rest.is_empty());
/// assert_eq!(batch.record_count(), 2);
/// assert_eq!(batch.max_timestamp(), 1_700_000_000_005);
/// ```
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    base_offset: Offset,
    partition_leader_epoch: Epoch,
    base_timestamp: i64,
    /// The largest record timestamp so far, `None` before the first record.
    max_timestamp: Option<i64>,
    attributes: i16,
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// Room for the header (filled in by [`RecordBatchBuilder::try_finish`]), then the
    /// encoded records section.
    buf: Vec<u8>,
    count: usize,
}

impl RecordBatchBuilder {
    /// An empty batch at `base_offset`, with no leader epoch ([`Epoch::NONE`]), base
    /// timestamp 0, no producer id, create-time timestamps and no flags.
    #[must_use]
    pub fn new(base_offset: Offset) -> RecordBatchBuilder {
        RecordBatchBuilder {
            base_offset,
            partition_leader_epoch: Epoch::NONE,
            base_timestamp: 0,
            max_timestamp: None,
            attributes: 0,
            compression: Compression::None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            buf: vec![0; HEADER_SIZE],
            count: 0,
        }
    }

    /// Reserves room for `bytes` more bytes of records, so pushing them does not grow the
    /// buffer step by step (each step a copy).
    pub fn reserve(&mut self, bytes: usize) -> &mut Self {
        self.buf.reserve(bytes);
        self
    }

    fn records(&self) -> &[u8] {
        self.buf.get(HEADER_SIZE..).unwrap_or_default()
    }

    /// Sets the partition leader epoch.
    pub fn partition_leader_epoch(&mut self, epoch: Epoch) -> &mut Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Sets the base timestamp that record timestamp deltas are relative to. Set it before
    /// pushing: the max timestamp is computed from it as records are pushed.
    pub fn base_timestamp(&mut self, ts: i64) -> &mut Self {
        // Keep the max timestamp consistent if records were pushed already.
        if let Some(max) = self.max_timestamp {
            let delta = max.saturating_sub(self.base_timestamp);
            self.max_timestamp = Some(ts.saturating_add(delta));
        }
        self.base_timestamp = ts;
        self
    }

    /// Sets the idempotent producer fields: id, epoch and the sequence of the first record.
    pub fn producer(&mut self, id: i64, epoch: i16, base_sequence: i32) -> &mut Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    fn flag(&mut self, bit: i16, on: bool) -> &mut Self {
        if on {
            self.attributes |= bit;
        } else {
            self.attributes &= !bit;
        }
        self
    }

    /// Marks the batch transactional (or not).
    pub fn transactional(&mut self, on: bool) -> &mut Self {
        self.flag(TRANSACTIONAL_BIT, on)
    }

    /// Marks the batch a control batch (or not). The records are written as pushed; no
    /// control-record schema is imposed.
    pub fn control(&mut self, on: bool) -> &mut Self {
        self.flag(CONTROL_BIT, on)
    }

    /// Sets the timestamp type: log-append time if `on`, create time (the default) if not.
    pub fn log_append_time(&mut self, on: bool) -> &mut Self {
        self.flag(TIMESTAMP_TYPE_BIT, on)
    }

    /// Sets the codec the records section is compressed with when the batch is built
    /// ([`Compression::None`], the default, stores it as is). The attributes name it and
    /// the CRC covers the compressed bytes.
    pub fn compression(&mut self, codec: Compression) -> &mut Self {
        self.compression = codec;
        self
    }

    /// Appends a record with the next offset delta. Header keys may repeat; their order
    /// is kept.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        timestamp_delta: i64,
    ) -> &mut Self {
        let index = saturate(self.count);
        let body_len = 1
            + varlong_size(timestamp_delta)
            + varint_size(index)
            + nullable_size(key)
            + nullable_size(value)
            + varint_size(saturate(headers.len()))
            + headers
                .iter()
                .map(|(k, v)| nullable_size(Some(k)) + nullable_size(*v))
                .sum::<usize>();
        let out = &mut self.buf;
        out.reserve(varint_size(saturate(body_len)) + body_len);
        write_varint(out, saturate(body_len));
        out.push(0); // record attributes: none are defined
        write_varlong(out, timestamp_delta);
        write_varint(out, index);
        put_nullable(out, key);
        put_nullable(out, value);
        write_varint(out, saturate(headers.len()));
        for (k, v) in headers {
            put_nullable(out, Some(k));
            put_nullable(out, *v);
        }

        let ts = self.base_timestamp.saturating_add(timestamp_delta);
        self.max_timestamp = Some(self.max_timestamp.map_or(ts, |m| m.max(ts)));
        self.count = self.count.saturating_add(1);
        self
    }

    /// Records pushed so far.
    #[must_use]
    pub fn record_count(&self) -> usize {
        self.count
    }

    /// The size in bytes [`RecordBatchBuilder::build`] would return without compression,
    /// so a client can cap its batches. With a codec set, the built batch is usually
    /// smaller (and at worst a few bytes per 32 KiB larger, for incompressible records).
    #[must_use]
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The encoded batch, its records compressed with the codec set (if any).
    ///
    /// # Errors
    /// [`BatchError::TooLarge`] if the batch exceeds what `batchLength` can describe (about
    /// 2 GiB) or has more than `i32::MAX` records. Any length that saturated while pushing
    /// implies one of these, so a batch that builds is exactly what was pushed.
    /// [`BatchError::Compress`] if the encoder fails.
    pub fn try_build(&self) -> Result<Vec<u8>, BatchError> {
        let too_large = || BatchError::TooLarge {
            size: self.size(),
            records: self.count,
        };
        let count = i32::try_from(self.count).map_err(|_| too_large())?;
        let records: Cow<'_, [u8]> = match self.compression {
            Compression::None => Cow::Borrowed(self.records()),
            codec => Cow::Owned(compress(codec, self.records())?),
        };
        let batch_length = i32::try_from(records.len())
            .ok()
            .and_then(|l| l.checked_add(MIN_BATCH_LENGTH))
            .ok_or_else(too_large)?;

        let h = self.header(batch_length, count, &records);
        let mut out = Vec::with_capacity(HEADER_SIZE + records.len());
        out.extend_from_slice(&h);
        out.extend_from_slice(&records);
        Ok(out)
    }

    /// The batch header for `records`, CRC included.
    fn header(&self, batch_length: i32, count: i32, records: &[u8]) -> [u8; HEADER_SIZE] {
        let mut h = [0_u8; HEADER_SIZE];
        put::<BASE_OFFSET_AT, 8>(&mut h, self.base_offset.0.to_be_bytes());
        put::<BATCH_LENGTH_AT, 4>(&mut h, batch_length.to_be_bytes());
        put::<PARTITION_LEADER_EPOCH_AT, 4>(&mut h, self.partition_leader_epoch.0.to_be_bytes());
        put::<MAGIC_AT, 1>(&mut h, MAGIC_V2.to_be_bytes());
        let attributes = (self.attributes & !COMPRESSION_MASK) | i16::from(self.compression.id());
        put::<ATTRIBUTES_AT, 2>(&mut h, attributes.to_be_bytes());
        // -1 for an empty batch, keeping `lastOffsetDelta == recordsCount - 1`.
        put::<LAST_OFFSET_DELTA_AT, 4>(&mut h, (count - 1).to_be_bytes());
        put::<BASE_TIMESTAMP_AT, 8>(&mut h, self.base_timestamp.to_be_bytes());
        let max_ts = self.max_timestamp.unwrap_or(NO_TIMESTAMP);
        put::<MAX_TIMESTAMP_AT, 8>(&mut h, max_ts.to_be_bytes());
        put::<PRODUCER_ID_AT, 8>(&mut h, self.producer_id.to_be_bytes());
        put::<PRODUCER_EPOCH_AT, 2>(&mut h, self.producer_epoch.to_be_bytes());
        put::<BASE_SEQUENCE_AT, 4>(&mut h, self.base_sequence.to_be_bytes());
        put::<RECORDS_COUNT_AT, 4>(&mut h, count.to_be_bytes());
        let crc = crc_of(&h, records);
        put::<CRC_AT, 4>(&mut h, crc.to_be_bytes());
        h
    }

    /// The encoded batch, like [`RecordBatchBuilder::try_build`], but consuming the builder:
    /// without compression the records are not copied again, the header is written in
    /// front of them.
    ///
    /// # Errors
    /// As [`RecordBatchBuilder::try_build`].
    pub fn try_finish(mut self) -> Result<Vec<u8>, BatchError> {
        if self.compression != Compression::None {
            return self.try_build();
        }
        let records_len = self.records().len();
        let batch_length = i32::try_from(records_len)
            .ok()
            .and_then(|l| l.checked_add(MIN_BATCH_LENGTH));
        let count = i32::try_from(self.count).ok();
        let (Some(batch_length), Some(count)) = (batch_length, count) else {
            return self.try_build();
        };
        let h = self.header(batch_length, count, self.records());
        self.buf[..HEADER_SIZE].copy_from_slice(&h);
        Ok(self.buf)
    }

    /// The encoded batch, for callers that keep batches far below 2 GiB (tests, and a
    /// client enforcing a batch size limit through [`RecordBatchBuilder::size`]).
    ///
    /// # Panics
    /// If [`RecordBatchBuilder::try_build`] fails: the batch is too large to encode.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        match self.try_build() {
            Ok(bytes) => bytes,
            Err(e) => panic!("RecordBatchBuilder::build: {e}"),
        }
    }
}

/// A length or count as a varint. Saturation only happens past 2 GiB, which
/// [`RecordBatchBuilder::try_build`] then rejects.
fn saturate(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn nullable_size(v: Option<&[u8]>) -> usize {
    match v {
        None => 1,
        Some(v) => varint_size(saturate(v.len())) + v.len(),
    }
}

fn put_nullable(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => write_varint(out, -1),
        Some(v) => {
            write_varint(out, saturate(v.len()));
            out.extend_from_slice(v);
        }
    }
}
