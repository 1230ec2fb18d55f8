//! Wire and disk formats of lode.
//!
//! - [`types`]: newtypes for offsets, epochs and ids.
//! - [`batch`]: Kafka RecordBatch v2, the unit a client produces and the log stores.

pub mod batch;
pub mod types;

pub use types::{BrokerId, Epoch, Instant, Offset, PartitionId};

/// Entry points shared by the fuzz targets (in `fuzz/`) and the tests that replay their
/// corpora, so both exercise exactly the same code.
#[doc(hidden)]
pub mod fuzzing {
    use crate::batch::{self, RecordBatch};
    use crate::{Epoch, Offset};

    /// Parses `data` as a sequence of batches and exercises everything a broker does with
    /// untrusted batch bytes. Must never panic.
    pub fn record_batch(data: &[u8]) {
        let _ = batch::peek_size(data);
        let mut rest = data;
        while !rest.is_empty() {
            let Ok((b, tail)) = RecordBatch::parse_unchecked_crc(rest) else {
                break;
            };
            let _ = (
                b.base_offset(),
                b.last_offset(),
                b.next_offset(),
                b.partition_leader_epoch(),
            );
            let _ = (
                b.attributes(),
                b.compression(),
                b.is_control(),
                b.is_transactional(),
            );
            let _ = (
                b.base_timestamp(),
                b.max_timestamp(),
                b.producer_id(),
                b.producer_epoch(),
            );
            let _ = (
                b.base_sequence(),
                b.record_count(),
                b.records_bytes().len(),
                b.batch_length(),
            );
            let crc_ok = b.validate().is_ok();
            let records_ok = b.validate_records().is_ok();
            if let Ok(records) = b.records() {
                for r in records.take(100_000) {
                    let Ok(r) = r else { break };
                    let _ = (
                        r.key.map(<[u8]>::len),
                        r.value.map(<[u8]>::len),
                        r.headers.len(),
                    );
                }
            }
            // Patching a copy keeps a valid batch valid: the patched fields are outside the CRC.
            let mut copy = b.as_bytes().to_vec();
            let patched = batch::set_base_offset(&mut copy, Offset(i64::MAX - 1))
                .and_then(|()| batch::set_partition_leader_epoch(&mut copy, Epoch(7)));
            assert!(patched.is_ok(), "a parsed batch has room for its header");
            let again = RecordBatch::parse(&copy);
            assert_eq!(
                again.is_ok(),
                RecordBatch::parse(b.as_bytes()).is_ok(),
                "patching changed the CRC verdict"
            );
            let _ = (crc_ok, records_ok);
            rest = tail;
        }
    }
}
