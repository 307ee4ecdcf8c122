//! The container inventory policyd compiles against, and selector matching.
//!
//! This is policyd's own input type; the resolver's wire types convert into
//! it, so the compiler does not depend on how containers are discovered.

use std::{collections::BTreeMap, net::IpAddr};

use proto::resolver::{ExeFile, ExeLookup};
use serde::{Deserialize, Serialize};

use crate::policy::{PolicySet, Selector};

/// What an `exe` path names in one container, as the resolver found it, or
/// why it names nothing usable there.
pub type Resolution = Result<ExeFile, String>;

/// One running container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Container {
    /// Runtime container id (full hex for Docker).
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Image reference as the runtime reports it.
    pub image: String,
    /// Runtime namespace: `moby` for Docker, `k8s.io` for Kubernetes.
    pub namespace: String,
    /// `docker` or `containerd`; informational.
    pub runtime: String,
    /// cgroup v2 id of the container's cgroup; `None` until the resolver has
    /// mapped it (the kernel then applies `unknown_container`).
    pub cgroup_id: Option<u64>,
    /// The cgroup id the resolver found, also while the container's name
    /// and labels are not known (`cgroup_id` is `None` then): the owner of
    /// its veths, so that frames there are judged under the unknown-container
    /// verdict (a cgroup with no entry) instead of passing as on a veth of
    /// no container.
    pub resolved_cgroup_id: Option<u64>,
    /// cgroup v2 path relative to the cgroup2 mount, as in
    /// `/proc/<pid>/cgroup` (`/contain.slice/docker-<id>.scope`), when known:
    /// tells whether the loader's programs, attached to parent cgroups, see
    /// this container.
    pub cgroup_path: Option<String>,
    /// Shares the host's network namespace (so also the host's loopback).
    pub host_network: bool,
    /// Host-side ifindexes of the veths whose peers are in the container's
    /// network namespace; containers sharing a namespace list the same ones.
    pub host_veths: Vec<u32>,
    /// The addresses of the container's network namespace, loopback ones
    /// aside: the only sources its frames may carry out of its veths.
    pub addresses: Vec<IpAddr>,
    /// The runtime mounts the container's root filesystem read-only
    /// (`None`: it did not say).
    pub readonly_rootfs: Option<bool>,
    /// The files the `exe` paths of the selecting policy name in this
    /// container, by path: filled by the daemon from the resolver (an
    /// inventory file may list them; a path missing here was not resolved).
    pub exes: BTreeMap<String, Resolution>,
}

impl Container {
    /// The runtime says the container joined another container's network
    /// namespace: a Kubernetes container joins its pod's sandbox, as
    /// containerd's CRI and cri-dockerd label it. Docker's
    /// `--network container:X` leaves no trace in the inventory.
    pub fn joins_another_netns(&self) -> bool {
        ["io.cri-containerd.kind", "io.kubernetes.docker.type"]
            .iter()
            .any(|key| {
                self.labels
                    .get(*key)
                    .is_some_and(|kind| kind == "container")
            })
    }
}

/// A name as the daemon shows and logs it: its control characters escaped
/// (`\n`, `\u{1b}`). A name can come from an image (plain `ctr`), and a
/// newline in it would start a forged line in the journal that `policyd
/// suggest` reads events from, an escape sequence would rewrite `status`'s
/// table on a terminal. Runtimes that validate names never give one.
pub fn printable(name: &str) -> String {
    let mut shown = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

impl From<&proto::resolver::Container> for Container {
    fn from(c: &proto::resolver::Container) -> Self {
        Container {
            id: c.id.clone(),
            name: printable(&c.name),
            labels: c.labels.clone(),
            image: c.image.clone(),
            namespace: c.namespace.clone(),
            runtime: c.runtime.as_str().to_string(),
            // The resolver says 0 for "not known yet". A container whose name
            // and labels are not known yet must not be matched (or found
            // unselected and left alone): without a cgroup id it keeps the
            // kernel's unknown-container verdict until they are.
            cgroup_id: (c.cgroup_id != 0 && c.metadata_complete).then_some(c.cgroup_id),
            resolved_cgroup_id: (c.cgroup_id != 0).then_some(c.cgroup_id),
            cgroup_path: (!c.cgroup_path.is_empty()).then(|| c.cgroup_path.clone()),
            host_network: c.host_network,
            host_veths: c.host_veths.iter().map(|v| v.ifindex).collect(),
            addresses: c.addresses.clone(),
            readonly_rootfs: c.readonly_rootfs,
            exes: BTreeMap::new(),
        }
    }
}

/// The exe paths to resolve in each container: those of the policy that
/// selects it, for containers mapped to a cgroup (others get no kernel
/// entries anyway), by container index; `true` when some entry pins the
/// path's content (the resolver must hash it).
pub fn wanted_exes(
    policies: &PolicySet,
    inventory: &Inventory,
) -> BTreeMap<usize, BTreeMap<String, bool>> {
    let mut wanted: BTreeMap<usize, BTreeMap<String, bool>> = BTreeMap::new();
    for (index, container) in inventory.containers.iter().enumerate() {
        if container.cgroup_id.is_none() {
            continue;
        }
        let Some(policy) = select(policies, container).policy else {
            continue;
        };
        for process in &policies.policies[policy].processes {
            for path in process.exe_paths() {
                let hash = wanted
                    .entry(index)
                    .or_default()
                    .entry(path.to_string())
                    .or_default();
                *hash |= process.sha256.is_some();
            }
        }
    }
    wanted
}

/// What to ask the resolver so every wanted path of `inventory` is known:
/// the paths not resolved yet (all of them with `again`), and those
/// resolved without the hash a pin now needs. Each lookup comes with the
/// index of its container.
pub fn exe_lookups(
    wanted: &BTreeMap<usize, BTreeMap<String, bool>>,
    inventory: &Inventory,
    again: bool,
) -> Vec<(usize, ExeLookup)> {
    let mut lookups = Vec::new();
    for (&index, paths) in wanted {
        let container = &inventory.containers[index];
        for (path, &sha256) in paths {
            let fresh_enough = match container.exes.get(path) {
                None => false,
                Some(Ok(file)) => !sha256 || file.sha256.is_some(),
                Some(Err(_)) => true,
            };
            if again || !fresh_enough {
                lookups.push((
                    index,
                    ExeLookup {
                        namespace: container.namespace.clone(),
                        container_id: container.id.clone(),
                        path: path.clone(),
                        sha256,
                    },
                ));
            }
        }
    }
    lookups
}

/// Forgets the resolutions of paths no longer wanted, so an inventory
/// compares equal whatever was resolved for an earlier policy.
pub fn keep_wanted_exes(
    inventory: &mut Inventory,
    wanted: &BTreeMap<usize, BTreeMap<String, bool>>,
) {
    let none = BTreeMap::new();
    for (index, container) in inventory.containers.iter_mut().enumerate() {
        let paths = wanted.get(&index).unwrap_or(&none);
        container.exes.retain(|path, _| paths.contains_key(path));
    }
}

/// Copies into `fresh` the resolutions `old` holds for the same running
/// containers (same id and cgroup id: a restarted container has a new
/// cgroup, and a new root filesystem mount whose files are other files).
pub fn carry_exes<'a>(old: impl IntoIterator<Item = &'a Container>, fresh: &mut Inventory) {
    let known: BTreeMap<(&str, u64), &BTreeMap<String, Resolution>> = old
        .into_iter()
        .filter(|c| !c.exes.is_empty())
        .filter_map(|c| Some(((c.id.as_str(), c.cgroup_id?), &c.exes)))
        .collect();
    for c in fresh.containers.iter_mut().filter(|c| c.exes.is_empty()) {
        let Some(cgroup_id) = c.cgroup_id else {
            continue;
        };
        if let Some(exes) = known.get(&(c.id.as_str(), cgroup_id)) {
            c.exes = (*exes).clone();
        }
    }
}

/// Every container the resolver knows, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub containers: Vec<Container>,
}

/// Whose policy judges the frames arriving on one host-side veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethOwner {
    /// Index into [`Inventory::containers`].
    pub owner: usize,
    pub cgroup_id: u64,
    /// The other containers behind the same veth (sharing the owner's
    /// network namespace), in inventory order.
    pub sharers: Vec<usize>,
}

impl Inventory {
    /// The owner of every host-side veth some container with a cgroup id
    /// lists. A veth has one owner in the kernel, so when containers share
    /// a namespace the one that did not join another's wins (when the
    /// runtime says so), then the lowest container id: the same choice
    /// whatever order the inventory comes in.
    pub fn veth_owners(&self) -> BTreeMap<u32, VethOwner> {
        let mut behind: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, container) in self.containers.iter().enumerate() {
            for &ifindex in &container.host_veths {
                let indexes = behind.entry(ifindex).or_default();
                if indexes.last() != Some(&index) {
                    indexes.push(index);
                }
            }
        }
        behind
            .into_iter()
            .filter_map(|(ifindex, indexes)| {
                // A container not known yet owns a veth only when no known
                // one shares it: its cgroup has no entry, so its frames meet
                // the unknown-container verdict.
                let (owner, cgroup_id) = indexes
                    .iter()
                    .filter_map(|&i| {
                        let c = &self.containers[i];
                        Some((i, c.cgroup_id.or(c.resolved_cgroup_id)?))
                    })
                    .min_by_key(|&(i, _)| {
                        let c = &self.containers[i];
                        (
                            c.cgroup_id.is_none(),
                            c.joins_another_netns(),
                            &c.id,
                            &c.namespace,
                        )
                    })?;
                let sharers = indexes.into_iter().filter(|&i| i != owner).collect();
                Some((
                    ifindex,
                    VethOwner {
                        owner,
                        cgroup_id,
                        sharers,
                    },
                ))
            })
            .collect()
    }

    /// Finds a container by `NAMESPACE:ID`, id, name or id prefix (at
    /// least 4 characters), in that order. An id, name or prefix that more
    /// than one container has (two runtimes' namespaces may both have a
    /// "web", containerd's namespaces even the same id) is refused with
    /// their `NAMESPACE:ID`s, never answered with the first.
    pub fn find<'a>(&'a self, query: &str) -> Result<&'a Container, String> {
        let query = query.trim_start_matches('/');
        // Neither ids nor names have a colon (containerd's and Docker's
        // rules for both).
        if let Some((namespace, id)) = query.split_once(':') {
            return self
                .containers
                .iter()
                .find(|c| c.namespace == namespace && c.id == id)
                .ok_or_else(|| {
                    format!(
                        "no container {id} in namespace {namespace} (`policyd status` lists them)"
                    )
                });
        }
        let one = |what: &str, keep: &dyn Fn(&Container) -> bool| {
            let mut matches: Vec<&'a Container> =
                self.containers.iter().filter(|c| keep(c)).collect();
            match matches.len() {
                1 => Some(Ok(matches.remove(0))),
                0 => None,
                _ => Some(Err(format!(
                    "{what} \"{query}\" names {} containers; give one as NAMESPACE:ID: {}",
                    matches.len(),
                    matches
                        .iter()
                        .map(|c| format!("{}:{} ({})", c.namespace, c.id, c.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        };
        one("the id", &|c| c.id == query)
            .or_else(|| one("the name", &|c| c.name == query))
            .or_else(|| {
                one("the id prefix", &|c| {
                    query.len() >= 4 && c.id.starts_with(query)
                })
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "no container named \"{query}\" or with that id (`policyd status` lists them)"
                ))
            })
    }
}

/// Image references as people write them: Docker Hub's implied prefixes
/// (`docker.io/library/`, `docker.io/`) removed, so `nginx:*` also matches
/// what containerd reports as `docker.io/library/nginx:1.25`.
pub fn short_image(image: &str) -> &str {
    image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image)
}

impl Selector {
    /// Whether this selector selects `container`.
    pub fn matches(&self, container: &Container) -> bool {
        let name = self
            .name
            .as_ref()
            .is_none_or(|n| n == container.name.trim_start_matches('/'));
        let namespace = self
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == container.namespace);
        let image = self.image.as_ref().is_none_or(|g| {
            g.matches(&container.image) || g.matches(short_image(&container.image))
        });
        let labels = self.labels.iter().all(|(k, v)| {
            container
                .labels
                .get(k)
                .is_some_and(|value| v.matches(value))
        });
        name && namespace && image && labels
    }
}

/// Which policy (by index) selects a container, and which later policies
/// would also have selected it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub policy: Option<usize>,
    pub also_matched: Vec<usize>,
}

/// The first policy in file order whose selector matches wins.
pub fn select(policies: &PolicySet, container: &Container) -> Selection {
    let mut matching = policies
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.selector.matches(container))
        .map(|(i, _)| i);
    let policy = matching.next();
    Selection {
        policy,
        also_matched: matching.collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    #[test]
    fn containers_without_runtime_metadata_stay_unmapped() {
        let resolved = proto::resolver::Container {
            id: "abc".into(),
            name: "abc".into(),
            runtime: proto::resolver::Runtime::Docker,
            namespace: "moby".into(),
            labels: Default::default(),
            image: String::new(),
            pids: vec![42],
            cgroup_path: "/contain.slice/docker-abc.scope".into(),
            cgroup_id: 77,
            netns_inode: 1,
            host_veths: vec![proto::resolver::HostVeth {
                ifindex: 31,
                name: "veth1a2b".into(),
                peer_ifindex: 2,
            }],
            host_network: false,
            addresses: Vec::new(),
            metadata_complete: false,
            readonly_rootfs: Some(true),
        };
        assert_eq!(Container::from(&resolved).cgroup_id, None);
        assert_eq!(Container::from(&resolved).resolved_cgroup_id, Some(77));
        assert_eq!(Container::from(&resolved).host_veths, [31]);
        let complete = proto::resolver::Container {
            metadata_complete: true,
            ..resolved
        };
        assert_eq!(Container::from(&complete).cgroup_id, Some(77));
        assert_eq!(Container::from(&complete).readonly_rootfs, Some(true));
    }

    fn container(name: &str, image: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: format!("{name}0000000000"),
            name: name.into(),
            image: image.into(),
            namespace: "moby".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cgroup_id: Some(1),
            ..Container::default()
        }
    }

    #[test]
    fn first_matching_policy_wins() {
        let p = policy::parse(
            "p.toml",
            "[[policy]]\nname='web'\nselect={image='nginx:*'}\n[[policy]]\nname='blocked'\nselect={label={egress='block'}}\n",
        )
        .unwrap();
        let both = container("a", "docker.io/library/nginx:1.25", &[("egress", "block")]);
        assert_eq!(
            select(&p, &both),
            Selection {
                policy: Some(0),
                also_matched: vec![1]
            }
        );
        let blocked = container("b", "redis:7", &[("egress", "block")]);
        assert_eq!(select(&p, &blocked).policy, Some(1));
        let neither = container("c", "redis:7", &[("egress", "open")]);
        assert_eq!(select(&p, &neither).policy, None);
    }

    fn behind(id: &str, cgroup_id: Option<u64>, veths: &[u32]) -> Container {
        Container {
            id: id.into(),
            name: format!("n-{id}"),
            cgroup_id,
            host_veths: veths.to_vec(),
            ..Container::default()
        }
    }

    fn owners(inventory: &Inventory) -> Vec<(u32, &str, Vec<&str>)> {
        inventory
            .veth_owners()
            .into_iter()
            .map(|(ifindex, o)| {
                let id = |i: usize| inventory.containers[i].id.as_str();
                (
                    ifindex,
                    id(o.owner),
                    o.sharers.into_iter().map(id).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn each_veth_belongs_to_the_container_behind_it() {
        let inv = Inventory {
            containers: vec![
                behind("a", Some(1), &[7, 9]),
                behind("b", Some(2), &[8]),
                behind("host", Some(3), &[]),
            ],
        };
        assert_eq!(
            owners(&inv),
            [(7, "a", vec![]), (8, "b", vec![]), (9, "a", vec![])]
        );
        assert_eq!(inv.veth_owners()[&8].cgroup_id, 2);
    }

    #[test]
    fn a_shared_veth_goes_to_the_lowest_id_whatever_the_order() {
        let mut inv = Inventory {
            containers: vec![
                behind("c2", Some(3), &[7]),
                behind("c0", Some(1), &[7]),
                behind("c1", Some(2), &[7]),
            ],
        };
        assert_eq!(owners(&inv), [(7, "c0", vec!["c2", "c1"])]);
        inv.containers.reverse();
        assert_eq!(owners(&inv), [(7, "c0", vec!["c1", "c2"])]);
    }

    #[test]
    fn a_shared_veth_goes_to_the_namespace_owner_when_the_runtime_says() {
        let mut app = behind("00-app", Some(1), &[7]);
        app.labels
            .insert("io.cri-containerd.kind".into(), "container".into());
        let mut sandbox = behind("ff-sandbox", Some(2), &[7]);
        sandbox
            .labels
            .insert("io.cri-containerd.kind".into(), "sandbox".into());
        let inv = Inventory {
            containers: vec![app, sandbox],
        };
        assert_eq!(owners(&inv), [(7, "ff-sandbox", vec!["00-app"])]);
    }

    #[test]
    fn containers_without_a_cgroup_id_own_no_veth() {
        let inv = Inventory {
            containers: vec![
                behind("a", None, &[7]),
                behind("b", Some(2), &[7]),
                behind("c", None, &[8]),
            ],
        };
        assert_eq!(owners(&inv), [(7, "b", vec!["a"])]);
    }

    #[test]
    fn a_name_shows_its_control_characters_escaped() {
        assert_eq!(printable("web-0/nginx"), "web-0/nginx");
        let forged = "x\n{\"verdict\":\"deny\"}\u{1b}[2K";
        let shown = printable(forged);
        assert_eq!(shown, "x\\n{\"verdict\":\"deny\"}\\u{1b}[2K");
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn a_container_not_known_yet_owns_its_veth_by_its_cgroup() {
        // Its name and labels unknown: no policy entry, but its veth must
        // not be one of no container's, whose frames of no socket pass.
        let unknown = |id: &str, cgroup_id: u64, veths: &[u32]| Container {
            resolved_cgroup_id: Some(cgroup_id),
            ..behind(id, None, veths)
        };
        let inv = Inventory {
            containers: vec![
                unknown("a", 5, &[7]),
                behind("b", Some(2), &[7]),
                unknown("c", 6, &[8]),
            ],
        };
        assert_eq!(owners(&inv), [(7, "b", vec!["a"]), (8, "c", vec![])]);
        assert_eq!(inv.veth_owners()[&8].cgroup_id, 6);
    }

    #[test]
    fn find_by_name_id_and_prefix() {
        let inv = Inventory {
            containers: vec![container("a", "x", &[]), container("b", "x", &[])],
        };
        assert_eq!(inv.find("/a").unwrap().name, "a");
        assert_eq!(inv.find("b0000000000").unwrap().name, "b");
        assert_eq!(inv.find("b000").unwrap().name, "b");
        assert!(inv.find("zzz").is_err());
    }

    #[test]
    fn a_name_or_prefix_two_containers_have_is_refused_with_their_ids() {
        let mut other = container("web", "x", &[]);
        other.id = "web0ffff".into();
        other.namespace = "default".into();
        let mut named_by_another_id = container("x", "x", &[]);
        named_by_another_id.name = "web0000000000".into();
        let inv = Inventory {
            containers: vec![named_by_another_id, container("web", "x", &[]), other],
        };
        let e = inv.find("web").unwrap_err();
        assert!(
            e.contains("the name \"web\" names 2 containers")
                && e.contains("moby:web0000000000 (web)")
                && e.contains("default:web0ffff (web)"),
            "{e}"
        );
        // An exact id comes before a name, even another container's.
        assert_eq!(inv.find("web0000000000").unwrap().id, "web0000000000");
        assert_eq!(inv.find("web0f").unwrap().namespace, "default");
        let e = inv.find("web0").unwrap_err();
        assert!(
            e.contains("the id prefix \"web0\" names 2 containers"),
            "{e}"
        );
    }

    #[test]
    fn an_id_two_namespaces_have_is_refused_and_found_by_namespace() {
        let mut first = container("one", "x", &[]);
        first.id = "abc".into();
        let mut other = container("two", "x", &[]);
        other.id = "abc".into();
        other.namespace = "other".into();
        let inv = Inventory {
            containers: vec![first, other],
        };
        let e = inv.find("abc").unwrap_err();
        assert!(
            e.contains("the id \"abc\" names 2 containers")
                && e.contains("moby:abc")
                && e.contains("other:abc"),
            "{e}"
        );
        assert_eq!(inv.find("other:abc").unwrap().namespace, "other");
        assert_eq!(inv.find("moby:abc").unwrap().namespace, "moby");
        assert!(inv.find("third:abc").is_err());
    }
}
