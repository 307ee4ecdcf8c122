//! Benchmark (not a test): compile + diff of large policies and of a
//! one-rule change, pure and end to end through `policyd reload` over the
//! real sockets to an in-memory loader (everything but the BPF syscalls).
//!
//! Run: `cargo bench -p policyd --bench reload` (add `-- 100000` for more
//! sizes). Prints medians of several runs.

use std::time::{Duration, Instant};

use kernel_model::{
    diff::{diff_ops, OpCounts},
    state::KernelState,
};
use policyd::{
    compile::compile,
    daemon::{self, Config, InventorySource},
    ids::IdTables,
    inventory::Inventory,
    policy,
};
use proto::{policyd::PolicydClient, transport};
use test_kit::{
    memory_loader::MemoryLoader,
    synthetic::{self, rule_line},
};

const RUNS: usize = 7;
const POLICIES: usize = 10;
const CONTAINERS: usize = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

/// A one-rule edit of `text`: the middle rule's port 443 becomes 8443 (the
/// synthetic generator gives every fifth rule tcp/443).
fn edit_one_rule(text: &str, rules: usize) -> String {
    let n = (rules / 2 / 5) * 5;
    let old = rule_line(n);
    assert!(old.contains("[443]"), "rule {n}: {old}");
    text.replacen(&old, &old.replace("[443]", "[8443]"), 1)
}

fn compile_text(text: &str, inventory: &Inventory, ids: &mut IdTables) -> KernelState {
    let set = policy::parse("bench.toml", text).expect("valid");
    compile(&set, inventory, ids).expect("compiles").state
}

fn pure(rules: usize) {
    let text = synthetic::policy_text(rules, POLICIES);
    let edited = edit_one_rule(&text, rules);
    let inventory = synthetic::inventory(CONTAINERS);

    let parse = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(policy::parse("bench.toml", &text).expect("valid"));
                t.elapsed()
            })
            .collect(),
    );
    let set = policy::parse("bench.toml", &text).expect("valid");
    let compile_time = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(
                    compile(&set, &inventory, &mut IdTables::default()).expect("compiles"),
                );
                t.elapsed()
            })
            .collect(),
    );
    let mut ids = IdTables::default();
    let installed = compile_text(&text, &inventory, &mut ids);
    let empty = KernelState::default();
    let full_ops = diff_ops(&empty, &installed);
    let full_diff = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(diff_ops(&empty, &installed));
                t.elapsed()
            })
            .collect(),
    );

    // One-rule change, as the daemon does it: parse, compile with the
    // daemon's id tables, diff against what is installed.
    let mut one_ops = 0;
    let one_rule = median(
        (0..RUNS)
            .map(|i| {
                let mut warm = ids.clone();
                let t = Instant::now();
                let next = compile_text(
                    if i % 2 == 0 { &edited } else { &text },
                    &inventory,
                    &mut warm,
                );
                let ops = diff_ops(&installed, &next);
                let took = t.elapsed();
                if i % 2 == 0 {
                    one_ops = ops.len();
                }
                took
            })
            .collect(),
    );

    println!("{rules} rules, {POLICIES} policies, {CONTAINERS} containers:");
    println!(
        "  kernel entries    {} processes, {} dests, {} ports, {} cgroups, {} veths",
        installed.processes.len(),
        installed.dests.len(),
        installed.ports.len(),
        installed.cgroups.len(),
        installed.veths.len()
    );
    println!("  parse+validate    {}", ms(parse));
    println!("  compile           {}", ms(compile_time));
    println!(
        "  diff vs empty     {}  ({} ops)",
        ms(full_diff),
        full_ops.len()
    );
    println!(
        "  one-rule change   {}  (parse+compile+diff, {one_ops} ops)",
        ms(one_rule)
    );
}

/// `policyd reload` over the real sockets: CLI client → policyd → loader.
async fn end_to_end(rules: usize) {
    let dir = std::env::temp_dir().join(format!("policyd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = synthetic::policy_text(rules, POLICIES);
    let edited = edit_one_rule(&text, rules);
    std::fs::write(dir.join("policy.toml"), "").expect("write");
    std::fs::write(
        dir.join("inventory.json"),
        serde_json::to_string(&synthetic::inventory(CONTAINERS)).expect("json"),
    )
    .expect("write");
    let loader = MemoryLoader::default();
    loader
        .serve(&dir.join("loader.sock"))
        .expect("loader socket");
    let config = Config {
        policy: dir.join("policy.toml"),
        socket: dir.join("policyd.sock"),
        loader_socket: dir.join("loader.sock"),
        inventory: InventorySource::File(dir.join("inventory.json")),
        group: "root".into(),
        // The bench reloads explicitly; keep the watchers out of the way.
        file_poll: Duration::from_secs(3600),
        policy_watch: None,
        resync_every: Duration::from_secs(3600),
        metrics_listen: None,
        event_log: policyd::daemon::observe::EventLogTarget::Off,
    };
    tokio::spawn(daemon::run(config));
    let client = loop {
        if let Ok(stream) = transport::connect(
            &dir.join("policyd.sock"),
            &proto::transport::ServerIs::root_or([nix::unistd::geteuid().as_raw()]),
        )
        .await
        {
            break PolicydClient::new(
                tarpc::client::Config::default(),
                transport::client(stream, transport::Service::Policyd),
            )
            .spawn();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let reload = |text: String| {
        let client = client.clone();
        let path = dir.join("policy.toml");
        async move {
            std::fs::write(&path, text).expect("write");
            let t = Instant::now();
            let report = client
                .reload(transport::context_with_deadline(120), false, u32::MAX)
                .await
                .expect("rpc")
                .expect("reload");
            (t.elapsed(), report)
        }
    };
    let (install, report) = reload(text.clone()).await;
    let install_ops = report.ops.len();
    let mut one = Vec::new();
    let mut one_counts = OpCounts::default();
    let mut same = Vec::new();
    for i in 0..RUNS {
        let (took, report) = reload(if i % 2 == 0 {
            edited.clone()
        } else {
            text.clone()
        })
        .await;
        one.push(took);
        one_counts = OpCounts::of(&report.ops);
        let (took, report) = reload(if i % 2 == 0 {
            edited.clone()
        } else {
            text.clone()
        })
        .await;
        assert!(report.ops.is_empty());
        same.push(took);
    }
    println!("  end to end (policyd reload over sockets to an in-memory loader):");
    println!("    first install   {}  ({install_ops} ops)", ms(install));
    println!(
        "    one-rule change {}  ({} ops: {} dests, {} ports)",
        ms(median(one)),
        one_counts.total(),
        one_counts.dests,
        one_counts.ports
    );
    println!("    unchanged file  {}", ms(median(same)));
    let (_, state, _) = loader.snapshot();
    assert_eq!(state.cgroups.len(), CONTAINERS);
    assert_eq!(state.veths.len(), CONTAINERS);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![10_000];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for rules in sizes {
        pure(rules);
        runtime.block_on(end_to_end(rules));
    }
}
