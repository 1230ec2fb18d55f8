//! Helpers shared by the log's tests.
#![allow(dead_code)]

use lode_proto::batch::RecordBatchBuilder;
use lode_proto::Offset;

/// A valid client batch of `records` records with values of `value_len` bytes, whose
/// contents are derived from `tag` so each batch is distinct. Timestamps start at
/// `ts_base`, one millisecond apart.
pub fn client_batch(tag: u64, records: usize, value_len: usize, ts_base: i64) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Offset(0));
    b.base_timestamp(ts_base);
    for i in 0..records {
        let key = format!("k{tag}-{i}");
        let value: Vec<u8> = (0..value_len)
            .map(|j| (tag as usize + i * 31 + j) as u8)
            .collect();
        b.push(Some(key.as_bytes()), Some(&value), &[], i as i64);
    }
    b.build()
}
