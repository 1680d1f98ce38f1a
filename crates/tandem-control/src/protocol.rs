//! The control protocol: one JSON object per line each way, the typed [`Reply`] to each
//! [`Request`], and the snapshot types that both the control socket and the admin HTTP
//! port show.
//!
//! On the wire an answer is `{"ok":true,"data":...}` or `{"ok":false,"error":"why"}`;
//! `data` is the request's reply type serialized as itself (no tag), so a client reads
//! it back with [`Response::into_reply`], which knows from the request what to expect.

use serde::{Deserialize, Serialize};

/// A command sent to a running tandem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Node, uptime, version, services, HA and sync in brief.
    Status,
    /// Every pool and backend with health and counters.
    Pools,
    /// Enable or disable (drain) a backend.
    Backend {
        /// What to do.
        action: BackendAction,
        /// The pool.
        pool: String,
        /// The backend's address, as in the configuration.
        address: String,
    },
    /// Reload the configuration file.
    Reload,
    /// VRRP state and priority.
    Ha,
    /// The kernel rules of redirect services and the sync of connection states.
    Redirect,
    /// Route announcement: what is announced and why; or the operator's drain of
    /// the node (withdraw every address) and its end (restore).
    Announce {
        /// What to do.
        action: AnnounceAction,
    },
    /// Set a backend's weight until the next reload.
    BackendWeight {
        /// The pool.
        pool: String,
        /// The backend's address.
        address: String,
        /// The new weight, 1 to 256.
        weight: u32,
    },
    /// Add a backend to a pool until the next reload.
    BackendAdd {
        /// The pool.
        pool: String,
        /// The new backend's address.
        address: String,
        /// Its weight (default 1).
        #[serde(default)]
        weight: Option<u32>,
        /// Serves only when no primary can.
        #[serde(default)]
        backup: bool,
        /// Its connection limit (0 = none).
        #[serde(default)]
        max_conns: u32,
    },
    /// Remove a backend from a pool until the next reload; its connections finish.
    BackendRemove {
        /// The pool.
        pool: String,
        /// The backend's address.
        address: String,
    },
    /// The sticky entries that match every filter given.
    StickyShow {
        /// Filters.
        #[serde(flatten)]
        filter: StickyFilter,
    },
    /// Remove the sticky entries that match every filter given (here and on the sync
    /// peer).
    StickyClear {
        /// Filters.
        #[serde(flatten)]
        filter: StickyFilter,
    },
    /// The relayed (tcp mode) connections open now.
    Connections {
        /// Only this service's.
        #[serde(default)]
        service: Option<String>,
    },
    /// Close one relayed connection.
    ConnectionClose {
        /// Its number, as `connections` lists it.
        id: u64,
    },
    /// Follow the event log: the answer is followed by one event per line, as they
    /// happen, until the client closes the connection.
    Monitor,
    /// Hand VRRP master over for maintenance: priority 1, a priority-0 advertisement.
    HaDemote,
    /// End the maintenance: the configured priority again.
    HaRestore,
    /// Start a new binary that takes over the listening sockets and the sticky tables;
    /// this process then stops accepting, drains and exits.
    Upgrade {
        /// The new binary (absolute path); none: the running one's path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
}

/// What to do with the node's announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnounceAction {
    /// Show the state only.
    Status,
    /// Withdraw every address (operator drain); the node keeps serving what arrives.
    Withdraw,
    /// End the operator's withdraw: announce again what the node can serve.
    Restore,
}

/// Which sticky entries a command is about: all when no filter is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyFilter {
    /// Only this pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Only this client address's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Only those pinned to this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// What to do with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendAction {
    /// Take new connections again.
    Enable,
    /// No new connections; established ones finish (drain).
    Disable,
}

impl Request {
    /// The command's name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Pools => "pools",
            Request::Backend { .. } => "backend",
            Request::Reload => "reload",
            Request::Ha => "ha",
            Request::Redirect => "redirect",
            Request::Announce { .. } => "announce",
            Request::BackendWeight { .. } => "backend-weight",
            Request::BackendAdd { .. } => "backend-add",
            Request::BackendRemove { .. } => "backend-remove",
            Request::StickyShow { .. } => "sticky-show",
            Request::StickyClear { .. } => "sticky-clear",
            Request::Connections { .. } => "connections",
            Request::ConnectionClose { .. } => "connection-close",
            Request::Monitor => "monitor",
            Request::HaDemote => "ha-demote",
            Request::HaRestore => "ha-restore",
            Request::Upgrade { .. } => "upgrade",
        }
    }
}

/// The answer to each request, typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// To [`Request::Status`]: the whole snapshot.
    Status(Box<Snapshot>),
    /// To [`Request::Pools`]: the whole snapshot.
    Pools(Box<Snapshot>),
    /// To [`Request::Backend`]: the backend's new state.
    Backend(BackendSnapshot),
    /// To [`Request::Reload`]: what changed.
    Reload(ReloadReply),
    /// To [`Request::Ha`]: the VRRP state of each instance of `[ha]`.
    Ha(HaInstances),
    /// To [`Request::Redirect`]: the redirect services, when configured.
    Redirect(Option<Box<RedirectSnapshot>>),
    /// To [`Request::Announce`]: the announcements after the action, when
    /// `[announce]` is configured.
    Announce(Option<AnnounceSnapshot>),
    /// To [`Request::BackendWeight`], [`Request::BackendAdd`] and
    /// [`Request::BackendRemove`]: what changed.
    BackendChange(BackendChangeReply),
    /// To [`Request::StickyShow`]: the matching entries.
    Sticky(Vec<StickySnapshot>),
    /// To [`Request::StickyClear`]: what was removed.
    StickyCleared(StickyClearReply),
    /// To [`Request::Connections`]: the open connections, oldest first.
    Connections(Vec<ConnectionSnapshot>),
    /// To [`Request::ConnectionClose`]: the connection closed.
    ConnectionClosed(ConnectionSnapshot),
    /// To [`Request::Monitor`]: the kept events (oldest first); new ones follow, one
    /// [`crate::events::Event`] per line.
    Monitor(Vec<crate::events::Event>),
    /// To [`Request::HaDemote`] and [`Request::HaRestore`]: the VRRP state after it.
    HaMaintenance(HaInstances),
    /// To [`Request::Upgrade`]: the new process serves.
    Upgrade(UpgradeReply),
}

/// What a runtime change of a pool's backends did. Such changes last until the next
/// reload, which builds the pools from the configuration file again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendChangeReply {
    /// The pool.
    pub pool: String,
    /// The backend's address.
    pub address: String,
    /// What was done: "weight 1 -> 5", "added", "removed".
    pub change: String,
    /// The backend now (none once removed).
    pub backend: Option<BackendSnapshot>,
    /// Connections still open on a removed backend (they finish).
    pub draining: u64,
    /// How long it lasts, for a person.
    pub lasts: String,
}

/// One sticky entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickySnapshot {
    /// Pool.
    pub pool: String,
    /// Client address.
    pub client: String,
    /// The backend it is pinned to.
    pub backend: String,
    /// Seconds until it expires unless used.
    pub expires_in_secs: u64,
    /// Seconds since the pin was decided.
    pub pinned_secs_ago: u64,
}

/// What `sticky clear` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyClearReply {
    /// Entries removed here.
    pub cleared: u64,
    /// Whether the removals were sent to the sync peers.
    pub synced: bool,
}

/// One relayed connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSnapshot {
    /// Its number (for `connections close`).
    pub id: u64,
    /// Service.
    pub service: String,
    /// Client address.
    pub client: String,
    /// Pool.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// Seconds open.
    pub age_secs: u64,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
}

impl Reply {
    /// Reads `data` as the reply to `request`.
    pub fn read(request: &Request, data: serde_json::Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value;
        Ok(match request {
            Request::Status => Reply::Status(from_value(data)?),
            Request::Pools => Reply::Pools(from_value(data)?),
            Request::Backend { .. } => Reply::Backend(from_value(data)?),
            Request::Reload => Reply::Reload(from_value(data)?),
            Request::Ha => Reply::Ha(from_value(data)?),
            Request::Redirect => Reply::Redirect(from_value(data)?),
            Request::Announce { .. } => Reply::Announce(from_value(data)?),
            Request::BackendWeight { .. }
            | Request::BackendAdd { .. }
            | Request::BackendRemove { .. } => Reply::BackendChange(from_value(data)?),
            Request::StickyShow { .. } => Reply::Sticky(from_value(data)?),
            Request::StickyClear { .. } => Reply::StickyCleared(from_value(data)?),
            Request::Connections { .. } => Reply::Connections(from_value(data)?),
            Request::ConnectionClose { .. } => Reply::ConnectionClosed(from_value(data)?),
            Request::Monitor => Reply::Monitor(from_value(data)?),
            Request::HaDemote | Request::HaRestore => Reply::HaMaintenance(from_value(data)?),
            Request::Upgrade { .. } => Reply::Upgrade(from_value(data)?),
        })
    }
}

/// Why a client has no reply to show.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// tandem refused the command, and said why.
    #[error("{0}")]
    Refused(String),
    /// The answer is not the reply the request expects (another tandem version?).
    #[error(
        "cannot read tandem's answer to `{request}`: {source} (is this tandem ctl the same version as the running tandem?)"
    )]
    Unreadable {
        /// The request's name.
        request: &'static str,
        /// What does not fit.
        source: serde_json::Error,
    },
}

/// The answer to a request, as on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The [`Reply`], serialized; read it with [`Response::into_reply`].
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    /// A success carrying `reply`.
    pub fn ok(reply: Reply) -> Response {
        Response {
            ok: true,
            error: None,
            // Snapshots are plain data (string keys, no failing Serialize impl).
            data: serde_json::to_value(reply).unwrap_or(serde_json::Value::Null),
        }
    }

    /// A failure with its reason.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            data: serde_json::Value::Null,
        }
    }

    /// The typed reply to `request`: the refusal's reason, or an error naming what
    /// does not fit when `data` is not what `request` expects.
    pub fn into_reply(self, request: &Request) -> Result<Reply, ReplyError> {
        if !self.ok {
            return Err(ReplyError::Refused(self.error.unwrap_or_default()));
        }
        Reply::read(request, self.data).map_err(|source| ReplyError::Unreadable {
            request: request.name(),
            source,
        })
    }
}

/// Everything an operator sees of a running tandem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Node name.
    pub node: String,
    /// tandem version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Configuration file, when started from one.
    pub config_path: Option<String>,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Services.
    pub services: Vec<ServiceSnapshot>,
    /// Pools.
    pub pools: Vec<PoolSnapshot>,
    /// VRRP state, per instance.
    #[serde(default)]
    pub ha: HaInstances,
    /// Sync peers, when configured.
    pub sync: Vec<PeerSnapshot>,
    /// Redirect services, when configured (without the kernel's table).
    #[serde(default)]
    pub redirect: Option<RedirectSnapshot>,
    /// Route announcement, when configured.
    #[serde(default)]
    pub announce: Option<AnnounceSnapshot>,
    /// Connections open on each worker thread (none with `threads = 1`).
    #[serde(default)]
    pub workers: Vec<u64>,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// Name.
    pub name: String,
    /// tcp, http or redirect.
    pub mode: String,
    /// Its pool.
    pub pool: String,
    /// Bound addresses.
    pub listen: Vec<String>,
    /// Connections open now.
    pub active: u64,
    /// Connections handled.
    pub total: u64,
    /// Connections closed at the service limit.
    pub rejected: u64,
    /// Connections closed for want of a backend.
    pub no_backend: u64,
    /// Accept errors.
    pub accept_errors: u64,
    /// Connections closed by a per-client limit (count or rate).
    #[serde(default)]
    pub client_limited: u64,
    /// Connections closed at the node's `global.max_conns`.
    #[serde(default)]
    pub node_limited: u64,
    /// TLS handshakes that failed or timed out.
    #[serde(default)]
    pub tls_handshake_errors: u64,
    /// HTTP requests refused with 400 as the client's error.
    #[serde(default)]
    pub bad_requests: u64,
    /// HTTP responses cut off: the client did not read within `client_timeout`.
    #[serde(default)]
    pub client_timeouts: u64,
    /// Connections refused under `accept_proxy`, by reason (`untrusted_source`,
    /// `no_header`, `malformed`, `timeout`); empty when accept_proxy is off.
    #[serde(default)]
    pub proxy_refused: std::collections::BTreeMap<String, u64>,
    /// In HTTP mode: response times of the requests its backends answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_times: Option<ResponseTimesSnapshot>,
    /// Certificates it serves (TLS services), one per name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateSnapshot>,
}

/// A name a TLS service serves and its certificate's expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSnapshot {
    /// The name (a DNS name of the certificate).
    pub name: String,
    /// Where the certificate comes from: `file` or `acme`.
    pub source: String,
    /// Its notAfter (Unix seconds).
    pub not_after: i64,
    /// Seconds from the snapshot to notAfter (negative once expired).
    pub seconds_left: i64,
}

/// Response times counted into buckets (a histogram): the time from a request's head
/// read to its backend's response head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseTimesSnapshot {
    /// Upper bounds of the buckets, in seconds.
    pub bounds_secs: Vec<f64>,
    /// Count per bucket (not cumulative), one more than `bounds_secs`: the last counts
    /// what was slower than every bound.
    pub counts: Vec<u64>,
    /// Sum of all times, in seconds.
    pub sum_secs: f64,
}

impl ResponseTimesSnapshot {
    /// Responses counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1) of the responses counted in `self` minus `before` (an
    /// earlier reading of the same counters; none: all of them), interpolated within
    /// its bucket as Prometheus's histogram_quantile does; None without responses.
    pub fn quantile_since(&self, before: Option<&ResponseTimesSnapshot>, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let was = before.and_then(|b| b.counts.get(i)).copied().unwrap_or(0);
                n.saturating_sub(was)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let low = if i == 0 { 0.0 } else { self.bounds_secs[i - 1] };
                // Above the last bound there is no upper edge: say the last bound.
                let Some(&high) = self.bounds_secs.get(i) else {
                    return Some(low);
                };
                let within = (rank - below as f64) / n as f64;
                return Some(low + (high - low) * within);
            }
            below += n;
        }
        self.bounds_secs.last().copied()
    }
}

/// One pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    /// Name.
    pub name: String,
    /// Algorithm.
    pub balance: String,
    /// Sticky entries, when sticky.
    pub sticky_entries: Option<u64>,
    /// Fallback pool.
    pub fallback: Option<String>,
    /// Backends.
    pub backends: Vec<BackendSnapshot>,
}

/// One backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    /// Address.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Backup flag.
    pub backup: bool,
    /// Connection limit (0 = none).
    pub max_conns: u32,
    /// "up", "down", "pending" (checked, but its checks have not decided yet) or
    /// "unchecked" (its pool has no check).
    pub health: String,
    /// Operator flag: false = disabled (draining).
    pub enabled: bool,
    /// Connections open now.
    pub active: u64,
    /// Connections handed to it.
    pub total: u64,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
    /// Failed connects.
    pub connect_errors: u64,
    /// The last health check.
    pub last_check: Option<CheckSnapshot>,
    /// Health checks failed so far.
    #[serde(default)]
    pub check_failures: u64,
    /// Whole days until the certificate its TLS checks saw expires (negative: expired).
    #[serde(default)]
    pub certificate_days_left: Option<i64>,
    /// Seconds since the health state last changed.
    pub health_since_secs: Option<u64>,
    /// In HTTP mode: response times of the requests it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_times: Option<ResponseTimesSnapshot>,
    /// What its agent (agent check) says, when its pool has one: the states tandem
    /// acts on ("ready", "drain", "maint", "down", a weight percentage), then the
    /// answer as read or why asking failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The last health check of a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckSnapshot {
    /// Passed or not.
    pub ok: bool,
    /// Duration in milliseconds.
    pub latency_ms: f64,
    /// Failure reason.
    pub error: String,
    /// Seconds since it ended.
    pub age_secs: u64,
}

/// Redirect services: the rules in the kernel and conntrackd's state sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedirectSnapshot {
    /// One line per service address: where new connections go.
    pub rules: Vec<String>,
    /// The same, as data.
    #[serde(default)]
    pub forwards: Vec<ForwardSnapshot>,
    /// tandem's nftables table as the kernel lists it (with counters).
    pub table: String,
    /// Connection-state sync, when it runs.
    pub conntrack: Option<ConntrackSnapshot>,
}

/// One service address forwarded by the kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardSnapshot {
    /// Service.
    pub service: String,
    /// Its address.
    pub listen: String,
    /// Backends that receive new connections now.
    pub backends: Vec<String>,
}

/// conntrackd as tandem sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackSnapshot {
    /// Answers on its control socket.
    pub running: bool,
    /// Restarts by tandem.
    pub restarts: u64,
    /// Connection states of this node known to it.
    pub internal: u64,
    /// Connection states received from the peer.
    pub external: u64,
    /// Last role tandem switched it to (master or backup).
    pub role: String,
}

/// The VRRP instances of a node, in configuration order. On the wire: `null` without
/// `[ha]`, the instance's object when there is one (the form from before there were
/// several, which scripts read), an array of them when there are several.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HaInstances(pub Vec<HaSnapshot>);

impl std::ops::Deref for HaInstances {
    type Target = [HaSnapshot];

    fn deref(&self) -> &[HaSnapshot] {
        &self.0
    }
}

impl Serialize for HaInstances {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => s.serialize_none(),
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HaInstances {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HaInstances, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            One(Box<HaSnapshot>),
            Many(Vec<HaSnapshot>),
        }
        Ok(HaInstances(match Option::<Wire>::deserialize(d)? {
            None => Vec::new(),
            Some(Wire::One(one)) => vec![*one],
            Some(Wire::Many(many)) => many,
        }))
    }
}

/// VRRP state of one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaSnapshot {
    /// Initialize, Backup or Master.
    pub state: String,
    /// Interface.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Configured priority.
    pub priority: u8,
    /// Priority after demotions.
    pub effective_priority: u8,
    /// Why the priority is lower: (reason, amount).
    pub demotions: Vec<(String, u8)>,
    /// Virtual addresses.
    pub virtual_ips: Vec<String>,
    /// The current master's address, when known.
    pub master: Option<String>,
    /// State changes since start.
    pub transitions: u64,
    /// Received packets dropped, by reason.
    pub dropped: Vec<(String, u64)>,
}

/// One sync peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    /// Peer address.
    pub address: String,
    /// Peer node name, once known.
    pub name: Option<String>,
    /// Link up.
    pub connected: bool,
    /// Bulk transfer done.
    pub synced: bool,
    /// Entries sent.
    pub sent: u64,
    /// Entries received.
    pub received: u64,
    /// Last error.
    pub last_error: Option<String>,
    /// Sync protocol version of the last session with it (0 before one).
    #[serde(default)]
    pub version: u16,
    /// Authentic frames from it that did not decode, dropped (a newer node's message).
    #[serde(default)]
    pub frames_dropped: u64,
}

/// The answer to `reload`: what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed (their connections run on).
    pub services_removed: Vec<String>,
    /// Listening addresses opened.
    pub listeners_opened: Vec<String>,
    /// Listening addresses closed.
    pub listeners_closed: Vec<String>,
    /// Settings that only a restart applies.
    pub needs_restart: Vec<String>,
}

/// The answer to `upgrade`: the new process serves; the old one drains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReply {
    /// The process that answered, now draining.
    pub old_pid: u32,
    /// The new process, now serving and answering the control socket.
    pub new_pid: u32,
    /// The binary started.
    pub binary: String,
    /// Milliseconds from the request to the new process accepting.
    pub ready_ms: u64,
    /// Listening sockets handed over.
    pub sockets: u64,
    /// Sticky pins handed over.
    pub pins: u64,
    /// Connections the old process still holds (it exits when they end, or at
    /// `drain_timeout`).
    pub draining: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: &Request, reply: Reply) -> Reply {
        let line = serde_json::to_string(&Response::ok(reply)).unwrap();
        let response: Response = serde_json::from_str(&line).unwrap();
        response.into_reply(request).unwrap()
    }

    #[test]
    fn every_reply_reads_back_as_sent() {
        let snapshot = Box::new(Snapshot {
            node: "lb1".into(),
            pools: vec![PoolSnapshot {
                name: "web".into(),
                backends: vec![BackendSnapshot {
                    address: "10.0.0.1:80".into(),
                    health: "up".into(),
                    ..BackendSnapshot::default()
                }],
                ..PoolSnapshot::default()
            }],
            ..Snapshot::default()
        });
        let backend = Request::Backend {
            action: BackendAction::Disable,
            pool: "web".into(),
            address: "10.0.0.1:80".into(),
        };
        let reload = ReloadReply {
            services_added: vec!["www".into()],
            needs_restart: vec!["ha".into()],
            ..ReloadReply::default()
        };
        for (request, reply) in [
            (Request::Status, Reply::Status(snapshot.clone())),
            (Request::Pools, Reply::Pools(snapshot.clone())),
            (
                backend,
                Reply::Backend(snapshot.pools[0].backends[0].clone()),
            ),
            (Request::Reload, Reply::Reload(reload)),
            (Request::Ha, Reply::Ha(HaInstances::default())),
            (
                Request::Ha,
                Reply::Ha(HaInstances(vec![HaSnapshot::default()])),
            ),
            (
                Request::Ha,
                Reply::Ha(HaInstances(vec![
                    HaSnapshot::default(),
                    HaSnapshot {
                        vrid: 52,
                        ..HaSnapshot::default()
                    },
                ])),
            ),
            (Request::Redirect, Reply::Redirect(None)),
            (
                Request::Redirect,
                Reply::Redirect(Some(Box::new(RedirectSnapshot::default()))),
            ),
            (
                Request::BackendAdd {
                    pool: "web".into(),
                    address: "10.0.0.2:80".into(),
                    weight: Some(3),
                    backup: false,
                    max_conns: 0,
                },
                Reply::BackendChange(BackendChangeReply {
                    pool: "web".into(),
                    change: "added".into(),
                    backend: Some(snapshot.pools[0].backends[0].clone()),
                    ..BackendChangeReply::default()
                }),
            ),
            (
                Request::StickyShow {
                    filter: StickyFilter::default(),
                },
                Reply::Sticky(vec![StickySnapshot::default()]),
            ),
            (
                Request::StickyClear {
                    filter: StickyFilter {
                        client: Some("192.0.2.1".into()),
                        ..StickyFilter::default()
                    },
                },
                Reply::StickyCleared(StickyClearReply {
                    cleared: 1,
                    synced: true,
                }),
            ),
            (
                Request::Connections { service: None },
                Reply::Connections(vec![ConnectionSnapshot::default()]),
            ),
            (
                Request::ConnectionClose { id: 7 },
                Reply::ConnectionClosed(ConnectionSnapshot::default()),
            ),
            (Request::Monitor, Reply::Monitor(Vec::new())),
            (
                Request::HaDemote,
                Reply::HaMaintenance(HaInstances::default()),
            ),
            (
                Request::Upgrade { binary: None },
                Reply::Upgrade(UpgradeReply {
                    old_pid: 7,
                    new_pid: 8,
                    ready_ms: 40,
                    ..UpgradeReply::default()
                }),
            ),
        ] {
            assert_eq!(round_trip(&request, reply.clone()), reply);
        }
    }

    #[test]
    fn the_wire_form_stays_what_scripts_read() {
        let line = serde_json::to_string(&Response::ok(Reply::Reload(ReloadReply {
            listeners_opened: vec!["127.0.0.1:8080".into()],
            ..ReloadReply::default()
        })))
        .unwrap();
        assert_eq!(
            line,
            r#"{"ok":true,"data":{"listeners_closed":[],"listeners_opened":["127.0.0.1:8080"],"needs_restart":[],"services_added":[],"services_removed":[]}}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok(Reply::Ha(HaInstances::default()))).unwrap(),
            r#"{"ok":true}"#
        );
        // One instance: the object itself, as before several instances existed.
        let one = HaSnapshot {
            state: "Master".into(),
            vrid: 51,
            ..HaSnapshot::default()
        };
        let line = serde_json::to_string(&Response::ok(Reply::Ha(HaInstances(vec![one.clone()]))))
            .unwrap();
        assert!(
            line.starts_with(r#"{"ok":true,"data":{"demotions":[],"#)
                && line.contains(r#""vrid":51}"#),
            "{line}"
        );
        let two = serde_json::to_string(&Response::ok(Reply::Ha(HaInstances(vec![
            one.clone(),
            one,
        ]))))
        .unwrap();
        assert!(
            two.starts_with(r#"{"ok":true,"data":[{"demotions":[],"#) && two.ends_with("}]}"),
            "{two}"
        );
        assert_eq!(
            serde_json::to_string(&Response::error("no pool is named \"x\"")).unwrap(),
            r#"{"ok":false,"error":"no pool is named \"x\""}"#
        );
    }

    #[test]
    fn an_answer_that_does_not_fit_its_request_is_an_error_naming_both() {
        let response: Response =
            serde_json::from_str(r#"{"ok":true,"data":{"node":5,"pools":[]}}"#).unwrap();
        let e = response.into_reply(&Request::Status).unwrap_err();
        assert!(
            matches!(
                e,
                ReplyError::Unreadable {
                    request: "status",
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("cannot read tandem's answer to `status`: "),
            "{text}"
        );
        let backend = Request::Backend {
            action: BackendAction::Enable,
            pool: "p".into(),
            address: "10.0.0.1:80".into(),
        };
        let empty: Response = serde_json::from_str(r#"{"ok":true}"#).unwrap();
        assert!(matches!(
            empty.into_reply(&backend),
            Err(ReplyError::Unreadable {
                request: "backend",
                ..
            })
        ));
    }

    #[test]
    fn new_requests_read_as_scripts_write_them() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"sticky-clear","client":"192.0.2.1","pool":"web"}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::StickyClear {
                filter: StickyFilter {
                    pool: Some("web".into()),
                    client: Some("192.0.2.1".into()),
                    backend: None,
                }
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"backend-add","pool":"web","address":"10.0.0.9:80"}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::BackendAdd {
                weight: None,
                backup: false,
                max_conns: 0,
                ..
            }
        ));
        assert_eq!(
            serde_json::to_string(&Request::HaDemote).unwrap(),
            r#"{"cmd":"ha-demote"}"#
        );
    }

    #[test]
    fn a_refusal_keeps_its_reason() {
        let e = Response::error("pool p has no backend 10.9.9.9:1")
            .into_reply(&Request::Pools)
            .unwrap_err();
        assert_eq!(e.to_string(), "pool p has no backend 10.9.9.9:1");
    }
}

#[cfg(test)]
mod quantile_tests {
    use super::ResponseTimesSnapshot;

    fn times(counts: &[u64]) -> ResponseTimesSnapshot {
        ResponseTimesSnapshot {
            bounds_secs: vec![0.01, 0.1, 1.0],
            counts: counts.to_vec(),
            sum_secs: 0.0,
        }
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let t = times(&[50, 40, 10, 0]);
        assert_eq!(t.quantile_since(None, 0.5), Some(0.01));
        let p99 = t.quantile_since(None, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        assert_eq!(times(&[0, 0, 0, 0]).quantile_since(None, 0.5), None);
        assert_eq!(times(&[0, 0, 0, 3]).quantile_since(None, 0.5), Some(1.0));
    }

    #[test]
    fn a_quantile_since_an_earlier_reading_counts_only_what_came_after() {
        let before = times(&[100, 0, 0, 0]);
        let now = times(&[100, 0, 10, 0]);
        let p50 = now.quantile_since(Some(&before), 0.5).unwrap();
        assert!((0.1..=1.0).contains(&p50), "{p50}");
        assert_eq!(now.quantile_since(Some(&now), 0.5), None);
    }
}

/// Route announcement (`[announce]`): what this node announces through its BGP
/// speaker, and why the rest is withdrawn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceSnapshot {
    /// The interface the speaker exports (tandem's TUN device).
    pub interface: String,
    /// The readiness gate opened (sync bulk table in, checks decided).
    pub ready: bool,
    /// The operator withdrew the node (`tandem ctl announce withdraw`).
    pub operator_withdrawn: bool,
    /// tandem is stopping.
    pub stopping: bool,
    /// Every address.
    pub addresses: Vec<AnnouncedAddress>,
    /// The last failure to change the interface, if the last try failed.
    pub last_error: Option<String>,
}

/// One announced (or withdrawn) address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedAddress {
    /// The address.
    pub address: String,
    /// Announced now.
    pub announced: bool,
    /// Why: "serving", or why it is withdrawn.
    pub reason: String,
    /// The pools behind it.
    pub pools: Vec<String>,
    /// Seconds in this state.
    pub for_secs: u64,
}
