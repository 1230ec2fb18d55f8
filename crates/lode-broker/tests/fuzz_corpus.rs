//! Replays the request fuzz corpus through the same entry point the fuzz target calls.
//!
//! `LODE_WRITE_CORPUS=1 cargo test -p lode-broker --test fuzz_corpus` regenerates the seed
//! inputs: a valid frame of every served API at several versions, and damaged variants.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::fs;
use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use lode_broker::server::fuzzing::request_frame;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/request")
}

fn frame<R: Encodable>(key: ApiKey, version: i16, body: &R) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 7;
    header.client_id = Some(StrBytes::from_static_str("fuzz"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.to_vec()
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for v in [0, 3, 4] {
        out.push((
            format!("api-versions-v{v}"),
            frame(ApiKey::ApiVersions, v, &ApiVersionsRequest::default()),
        ));
    }
    let mut md = MetadataRequest::default();
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_static_str("orders")));
    md.topics = Some(vec![t]);
    for v in [0, 4, 9, 12] {
        out.push((format!("metadata-v{v}"), frame(ApiKey::Metadata, v, &md)));
    }
    let mut batch = lode_proto::batch::RecordBatchBuilder::new(lode_proto::Offset(0));
    batch.push(Some(b"k"), Some(b"v"), &[], 0);
    let mut pd = PartitionProduceData::default();
    pd.records = Some(batch.build().into());
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_static_str("orders"));
    td.partition_data = vec![pd];
    let mut pr = ProduceRequest::default();
    pr.acks = -1;
    pr.transactional_id = None;
    pr.topic_data = vec![td];
    for v in [3, 7, 9] {
        out.push((format!("produce-v{v}"), frame(ApiKey::Produce, v, &pr)));
    }
    for v in [4, 11, 12] {
        out.push((
            format!("fetch-v{v}"),
            frame(ApiKey::Fetch, v, &FetchRequest::default()),
        ));
    }
    for v in [1, 7] {
        out.push((
            format!("list-offsets-v{v}"),
            frame(ApiKey::ListOffsets, v, &ListOffsetsRequest::default()),
        ));
    }
    let mut ip = InitProducerIdRequest::default();
    ip.transactional_id = None;
    for v in [0, 4] {
        out.push((
            format!("init-producer-id-v{v}"),
            frame(ApiKey::InitProducerId, v, &ip),
        ));
    }
    let produce = out
        .iter()
        .find(|(n, _)| n == "produce-v9")
        .map(|(_, b)| b.clone())
        .unwrap();
    for cut in [0, 3, 8, 12, 20, produce.len() / 2, produce.len() - 1] {
        out.push((format!("produce-v9-cut-{cut}"), produce[..cut].to_vec()));
    }
    let mut bad_key = produce.clone();
    bad_key[0..2].copy_from_slice(&999_i16.to_be_bytes());
    out.push(("unknown-key".into(), bad_key));
    let mut bad_version = produce;
    bad_version[2..4].copy_from_slice(&99_i16.to_be_bytes());
    out.push(("unknown-version".into(), bad_version));
    let mut bomb = BytesMut::new();
    bomb.put_i16(3);
    bomb.put_i16(1);
    bomb.put_i32(1);
    bomb.put_i16(-1);
    bomb.put_i32(0x0100_0000); // a topic array claiming 16M entries in a few bytes
    bomb.put_u8(0);
    out.push(("metadata-array-bomb-small".into(), bomb.to_vec()));
    // The same with 2^31-1 entries: without the pre-decode check this aborts the process.
    let mut bomb = BytesMut::new();
    bomb.put_i16(3);
    bomb.put_i16(1);
    bomb.put_i32(1);
    bomb.put_i16(-1);
    bomb.put_i32(i32::MAX);
    bomb.put_u8(0);
    out.push(("metadata-array-bomb".into(), bomb.to_vec()));
    // Flexible version: a compact array length as a maximal varint.
    let mut bomb = BytesMut::new();
    bomb.put_i16(3);
    bomb.put_i16(12);
    bomb.put_i32(1);
    bomb.put_i16(-1);
    bomb.put_u8(0); // header tagged fields
    bomb.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    bomb.put_u8(0);
    out.push(("metadata-v12-compact-array-bomb".into(), bomb.to_vec()));
    out
}

#[test]
fn replay_request_corpus() {
    let dir = corpus_dir();
    if std::env::var_os("LODE_WRITE_CORPUS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = fs::read(entry.unwrap().path()).unwrap();
        request_frame(&data);
        n += 1;
    }
    assert!(n >= 20, "only {n} corpus files in {}", dir.display());
}
