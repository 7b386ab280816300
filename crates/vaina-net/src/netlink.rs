//! An rtnetlink connection bound to one network namespace.
//!
//! A netlink socket talks to the namespace it was created in, whatever thread later uses it.
//! [`Netlink::open_in`] creates the socket inside a pod's namespace on a throwaway thread and
//! hands it back, so a plugin drives the node and the pod through two sockets without any
//! async worker ever calling `setns` (the pattern netavark uses).

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface {name} already exists")]
    LinkExists { name: String },
    #[error("interface {name} not found")]
    LinkNotFound { name: String },
    #[error("interface {name} already exists but is a {kind}, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("cannot {op}")]
    Request {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// What vaina needs to know of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, … (`None` for devices without a kind, such as `lo`).
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    pub up: bool,
}

impl Link {
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| format_mac(&m))
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A route as CNI results carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
    pub table: Option<u32>,
    /// Link scope, for routes to directly reachable destinations.
    pub link_scope: bool,
}

impl Route {
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gw: None,
            oif: None,
            metric: None,
            mtu: None,
            table: None,
            link_scope: false,
        }
    }
}

/// Options of `ensure_bridge`.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub vlan_filtering: bool,
}

/// An rtnetlink handle whose socket lives in one namespace. Dropping it stops the
/// connection task.
pub struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// A socket in the calling thread's namespace. Must be called within a tokio runtime.
    pub fn open() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// A socket inside `ns`, created on a throwaway thread. Must be called within a tokio
    /// runtime (the socket registers with its reactor).
    pub fn open_in(ns: &Netns) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
        })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request("list interfaces", e))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    /// The link named `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_name(name.to_string());
        self.get_link(req, || format!("look up interface {name}"))
            .await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_index(index);
        self.get_link(req, || format!("look up interface {index}"))
            .await
    }

    async fn get_link(
        &self,
        req: rtnetlink::LinkGetRequest,
        op: impl FnOnce() -> String,
    ) -> Result<Option<Link>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = req.execute().try_collect().await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(parse_link)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request(op(), e)),
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound { name: name.into() })
    }

    /// Returns the bridge `spec.name`, creating it (up) if missing. An existing link of
    /// another kind is an error, as in the reference plugin. Returns the link and whether
    /// this call created it, so a failed ADD knows whether to remove it.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(Link, bool)> {
        let mut created = false;
        let link = match self.link(&spec.name).await? {
            Some(l) => l,
            None => {
                let mut b = LinkBridge::new(&spec.name);
                if let Some(mtu) = spec.mtu {
                    b = b.mtu(mtu);
                }
                if spec.vlan_filtering {
                    b = b.vlan_filtering(true);
                }
                match self.handle.link().add(b.build()).execute().await {
                    Ok(()) => created = true,
                    // Another plugin instance won the race: use its bridge.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(request(format!("create bridge {}", spec.name), e)),
                }
                self.require_link(&spec.name).await?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(NetlinkError::NotABridge {
                name: spec.name.clone(),
                kind: link.kind.unwrap_or_else(|| "device".into()),
            });
        }
        if spec.promisc || !link.up {
            let mut m = LinkUnspec::new_with_index(link.index).up();
            if spec.promisc {
                m = m.promiscuous(true);
            }
            self.handle
                .link()
                .set(m.build())
                .execute()
                .await
                .map_err(|e| request(format!("set bridge {} up", spec.name), e))?;
        }
        Ok((link, created))
    }

    /// Creates a veth pair: `host` in this namespace and `peer` created straight inside
    /// `peer_ns` (no window where the pod's end is visible on the node).
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &Netns,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns.as_fd().as_raw_fd());
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let mut msg = LinkVeth::new(host, peer);
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        let mut msg = msg.build();
        let mut peer_msg = Some(peer_msg.build());
        // LinkVeth only names the peer; replace its message with ours (netns, mtu, mac).
        for attr in msg.attributes.iter_mut() {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos.iter_mut() {
                    if let LinkInfo::Data(InfoData::Veth(v)) = info {
                        if let Some(p) = peer_msg.take() {
                            *v = netlink_packet_route::link::InfoVeth::Peer(p);
                        }
                    }
                }
            }
        }
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(NetlinkError::LinkExists {
                name: format!("{host} or its peer {peer}"),
            }),
            Err(e) => Err(request(format!("create veth {host} with peer {peer}"), e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).up().build(), index, "up")
            .await
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).down().build(),
            index,
            "down",
        )
        .await
    }

    /// Sets the link's MAC (`ip link set X address M`).
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            index,
            "address",
        )
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            index,
            "mtu",
        )
        .await
    }

    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).promiscuous(on).build(),
            index,
            "promisc",
        )
        .await
    }

    /// Makes `index` a port of `bridge` (`ip link set X master BR`).
    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).controller(bridge).build(),
            index,
            "master",
        )
        .await
    }

    /// `bridge link set dev X hairpin on|off`.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| request(format!("set hairpin on interface {index}"), e))
    }

    /// `bridge vlan add dev X vid V pvid untagged`.
    pub async fn set_port_vlan(&self, index: u32, vid: u16) -> Result<()> {
        use netlink_packet_route::link::BridgeVlanInfoFlags as F;
        let msg = LinkBridgeVlan::new(index)
            .vlan(vid, F::Pvid | F::Untagged)
            .build();
        // iproute2 sends RTM_SETLINK with family AF_BRIDGE for `bridge vlan add`.
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| request(format!("set vlan {vid} on interface {index}"), e))
    }

    async fn set(&self, msg: LinkMessage, index: u32, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| request(format!("set {what} on interface {index}"), e))
    }

    /// Deletes the link named `name`. Returns false if it did not exist (teardown is
    /// repeatable).
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(request(format!("delete interface {name}"), e)),
        }
    }

    /// Addresses of the link `index` (all of them when `None`), as (index, address).
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| request("list addresses", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                let net = IpNet::new(ip, m.header.prefix_len).ok()?;
                Some((m.header.index, net))
            })
            .collect())
    }

    /// Adds `addr` to the link; an address already present is success.
    pub async fn ensure_address(&self, index: u32, addr: IpNet) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request(
                format!("add address {addr} to interface {index}"),
                e,
            )),
        }
    }

    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.family = family(addr.addr());
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)) => Ok(()),
            Err(e) => Err(request(format!("delete address {addr}"), e)),
        }
    }

    /// Adds a route; an identical route already present is success.
    pub async fn ensure_route(&self, r: &Route) -> Result<()> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .map_err(|e| invalid_route(r, e))?;
        if let Some(gw) = r.gw {
            b = b.gateway(gw).map_err(|e| invalid_route(r, e))?;
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        if let Some(m) = r.metric {
            b = b.priority(m);
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        if r.link_scope {
            b = b.scope(RouteScope::Link);
        }
        let mut msg = b.protocol(RouteProtocol::Boot).build();
        if let Some(mtu) = r.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request(format!("add route {}", describe_route(r)), e)),
        }
    }

    /// Routes of the main table for one family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>> {
        let b = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(b)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request("list routes", e))?;
        Ok(msgs.iter().filter_map(parse_route).collect())
    }

    /// The interface the main table would use to reach `ip` (longest prefix match over the
    /// routes that name an output interface).
    pub async fn route_oif(&self, ip: IpAddr) -> Result<Option<u32>> {
        let routes = self.routes(ip.is_ipv6()).await?;
        Ok(routes
            .iter()
            .filter(|r| r.dst.contains(&ip) && r.oif.is_some() && r.table == Some(254))
            .max_by_key(|r| r.dst.prefix_len())
            .and_then(|r| r.oif))
    }
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        controller: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                l.mac = Some(mac.as_slice().try_into().unwrap_or([0; 6]))
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vlan => "vlan".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Vxlan => "vxlan".into(),
        other => other.to_string(),
    }
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut r = Route::new(IpNet::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0).ok()?);
    r.table = Some(m.header.table as u32);
    r.link_scope = m.header.scope == RouteScope::Link;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => r.gw = route_ip(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            RouteAttribute::Table(t) => r.table = Some(*t),
            RouteAttribute::Metrics(ms) => {
                for mm in ms {
                    if let RouteMetric::Mtu(v) = mm {
                        r.mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    let base: IpAddr = match (dst, m.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet6) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        (None, _) => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    r.dst = IpNet::new(base, m.header.destination_prefix_length).ok()?;
    Some(r)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn describe_route(r: &Route) -> String {
    match r.gw {
        Some(gw) => format!("{} via {gw}", r.dst),
        None => r.dst.to_string(),
    }
}

fn invalid_route(r: &Route, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Request {
        op: format!("build route {}", describe_route(r)),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    }
}

/// The errno of a kernel NACK, positive (`libc::EEXIST`…).
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn request(op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetlinkError::Request {
        op: op.into(),
        source,
    }
}
