//! rtnetlink: the host's links (which veth's peer lives in which network
//! namespace), namespace ids, and the link event stream.
//!
//! A host-side veth carries its peer's ifindex (`IFLA_LINK`) and the id the
//! host gives the peer's namespace (`IFLA_LINK_NETNSID`). The id is local to
//! the host namespace, so it is turned into a namespace inode by asking the
//! kernel (`RTM_GETNSID` with a namespace fd) for the id of each container's
//! namespace.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::AsRawFd,
    time::Duration,
};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST},
    packet_route::{
        link::{InfoKind, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage},
        nsid::{NsidAttribute, NsidMessage},
        AddressFamily, RouteNetlinkMessage,
    },
    Handle, MulticastGroup,
};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// What the resolver keeps of one link of the host namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the host's id for the peer's namespace; absent
    /// when the peer is in the same namespace.
    pub link_netnsid: Option<i32>,
    /// `IFLA_CARRIER`: for a veth, whether both ends are up. The host side
    /// gets it when the peer comes up, which is when a runtime has just
    /// configured the peer (Docker sets its addresses, then sets it up):
    /// a change of it is a link event for the peer's namespace, whose
    /// addresses are then read again (rather than at the next rescan).
    pub carrier: bool,
}

impl Link {
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    /// Pure: the fields of a `RTM_NEWLINK` message the resolver uses.
    pub fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            ifindex: msg.header.index,
            name: String::new(),
            kind: None,
            peer_ifindex: None,
            link_netnsid: None,
            carrier: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Link(index) => link.peer_ifindex = Some(*index),
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link.link_netnsid = Some(*id),
                LinkAttribute::Carrier(on) => link.carrier = *on != 0,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let NlLinkInfo::Kind(kind) = info {
                            link.kind = Some(match kind {
                                InfoKind::Veth => "veth".to_string(),
                                other => other.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The host-side veths whose peer is in the namespace the host calls
/// `nsid`, sorted by ifindex, found by scanning every link: what
/// [`LinkTable::veths_into`] must answer.
#[cfg(test)]
pub fn veths_into(links: &[Link], nsid: i32) -> Vec<proto::resolver::HostVeth> {
    let mut veths: Vec<_> = links
        .iter()
        .filter(|l| l.is_veth() && l.link_netnsid == Some(nsid))
        .map(host_veth)
        .collect();
    veths.sort();
    veths
}

fn host_veth(l: &Link) -> proto::resolver::HostVeth {
    proto::resolver::HostVeth {
        ifindex: l.ifindex,
        name: l.name.clone(),
        peer_ifindex: l.peer_ifindex.unwrap_or(0),
    }
}

/// The host's links, indexed so that one namespace's veths are found
/// without a scan of every link, and one link's change names the
/// namespaces it concerns: the cost of a link event does not grow with the
/// host's containers. Pure.
#[derive(Clone, Debug, Default)]
pub struct LinkTable {
    by_ifindex: HashMap<u32, Link>,
    /// Ifindexes of the host-side veths, by the id the host gives their
    /// peer's namespace.
    veths_by_nsid: HashMap<i32, BTreeSet<u32>>,
}

impl LinkTable {
    /// A table of `links` (a full dump).
    pub fn from_links(links: Vec<Link>) -> Self {
        let mut table = LinkTable::default();
        for link in links {
            table.upsert(link);
        }
        table
    }

    /// The namespace id a link's veth side points into, if it is a veth.
    fn veth_nsid(link: &Link) -> Option<i32> {
        link.link_netnsid.filter(|_| link.is_veth())
    }

    /// Takes a link as `RTM_NEWLINK` announced it; the namespace ids whose
    /// veths changed (before and after), none if it changed nothing a
    /// container's entry shows.
    pub fn upsert(&mut self, link: Link) -> Vec<i32> {
        let new_nsid = Self::veth_nsid(&link);
        let old = self.by_ifindex.get(&link.ifindex);
        if old == Some(&link) {
            return Vec::new();
        }
        let old_nsid = old.and_then(Self::veth_nsid);
        // The carrier is not in the entry, but its change may change the
        // addresses the container's entry shows.
        let shown_same = old.is_some_and(|o| {
            old_nsid == new_nsid && host_veth(o) == host_veth(&link) && o.carrier == link.carrier
        });
        if let Some(nsid) = old_nsid {
            self.unindex(nsid, link.ifindex);
        }
        if let Some(nsid) = new_nsid {
            self.veths_by_nsid
                .entry(nsid)
                .or_default()
                .insert(link.ifindex);
        }
        self.by_ifindex.insert(link.ifindex, link);
        if shown_same {
            return Vec::new();
        }
        let mut affected: Vec<i32> = old_nsid.into_iter().chain(new_nsid).collect();
        affected.dedup();
        affected
    }

    /// Takes a link's removal (`RTM_DELLINK`); the namespace id whose
    /// veths changed, if it was a veth.
    pub fn remove(&mut self, ifindex: u32) -> Option<i32> {
        let nsid = Self::veth_nsid(&self.by_ifindex.remove(&ifindex)?)?;
        self.unindex(nsid, ifindex);
        Some(nsid)
    }

    fn unindex(&mut self, nsid: i32, ifindex: u32) {
        if let Some(set) = self.veths_by_nsid.get_mut(&nsid) {
            set.remove(&ifindex);
            if set.is_empty() {
                self.veths_by_nsid.remove(&nsid);
            }
        }
    }

    /// Whether a host-side veth's peer is in the namespace the host calls
    /// `nsid`.
    pub fn has_veths_into(&self, nsid: i32) -> bool {
        self.veths_by_nsid.contains_key(&nsid)
    }

    /// The host-side veths whose peer is in the namespace the host calls
    /// `nsid`, sorted by ifindex.
    pub fn veths_into(&self, nsid: i32) -> Vec<proto::resolver::HostVeth> {
        self.veths_by_nsid
            .get(&nsid)
            .into_iter()
            .flatten()
            .filter_map(|ifindex| self.by_ifindex.get(ifindex))
            .map(host_veth)
            .collect()
    }
}

/// Requests to the kernel over a route netlink socket of its own (never the
/// multicast one, whose buffer may overrun).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    timeout: Duration,
}

impl Netlink {
    /// Opens a socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::Netlink(format!("cannot open a route netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            timeout: Duration::from_secs(5),
        })
    }

    /// Every link of the host namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let dump = self
            .handle
            .link()
            .get()
            .execute()
            .map_ok(|m| Link::from_message(&m))
            .try_collect::<Vec<_>>();
        match tokio::time::timeout(self.timeout, dump).await {
            Ok(Ok(links)) => Ok(links),
            Ok(Err(e)) => Err(Error::Netlink(format!("link dump: {e}"))),
            Err(_) => Err(Error::Timeout("netlink link dump".into())),
        }
    }

    /// The host's id for the network namespace open as `ns` (`None` if the
    /// host has none for it, which means no host link points into it).
    pub async fn nsid_of(&self, ns: &impl AsRawFd) -> Result<Option<i32>> {
        let fd = u32::try_from(ns.as_raw_fd()).map_err(|_| Error::Netlink("negative fd".into()))?;
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(fd));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let query = async move {
            let mut responses = handle
                .request(req)
                .map_err(|e| Error::Netlink(format!("RTM_GETNSID: {e}")))?;
            let mut found = None;
            while let Some(resp) = responses.next().await {
                match resp.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                        for attr in m.attributes {
                            if let NsidAttribute::Id(id) = attr {
                                found = (id >= 0).then_some(id);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(Error::Netlink(format!("RTM_GETNSID: {}", e.to_io())));
                    }
                    _ => {}
                }
            }
            Ok(found)
        };
        tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| Error::Timeout("netlink RTM_GETNSID".into()))?
    }
}

/// What the link watcher tells the reconciler: the kernel's events with
/// what they carry, so that the table is kept without a dump of every
/// link on each of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkSignal {
    /// A link appeared or changed (`RTM_NEWLINK`, with all its attributes).
    Link(Link),
    /// A link vanished (`RTM_DELLINK`).
    Removed { ifindex: u32 },
    /// A namespace got an id (`RTM_NEWNSID`) or lost it (`RTM_DELNSID`).
    Nsid { nsid: i32, removed: bool },
    /// Events were lost (socket overrun, or the watcher restarted): the link
    /// table must be read again and everything recomputed.
    Gap,
}

impl LinkSignal {
    /// Pure: what a message of the link and namespace-id groups says;
    /// `None` for others.
    pub fn from_message(msg: &RouteNetlinkMessage) -> Option<LinkSignal> {
        let nsid_of = |m: &NsidMessage| {
            m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            })
        };
        match msg {
            // A bridge reports its ports' state in messages of family
            // AF_BRIDGE, without the device's kind or namespace id (a port
            // going up sends three): taken as the device, they left the
            // veth with no namespace until its next full message. A port
            // leaving the bridge is no device leaving either.
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m)
                if m.header.interface_family != AddressFamily::Unspec =>
            {
                None
            }
            RouteNetlinkMessage::NewLink(m) => Some(LinkSignal::Link(Link::from_message(m))),
            RouteNetlinkMessage::DelLink(m) => Some(LinkSignal::Removed {
                ifindex: m.header.index,
            }),
            RouteNetlinkMessage::NewNsId(m) => nsid_of(m).map(|nsid| LinkSignal::Nsid {
                nsid,
                removed: false,
            }),
            RouteNetlinkMessage::DelNsId(m) => nsid_of(m).map(|nsid| LinkSignal::Nsid {
                nsid,
                removed: true,
            }),
            _ => None,
        }
    }
}

const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);
/// Waits between attempts to subscribe to rtnetlink: 0.2 s doubling to 10 s.
const RESUBSCRIBE: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_max_delay(RESUBSCRIBE_MAX)
    .without_max_times();

/// Follows link and namespace-id events of the host namespace forever,
/// reopening the socket with back-off if it fails. Every (re)subscription
/// starts with a [`LinkSignal::Gap`], so the reconciler re-reads the table after
/// anything it may have missed.
pub async fn watch(tx: mpsc::Sender<LinkSignal>) {
    let mut delays = RESUBSCRIBE.build();
    loop {
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Nsid]) {
            Ok((conn, _handle, mut messages)) => {
                let conn_task = tokio::spawn(conn);
                if tx.send(LinkSignal::Gap).await.is_err() {
                    return;
                }
                delays = RESUBSCRIBE.build();
                while let Some((msg, _)) = messages.next().await {
                    let signal = match &msg.payload {
                        NetlinkPayload::InnerMessage(inner) => {
                            match LinkSignal::from_message(inner) {
                                Some(signal) => signal,
                                None => continue,
                            }
                        }
                        NetlinkPayload::Overrun(_) => {
                            tracing::warn!("rtnetlink event socket overran: link events were lost; rereading the link table");
                            LinkSignal::Gap
                        }
                        _ => continue,
                    };
                    if tx.send(signal).await.is_err() {
                        conn_task.abort();
                        return;
                    }
                }
                conn_task.abort();
                tracing::warn!("rtnetlink event socket closed; reopening");
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(RESUBSCRIBE_MAX);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot subscribe to rtnetlink link events");
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(RESUBSCRIBE_MAX)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_kit::lab::link_message as msg;

    #[test]
    fn host_side_veth_carries_peer_and_nsid() {
        let l = Link::from_message(&msg(
            7,
            vec![
                LinkAttribute::IfName("veth1234".into()),
                LinkAttribute::Link(2),
                LinkAttribute::LinkNetNsId(3),
                LinkAttribute::Carrier(1),
                LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Veth)]),
            ],
        ));
        assert_eq!(
            l,
            Link {
                ifindex: 7,
                name: "veth1234".into(),
                kind: Some("veth".into()),
                peer_ifindex: Some(2),
                link_netnsid: Some(3),
                carrier: true,
            }
        );
        assert!(l.is_veth());
    }

    #[test]
    fn negative_nsid_and_other_kinds() {
        let l = Link::from_message(&msg(
            1,
            vec![
                LinkAttribute::IfName("br0".into()),
                LinkAttribute::LinkNetNsId(-1),
                LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]),
            ],
        ));
        assert_eq!(l.link_netnsid, None);
        assert!(!l.is_veth());
        let bare = Link::from_message(&msg(9, vec![]));
        assert_eq!(bare.name, "");
        assert_eq!(bare.kind, None);
    }

    #[test]
    fn veths_into_picks_only_veths_into_that_namespace() {
        let veth = |ifindex, nsid| Link {
            ifindex,
            name: format!("v{ifindex}"),
            kind: Some("veth".into()),
            peer_ifindex: Some(2),
            link_netnsid: nsid,
            carrier: false,
        };
        let mut links = vec![
            veth(9, Some(1)),
            veth(4, Some(1)),
            veth(5, Some(2)),
            veth(6, None),
        ];
        links.push(Link {
            kind: Some("vxlan".into()),
            ..veth(7, Some(1))
        });
        let got: Vec<u32> = veths_into(&links, 1).iter().map(|v| v.ifindex).collect();
        assert_eq!(got, vec![4, 9]);
        assert!(veths_into(&links, 3).is_empty());
    }

    fn veth_link(ifindex: u32, nsid: Option<i32>) -> Link {
        Link {
            ifindex,
            name: format!("v{ifindex}"),
            kind: Some("veth".into()),
            peer_ifindex: Some(2),
            link_netnsid: nsid,
            carrier: false,
        }
    }

    #[test]
    fn the_table_answers_as_a_scan_of_every_link_does() {
        let mut links = vec![
            veth_link(9, Some(1)),
            veth_link(4, Some(1)),
            veth_link(5, Some(2)),
            veth_link(6, None),
            Link {
                kind: Some("vxlan".into()),
                ..veth_link(7, Some(1))
            },
        ];
        let mut table = LinkTable::from_links(links.clone());
        for nsid in 0..4 {
            assert_eq!(
                table.veths_into(nsid),
                veths_into(&links, nsid),
                "nsid {nsid}"
            );
        }
        // A veth moves to another namespace, one vanishes, one is renamed.
        assert_eq!(table.upsert(veth_link(4, Some(2))), vec![1, 2]);
        links[1] = veth_link(4, Some(2));
        assert_eq!(table.remove(5), Some(2));
        links.remove(2);
        let renamed = Link {
            name: "eth9".into(),
            ..veth_link(9, Some(1))
        };
        assert_eq!(table.upsert(renamed.clone()), vec![1]);
        links[0] = renamed;
        for nsid in 0..4 {
            assert_eq!(
                table.veths_into(nsid),
                veths_into(&links, nsid),
                "nsid {nsid}"
            );
        }
    }

    #[test]
    fn a_link_event_names_only_the_namespaces_it_concerns() {
        let mut table =
            LinkTable::from_links((1..=500).map(|i| veth_link(i, Some(i as i32))).collect());
        // The same link again, or a change no entry shows: nothing.
        assert!(table.upsert(veth_link(7, Some(7))).is_empty());
        let up = Link {
            kind: Some("veth".into()),
            ..veth_link(7, Some(7))
        };
        assert!(table.upsert(up).is_empty());
        // Its peer comes up, or goes down: its namespace, whose addresses
        // may have changed.
        let carrier = Link {
            carrier: true,
            ..veth_link(7, Some(7))
        };
        assert_eq!(table.upsert(carrier.clone()), vec![7]);
        assert!(table.upsert(carrier).is_empty());
        assert_eq!(table.upsert(veth_link(7, Some(7))), vec![7]);
        // A new veth: its namespace only.
        assert_eq!(table.upsert(veth_link(501, Some(501))), vec![501]);
        // Links that are not veths, and their removal: none.
        assert!(table
            .upsert(Link {
                kind: Some("bridge".into()),
                ..veth_link(600, None)
            })
            .is_empty());
        assert_eq!(table.remove(600), None);
        assert_eq!(table.remove(999), None);
    }

    #[test]
    fn kernel_messages_become_signals_with_what_they_carry() {
        let new = RouteNetlinkMessage::NewLink(msg(
            7,
            vec![
                LinkAttribute::IfName("veth7".into()),
                LinkAttribute::LinkNetNsId(3),
                LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Veth)]),
            ],
        ));
        assert!(matches!(
            LinkSignal::from_message(&new),
            Some(LinkSignal::Link(Link {
                ifindex: 7,
                link_netnsid: Some(3),
                ..
            }))
        ));
        let del = RouteNetlinkMessage::DelLink(msg(7, vec![]));
        assert_eq!(
            LinkSignal::from_message(&del),
            Some(LinkSignal::Removed { ifindex: 7 })
        );
        // The bridge's word on its port 7: neither a new device nor a gone one.
        let of_bridge = |mut m: LinkMessage| {
            m.header.interface_family = AddressFamily::Bridge;
            m
        };
        for port in [
            RouteNetlinkMessage::NewLink(of_bridge(msg(
                7,
                vec![LinkAttribute::IfName("veth7".into())],
            ))),
            RouteNetlinkMessage::DelLink(of_bridge(msg(7, vec![]))),
        ] {
            assert_eq!(LinkSignal::from_message(&port), None, "{port:?}");
        }
        let mut nsid = NsidMessage::default();
        nsid.attributes.push(NsidAttribute::Id(4));
        assert_eq!(
            LinkSignal::from_message(&RouteNetlinkMessage::DelNsId(nsid)),
            Some(LinkSignal::Nsid {
                nsid: 4,
                removed: true
            })
        );
    }
}
