//! Scale in containers: the cost of one container start on a host already
//! running 10, 100 or 500 containers.
//!
//! The release daemons as the control phase runs them (its start-up
//! helpers): a private containerd, the resolver following it, policyd
//! following the resolver, bpf-loader attached to the containers' parent
//! cgroup. The loader and the resolver run in a network namespace of the
//! phase's own, which stands for the host's: every container gets a
//! namespace with a veth into it, as Docker and CNI give one, so the
//! resolver follows a link table as large as the host's, and nothing of
//! the real host's links is touched.
//!
//! Background containers (`sleep`, selected by the policy like the
//! measured ones) are started concurrently in bounded batches; then
//! [`MEASURED`] more are started one at a time and for each the time from
//! containerd's `/tasks/create` event to its cgroup in the loader's
//! `CGROUPS` map is taken. The resolver's and policyd's CPU time (user +
//! system, from the `cpu.stat` of a cgroup each is moved into, so threads
//! that came and went count too) over those starts, divided by their
//! number, is the CPU per container start. The resolver's periodic full
//! rescan is set to an hour so that it does not fall into the measured
//! window: it is periodic work, not work per event.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use contain_common::CgroupPolicy;
use serde::{Deserialize, Serialize};
use test_kit::{
    cgroup,
    containerd::Containerd,
    lab::{self, Netns, VethEnd},
};

use crate::{
    control::{
        maps_dir, require_daemons, start, start_in, start_loader, until_in_force, Daemon, Places,
    },
    sys,
};

/// Containers started and measured on top of the background ones, per row.
const MEASURED: usize = 10;
/// `ctr run`s in flight at once while the background is started.
const PARALLEL_STARTS: usize = 6;
/// Ids per `ctr tasks rm` / `ctr containers rm` at clean-up.
const REMOVE_CHUNK: usize = 50;
const NAMESPACE: &str = "default";
const LABEL: &str = "contain-bench=1";

/// One host size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// Background containers running before the measured starts.
    pub running: usize,
    /// containerd `/tasks/create` event → cgroup in the loader's map, ms,
    /// one per measured start.
    pub from_create_ms: Vec<f64>,
    /// CPU time (user + system) per measured start, ms.
    pub resolver_cpu_ms: f64,
    pub policyd_cpu_ms: f64,
    /// Wall time to start the background containers of this row.
    pub background_start_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scale {
    pub measured_per_row: usize,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// A cgroup's CPU time so far (user + system), µs.
fn cpu_usec(cgroup: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(cgroup.join("cpu.stat"))
        .with_context(|| format!("reading {}/cpu.stat", cgroup.display()))?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .context("cpu.stat has no usage_usec")
}

/// Moves a running daemon (all its threads) into `cgroup`.
fn move_into(cgroup: &Path, daemon: &Daemon) -> Result<()> {
    std::fs::create_dir_all(cgroup)?;
    std::fs::write(cgroup.join("cgroup.procs"), daemon.child.id().to_string())
        .with_context(|| format!("moving pid {} into {}", daemon.child.id(), cgroup.display()))
}

/// Everything this phase creates, removed on drop (also on error).
struct Scene {
    places: Places,
    /// The namespace standing for the host's, then one per container.
    netns: Mutex<Vec<Netns>>,
    containerd: Option<Containerd>,
    daemons: Vec<Daemon>,
    /// Every container id a `ctr run` was attempted for.
    containers: Mutex<Vec<String>>,
}

impl Scene {
    fn containerd(&self) -> Result<&Containerd> {
        self.containerd.as_ref().context("no containerd")
    }

    /// Removes the containers in `ids`: their processes are killed at
    /// once through their cgroups, then tasks and containers are deleted
    /// by id, many per `ctr` call (one by one, 500 take minutes).
    fn remove_containers(&self, ids: &[String]) {
        let Some(containerd) = &self.containerd else {
            return;
        };
        let parent = self.places.cgroup.path().join("ctr");
        for id in ids {
            let _ = std::fs::write(parent.join(id).join("cgroup.kill"), "1");
        }
        for chunk in ids.chunks(REMOVE_CHUNK) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            // A task still being killed refuses removal for a moment:
            // again with those still listed.
            let mut left = chunk.clone();
            for _ in 0..20 {
                let mut args = vec!["tasks", "rm", "-f"];
                args.extend(&left);
                if containerd.ctr(NAMESPACE, &args).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                let listed = containerd
                    .ctr(NAMESPACE, &["tasks", "ls", "-q"])
                    .unwrap_or_default();
                left.retain(|id| listed.lines().any(|l| l.trim() == *id));
                if left.is_empty() {
                    break;
                }
            }
            let mut args = vec!["containers", "rm"];
            args.extend(&chunk);
            let _ = containerd.ctr(NAMESPACE, &args);
        }
        let names: Vec<String> = ids.iter().map(|id| netns_of(id)).collect();
        let gone: Vec<Netns> = {
            let mut netns = self.netns.lock().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = std::mem::take(&mut *netns)
                .into_iter()
                .partition(|n| names.iter().any(|name| name == n.name()));
            *netns = kept;
            gone
        };
        drop(gone);
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| !ids.contains(c));
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let ids = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.remove_containers(&ids);
        self.daemons.clear();
        self.containerd.take();
        self.netns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A container's network namespace (named after the container).
fn netns_of(id: &str) -> String {
    format!("{id}-ns")
}

/// Gives container `id` a namespace with a veth from the host's (as
/// Docker does before the task starts) and runs `sleep` in it.
fn run_container(scene: &Scene, host_ns: &str, id: &str, veth: &str) -> Result<()> {
    let ns = netns_of(id);
    scene
        .containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id.to_string());
    let netns = Netns::new(&ns)?;
    scene
        .netns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(netns);
    lab::add_veth(VethEnd::new(host_ns, veth), VethEnd::new(&ns, "eth0"))?;
    let containerd = scene.containerd()?;
    let cgroup = containerd.cgroup_of(id);
    let with_ns = format!("network:{}", lab::netns_path(&ns).display());
    containerd.ctr(
        NAMESPACE,
        &[
            "run",
            "-d",
            "--cgroup",
            &cgroup,
            "--label",
            LABEL,
            "--with-ns",
            &with_ns,
            test_kit::containerd::TEST_IMAGE,
            id,
            "sleep",
            "3600",
        ],
    )?;
    Ok(())
}

/// Starts `ids` (with veths `veths`) concurrently, [`PARALLEL_STARTS`] at a time.
fn start_background(scene: &Scene, host_ns: &str, ids: &[(String, String)]) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_STARTS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, veth)) = ids.get(i) else {
                    return;
                };
                if let Err(e) = run_container(scene, host_ns, id, veth) {
                    failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    next.store(ids.len(), Ordering::Relaxed);
                    return;
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e.context("starting the background containers")),
        None => Ok(()),
    }
}

/// Waits until the loader's map holds the cgroup of every container in
/// `ids` (up to a minute).
fn wait_in_force(
    cgroups: &BpfHashMap<MapData, u64, CgroupPolicy>,
    parent: &Path,
    ids: &[(String, String)],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    while !left.is_empty() {
        left.retain(|id| {
            cgroup::cgroup_id(&parent.join(id)).map_or(true, |cid| cgroups.get(&cid, 0).is_err())
        });
        if Instant::now() > deadline {
            bail!(
                "{} background containers never got their policy (first: {})",
                left.len(),
                left[0]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until the daemons are idle: less than 2 ms of CPU in a 500 ms
/// window (up to 20 s), so a backlog of background events is not counted.
fn wait_quiet(cgroups: &[&Path]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let total = || -> Result<u64> { cgroups.iter().map(|c| cpu_usec(c)).sum() };
    let mut before = total()?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = total()?;
        if now - before < 2_000 {
            return Ok(());
        }
        before = now;
    }
    Ok(())
}

/// Starts container `id` and measures containerd's create event → its
/// cgroup in the loader's map, ms.
fn measured_start(
    scene: &Scene,
    host_ns: &str,
    cgroups: &BpfHashMap<MapData, u64, CgroupPolicy>,
    events: &test_kit::containerd::Events,
    id: &str,
    veth: &str,
) -> Result<f64> {
    let dir = scene.places.cgroup.path().join("ctr").join(id);
    let in_force = until_in_force(&dir, cgroups, || run_container(scene, host_ns, id, veth))?;
    let create_ns = events.wait(id, "/tasks/create")?;
    Ok((in_force - create_ns) as f64 / 1e6)
}

pub fn measure(bin_dir: &Path, quick: bool) -> Result<Scale> {
    let started = Instant::now();
    require_daemons(bin_dir)?;
    let bin = |name: &str| bin_dir.join(name);
    let name = format!("{}-sc", sys::run_name());
    let mut scene = Scene {
        places: Places::new(&name)?,
        netns: Mutex::new(Vec::new()),
        containerd: None,
        daemons: Vec::new(),
        containers: Mutex::new(Vec::new()),
    };
    let s = scene.places.scratch.clone();
    let parent = scene.places.cgroup.path().join("ctr");
    std::fs::create_dir_all(&parent)?;
    let sock = |n: &str| s.join(format!("{n}.sock"));
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // Overlay snapshots need a real filesystem, not the tmpfs under /tmp.
    scene.containerd = Some(
        Containerd::start(
            &PathBuf::from("/var/lib").join(&name),
            &format!("{name}/ctr"),
            &[NAMESPACE],
        )
        .context("starting a private containerd")?,
    );
    let host_ns = format!("{name}-host");
    let netns = Netns::new(&host_ns)?;
    scene
        .netns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(netns);

    let loader = start_loader(
        bin_dir,
        &scene.places.pin_dir,
        &format!("{name}/ctr"),
        &s,
        &host_ns,
    )?;
    scene.daemons.push(loader);
    let containerd_socket = path(scene.containerd()?.socket());
    let resolver = start_in(
        "resolver",
        &bin("resolver"),
        &[
            "--socket",
            &path(&sock("resolver")),
            "--containerd-socket",
            &containerd_socket,
            "--docker-socket",
            &path(&s.join("no-docker.sock")),
            "--docker-root",
            &path(&s.join("no-docker")),
            "--rescan-secs",
            "3600",
        ],
        &sock("resolver"),
        &s,
        Some(&host_ns),
    )?;
    let policy = s.join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\nunknown_container = \"deny\"\n\n[[policy]]\nname = \"bench\"\nselect = { label = { \"contain-bench\" = \"1\" } }\nallow = [{ to = [\"198.18.201.1\"], proto = \"tcp\", ports = [9] }]\n",
    )?;
    let policyd = start(
        "policyd",
        &bin("policyd"),
        &[
            "--socket",
            &path(&sock("policyd")),
            "daemon",
            "--policy",
            &path(&policy),
            "--loader-socket",
            &path(&sock("loader")),
            "--resolver-socket",
            &path(&sock("resolver")),
            "--group",
            "root",
            "--poll-secs",
            "3600",
            "--resync-secs",
            "3600",
        ],
        &sock("policyd"),
        &s,
    )?;
    let resolver_cpu = scene.places.cgroup.path().join("daemons/resolver");
    let policyd_cpu = scene.places.cgroup.path().join("daemons/policyd");
    move_into(&resolver_cpu, &resolver)?;
    move_into(&policyd_cpu, &policyd)?;
    scene.daemons.push(resolver);
    scene.daemons.push(policyd);

    let maps = maps_dir(&scene.places.pin_dir)?;
    let cgroups: BpfHashMap<MapData, u64, CgroupPolicy> =
        Map::HashMap(MapData::from_pin(maps.join("CONTAIN_CGROUPS"))?).try_into()?;
    let (sizes, measured): (&[usize], usize) = if quick {
        (&[10, 50], 3)
    } else {
        (&[10, 100, 500], MEASURED)
    };
    let mut result = Scale {
        measured_per_row: measured,
        ..Scale::default()
    };
    let mut running = 0;
    for (row_index, &size) in sizes.iter().enumerate() {
        let t = Instant::now();
        let background: Vec<(String, String)> = (running..size)
            .map(|i| (format!("{name}-b{i}"), format!("b{i}")))
            .collect();
        start_background(&scene, &host_ns, &background)?;
        wait_in_force(&cgroups, &parent, &background)?;
        running = size;
        let background_start_s = t.elapsed().as_secs_f64();
        eprintln!(
            "contain-bench: scale: {size} containers running ({background_start_s:.0} s to start)"
        );
        wait_quiet(&[&resolver_cpu, &policyd_cpu])?;

        let events = scene.containerd()?.events()?;
        let ids: Vec<(String, String)> = (0..measured)
            .map(|j| {
                (
                    format!("{name}-m{row_index}x{j}"),
                    format!("m{row_index}x{j}"),
                )
            })
            .collect();
        let cpu_before = (cpu_usec(&resolver_cpu)?, cpu_usec(&policyd_cpu)?);
        let mut from_create_ms = Vec::new();
        for (id, veth) in &ids {
            from_create_ms.push(measured_start(
                &scene, &host_ns, &cgroups, &events, id, veth,
            )?);
            // Let the start's later events (task start, pids) be taken
            // before the next, so each start is counted whole.
            std::thread::sleep(Duration::from_millis(300));
        }
        let cpu_after = (cpu_usec(&resolver_cpu)?, cpu_usec(&policyd_cpu)?);
        drop(events);
        let per_start =
            |before: u64, after: u64| (after - before) as f64 / 1000.0 / measured as f64;
        result.rows.push(Row {
            running: size,
            from_create_ms,
            resolver_cpu_ms: per_start(cpu_before.0, cpu_after.0),
            policyd_cpu_ms: per_start(cpu_before.1, cpu_after.1),
            background_start_s,
        });
        let measured_ids: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
        scene.remove_containers(&measured_ids);
    }
    drop(scene);
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// The phase's section of the report.
pub fn render(md: &mut String, scale: &Scale) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "## Scale in containers\n");
    let _ = writeln!(
        md,
        "One container start on a host already running 10, 100 or 500 containers (the release \
         daemons as in container create → policy in force: a private containerd, the resolver \
         following it, policyd following the resolver, bpf-loader). Every container has a \
         network namespace of its own with a veth from the namespace the loader and the \
         resolver run in, which stands for the host's, as Docker and CNI give them; all are \
         selected by one policy. On top of the running ones, {} containers are started one at \
         a time. *In force*: containerd's `/tasks/create` event → the cgroup in the loader's \
         `CGROUPS` map, median (min–max). *CPU per start*: the daemon's user + system time \
         over those starts (its cgroup's `cpu.stat`), divided by their number; the resolver's \
         periodic full rescan (30 s by default) is set to an hour so that it stays out of the \
         window. The target is a flat cost: within 1.5 × of the 10-container row at 500.\n",
        scale.measured_per_row
    );
    let _ = writeln!(
        md,
        "| containers running | in force, ms | × | resolver CPU per start, ms | × | policyd CPU per start, ms | × |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|");
    let first = scale.rows.first();
    let ratio = |v: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", v / b),
        _ => "—".into(),
    };
    for row in &scale.rows {
        let v = &row.from_create_ms;
        let in_force = if v.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{:.1} ({:.1}–{:.1})",
                sys::median(v),
                sys::quantile(v, 0.0),
                sys::quantile(v, 1.0)
            )
        };
        let _ = writeln!(
            md,
            "| {} | {in_force} | {} | {:.2} | {} | {:.2} | {} |",
            row.running,
            ratio(
                sys::median(v),
                first.map(|f| sys::median(&f.from_create_ms))
            ),
            row.resolver_cpu_ms,
            ratio(row.resolver_cpu_ms, first.map(|f| f.resolver_cpu_ms)),
            row.policyd_cpu_ms,
            ratio(row.policyd_cpu_ms, first.map(|f| f.policyd_cpu_ms)),
        );
    }
    let _ = writeln!(md);
}
