//! `lode-sim`: runs simulation scenarios by seed. Build with `--cfg madsim`:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim cargo run -p lode-sim -- disk-crash --seed 7
//! ```

#[cfg(madsim)]
fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: lode-sim disk-crash --seed N [--seeds A..B]";
    let scenario = args.first().context(usage)?;
    anyhow::ensure!(
        scenario == "disk-crash",
        "unknown scenario {scenario:?}; {usage}"
    );
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (from, to) = match (flag("--seed"), flag("--seeds")) {
        (Some(s), _) => {
            let s: u64 = s.parse().context("--seed takes a number")?;
            (s, s + 1)
        }
        (None, Some(r)) => {
            let (a, b) = r.split_once("..").context("--seeds takes A..B")?;
            (
                a.parse().context("seed range start")?,
                b.parse().context("seed range end")?,
            )
        }
        (None, None) => anyhow::bail!("{usage}"),
    };
    let mut failed = 0;
    for seed in from..to {
        println!("seed {seed}: {:?}", lode_sim::disk_crash::params(seed));
        match lode_sim::disk_crash::run(seed) {
            Ok(o) => println!(
                "seed {seed}: ok: {} batches appended, {} unsynced lost, recovered ends {:?}",
                o.appended,
                o.lost,
                o.recovered_ends.iter().map(|o| o.0).collect::<Vec<_>>()
            ),
            Err(e) => {
                failed += 1;
                println!("seed {seed}: FAILED: {e:#}");
                println!(
                    "reproduce with: RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-madsim cargo run -p lode-sim -- disk-crash --seed {seed}"
                );
            }
        }
    }
    println!("{} passed, {failed} failed", (to - from) - failed);
    anyhow::ensure!(failed == 0, "{failed} seeds failed");
    Ok(())
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("lode-sim runs only in the simulation build:");
    eprintln!("  RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-madsim cargo run -p lode-sim -- disk-crash --seed 1");
    std::process::exit(2);
}
