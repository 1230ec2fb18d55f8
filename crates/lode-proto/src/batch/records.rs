//! The records of an uncompressed batch: zero-copy views and the iterator that decodes them.
//!
//! A record on the wire (all integers zigzag varints, see [`super::varint`]):
//!
//! ```text
//! length            varint   bytes after this field
//! attributes        i8       unused by Kafka today
//! timestampDelta    varlong  relative to the batch's baseTimestamp
//! offsetDelta       varint   relative to the batch's baseOffset
//! keyLength         varint   -1 = null
//! key               bytes
//! valueLength       varint   -1 = null
//! value             bytes
//! headerCount       varint
//! headers           headerKeyLength varint (>= 0), key, headerValueLength varint (-1 = null), value
//! ```
//!
//! Every field must lie inside the record's declared length and the fields must use it up
//! exactly: a record is a frame, and bytes hiding in its slack would be invisible to every
//! reader yet covered by the CRC.

use std::fmt;
use std::iter::FusedIterator;

use super::varint::{read_varint, read_varlong};
use super::BatchError;
use crate::types::Offset;

/// One record header. Kafka allows repeated keys, so headers are a sequence, not a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header<'a> {
    /// The key. Header keys are never null on the wire.
    pub key: &'a [u8],
    /// The value, or `None` for null.
    pub value: Option<&'a [u8]>,
}

/// The headers of a record, in wire order with repeated keys kept: a view over bytes that
/// [`Records`] has already checked, so reading a record allocates nothing and iterating
/// its headers cannot fail.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    /// The encoded headers, exactly `len` of them.
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Headers<'a> {
    /// Headers with nothing in them.
    #[must_use]
    pub const fn empty() -> Headers<'a> {
        Headers { bytes: &[], len: 0 }
    }

    /// How many headers there are.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The headers in order.
    #[must_use]
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            bytes: self.bytes,
            remaining: self.len,
        }
    }

    /// The values of the headers named `key`, in order (Kafka allows a key to repeat).
    pub fn get_all<'k>(&self, key: &'k [u8]) -> impl Iterator<Item = Option<&'a [u8]>> + 'k
    where
        'a: 'k,
    {
        self.iter().filter(move |h| h.key == key).map(|h| h.value)
    }
}

impl<'a> IntoIterator for Headers<'a> {
    type Item = Header<'a>;
    type IntoIter = HeaderIter<'a>;

    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Headers<'a> {
    type Item = Header<'a>;
    type IntoIter = HeaderIter<'a>;

    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

impl PartialEq for Headers<'_> {
    /// Equal when they hold the same headers in the same order.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl Eq for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`Headers`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    /// The encoded headers not yet yielded.
    bytes: &'a [u8],
    remaining: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.remaining == 0 {
            return None;
        }
        if let Ok(h) = read_header(&mut self.bytes) {
            self.remaining -= 1;
            Some(h)
        } else {
            // Unreachable: the bytes were checked when the record was read. Stopping keeps
            // even that impossible case panic-free.
            self.remaining = 0;
            None
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}
impl FusedIterator for HeaderIter<'_> {}

/// One record of a batch, borrowing its key, value and headers from the batch's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Record attributes; Kafka defines no bits and writes zero.
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset. Consecutive (0, 1, 2, ...) in a batch
    /// as a client sends it; compaction may leave gaps in a stored one.
    pub offset_delta: i32,
    /// The key, or `None` for null.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for null (a tombstone under compaction).
    pub value: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: Headers<'a>,
}

impl Record<'_> {
    /// The record's offset given its batch's base offset. Saturates rather than overflows,
    /// so that a corrupt base offset cannot panic a reader.
    #[must_use]
    pub fn offset(&self, batch_base_offset: Offset) -> Offset {
        Offset(
            batch_base_offset
                .0
                .saturating_add(i64::from(self.offset_delta)),
        )
    }

    /// The record's timestamp given its batch's base timestamp (saturating, like
    /// [`Record::offset`]).
    #[must_use]
    pub fn timestamp(&self, batch_base_timestamp: i64) -> i64 {
        batch_base_timestamp.saturating_add(self.timestamp_delta)
    }
}

/// Iterator over the records of an uncompressed batch, from [`super::RecordBatch::records`].
///
/// Yields each record, or one error and then nothing: after a malformed record the rest of
/// the section cannot be framed, so there is nothing sound to continue with. Besides
/// malformed records it reports a section that ends before `recordsCount` records
/// ([`BatchError::Truncated`]) and one with bytes after them
/// ([`BatchError::TrailingRecordBytes`]); both only once the records before have been
/// yielded, so a reader sees everything that is readable.
///
/// It does not require offset deltas to be `0, 1, 2, ...`, because compacted batches
/// legitimately have gaps; [`super::RecordBatch::validate_records`] does.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    index: i32,
    count: i32,
    done: bool,
}

impl<'a> Records<'a> {
    /// Records of a section declared to hold `count` (>= 0) records.
    pub(super) fn new(section: &'a [u8], count: i32) -> Records<'a> {
        Records {
            rest: section,
            index: 0,
            count,
            done: false,
        }
    }

    fn fail(&mut self, e: BatchError) -> Option<Result<Record<'a>, BatchError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let index = self.index;
        if index >= self.count {
            self.done = true;
            if self.rest.is_empty() {
                return None;
            }
            let e = BatchError::TrailingRecordBytes {
                count: self.count,
                extra: self.rest.len(),
            };
            return self.fail(e);
        }
        if self.rest.is_empty() {
            let e = BatchError::Truncated {
                count: self.count,
                found: index,
            };
            return self.fail(e);
        }
        let bad = |reason| BatchError::BadRecord { index, reason };
        let mut b = self.rest;
        let Ok(len) = read_varint(&mut b) else {
            return self.fail(bad("record length is not a valid varint"));
        };
        let Ok(len) = usize::try_from(len) else {
            return self.fail(bad("record length is negative"));
        };
        let Some((body, rest)) = b.split_at_checked(len) else {
            return self.fail(bad("record length runs past the end of the batch"));
        };
        match read_record(body) {
            Ok(r) => {
                self.rest = rest;
                self.index += 1;
                Some(Ok(r))
            }
            Err(reason) => self.fail(bad(reason)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // Up to the remaining records, plus possibly one error.
        let left = usize::try_from(self.count.saturating_sub(self.index)).unwrap_or(0);
        (0, left.checked_add(1))
    }
}

impl FusedIterator for Records<'_> {}

/// The messages for the ways a length-prefixed field can be malformed.
struct FieldErrors {
    length: &'static str,
    negative: &'static str,
    overrun: &'static str,
}

const KEY: FieldErrors = FieldErrors {
    length: "key length is not a valid varint",
    negative: "key length is negative but not -1 (null)",
    overrun: "key runs past the end of the record",
};
const VALUE: FieldErrors = FieldErrors {
    length: "value length is not a valid varint",
    negative: "value length is negative but not -1 (null)",
    overrun: "value runs past the end of the record",
};
const HEADER_KEY: FieldErrors = FieldErrors {
    length: "header key length is not a valid varint",
    negative: "header key length is negative (header keys are not nullable)",
    overrun: "header key runs past the end of the record",
};
const HEADER_VALUE: FieldErrors = FieldErrors {
    length: "header value length is not a valid varint",
    negative: "header value length is negative but not -1 (null)",
    overrun: "header value runs past the end of the record",
};

/// Reads a length-prefixed byte string where length -1 means null.
fn read_nullable<'a>(
    buf: &mut &'a [u8],
    errors: &FieldErrors,
) -> Result<Option<&'a [u8]>, &'static str> {
    let len = read_varint(buf).map_err(|_| errors.length)?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| errors.negative)?;
    let (v, rest) = buf.split_at_checked(len).ok_or(errors.overrun)?;
    *buf = rest;
    Ok(Some(v))
}

/// Reads one header.
fn read_header<'a>(buf: &mut &'a [u8]) -> Result<Header<'a>, &'static str> {
    let key = read_nullable(buf, &HEADER_KEY)?.ok_or(HEADER_KEY.negative)?;
    let value = read_nullable(buf, &HEADER_VALUE)?;
    Ok(Header { key, value })
}

/// The fewest bytes one header takes: an empty key and a null value, one byte each.
const HEADER_MIN_BYTES: usize = 2;

/// Decodes a record from its body (the bytes its length prefix covers), checking that the
/// fields fill the body exactly.
fn read_record(body: &[u8]) -> Result<Record<'_>, &'static str> {
    let (&attributes, mut b) = body
        .split_first()
        .ok_or("record is empty (no attributes byte)")?;
    let timestamp_delta =
        read_varlong(&mut b).map_err(|_| "timestamp delta is not a valid varlong")?;
    let offset_delta = read_varint(&mut b).map_err(|_| "offset delta is not a valid varint")?;
    let key = read_nullable(&mut b, &KEY)?;
    let value = read_nullable(&mut b, &VALUE)?;
    let count = read_varint(&mut b).map_err(|_| "header count is not a valid varint")?;
    let count = usize::try_from(count).map_err(|_| "header count is negative")?;
    if count > b.len() / HEADER_MIN_BYTES {
        return Err("header count exceeds what the record can hold");
    }
    let start = b;
    for _ in 0..count {
        read_header(&mut b)?;
    }
    if !b.is_empty() {
        return Err("record has bytes after its last header");
    }
    Ok(Record {
        // The attributes byte is an i8 on the wire.
        attributes: i8::from_be_bytes([attributes]),
        timestamp_delta,
        offset_delta,
        key,
        value,
        // `b` is empty, so the headers are all of `start`.
        headers: Headers {
            bytes: start,
            len: count,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::varint::{write_varint, write_varlong};

    /// Encodes a record body (everything after its length).
    fn body(
        ts: i64,
        od: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Vec<u8> {
        let mut out = vec![0];
        write_varlong(&mut out, ts);
        write_varint(&mut out, od);
        for f in [key, value] {
            put(&mut out, f);
        }
        write_varint(&mut out, i32::try_from(headers.len()).unwrap());
        for (k, v) in headers {
            put(&mut out, Some(k));
            put(&mut out, *v);
        }
        out
    }
    fn put(out: &mut Vec<u8>, f: Option<&[u8]>) {
        match f {
            None => write_varint(out, -1),
            Some(f) => {
                write_varint(out, i32::try_from(f.len()).unwrap());
                out.extend_from_slice(f);
            }
        }
    }
    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            write_varint(&mut out, i32::try_from(b.len()).unwrap());
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn reads_fields_and_headers_in_order() {
        let b = body(
            -5,
            3,
            None,
            Some(b""),
            &[(b"a", Some(b"1")), (b"a", None), (b"", Some(b"2"))],
        );
        let r = read_record(&b).unwrap();
        assert_eq!(r.timestamp_delta, -5);
        assert_eq!(r.offset_delta, 3);
        assert_eq!(r.key, None);
        assert_eq!(r.value, Some(&b""[..]));
        assert_eq!(r.headers.len(), 3);
        let h: Vec<Header<'_>> = r.headers.iter().collect();
        assert_eq!(
            h,
            [
                Header {
                    key: b"a",
                    value: Some(b"1")
                },
                Header {
                    key: b"a",
                    value: None
                },
                Header {
                    key: b"",
                    value: Some(b"2")
                },
            ]
        );
        let a: Vec<_> = r.headers.get_all(b"a").collect();
        assert_eq!(a, [Some(&b"1"[..]), None]);
        assert_eq!(r.offset(Offset(10)), Offset(13));
        assert_eq!(r.timestamp(100), 95);
        assert_eq!(r.offset(Offset(i64::MAX)), Offset(i64::MAX));
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let ok = body(0, 0, Some(b"k"), Some(b"v"), &[(b"h", Some(b"x"))]);
        assert!(read_record(&ok).is_ok());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "record is empty (no attributes byte)"),
            (vec![0, 0x80], "timestamp delta is not a valid varlong"),
            (vec![0, 0, 0x80, 0x00], "offset delta is not a valid varint"),
            (
                vec![0, 0, 0, 0x03],
                "key length is negative but not -1 (null)",
            ),
            (
                vec![0, 0, 0, 0x04, 7],
                "key runs past the end of the record",
            ),
            (
                vec![0, 0, 0, 1, 0x03],
                "value length is negative but not -1 (null)",
            ),
            (vec![0, 0, 0, 1, 1, 0x01], "header count is negative"),
            (
                vec![0, 0, 0, 1, 1, 0x02],
                "header count exceeds what the record can hold",
            ),
            (
                vec![0, 0, 0, 1, 1, 0x02, 0x01, 0x01],
                "header key length is negative (header keys are not nullable)",
            ),
            (
                vec![0, 0, 0, 1, 1, 0x02, 0x04, 0x01],
                "header key runs past the end of the record",
            ),
            (
                vec![0, 0, 0, 1, 1, 0, 9],
                "record has bytes after its last header",
            ),
        ];
        for (b, reason) in cases {
            assert_eq!(read_record(&b).err(), Some(reason), "{b:?}");
        }
    }

    #[test]
    fn iterator_reports_short_and_long_sections_after_the_good_records() {
        let one = body(0, 0, None, Some(b"v"), &[]);
        let two = framed(&[one.clone(), one.clone()]);
        let all: Vec<_> = Records::new(&two, 2).collect();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(Result::is_ok));

        let mut short = Records::new(&two, 3);
        assert!(short.next().unwrap().is_ok());
        assert!(short.next().unwrap().is_ok());
        assert_eq!(
            short.next(),
            Some(Err(BatchError::Truncated { count: 3, found: 2 }))
        );
        assert_eq!(short.next(), None);

        let mut long = Records::new(&two, 1);
        assert!(long.next().unwrap().is_ok());
        assert_eq!(
            long.next(),
            Some(Err(BatchError::TrailingRecordBytes {
                count: 1,
                extra: one.len() + 1
            }))
        );
        assert_eq!(long.next(), None);

        // A length that points past the section.
        let mut over = two.clone();
        over[0] = 40; // 20 bytes, more than the whole section
        let mut it = Records::new(&over, 2);
        assert_eq!(
            it.next(),
            Some(Err(BatchError::BadRecord {
                index: 0,
                reason: "record length runs past the end of the batch"
            }))
        );
        assert_eq!(it.next(), None);

        // Negative length.
        let mut it = Records::new(&[0x01, 0, 0], 1);
        assert_eq!(
            it.next(),
            Some(Err(BatchError::BadRecord {
                index: 0,
                reason: "record length is negative"
            }))
        );
    }

    #[test]
    fn headers_compare_by_content() {
        let a = body(0, 0, None, None, &[(b"k", None)]);
        let b = body(9, 1, Some(b"x"), None, &[(b"k", None)]);
        let (ra, rb) = (read_record(&a).unwrap(), read_record(&b).unwrap());
        assert_eq!(ra.headers, rb.headers);
        assert_ne!(ra.headers, Headers::empty());
        assert_eq!(format!("{:?}", Headers::empty()), "[]");
    }
}
