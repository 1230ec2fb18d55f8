//! `lode`: the command-line entry point.
//!
//! - `lode dev`: a local cluster for Kafka clients (arrives with the broker).
//! - `lode log recover DIR`: open a partition directory as the broker would (recovering
//!   it after a crash), check every batch's CRC and the indexes, and print a report.

use std::process::ExitCode;

use anyhow::{bail, Context};
use lode_env::{Clock, Dir};
use lode_storage::{Log, LogConfig};

const USAGE: &str = "\
lode: a Kafka-compatible replicated log

usage:
  lode dev                    run a local cluster (arrives with the broker, step 2)
  lode log recover DIR        recover a partition directory and verify it
  lode --version
";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lode: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["--version" | "-V"] => {
            println!("lode {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        [] | ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        ["dev", ..] => {
            bail!("`lode dev` arrives with the broker (issue: step 2); nothing to run yet")
        }
        ["log", "recover", dir] => recover(dir),
        _ => bail!("unknown command {:?}\n\n{USAGE}", words.join(" ")),
    }
}

fn recover(dir: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(dir);
    if !path.is_dir() {
        bail!("{dir} is not a directory");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        let (log, report) = Log::open(Dir::real(path)?, Clock::system(), LogConfig::default())
            .await
            .with_context(|| format!("opening {dir}"))?;
        println!("clean shutdown: {}", report.clean_shutdown);
        println!(
            "scanned: {} bytes, cut: {} bytes",
            report.scanned_bytes, report.truncated_bytes
        );
        for f in &report.fallbacks {
            println!("fallback: {f}");
        }
        for s in &report.removed_segments {
            println!("removed segment: {s}");
        }
        println!(
            "offsets: start {} end {} high watermark {}; segments: {}",
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark(),
            log.segment_bases().len()
        );
        log.verify().await.context("verify")?;
        println!("verified: every batch passes its CRC; indexes and epochs match a full scan");
        log.close().await.context("close")?;
        Ok(())
    })
}
