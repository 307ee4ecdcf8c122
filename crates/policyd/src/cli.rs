//! The operator's CLI: argument parsing, calls to the daemon, and output
//! (tables for people, `--json` for machines).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, Subcommand};
use kernel_model::state::{Entry, EntryKey, MapOp, ProcessMatch};
use proto::{
    paths,
    policyd::{
        ContainerStatus, EventBatch, ExplainQuery, Explanation, PolicydClient, PolicydError,
        ReloadReport, Status,
    },
    transport,
};
use serde_json::json;

use crate::{
    compile,
    coverage::{self, AttachedParents},
    daemon::{self, engine::to_wire, feeds::read_inventory_file, InventorySource},
    explain,
    ids::IdTables,
    inventory::Inventory,
    net::Prefix,
    policy::{self, proto_name, PolicyError},
    setup::{self, SetupOutcome},
};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// The policy file is invalid (check, reload): nothing was applied.
    pub const INVALID_POLICY: u8 = 1;
    /// The policyd daemon could not be reached.
    pub const DAEMON_UNREACHABLE: u8 = 2;
    /// The daemon is up but the loader is unreachable or refused the change.
    pub const LOADER_FAILED: u8 = 3;
    /// The container (or other named thing) does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// `setup` refused to change a file (invalid, or a conflicting
    /// setting without --force) or could not write it: nothing changed.
    pub const SETUP_REFUSED: u8 = 5;
    /// Bad arguments.
    pub const USAGE: u8 = 64;
    /// A bug or an unexpected condition.
    pub const INTERNAL: u8 = 70;
}

const EXIT_CODES: &str =
    "Exit codes: 0 ok; 1 invalid policy (nothing applied); 2 policyd unreachable; \
3 loader unreachable or refused the change; 4 not found; 5 setup changed nothing (refused or \
failed); 64 usage error; 70 internal error.";

#[derive(Parser, Debug)]
#[command(name = "policyd", version, about = "contain's policy daemon and operator CLI", after_help = EXIT_CODES)]
pub struct Cli {
    /// policyd's socket (the daemon listens on it, the other commands call it).
    #[arg(long, global = true, env = "CONTAIN_POLICYD_SOCKET", default_value = paths::POLICYD_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a policy file without applying it (no daemon needed).
    Check {
        file: PathBuf,
        /// Also show which policy each container of this inventory (JSON) gets.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// A cgroup bpf-loader attached its programs to, relative to the
        /// cgroup2 mount (e.g. /contain.slice); repeat for several. With
        /// --inventory, containers below none of them are shown unenforced;
        /// without any, enforcement is shown unverified.
        #[arg(long = "attached", value_name = "CGROUP", requires = "inventory")]
        attached: Vec<String>,
    },
    /// Re-read the policy file and apply it; prints the diff.
    Reload {
        /// Print the diff without applying it.
        #[arg(long)]
        dry_run: bool,
        /// List at most this many operations (default: all with --json,
        /// 200 otherwise); the counts per map are always complete.
        #[arg(long)]
        max_ops: Option<u32>,
    },
    /// Containers, the policy each got, modes, counters.
    Status,
    /// Which rule decides a flow, and why.
    Explain {
        /// Container name, id, unique id prefix, or NAMESPACE:ID.
        container: String,
        /// Destination address.
        dest: IpAddr,
        /// tcp, udp, icmp, icmpv6 or a number (default tcp when --port is given).
        #[arg(long)]
        proto: Option<String>,
        /// Port, or for ICMP a type (`8`, `8/0`, `echo-request`).
        #[arg(long)]
        port: Option<String>,
        /// A comm (`curl`) or an executable path (`/usr/bin/curl`): the file
        /// that path names in the container, as the kernel would see it.
        #[arg(long)]
        process: Option<String>,
        /// Explain offline against this policy file instead of asking the daemon.
        #[arg(long, requires = "inventory")]
        policy: Option<PathBuf>,
        /// Inventory (JSON) for an offline explain.
        #[arg(long, requires = "policy")]
        inventory: Option<PathBuf>,
    },
    /// Deny and audit events.
    Events {
        /// Keep printing new events as they come.
        #[arg(long)]
        follow: bool,
        /// Only events with a sequence number above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many per request.
        #[arg(long, default_value_t = 256)]
        max: u32,
    },
    /// Configure another program to work with contain (no daemon needed).
    #[command(subcommand)]
    Setup(SetupTarget),
    /// Run the daemon.
    Daemon {
        /// The policy file (TOML, or the thesis JSON allow-list).
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, default_value = paths::LOADER_SOCKET)]
        loader_socket: PathBuf,
        #[arg(long, default_value = paths::RESOLVER_SOCKET)]
        resolver_socket: PathBuf,
        /// Take the inventory from this JSON file instead of the resolver.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Group admitted to the socket besides root.
        #[arg(long, default_value = paths::GROUP)]
        group: String,
        /// Seconds between checks of the `--inventory` file for changes.
        #[arg(long, default_value_t = 1.0)]
        poll_secs: f64,
        /// Seconds between checks of the policy file, each change then
        /// applied as `policyd reload` would once the file stayed the same
        /// for a whole interval; or `off`: only `policyd reload` and SIGHUP
        /// apply an edited file, so a half-done edit saved on the way is
        /// never enforced.
        #[arg(long, default_value = "off", value_parser = parse_watch)]
        watch_policy_secs: Watch,
        /// Seconds between re-reads of the loader's state (drift repair).
        #[arg(long, default_value_t = 60.0)]
        resync_secs: f64,
        /// Serve Prometheus metrics at http://ADDRESS/metrics (plain HTTP,
        /// no authentication: keep it on loopback or behind a proxy), or
        /// `off`.
        #[arg(long, default_value = DEFAULT_METRICS_LISTEN, value_parser = parse_listen)]
        metrics_listen: Listen,
        /// Where to write the deny and audit events, one JSON object per
        /// line: `-` (stdout, the journal under systemd), a file to append
        /// to, or `off`.
        #[arg(long, default_value = "-")]
        event_log: daemon::observe::EventLogTarget,
    },
    /// Policy entries that would have allowed the deny and audit events
    /// seen (read from the journal, or from a file of policyd's JSON event
    /// lines), per container and executable, as TOML to review.
    Suggest(crate::suggest::Request),
}

/// Where `policyd daemon` serves metrics unless told otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9879";

/// `--metrics-listen`: an address, or off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

/// How often the policy file is checked, if at all.
#[derive(Clone, Copy, Debug)]
pub struct Watch(Option<Duration>);

fn parse_watch(s: &str) -> Result<Watch, String> {
    if s == "off" {
        return Ok(Watch(None));
    }
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => {
            Ok(Watch(Some(Duration::from_secs_f64(secs.max(0.05)))))
        }
        _ => Err(format!(
            "{s:?} is not an interval; expected seconds (e.g. 2) or off"
        )),
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse().map(|a| Listen(Some(a))).map_err(|_| {
        format!("{s:?} is not an address to listen on; expected IP:PORT (127.0.0.1:9879, [::1]:9879) or off")
    })
}

#[derive(Subcommand, Debug)]
pub enum SetupTarget {
    /// Put Docker's containers under the managed parent cgroup: sets
    /// "cgroup-parent" in Docker's daemon.json, keeping everything else in
    /// it and a backup of it. Docker reads it when it restarts.
    Docker {
        /// Docker's configuration file.
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
        /// The managed parent: the slice bpf-loader attaches to.
        #[arg(long, default_value = "contain.slice")]
        cgroup_parent: String,
        /// Replace another "cgroup-parent" already set there.
        #[arg(long)]
        force: bool,
    },
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// The output already said what went wrong (e.g. the JSON report of an
    /// invalid policy); only the exit code is left to give.
    fn reported(code: u8) -> Self {
        Failure {
            code,
            message: String::new(),
        }
    }
}

impl From<PolicydError> for Failure {
    fn from(e: PolicydError) -> Self {
        let code = match &e {
            PolicydError::InvalidPolicy { .. } | PolicydError::NoPolicy(_) => exit::INVALID_POLICY,
            PolicydError::LoaderUnavailable(_) | PolicydError::Loader(_) => exit::LOADER_FAILED,
            PolicydError::NotFound(_) => exit::NOT_FOUND,
            PolicydError::BadRequest(_) => exit::USAGE,
            PolicydError::Internal(_) => exit::INTERNAL,
        };
        Failure::new(code, e.to_string())
    }
}

/// A call the daemon did not answer, on a connection it had accepted. A
/// connection it closes at once is most often one from a peer outside
/// root and its group, which it drops before reading a request.
fn dropped_by_daemon(socket: &Path) -> impl Fn(tarpc::client::RpcError) -> Failure + '_ {
    use tarpc::client::RpcError;
    move |e| {
        let message = match &e {
            RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_) => format!(
                "policyd at {} closed the connection ({e}); it serves only root and the \
                 members of its group ({} unless its --group says otherwise): run this as \
                 root or as a member, or, if you are one, check that the daemon runs \
                 (systemctl status contain-policyd)",
                socket.display(),
                paths::GROUP
            ),
            RpcError::DeadlineExceeded => format!(
                "policyd at {} did not answer in time; check its log \
                 (journalctl -u contain-policyd) and try again",
                socket.display()
            ),
            RpcError::Server(_) => format!(
                "policyd at {} refused the request ({e}); check its log \
                 (journalctl -u contain-policyd)",
                socket.display()
            ),
        };
        Failure::new(exit::DAEMON_UNREACHABLE, message)
    }
}

/// The user the packaged daemon runs as (`User=` of its unit).
const DAEMON_USER: &str = "contain";

async fn connect(socket: &Path) -> Result<PolicydClient, Failure> {
    // Served by root, the daemon's user, or this user (a daemon it started
    // itself): never by another member of the group that may write the
    // sockets' directory.
    let daemon_user = nix::unistd::User::from_name(DAEMON_USER)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let server = transport::ServerIs::root_or(
        daemon_user
            .into_iter()
            .chain([nix::unistd::geteuid().as_raw()]),
    );
    let stream = transport::connect(socket, &server).await.map_err(|e| {
        Failure::new(
            exit::DAEMON_UNREACHABLE,
            format!("policyd is unreachable: {e}"),
        )
    })?;
    Ok(PolicydClient::new(
        tarpc::client::Config::default(),
        transport::client(stream, transport::Service::Policyd),
    )
    .spawn())
}

/// From here on the command only writes its output: a reader that goes
/// away (`| head`) ends it quietly, as other tools end, rather than a panic
/// in `println!`. Not while it talks to the daemon: a daemon that drops the
/// connection (a user outside its group) is reported, where SIGPIPE on the
/// request would end the command without a word.
fn output_only_from_here() {
    // SAFETY: signal(2) only sets the process's disposition of SIGPIPE;
    // no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    let json = cli.json;
    // Every command is named: a new one must choose. The daemon keeps
    // SIGPIPE ignored (a client gone mid-answer must not end it), and so
    // do the commands that talk to it until it has answered.
    let only_writes_output = match &cli.command {
        Command::Check { .. } | Command::Setup(_) | Command::Suggest(_) => true,
        Command::Explain {
            policy, inventory, ..
        } => policy.is_some() && inventory.is_some(),
        Command::Reload { .. } | Command::Status | Command::Events { .. } => false,
        Command::Daemon { .. } => false,
    };
    if only_writes_output {
        output_only_from_here();
    }
    let result = match cli.command {
        Command::Check {
            file,
            inventory,
            attached,
        } => check(&file, inventory.as_deref(), &attached, json),
        Command::Reload { dry_run, max_ops } => reload(&cli.socket, dry_run, max_ops, json).await,
        Command::Status => status(&cli.socket, json).await,
        Command::Explain {
            container,
            dest,
            proto,
            port,
            process,
            policy,
            inventory,
        } => {
            let query = ExplainQuery {
                container,
                dest,
                proto,
                port,
                process,
            };
            match (policy, inventory) {
                (Some(p), Some(i)) => explain_offline(&p, &i, &query, json),
                _ => explain_online(&cli.socket, &query, json).await,
            }
        }
        Command::Events { follow, after, max } => {
            events(&cli.socket, follow, after, max, json).await
        }
        Command::Setup(SetupTarget::Docker {
            daemon_json,
            cgroup_parent,
            force,
        }) => setup_docker(&daemon_json, &cgroup_parent, force, json),
        Command::Suggest(request) => {
            crate::suggest::run(&request).map_err(|e| Failure::new(e.exit_code(), e.to_string()))
        }
        Command::Daemon {
            policy,
            loader_socket,
            resolver_socket,
            inventory,
            group,
            poll_secs,
            watch_policy_secs,
            resync_secs,
            metrics_listen,
            event_log,
        } => {
            let config = daemon::Config {
                policy,
                socket: cli.socket.clone(),
                loader_socket,
                inventory: match inventory {
                    Some(path) => InventorySource::File(path),
                    None => InventorySource::Resolver(resolver_socket),
                },
                group,
                file_poll: Duration::from_secs_f64(poll_secs.max(0.05)),
                policy_watch: watch_policy_secs.0,
                resync_every: Duration::from_secs_f64(resync_secs.max(1.0)),
                metrics_listen: metrics_listen.0,
                event_log,
            };
            daemon::run(config)
                .await
                .map_err(|e| Failure::new(exit::INTERNAL, format!("{e:#}")))
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(failure) if failure.message.is_empty() => failure.code,
        Err(failure) => {
            if json {
                // Written, not println!: stdout may be gone, and the exit
                // code says the rest.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    json!({ "error": failure.message, "exit_code": failure.code })
                );
            } else {
                eprintln!("policyd: {}", failure.message);
            }
            failure.code
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("policyd: cannot serialise output: {e}"),
    }
}

// ---- check ----

fn check(
    file: &Path,
    inventory: Option<&Path>,
    attached: &[String],
    json: bool,
) -> Result<(), Failure> {
    let policies = match policy::load_file(file) {
        Ok(p) => p,
        Err(PolicyError::Invalid(invalid)) => {
            if json {
                print_json(&json!({
                    "valid": false,
                    "diagnostics": invalid.diagnostics.iter().map(to_wire).collect::<Vec<_>>(),
                }));
                return Err(Failure::reported(exit::INVALID_POLICY));
            }
            eprintln!("{invalid}");
            let count = invalid.errors().count();
            return Err(Failure::new(
                exit::INVALID_POLICY,
                format!("{}: {count} error(s); nothing applied", file.display()),
            ));
        }
        Err(e @ PolicyError::Read { .. }) => {
            return Err(Failure::new(exit::INVALID_POLICY, e.to_string()))
        }
    };
    let inventory = match inventory {
        Some(path) => read_inventory_file(path).map_err(|e| Failure::new(exit::USAGE, e))?,
        None => Inventory::default(),
    };
    let compiled = compile::compile(&policies, &inventory, &mut IdTables::default())
        .map_err(|e| Failure::new(exit::INVALID_POLICY, format!("{}: {e}", file.display())))?;
    let warnings: Vec<_> = policies
        .warnings
        .iter()
        .chain(&compiled.rules.warnings)
        .chain(&compiled.warnings)
        .collect();
    let state = &compiled.state;
    let attached: AttachedParents = if attached.is_empty() {
        Err("no --attached CGROUP given; name the cgroups bpf-loader attached to, e.g. --attached /contain.slice".into())
    } else {
        Ok(attached.to_vec())
    };
    let mut policy_of = vec![None; inventory.containers.len()];
    for a in &compiled.assignments {
        policy_of[a.container_index] = a.policy_index.map(|i| &policies.policies[i]);
    }
    // The inventory's host is not this one: its settings are not known.
    let uncovered = coverage::packet_sockets_uncovered(&inventory, &policy_of, None);
    let containers: Vec<ContainerStatus> = compiled
        .assignments
        .iter()
        .map(|a| {
            let c = &inventory.containers[a.container_index];
            let policy = a.policy_index.map(|i| &policies.policies[i]);
            let enforcement = coverage::enforcement(c, policy.map(|p| p.mode), &attached);
            // What the container's exe paths name there, as far as the
            // inventory says (offline, nothing is resolved that it does
            // not list).
            let executables =
                crate::daemon::view::executable_statuses(&policies, a, &compiled.exes);
            ContainerStatus {
                id: c.id.clone(),
                name: c.name.clone(),
                cgroup_path: c.cgroup_path.clone(),
                policy: policy.map(|p| p.name.clone()),
                also_matched: a
                    .also_matched
                    .iter()
                    .map(|&i| policies.policies[i].name.clone())
                    .collect(),
                mode: enforcement.mode,
                unenforced_reason: enforcement.unenforced_reason,
                packet_sockets_uncovered: uncovered[a.container_index].clone(),
                readonly_rootfs: c.readonly_rootfs,
                executables,
                ..ContainerStatus::default()
            }
        })
        .collect();
    if json {
        print_json(&json!({
            "valid": true,
            "format": policies.format,
            "mode": policies.mode,
            "unknown_container": policies.unknown_container,
            "policies": policies.policies.iter().map(|p| json!({
                "name": p.name,
                "mode": p.mode,
                "select": p.selector.to_string(),
                "rules": p.rule_count(),
                "processes": p.processes.len(),
                "allow_loopback": p.allow_loopback,
                "allow_docker_dns": p.allow_docker_dns,
            })).collect::<Vec<_>>(),
            "entries": {
                "processes": state.processes.len(),
                "dests": state.dests.len(),
                "ports": state.ports.len(),
            },
            "containers": containers.iter().map(|c| json!({
                "name": c.name,
                "id": c.id,
                "cgroup_path": c.cgroup_path,
                "policy": c.policy,
                "also_matched": c.also_matched,
                "mode": c.mode,
                "unenforced_reason": c.unenforced_reason,
                "packet_sockets_uncovered": c.packet_sockets_uncovered,
                "readonly_rootfs": c.readonly_rootfs,
                "executables": c.executables,
            })).collect::<Vec<_>>(),
            "diagnostics": warnings.iter().map(|d| to_wire(d)).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    let rules: usize = policies.policies.iter().map(|p| p.rule_count()).sum();
    println!(
        "{}: valid ({}), {} policies, {rules} rules, mode {}, unknown containers: {}",
        file.display(),
        match policies.format {
            policy::Format::Toml => "TOML",
            policy::Format::ThesisJson => "thesis JSON",
        },
        policies.policies.len(),
        policies.mode,
        policies.unknown_container
    );
    println!(
        "kernel entries: {} processes, {} destinations, {} port entries; {} warning(s)",
        state.processes.len(),
        state.dests.len(),
        state.ports.len(),
        warnings.len()
    );
    let rows: Vec<Vec<String>> = policies
        .policies
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.mode.to_string(),
                p.selector.to_string(),
                p.rule_count().to_string(),
                p.processes.len().to_string(),
            ]
        })
        .collect();
    print!(
        "\n{}",
        table(&["POLICY", "MODE", "SELECTS", "RULES", "PROCESSES"], &rows)
    );
    if !inventory.containers.is_empty() {
        let rows: Vec<Vec<String>> = containers
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.policy.clone().unwrap_or_else(|| "-".into()),
                    c.mode.clone(),
                    c.also_matched.join(","),
                ]
            })
            .collect();
        print!(
            "\n{}",
            table(&["CONTAINER", "POLICY", "MODE", "ALSO MATCHED"], &rows)
        );
        print!("{}", render_reasons(&containers));
        print!("{}", render_executables(&containers));
    }
    Ok(())
}

/// "container NAME is STATE: REASON" lines for containers whose policy the
/// kernel does not (or may not) enforce, or not everywhere (their packet
/// sockets not judged by the veth backstop on a veth of their own), one per
/// distinct state and reason, after a blank line; empty if none.
fn render_reasons(containers: &[ContainerStatus]) -> String {
    let unenforced = containers.iter().filter_map(|c| {
        Some((
            c.name.as_str(),
            c.mode.as_str(),
            c.unenforced_reason.as_deref()?,
        ))
    });
    let not_covered = containers.iter().filter_map(|c| {
        Some((
            c.name.as_str(),
            "not covered against packet sockets",
            c.packet_sockets_uncovered.as_deref()?,
        ))
    });
    let mut groups: Vec<((&str, &str), Vec<&str>)> = Vec::new();
    for (name, state, reason) in unenforced.chain(not_covered) {
        let key = (state, reason);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(name),
            None => groups.push((key, vec![name])),
        }
    }
    let lines: Vec<String> = groups
        .into_iter()
        .map(|((state, reason), names)| match names.as_slice() {
            [one] => format!("container {one} is {state}: {reason}"),
            many => format!("containers {} are {state}: {reason}", many.join(", ")),
        })
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n{}\n", lines.join("\n"))
    }
}

// ---- reload ----

/// Operations a human-readable reload report lists.
const OPS_SHOWN: u32 = 200;

async fn reload(
    socket: &Path,
    dry_run: bool,
    max_ops: Option<u32>,
    json: bool,
) -> Result<(), Failure> {
    let client = connect(socket).await?;
    let max_ops = max_ops.unwrap_or(if json { u32::MAX } else { OPS_SHOWN });
    let report = client
        .reload(transport::context_with_deadline(120), dry_run, max_ops)
        .await
        .map_err(dropped_by_daemon(socket))??;
    output_only_from_here();
    if json {
        print_json(&report);
    } else {
        print_reload(&report);
    }
    Ok(())
}

/// Warnings shown by reload and status; `policyd check FILE` shows all.
const WARNINGS_SHOWN: usize = 10;

/// The first warnings, one per line, then how many `more` are left out.
fn shown_warnings(warnings: &[proto::policyd::Diagnostic], more: &str) -> String {
    let mut out = String::new();
    for w in warnings.iter().take(WARNINGS_SHOWN) {
        let _ = writeln!(out, "{}", w.rendered);
    }
    if warnings.len() > WARNINGS_SHOWN {
        let _ = writeln!(
            out,
            "… and {} {more}; `policyd check FILE` lists them all",
            warnings.len() - WARNINGS_SHOWN
        );
    }
    out
}

pub fn print_reload(report: &ReloadReport) {
    eprint!("{}", shown_warnings(&report.warnings, "more warning(s)"));
    let counts = report.counts;
    let verb = if report.dry_run {
        "would apply"
    } else {
        "applied"
    };
    if let Some(why) = &report.pending {
        println!(
            "policy {} is valid; not applied yet: {why}",
            report.policy_digest
        );
    } else if counts.total() == 0 && report.unknown_verdict.is_none() {
        println!(
            "policy {}: nothing to change (generation {})",
            report.policy_digest, report.generation
        );
    } else {
        println!(
            "policy {}: {verb} {} operation(s) ({counts}){}",
            report.policy_digest,
            counts.total(),
            if report.dry_run {
                String::new()
            } else {
                format!(", generation {}", report.generation)
            }
        );
    }
    if let Some(v) = report.unknown_verdict {
        println!("  ~ unknown containers: {v}");
    }
    for op in &report.ops {
        println!("  {}", describe_op(op));
    }
    if counts.total() > report.ops.len() {
        println!(
            "  … and {} more (--json or --max-ops N shows them)",
            counts.total() - report.ops.len()
        );
    }
    println!(
        "compile {:.1} ms, {} {:.1} ms",
        report.compile_us as f64 / 1000.0,
        if report.dry_run { "diff" } else { "diff+apply" },
        report.apply_us as f64 / 1000.0
    );
}

fn describe_key(key: &EntryKey) -> String {
    match key {
        EntryKey::Cgroup { id } => format!("cgroup {id}"),
        EntryKey::Process { key } => {
            let process = match key.process {
                ProcessMatch::File(f) => format!(
                    "file {} ctime {}.{:09}",
                    explain::describe_file(&f),
                    f.ctime_sec,
                    f.ctime_nsec
                ),
                ProcessMatch::Comm(h) => format!("comm#{h:016x}"),
            };
            format!("process policy {} {process}", key.policy_id)
        }
        EntryKey::Dest { key } => format!(
            "dest policy {} class {} {}",
            key.policy_id,
            key.class,
            Prefix::from_key(key.addr, key.prefix_len)
        ),
        EntryKey::Port { key } => format!(
            "port ruleset {} {}",
            key.ruleset,
            explain::port_allowance(key)
        ),
        EntryKey::Veth { ifindex } => format!("veth {ifindex}"),
        EntryKey::VethSource { key } => {
            format!("veth {} source {}", key.ifindex, key.address())
        }
    }
}

/// One map operation, for people.
pub fn describe_op(op: &MapOp) -> String {
    let entry = match op {
        MapOp::Upsert { entry } => entry,
        MapOp::Delete { key } => return format!("- {}", describe_key(key)),
    };
    let key = describe_key(&entry.key());
    let value = match entry {
        Entry::Cgroup { value, .. } if value.unrestricted => "unrestricted".to_string(),
        Entry::Cgroup { value, .. } => {
            let flags: Vec<&str> = [
                (value.audit, "audit"),
                (value.forwarded_dns, "forwarded DNS"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if flags.is_empty() {
                format!("policy {}", value.policy_id)
            } else {
                format!("policy {} ({})", value.policy_id, flags.join(", "))
            }
        }
        Entry::Process { class, .. } => format!("class {class}"),
        Entry::Dest { ruleset, .. } => format!("ruleset {ruleset}"),
        Entry::Port { rule_id, .. } => format!("rule {rule_id}"),
        Entry::Veth { cgroup_id, .. } => format!("cgroup {cgroup_id}"),
        Entry::VethSource { .. } => return format!("+ {key}"),
    };
    format!("+ {key} -> {value}")
}

// ---- setup docker ----

fn setup_docker(daemon_json: &Path, parent: &str, force: bool, json: bool) -> Result<(), Failure> {
    // Docker's systemd cgroup driver (the default on cgroup v2) takes a
    // slice name, and bpf-loader's unit attaches to contain.slice.
    let valid_slice = parent.len() > ".slice".len()
        && parent.ends_with(".slice")
        && parent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !valid_slice {
        return Err(Failure::new(
            exit::USAGE,
            format!("--cgroup-parent {parent:?}: Docker's systemd cgroup driver takes a slice name, such as contain.slice"),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backup = daemon_json.as_os_str().to_owned();
    backup.push(format!(
        ".contain-backup-{}",
        utc_time(now).replace(':', "")
    ));
    let backup = PathBuf::from(backup);
    let outcome = setup::setup_docker(daemon_json, parent, force, &backup)
        .map_err(|e| Failure::new(exit::SETUP_REFUSED, format!("{e}; nothing changed")))?;
    let file = daemon_json.display();
    if json {
        let (changed, backup, replaced) = match &outcome {
            SetupOutcome::AlreadySet => (false, None, None),
            SetupOutcome::Written { backup, replaced } => (
                true,
                backup.as_ref().map(|b| b.display().to_string()),
                replaced.clone(),
            ),
        };
        print_json(&json!({
            "file": file.to_string(),
            "cgroup_parent": parent,
            "changed": changed,
            "backup": backup,
            "replaced": replaced,
            "restart_docker": changed,
        }));
        return Ok(());
    }
    match outcome {
        SetupOutcome::AlreadySet => {
            println!("{file} already sets \"cgroup-parent\": \"{parent}\"; nothing to do.");
            println!("Containers created since Docker read it are under {parent}; `policyd status` lists any that are not.");
        }
        SetupOutcome::Written { backup, replaced } => {
            match replaced {
                Some(old) => {
                    println!("{file}: \"cgroup-parent\" changed from {old} to \"{parent}\".")
                }
                None => println!("{file}: \"cgroup-parent\": \"{parent}\" added."),
            }
            match backup {
                Some(b) => println!("The previous file is saved as {}.", b.display()),
                None => println!("(There was no such file before: nothing to back up.)"),
            }
            println!(
                "Docker reads it when it starts: restart it now with `systemctl restart docker`\n\
                 (this stops running containers unless \"live-restore\" is set). Containers keep the\n\
                 cgroup they were created in: recreate existing ones so that they are under {parent}\n\
                 (`policyd status` lists those that are not)."
            );
        }
    }
    Ok(())
}

// ---- status ----

async fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let client = connect(socket).await?;
    let status = client
        .status(transport::context_with_deadline(30))
        .await
        .map_err(dropped_by_daemon(socket))??;
    output_only_from_here();
    if json {
        print_json(&status);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

pub fn render_status(s: &Status) -> String {
    let conn = |c: &proto::policyd::Connection| {
        if c.connected {
            format!("connected ({})", c.endpoint)
        } else {
            format!(
                "NOT connected ({}){}",
                c.endpoint,
                c.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
        }
    };
    let policy = match (&s.policy_digest, &s.mode) {
        (Some(d), Some(m)) => format!(
            "{d}, mode {m}, unknown containers: {}",
            s.unknown_container.map_or_else(
                || "unverified (policyd does not know what the loader's maps hold)".into(),
                |v| format!("{v} (in the maps)")
            )
        ),
        _ => "none loaded".into(),
    };
    let maps = match s.generation {
        Some(_) => format!(
            "{} cgroups, {} veths, {} processes, {} destinations, {} port entries",
            s.entries.cgroups,
            s.entries.veths,
            s.entries.processes,
            s.entries.dests,
            s.entries.ports
        ),
        None => "unverified (policyd does not know what they hold)".into(),
    };
    let mut out = format!(
        "policy file:  {}\n\
         policy:       {policy}\n\
         loader:       {}, generation {}\n\
         inventory:    {}\n\
         kernel maps:  {maps}\n\
         reloads:      {} ({} failed); events dropped: {} in kernel, {} in loader\n",
        s.policy_file,
        conn(&s.loader),
        s.generation.map_or_else(|| "?".into(), |g| g.to_string()),
        conn(&s.inventory),
        s.reloads,
        s.reload_failures,
        s.events_dropped_kernel,
        s.events_dropped_loader
    );
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last error:   {e}");
    }
    let rows: Vec<Vec<String>> = s
        .containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.id.chars().take(12).collect(),
                c.image.clone(),
                c.cgroup_id.map_or_else(|| "-".into(), |id| id.to_string()),
                c.policy.clone().unwrap_or_else(|| "-".into()),
                c.mode.clone(),
                match c.readonly_rootfs {
                    Some(true) => "read-only",
                    Some(false) => "writable",
                    None => "?",
                }
                .into(),
            ]
        })
        .collect();
    let _ = write!(
        out,
        "\n{}",
        table(
            &[
                "CONTAINER",
                "ID",
                "IMAGE",
                "CGROUP",
                "POLICY",
                "MODE",
                "ROOT FS"
            ],
            &rows
        )
    );
    out.push_str(&render_reasons(&s.containers));
    out.push_str(&render_outside_managed_parent(&s.containers));
    out.push_str(&render_executables(&s.containers));
    let rows: Vec<Vec<String>> = s
        .policies
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.policy_id.to_string(),
                p.mode.clone(),
                p.rules.to_string(),
                p.processes.to_string(),
                p.containers.to_string(),
                p.allowed.to_string(),
                p.denied.to_string(),
                p.audited.to_string(),
            ]
        })
        .collect();
    let _ = write!(
        out,
        "\n{}",
        table(
            &[
                "POLICY",
                "ID",
                "MODE",
                "RULES",
                "PROCESSES",
                "CONTAINERS",
                "ALLOWED",
                "DENIED",
                "AUDITED"
            ],
            &rows
        )
    );
    if !s.warnings.is_empty() {
        let _ = writeln!(out, "\n{} warning(s):", s.warnings.len());
        out.push_str(&shown_warnings(&s.warnings, "more"));
    }
    out
}

/// The containers whose cgroup is below no attached parent, and what to do.
fn render_outside_managed_parent(containers: &[ContainerStatus]) -> String {
    let rows: Vec<Vec<String>> = containers
        .iter()
        .filter_map(|c| Some(vec![c.name.clone(), c.outside_managed_parent.clone()?]))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{} container(s) NOT under the managed parent: contain's cgroup programs do not \
         see them (one a policy selects is shown unenforced), so they get no first-packet \
         coverage and no unknown-container verdict. For Docker: `policyd setup docker`, \
         restart Docker, then recreate these containers.\n{}",
        rows.len(),
        table(&["CONTAINER", "CGROUP"], &rows)
    )
}

/// What each container's `exe` paths name there, and which containers
/// have them on a root filesystem root in the container may write.
fn render_executables(containers: &[ContainerStatus]) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = containers
        .iter()
        .flat_map(|c| {
            c.executables.iter().map(|e| {
                vec![
                    c.name.clone(),
                    e.path.clone(),
                    match (&e.file, &e.problem) {
                        (Some(f), _) => explain::describe_file(f),
                        (None, Some(why)) => format!("none, container-wide rules: {why}"),
                        (None, None) => "none".into(),
                    },
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        return out;
    }
    let _ = write!(out, "\n{}", table(&["CONTAINER", "EXE", "FILE"], &rows));
    for (readonly, what) in [
        (Some(false), "process rules on a writable root filesystem: root in the container can replace the files they name; run it with --read-only (or pin each file's content with sha256)"),
        (None, "process rules, and the runtime did not say whether the root filesystem is read-only: if it is writable, root in the container can replace the files they name"),
    ] {
        let names: Vec<&str> = containers
            .iter()
            .filter(|c| !c.executables.is_empty() && c.readonly_rootfs == readonly)
            .map(|c| c.name.as_str())
            .collect();
        let subject = match names.as_slice() {
            [] => continue,
            [one] => format!("container {one} has"),
            many => format!("containers {} have", many.join(", ")),
        };
        let _ = writeln!(out, "\n{subject} {what}");
    }
    out.push_str(&render_shared_files(containers));
    out
}

/// The process rules whose file is also other commands (a symlink to a
/// file of another name, or a file with hard links: a multi-call binary
/// such as BusyBox), where each leads, and what to do.
fn render_shared_files(containers: &[ContainerStatus]) -> String {
    let rows: Vec<Vec<String>> = containers
        .iter()
        .flat_map(|c| {
            c.executables.iter().filter_map(|e| {
                let shared = e.shared()?;
                let why = match (shared.other_name, shared.links) {
                    (Some(name), Some(links)) => {
                        format!("a symlink to a file named {name}, with {links} hard links")
                    }
                    (Some(name), None) => format!("a symlink to a file named {name}"),
                    (None, Some(links)) => format!("a file with {links} hard links"),
                    (None, None) => return None,
                };
                Some(vec![
                    c.name.clone(),
                    e.path.clone(),
                    e.final_path.clone().unwrap_or_else(|| "?".into()),
                    why,
                ])
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{} process rule(s) name a file that other commands may be too (a multi-call binary): the kernel knows the file, not the name it was run by, so every command that is this file (in BusyBox every applet, a shell among them) gets the rule's allowances, sha256 pin or not; point the rule at a dedicated binary (a static single-purpose executable) or drop it\n{}",
        rows.len(),
        table(&["CONTAINER", "EXE", "FILE THERE", "WHY"], &rows)
    )
}

// ---- explain ----

async fn explain_online(socket: &Path, query: &ExplainQuery, json: bool) -> Result<(), Failure> {
    let client = connect(socket).await?;
    let e = client
        .explain(transport::context_with_deadline(30), query.clone())
        .await
        .map_err(dropped_by_daemon(socket))??;
    output_only_from_here();
    print_explanation(&e, json);
    Ok(())
}

fn explain_offline(
    policy_file: &Path,
    inventory: &Path,
    query: &ExplainQuery,
    json: bool,
) -> Result<(), Failure> {
    let policies = policy::load_file(policy_file)
        .map_err(|e| Failure::new(exit::INVALID_POLICY, e.to_string()))?;
    let inventory = read_inventory_file(inventory).map_err(|e| Failure::new(exit::USAGE, e))?;
    let compiled = compile::compile(&policies, &inventory, &mut IdTables::default())
        .map_err(|e| Failure::new(exit::INVALID_POLICY, e.to_string()))?;
    let e = explain::explain(
        &policies,
        &compiled.rules,
        &compiled.state,
        &inventory,
        query,
    )
    .map_err(|e| match e {
        explain::ExplainError::NotFound(m) => Failure::new(exit::NOT_FOUND, m),
        explain::ExplainError::BadQuery(m) => Failure::new(exit::USAGE, m),
    })?;
    print_explanation(&e, json);
    Ok(())
}

pub fn print_explanation(e: &Explanation, json: bool) {
    if json {
        print_json(e);
        return;
    }
    match (e.verdict, e.mode.as_str()) {
        // The verdict is the policy's; the kernel does not (or may not) apply it.
        (Some(v), "unenforced" | "unverified") => println!(
            "{} (the policy says {v}): {}",
            e.mode.to_uppercase(),
            e.reason
        ),
        (Some(v), _) => println!("{}: {}", v.to_string().to_uppercase(), e.reason),
        (None, _) => println!("{}", e.reason),
    }
    println!(
        "  container: {} ({}), cgroup {}",
        e.container,
        e.container_id.chars().take(12).collect::<String>(),
        e.cgroup_id.map_or_else(|| "-".into(), |c| c.to_string())
    );
    println!(
        "  policy:    {} (id {}), mode {}",
        e.policy.as_deref().unwrap_or("-"),
        e.policy_id,
        e.mode
    );
    println!("  process:   {}", e.process);
    if let Some(prefix) = &e.matched_prefix {
        println!(
            "  matched:   {prefix} -> ruleset {}",
            e.ruleset.unwrap_or(0)
        );
    }
    if let Some(rule) = &e.rule {
        println!(
            "  rule:      {} (rule id {})",
            rule.description, rule.rule_id
        );
        if let Some(loc) = &rule.location {
            println!("  at:        {loc}");
        }
    }
    if e.verdict.is_some() && !e.allowed_here.is_empty() {
        println!("  allowed to {}: {}", e.dest, e.allowed_here.join(", "));
    }
}

// ---- events ----

async fn events(
    socket: &Path,
    follow: bool,
    after: u64,
    max: u32,
    json: bool,
) -> Result<(), Failure> {
    // It asks the daemon again after printing (`--follow`), so SIGPIPE
    // stays ignored: a reader gone (`| head`) ends it quietly through the
    // write's error instead.
    use std::io::Write as _;
    let client = connect(socket).await?;
    let mut after = after;
    let mut out = std::io::stdout();
    let header = format!(
        "{:<20} {:<6} {:<20} {:<16} {:<24} {:<6} {:<40} {}",
        "TIME", "VERDICT", "CONTAINER", "POLICY", "PROCESS", "PROTO", "DESTINATION", "HOOK"
    );
    if !json && writeln!(out, "{header}").is_err() {
        return Ok(());
    }
    loop {
        let wait_ms = if follow { 25_000 } else { 0 };
        let batch: EventBatch = client
            .events(transport::context_with_deadline(60), after, max, wait_ms)
            .await
            .map_err(dropped_by_daemon(socket))??;
        if batch.missed > 0 {
            eprintln!(
                "policyd: {} event(s) missed (older than the loader's buffer)",
                batch.missed
            );
        }
        for e in &batch.events {
            after = after.max(e.event.seq);
            let line = if json {
                match serde_json::to_string(e) {
                    Ok(line) => line,
                    Err(err) => {
                        eprintln!("policyd: {err}");
                        continue;
                    }
                }
            } else {
                event_row(e)
            };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
        if !follow && (batch.events.len() < max as usize) {
            return Ok(());
        }
        if batch.events.is_empty() {
            // A loader that answers at once instead of long-polling must
            // not turn this into a busy loop.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn event_row(a: &proto::policyd::AttributedEvent) -> String {
    let e = &a.event;
    let dest = match (e.icmp_type, e.icmp_code) {
        (Some(t), Some(c)) => format!("{} type {t} code {c}", e.dst),
        _ if e.dst.is_ipv6() => format!("[{}]:{}", e.dst, e.dst_port),
        _ => format!("{}:{}", e.dst, e.dst_port),
    };
    // The container chooses both (PR_SET_NAME, the path it executes by):
    // control characters shown escaped, so no row rewrites the terminal.
    let comm = crate::inventory::printable(&e.comm);
    let process = match &e.exe {
        Some(exe) => format!("{comm} ({})", crate::inventory::printable(exe)),
        None => comm,
    };
    format!(
        "{:<20} {:<6} {:<20} {:<16} {:<24} {:<6} {:<40} {:?}",
        utc_time(e.time_ns / 1_000_000_000),
        e.verdict.to_string(),
        a.container
            .clone()
            .unwrap_or_else(|| format!("cgroup {}", e.cgroup_id)),
        a.policy.clone().unwrap_or_else(|| "-".into()),
        process,
        proto_name(e.proto),
        dest,
        e.hook
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix seconds (after 9999 the format has no
/// room: the last second of 9999).
pub fn utc_time(secs: u64) -> String {
    const LAST_OF_9999: u64 = 253_402_300_799;
    let time = std::time::UNIX_EPOCH + Duration::from_secs(secs.min(LAST_OF_9999));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A plain text table, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proto::policyd::ExecutableStatus;

    #[test]
    fn status_names_containers_outside_the_managed_parent_and_what_to_do() {
        let container = |name: &str, outside: Option<&str>| ContainerStatus {
            name: name.into(),
            mode: "unrestricted".into(),
            outside_managed_parent: outside.map(Into::into),
            ..Default::default()
        };
        let status = Status {
            containers: vec![
                container("inside", None),
                container("old-web", Some("/system.slice/docker-abc.scope")),
            ],
            ..Status::default()
        };
        let out = render_status(&status);
        let section = out
            .split("NOT under the managed parent")
            .nth(1)
            .expect("a section for containers outside the managed parent");
        assert!(out.contains("1 container(s) NOT under the managed parent"));
        assert!(section.contains("policyd setup docker"));
        assert!(section
            .lines()
            .any(|l| l.starts_with("old-web") && l.ends_with("/system.slice/docker-abc.scope")));
        assert!(!section.lines().any(|l| l.starts_with("inside")));

        let all_inside = Status {
            containers: vec![container("inside", None)],
            ..Status::default()
        };
        assert!(!render_status(&all_inside).contains("NOT under the managed parent"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The daemon applies an edited policy file only when told to, unless
    /// asked to watch it.
    #[test]
    fn the_policy_file_is_watched_only_when_asked() {
        let watch = |args: &[&str]| -> Result<Option<Duration>, String> {
            let cli =
                Cli::try_parse_from([&["policyd", "daemon", "--policy", "p.toml"], args].concat())
                    .map_err(|e| e.to_string())?;
            match cli.command {
                Command::Daemon {
                    watch_policy_secs, ..
                } => Ok(watch_policy_secs.0),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(watch(&[]), Ok(None));
        assert_eq!(
            watch(&["--watch-policy-secs", "2"]),
            Ok(Some(Duration::from_secs(2)))
        );
        assert_eq!(watch(&["--watch-policy-secs", "off"]), Ok(None));
        for bad in ["0", "soon", "inf", "NaN"] {
            let err = watch(&["--watch-policy-secs", bad]).unwrap_err();
            assert!(err.contains("expected seconds (e.g. 2) or off"), "{err}");
        }
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_time(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn ops_read_as_what_they_do() {
        use kernel_model::state::CgroupEntry;
        let cgroup = |audit, forwarded_dns| MapOp::Upsert {
            entry: Entry::Cgroup {
                id: 42,
                value: CgroupEntry {
                    policy_id: 3,
                    audit,
                    unrestricted: false,
                    forwarded_dns,
                },
            },
        };
        assert_eq!(
            describe_op(&cgroup(false, false)),
            "+ cgroup 42 -> policy 3"
        );
        assert_eq!(
            describe_op(&cgroup(true, true)),
            "+ cgroup 42 -> policy 3 (audit, forwarded DNS)"
        );
        assert_eq!(
            describe_op(&cgroup(false, true)),
            "+ cgroup 42 -> policy 3 (forwarded DNS)"
        );
        let veth = MapOp::Upsert {
            entry: Entry::Veth {
                ifindex: 7,
                cgroup_id: 42,
            },
        };
        assert_eq!(describe_op(&veth), "+ veth 7 -> cgroup 42");
        let gone = MapOp::Delete {
            key: EntryKey::Veth { ifindex: 7 },
        };
        assert_eq!(describe_op(&gone), "- veth 7");
    }

    #[test]
    fn status_names_process_rules_whose_file_is_also_other_commands() {
        let exe = |path: &str, final_path: Option<&str>, links: u64| ExecutableStatus {
            entry: format!("exe {path}"),
            path: path.into(),
            file: Some(kernel_model::state::FileId::default()),
            final_path: final_path.map(Into::into),
            links,
            ..Default::default()
        };
        let container = |name: &str, executables| ContainerStatus {
            name: name.into(),
            mode: "enforce".into(),
            readonly_rootfs: Some(true),
            executables,
            ..Default::default()
        };
        let status = Status {
            containers: vec![
                container(
                    "alpine",
                    vec![
                        exe("/usr/bin/wget", Some("/bin/busybox"), 1),
                        exe("/bin/sh", Some("/bin/sh"), 3),
                        exe("/usr/bin/curl", Some("/usr/bin/curl"), 1),
                    ],
                ),
                // An older resolver: no path, no link count, nothing said.
                container("old", vec![exe("/usr/bin/wget", None, 0)]),
                // The link count alone, the path not known.
                container("linked", vec![exe("/usr/bin/nc", None, 2)]),
            ],
            ..Status::default()
        };
        let out = render_status(&status);
        let section = out
            .split("process rule(s) name a file that other commands may be too")
            .nth(1)
            .expect("a section for rules whose file is also other commands");
        assert!(
            out.contains("\n3 process rule(s) name a file that other commands may be too"),
            "{out}"
        );
        assert!(section.contains("a shell among them"), "{section}");
        assert!(section.contains("a dedicated binary"), "{section}");
        // Each row with its columns' padding taken out.
        let row = |start: &str| {
            section
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .find(|l| l.starts_with(start))
        };
        assert_eq!(
            row("alpine /usr/bin/wget ").as_deref(),
            Some("alpine /usr/bin/wget /bin/busybox a symlink to a file named busybox")
        );
        assert_eq!(
            row("alpine /bin/sh ").as_deref(),
            Some("alpine /bin/sh /bin/sh a file with 3 hard links")
        );
        assert_eq!(
            row("linked ").as_deref(),
            Some("linked /usr/bin/nc ? a file with 2 hard links")
        );
        assert_eq!(row("alpine /usr/bin/curl "), None);
        assert_eq!(row("old "), None);

        // A rule that recognises no file here gives nothing to share.
        let mut unresolved = exe("/usr/bin/wget", Some("/bin/busybox"), 2);
        unresolved.file = None;
        unresolved.problem = Some("its content is not what the sha256 pin says".into());
        let status = Status {
            containers: vec![container("pinned", vec![unresolved])],
            ..Status::default()
        };
        assert!(!render_status(&status).contains("other commands may be too"));
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
