//! Serde for `Vec<u8>` as a byte string: `#[serde(with = "lode_proto::byte_vec")]`.
//!
//! Serde's default treats `Vec<u8>` as a sequence, element by element; for record batches
//! in internal RPC frames that was a third of a replicating broker's CPU. As a byte string
//! it is one length and one copy. In postcard both forms have the same encoding (a varint
//! length, then the bytes), so frames and files written either way read the same.

use serde::{Deserializer, Serializer};

/// Serializes `bytes` as a byte string.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Deserializes a byte string (or, from self-describing formats, a sequence of bytes).
///
/// # Errors
/// The deserializer's.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(Visitor)
}

struct Visitor;

impl<'de> serde::de::Visitor<'de> for Visitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsBytes(#[serde(with = "super")] Vec<u8>);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsSeq(Vec<u8>);

    #[test]
    fn postcard_encodes_both_forms_alike() {
        let data: Vec<u8> = (0..=255).chain(0..=255).collect();
        let bytes = postcard::to_allocvec(&AsBytes(data.clone())).unwrap();
        let seq = postcard::to_allocvec(&AsSeq(data.clone())).unwrap();
        assert_eq!(bytes, seq);
        let back: AsBytes = postcard::from_bytes(&seq).unwrap();
        assert_eq!(back.0, data);
    }
}
