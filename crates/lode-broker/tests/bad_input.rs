//! Bad input never takes the broker down: each hostile connection gets an error response or
//! a clean close, other connections keep working, and nothing stored is lost.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::sync::Arc;
use std::time::Duration;

use lode_broker::{Broker, BrokerConfig};
use lode_env::Env;
use lode_proto::BrokerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &std::path::Path) -> Arc<Broker> {
    let mut config = BrokerConfig::new(BrokerId(0), "127.0.0.1:0".parse().unwrap());
    config.frame_timeout = Duration::from_millis(300);
    config.frame_bytes_max = 1 << 20;
    Broker::start(config, Env::host(dir).unwrap())
        .await
        .unwrap()
}

/// An ApiVersions v0 request frame.
fn api_versions(correlation_id: i32, version: i16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18_i16.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(-1_i16).to_be_bytes()); // null client id
    if version >= 3 {
        body.push(0); // header tagged fields
        body.push(1); // compact client software name ""
        body.push(1); // compact client software version ""
        body.push(0); // body tagged fields
    }
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Sends one request and reads one response frame; returns its body after the length.
async fn round_trip(addr: std::net::SocketAddr, frame: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(frame).await?;
    let mut len = [0_u8; 4];
    s.read_exact(&mut len).await?;
    let mut body = vec![0; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// True once the peer has closed the connection (read returns 0 or an error).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0_u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn hostile_connections_are_closed_and_the_broker_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path()).await;
    let addr = broker.local_addr;

    // A well-behaved client first.
    let ok = round_trip(addr, &api_versions(1, 0)).await.unwrap();
    assert_eq!(&ok[..4], &1_i32.to_be_bytes(), "correlation id echoed");
    assert_eq!(&ok[4..6], &0_i16.to_be_bytes(), "no error");

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "absurd length",
            [i32::MAX.to_be_bytes().to_vec(), vec![0; 16]].concat(),
        ),
        ("negative length", (-5_i32).to_be_bytes().to_vec()),
        (
            "unknown api key",
            [
                12_i32.to_be_bytes().to_vec(),
                999_i16.to_be_bytes().to_vec(),
                vec![0; 10],
            ]
            .concat(),
        ),
        (
            "produce v0",
            [
                12_i32.to_be_bytes().to_vec(),
                0_i16.to_be_bytes().to_vec(),
                0_i16.to_be_bytes().to_vec(),
                vec![0; 8],
            ]
            .concat(),
        ),
        (
            "metadata v99",
            [
                12_i32.to_be_bytes().to_vec(),
                3_i16.to_be_bytes().to_vec(),
                99_i16.to_be_bytes().to_vec(),
                vec![0; 8],
            ]
            .concat(),
        ),
        (
            "truncated body",
            [
                100_i32.to_be_bytes().to_vec(),
                3_i16.to_be_bytes().to_vec(),
                1_i16.to_be_bytes().to_vec(),
                vec![0; 10],
            ]
            .concat(),
        ),
        ("array bomb: 2^31-1 topics in a 15-byte frame", {
            let body = [
                3_i16.to_be_bytes().to_vec(),
                1_i16.to_be_bytes().to_vec(),
                8_i32.to_be_bytes().to_vec(),
                (-1_i16).to_be_bytes().to_vec(),
                i32::MAX.to_be_bytes().to_vec(),
                vec![0],
            ]
            .concat();
            [(body.len() as i32).to_be_bytes().to_vec(), body].concat()
        }),
        ("undecodable metadata", {
            let body = [
                3_i16.to_be_bytes().to_vec(),
                1_i16.to_be_bytes().to_vec(),
                7_i32.to_be_bytes().to_vec(),
                (-1_i16).to_be_bytes().to_vec(),
                vec![0xff, 0xff, 0xff],
            ]
            .concat();
            [(body.len() as i32).to_be_bytes().to_vec(), body].concat()
        }),
    ];
    for (what, bytes) in hostile {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        assert!(
            closed(&mut s).await,
            "{what}: the connection should be closed"
        );
        // Every other client is unaffected.
        let ok = round_trip(addr, &api_versions(2, 3))
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(&ok[..4], &2_i32.to_be_bytes(), "after {what}");
    }
}

#[tokio::test]
async fn unknown_api_versions_version_gets_the_kip511_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path()).await;
    let resp = round_trip(broker.local_addr, &api_versions(9, 77))
        .await
        .unwrap();
    assert_eq!(&resp[..4], &9_i32.to_be_bytes());
    assert_eq!(&resp[4..6], &35_i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    let count = i32::from_be_bytes(resp[6..10].try_into().unwrap());
    assert!(count >= 8, "the v0 body lists our API ranges: {count}");
}

#[tokio::test]
async fn a_client_stalling_mid_frame_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start(tmp.path()).await;
    let mut s = TcpStream::connect(broker.local_addr).await.unwrap();
    let frame = api_versions(3, 0);
    s.write_all(&frame[..7]).await.unwrap(); // then nothing
    assert!(closed(&mut s).await, "a stalled frame must time out");
    let ok = round_trip(broker.local_addr, &api_versions(4, 0))
        .await
        .unwrap();
    assert_eq!(&ok[..4], &4_i32.to_be_bytes());
}
