//! tandem's configuration: the TOML schema of docs/configuration.md, its defaults and
//! its validation.
//!
//! Text enters through [`Config::load`] or [`Config::parse`]; what leaves is either a
//! fully validated [`Config`] of plain Rust types (durations, socket addresses, paths
//! resolved against the file's folder) or a [`ConfigErrors`] that lists *every*
//! semantic error found, each with `file:line:col`, the key, what is wrong and a hint.
//! This crate does no networking and acts on nothing: it only reads files that the
//! configuration names (TLS material, keys) to prove they are readable.

mod error;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use error::{ConfigErrors, Diagnostic};

/// `global.control_socket` when the file names none; `tandem ctl --socket` defaults to
/// it too.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tandem/tandem.sock";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Node-wide settings.
    pub global: Global,
    /// Backend pools, in file order.
    pub pools: Vec<Pool>,
    /// Front-end services, in file order.
    pub services: Vec<Service>,
    /// VRRPv3 instances: none without `[ha]`, one for `[ha]` with its own keys, one
    /// per `[[ha.instance]]` otherwise, in file order.
    pub ha: Vec<Ha>,
    /// State synchronisation between nodes, when configured.
    pub sync: Option<Sync>,
    /// Route announcement through the node's BGP speaker, when configured.
    pub announce: Option<Announce>,
    /// What is allowed but probably not meant, each located like an error.
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(
                path.display().to_string(),
                Diagnostic::new("", format!("cannot read the file: {e}"))
                    .hint("check the path given with --config"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// Validates `text`; `origin` names it in errors, relative paths resolve against `base_dir`.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, origin, base_dir)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Whether any service forwards in the kernel (`mode = "redirect"`).
    pub fn has_redirect(&self) -> bool {
        self.services.iter().any(|s| s.mode == Mode::Redirect)
    }
}

/// Node-wide settings (`[global]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Node name, default: the host name.
    pub name: String,
    /// Unix socket of `tandem ctl`.
    pub control_socket: PathBuf,
    /// Optional admin HTTP address (metrics, status page).
    pub admin_listen: Option<SocketAddr>,
    /// Whether the status page may drain and enable backends (`admin_write`).
    pub admin_write: bool,
    /// Clients that may act from the status page when `admin_write` is on:
    /// (network, prefix length); default loopback only.
    pub admin_allow: Vec<(IpAddr, u8)>,
    /// Log line format.
    pub log_format: LogFormat,
    /// How long established connections may run on after SIGTERM.
    pub drain_timeout: Duration,
    /// Worker threads of the data plane (0 = one per CPU).
    pub threads: usize,
    /// Connections open at once on the whole node (0 = half the open-files limit).
    pub max_conns: u32,
    /// User to run as once listeners and raw sockets are open.
    pub user: Option<String>,
    /// Group to run as (default: the user's own).
    pub group: Option<String>,
    /// Folder of the state that outlives a restart (the sticky tables); none: kept
    /// in memory only.
    pub state_dir: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A pool of backend servers (`[[pool]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// Selection algorithm.
    pub balance: Balance,
    /// Servers, at least one.
    pub backends: Vec<BackendConfig>,
    /// Sticky connections, when configured.
    pub sticky: Option<Sticky>,
    /// Pool used when this one has no usable backend.
    pub fallback: Option<String>,
    /// Health check, when configured (no check: always up).
    pub check: Option<Check>,
    /// Agent check, in addition to the health check: each backend's agent says
    /// up/down/drain/maint or a weight percentage (HAProxy's agent-check protocol).
    pub agent: Option<AgentCheck>,
}

/// An agent check (`agent = { port = .. }` of a pool): every `interval` tandem
/// connects to the backend's address on `port`, sends `send` (if any), reads the
/// agent's one-line answer until it closes, and acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCheck {
    /// The agent's TCP port, on each backend's address.
    pub port: u16,
    /// Time between two asks of one backend's agent.
    pub interval: Duration,
    /// Time one ask may take.
    pub timeout: Duration,
    /// Bytes sent once connected (HAProxy's agent-send), none by default.
    pub send: Option<String>,
}

impl AgentCheck {
    /// Default interval between two asks.
    pub const INTERVAL: Duration = Duration::from_secs(2);
    /// Default time an ask may take.
    pub const TIMEOUT: Duration = Duration::from_secs(1);
}

/// Backend selection algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Power of two random choices.
    Random,
    /// Hash of the client address.
    SourceHash,
    /// Maglev consistent hashing of the client address.
    Maglev,
}

impl Balance {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Random => "random",
            Balance::SourceHash => "source-hash",
            Balance::Maglev => "maglev",
        }
    }
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of new connections, 1..=256.
    pub weight: u32,
    /// Connection limit, 0 = unlimited.
    pub max_conns: u32,
    /// Used only when no primary backend is usable.
    pub backup: bool,
}

/// Sticky-connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    /// What identifies a client.
    pub key: StickyKey,
    /// Idle lifetime of an entry.
    pub ttl: Duration,
    /// Cookie name (key = "cookie").
    pub cookie: String,
    /// Upper bound of the table's size.
    pub max_entries: usize,
}

/// What identifies a sticky client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StickyKey {
    /// The client's source address.
    SourceIp,
    /// A cookie inserted by tandem (http mode).
    Cookie,
}

/// A health check (`[pool.check]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Check type.
    pub kind: CheckKind,
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
    /// State of a backend before its first checks.
    pub initial: InitialHealth,
    /// HTTP path.
    pub path: String,
    /// HTTP Host header, default: the backend's address.
    pub host: Option<String>,
    /// Accepted statuses, empty = any 2xx or 3xx.
    pub expect_status: Vec<u16>,
    /// Substring the body must contain.
    pub expect_body: Option<String>,
    /// The conversation of a send-expect check, in order (at least one step).
    pub steps: Vec<Step>,
    /// Bytes sent after a successful match (send-expect).
    pub quit: Option<String>,
    /// Program run by a script check.
    pub command: Option<PathBuf>,
    /// Verify the backend's certificate (tls/https).
    pub verify: bool,
    /// CA bundle used when verify is on.
    pub ca_file: Option<PathBuf>,
    /// PROXY header sent first on every check connection (a LOCAL one: the backend
    /// takes the check's own address). By default what the pool's services send.
    pub send_proxy: ProxyProtocol,
    /// A certificate that expires within this long is logged (tls, https, STARTTLS).
    pub warn_expiry: Option<Duration>,
}

/// One step of a send-expect conversation: send, read the answer, match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes sent first, if any.
    pub send: Option<String>,
    /// Regex (multi-line mode) the whole answer must match.
    pub expect: String,
    /// After a matching answer, continue the conversation over TLS.
    pub starttls: bool,
}

impl Check {
    /// Whether the check reads a certificate: tls and https checks, and send-expect
    /// checks with a STARTTLS step.
    pub fn uses_tls(&self) -> bool {
        matches!(self.kind, CheckKind::Tls | CheckKind::Https)
            || self.steps.iter().any(|s| s.starttls)
    }

    /// A check of `kind` with every default of the configuration reference.
    pub fn new(kind: CheckKind) -> Check {
        Check {
            kind,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            initial: InitialHealth::Down,
            path: "/".to_string(),
            host: None,
            expect_status: Vec::new(),
            expect_body: None,
            steps: Vec::new(),
            quit: None,
            command: None,
            verify: false,
            ca_file: None,
            send_proxy: ProxyProtocol::None,
            warn_expiry: None,
        }
    }
}

/// Health check type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// TCP connect and TLS handshake.
    Tls,
    /// HTTP GET.
    Http,
    /// HTTP GET over TLS.
    Https,
    /// Line protocols (SMTP, IMAP, POP3): steps of send, then a regex on the answer.
    SendExpect,
    /// An external program.
    Script,
}

/// Health state of a backend before its first checks (default: [`Check::new`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialHealth {
    /// Down until `rise` checks pass.
    Down,
    /// Up until `fall` checks fail.
    Up,
}

/// A front-end service (`[[service]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Addresses to accept on.
    pub listen: Vec<SocketAddr>,
    /// How connections are handled.
    pub mode: Mode,
    /// Pool that serves it.
    pub pool: String,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Other backends tried when a connect fails.
    pub retries: u32,
    /// Concurrent connection limit, 0 = unlimited.
    pub max_conns: u32,
    /// PROXY protocol header sent to backends.
    pub proxy_protocol: ProxyProtocol,
    /// TLS termination (tcp and http modes).
    pub tls: Option<Tls>,
    /// HTTP settings (http mode).
    pub http: Http,
    /// Return path of the backends' replies (redirect mode).
    pub return_path: ReturnPath,
    /// Connections open at once per client address (0 = no limit).
    pub max_conns_per_client: u32,
    /// New connections per second per client address (0 = no limit).
    pub rate_per_client: u32,
    /// Every connection must come from `accept_proxy_from` and begin with a PROXY
    /// header (v1 or v2), whose client address then stands for the peer's.
    pub accept_proxy: bool,
    /// Sources trusted to send PROXY headers: networks as (address, prefix length).
    pub accept_proxy_from: Vec<(IpAddr, u8)>,
    /// Routes (`[[service.route]]`), tried in order; a request or connection that
    /// none matches goes to `pool`.
    pub routes: Vec<Route>,
}

/// One route of a service (`[[service.route]]`): conditions, all of which must hold,
/// and what to do with what matches them. A route without conditions matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The request's Host, port left out (http mode).
    pub host: Option<NamePattern>,
    /// A prefix of the request-target, as sent (http mode).
    pub path_prefix: Option<String>,
    /// Methods, any of which matches (http mode); empty: any method.
    pub methods: Vec<String>,
    /// A request header (http mode).
    pub header: Option<HeaderMatch>,
    /// The server name of the TLS ClientHello (tcp mode, TLS passthrough).
    pub sni: Option<NamePattern>,
    /// What a match leads to.
    pub action: RouteAction,
    /// Strict-Transport-Security value of the responses relayed for this route, over
    /// TLS only (`hsts`, http mode), replacing the service's `http.hsts`.
    pub hsts: Option<String>,
}

/// A host or server name to match, lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// This name only.
    Exact(String),
    /// `*.example.org`: any name ending in `.example.org` (kept with its leading dot),
    /// however many labels come before it, but not `example.org` itself.
    Suffix(String),
}

/// A request header to match: present, equal to a value, or starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Field name (compared ignoring case).
    pub name: String,
    /// What its value must be (any field of that name may match).
    pub test: HeaderTest,
}

/// The test of a [`HeaderMatch`] on a field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    /// The field is there, whatever its value.
    Present,
    /// The value equals this (exactly, case and all).
    Equals(String),
    /// The value starts with this.
    Prefix(String),
}

/// What a route does with a request or connection it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to the pool of this name.
    Pool(String),
    /// Answer with a redirect (http mode).
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: u16,
        /// The Location template: `{host}` (the request's host, without port),
        /// `{path}` (the path, without query), `{query}` (`?` and the query, or
        /// nothing) and `{uri}` (path and query) are filled in.
        location: String,
    },
    /// Answer with a fixed response (http mode).
    Respond {
        /// 200..=599.
        status: u16,
        /// The body.
        body: String,
        /// Its Content-Type.
        content_type: String,
    },
}

impl NamePattern {
    /// Whether `name` (lower case, no port, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
        }
    }

    /// Whether every name `other` matches, this matches too.
    pub fn covers(&self, other: &NamePattern) -> bool {
        match (self, other) {
            (NamePattern::Exact(a), NamePattern::Exact(b)) => a == b,
            (NamePattern::Suffix(_), NamePattern::Exact(b)) => self.matches(b),
            (NamePattern::Suffix(a), NamePattern::Suffix(b)) => b.ends_with(a.as_str()),
            (NamePattern::Exact(_), NamePattern::Suffix(_)) => false,
        }
    }
}

impl HeaderTest {
    /// Whether every value `other` accepts, this accepts too.
    pub fn covers(&self, other: &HeaderTest) -> bool {
        match (self, other) {
            (HeaderTest::Present, _) => true,
            (HeaderTest::Equals(a), HeaderTest::Equals(b)) => a == b,
            (HeaderTest::Prefix(p), HeaderTest::Equals(v) | HeaderTest::Prefix(v)) => {
                v.starts_with(p.as_str())
            }
            _ => false,
        }
    }
}

impl Route {
    /// Whether this route matches everything `later` matches (so that `later`, after
    /// it, is never used).
    pub fn covers(&self, later: &Route) -> bool {
        fn name(a: &Option<NamePattern>, b: &Option<NamePattern>) -> bool {
            match (a, b) {
                (None, _) => true,
                (Some(a), Some(b)) => a.covers(b),
                (Some(_), None) => false,
            }
        }
        let path = match (&self.path_prefix, &later.path_prefix) {
            (None, _) => true,
            (Some(a), Some(b)) => b.starts_with(a.as_str()),
            (Some(_), None) => false,
        };
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| self.methods.contains(m)));
        let header = match (&self.header, &later.header) {
            (None, _) => true,
            (Some(a), Some(b)) => a.name.eq_ignore_ascii_case(&b.name) && a.test.covers(&b.test),
            (Some(_), None) => false,
        };
        name(&self.host, &later.host) && name(&self.sni, &later.sni) && path && methods && header
    }
}

impl Service {
    /// The pools the service forwards to: its own, then its routes', in order.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.pool.as_str()).chain(self.routes.iter().filter_map(
            |r| match &r.action {
                RouteAction::Pool(p) => Some(p.as_str()),
                _ => None,
            },
        ))
    }
}

/// HTTP mode settings (`[service.http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    /// Time a client has to send a request's headers (slowloris defence).
    pub header_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_size: usize,
    /// Time a backend has to start its response.
    pub response_timeout: Duration,
    /// Time a client has to take each part of a response tandem writes to it (a
    /// reader slower than that is cut off and its backend connection released).
    pub client_timeout: Duration,
    /// Requests served on one client connection before it is closed (0 = no limit).
    pub max_requests_per_connection: u32,
    /// Idle connections to a backend are closed after this long.
    pub backend_idle_timeout: Duration,
    /// Idle connections kept per backend.
    pub backend_max_idle: usize,
    /// Add a `Via` header.
    pub via: bool,
    /// Speak TLS to the backends.
    pub backend_tls: bool,
    /// Verify the backends' certificates against `backend_ca_file`.
    pub backend_verify: bool,
    /// CA bundle for `backend_verify`.
    pub backend_ca_file: Option<PathBuf>,
    /// Rules applied to requests before they go to the backend.
    pub request_headers: HeaderRules,
    /// Rules applied to responses before they go to the client.
    pub response_headers: HeaderRules,
    /// The Strict-Transport-Security value added to responses over TLS.
    pub hsts: Option<String>,
}

impl Default for Http {
    fn default() -> Http {
        Http {
            header_timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            response_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            max_requests_per_connection: 1000,
            backend_idle_timeout: Duration::from_secs(90),
            backend_max_idle: 32,
            via: false,
            backend_tls: false,
            backend_verify: false,
            backend_ca_file: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            hsts: None,
        }
    }
}

/// Header changes: `remove` first, then `set` (replace), then `add` (append).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Headers set to a value, replacing any.
    pub set: Vec<(String, String)>,
    /// Headers appended.
    pub add: Vec<(String, String)>,
    /// Headers removed.
    pub remove: Vec<String>,
}

/// How the backends' replies of a redirect service find their way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReturnPath {
    /// The backends route through a virtual address of `[[ha.group]]`.
    #[default]
    Vip,
    /// The balancer rewrites the source (masquerade): backends see its address.
    Snat,
    /// The balancer is the backends' gateway by its own network configuration.
    Static,
}

/// How a service handles connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Byte relay.
    #[default]
    Tcp,
    /// HTTP reverse proxy.
    Http,
    /// Kernel DNAT.
    Redirect,
}

impl Mode {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
            Mode::Redirect => "redirect",
        }
    }
}

/// PROXY protocol header version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocol {
    /// No header.
    #[default]
    None,
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// TLS termination settings: one or more certificate/key pairs, chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Certificate chain and key files; the first is the default.
    pub certs: Vec<CertPair>,
    /// Certificates ordered by ACME (`tls.acme`), beside or instead of `certs`.
    pub acme: Option<Acme>,
}

/// `tls.acme`: names whose certificates tandem orders from an ACME CA (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL (https).
    pub directory: String,
    /// Contact URLs of the account (`mailto:...`).
    pub contact: Vec<String>,
    /// The names of the certificate (its first is the subject), lower case.
    pub domains: Vec<String>,
    /// How the CA validates the names.
    pub challenge: AcmeChallenge,
    /// Trust anchors for the directory's HTTPS (default: the system's bundle).
    pub ca_file: PathBuf,
}

/// The ACME challenge type tandem answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    /// HTTP-01: `/.well-known/acme-challenge/TOKEN` on port 80 (any HTTP service).
    #[default]
    Http01,
    /// TLS-ALPN-01: a handshake with ALPN `acme-tls/1` on port 443 (this service).
    TlsAlpn01,
}

/// The CA bundle `tls.acme.ca_file` defaults to (Debian's).
pub const DEFAULT_ACME_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A certificate chain file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One VRRPv3 instance (`[ha]` or a `[[ha.instance]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ha {
    /// Interface VRRP runs on.
    pub interface: String,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Priority, 1..=255 (255 = address owner).
    pub priority: u8,
    /// Advertisement interval, 10 ms .. 40.95 s in centiseconds.
    pub advert_interval: Duration,
    /// Take master back from a lower-priority node.
    pub preempt: bool,
    /// Wait this long before preempting.
    pub preempt_delay: Duration,
    /// Addresses held by the master, with prefix length.
    pub virtual_ips: Vec<(IpAddr, u8)>,
    /// Peers to advertise to by unicast instead of multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// Priority demotion while a pool has no healthy backend.
    pub track_pools: BTreeMap<String, u8>,
    /// Program run with the new state as argument.
    pub notify: Option<PathBuf>,
    /// Whether the IPv4 VRRP checksum covers the pseudo-header (keepalived: yes).
    pub checksum_pseudo_header: bool,
    /// Addresses on other interfaces that move with `virtual_ips` (one election): the
    /// backends' gateway on the private network for redirect services.
    pub group: Vec<HaGroup>,
    /// While master, announce the virtual addresses again at this interval
    /// (gratuitous ARP); none: only on takeover and after a healed split brain.
    pub garp_refresh: Option<Duration>,
}

impl Ha {
    /// Whether `ip` is one of the instance's virtual addresses (groups included).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.virtual_ips
            .iter()
            .chain(self.group.iter().flat_map(|g| &g.virtual_ips))
            .any(|(a, _)| *a == ip)
    }
}

/// Virtual addresses on another interface that follow the master (`[[ha.group]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HaGroup {
    /// Interface that holds them.
    pub interface: String,
    /// Addresses with prefix length.
    pub virtual_ips: Vec<(IpAddr, u8)>,
}

/// State sync settings (`[sync]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sync {
    /// Address of the sync listener.
    pub listen: SocketAddr,
    /// Peers' sync addresses.
    pub peers: Vec<SocketAddr>,
    /// Shared secret file.
    pub key_file: PathBuf,
    /// UDP port of conntrackd's state sync (redirect services), on the `listen` address.
    pub conntrack_port: u16,
    /// The conntrackd program (a path, or a name looked up in PATH).
    pub conntrackd: PathBuf,
}

/// Route announcement (`[announce]`): the service addresses this node announces
/// through the BGP speaker on the node (BIRD), by holding them on an interface of
/// tandem's own that the speaker exports.
#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    /// The TUN device tandem creates and holds (it goes when tandem goes).
    pub interface: String,
    /// The addresses announced (each as /32 or /128): those listed, or every specific
    /// address a service listens on.
    pub addresses: Vec<IpAddr>,
    /// Which pool failures withdraw an address.
    pub withdraw_when: WithdrawWhen,
    /// How long the pools must have failed before the withdraw.
    pub withdraw_delay: Duration,
    /// How long the pools must have served again before an address withdrawn for
    /// their health is announced again.
    pub announce_delay: Duration,
    /// On SIGTERM: how long tandem keeps accepting after withdrawing, while the
    /// routers move new flows to the other nodes, before it drains.
    pub stop_delay: Duration,
}

/// Which pool failures withdraw an announced address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WithdrawWhen {
    /// No pool behind the address has a healthy backend: it serves nothing.
    #[default]
    NoHealthyBackend,
    /// Any pool behind the address has no healthy backend.
    AnyPoolDown,
    /// Never for health: only the operator, a stop or tandem's death withdraw.
    Never,
}

/// The name of the announcement interface when the file names none.
pub const DEFAULT_ANNOUNCE_INTERFACE: &str = "tdm-ann0";

/// Parses a duration written as "150ms", "2s", "5m" or "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| e.to_string())
}
