//! Decompression bombs: 100 MiB of zeros, compressed with each codec, decompressed with a
//! 1 MiB limit, fails with [`BatchError::DecompressedTooLarge`], and the decoder allocates
//! only a few MiB on the way (counted by a global allocator, which is why this test has a
//! binary of its own and a single test function: nothing else allocates meanwhile).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// tests fail loudly
// The counting allocator below must implement the unsafe `GlobalAlloc` trait; it only
// forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lode_proto::batch::{
    compress, decompress, BatchError, Compression, RecordBatch, RecordBatchBuilder,
};
use lode_proto::Offset;

/// Forwards to [`System`], tracking the bytes live and their peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters have no effect on the allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;
const BOMB: usize = 100 * MIB;
const LIMIT: usize = MIB;
/// What a decoder may allocate beyond the output for a 1 MiB limit: a zstd window of the
/// limit, a 64 KiB lz4 block, inflate's 32 KiB window, tables.
const BUDGET: usize = 4 * MIB;

#[test]
fn bombs_fail_with_a_typed_error_without_allocating_the_bomb() {
    let zeros = vec![0_u8; BOMB];
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let bomb = compress(codec, &zeros).unwrap();
        assert!(bomb.len() < BOMB / 20, "{codec}: {} bytes", bomb.len());
        // A batch of one record whose records section is the bomb, CRC and all.
        let mut b = RecordBatchBuilder::new(Offset(0));
        b.push(None, None, &[], 0);
        let mut bytes = b.build();
        bytes.truncate(61);
        bytes.extend_from_slice(&bomb);
        let len = i32::try_from(bytes.len() - 12).unwrap();
        bytes[8..12].copy_from_slice(&len.to_be_bytes());
        bytes[22] |= codec.id();
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let (batch, _) = RecordBatch::parse(&bytes).unwrap();
        batch.validate().unwrap();

        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let result = batch.decompressed_records(LIMIT);
        let peak = PEAK.load(Ordering::SeqCst) - before;
        assert_eq!(
            result,
            Err(BatchError::DecompressedTooLarge {
                codec,
                limit: LIMIT
            })
        );
        assert!(
            peak <= LIMIT + BUDGET,
            "{codec}: decompressing allocated up to {peak} bytes"
        );
        eprintln!(
            "{codec}: {} byte bomb; peak allocation {peak} bytes",
            bomb.len()
        );

        if codec == Compression::Zstd {
            zstd_windows(&bomb);
        }
    }
}

/// Decodes `data` with `limit`, returning the result and the peak bytes allocated.
fn measured(data: &[u8], limit: usize) -> (Result<Vec<u8>, BatchError>, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = decompress(Compression::Zstd, data, limit);
    (result, PEAK.load(Ordering::SeqCst) - before)
}

/// A zstd frame may declare any window up to 3.75 TiB, which a decoder must hold: one
/// declaring 2 GiB is decoded with a window of the limit, and refused outright only when
/// the limit is so large that the window could matter (past 128 MiB, as libzstd).
fn zstd_windows(bomb: &[u8]) {
    assert_eq!(bomb[4] & 0x20, 0, "a window descriptor follows");
    let mut huge = bomb.to_vec();
    huge[5] = 21 << 3; // window log 31: 2 GiB
    let (result, peak) = measured(&huge, LIMIT);
    assert_eq!(
        result,
        Err(BatchError::DecompressedTooLarge {
            codec: Compression::Zstd,
            limit: LIMIT
        })
    );
    assert!(
        peak <= LIMIT + BUDGET,
        "declared 2 GiB window: {peak} bytes"
    );
    let (result, peak) = measured(&huge, 1 << 30);
    assert!(
        matches!(result, Err(BatchError::Decompress { ref reason, .. }) if reason.contains("window")),
        "{result:?}"
    );
    assert!(peak <= BUDGET, "refused 2 GiB window: {peak} bytes");

    // A single-segment frame whose content size is 100 MiB: refused before decoding.
    let mut single = vec![0x28, 0xb5, 0x2f, 0xfd, 0xa0]; // FCS 4 bytes, single segment
    single.extend(u32::try_from(BOMB).unwrap().to_le_bytes());
    single.extend([0x01, 0x00, 0x00]); // last block, raw, empty
    let (result, peak) = measured(&single, LIMIT);
    assert_eq!(
        result,
        Err(BatchError::DecompressedTooLarge {
            codec: Compression::Zstd,
            limit: LIMIT
        })
    );
    assert!(peak <= BUDGET, "single segment: {peak} bytes");
}
