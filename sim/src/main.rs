//! `lode-sim`: seeded simulations of lode. Build with `--cfg madsim`:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim cargo run -p lode-sim -- run --seed 7
//! ```

#[cfg(madsim)]
const USAGE: &str = "\
usage:
  lode-sim run --seed N [--scenario NAME] [--schedule FILE] [--trace FILE] [--planted NAME]
      one chaos run: parameters, schedule, verdict; the schedule file has one fault per
      line, AT_MS FAULT (crash B, power-loss B, stop B, restart B, pause B, resume B,
      isolate B, partition B, cut B B, cut-one-way B B, skew B OFFSET_MS DRIFT_PPM,
      corrupt B, disk-errors B PERCENT, sync-errors B PERCENT, disk-full B, disk-ok B,
      disk-stall B MS, bounce B MS, wipe B, uncut B B, latency MIN_MS MAX_MS, loss PERCENT, heal; B is
      a broker number, leader, follower,
      other-follower, replica-K, controller or last), as printed by a run
  lode-sim explore --seeds A..B [--jobs J] [--scenario NAME] [--planted NAME] [--first-failure]
      a run per seed, one process each, J at a time (default: the cores); a progress
      line, a summary table, logs of failing seeds kept; non-zero exit on any failure;
      --first-failure starts no new seed once one has failed (seeds to detection)
  lode-sim scenarios
      the named scenarios of the fault catalogue, and the planted bug each is made for
  lode-sim check-determinism --seed N
      the same seed twice, in two processes: the trace hashes must be equal
  lode-sim disk-crash --seed N | --seeds A..B
      a partition log on the simulated disk, killed mid-IO, recovered and checked
planted bugs (built with --features planted-bugs): truncate-to-hw, hw-below-min-isr,
  isr-without-epoch-start, stale-alter-partition, ack-before-sync, elect-outside-isr,
  read-above-hw, commit-before-replicated, consumer-forgets-partition, ignore-sync-failure,
  unfenced-follower, clean-marker-dropped, delete-in-place, hw-applied-late,
  commit-any-generation";

/// Log lines carry simulated time (ms since the run began, as the trace's `t_ms`), so a
/// broker's log reads against the trace. Outside a run, none.
#[cfg(madsim)]
struct SimTime;

#[cfg(madsim)]
impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match madsim::time::TimeHandle::try_current() {
            Some(t) => write!(w, "{:>10.3}ms", t.elapsed().as_secs_f64() * 1000.0),
            None => write!(w, "{:>12}", "-"),
        }
    }
}

#[cfg(madsim)]
fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    // Broker logs on standard error, off unless RUST_LOG asks (e.g. RUST_LOG=info).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .with_timer(SimTime)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let planted = flag("--planted")
        .map(|s| s.parse::<lode_sim::chaos::Planted>())
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let seeds = || -> anyhow::Result<(u64, u64)> {
        match (flag("--seed"), flag("--seeds")) {
            (Some(s), _) => {
                let s: u64 = s.parse().context("--seed takes a number")?;
                Ok((s, s + 1))
            }
            (None, Some(r)) => {
                let (a, b) = r.split_once("..").context("--seeds takes A..B")?;
                Ok((
                    a.parse().context("seed range start")?,
                    b.parse().context("seed range end")?,
                ))
            }
            (None, None) => anyhow::bail!("{USAGE}"),
        }
    };
    match args.first().map(String::as_str) {
        Some("run") => {
            let (seed, _) = seeds()?;
            let schedule = flag("--schedule")
                .map(|f| std::fs::read_to_string(&f).with_context(|| f.clone()))
                .transpose()?
                .map(|t| t.parse::<lode_sim::chaos::Schedule>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let scenario = flag("--scenario")
                .map(|n| {
                    lode_sim::scenarios::Scenario::named(&n).with_context(|| {
                        format!("no scenario {n:?}; `lode-sim scenarios` lists them")
                    })
                })
                .transpose()?;
            run_one(seed, planted, scenario, schedule, flag("--trace"))
        }
        Some("explore") => {
            let jobs = flag("--jobs")
                .map(|j| j.parse::<usize>().context("--jobs takes a number"))
                .transpose()?
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
            let first_failure = args.iter().any(|a| a == "--first-failure");
            explore(seeds()?, planted, flag("--scenario"), jobs, first_failure)
        }
        Some("scenarios") => {
            for s in lode_sim::scenarios::ALL {
                let catches = s
                    .catches
                    .map_or(String::new(), |p| format!(" (catches {p})"));
                println!("{}{catches}\n    {}", s.name, s.about);
            }
            Ok(())
        }
        Some("check-determinism") => check_determinism(seeds()?.0),
        Some("disk-crash") => disk_crash(seeds()?),
        _ => anyhow::bail!("{USAGE}"),
    }
}

#[cfg(madsim)]
fn run_one(
    seed: u64,
    planted: Option<lode_sim::chaos::Planted>,
    scenario: Option<lode_sim::scenarios::Scenario>,
    schedule: Option<lode_sim::chaos::Schedule>,
    trace: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use lode_sim::chaos::{Params, Schedule};
    let params = match scenario {
        Some(s) => s.params(seed, planted),
        None => Params::of(seed, planted),
    };
    let schedule = schedule
        .or_else(|| scenario.map(|s| s.schedule()))
        .unwrap_or_else(|| Schedule::of(&params));
    if let Some(s) = scenario {
        println!("scenario {}: {}", s.name, s.about);
    }
    println!(
        "seed {seed}, commit {}",
        option_env!("LODE_COMMIT").unwrap_or("(unknown)")
    );
    println!("parameters: {params:?}");
    println!("schedule (AT_MS FAULT):\n{schedule}");
    let wall = std::time::Instant::now();
    let report = lode_sim::chaos::run(&params, &schedule);
    if let Some(path) = trace {
        std::fs::write(&path, report.trace.join("\n") + "\n").with_context(|| path.clone())?;
        println!("trace written to {path}");
    }
    println!(
        "sends: {} acknowledged, {} refused, {} unknown; {} values read; {:.1} simulated s in {:.1} wall s",
        report.acked,
        report.failed,
        report.unknown,
        report.read,
        report.simulated_s,
        wall.elapsed().as_secs_f64()
    );
    for p in &report.permitted {
        println!("permitted loss: {p}");
    }
    let coverage: Vec<String> = report
        .coverage
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("coverage: {}", coverage.join(" "));
    println!("trace hash {:016x}", report.trace_hash());
    if report.violations.is_empty() {
        println!("verdict: ok");
        return Ok(());
    }
    for v in &report.violations {
        println!("VIOLATION {v}");
    }
    let planted_flag = planted.map_or(String::new(), |_| {
        format!(" --planted {}", flag_name(planted))
    });
    let scenario_flag = scenario.map_or(String::new(), |s| format!(" --scenario {}", s.name));
    println!(
        "verdict: FAILED; reproduce with: RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-madsim cargo run --release -p lode-sim --all-features -- run --seed {seed}{scenario_flag}{planted_flag}"
    );
    anyhow::bail!("seed {seed} failed")
}

#[cfg(madsim)]
fn flag_name(planted: Option<lode_sim::chaos::Planted>) -> &'static str {
    planted.map_or("", lode_sim::chaos::Planted::name)
}

/// One process per seed (a panic or hang in one run cannot take the others with it), `jobs`
/// at a time; a progress line, then a summary table; logs kept for failing seeds only.
/// With `first_failure`, no seed starts once one has failed (those already running finish),
/// which is how CI measures that a planted bug is found within its budget.
#[cfg(madsim)]
fn explore(
    (from, to): (u64, u64),
    planted: Option<lode_sim::chaos::Planted>,
    scenario: Option<String>,
    jobs: usize,
    first_failure: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::{IsTerminal, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let exe = std::env::current_exe().context("own path")?;
    let wall = std::time::Instant::now();
    let next = AtomicU64::new(from);
    let stop = AtomicBool::new(false);
    let total = to.saturating_sub(from);
    let (tx, rx) = std::sync::mpsc::channel::<(u64, std::io::Result<std::process::Output>)>();
    let tty = std::io::stderr().is_terminal();
    let mut failed = Vec::new();
    let mut simulated_s = 0.0;
    let mut done = 0_u64;
    // Per coverage name: seeds that reached it, and hits in all.
    let mut coverage: std::collections::BTreeMap<String, (u64, u64)> =
        lode_sim::chaos::coverage_names()
            .into_iter()
            .map(|n| (n, (0, 0)))
            .collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let tx = tx.clone();
            let (exe, next, scenario, stop) = (&exe, &next, &scenario, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= to {
                    return;
                }
                let mut cmd = std::process::Command::new(exe);
                cmd.args(["run", "--seed", &seed.to_string()]);
                if planted.is_some() {
                    cmd.args(["--planted", flag_name(planted)]);
                }
                if let Some(s) = scenario {
                    cmd.args(["--scenario", s]);
                }
                if tx.send((seed, cmd.output())).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        for (seed, out) in rx {
            done += 1;
            let (ok, stdout, stderr) = match out {
                Ok(o) => (o.status.success(), o.stdout, o.stderr),
                Err(e) => (false, Vec::new(), e.to_string().into_bytes()),
            };
            let text = String::from_utf8_lossy(&stdout);
            if let Some(line) = text.lines().find_map(|l| l.strip_prefix("coverage: ")) {
                for (name, n) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
                    let e = coverage.entry(name.to_owned()).or_default();
                    e.0 += 1;
                    e.1 += n.parse::<u64>().unwrap_or(0);
                }
            }
            simulated_s += text
                .lines()
                .find_map(|l| {
                    let (_, rest) = l.split_once("; ")?;
                    let (_, rest) = rest.split_once("read; ")?;
                    rest.split_once(" simulated s")?.0.parse::<f64>().ok()
                })
                .unwrap_or(0.0);
            if !ok {
                let verdict = text
                    .lines()
                    .find(|l| l.starts_with("VIOLATION"))
                    .unwrap_or("crashed (no verdict)");
                let log = format!("lode-sim-seed-{seed}.log");
                let kept = std::fs::write(&log, [stdout.as_slice(), stderr.as_slice()].concat())
                    .map_or_else(
                        |e| format!("log not written: {e}"),
                        |()| format!("log in {log}"),
                    );
                if tty {
                    eprint!("\r\x1b[K");
                }
                println!("seed {seed} FAILED: {verdict} ({kept})");
                failed.push(seed);
                if first_failure {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            let width = 30_usize;
            let filled = usize::try_from(done * width as u64 / total.max(1))
                .unwrap_or(width)
                .min(width);
            let line = format!(
                "[{}{}] {done}/{total} seeds, {} failed, {:.0} simulated s, {:.0} wall s",
                "#".repeat(filled),
                ".".repeat(width - filled),
                failed.len(),
                simulated_s,
                wall.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r\x1b[K{line}");
            } else if done % (total / 10).max(1) == 0 || done == total {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        }
        if tty {
            eprintln!();
        }
    });
    failed.sort_unstable();
    let wall_s = wall.elapsed().as_secs_f64();
    println!("| seeds | failed | simulated s | wall s | simulated/wall | seeds/hour |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {from}..{to} ({done}) | {} | {simulated_s:.0} | {wall_s:.1} | {:.0}x | {:.0} |",
        failed.len(),
        simulated_s / wall_s.max(1e-9),
        done as f64 * 3600.0 / wall_s.max(1e-9)
    );
    println!();
    println!("coverage (seeds that reached it, of {done}; hits in all):");
    println!("| what | seeds | hits |");
    println!("|---|---|---|");
    for (name, (seeds, hits)) in &coverage {
        println!("| {name} | {seeds} | {hits} |");
    }
    let never: Vec<&str> = coverage
        .iter()
        .filter(|(_, (seeds, _))| *seeds == 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if !never.is_empty() {
        println!("never reached: {}", never.join(", "));
    }
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
    }
    if done < total {
        println!("stopped at the first failure: {done} of {total} seeds run");
    }
    anyhow::ensure!(failed.is_empty(), "{} of {done} seeds failed", failed.len());
    Ok(())
}

#[cfg(madsim)]
fn check_determinism(seed: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("own path")?;
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let out = std::process::Command::new(&exe)
            .args(["run", "--seed", &seed.to_string()])
            .output()
            .context("running the seed")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hash = text
            .lines()
            .find_map(|l| l.strip_prefix("trace hash "))
            .context("no trace hash in the run's output")?
            .to_owned();
        hashes.push(hash);
    }
    println!("seed {seed}: trace hashes {} and {}", hashes[0], hashes[1]);
    anyhow::ensure!(hashes[0] == hashes[1], "seed {seed} is not deterministic");
    Ok(())
}

#[cfg(madsim)]
fn disk_crash((from, to): (u64, u64)) -> anyhow::Result<()> {
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
    eprintln!("  RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-madsim cargo run -p lode-sim -- run --seed 1");
    std::process::exit(2);
}
