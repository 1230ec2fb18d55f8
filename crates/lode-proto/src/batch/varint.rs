//! Zigzag varints, as Kafka's record format uses them (protobuf's `sint32` / `sint64`).
//!
//! A value is zigzag-mapped to an unsigned integer (0, -1, 1, -2, ... become 0, 1, 2, 3, ...)
//! so that small negative numbers such as the null length -1 stay one byte, then written as
//! little-endian base-128 groups with the high bit of each byte meaning "more follows".
//!
//! Decoding is stricter than Kafka's Java reader, which silently drops payload bits beyond
//! the value's width and accepts padded encodings such as `0x80 0x00` for zero. Here both
//! are errors ([`VarintError::Overlong`]). Every producer in use (the Java client,
//! librdkafka, sarama, franz-go) writes minimal encodings, so no real input is lost, and in
//! exchange the encoding is canonical: bytes that decode re-encode to the same bytes, which
//! lets the fuzz harness check decoding against the builder.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More bytes than the type allows, payload bits beyond its width, or a non-minimal
    /// encoding (a final zero byte after a continuation).
    Overlong,
}

/// Most bytes a 32-bit varint takes: `ceil(32 / 7)`.
pub(crate) const VARINT_MAX_BYTES: usize = 5;
/// Most bytes a 64-bit varlong takes: `ceil(64 / 7)`.
pub(crate) const VARLONG_MAX_BYTES: usize = 10;

/// Reads an unsigned base-128 integer of at most `max_bytes` bytes whose value must fit in
/// `bits` bits. Advances `buf` past it only on success, so a caller's error can point at
/// the start of the bad field.
fn read_unsigned(buf: &mut &[u8], max_bytes: usize, bits: u32) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    let mut rest = *buf;
    let mut shift: u32 = 0;
    for i in 0..max_bytes {
        let (&byte, tail) = rest.split_first().ok_or(VarintError::Truncated)?;
        rest = tail;
        let payload = u64::from(byte & 0x7f);
        // Only the last permitted byte can carry bits above `bits` (shift < bits always
        // holds here: 28 < 32 and 63 < 64 for the last bytes).
        if shift + 7 > bits && payload >> (bits - shift) != 0 {
            return Err(VarintError::Overlong);
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                // The previous byte promised more, and this one adds nothing.
                return Err(VarintError::Overlong);
            }
            *buf = rest;
            return Ok(value);
        }
        shift += 7;
    }
    Err(VarintError::Overlong)
}

/// Reads a zigzag varint (at most 5 bytes) from the front of `buf`, advancing it.
pub(crate) fn read_varint(buf: &mut &[u8]) -> Result<i32, VarintError> {
    let raw = read_unsigned(buf, VARINT_MAX_BYTES, 32)?;
    // `read_unsigned` guarantees 32 bits; the fallback is unreachable.
    let raw = u32::try_from(raw).map_err(|_| VarintError::Overlong)?;
    Ok(zigzag_decode_32(raw))
}

/// Reads a zigzag varlong (at most 10 bytes) from the front of `buf`, advancing it.
pub(crate) fn read_varlong(buf: &mut &[u8]) -> Result<i64, VarintError> {
    read_unsigned(buf, VARLONG_MAX_BYTES, 64).map(zigzag_decode_64)
}

fn write_unsigned(out: &mut Vec<u8>, mut v: u64) {
    loop {
        // Truncation to the low 7 bits is the point.
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Bytes `v` takes as an unsigned varint.
const fn unsigned_size(v: u64) -> usize {
    // 1 byte per 7 significant bits, at least one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes `v` takes as a zigzag varint.
pub(crate) const fn varint_size(v: i32) -> usize {
    unsigned_size(zigzag_encode_32(v) as u64)
}

/// Bytes `v` takes as a zigzag varlong.
pub(crate) const fn varlong_size(v: i64) -> usize {
    unsigned_size(zigzag_encode_64(v))
}

/// Appends `v` as a zigzag varint.
pub(crate) fn write_varint(out: &mut Vec<u8>, v: i32) {
    write_unsigned(out, u64::from(zigzag_encode_32(v)));
}

/// Appends `v` as a zigzag varlong.
pub(crate) fn write_varlong(out: &mut Vec<u8>, v: i64) {
    write_unsigned(out, zigzag_encode_64(v));
}

// The casts below reinterpret bits between signed and unsigned of the same width, which is
// what zigzag coding is defined as.
const fn zigzag_encode_32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}
const fn zigzag_decode_32(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}
const fn zigzag_encode_64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
const fn zigzag_decode_64(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        out
    }
    fn enc64(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varlong(&mut out, v);
        out
    }
    fn dec32(mut b: &[u8]) -> Result<(i32, usize), VarintError> {
        let v = read_varint(&mut b)?;
        Ok((v, b.len()))
    }
    fn dec64(mut b: &[u8]) -> Result<(i64, usize), VarintError> {
        let v = read_varlong(&mut b)?;
        Ok((v, b.len()))
    }

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_codes() {
        for (v, z) in [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4)] {
            assert_eq!(zigzag_encode_32(v), z);
            assert_eq!(zigzag_encode_64(i64::from(v)), u64::from(z));
        }
        assert_eq!(zigzag_encode_32(i32::MAX), u32::MAX - 1);
        assert_eq!(zigzag_encode_32(i32::MIN), u32::MAX);
        assert_eq!(zigzag_encode_64(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag_encode_64(i64::MIN), u64::MAX);
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc32(0), [0x00]);
        assert_eq!(enc32(-1), [0x01]);
        assert_eq!(enc32(1), [0x02]);
        assert_eq!(enc32(63), [0x7e]);
        assert_eq!(enc32(-64), [0x7f]);
        assert_eq!(enc32(64), [0x80, 0x01]);
        assert_eq!(enc32(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc32(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut max64 = vec![0xff; 9];
        max64[0] = 0xfe;
        max64.push(0x01);
        assert_eq!(enc64(i64::MAX), max64);
        assert_eq!(enc64(i64::MIN), [[0xff; 9].as_slice(), &[0x01]].concat());
    }

    #[test]
    fn boundaries_round_trip_and_use_the_maximum_length() {
        for v in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX] {
            let b = enc32(v);
            assert!(b.len() <= VARINT_MAX_BYTES);
            assert_eq!(dec32(&b), Ok((v, 0)), "{v}");
            // A 32-bit value read as a varlong is the same number.
            assert_eq!(dec64(&b), Ok((i64::from(v), 0)), "{v}");
        }
        assert_eq!(enc32(i32::MIN).len(), VARINT_MAX_BYTES);
        for v in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            let b = enc64(v);
            assert!(b.len() <= VARLONG_MAX_BYTES);
            assert_eq!(dec64(&b), Ok((v, 0)), "{v}");
        }
        assert_eq!(enc64(i64::MIN).len(), VARLONG_MAX_BYTES);
    }

    #[test]
    fn stops_at_the_end_of_the_varint() {
        assert_eq!(dec32(&[0x80, 0x01, 0xaa, 0xbb]), Ok((64, 2)));
        assert_eq!(dec64(&[0x03, 0x00]), Ok((-2, 1)));
    }

    #[test]
    fn truncated_input_is_an_error_and_consumes_nothing() {
        for b in [&[][..], &[0x80], &[0xff, 0xff, 0xff, 0xff]] {
            let mut s = b;
            assert_eq!(read_varint(&mut s), Err(VarintError::Truncated));
            assert_eq!(s, b, "input must not advance on error");
            let mut s = b;
            assert_eq!(read_varlong(&mut s), Err(VarintError::Truncated));
            assert_eq!(s, b);
        }
    }

    #[test]
    fn overlong_encodings_are_rejected() {
        // Padded zero and padded one: valid values, non-minimal bytes.
        assert_eq!(dec32(&[0x80, 0x00]), Err(VarintError::Overlong));
        assert_eq!(dec32(&[0x82, 0x80, 0x00]), Err(VarintError::Overlong));
        assert_eq!(dec64(&[0x80, 0x00]), Err(VarintError::Overlong));
        // Six bytes for a varint, eleven for a varlong.
        assert_eq!(
            dec32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(VarintError::Overlong)
        );
        let mut eleven = vec![0x80; 10];
        eleven.push(0x01);
        assert_eq!(dec64(&eleven), Err(VarintError::Overlong));
        // Payload bits beyond 32 / 64 in the last permitted byte.
        assert_eq!(
            dec32(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(VarintError::Overlong)
        );
        let mut high = vec![0xff; 9];
        high.push(0x02);
        assert_eq!(dec64(&high), Err(VarintError::Overlong));
        // ...which a varlong reads fine when it is 5 bytes: zigzag(-2^32) = 2^33 - 1.
        assert_eq!(
            dec64(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Ok((-(1_i64 << 32), 0))
        );
    }

    proptest! {
        #[test]
        fn varint_round_trips(v: i32, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut b = enc32(v);
            b.extend_from_slice(&tail);
            prop_assert_eq!(dec32(&b), Ok((v, tail.len())));
        }

        #[test]
        fn varlong_round_trips(v: i64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut b = enc64(v);
            b.extend_from_slice(&tail);
            prop_assert_eq!(dec64(&b), Ok((v, tail.len())));
        }

        /// Whatever decodes re-encodes to exactly the bytes consumed: the encoding is
        /// canonical.
        #[test]
        fn decoding_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok((v, left)) = dec32(&b) {
                prop_assert_eq!(&enc32(v)[..], &b[..b.len() - left]);
            }
            if let Ok((v, left)) = dec64(&b) {
                prop_assert_eq!(&enc64(v)[..], &b[..b.len() - left]);
            }
        }
    }
}
