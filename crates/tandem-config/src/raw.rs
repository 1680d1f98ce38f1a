//! The file as written: serde structs that keep the source span of every value that
//! semantic validation may need to point at. Nothing here is checked beyond types.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub pool: Vec<S<RawPool>>,
    #[serde(default)]
    pub service: Vec<S<RawService>>,
    pub ha: Option<S<RawHa>>,
    pub sync: Option<S<RawSync>>,
    pub announce: Option<S<RawAnnounce>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGlobal {
    pub name: Option<S<String>>,
    pub control_socket: Option<S<String>>,
    pub admin_listen: Option<S<String>>,
    pub admin_write: Option<S<bool>>,
    pub admin_allow: Option<S<Vec<S<String>>>>,
    pub log_format: Option<S<crate::LogFormat>>,
    pub drain_timeout: Option<S<String>>,
    pub threads: Option<S<i64>>,
    pub max_conns: Option<S<i64>>,
    pub user: Option<S<String>>,
    pub group: Option<S<String>>,
    pub state_dir: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: S<String>,
    pub balance: Option<S<crate::Balance>>,
    pub backends: S<Vec<S<RawBackend>>>,
    pub sticky: Option<S<RawSticky>>,
    pub fallback: Option<S<String>>,
    pub check: Option<S<RawCheck>>,
    pub agent: Option<S<RawAgent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub port: S<i64>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub send: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub address: S<String>,
    pub weight: Option<S<i64>>,
    pub max_conns: Option<S<i64>>,
    #[serde(default)]
    pub backup: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub key: S<crate::StickyKey>,
    pub ttl: Option<S<String>>,
    pub cookie: Option<S<String>>,
    pub max_entries: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    #[serde(rename = "type")]
    pub kind: S<crate::CheckKind>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub initial: Option<S<crate::InitialHealth>>,
    pub path: Option<S<String>>,
    pub host: Option<S<String>>,
    pub expect_status: Option<S<Vec<S<i64>>>>,
    pub expect_body: Option<S<String>>,
    pub send: Option<S<String>>,
    /// A regex, or a list of steps (read from the value: spans do not survive
    /// an untagged enum).
    pub expect: Option<S<toml::Value>>,
    pub quit: Option<S<String>>,
    pub command: Option<S<String>>,
    pub verify: Option<S<bool>>,
    pub ca_file: Option<S<String>>,
    pub send_proxy: Option<S<bool>>,
    pub warn_expiry: Option<S<String>>,
}

/// One step of a multi-step send-expect check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub send: Option<String>,
    pub expect: String,
    #[serde(default)]
    pub starttls: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: S<String>,
    pub listen: S<Vec<S<String>>>,
    pub mode: Option<S<crate::Mode>>,
    pub pool: S<String>,
    pub connect_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub max_conns: Option<S<i64>>,
    pub proxy_protocol: Option<S<crate::ProxyProtocol>>,
    pub tls: Option<S<RawTls>>,
    pub http: Option<S<RawHttp>>,
    pub return_path: Option<S<crate::ReturnPath>>,
    pub max_conns_per_client: Option<S<i64>>,
    pub rate_per_client: Option<S<i64>>,
    pub accept_proxy: Option<S<bool>>,
    pub accept_proxy_from: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub route: Vec<S<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub method: Option<S<Vec<S<String>>>>,
    pub header: Option<S<RawHeaderMatch>>,
    pub sni: Option<S<String>>,
    pub pool: Option<S<String>>,
    pub redirect: Option<S<RawRedirect>>,
    pub respond: Option<S<RawRespond>>,
    pub hsts: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    pub name: S<String>,
    pub value: Option<S<String>>,
    pub prefix: Option<S<String>>,
    pub present: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub status: Option<S<i64>>,
    pub location: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub status: Option<S<i64>>,
    pub body: Option<S<String>>,
    pub content_type: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub header_timeout: Option<S<String>>,
    pub max_header_size: Option<S<i64>>,
    pub response_timeout: Option<S<String>>,
    pub client_timeout: Option<S<String>>,
    pub max_requests_per_connection: Option<S<i64>>,
    pub backend_idle_timeout: Option<S<String>>,
    pub backend_max_idle: Option<S<i64>>,
    pub via: Option<bool>,
    pub backend_tls: Option<bool>,
    pub backend_verify: Option<S<bool>>,
    pub backend_ca_file: Option<S<String>>,
    pub request_headers: Option<S<RawHeaderRules>>,
    pub response_headers: Option<S<RawHeaderRules>>,
    pub hsts: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRules {
    #[serde(default)]
    pub set: std::collections::BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub add: std::collections::BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub remove: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub certs: Option<Vec<S<RawCertPair>>>,
    pub acme: Option<S<RawAcme>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub directory: S<String>,
    pub contact: Option<Vec<S<String>>>,
    pub domains: Vec<S<String>>,
    pub challenge: Option<S<String>>,
    pub ca_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub cert: S<String>,
    pub key: S<String>,
}

/// `[ha]` and each `[[ha.instance]]`: one VRRP instance. The keys an instance needs
/// are optional here so that `[ha]` may instead hold only `[[ha.instance]]` tables;
/// validation asks for them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHa {
    pub interface: Option<S<String>>,
    pub vrid: Option<S<i64>>,
    pub priority: Option<S<i64>>,
    pub advert_interval: Option<S<String>>,
    pub preempt: Option<S<bool>>,
    pub preempt_delay: Option<S<String>>,
    pub virtual_ips: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub unicast_peers: Vec<S<String>>,
    #[serde(default)]
    pub track_pools: std::collections::BTreeMap<S<String>, S<i64>>,
    pub notify: Option<S<String>>,
    pub checksum_pseudo_header: Option<S<bool>>,
    #[serde(default)]
    pub group: Vec<S<RawHaGroup>>,
    pub garp_refresh: Option<S<String>>,
    /// `[[ha.instance]]`: several instances (then `[ha]` holds nothing else).
    #[serde(default)]
    pub instance: Vec<S<RawHa>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHaGroup {
    pub interface: S<String>,
    pub virtual_ips: S<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    pub listen: S<String>,
    #[serde(default)]
    pub peers: Vec<S<String>>,
    pub key_file: S<String>,
    pub conntrack_port: Option<S<i64>>,
    pub conntrackd: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnnounce {
    pub interface: Option<S<String>>,
    pub addresses: Option<S<Vec<S<String>>>>,
    pub withdraw_when: Option<S<crate::WithdrawWhen>>,
    pub withdraw_delay: Option<S<String>>,
    pub announce_delay: Option<S<String>>,
    pub stop_delay: Option<S<String>>,
}
