//! Races Tandem against the servers people use, on loopback, in one run.
//!
//! Every simulated client is a real yrs peer (see `tandem_benches::loadgen::peer`). Each
//! scenario runs its variants against every target interleaved (A B C A B C …), a fresh server
//! per run, and prints one JSON line and a Markdown table of medians over the repetitions.
//!
//! Usage: `loadgen [SCENARIO…] [--targets tandem,relay,y-websocket,hocuspocus,y-sweet] [--reps 3]`
//! with scenarios `fanout many-docs saturation idle idle-docs presence cold-join join-storm
//! durability` (all when none is named), and the cluster scenarios `cluster-same cluster-cross
//! cluster-append cluster-throughput cluster-join-storm cluster-recovery` for the
//! `tandem-cluster` target (`--targets tandem,tandem-cluster,relay`; run only when named).
//! `--quick` shrinks every scenario to a smoke test.
//! With `LOADGEN_TANDEM_BEFORE=/path/to/tandem`, the target `tandem-before` races an earlier
//! build against `tandem`, with the same flags, and every table gets a line of ratios.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use tandem_benches::loadgen::disk;
use tandem_benches::loadgen::report::{Figures, Scenario, pretty};
use tandem_benches::loadgen::scenario::{self, Placement};
use tandem_benches::loadgen::target::{Build, Paths, Server, Target};

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

/// Scenarios run only when named: `metrics` (saturation with metrics on and off).
const EXTRA: &[&str] = &["metrics"];

/// The scenarios of cluster mode (issue 19), run only when named.
const CLUSTER: &[&str] = &[
    "cluster-same",
    "cluster-cross",
    "cluster-append",
    "cluster-throughput",
    "cluster-join-storm",
    "cluster-recovery",
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
        "cluster-same" => "cluster-same",
        "cluster-cross" => "cluster-cross",
        "cluster-append" => "cluster-append",
        "cluster-throughput" => "cluster-throughput",
        "cluster-join-storm" => "cluster-join-storm",
        "cluster-recovery" => "cluster-recovery",
        "metrics" => "metrics",
        other => {
            anyhow::bail!("unknown scenario {other:?}; one of {ALL:?}, {EXTRA:?} or {CLUSTER:?}")
        }
    });
    eprintln!("== {name}");
    let targets: Vec<Target> = match name {
        "durability" => vec![
            Target::TANDEM,
            Target::Tandem {
                fsync: false,
                build: Build::Current,
            },
        ]
        .into_iter()
        .filter(|target| paths.available(*target))
        .collect(),
        // What metrics cost: the same server with them on (as shipped) and off.
        "metrics" => vec![Target::TANDEM, Target::TandemNoMetrics]
            .into_iter()
            .filter(|target| paths.available(*target))
            .collect(),
        // A relay has no document to join.
        "cold-join" | "join-storm" | "cluster-join-storm" => targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Relay)
            .collect(),
        // Only a cluster has a node to kill.
        "cluster-recovery" => targets
            .iter()
            .copied()
            .filter(|t| *t == Target::TandemCluster)
            .collect(),
        _ => targets.to_vec(),
    };
    // Docs built once and shared by every run.
    let history =
        (name == "cold-join").then(|| scenario::history_doc(q(120_000, 5_000), 1, 10_000, 1));
    let big = matches!(name, "join-storm" | "cluster-join-storm")
        .then(|| scenario::history_doc(q(25_000, 500), 1000, 2_000, 2));
    let steps: &[f64] = if quick {
        &[200.0, 400.0]
    } else {
        &[
            1_000.0, 2_000.0, 4_000.0, 6_000.0, 8_000.0, 10_000.0, 12_000.0, 16_000.0, 20_000.0,
            24_000.0, 32_000.0, 40_000.0, 48_000.0, 56_000.0, 64_000.0, 72_000.0, 80_000.0,
            96_000.0, 112_000.0, 128_000.0,
        ]
    };
    // Cluster throughput: fewer, wider steps, so a run of three targets stays within minutes.
    let cluster_steps: &[f64] = if quick {
        &[200.0, 400.0]
    } else {
        &[
            2_000.0, 4_000.0, 8_000.0, 12_000.0, 16_000.0, 24_000.0, 32_000.0, 48_000.0, 64_000.0,
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
        "join-storm" | "cluster-join-storm" => vec![format!("joiners={}", q(150, 10))],
        "cluster-same" => [(2, 2), (50, 5)]
            .iter()
            .map(|(n, small)| format!("n={}", q(*n, *small)))
            .collect(),
        "cluster-cross" => [(3, 3), (50, 5)]
            .iter()
            .map(|(n, small)| format!("n={}", q(*n, *small)))
            .collect(),
        "cluster-append" => vec!["n=2".to_owned()],
        // Round-robin spreads a doc's peers over every node; a balancer routing by document
        // (README, "Cluster") puts them all on one.
        "cluster-throughput" => vec!["peers=20".to_owned(), "peers=20 by-doc".to_owned()],
        "cluster-recovery" => vec![format!("peers={}", q(30, 6))],
        _ => vec!["-".to_owned()],
    };
    // The disk's floor, sampled before every run of the many-documents scenario.
    let mut floor = (name == "many-docs")
        .then(|| Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
    for rep in 0..reps {
        for variant in &variants {
            for &target in &targets {
                eprintln!("  rep {} {variant} {}", rep + 1, target.name());
                if let Some(floor) = &mut floor {
                    let writes = disk::dsync_writes(FLOOR_WRITES)?;
                    eprintln!(
                        "    fsync floor: {FLOOR_WRITES} O_DSYNC writes of 4 KiB, p50 {} ms, p99 {} ms",
                        pretty(ms(writes.value_at_quantile(0.5))),
                        pretty(ms(writes.value_at_quantile(0.99)))
                    );
                    floor.add(&writes)?;
                }
                let mut server = match Server::start(target, paths).await {
                    Ok(server) => server,
                    Err(error) => {
                        scenario.fail(variant, target.name(), &error);
                        continue;
                    }
                };
                let number = |prefix: &str| -> usize {
                    variant
                        .trim_start_matches(prefix)
                        .split(|c: char| c == 'x' || c.is_whitespace())
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1)
                };
                let result: Result<Figures> = match name {
                    "fanout" => {
                        scenario::fanout(&server, number("n="), 20.0, secs(5, 2), Placement::Same)
                            .await
                    }
                    "cluster-same" => {
                        scenario::fanout(&server, number("n="), 20.0, secs(5, 2), Placement::Same)
                            .await
                    }
                    "cluster-cross" => {
                        scenario::fanout(&server, number("n="), 20.0, secs(5, 2), Placement::Cross)
                            .await
                    }
                    // The append's cost per update: enough updates (2,000) for CPU ticks of
                    // 10 ms to count, at a rate where each update is still its own group.
                    "cluster-append" => {
                        scenario::fanout(&server, 2, 500.0, secs(4, 1), Placement::Same).await
                    }
                    "cluster-throughput" => {
                        scenario::saturation(
                            &server,
                            number("peers="),
                            q(1_000, 100) as f64,
                            FIXED_WINDOW,
                            cluster_steps,
                            secs(3, 1),
                            if variant.ends_with("by-doc") {
                                Placement::Same
                            } else {
                                Placement::Spread
                            },
                        )
                        .await
                    }
                    "cluster-join-storm" => {
                        let (updates, len) = big.as_ref().expect("big doc");
                        scenario::join_storm(
                            &server,
                            updates,
                            *len,
                            number("joiners="),
                            Placement::Spread,
                        )
                        .await
                    }
                    "cluster-recovery" => scenario::recovery(&mut server, number("peers=")).await,
                    "many-docs" => {
                        scenario::many_docs(&server, number("docs="), 4, secs(10, 2)).await
                    }
                    "saturation" | "durability" => {
                        scenario::saturation(
                            &server,
                            20,
                            q(1_000, 100) as f64,
                            FIXED_WINDOW,
                            steps,
                            secs(3, 1),
                            Placement::Same,
                        )
                        .await
                    }
                    // Only the fixed rate, for five times as long: a difference of a few percent
                    // in CPU is a few 10 ms ticks of a 4 s window, within its noise.
                    "metrics" => {
                        scenario::saturation(
                            &server,
                            20,
                            q(1_000, 100) as f64,
                            secs(20, 1),
                            &[],
                            secs(3, 1),
                            Placement::Same,
                        )
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
                        scenario::join_storm(
                            &server,
                            updates,
                            *len,
                            number("joiners="),
                            Placement::Same,
                        )
                        .await
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
    if let Some(floor) = &floor {
        check_many_docs(&mut scenario, &variants, floor);
    }
    if name == "idle-docs" {
        check_unloaded(&mut scenario, &variants);
    }
    compare_builds(&mut scenario, &variants);
    check_cluster(&mut scenario, &variants);
    check_protocols(&mut scenario, &variants);
    Ok(scenario)
}

/// How long saturation edits at its fixed rate, over which CPU per delivery is measured.
const FIXED_WINDOW: Duration = Duration::from_secs(4);

/// O_DSYNC writes timed before each many-documents run.
const FLOOR_WRITES: usize = 200;

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The many-documents target: each Tandem build's p99 at most the relay's p99 plus two
/// commits, a commit taken as one 4 KiB O_DSYNC write measured in the same run. Checked with
/// the floor's p99 (a tail against tails) and, stricter, with its p50.
fn check_many_docs(scenario: &mut Scenario, variants: &[String], floor: &Histogram<u64>) {
    let (p50, p99) = (
        ms(floor.value_at_quantile(0.5)),
        ms(floor.value_at_quantile(0.99)),
    );
    scenario.same_run("fsync_floor_writes", floor.len() as f64);
    scenario.same_run("fsync_floor_p50_ms", p50);
    scenario.same_run("fsync_floor_p99_ms", p99);
    scenario.same_run("fsync_floor_max_ms", ms(floor.max()));
    scenario.note(format!(
        "fsync floor (same run, {} appends of 4 KiB with O_DSYNC on the servers' filesystem): p50 {} ms, p99 {} ms, max {} ms",
        floor.len(),
        pretty(p50),
        pretty(p99),
        pretty(ms(floor.max()))
    ));
    for variant in variants {
        let Some(relay) = scenario.median(variant, "relay", "p99_ms") else {
            continue;
        };
        for target in scenario.targets() {
            if !target.starts_with("tandem") {
                continue;
            }
            let Some(tandem) = scenario.median(variant, &target, "p99_ms") else {
                continue;
            };
            let verdict = |budget: f64| {
                format!(
                    "{} ms: {} ({}× the budget)",
                    pretty(budget),
                    if tandem <= budget { "met" } else { "missed" },
                    pretty(tandem / budget)
                )
            };
            scenario.note(format!(
                "{variant} {target}: p99 {} ms against the relay's p99 {} ms + 2 × fsync p99 {} ms = {}; with 2 × fsync p50 {} ms = {}",
                pretty(tandem),
                pretty(relay),
                pretty(p99),
                verdict(relay + 2.0 * p99),
                pretty(p50),
                verdict(relay + 2.0 * p50),
            ));
        }
    }
}

/// The memory target: anonymous RSS after every doc unloaded within 10% of the baseline taken
/// after one doc was loaded and unloaded.
fn check_unloaded(scenario: &mut Scenario, variants: &[String]) {
    for variant in variants {
        for target in scenario.targets() {
            let figure = |name: &str| scenario.median(variant, &target, name);
            let (Some(one_doc), Some(after), Some(ratio)) = (
                figure("one_doc_anon_mb"),
                figure("after_unload_anon_mb"),
                figure("after_vs_one_doc_anon"),
            ) else {
                continue;
            };
            scenario.note(format!(
                "{variant} {target}: RssAnon after every doc unloaded {} MB against {} MB after one doc loaded and unloaded: {}× ({} the 1.10× target)",
                pretty(after),
                pretty(one_doc),
                pretty(ratio),
                if ratio <= 1.10 { "within" } else { "outside" }
            ));
        }
    }
}

/// The targets of issue 19 for cluster mode, each checked with medians of the same run.
fn check_cluster(scenario: &mut Scenario, variants: &[String]) {
    let verdict = |met: bool| if met { "met" } else { "missed" };
    for variant in variants {
        let cluster = |figure: &str| scenario.median(variant, "tandem-cluster", figure);
        let single = |figure: &str| scenario.median(variant, "tandem", figure);
        let mut notes = Vec::new();
        match scenario.name {
            "cluster-same" | "cluster-cross" => {
                let (budget_ms, p99_factor) = if scenario.name == "cluster-same" {
                    (0.3, None)
                } else {
                    (0.6, Some(1.5))
                };
                if let (Some(c50), Some(s50)) = (cluster("p50_ms"), single("p50_ms")) {
                    notes.push(format!(
                        "{variant}: cluster p50 {} ms against single-node p50 {} ms + {budget_ms} ms: {}",
                        pretty(c50),
                        pretty(s50),
                        verdict(c50 <= s50 + budget_ms)
                    ));
                }
                if let (Some(factor), Some(c99), Some(s99)) =
                    (p99_factor, cluster("p99_ms"), single("p99_ms"))
                {
                    notes.push(format!(
                        "{variant}: cluster p99 {} ms against {factor} × single-node p99 {} ms: {} ({}×)",
                        pretty(c99),
                        pretty(s99),
                        verdict(c99 <= factor * s99),
                        pretty(c99 / s99)
                    ));
                }
            }
            "cluster-throughput" => {
                if let (Some(c), Some(s)) = (
                    cluster("max_deliveries_per_s"),
                    single("max_deliveries_per_s"),
                ) {
                    notes.push(format!(
                        "{variant}: cluster {} deliveries/s against 0.7 × single-node {}: {} ({}×)",
                        pretty(c),
                        pretty(s),
                        verdict(c >= 0.7 * s),
                        pretty(c / s.max(1.0))
                    ));
                }
            }
            "cluster-join-storm" => {
                if let (Some(synced), Some(opens)) =
                    (cluster("received_ms"), cluster("doc_opens_max_per_node"))
                {
                    notes.push(format!(
                        "{variant}: the last joiner synced {} ms after the storm began (under 3,000 ms: {}); the doc decoded at most {} time(s) per node (once: {})",
                        pretty(synced),
                        verdict(synced < 3_000.0),
                        pretty(opens),
                        verdict(opens <= 1.0)
                    ));
                }
            }
            "cluster-recovery" => {
                if let Some(p99) = cluster("resync_p99_ms") {
                    notes.push(format!(
                        "{variant}: p99 from the kill to sync step 2 on another node {} ms (within 3,000 ms: {})",
                        pretty(p99),
                        verdict(p99 <= 3_000.0)
                    ));
                }
            }
            _ => {}
        }
        for note in notes {
            scenario.note(note);
        }
    }
}

/// The targets of issue 20, from medians of the same run: through the Hocuspocus protocol,
/// Tandem within 1.1× of its own y-websocket path and ahead of Hocuspocus on every figure the
/// scenario has (latency and CPU per delivery lower, sustained deliveries higher); metrics
/// costing at most 3% of CPU per delivery.
fn check_protocols(scenario: &mut Scenario, variants: &[String]) {
    let verdict = |met: bool| if met { "met" } else { "missed" };
    // (column, whether higher is better)
    const FIGURES: &[(&str, bool)] = &[
        ("p50_ms", false),
        ("p99_ms", false),
        ("fixed_p99_ms", false),
        ("cpu_s_per_m_deliveries", false),
        ("server_cpu_us_per_update", false),
        ("max_deliveries_per_s", true),
    ];
    for variant in variants {
        let figure = |target: &str, column: &str| scenario.median(variant, target, column);
        let mut notes = Vec::new();
        for &(column, higher_is_better) in FIGURES {
            let Some(hp) = figure("tandem-hocuspocus", column) else {
                continue;
            };
            if let Some(yw) = figure("tandem", column).filter(|v| *v > 0.0) {
                let ratio = hp / yw;
                let met = if higher_is_better {
                    ratio >= 1.0 / 1.1
                } else {
                    ratio <= 1.1
                };
                notes.push(format!(
                    "{variant}: {column} tandem-hocuspocus {} against tandem (y-websocket) {}: {}× ({} the 1.1× target)",
                    pretty(hp),
                    pretty(yw),
                    pretty(ratio),
                    verdict(met)
                ));
            }
            if let Some(theirs) = figure("hocuspocus", column).filter(|v| *v > 0.0) {
                let met = if higher_is_better {
                    hp > theirs
                } else {
                    hp < theirs
                };
                notes.push(format!(
                    "{variant}: {column} tandem-hocuspocus {} against hocuspocus {}: {}× (ahead: {})",
                    pretty(hp),
                    pretty(theirs),
                    pretty(hp / theirs),
                    verdict(met)
                ));
            }
        }
        if let (Some(on), Some(off)) = (
            figure("tandem", "cpu_s_per_m_deliveries"),
            figure("tandem-nometrics", "cpu_s_per_m_deliveries").filter(|v| *v > 0.0),
        ) {
            notes.push(format!(
                "{variant}: CPU per million deliveries with metrics {} s against without {} s: {}× (within 1.03×: {})",
                pretty(on),
                pretty(off),
                pretty(on / off),
                verdict(on / off <= 1.03)
            ));
        }
        for note in notes {
            scenario.note(note);
        }
    }
}

/// When both Tandem builds ran: every figure of `tandem` over `tandem-before`, from medians;
/// when the cluster ran, every figure of `tandem-cluster` over `tandem` and over `relay`.
fn compare_builds(scenario: &mut Scenario, variants: &[String]) {
    let targets = scenario.targets();
    for (after, before) in [
        ("tandem", "tandem-before"),
        ("tandem-nofsync", "tandem-before-nofsync"),
        ("tandem-cluster", "tandem"),
        ("tandem-cluster", "relay"),
        ("tandem-hocuspocus", "tandem"),
        ("tandem-hocuspocus", "hocuspocus"),
        ("tandem", "tandem-nometrics"),
    ] {
        if !targets.iter().any(|t| t == after) || !targets.iter().any(|t| t == before) {
            continue;
        }
        for variant in variants {
            let ratios: Vec<String> = scenario
                .columns()
                .iter()
                .filter_map(|column| {
                    let a = scenario.median(variant, after, column)?;
                    let b = scenario.median(variant, before, column)?;
                    let ratio = if b == 0.0 {
                        if a == 0.0 {
                            "=".to_owned()
                        } else {
                            "–".to_owned()
                        }
                    } else {
                        format!("{}×", pretty(a / b))
                    };
                    Some(format!("{column} {ratio}"))
                })
                .collect();
            if !ratios.is_empty() {
                scenario.note(format!(
                    "{variant} {after} / {before}: {}",
                    ratios.join(", ")
                ));
            }
        }
    }
}
