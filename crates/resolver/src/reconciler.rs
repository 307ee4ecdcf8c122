//! The reconciler: one task that owns what the runtimes said, the host's link
//! table and the inventory, and turns source events, link events and
//! periodic rescans into inventory changes.
//!
//! Sources never wait on the reconciler's readers and readers never wait on the
//! sources: queries read the published inventory under a short lock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs::File,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use proto::resolver::{ChangeKind, Container};
use tokio::sync::{mpsc, watch};

use crate::{
    cgroup::Cgroup2Mount,
    exe::{self, RootId},
    inventory::VersionedInventory,
    links::{LinkSignal, LinkTable, Netlink},
    process::Proc,
    resolve::{addresses_after, build, ProcFacts, ReadAddresses},
    source::{self, key, RuntimeContainer, SourceEvent, StatusBoard},
};

/// Most processes listed per container.
const MAX_PIDS: usize = 4096;
/// Most queued events handled in one batch.
const MAX_BATCH: usize = 1024;
pub const RTNETLINK_SOURCE: &str = "rtnetlink";
/// The status entry of the reads of containers' addresses
/// (`/proc/<pid>/net`): not connected while some container's could not be
/// read (the entry names one, with the error).
pub const ADDRESSES_SOURCE: &str = "procfs-addresses";

/// What the service reads.
pub struct Shared {
    pub inventory: RwLock<VersionedInventory>,
    /// The current generation, for long-polling watchers.
    pub generation: watch::Sender<u64>,
    pub status: StatusBoard,
    pub cgroup_root: String,
    /// The root directory each container's init process had when the
    /// resolver first saw it, by container key: executables are resolved
    /// only through processes that still have it (see [`crate::exe`]).
    pub roots: RwLock<HashMap<String, RootId>>,
    /// Where /proc is (the host's, or a test's).
    pub proc_root: std::path::PathBuf,
    /// The sources whose full listing the inventory holds (a first
    /// snapshot processed): until containerd's is in, the inventory is
    /// missing every running container, not saying they are gone.
    pub listed: watch::Sender<BTreeSet<String>>,
    /// The sources started, whose first listing the inventory waits for.
    pub sources: RwLock<BTreeSet<String>>,
}

impl Shared {
    pub fn new(inventory: VersionedInventory, status: StatusBoard, cgroup_root: String) -> Self {
        let generation = watch::Sender::new(inventory.generation());
        Shared {
            inventory: RwLock::new(inventory),
            generation,
            status,
            cgroup_root,
            roots: RwLock::new(HashMap::new()),
            proc_root: std::path::PathBuf::from("/proc"),
            listed: watch::Sender::new(BTreeSet::new()),
            sources: RwLock::new(BTreeSet::new()),
        }
    }

    /// The inventory as clients get it: with the sources whose first
    /// listing it does not hold yet.
    pub fn snapshot(&self) -> proto::resolver::Snapshot {
        let mut snapshot = self.read().snapshot();
        snapshot.unlisted_sources = self.unlisted_sources();
        snapshot
    }

    /// Started sources whose first listing is not in.
    pub fn unlisted_sources(&self) -> Vec<String> {
        let listed = self.listed.borrow();
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect()
    }

    pub fn root_of(&self, key: &str) -> Option<RootId> {
        self.roots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, VersionedInventory> {
        self.inventory.read().unwrap_or_else(|p| p.into_inner())
    }
}

struct Record {
    source: String,
    rc: RuntimeContainer,
    /// Start time of `rc.pid` when first seen, to tell a reused pid apart.
    start_time: Option<u64>,
    /// What /proc and the cgroup tree said at the last full resolution.
    facts: Option<ProcFacts>,
    /// The root directory of `rc.pid` when first seen: the root the
    /// runtime gave the container, before anything in it could chroot.
    root: Option<RootId>,
    /// The addresses the container last showed, with the namespace they
    /// were read in: what a failed read in the same namespace keeps. Kept
    /// across a runtime's update of the same process, as `start_time` is.
    addresses: Option<ReadAddresses>,
}

#[derive(Default)]
struct Work {
    events: Vec<SourceEvent>,
    /// Link and namespace-id events, in the kernel's order.
    links: Vec<LinkSignal>,
    gap: bool,
    rescan: bool,
}

pub struct Reconciler {
    shared: Arc<Shared>,
    proc: Proc,
    mount: Cgroup2Mount,
    netlink: Netlink,
    records: BTreeMap<String, Record>,
    links: LinkTable,
    /// Containers by the namespace id their last resolution found
    /// (`None`: their namespace had none), so that a link event recomputes
    /// the containers it concerns and no others.
    keys_by_nsid: HashMap<Option<i32>, BTreeSet<String>>,
    /// Namespace ids no known container had when a link event named them,
    /// already looked for among the containers whose namespace had no id:
    /// each is looked for once, not at every event about its links. An id
    /// is forgotten when the kernel frees it (it may then be given to
    /// another namespace) and at every full rescan.
    searched_nsids: HashSet<i32>,
    /// The addresses read in the batch being processed, by namespace
    /// inode, with the namespace held open (so no other namespace is given
    /// its inode meanwhile): containers sharing a namespace (a pod's) cost
    /// one read. Only reads that succeeded: a failed one is the process's,
    /// and another process of the namespace may read it.
    address_reads: HashMap<u64, (File, Vec<IpAddr>)>,
    /// Containers whose last address read failed (they show the addresses
    /// of the read before, or none), with the error.
    unread: BTreeMap<String, String>,
    own_netns: Option<u64>,
}

impl Reconciler {
    pub fn new(shared: Arc<Shared>, proc: Proc, mount: Cgroup2Mount, netlink: Netlink) -> Self {
        let own_netns = proc.own_netns_inode();
        Reconciler {
            shared,
            proc,
            mount,
            netlink,
            records: BTreeMap::new(),
            links: LinkTable::default(),
            keys_by_nsid: HashMap::new(),
            searched_nsids: HashSet::new(),
            address_reads: HashMap::new(),
            unread: BTreeMap::new(),
            own_netns,
        }
    }

    /// Runs until both channels close.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        mut link_signals: mpsc::Receiver<LinkSignal>,
        rescan: Duration,
    ) {
        let period = rescan.max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut events_open, mut links_open) = (true, true);
        self.shared.status.register(RTNETLINK_SOURCE);
        self.shared.status.register(ADDRESSES_SOURCE);
        // The full scan at start, before any event is taken: an event
        // resolved first (a runtime's listing queued before this task ran)
        // would meet a link table not yet read, and its container would be
        // published without its veths.
        self.process(Work {
            rescan: true,
            ..Work::default()
        })
        .await;
        loop {
            let mut work = Work::default();
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => work.events.push(ev),
                    None => events_open = false,
                },
                sig = link_signals.recv(), if links_open => match sig {
                    Some(sig) => work.add_link(sig),
                    None => links_open = false,
                },
                _ = tick.tick() => work.rescan = true,
            }
            if !events_open && !links_open {
                return;
            }
            while work.events.len() < MAX_BATCH {
                match events.try_recv() {
                    Ok(ev) => work.events.push(ev),
                    Err(_) => break,
                }
            }
            while let Ok(sig) = link_signals.try_recv() {
                work.add_link(sig);
            }
            self.process(work).await;
        }
    }

    async fn process(&mut self, work: Work) {
        let started = Instant::now();
        let mut dirty = BTreeSet::new();
        let listed: BTreeSet<String> = work
            .events
            .iter()
            .filter_map(|ev| match ev {
                SourceEvent::Snapshot { source, .. } => Some(source.clone()),
                _ => None,
            })
            .collect();
        for ev in work.events {
            self.absorb(ev, &mut dirty);
        }
        let everything = work.rescan || work.gap;
        let keys: Vec<String> = if everything {
            // The dump is newer than the link events of this batch.
            self.reload_links().await;
            self.searched_nsids.clear();
            let inv = self.shared.read();
            self.records
                .keys()
                .chain(inv.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            let mut keys = self.take_link_events(work.links);
            keys.extend(dirty.iter().cloned());
            keys.into_iter().collect()
        };
        let mut resolved = Vec::with_capacity(keys.len());
        self.address_reads.clear();
        for k in keys {
            // After a link change alone, containers nothing else happened to
            // keep their /proc facts and only get their veths and addresses
            // recomputed.
            let full = everything || dirty.contains(&k);
            let value = self.resolve(&k, full).await;
            resolved.push((k, value));
        }
        self.address_reads.clear();
        self.publish_address_status();
        {
            let mut roots = self.shared.roots.write().unwrap_or_else(|p| p.into_inner());
            for (k, value) in &resolved {
                match (value, self.records.get(k).and_then(|r| r.root)) {
                    (Some(_), Some(root)) => {
                        roots.insert(k.clone(), root);
                    }
                    _ => {
                        roots.remove(k);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        let generation = {
            let mut inv = self
                .shared
                .inventory
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (k, value) in resolved {
                if let Some(change) = inv.set(&k, value) {
                    changes.push(change);
                }
            }
            inv.generation()
        };
        if !changes.is_empty() {
            self.shared.generation.send_replace(generation);
        }
        if !listed.is_empty() {
            self.shared.listed.send_if_modified(|known| {
                let before = known.len();
                known.extend(listed);
                known.len() != before
            });
        }
        for change in &changes {
            match &change.kind {
                ChangeKind::Added { container: c } => tracing::info!(
                    generation = change.generation,
                    container = %c.key(), name = ?c.name, runtime = %c.runtime, pid = c.pids.first().copied().unwrap_or(0),
                    cgroup = %c.cgroup_path, cgroup_id = c.cgroup_id, netns = c.netns_inode,
                    veths = ?c.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>(), host_network = c.host_network,
                    "container added"
                ),
                ChangeKind::Updated { container: c } => tracing::debug!(
                    generation = change.generation, container = %c.key(), cgroup_id = c.cgroup_id,
                    veths = ?c.host_veths.iter().map(|v| v.ifindex).collect::<Vec<_>>(), pids = c.pids.len(),
                    "container updated"
                ),
                ChangeKind::Removed {
                    namespace,
                    id,
                    cgroup_id,
                } => tracing::info!(
                    generation = change.generation, container = %key(namespace, id), cgroup_id, "container removed"
                ),
            }
        }
        tracing::trace!(elapsed = ?started.elapsed(), changes = changes.len(), everything, "batch done");
    }

    fn absorb(&mut self, ev: SourceEvent, dirty: &mut BTreeSet<String>) {
        match ev {
            SourceEvent::Snapshot { source, containers } => {
                let fresh: BTreeMap<String, RuntimeContainer> =
                    containers.into_iter().map(|c| (c.key(), c)).collect();
                let stale: Vec<String> = self
                    .records
                    .iter()
                    .filter(|(k, r)| r.source == source && !fresh.contains_key(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    self.remove_record(&k);
                    dirty.insert(k);
                }
                for (k, rc) in fresh {
                    self.upsert(source.clone(), rc);
                    dirty.insert(k);
                }
            }
            SourceEvent::Upsert { source, container } => {
                dirty.insert(container.key());
                self.upsert(source, container);
            }
            SourceEvent::Remove {
                source,
                namespace,
                id,
            } => {
                let k = key(&namespace, &id);
                if self.records.get(&k).is_some_and(|r| r.source == source) {
                    self.remove_record(&k);
                }
                dirty.insert(k);
            }
            SourceEvent::Refresh { namespace, id } => {
                dirty.insert(key(&namespace, &id));
            }
        }
    }

    fn upsert(&mut self, source: String, mut rc: RuntimeContainer) {
        let k = rc.key();
        let dropped = source::bound_labels(&mut rc.labels);
        // Warned once per change, not on every re-list.
        if !dropped.is_empty()
            && self
                .records
                .get(&k)
                .is_none_or(|r| r.rc.labels != rc.labels)
        {
            tracing::warn!(
                container = %k,
                labels = ?dropped,
                max_label_bytes = source::MAX_LABEL_BYTES,
                "labels over the size limit are left out of the inventory; no policy can select on them"
            );
        }
        let (start_time, root, addresses) = self
            .records
            .get(&k)
            .filter(|r| r.rc.pid == rc.pid)
            .map_or((None, None, None), |r| {
                (r.start_time, r.root, r.addresses.clone())
            });
        self.remove_record(&k);
        self.records.insert(
            k,
            Record {
                source,
                rc,
                start_time,
                facts: None,
                root,
                addresses,
            },
        );
    }

    /// Removes a record and its place in the namespace index.
    fn remove_record(&mut self, k: &str) {
        self.set_facts(k, None);
        self.records.remove(k);
        self.unread.remove(k);
    }

    /// Says in the status whether every container's addresses are read.
    fn publish_address_status(&self) {
        match self.unread.iter().next() {
            None => self.shared.status.connected(ADDRESSES_SOURCE),
            Some((k, e)) => self.shared.status.failed(
                ADDRESSES_SOURCE,
                format!(
                    "the addresses of {} container(s) could not be read from /proc (they show \
                     the addresses read before in the same namespace, or none), e.g. {k}: {e}",
                    self.unread.len()
                ),
            ),
        }
    }

    /// Records what a resolution found (`None`: nothing to reuse), keeping
    /// the namespace index in step.
    fn set_facts(&mut self, k: &str, facts: Option<ProcFacts>) {
        let Some(record) = self.records.get_mut(k) else {
            return;
        };
        let old = record.facts.as_ref().map(|f| f.nsid);
        let new = facts.as_ref().map(|f| f.nsid);
        record.facts = facts;
        if old == new {
            return;
        }
        if let Some(old) = old {
            if let Some(keys) = self.keys_by_nsid.get_mut(&old) {
                keys.remove(k);
                if keys.is_empty() {
                    self.keys_by_nsid.remove(&old);
                }
            }
        }
        if let Some(new) = new {
            self.keys_by_nsid
                .entry(new)
                .or_default()
                .insert(k.to_string());
        }
    }

    /// A namespace lost its id (it is gone): the containers whose facts
    /// name that id keep no claim through it, as the id may soon name
    /// another namespace. Returns them: their next resolution takes the id
    /// again from their process's namespace, if it is still there.
    fn forget_nsid(&mut self, nsid: i32) -> Vec<String> {
        let keys: Vec<String> = self
            .keys_by_nsid
            .get(&Some(nsid))
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for k in &keys {
            let facts = self.records.get(k).and_then(|r| r.facts.clone());
            if let Some(mut facts) = facts {
                facts.nsid = None;
                self.set_facts(k, Some(facts));
            }
        }
        keys
    }

    /// Applies link events to the table; the containers whose veths they
    /// may change: those in the namespaces they name, and, when one names
    /// a namespace no known container is in for the first time, those
    /// whose namespace had no id (it may be theirs, just given one).
    fn take_link_events(&mut self, signals: Vec<LinkSignal>) -> BTreeSet<String> {
        let mut nsids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for signal in signals {
            match signal {
                LinkSignal::Link(link) => nsids.extend(self.links.upsert(link)),
                LinkSignal::Removed { ifindex } => nsids.extend(self.links.remove(ifindex)),
                LinkSignal::Nsid {
                    nsid,
                    removed: true,
                } => {
                    self.searched_nsids.remove(&nsid);
                    keys.extend(self.forget_nsid(nsid));
                }
                LinkSignal::Nsid {
                    nsid,
                    removed: false,
                } => {
                    nsids.insert(nsid);
                }
                // Taken as Work::gap, never queued here.
                LinkSignal::Gap => {}
            }
        }
        let mut unowned = false;
        for nsid in nsids {
            match self.keys_by_nsid.get(&Some(nsid)) {
                Some(owners) => keys.extend(owners.iter().cloned()),
                None => unowned |= self.searched_nsids.insert(nsid),
            }
        }
        if unowned {
            keys.extend(self.keys_by_nsid.get(&None).into_iter().flatten().cloned());
        }
        keys
    }

    async fn reload_links(&mut self) {
        match self.netlink.links().await {
            Ok(links) => {
                self.links = LinkTable::from_links(links);
                self.shared.status.connected(RTNETLINK_SOURCE);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the host's links; keeping the previous table");
                self.shared.status.failed(RTNETLINK_SOURCE, &e);
            }
        }
    }

    /// Follows the chain for one container; `None` if it is not running.
    /// With `full` false and facts from an earlier resolution, only the
    /// namespace id, the veths and the addresses are looked at again.
    ///
    /// Addresses are read at each resolution, so a link event for the
    /// container's namespace (a veth into it made, removed, or its carrier
    /// changed as the container's side comes up or goes down) and every
    /// periodic rescan read them anew; an address added with no change to
    /// the host's side of the veths (a runtime configuring the container
    /// later, IPv6 autoconfiguration) is seen at the next of those, and
    /// until then the veth backstop drops frames from it (fail closed).
    async fn resolve(&mut self, k: &str, full: bool) -> Option<Container> {
        let container = self.resolve_inner(k, full).await;
        if container.is_none() {
            // Nothing is reused from a resolution that found nothing.
            self.set_facts(k, None);
            self.unread.remove(k);
            if let Some(r) = self.records.get_mut(k) {
                r.addresses = None;
            }
        }
        container
    }

    async fn resolve_inner(&mut self, k: &str, full: bool) -> Option<Container> {
        let record = self.records.get(k)?;
        let pid = record.rc.pid;
        if pid == 0 {
            return None;
        }
        let start = self.proc.start_time(pid)?;
        if record.start_time.is_some_and(|known| known != start) {
            return None;
        }
        if !full {
            if let Some(mut facts) = record.facts.clone() {
                let rc = record.rc.clone();
                // Still the namespace the facts name, held open while read.
                let netns = self
                    .proc
                    .open_netns(pid)
                    .filter(|(_, ino)| Some(*ino) == facts.netns_inode);
                if facts.nsid.is_none() {
                    if let Some((file, ino)) = &netns {
                        facts.nsid = self.nsid(k, *ino, file).await;
                    }
                }
                self.read_addresses(k, &mut facts, pid, start, netns.as_ref());
                drop(netns);
                self.set_facts(k, Some(facts.clone()));
                return Some(build(&rc, &facts, &self.links, self.own_netns));
            }
        }
        let rc = record.rc.clone();
        let known_root = record.root.filter(|_| record.start_time == Some(start));
        let known_netns = record
            .facts
            .as_ref()
            .filter(|_| record.start_time == Some(start))
            .map(|f| (f.netns_inode, f.nsid));

        let cgroup_path = self.proc.cgroup_path(pid);
        let dir = cgroup_path
            .as_deref()
            .filter(|p| *p != "/")
            .and_then(|p| self.mount.dir_of(p));
        let cgroup_id = dir
            .as_deref()
            .and_then(|d| proto::cgroups::cgroup_id(d).ok());
        let pids = dir
            .as_deref()
            .map(|d| proto::cgroups::procs_below(d, MAX_PIDS))
            .unwrap_or_default();
        // Held open until the addresses are read.
        let netns = self.proc.open_netns(pid);
        let (netns_inode, nsid) = match &netns {
            Some((file, ino)) => (Some(*ino), self.nsid(k, *ino, file).await),
            // The same process, no thread of it in a namespace: its init
            // has ended and its runtime has not reaped it. It keeps the
            // namespace it was in (and with it its veths) until the runtime
            // says it is gone or the namespace loses its id, so a rescan
            // in between does not unmap its veths.
            None => known_netns.unwrap_or((None, None)),
        };
        let mut facts = ProcFacts {
            cgroup_path,
            cgroup_id,
            pids,
            netns_inode,
            nsid,
            addresses: Vec::new(),
        };
        self.read_addresses(k, &mut facts, pid, start, netns.as_ref());
        drop(netns);
        let root = known_root.or_else(|| exe::root_of(self.proc.root(), pid));
        // What was read belongs to the announced process only if it is
        // still the same process now.
        if self.proc.start_time(pid) != Some(start) {
            return None;
        }
        let container = build(&rc, &facts, &self.links, self.own_netns);
        if let Some(r) = self.records.get_mut(k) {
            r.start_time = Some(start);
            r.root = root;
        }
        self.set_facts(k, Some(facts));
        Some(container)
    }

    /// Reads the addresses of the namespace `facts` names into
    /// `facts.addresses`, through process `pid` (started at `start`), once
    /// per namespace and batch; `netns`: that namespace, opened as the
    /// process's, held while reading (`None`: the process is no longer in
    /// it, or gone). Nothing is read for a namespace no host veth leads
    /// into (the host's own among them): no frame of it reaches a veth.
    ///
    /// What is read belongs to the container only if, after the read, the
    /// process is still the one that started at `start` and still in that
    /// namespace. When it cannot be read, the container keeps what the
    /// last read in the same namespace found, or none: an address is never
    /// made up, and the failure is logged and shown in the status.
    fn read_addresses(
        &mut self,
        k: &str,
        facts: &mut ProcFacts,
        pid: u32,
        start: u64,
        netns: Option<&(File, u64)>,
    ) {
        let (Some(netns_inode), Some(nsid)) = (facts.netns_inode, facts.nsid) else {
            self.set_read_addresses(k, facts, None);
            return;
        };
        if !self.links.has_veths_into(nsid) {
            self.set_read_addresses(k, facts, None);
            return;
        }
        let read = match netns {
            Some((_, ino)) if *ino != netns_inode => Err(format!(
                "process {pid} is in namespace {ino}, not {netns_inode}"
            )),
            None => Err(format!(
                "process {pid}'s network namespace cannot be opened (it exited, or left \
                 namespace {netns_inode})"
            )),
            Some((file, ino)) => match self.address_reads.get(ino) {
                Some((_, addresses)) => Ok(addresses.clone()),
                None => {
                    let read = self.proc.addresses(pid).and_then(|addresses| {
                        let same_process = self.proc.start_time(pid) == Some(start);
                        let same_netns = self.proc.netns_inode(pid) == Some(*ino);
                        if same_process && same_netns {
                            Ok(addresses)
                        } else {
                            Err(format!(
                                "process {pid} exited or left namespace {ino} while its \
                                 addresses were read"
                            ))
                        }
                    });
                    if let (Ok(addresses), Ok(held)) = (&read, file.try_clone()) {
                        self.address_reads.insert(*ino, (held, addresses.clone()));
                    }
                    read
                }
            },
        };
        match &read {
            Ok(_) => {
                self.unread.remove(k);
            }
            Err(e) => {
                tracing::warn!(
                    container = %k, netns = netns_inode, error = %e,
                    "cannot read the container's addresses; it keeps those read before in its \
                     namespace, if any, and the veth backstop drops frames from any other"
                );
                self.unread.insert(k.to_string(), e.clone());
            }
        }
        let last = self.records.get(k).and_then(|r| r.addresses.as_ref());
        let addresses = addresses_after(read, last, netns_inode);
        self.set_read_addresses(
            k,
            facts,
            Some(ReadAddresses {
                netns_inode,
                addresses,
            }),
        );
    }

    /// Puts what a read found (`None`: nothing to read) in `facts` and in
    /// the record, for the next read to keep if it fails.
    fn set_read_addresses(&mut self, k: &str, facts: &mut ProcFacts, read: Option<ReadAddresses>) {
        if read.is_none() {
            self.unread.remove(k);
        }
        facts.addresses = read
            .as_ref()
            .map(|r| r.addresses.clone())
            .unwrap_or_default();
        if let Some(r) = self.records.get_mut(k) {
            r.addresses = read;
        }
    }

    /// The host's id for the namespace `ino` (open as `file`). Asked anew
    /// at every full resolution, never cached by inode: a freed namespace's
    /// inode number is soon given to a new one, with another id.
    async fn nsid(&self, k: &str, ino: u64, file: &std::fs::File) -> Option<i32> {
        if Some(ino) == self.own_netns {
            return None;
        }
        match self.netlink.nsid_of(file).await {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(container = %k, error = %e, "no namespace id");
                None
            }
        }
    }
}

impl Work {
    fn add_link(&mut self, sig: LinkSignal) {
        match sig {
            LinkSignal::Gap => self.gap = true,
            other => self.links.push(other),
        }
    }
}
