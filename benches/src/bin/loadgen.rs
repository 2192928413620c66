//! Races Tandem against the servers people use, on loopback, in one run.
//!
//! Every simulated client is a real yrs peer (see `tandem_benches::loadgen::peer`). Each
//! scenario runs its variants against every target interleaved (A B C A B C …), a fresh server
//! per run, and prints one JSON line and a Markdown table of medians over the repetitions.
//!
//! Usage: `loadgen [SCENARIO…] [--targets tandem,relay,y-websocket,hocuspocus,y-sweet] [--reps 3]`
//! with scenarios `fanout many-docs saturation idle idle-docs presence cold-join join-storm
//! durability` (all when none is named). `--quick` shrinks every scenario to a smoke test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tandem_benches::loadgen::report::{Figures, Scenario};
use tandem_benches::loadgen::scenario;
use tandem_benches::loadgen::target::{Paths, Server, Target};

/// Peers that read through tungstenite get a fresh buffer for every big message (a 20 MB sync
/// step 2 in the join scenarios): with the system allocator those were fresh pages from the
/// kernel each time, page faults and zeroing on the same two cores as the server; jemalloc
/// reuses them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(about = "Tandem against y-sweet, @y/websocket-server, Hocuspocus and a bare relay")]
struct Args {
    /// Scenarios to run (all when none is given).
    scenarios: Vec<String>,
    /// Targets, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tandem,relay,y-websocket,hocuspocus,y-sweet"
    )]
    targets: Vec<String>,
    /// Repetitions of each variant on each target (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Small sizes and short runs: checks that everything works, measures nothing.
    #[arg(long)]
    quick: bool,
    /// The workspace root (binaries in target/release, peers in benches/peers).
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

const ALL: &[&str] = &[
    "fanout",
    "many-docs",
    "saturation",
    "durability",
    "idle",
    "idle-docs",
    "presence",
    "cold-join",
    "join-storm",
];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let paths = Paths::from_root(&args.root);
    let mut targets = Vec::new();
    for name in &args.targets {
        let target = Target::parse(name)?;
        if paths.available(target) {
            targets.push(target);
        } else {
            eprintln!(
                "skipping {name}: not installed (run benches/peers/install.sh, build --release)"
            );
        }
    }
    let scenarios: Vec<&str> = if args.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    for name in scenarios {
        let scenario = run_scenario(name, &targets, &paths, args.reps, args.quick).await?;
        println!("{}", scenario.json_line());
        println!("\n{}", scenario.markdown());
    }
    Ok(())
}

/// Runs every variant of `name` against every target, interleaved over repetitions.
async fn run_scenario(
    name: &str,
    targets: &[Target],
    paths: &Paths,
    reps: usize,
    quick: bool,
) -> Result<Scenario> {
    let q = |full: usize, small: usize| if quick { small } else { full };
    let secs = |full: u64, small: u64| Duration::from_secs(if quick { small } else { full });
    let mut scenario = Scenario::new(match name {
        "fanout" => "fanout",
        "many-docs" => "many-docs",
        "saturation" => "saturation",
        "durability" => "durability",
        "idle" => "idle",
        "idle-docs" => "idle-docs",
        "presence" => "presence",
        "cold-join" => "cold-join",
        "join-storm" => "join-storm",
        other => anyhow::bail!("unknown scenario {other:?}; one of {ALL:?}"),
    });
    eprintln!("== {name}");
    let targets: Vec<Target> = match name {
        "durability" => vec![
            Target::Tandem { fsync: true },
            Target::Tandem { fsync: false },
        ]
        .into_iter()
        .filter(|target| paths.available(*target))
        .collect(),
        // A relay has no document to join.
        "cold-join" | "join-storm" => targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Relay)
            .collect(),
        _ => targets.to_vec(),
    };
    // Docs built once and shared by every run.
    let history =
        (name == "cold-join").then(|| scenario::history_doc(q(120_000, 5_000), 1, 10_000, 1));
    let big = (name == "join-storm").then(|| scenario::history_doc(q(25_000, 500), 1000, 2_000, 2));
    let steps: &[f64] = if quick {
        &[200.0, 400.0]
    } else {
        &[
            1_000.0, 2_000.0, 4_000.0, 6_000.0, 8_000.0, 10_000.0, 12_000.0, 16_000.0, 20_000.0,
            24_000.0, 32_000.0, 40_000.0, 48_000.0, 56_000.0, 64_000.0, 72_000.0, 80_000.0,
            96_000.0, 112_000.0, 128_000.0,
        ]
    };
    let variants: Vec<String> = match name {
        "fanout" => [(2, 2), (50, 5), (200, 10), (1500, 20)]
            .iter()
            .map(|(n, small)| format!("n={}", q(*n, *small)))
            .collect(),
        "idle" => [5_000, 10_000]
            .iter()
            .map(|n| format!("conns={}", q(*n, 200)))
            .collect(),
        "many-docs" => vec![format!("docs={}x4", q(500, 20))],
        "idle-docs" => vec![format!("docs={}", q(1_000, 50))],
        "presence" => vec![format!("peers={}", q(500, 40))],
        "join-storm" => vec![format!("joiners={}", q(150, 10))],
        _ => vec!["-".to_owned()],
    };
    for rep in 0..reps {
        for variant in &variants {
            for &target in &targets {
                eprintln!("  rep {} {variant} {}", rep + 1, target.name());
                let server = match Server::start(target, paths).await {
                    Ok(server) => server,
                    Err(error) => {
                        scenario.fail(variant, target.name(), &error);
                        continue;
                    }
                };
                let number = |prefix: &str| -> usize {
                    variant
                        .trim_start_matches(prefix)
                        .split('x')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1)
                };
                let result: Result<Figures> = match name {
                    "fanout" => scenario::fanout(&server, number("n="), 20.0, secs(5, 2)).await,
                    "many-docs" => {
                        scenario::many_docs(&server, number("docs="), 4, secs(10, 2)).await
                    }
                    "saturation" | "durability" => {
                        scenario::saturation(&server, 20, q(1_000, 100) as f64, steps, secs(3, 1))
                            .await
                    }
                    "idle" => scenario::idle(&server, number("conns=")).await,
                    "idle-docs" => scenario::idle_docs(&server, number("docs=")).await,
                    "presence" => {
                        scenario::presence(&server, number("peers=") / 20, 20, secs(10, 2)).await
                    }
                    "cold-join" => {
                        let (updates, len) = history.as_ref().expect("history doc");
                        scenario::cold_join(&server, updates, *len).await
                    }
                    "join-storm" => {
                        let (updates, len) = big.as_ref().expect("big doc");
                        scenario::join_storm(&server, updates, *len, number("joiners=")).await
                    }
                    _ => unreachable!("checked above"),
                };
                server.stop().await;
                match result {
                    Ok(figures) => {
                        eprintln!("    {figures:?}");
                        scenario.record(variant, target.name(), figures);
                    }
                    Err(error) => scenario.fail(variant, target.name(), &error),
                }
            }
        }
    }
    Ok(scenario)
}
