//! When to converge: the policy file changed, SIGHUP, the inventory
//! changed, or it is time to re-read the loader's state. Each feed sends
//! the engine a command; none touches its state.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use proto::{
    resolver::{ChangeKind, Container as ResolverContainer, WatchReply, MAX_WATCH_WAIT_MS},
    transport,
};

use super::engine::{Feed, Handle};
use crate::{
    inventory::{Container, Inventory},
    policy,
};

/// The longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Retries while something fails: 0.5 s doubling to [`RETRY_MAX`], never
/// giving up.
pub(super) const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(500))
    .with_max_delay(RETRY_MAX)
    .without_max_times();

pub(super) fn next_delay(delays: &mut ExponentialBackoff) -> Duration {
    delays.next().unwrap_or(RETRY_MAX)
}

/// What identifies a file version cheaply. Polled rather than inotify'd:
/// Kubernetes ConfigMaps and editors replace files by rename or symlink
/// swap, which a stat of the path follows and a watch on the old inode
/// misses.
fn file_version(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Which file version to apply: one that changed and then stayed the same
/// for a whole interval. A write still under way (an editor or `cat >`
/// that truncates and then writes, `rsync --inplace`) is not read half
/// done: an empty or cut-short file is a valid policy that selects fewer
/// containers.
///
/// The version there when watching starts is not taken as applied: the
/// start's own load may have read it while it was changing. Its first
/// settled check reads it, which costs a digest when it is the loaded one.
#[derive(Debug)]
struct Settled<V> {
    applied: Option<V>,
    seen: V,
}

impl<V: PartialEq + Clone> Settled<V> {
    fn new(version: V) -> Self {
        Settled {
            applied: None,
            seen: version,
        }
    }

    /// Takes one check's version; whether to apply it now.
    fn check(&mut self, version: V) -> bool {
        let settled = version == self.seen && self.applied.as_ref() != Some(&version);
        self.seen = version;
        settled
    }

    /// The version last checked was read: it is not applied again. One that
    /// could not be read is tried again at the next check.
    fn read(&mut self) {
        self.applied = Some(self.seen.clone());
    }

    /// The version read was not applied (the loader refused it, or it
    /// changed while read): tried again at the next check.
    fn not_applied(&mut self) {
        self.applied = None;
    }
}

/// Reloads when the policy file's content changed and then settled.
pub async fn watch_policy_file(engine: Handle, path: PathBuf, every: Duration) {
    let mut versions = Settled::new(file_version(&path));
    loop {
        tokio::time::sleep(every).await;
        let version = file_version(&path);
        if !versions.check(version) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        // An edit begun between the check and the read: the bytes may be
        // half written. Taken up again once it settles.
        if file_version(&path) != version {
            continue;
        }
        versions.read();
        let digest = policy::fnv1a(&bytes);
        let view = engine.view();
        let loaded = view.loaded.as_ref().map(|l| l.policies.digest);
        if loaded == Some(digest) || view.rejected_digest == Some(digest) {
            continue;
        }
        match engine.reload(false, Some(digest)).await {
            Ok(report) => tracing::info!(ops = report.ops.len(), "policy file changed: reloaded"),
            Err(err) => {
                // A file policyd refused is not read again (its digest is
                // the rejected one); anything else is tried again.
                versions.not_applied();
                tracing::error!(error = %err, "policy file changed but was not applied");
            }
        }
    }
}

pub async fn on_sighup(engine: Handle) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match engine.reload(false, None).await {
            Ok(report) => tracing::info!(ops = report.ops.len(), "SIGHUP: reloaded"),
            Err(err) => tracing::error!(error = %err, "SIGHUP: policy not applied"),
        }
    }
}

/// Re-reads the loader's state now and then, and sooner while something
/// is failing, so a restarted loader or a lost diff is repaired.
pub async fn resync(engine: Handle, every: Duration) {
    let mut delays = RETRY.build();
    loop {
        // The engine's own failures (its loader connection is its own).
        let healthy = engine.view().last_error.is_none();
        let wait = if healthy {
            delays = RETRY.build();
            every
        } else {
            next_delay(&mut delays)
        };
        tokio::time::sleep(wait).await;
        engine.tell(Feed::Resync { healthy }).await;
    }
}

/// Ends the hold on convergence if no inventory arrives in time: the
/// rules are applied, the loader's cgroup entries carried over as they are.
pub async fn inventory_grace(engine: Handle, grace: Duration) {
    tokio::time::sleep(grace).await;
    engine.tell(Feed::GraceOver).await;
}

async fn publish(engine: &Handle, containers: &BTreeMap<String, ResolverContainer>) {
    let containers = containers.values().map(Container::from).collect();
    engine
        .tell(Feed::SetInventory(Inventory { containers }))
        .await;
}

/// Follows the resolver: a snapshot, then its changes (long poll), and a
/// fresh snapshot whenever it restarted or lost track.
pub async fn follow_resolver(engine: Handle, path: PathBuf) {
    let mut delays = RETRY.build();
    let mut reported: Option<String> = None;
    loop {
        let error = follow_once(&engine, &path, &mut delays).await;
        engine.tell(Feed::InventoryUnavailable(error.clone())).await;
        // Say it once per distinct failure; retries are quiet.
        if reported.as_ref() != Some(&error) {
            tracing::warn!(error = %error, "resolver unavailable; retrying with backoff, keeping the last inventory");
            reported = Some(error);
        }
        tokio::time::sleep(next_delay(&mut delays)).await;
    }
}

async fn follow_once(engine: &Handle, path: &Path, delays: &mut ExponentialBackoff) -> String {
    let client = match super::links::resolver_client(path).await {
        Ok(client) => client,
        Err(e) => return e.to_string(),
    };
    let snapshot = match client.list(transport::context_with_deadline(30)).await {
        Ok(s) => s,
        Err(e) => return format!("resolver list failed: {e}"),
    };
    *delays = RETRY.build();
    if let Some(unlisted) = unlisted(&snapshot) {
        return unlisted;
    }
    tracing::info!(
        containers = snapshot.containers.len(),
        generation = snapshot.generation,
        "resolver inventory"
    );
    let mut instance = snapshot.instance;
    let mut generation = snapshot.generation;
    let mut containers: BTreeMap<String, ResolverContainer> = snapshot
        .containers
        .into_iter()
        .map(|c| (c.key(), c))
        .collect();
    publish(engine, &containers).await;
    let deadline = u64::from(MAX_WATCH_WAIT_MS / 1000) + 15;
    loop {
        let reply = match client
            .watch(
                transport::context_with_deadline(deadline),
                generation,
                MAX_WATCH_WAIT_MS,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return format!("resolver watch failed: {e}"),
        };
        // The keys a list of changes names; `None` for a resync.
        let changed: Option<BTreeSet<String>> = match &reply {
            WatchReply::Changes { changes, .. } => {
                if reply.instance() != instance {
                    return "resolver restarted".into();
                }
                Some(changes.iter().map(|c| changed_key(&c.kind)).collect())
            }
            WatchReply::Resync { reason, snapshot } => {
                if let Some(unlisted) = unlisted(snapshot) {
                    return unlisted;
                }
                tracing::info!(reason, "resolver resync");
                instance = reply.instance();
                None
            }
        };
        generation = reply.apply_to(&mut containers);
        match changed {
            None => publish(engine, &containers).await,
            // Only the containers changed are converted and sent: the cost
            // of a change does not grow with the host's containers.
            Some(keys) if !keys.is_empty() => {
                let changes = keys
                    .into_iter()
                    .map(|key| {
                        let container = containers.get(&key).map(Container::from);
                        (key, container)
                    })
                    .collect();
                engine.tell(Feed::ContainersChanged(changes)).await;
            }
            Some(_) => {}
        }
    }
}

/// Why a snapshot is not the inventory, if it is not: a runtime whose
/// containers it does not hold yet (a resolver started while containerd did
/// not answer). Taken as the containers' list, it would have every running
/// container's entry removed (unknown, denied) and its veth left without an
/// owner (frames of no socket passing); until the runtime is listed the
/// last inventory stands, or, after a start, the loader's entries.
fn unlisted(snapshot: &proto::resolver::Snapshot) -> Option<String> {
    (!snapshot.unlisted_sources.is_empty()).then(|| {
        format!(
            "the resolver has not listed the containers of {} yet (the runtime does not answer)",
            snapshot.unlisted_sources.join(", ")
        )
    })
}

/// The inventory key a change is about.
fn changed_key(kind: &ChangeKind) -> String {
    match kind {
        ChangeKind::Added { container } | ChangeKind::Updated { container } => container.key(),
        ChangeKind::Removed { namespace, id, .. } => format!("{namespace}/{id}"),
    }
}

/// Reads an inventory file: `{"containers": [...]}` or a bare list.
pub fn read_inventory_file(path: &Path) -> Result<Inventory, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str::<Inventory>(&text)
        .or_else(|_| {
            serde_json::from_str::<Vec<Container>>(&text).map(|containers| Inventory { containers })
        })
        .map_err(|e| format!("{}: not an inventory: {e}", path.display()))
}

/// Follows an inventory file (tests, hosts without the resolver).
pub async fn watch_inventory_file(engine: Handle, path: PathBuf, every: Duration) {
    let mut last = None;
    loop {
        let now = file_version(&path);
        if now != last {
            last = now;
            let feed = match read_inventory_file(&path) {
                Ok(inventory) => Feed::SetInventory(inventory),
                Err(err) => {
                    tracing::warn!(error = %err, "inventory file not usable");
                    Feed::InventoryUnavailable(err)
                }
            };
            engine.tell(feed).await;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Settled;

    /// A version is applied once it stayed the same for a whole interval,
    /// and only once: a truncate caught between two checks is never read.
    #[test]
    fn a_file_version_is_applied_once_it_settled() {
        let mut versions = Settled::new("v0");
        assert!(
            versions.check("v0"),
            "the version there at the start is read once (the start's load may have read it half written)"
        );
        versions.read();
        assert!(!versions.check("v0"));
        assert!(!versions.check("v1"), "changed: not yet");
        assert!(versions.check("v1"), "settled");
        versions.read();
        assert!(!versions.check("v1"), "unchanged");
        assert!(!versions.check("truncated"), "changed: not yet");
        assert!(!versions.check("v2"), "changed again: not yet");
        assert!(versions.check("v2"), "settled");
        versions.read();
        assert!(!versions.check("v2"), "already applied");
        assert!(!versions.check("v3"));
        assert!(
            !versions.check("v2"),
            "back to the applied one: nothing to do"
        );
        assert!(!versions.check("v2"));
        // A settled version that could not be read is tried again.
        assert!(!versions.check("v4"));
        assert!(versions.check("v4"), "settled");
        assert!(versions.check("v4"), "not read: again");
        versions.read();
        assert!(!versions.check("v4"));
        // Read, but not applied (the loader refused it): tried again.
        versions.not_applied();
        assert!(versions.check("v4"), "not applied: again");
    }
}
