//! The veth backstop's attachments: `contain_veth` on tc ingress of every
//! veth of the loader's (the host's) network namespace, from the moment the
//! runtime creates the pair: before one end is moved into the container's
//! namespace, so before the container's first process can send. The end
//! that is moved leaves with an `RTM_DELLINK` here, and its attachment is
//! released (a move also drops a device's qdiscs); the host-side end keeps
//! its own. A veth with no container behind it costs a lookup per frame.
//!
//! Kernels with tcx (6.6 and later) get a bpf_link per veth, pinned like
//! the cgroup links (a new loader pins its own, then releases its
//! predecessor's); older kernels get a `clsact` filter at a fixed priority
//! and handle, which stays in the kernel without a process and which a new
//! loader replaces in one netlink request. Either way nothing is detached
//! while a loader restarts, and a veth's attachment goes with the veth.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    programs::{
        links::FdLink,
        tc::{self, NlOptions, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf,
};
use contain_common::program_names;
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        tc::{TcAttribute, TcFilterBpfOption, TcHandle as NlTcHandle, TcMessage, TcOption},
        AddressFamily, RouteNetlinkMessage,
    },
    MulticastGroup,
};

use crate::kernel::{io_err, pin_err, program_err, program_mut, Kernel, KernelError};

/// The clsact filters' priority (first: a filter before contain's could
/// accept a frame) and handle, fixed so a new loader replaces them in place.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0xc0a7, 1);

/// A veth, from a link message: its ifindex and name.
pub fn veth_of(msg: &LinkMessage) -> Option<(u32, String)> {
    let mut name = None;
    let mut is_veth = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                is_veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    name.filter(|_| is_veth).map(|n| (msg.header.index, n))
}

/// How this kernel takes tc programs.
pub fn uses_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The backstop's programs and where on a veth each runs: what the
/// container sends arrives on the host side's ingress, what it receives
/// leaves by its egress.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    (program_names::VETH, TcAttachType::Ingress),
    (program_names::VETH_INBOUND, TcAttachType::Egress),
];

/// Attaches the backstop's programs to `name`. With tcx the returned links
/// are for the caller to pin; with netlink the filters are in the kernel
/// and there is nothing to keep.
pub fn attach(ebpf: &mut Ebpf, name: &str) -> Result<Vec<(&'static str, FdLink)>, KernelError> {
    attach_hooks(ebpf, name, &PROGRAMS.map(|(_, hook)| hook))
}

/// [`attach`] for some of the hooks.
pub fn attach_hooks(
    ebpf: &mut Ebpf,
    name: &str,
    hooks: &[TcAttachType],
) -> Result<Vec<(&'static str, FdLink)>, KernelError> {
    let mut links = Vec::new();
    for (prog_name, attach_type) in PROGRAMS.into_iter().filter(|(_, t)| hooks.contains(t)) {
        if let Some(link) = attach_one_program(ebpf, prog_name, attach_type, name)? {
            links.push((prog_name, link));
        }
    }
    Ok(links)
}

fn attach_one_program(
    ebpf: &mut Ebpf,
    prog_name: &'static str,
    attach_type: TcAttachType,
    name: &str,
) -> Result<Option<FdLink>, KernelError> {
    let err = program_err(prog_name);
    let prog: &mut SchedClassifier = program_mut(ebpf, prog_name)?;
    if uses_tcx() {
        let id = prog
            .attach_with_options(
                name,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(&err)?;
        let link = prog.take_link(id).map_err(&err)?;
        return Ok(Some(link.try_into().map_err(pin_err(Path::new(name)))?));
    }
    match tc::qdisc_add_clsact(name) {
        Ok(()) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(err(e.into())),
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE,
        classid: None,
    });
    let id = match prog.attach_with_options(name, attach_type, options) {
        Ok(id) => id,
        // A predecessor's filter: replaced in place, in one request.
        Err(_) => {
            let existing = tc::SchedClassifierLink::attached(
                name,
                attach_type,
                FILTER_PRIORITY,
                FILTER_HANDLE,
                None,
            )
            .map_err(io_err(Path::new(name)))?;
            prog.attach_to_link(existing).map_err(&err)?
        }
    };
    // The filter stays when this loader exits: the link is forgotten, not
    // dropped (dropping it would detach the filter).
    std::mem::forget(prog.take_link(id).map_err(&err)?);
    Ok(None)
}

/// What is attached to one tc hook of a device, in the order a frame
/// meets it, as the kernel lists it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnHook {
    /// A BPF program: its kernel id, and its name (the kernel's, or a
    /// filter's).
    Program(u32, String),
    /// A clsact filter of another kind (`matchall`, `u32`, classic BPF ...).
    Filter(String),
}

impl std::fmt::Display for OnHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnHook::Program(id, name) => write!(f, "another BPF program ({name:?}, id {id})"),
            OnHook::Filter(kind) => write!(f, "a {kind} filter"),
        }
    }
}

/// Why the kernel does not run the backstop first on a hook of a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// Its program is not on this hook (the filter or the qdisc deleted,
    /// the link detached): the loader attaches it again.
    Missing(TcAttachType),
    /// Something else runs before it. Left where it is (not the loader's
    /// to remove, and it may well pass frames on), and reported.
    NotFirst(TcAttachType, OnHook),
    /// Another contain loader's backstop is there instead (one with
    /// another pin directory, which replaced this one's filter): reported,
    /// never replaced back, so that two loaders do not take turns.
    OtherLoader(TcAttachType, OnHook),
    /// What runs there could not be read (the reason).
    Unreadable(String),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Missing(hook) => write!(f, "on tc {hook:?}, the backstop is not attached"),
            Gap::NotFirst(hook, first) => write!(f, "on tc {hook:?}, {first} runs before it"),
            Gap::OtherLoader(hook, other) => write!(
                f,
                "on tc {hook:?}, {other} of another contain loader is there instead"
            ),
            Gap::Unreadable(reason) => write!(f, "cannot read what runs: {reason}"),
        }
    }
}

/// The backstop's programs are named `contain_veth…` (the kernel keeps 15
/// bytes of a name).
const BACKSTOP_NAME_PREFIX: &str = "contain_veth";

/// What a hook's list says of the backstop's program `ours` there.
pub fn gap_on(hook: TcAttachType, ours: u32, attached: &[OnHook]) -> Option<Gap> {
    let is_ours = |on: &OnHook| matches!(on, OnHook::Program(id, _) if *id == ours);
    match attached.first() {
        Some(first) if is_ours(first) => None,
        Some(first) if attached.iter().any(is_ours) => Some(Gap::NotFirst(hook, first.clone())),
        _ => match attached.iter().find(
            |on| matches!(on, OnHook::Program(_, name) if name.starts_with(BACKSTOP_NAME_PREFIX)),
        ) {
            Some(other) => Some(Gap::OtherLoader(hook, other.clone())),
            None => Some(Gap::Missing(hook)),
        },
    }
}

/// One veth the loader attached to, as the kernel shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub ifindex: u32,
    pub name: String,
    /// Empty when the kernel runs the backstop's program first on both
    /// hooks.
    pub gaps: Vec<Gap>,
}

/// What the kernel runs on the hooks of every veth the loader attached to.
pub async fn coverage(kernel: &Arc<Mutex<Kernel>>) -> Result<Vec<Coverage>, KernelError> {
    let (recorded, ours) = {
        let kernel = Kernel::lock(kernel);
        (
            kernel.attached_veths().clone(),
            kernel.backstop_program_ids()?,
        )
    };
    Ok(backstop_first_on(recorded, ours).await)
}

/// What the kernel runs first on each hook of the veths of `recorded`
/// (ifindex → name), against the backstop's programs (`ours`: each hook
/// with its program's id).
pub async fn backstop_first_on(
    recorded: BTreeMap<u32, String>,
    ours: Vec<(TcAttachType, u32)>,
) -> Vec<Coverage> {
    let attached = if uses_tcx() {
        // bpf(2) queries, each under the rtnl lock: off the daemon's one
        // thread.
        let query = recorded.clone();
        let ours = ours.clone();
        let listed = tokio::task::spawn_blocking(move || {
            query
                .iter()
                .map(|(&ifindex, name)| {
                    ours.iter()
                        .map(|&(hook, id)| on_tcx_hook(ifindex, name, hook, id))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .await;
        match listed {
            Ok(listed) => listed,
            Err(e) => return unreadable(recorded, &format!("the tcx queries failed: {e}")),
        }
    } else {
        match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => {
                let conn_task = tokio::spawn(conn);
                let mut listed = Vec::new();
                for &ifindex in recorded.keys() {
                    let mut per_hook = Vec::new();
                    for &(hook, _) in &ours {
                        per_hook.push(on_clsact_hook(&handle, ifindex, hook).await);
                    }
                    listed.push(per_hook);
                }
                conn_task.abort();
                listed
            }
            Err(e) => {
                return unreadable(
                    recorded,
                    &format!("cannot open rtnetlink to read the tc filters: {e}"),
                )
            }
        }
    };
    recorded
        .into_iter()
        .zip(attached)
        .map(|((ifindex, name), per_hook)| {
            let gaps = ours
                .iter()
                .zip(per_hook)
                .filter_map(|(&(hook, id), attached)| match attached {
                    Ok(attached) => gap_on(hook, id, &attached),
                    Err(e) => Some(Gap::Unreadable(format!("on tc {hook:?}: {e}"))),
                })
                .collect();
            Coverage {
                ifindex,
                name,
                gaps,
            }
        })
        .collect()
}

fn unreadable(recorded: BTreeMap<u32, String>, reason: &str) -> Vec<Coverage> {
    recorded
        .into_iter()
        .map(|(ifindex, name)| Coverage {
            ifindex,
            name,
            gaps: vec![Gap::Unreadable(reason.to_string())],
        })
        .collect()
}

/// The programs of a tcx hook, in order. When the backstop's program `ours`
/// is first, by ids alone (one bpf(2) call); otherwise named too, through
/// aya, which asks by name: a rename in between would answer for another
/// device.
fn on_tcx_hook(
    ifindex: u32,
    name: &str,
    hook: TcAttachType,
    ours: u32,
) -> std::io::Result<Vec<OnHook>> {
    let ids = tcx_program_ids(ifindex, hook)?;
    if ids.first() == Some(&ours) {
        return Ok(ids
            .into_iter()
            .map(|id| OnHook::Program(id, String::new()))
            .collect());
    }
    let (_, programs) = SchedClassifier::query_tcx(name, hook).map_err(std::io::Error::other)?;
    if !still_named(ifindex, name) {
        return Err(std::io::Error::other(format!(
            "{name} is no longer ifindex {ifindex}"
        )));
    }
    Ok(programs
        .iter()
        .map(|p| OnHook::Program(p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect())
}

/// The ids of the programs on a tcx hook of device `ifindex`, in order:
/// `BPF_PROG_QUERY` by ifindex. aya's `query_tcx` resolves a name and opens
/// every program for its info: with a link dump every check, that cost the
/// loader 2.2 % of a CPU at rest on a host of 1 000 veths; this, 0.4 %.
pub fn tcx_program_ids(ifindex: u32, hook: TcAttachType) -> std::io::Result<Vec<u32>> {
    use aya_obj::generated::bpf_attach_type;
    let attach_type = match hook {
        TcAttachType::Ingress => bpf_attach_type::BPF_TCX_INGRESS,
        TcAttachType::Egress => bpf_attach_type::BPF_TCX_EGRESS,
        TcAttachType::Custom(_) => return Err(std::io::Error::other("not a tcx hook")),
    };
    crate::kernel::query_program_ids(ifindex, attach_type)
}

/// The filters of a clsact hook, in order, from its filter dump.
async fn on_clsact_hook(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: TcAttachType,
) -> std::io::Result<Vec<OnHook>> {
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = match hook {
        TcAttachType::Ingress => request.ingress(),
        TcAttachType::Egress => request.egress(),
        TcAttachType::Custom(_) => return Err(std::io::Error::other("not a clsact hook")),
    };
    let dump: Vec<TcMessage> = request
        .execute()
        .try_collect()
        .await
        .map_err(std::io::Error::other)?;
    Ok(filters_in_order(&dump))
}

/// The filters a frame meets, in order, from a clsact parent's filter
/// dump: in dump order (by priority, then as the classifier walks its
/// filters), skipping each priority's own entry (handle 0) and chains
/// other than 0 (reached only by a filter's `goto`).
pub fn filters_in_order(dump: &[TcMessage]) -> Vec<OnHook> {
    let mut filters = Vec::new();
    for msg in dump {
        if msg.header.handle == NlTcHandle::UNSPEC {
            continue;
        }
        let mut kind = None;
        let mut chain = 0;
        let mut program = None;
        let mut name = String::new();
        for attr in &msg.attributes {
            match attr {
                TcAttribute::Kind(k) => kind = Some(k.as_str()),
                TcAttribute::Chain(c) => chain = *c,
                TcAttribute::Options(options) => {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => program = Some(*id),
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name.clone_from(n),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if chain != 0 {
            continue;
        }
        filters.push(match (kind, program) {
            (Some("bpf"), Some(id)) => OnHook::Program(id, name),
            (kind, _) => OnHook::Filter(kind.unwrap_or("unknown").to_string()),
        });
    }
    filters
}

/// Attaches to every veth now, then follows link events and attaches to
/// each new one, forever. A lost event (socket overrun) is
/// made up by a full re-read.
pub async fn follow(kernel: Arc<Mutex<Kernel>>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
            Ok((conn, _, mut messages)) => {
                let conn_task = tokio::spawn(conn);
                delay = Duration::from_millis(100);
                // What appeared since the last look (the loader's start, or
                // a socket that closed) is new.
                attach_all(&kernel, Found::Appeared).await;
                while let Some((msg, _)) = messages.next().await {
                    match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                            if let Some((ifindex, name)) = veth_of(&link) {
                                attach_one(&kernel, ifindex, &name, Found::Appeared);
                            }
                        }
                        // A bridge reports a port leaving it as a DELLINK of
                        // family AF_BRIDGE: the device itself stays.
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
                            if link.header.interface_family == AddressFamily::Unspec =>
                        {
                            Kernel::lock(&kernel).veth_gone(link.header.index);
                        }
                        NetlinkPayload::Overrun(_) => {
                            tracing::warn!("rtnetlink event socket overran; re-reading the links");
                            attach_all(&kernel, Found::Appeared).await;
                        }
                        _ => {}
                    }
                }
                conn_task.abort();
                tracing::warn!("rtnetlink event socket closed; reopening");
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "cannot follow link events: new veths are not covered against packet sockets until this recovers");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How often the loader checks that the kernel runs the backstop first on
/// every veth it attached to.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The longest wait before a veth whose attach keeps failing is tried again.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Every how many checks the links are listed for veths not on record.
const RESCAN_EVERY: u32 = 5;

/// Keeps the backstop on every veth of this namespace, forever. Where its
/// program is gone from a hook (another tool's `tc filter del` or
/// `tc qdisc del dev X clsact` before kernel 6.6, a tcx link detached or
/// unpinned), attaches it to that hook again. A program or filter another
/// tool put before it is left where it is: it may pass frames on, and the
/// backstop cannot be put in front of it without a moment off the hook
/// (the kernel takes a program once per hook); status names the veth, and
/// the loader logs it once. A veth whose attach failed is tried again after
/// 10 s, backing off to once a minute while it keeps failing.
pub async fn keep_first(kernel: Arc<Mutex<Kernel>>) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each veth's last gaps, so that a gap that stays is logged once.
    let mut last_gaps: BTreeMap<u32, Vec<Gap>> = BTreeMap::new();
    // Veths not on record: when to try each again, and the back-off.
    let mut retry: BTreeMap<u32, (tokio::time::Instant, Duration)> = BTreeMap::new();
    let mut checks: u32 = 0;
    loop {
        check.tick().await;
        let coverage = match coverage(&kernel).await {
            Ok(coverage) => coverage,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backstop's program ids: cannot check that it runs first on the veths");
                continue;
            }
        };
        // Every veth on record has its coverage.
        let recorded: BTreeSet<u32> = coverage.iter().map(|c| c.ifindex).collect();
        let mut gaps_now = BTreeMap::new();
        for Coverage {
            ifindex,
            name,
            gaps,
        } in coverage
        {
            if gaps.is_empty() {
                if last_gaps.contains_key(&ifindex) {
                    tracing::info!(veth = %name, ifindex, "the backstop runs first on this veth again");
                }
                continue;
            }
            // Gone, moved into a container's namespace or renamed since the
            // record was read: its link event settles it.
            let still_here = Kernel::lock(&kernel).attached_veths().get(&ifindex) == Some(&name)
                && still_named(ifindex, &name);
            if !still_here {
                continue;
            }
            let new_gaps = last_gaps.get(&ifindex) != Some(&gaps);
            if new_gaps {
                for gap in &gaps {
                    match gap {
                        Gap::Missing(_) => {
                            tracing::warn!(veth = %name, ifindex, %gap, "the backstop is gone from this veth: attaching it again")
                        }
                        Gap::Unreadable(_) => {
                            tracing::warn!(veth = %name, ifindex, %gap, "cannot check that the backstop runs first on this veth")
                        }
                        _ => {
                            tracing::warn!(veth = %name, ifindex, %gap, "the backstop is not what runs first on this veth: frames there may pass unjudged")
                        }
                    }
                }
            }
            let missing: Vec<TcAttachType> = gaps
                .iter()
                .filter_map(|g| match g {
                    Gap::Missing(hook) => Some(*hook),
                    _ => None,
                })
                .collect();
            if !missing.is_empty() {
                match Kernel::lock(&kernel).reattach_veth(ifindex, &name, &missing) {
                    Ok(()) => {}
                    Err(e) if new_gaps => {
                        tracing::error!(veth = %name, ifindex, error = %e, "cannot attach the backstop to this veth again: packet sockets behind it are not covered (tried again every check)");
                    }
                    Err(e) => {
                        tracing::debug!(veth = %name, ifindex, error = %e, "the backstop's attach failed again")
                    }
                }
                // Each repair holds the kernel's lock across bpf(2) and
                // netlink calls: the socket's requests go in between.
                tokio::task::yield_now().await;
            }
            gaps_now.insert(ifindex, gaps);
        }
        last_gaps = gaps_now;

        // Veths whose attach failed (or that no event announced), every
        // RESCAN_EVERY checks: a dump of every link is the check's costliest
        // part.
        checks = checks.wrapping_add(1);
        if !checks.is_multiple_of(RESCAN_EVERY) {
            continue;
        }
        let Ok(present) = veths().await else { continue };
        let now = tokio::time::Instant::now();
        let present_ifindexes: BTreeSet<u32> = present.iter().map(|(i, _)| *i).collect();
        retry.retain(|ifindex, _| present_ifindexes.contains(ifindex));
        for (ifindex, name) in present {
            if recorded.contains(&ifindex) {
                retry.remove(&ifindex);
                continue;
            }
            let (at, backoff) = retry
                .get(&ifindex)
                .copied()
                .unwrap_or((now, CHECK_EVERY * RESCAN_EVERY));
            if at > now {
                continue;
            }
            // One no event announced appeared; one retried is not new again.
            let found = if retry.contains_key(&ifindex) {
                Found::AtStart
            } else {
                Found::Appeared
            };
            if !attach_one(&kernel, ifindex, &name, found) {
                retry.insert(ifindex, (now + backoff, (backoff * 2).min(RETRY_MAX)));
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Every veth of this namespace, from a link dump.
pub async fn veths() -> std::io::Result<Vec<(u32, String)>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn_task = tokio::spawn(conn);
    let links: Result<Vec<_>, _> = handle
        .link()
        .get()
        .execute()
        .map_ok(|m| veth_of(&m))
        .try_collect()
        .await;
    conn_task.abort();
    links
        .map(|l| l.into_iter().flatten().collect())
        .map_err(std::io::Error::other)
}

/// How the loader came upon a veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// There when the loader started (or retried after a failed attach).
    /// At the start, one no predecessor's backstop is on appeared while no
    /// loader watched: [`attach_all`] takes it as [`Found::Appeared`].
    AtStart,
    /// Appeared while the loader ran (a container starting): one not on
    /// record yet is marked new ([`Kernel::mark_new_veth`]).
    Appeared,
}

/// Attaches to every veth there is, and releases the pins of veths that
/// are gone.
pub async fn attach_all(kernel: &Arc<Mutex<Kernel>>, found: Found) {
    match veths().await {
        Ok(veths) => {
            // Fresh maps (the first start, or a layout change) hold every
            // veth: none has an owner until policyd maps it, whatever
            // backstop a predecessor left on it. Maps no change was ever
            // applied to are fresh.
            let fresh_maps = Kernel::lock(kernel).generation() == 0;
            let covered = match found {
                Found::AtStart if !fresh_maps => covered_before(kernel, &veths).await,
                Found::AtStart | Found::Appeared => BTreeSet::new(),
            };
            for (ifindex, name) in &veths {
                let found = if covered.contains(ifindex) {
                    Found::AtStart
                } else {
                    Found::Appeared
                };
                attach_one(kernel, *ifindex, name, found);
            }
            let present: Vec<u32> = veths.iter().map(|(i, _)| *i).collect();
            Kernel::lock(kernel).release_gone_veths(&present);
        }
        Err(e) => tracing::error!(error = %e, "cannot list the host's veths"),
    }
}

/// The veths of `veths` a backstop's program is on already, before this
/// loader's (a predecessor's, pinned or a tc filter): the others appeared
/// while no loader watched, or the kernel could not say (then they are held
/// as new: the hold ends with its owner's entry, or after its length).
async fn covered_before(kernel: &Arc<Mutex<Kernel>>, veths: &[(u32, String)]) -> BTreeSet<u32> {
    let Ok(ours) = Kernel::lock(kernel).backstop_program_ids() else {
        return BTreeSet::new();
    };
    let ingress = ours
        .into_iter()
        .filter(|&(hook, _)| hook == TcAttachType::Ingress)
        .collect();
    backstop_first_on(veths.iter().cloned().collect(), ingress)
        .await
        .into_iter()
        .filter(|c| matches!(c.gaps.as_slice(), [Gap::OtherLoader(..)]))
        .map(|c| c.ifindex)
        .collect()
}

/// Attaches the backstop to one veth; returns whether the veth is on
/// record now (attached, or left to a link event). One that appeared is
/// marked new first, unless on record already (a link event of a veth
/// whose flags changed changes nothing).
fn attach_one(kernel: &Arc<Mutex<Kernel>>, ifindex: u32, name: &str, found: Found) -> bool {
    let mut kernel = Kernel::lock(kernel);
    if found == Found::Appeared && !kernel.veth_on_record(ifindex, name) {
        kernel.mark_new_veth(ifindex);
    }
    match kernel.attach_veth(ifindex, name) {
        // Attached by name: a rename in between put the program on another
        // device, which its own link event covers. Not this ifindex's.
        Ok(true) if !still_named(ifindex, name) => {
            kernel.veth_gone(ifindex);
            tracing::debug!(
                veth = name,
                ifindex,
                "veth renamed while the backstop was attached; left to the new name's event"
            );
            true
        }
        Ok(true) => {
            tracing::info!(veth = name, ifindex, "backstop attached to veth");
            true
        }
        Ok(false) => true,
        // The end a runtime moves into a container's namespace is often gone
        // from this one before it could be attached: nothing to cover here.
        Err(e) if !still_named(ifindex, name) => {
            tracing::debug!(veth = name, ifindex, error = %e, "veth left this namespace before the backstop was attached");
            true
        }
        Err(e) => {
            tracing::error!(veth = name, ifindex, error = %e, "cannot attach the backstop to veth: packet sockets behind it are not covered");
            false
        }
    }
}

/// Whether device `ifindex` is named `name` in this namespace now.
fn still_named(ifindex: u32, name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).ok() == Some(ifindex)
}

/// The pin directory of one veth's tcx links.
pub fn pin_group(links_dir: &Path, ifindex: u32) -> std::path::PathBuf {
    links_dir.join("veths").join(ifindex.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_kit::lab::link_message as msg;

    /// A filter dump's entry: `handle` 0 is a priority's own entry.
    fn filter(handle: u16, kind: &str, chain: u32, program: Option<u32>) -> TcMessage {
        let mut m = TcMessage::default();
        m.header.handle = NlTcHandle {
            major: if handle == 0 { 0 } else { 0xc0a7 },
            minor: handle,
        };
        m.attributes.push(TcAttribute::Kind(kind.into()));
        m.attributes.push(TcAttribute::Chain(chain));
        if let Some(id) = program {
            m.attributes.push(TcAttribute::Options(vec![TcOption::Bpf(
                TcFilterBpfOption::ProgId(id),
            )]));
        }
        m
    }

    fn prog(id: u32) -> OnHook {
        OnHook::Program(id, format!("prog{id}"))
    }

    #[test]
    fn filters_are_listed_in_the_order_a_frame_meets_them() {
        use OnHook::Filter;
        assert_eq!(filters_in_order(&[]), vec![]);
        let named = |id| OnHook::Program(id, String::new());
        assert_eq!(
            filters_in_order(&[filter(0, "bpf", 0, None), filter(1, "bpf", 0, Some(7))]),
            vec![named(7)]
        );
        // A filter of another priority before it, or of the same one added
        // later (cls_bpf walks its newest first): listed, and so met, first.
        assert_eq!(
            filters_in_order(&[
                filter(0, "matchall", 0, None),
                filter(1, "matchall", 0, None),
                filter(0, "bpf", 0, None),
                filter(1, "bpf", 0, Some(7)),
            ]),
            vec![Filter("matchall".into()), named(7)]
        );
        assert_eq!(
            filters_in_order(&[
                filter(0, "bpf", 0, None),
                filter(2, "bpf", 0, Some(9)),
                filter(1, "bpf", 0, Some(7))
            ]),
            vec![named(9), named(7)]
        );
        // Classic BPF: a bpf filter without a program id.
        assert_eq!(
            filters_in_order(&[filter(2, "bpf", 0, None), filter(1, "bpf", 0, Some(7))]),
            vec![Filter("bpf".into()), named(7)]
        );
        // Another chain runs only by a filter's goto.
        assert_eq!(
            filters_in_order(&[filter(1, "matchall", 3, None), filter(1, "bpf", 0, Some(7))]),
            vec![named(7)]
        );
    }

    #[test]
    fn only_a_missing_backstop_is_a_gap_to_repair() {
        use OnHook::Filter;
        let hook = TcAttachType::Ingress;
        assert_eq!(gap_on(hook, 7, &[prog(7)]), None);
        assert_eq!(gap_on(hook, 7, &[prog(7), prog(9)]), None);
        assert_eq!(gap_on(hook, 7, &[]), Some(Gap::Missing(hook)));
        assert_eq!(gap_on(hook, 7, &[prog(9)]), Some(Gap::Missing(hook)));
        assert_eq!(
            gap_on(hook, 7, &[prog(9), prog(7)]),
            Some(Gap::NotFirst(hook, prog(9)))
        );
        assert_eq!(
            gap_on(hook, 7, &[Filter("matchall".into()), prog(7)]),
            Some(Gap::NotFirst(hook, Filter("matchall".into())))
        );
        // Another loader's backstop where this one's was (it replaced this
        // one's clsact filter): not taken back.
        let other = OnHook::Program(9, "contain_veth_in".into());
        assert_eq!(
            gap_on(hook, 7, std::slice::from_ref(&other)),
            Some(Gap::OtherLoader(hook, other))
        );
    }

    #[test]
    fn veths_only() {
        let veth = vec![
            LinkAttribute::IfName("veth1".into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        assert_eq!(
            veth_of(&msg(7, veth.clone())),
            Some((7, "veth1".to_string()))
        );
        assert_eq!(veth_of(&msg(7, veth[1..].to_vec())), None);
        let bridge = vec![
            LinkAttribute::IfName("br0".into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        assert_eq!(veth_of(&msg(8, bridge)), None);
        assert_eq!(
            veth_of(&msg(9, vec![LinkAttribute::IfName("lo".into())])),
            None
        );
    }
}
