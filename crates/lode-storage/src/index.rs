//! Sparse indexes of one segment, kept in memory and written to disk when the segment is
//! sealed or the log closes.
//!
//! - The offset index maps a record offset to the byte position of the batch that holds
//!   it, one entry per `index_interval_bytes` of log.
//! - The time index maps the largest timestamp seen so far to the first offset of the batch
//!   that raised it, at the same interval.
//!
//! An index file ends with a trailer that records the segment size, end offset and largest
//! timestamp the index was built for, and a CRC-32C. Recovery uses an index file only when
//! the trailer matches the segment exactly; otherwise it rebuilds the index by scanning.

use lode_proto::Offset;

const TRAILER_MAGIC: u32 = 0x4c_4f_44_49; // "LODI"
const TRAILER_LEN: usize = 4 + 8 + 8 + 8 + 4 + 4;

/// One offset-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// The batch's base offset.
    pub offset: Offset,
    /// Its byte position in the segment.
    pub position: u32,
}

/// One time-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// The largest timestamp in the segment up to and including this batch.
    pub timestamp_ms: i64,
    /// The base offset of the batch that raised it.
    pub offset: Offset,
}

/// What an index file was built for; the trailer of every index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexMeta {
    /// Bytes of the segment covered.
    pub segment_size: u64,
    /// The offset after the segment's last record.
    pub next_offset: Offset,
    /// The segment's largest timestamp (`i64::MIN` when empty).
    pub max_timestamp_ms: i64,
}

/// The two sparse indexes of a segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// Offset index entries, offsets and positions strictly increasing.
    pub offsets: Vec<OffsetEntry>,
    /// Time index entries, timestamps and offsets strictly increasing.
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    last_time: Option<i64>,
}

impl SegmentIndex {
    /// Records a batch appended at `position` and maybe adds entries, every `interval`
    /// bytes. The first batch of a segment always gets an entry.
    pub fn on_batch(
        &mut self,
        offset: Offset,
        position: u32,
        size: u32,
        max_timestamp_ms: i64,
        interval: u64,
    ) {
        let first = self.offsets.is_empty();
        if first || self.bytes_since_entry >= interval {
            self.offsets.push(OffsetEntry { offset, position });
            self.bytes_since_entry = 0;
            if self.last_time.is_none_or(|t| max_timestamp_ms > t) {
                self.times.push(TimeEntry {
                    timestamp_ms: max_timestamp_ms,
                    offset,
                });
            }
        }
        if self.last_time.is_none_or(|t| max_timestamp_ms > t) {
            self.last_time = Some(max_timestamp_ms);
        }
        self.bytes_since_entry += u64::from(size);
    }

    /// The position to start scanning from for `offset`: the last entry at or below it.
    #[must_use]
    pub fn lookup(&self, offset: Offset) -> Option<OffsetEntry> {
        let i = self.offsets.partition_point(|e| e.offset <= offset);
        i.checked_sub(1).map(|i| self.offsets[i])
    }

    /// The offset to start scanning from for the first record with timestamp >= `ts`.
    #[must_use]
    pub fn lookup_time(&self, ts: i64) -> Option<Offset> {
        let i = self.times.partition_point(|e| e.timestamp_ms < ts);
        i.checked_sub(1).map(|i| self.times[i].offset)
    }

    /// Encodes the offset index file for a segment starting at `base`.
    #[must_use]
    pub fn encode_offsets(&self, base: Offset, meta: IndexMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * 8 + TRAILER_LEN);
        for e in &self.offsets {
            out.extend_from_slice(&relative(base, e.offset).to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        trailer(&mut out, meta, self.offsets.len());
        out
    }

    /// Encodes the time index file for a segment starting at `base`.
    #[must_use]
    pub fn encode_times(&self, base: Offset, meta: IndexMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * 12 + TRAILER_LEN);
        for e in &self.times {
            out.extend_from_slice(&e.timestamp_ms.to_be_bytes());
            out.extend_from_slice(&relative(base, e.offset).to_be_bytes());
        }
        trailer(&mut out, meta, self.times.len());
        out
    }

    /// Decodes both index files of a segment of `segment_size` bytes, or `None` if either
    /// is damaged, was built for another size, or breaks the ordering invariants.
    #[must_use]
    pub fn decode(
        base: Offset,
        offsets: &[u8],
        times: &[u8],
        segment_size: u64,
    ) -> Option<(SegmentIndex, IndexMeta)> {
        let (body, n, meta) = check_trailer(offsets)?;
        let (tbody, tn, tmeta) = check_trailer(times)?;
        if meta != tmeta
            || meta.segment_size != segment_size
            || body.len() != n * 8
            || tbody.len() != tn * 12
        {
            return None;
        }
        let mut index = SegmentIndex::default();
        for c in body.chunks_exact(8) {
            let rel = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let position = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            index.offsets.push(OffsetEntry {
                offset: base.add(i64::from(rel)),
                position,
            });
        }
        for c in tbody.chunks_exact(12) {
            let ts = i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            let rel = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
            index.times.push(TimeEntry {
                timestamp_ms: ts,
                offset: base.add(i64::from(rel)),
            });
        }
        let ordered =
            index
                .offsets
                .windows(2)
                .all(|w| w[0].offset < w[1].offset && w[0].position < w[1].position)
                && index
                    .times
                    .windows(2)
                    .all(|w| w[0].timestamp_ms < w[1].timestamp_ms && w[0].offset < w[1].offset)
                && index.offsets.iter().all(|e| {
                    u64::from(e.position) < meta.segment_size && e.offset < meta.next_offset
                })
                && index.times.iter().all(|e| {
                    e.offset < meta.next_offset && e.timestamp_ms <= meta.max_timestamp_ms
                })
                && meta.next_offset >= base
                && (segment_size == 0) == index.offsets.is_empty()
                && index
                    .offsets
                    .first()
                    .is_none_or(|e| e.position == 0 && e.offset == base);
        if !ordered {
            return None;
        }
        // Resume exactly where an incremental build would be, so that appends after a reopen
        // index the same batches a full scan would.
        index.last_time = (segment_size > 0).then_some(meta.max_timestamp_ms);
        index.bytes_since_entry = index
            .offsets
            .last()
            .map_or(0, |e| segment_size - u64::from(e.position));
        Some((index, meta))
    }
}

fn relative(base: Offset, offset: Offset) -> u32 {
    // Segments roll before a relative offset would leave u32 (see Log::append).
    u32::try_from(offset.0 - base.0).unwrap_or(u32::MAX)
}

fn trailer(out: &mut Vec<u8>, meta: IndexMeta, count: usize) {
    out.extend_from_slice(&TRAILER_MAGIC.to_be_bytes());
    out.extend_from_slice(&meta.segment_size.to_be_bytes());
    out.extend_from_slice(&meta.next_offset.0.to_be_bytes());
    out.extend_from_slice(&meta.max_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn check_trailer(bytes: &[u8]) -> Option<(&[u8], usize, IndexMeta)> {
    let split = bytes.len().checked_sub(TRAILER_LEN)?;
    let (body, t) = bytes.split_at(split);
    let crc_pos = bytes.len() - 4;
    if crc32c::crc32c(&bytes[..crc_pos]).to_be_bytes() != bytes[crc_pos..] {
        return None;
    }
    let mut r = crate::checkpoint::Reader(t);
    if r.u32()? != TRAILER_MAGIC {
        return None;
    }
    let meta = IndexMeta {
        segment_size: r.u64()?,
        next_offset: Offset(r.i64()?),
        max_timestamp_ms: r.i64()?,
    };
    let count = r.u32()? as usize;
    Some((body, count, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_every_interval_and_lookup() {
        let mut ix = SegmentIndex::default();
        let mut pos = 0;
        for i in 0..10_i64 {
            ix.on_batch(Offset(100 + i * 5), pos, 1000, 1_000 + i, 2500);
            pos += 1000;
        }
        let offs: Vec<i64> = ix.offsets.iter().map(|e| e.offset.0).collect();
        assert_eq!(offs, vec![100, 115, 130, 145]);
        assert_eq!(ix.lookup(Offset(99)), None);
        assert_eq!(ix.lookup(Offset(120)).unwrap().offset, Offset(115));
        assert_eq!(ix.lookup_time(1_004), Some(Offset(115)));
        assert_eq!(ix.lookup_time(0), None);
    }

    #[test]
    fn file_round_trip_and_mismatch_detection() {
        let mut ix = SegmentIndex::default();
        for i in 0..50_u32 {
            ix.on_batch(
                Offset(10 + i64::from(i)),
                i * 100,
                100,
                i64::from(i) * 3,
                300,
            );
        }
        let meta = IndexMeta {
            segment_size: 5000,
            next_offset: Offset(60),
            max_timestamp_ms: 147,
        };
        let (o, t) = (
            ix.encode_offsets(Offset(10), meta),
            ix.encode_times(Offset(10), meta),
        );
        let (back, back_meta) = SegmentIndex::decode(Offset(10), &o, &t, 5000).unwrap();
        assert_eq!(back.offsets, ix.offsets);
        assert_eq!(back.times, ix.times);
        assert_eq!(back_meta, meta);
        assert!(SegmentIndex::decode(Offset(10), &o, &t, 4999).is_none());
        for i in 0..o.len() {
            let mut bad = o.clone();
            bad[i] ^= 0x10;
            assert!(
                SegmentIndex::decode(Offset(10), &bad, &t, 5000).is_none(),
                "flip at {i}"
            );
        }
        assert!(SegmentIndex::decode(Offset(10), &o[..o.len() - 1], &t, 5000).is_none());
    }
}
