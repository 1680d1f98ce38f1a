//! From raw TOML to a validated [`Config`], collecting every error on the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ConfigErrors, Diagnostic};
use crate::raw::{self, S};
use crate::*;

mod announce;

/// Largest accepted backend weight (as HAProxy).
pub const MAX_WEIGHT: i64 = 256;
/// `ha.priority` when the file names none (or an unusable one).
const DEFAULT_PRIORITY: u8 = 100;
/// `sync.conntrack_port` when the file names none (or an unusable one).
const DEFAULT_CONNTRACK_PORT: u16 = 3780;

/// `global.admin_allow` when unset: this host only.
fn default_admin_allow() -> Vec<(IpAddr, u8)> {
    vec![
        (IpAddr::from([127, 0, 0, 0]), 8),
        (IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
    ]
}

pub(crate) fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let d = syntax_diagnostic(text, &e);
            return Err(ConfigErrors::locate(origin, text, vec![d]));
        }
    };
    let mut v = Validator {
        diags: Vec::new(),
        warnings: Vec::new(),
        base_dir,
    };
    let mut config = v.config(raw);
    if v.diags.is_empty() {
        config.warnings = ConfigErrors::locate(origin, text, v.warnings).diagnostics;
        Ok(config)
    } else {
        Err(ConfigErrors::locate(origin, text, v.diags))
    }
}

/// Turns a serde/TOML error into a diagnostic, guessing the key from the source line.
fn syntax_diagnostic(text: &str, e: &toml::de::Error) -> Diagnostic {
    let message = e.message().trim().to_string();
    let span = e.span();
    let key = span
        .as_ref()
        .map(|s| {
            key_at(
                text,
                s.start,
                s.end,
                message.starts_with("unknown field") || message.contains("duplicate key"),
            )
        })
        .unwrap_or_default();
    let variant_hint;
    let hint = if message.starts_with("unknown field") {
        "check the spelling; docs/configuration.md lists every key"
    } else if message.starts_with("unknown variant") {
        variant_hint = unknown_variant_hint(&key, &message);
        &variant_hint
    } else if message.starts_with("missing field") {
        "this key is required here"
    } else if message.starts_with("invalid type") {
        "strings go in quotes, numbers and booleans without"
    } else if message.contains("duplicate key") {
        "each key may appear once per table"
    } else {
        "check the TOML syntax here"
    };
    // A required key is missing from the table whose header the span points at.
    let key = match message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        Some(field) if !key.is_empty() && !key.ends_with(&format!(".{field}")) => {
            format!("{key}.{field}")
        }
        _ => key,
    };
    let mut d = Diagnostic::new(key, message).hint(hint);
    if let Some(span) = span {
        d = d.at(span);
    }
    d
}

/// The hint for serde's "unknown variant `X`, expected one of `A`, `B`": the listed
/// value `X` is a typo of, when one is close; for a check `type` that is (nearly)
/// "agent", where the agent check goes (a key of the pool beside `check`).
fn unknown_variant_hint(key: &str, message: &str) -> String {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let Some(given) = quoted.next() else {
        return "use one of the values listed".into();
    };
    if key.ends_with("check.type") && strsim::levenshtein(given, "agent") <= 2 {
        return "the agent check is not a check type: write `agent = { port = N }` beside `check` in the pool (docs/configuration.md, `agent`)".into();
    }
    match quoted
        .map(|v| (strsim::levenshtein(given, v), v))
        .filter(|(d, v)| *d <= 2 && *d < v.len())
        .min_by_key(|(d, _)| *d)
    {
        Some((_, close)) => format!("use one of the values listed: did you mean `{close}`?"),
        None => "use one of the values listed".into(),
    }
}

/// The dotted key for the value or key at `start..end`: the nearest `[section]` header
/// above it, the key of an enclosing inline table or array (`backends = [{ ... }]`),
/// then the `name =` that precedes it on its line, or the spanned word itself when
/// `names_key` says the span is a key (unknown or duplicate keys).
fn key_at(text: &str, start: usize, end: usize, names_key: bool) -> String {
    // Spans may point inside a multi-byte character (found by the fuzzer): round down.
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let (start, end) = (floor(start), floor(end.max(start)));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    // A span in a table header (`[[service.rout]]`, `[[pool]]` missing a key): the path
    // is the header's own, not the section above it.
    let this_line = text[line_start..].lines().next().unwrap_or("").trim_start();
    if this_line.starts_with('[') {
        return header_path(this_line);
    }
    let before = &text[line_start..start];
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let word = |s: &str| s.trim().trim_matches(|c: char| !is_ident(c)).to_string();
    // The identifier that ends right before byte `eq` (an '=') of `s`.
    let ident_before = |s: &str, eq: usize| {
        let lhs = s[..eq].trim_end();
        let from = lhs
            .char_indices()
            .rev()
            .find(|(_, c)| !(is_ident(*c) || *c == '.'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        word(&lhs[from..])
    };
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(header_path);
    let own = word(text.get(start..end.min(text.len())).unwrap_or(""));
    let key = if names_key && !own.is_empty() {
        own.clone()
    } else {
        match before.rfind('=') {
            Some(eq) => ident_before(before, eq),
            None if !own.is_empty() && own.len() < 40 => own.clone(),
            None => String::new(),
        }
    };
    // Parent: `name = [` or `name = {` opened earlier on this line, or on a line above
    // when this line continues a multi-line array.
    let opener = |s: &str| {
        let open = s.find(['[', '{'])?;
        let eq = s[..open].rfind('=')?;
        Some(ident_before(s, eq))
    };
    let parent = match opener(before) {
        Some(p) if p != key => Some(p),
        _ if before.trim_start().starts_with('{') => text[..line_start]
            .lines()
            .rev()
            .take_while(|l| !l.trim_start().starts_with('['))
            .find_map(|l| l.contains('=').then(|| opener(l)).flatten()),
        _ => None,
    };
    let mut parts: Vec<String> = Vec::new();
    parts.extend(section);
    parts.extend(parent);
    if !key.is_empty() {
        parts.push(key);
    }
    parts.join(".")
}

/// The dotted path a table header line names: `ha.instance` for `[[ha.instance]]`,
/// whatever follows the closing brackets (a comment) left out.
fn header_path(line: &str) -> String {
    let inner = line.trim_start().trim_start_matches('[');
    inner
        .split(']')
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(".")
}

struct Validator<'a> {
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    base_dir: &'a Path,
}

impl Validator<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, key: &str, message: String, hint: &str) {
        self.diags
            .push(Diagnostic::new(key, message).hint(hint).at(span));
    }

    fn warn(&mut self, span: std::ops::Range<usize>, key: &str, message: String) {
        self.warnings.push(Diagnostic::new(key, message).at(span));
    }

    fn config(&mut self, raw: raw::RawConfig) -> Config {
        let global = self.global(raw.global);
        if global.state_dir.is_none()
            && let Some(a) = raw
                .service
                .iter()
                .find_map(|s| s.get_ref().tls.as_ref()?.get_ref().acme.as_ref())
        {
            self.error(
                a.span(),
                "service.tls.acme",
                "needs global.state_dir (the account and certificates are kept there)".into(),
                "set global.state_dir = \"/var/lib/tandem\"",
            );
        }
        let mut pools: Vec<Pool> = raw.pool.iter().map(|p| self.pool(p)).collect();
        self.pool_names(&raw.pool);
        let services: Vec<Service> = raw.service.iter().map(|s| self.service(s)).collect();
        self.service_cross_checks(&raw.service, &raw.pool, &pools);
        self.check_proxy_headers(&raw.pool, &mut pools, &services);
        self.fallbacks(&raw.pool);
        let ha = raw
            .ha
            .as_ref()
            .map(|h| self.ha_instances(h, &pools))
            .unwrap_or_default();
        let sync = raw.sync.as_ref().map(|s| self.sync(s));
        let announce = raw
            .announce
            .as_ref()
            .map(|a| self.announce(a, &raw.service, &ha));
        self.redirect_checks(&raw.service, &pools, &ha);
        if raw.service.is_empty() {
            self.diags.push(
                Diagnostic::new(
                    "service",
                    "no [[service]] is defined: tandem would accept nothing",
                )
                .hint("add a [[service]] with name, listen and pool")
                .at(0..0),
            );
        }
        Config {
            global,
            pools,
            services,
            ha,
            sync,
            announce,
            warnings: Vec::new(),
        }
    }

    fn global(&mut self, g: raw::RawGlobal) -> Global {
        let name = match &g.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                self.error(
                    n.span(),
                    "global.name",
                    "is empty".into(),
                    "give the node a name, or remove the key to use the host name",
                );
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => hostname(),
        };
        let admin_listen = g
            .admin_listen
            .as_ref()
            .and_then(|a| self.socket_addr(a, "global.admin_listen"));
        let admin_write = g.admin_write.as_ref().is_some_and(|w| *w.get_ref());
        let admin_allow = match &g.admin_allow {
            Some(list) => self.networks(Some(list), "global.admin_allow"),
            None => default_admin_allow(),
        };
        if let Some(w) = g.admin_write.as_ref().filter(|_| admin_write) {
            if g.admin_listen.is_none() {
                self.warn(
                    w.span(),
                    "global.admin_write",
                    "has no effect without global.admin_listen".into(),
                );
            } else if admin_allow.is_empty() {
                self.warn(
                    w.span(),
                    "global.admin_write",
                    "is on but global.admin_allow is empty: no client may act".into(),
                );
            }
        }
        Global {
            name,
            control_socket: g
                .control_socket
                .as_ref()
                .map(|p| PathBuf::from(p.get_ref()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            admin_listen,
            admin_write,
            admin_allow,
            log_format: g.log_format.map(|l| l.into_inner()).unwrap_or_default(),
            threads: self.count(&g.threads, "global.threads", 0, 1024) as usize,
            max_conns: self.count(&g.max_conns, "global.max_conns", 0, u32::MAX as i64),
            state_dir: g.state_dir.as_ref().map(|d| {
                let path = self.resolve(d.get_ref());
                if path.exists() && !path.is_dir() {
                    self.error(
                        d.span(),
                        "global.state_dir",
                        format!("{} is not a folder", path.display()),
                        "name a folder tandem may write, e.g. \"/var/lib/tandem\" (made at start if missing)",
                    );
                }
                path
            }),
            user: g.user.as_ref().map(|u| u.get_ref().clone()),
            group: g.group.as_ref().map(|u| u.get_ref().clone()),
            drain_timeout: self.duration(
                &g.drain_timeout,
                "global.drain_timeout",
                Duration::from_secs(30),
                false,
            ),
        }
    }

    fn pool(&mut self, p: &S<raw::RawPool>) -> Pool {
        let p = p.get_ref();
        if p.name.get_ref().trim().is_empty() {
            self.error(
                p.name.span(),
                "pool.name",
                "is empty".into(),
                "name the pool, e.g. name = \"web\"",
            );
        }
        if p.backends.get_ref().is_empty() {
            self.error(
                p.backends.span(),
                "pool.backends",
                "is empty".into(),
                "list at least one backend: backends = [{ address = \"10.0.0.1:80\" }]",
            );
        }
        let mut seen = HashSet::new();
        let mut backends = Vec::new();
        for b in p.backends.get_ref() {
            let b = b.get_ref();
            let address = self.socket_addr(&b.address, "pool.backends.address");
            if let Some(a) = address
                && !seen.insert(a)
            {
                self.error(
                    b.address.span(),
                    "pool.backends.address",
                    format!("{a} is listed twice in pool {}", p.name.get_ref()),
                    "list each backend once; use weight to give it more traffic",
                );
            }
            let weight = match &b.weight {
                Some(w) if !(1..=MAX_WEIGHT).contains(w.get_ref()) => {
                    self.error(w.span(), "pool.backends.weight", format!("{} is out of range", w.get_ref()), "weight is 1 to 256; use backup = true or disable a backend instead of weight 0");
                    1
                }
                Some(w) => *w.get_ref() as u32,
                None => 1,
            };
            let max_conns = self.count(&b.max_conns, "pool.backends.max_conns", 0, u32::MAX as i64);
            if let Some(address) = address {
                backends.push(BackendConfig {
                    address,
                    weight,
                    max_conns,
                    backup: b.backup,
                });
            }
        }
        let sticky = p.sticky.as_ref().map(|s| {
            let s = s.get_ref();
            let ttl = self.duration(
                &s.ttl,
                "pool.sticky.ttl",
                Duration::from_secs(30 * 60),
                true,
            );
            let cookie = s
                .cookie
                .as_ref()
                .map_or("TANDEMID".to_string(), |c| c.get_ref().clone());
            if let Some(c) = &s.cookie
                && (c.get_ref().is_empty()
                    || !c
                        .get_ref()
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
            {
                self.error(
                    c.span(),
                    "pool.sticky.cookie",
                    format!("{:?} is not a valid cookie name", c.get_ref()),
                    "use letters, digits, '-', '_' or '.'",
                );
            }
            let max_entries = self.count(
                &s.max_entries,
                "pool.sticky.max_entries",
                1_000_000,
                100_000_000,
            ) as usize;
            if max_entries == 0
                && let Some(m) = &s.max_entries
            {
                self.error(
                    m.span(),
                    "pool.sticky.max_entries",
                    "is 0".into(),
                    "a sticky table needs room for at least one entry",
                );
            }
            Sticky {
                key: *s.key.get_ref(),
                ttl,
                cookie,
                max_entries,
            }
        });
        let check = p.check.as_ref().map(|c| self.check(c));
        let agent = p.agent.as_ref().map(|a| self.agent(a));
        Pool {
            name: p.name.get_ref().clone(),
            balance: p.balance.as_ref().map(|b| *b.get_ref()).unwrap_or_default(),
            backends,
            sticky,
            fallback: p.fallback.as_ref().map(|f| f.get_ref().clone()),
            check,
            agent,
        }
    }

    /// A pool's `agent = { port = .. }`.
    fn agent(&mut self, a: &S<raw::RawAgent>) -> AgentCheck {
        let whole = a.span();
        let a = a.get_ref();
        let port = match *a.port.get_ref() {
            p @ 1..=65535 => p as u16,
            p => {
                self.error(
                    a.port.span(),
                    "pool.agent.port",
                    format!("{p} is not a TCP port"),
                    "the port the backends' agents listen on, 1 to 65535",
                );
                1
            }
        };
        let interval = self.duration(
            &a.interval,
            "pool.agent.interval",
            AgentCheck::INTERVAL,
            true,
        );
        let timeout = self.duration(&a.timeout, "pool.agent.timeout", AgentCheck::TIMEOUT, true);
        if timeout >= interval {
            let span = a.timeout.as_ref().map_or(whole, |t| t.span());
            self.error(
                span,
                "pool.agent.timeout",
                format!(
                    "{} is not shorter than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
                "an ask must end before the next one starts: make timeout < interval",
            );
        }
        AgentCheck {
            port,
            interval,
            timeout,
            send: a.send.as_ref().map(|s| s.get_ref().clone()),
        }
    }

    fn check(&mut self, c: &S<raw::RawCheck>) -> Check {
        let whole = c.span();
        let c = c.get_ref();
        let kind = *c.kind.get_ref();
        let d = Check::new(kind);
        let interval = self.duration(&c.interval, "pool.check.interval", d.interval, true);
        let timeout = self.duration(&c.timeout, "pool.check.timeout", d.timeout, true);
        if timeout >= interval {
            let span = c.timeout.as_ref().map_or(whole.clone(), |t| t.span());
            self.error(
                span,
                "pool.check.timeout",
                format!(
                    "{} is not shorter than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
                "a check must end before the next one starts: make timeout < interval",
            );
        }
        let rise = self.at_least_one(&c.rise, "pool.check.rise", d.rise);
        let fall = self.at_least_one(&c.fall, "pool.check.fall", d.fall);
        let mut expect_status = Vec::new();
        if let Some(list) = &c.expect_status {
            for s in list.get_ref() {
                if (100..=599).contains(s.get_ref()) {
                    expect_status.push(*s.get_ref() as u16);
                } else {
                    self.error(
                        s.span(),
                        "pool.check.expect_status",
                        format!("{} is not an HTTP status", s.get_ref()),
                        "use codes from 100 to 599, e.g. [200, 204]",
                    );
                }
            }
        }
        let http_only = [
            ("path", c.path.is_some()),
            ("expect_status", c.expect_status.is_some()),
            ("expect_body", c.expect_body.is_some()),
        ];
        let banner_only = [
            ("send", c.send.is_some()),
            ("expect", c.expect.is_some()),
            ("quit", c.quit.is_some()),
        ];
        let is_http = matches!(kind, CheckKind::Http | CheckKind::Https);
        let is_banner = kind == CheckKind::SendExpect;
        for (name, present) in http_only {
            if present && !is_http {
                self.error(
                    whole.clone(),
                    &format!("pool.check.{name}"),
                    format!("applies to http and https checks, not {}", kind_name(kind)),
                    "remove it or change the check type",
                );
            }
        }
        for (name, present) in banner_only {
            if present && !is_banner {
                self.error(
                    whole.clone(),
                    &format!("pool.check.{name}"),
                    format!("applies to send-expect checks, not {}", kind_name(kind)),
                    "remove it or change the check type",
                );
            }
        }
        if let Some(p) = &c.path
            && !p.get_ref().starts_with('/')
        {
            self.error(
                p.span(),
                "pool.check.path",
                format!("{:?} does not start with '/'", p.get_ref()),
                "write an absolute path such as \"/health\"",
            );
        }
        let steps = match (&c.expect, is_banner) {
            (Some(e), true) => self.steps(e, c.send.as_ref()),
            (None, true) => {
                self.error(
                    whole.clone(),
                    "pool.check.expect",
                    "is required by send-expect checks".into(),
                    "add expect = \"^220 \" (a regex for the answer), or a list of steps",
                );
                (Vec::new(), true)
            }
            _ => (Vec::new(), true),
        };
        let (steps, steps_read) = steps;
        // A step that could not be read may have been the STARTTLS one: no
        // complaints about TLS keys then.
        let starttls = steps.iter().any(|s| s.starttls) || !steps_read;
        let reads_certificate = matches!(kind, CheckKind::Tls | CheckKind::Https) || starttls;
        let command = match (&c.command, kind == CheckKind::Script) {
            (Some(cmd), true) => {
                let path = self.resolve(cmd.get_ref());
                if !is_executable(&path) {
                    self.error(
                        cmd.span(),
                        "pool.check.command",
                        format!("{} is not an executable file", path.display()),
                        "give the full path of a program that exits 0 when the backend is up",
                    );
                }
                Some(path)
            }
            (None, true) => {
                self.error(
                    whole.clone(),
                    "pool.check.command",
                    "is required by script checks".into(),
                    "add command = \"/usr/local/bin/check-backend\"",
                );
                None
            }
            (Some(cmd), false) => {
                self.error(
                    cmd.span(),
                    "pool.check.command",
                    format!("applies to script checks, not {}", kind_name(kind)),
                    "remove it or set type = \"script\"",
                );
                None
            }
            (None, false) => None,
        };
        let verify = c.verify.as_ref().is_some_and(|v| *v.get_ref());
        if verify && c.ca_file.is_none() {
            self.error(c.verify.as_ref().map_or(whole.clone(), |v| v.span()), "pool.check.verify", "needs ca_file".into(), "name the CA that signed the backends' certificates: ca_file = \"/etc/tandem/backend-ca.pem\"");
        }
        let ca_file = c
            .ca_file
            .as_ref()
            .map(|f| self.readable_file(f, "pool.check.ca_file"));
        let tls_only = [
            ("verify", c.verify.as_ref().map(|v| v.span())),
            ("ca_file", c.ca_file.as_ref().map(|v| v.span())),
            ("warn_expiry", c.warn_expiry.as_ref().map(|v| v.span())),
        ];
        for (name, span) in tls_only {
            if let Some(span) = span
                && !reads_certificate
            {
                self.error(
                    span,
                    &format!("pool.check.{name}"),
                    format!(
                        "applies to checks that speak TLS (tls, https, send-expect with a starttls step), not this {} check",
                        kind_name(kind)
                    ),
                    "remove it, change the check type, or add a step with starttls = true",
                );
            }
        }
        if let Some(h) = &c.host
            && !is_http
            && !reads_certificate
        {
            self.error(
                h.span(),
                "pool.check.host",
                format!(
                    "applies to http checks (Host) and TLS checks (server name), not this {} check",
                    kind_name(kind)
                ),
                "remove it or change the check type",
            );
        }
        let warn_expiry = c.warn_expiry.as_ref().map(|w| {
            self.duration(
                &Some(w.clone()),
                "pool.check.warn_expiry",
                Duration::ZERO,
                true,
            )
        });
        if let Some(sp) = &c.send_proxy
            && kind == CheckKind::Script
        {
            self.error(
                sp.span(),
                "pool.check.send_proxy",
                "applies to checks that connect, not script checks".into(),
                "remove it: a script makes its own connections",
            );
        }
        Check {
            kind,
            interval,
            timeout,
            rise,
            fall,
            initial: c.initial.as_ref().map_or(d.initial, |i| *i.get_ref()),
            path: c.path.as_ref().map_or(d.path, |p| p.get_ref().clone()),
            host: c.host.as_ref().map(|h| h.get_ref().clone()),
            expect_status,
            expect_body: c.expect_body.as_ref().map(|b| b.get_ref().clone()),
            steps,
            quit: c.quit.as_ref().map(|b| b.get_ref().clone()),
            command,
            verify,
            ca_file,
            // Resolved against the pool's services by `check_proxy_headers`.
            send_proxy: ProxyProtocol::None,
            warn_expiry,
        }
    }

    /// The steps of a send-expect check: `expect` is one regex (with the optional
    /// top-level `send`), or a list of `{ send, expect, starttls }` tables.
    /// The second value says whether every step could be read.
    fn steps(&mut self, expect: &S<toml::Value>, send: Option<&S<String>>) -> (Vec<Step>, bool) {
        let span = expect.span();
        let mut all_read = true;
        let steps = match expect.get_ref() {
            toml::Value::String(regex) => vec![Step {
                send: send.map(|s| s.get_ref().clone()),
                expect: regex.clone(),
                starttls: false,
            }],
            toml::Value::Array(items) => {
                if let Some(s) = send {
                    self.error(
                        s.span(),
                        "pool.check.send",
                        "cannot be used with a list of steps".into(),
                        "move it into the first step: expect = [{ send = \"...\", expect = \"...\" }, ...]",
                    );
                }
                if items.is_empty() {
                    self.error(
                        span.clone(),
                        "pool.check.expect",
                        "is an empty list of steps".into(),
                        "give at least one step, e.g. [{ expect = \"^220 \" }]",
                    );
                }
                let mut steps = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.clone().try_into::<raw::RawStep>() {
                        Ok(step) => steps.push(Step {
                            send: step.send,
                            expect: step.expect,
                            starttls: step.starttls,
                        }),
                        Err(e) => {
                            all_read = false;
                            self.error(
                                span.clone(),
                                "pool.check.expect",
                                format!("step {}: {}", i + 1, e.message().trim()),
                                "each step is { send = \"...\", expect = \"regex\", starttls = true }, send and starttls optional",
                            )
                        }
                    }
                }
                steps
            }
            other => {
                self.error(
                    span.clone(),
                    "pool.check.expect",
                    format!("is a {}, not a regex or a list of steps", other.type_str()),
                    "expect = \"^220 \", or expect = [{ expect = \"^220 \" }, { send = \"EHLO tandem\\r\\n\", expect = \"^250 \" }]",
                );
                Vec::new()
            }
        };
        let many = steps.len() > 1;
        for (i, step) in steps.iter().enumerate() {
            let which = if many {
                format!("step {}: ", i + 1)
            } else {
                String::new()
            };
            if let Err(err) = regex::Regex::new(&step.expect) {
                let first = err
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.error(
                    span.clone(),
                    "pool.check.expect",
                    format!("{which}{:?} is not a valid regex: {first}", step.expect),
                    "e.g. \"^220 \" for SMTP, \"^\\\\* OK\" for IMAP, \"^\\\\+OK\" for POP3",
                );
            }
        }
        if steps.iter().filter(|s| s.starttls).count() > 1 {
            self.error(
                span,
                "pool.check.expect",
                "has starttls = true on more than one step".into(),
                "a conversation upgrades to TLS once: keep starttls on the step that sends STARTTLS (or STLS)",
            );
        }
        (steps, all_read)
    }

    /// Resolves each check's PROXY header against the services its pool serves
    /// (directly or as a fallback): checks send what the services send, unless
    /// `send_proxy` says otherwise. Services that disagree are warned about.
    fn check_proxy_headers(
        &mut self,
        raw_pools: &[S<raw::RawPool>],
        pools: &mut [Pool],
        services: &[Service],
    ) {
        for (raw, pool) in raw_pools.iter().zip(pools.iter_mut()) {
            let Some(check) = pool.check.as_mut().filter(|c| c.kind != CheckKind::Script) else {
                continue;
            };
            let Some(raw_check) = raw.get_ref().check.as_ref() else {
                continue;
            };
            let served: Vec<&Service> = services
                .iter()
                .filter(|s| s.mode != Mode::Redirect)
                .filter(|s| {
                    s.pools().any(|start| {
                        let mut name = Some(start);
                        let mut hops = 0;
                        while let Some(n) = name {
                            if n == pool.name {
                                return true;
                            }
                            hops += 1;
                            if hops > raw_pools.len() {
                                return false;
                            }
                            name = raw_pools
                                .iter()
                                .find(|p| p.get_ref().name.get_ref() == n)
                                .and_then(|p| p.get_ref().fallback.as_ref())
                                .map(|f| f.get_ref().as_str());
                        }
                        false
                    })
                })
                .collect();
            let sent = served
                .iter()
                .map(|s| s.proxy_protocol)
                .find(|p| *p != ProxyProtocol::None);
            let explicit = raw_check.get_ref().send_proxy.as_ref();
            check.send_proxy = match explicit.map(|e| *e.get_ref()) {
                Some(false) => ProxyProtocol::None,
                Some(true) => match sent {
                    Some(version) => version,
                    None => {
                        self.error(
                            explicit.map_or(raw_check.span(), |e| e.span()),
                            "pool.check.send_proxy",
                            format!(
                                "no service of pool {:?} sends a PROXY header, so the check would not know which version to send",
                                pool.name
                            ),
                            "set proxy_protocol = \"v1\" or \"v2\" on the service, or remove send_proxy",
                        );
                        ProxyProtocol::None
                    }
                },
                None => sent.unwrap_or(ProxyProtocol::None),
            };
            let versions: Vec<String> = served
                .iter()
                .map(|s| format!("{} sends {}", s.name, proxy_name(s.proxy_protocol)))
                .collect();
            let disagree = served
                .windows(2)
                .any(|w| w[0].proxy_protocol != w[1].proxy_protocol);
            if disagree {
                self.warnings.push(
                    Diagnostic::new(
                        "pool.check",
                        format!(
                            "pool {:?} is used by services that send different PROXY headers ({}); its checks send {}",
                            pool.name,
                            versions.join(", "),
                            proxy_name(check.send_proxy)
                        ),
                    )
                    .hint("a backend that accepts one kind refuses the other: give each kind of listener its own pool, or set send_proxy to say what the check sends")
                    .at(raw_check.span()),
                );
            }
        }
    }

    fn pool_names(&mut self, pools: &[S<raw::RawPool>]) {
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for p in pools {
            let name = &p.get_ref().name;
            if seen.insert(name.get_ref().as_str(), ()).is_some() {
                self.error(
                    name.span(),
                    "pool.name",
                    format!("{:?} is already the name of another pool", name.get_ref()),
                    "pool names must be unique",
                );
            }
        }
    }

    fn fallbacks(&mut self, pools: &[S<raw::RawPool>]) {
        let names: HashSet<&str> = pools
            .iter()
            .map(|p| p.get_ref().name.get_ref().as_str())
            .collect();
        let next: HashMap<&str, &str> = pools
            .iter()
            .filter_map(|p| {
                let p = p.get_ref();
                p.fallback
                    .as_ref()
                    .map(|f| (p.name.get_ref().as_str(), f.get_ref().as_str()))
            })
            .collect();
        for p in pools {
            let p = p.get_ref();
            let Some(f) = &p.fallback else { continue };
            if !names.contains(f.get_ref().as_str()) {
                self.error(
                    f.span(),
                    "pool.fallback",
                    format!("no pool is named {:?}", f.get_ref()),
                    &known_names_hint(&names),
                );
                continue;
            }
            // Follow the chain; a cycle shows up as a return to this pool.
            let start = p.name.get_ref().as_str();
            let mut at = f.get_ref().as_str();
            let mut chain = vec![start, at];
            let mut steps = 0;
            while let Some(n) = next.get(at) {
                if *n == start {
                    chain.push(n);
                    self.error(
                        f.span(),
                        "pool.fallback",
                        format!("makes a cycle: {}", chain.join(" -> ")),
                        "a fallback chain must end in a pool without fallback",
                    );
                    break;
                }
                at = n;
                chain.push(n);
                steps += 1;
                if steps > pools.len() {
                    break;
                }
            }
        }
    }

    fn service(&mut self, s: &S<raw::RawService>) -> Service {
        let s = s.get_ref();
        if s.name.get_ref().trim().is_empty() {
            self.error(
                s.name.span(),
                "service.name",
                "is empty".into(),
                "name the service, e.g. name = \"www\"",
            );
        }
        if s.listen.get_ref().is_empty() {
            self.error(
                s.listen.span(),
                "service.listen",
                "is empty".into(),
                "give at least one address, e.g. listen = [\"0.0.0.0:80\"]",
            );
        }
        let listen: Vec<SocketAddr> = s
            .listen
            .get_ref()
            .iter()
            .filter_map(|l| self.socket_addr(l, "service.listen"))
            .collect();
        let mode = s.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();
        let tls = s.tls.as_ref().map(|t| self.tls(t));
        if let Some(t) = s.tls.as_ref().filter(|_| mode == Mode::Redirect) {
            self.error(
                t.span(),
                "service.tls",
                "TLS termination needs mode = \"tcp\" or \"http\"".into(),
                "the kernel forwards redirect services' packets untouched: remove tls, or use mode = \"tcp\"",
            );
        }
        if let Some(a) = s
            .tls
            .as_ref()
            .and_then(|t| t.get_ref().acme.as_ref())
            .filter(|_| mode != Mode::Http)
        {
            self.error(
                a.span(),
                "service.tls.acme",
                "ACME certificates are served by http services".into(),
                "use mode = \"http\" for this service, or give cert and key files",
            );
        }
        if let Some(h) = s
            .http
            .as_ref()
            .and_then(|h| h.get_ref().hsts.as_ref())
            .filter(|_| s.tls.is_none())
        {
            self.error(
                h.span(),
                "service.http.hsts",
                "is sent over TLS only, and this service has no tls".into(),
                "move hsts to the service that terminates TLS (port 443)",
            );
        }
        let (accept_proxy, accept_proxy_from) = self.accept_proxy(s, mode);
        let routes = self.routes(s, mode);
        Service {
            name: s.name.get_ref().clone(),
            listen,
            mode,
            pool: s.pool.get_ref().clone(),
            connect_timeout: self.duration(
                &s.connect_timeout,
                "service.connect_timeout",
                Duration::from_secs(3),
                true,
            ),
            idle_timeout: self.duration(
                &s.idle_timeout,
                "service.idle_timeout",
                Duration::from_secs(600),
                true,
            ),
            retries: self.count(&s.retries, "service.retries", 2, 100),
            max_conns: self.count(&s.max_conns, "service.max_conns", 0, u32::MAX as i64),
            proxy_protocol: s
                .proxy_protocol
                .as_ref()
                .map(|p| *p.get_ref())
                .unwrap_or_default(),
            http: {
                let mut http = self.http(s.http.as_ref(), mode);
                // HSTS is a response field of TLS services (validation refuses it
                // elsewhere): one more `set` rule, replacing a backend's own.
                if let (Some(v), Some(_)) = (&http.hsts, &tls) {
                    http.response_headers
                        .set
                        .push(("strict-transport-security".into(), v.clone()));
                }
                http
            },
            tls,
            return_path: s
                .return_path
                .as_ref()
                .map(|r| *r.get_ref())
                .unwrap_or_default(),
            max_conns_per_client: self.count(
                &s.max_conns_per_client,
                "service.max_conns_per_client",
                0,
                u32::MAX as i64,
            ),
            rate_per_client: self.count(
                &s.rate_per_client,
                "service.rate_per_client",
                0,
                1_000_000,
            ),
            accept_proxy,
            accept_proxy_from,
            routes,
        }
    }

    /// A service's `[[service.route]]` list: the keys its mode allows, one action
    /// each, and no route after one that matches everything it matches.
    fn routes(&mut self, s: &raw::RawService, mode: Mode) -> Vec<Route> {
        let mut routes: Vec<(Route, std::ops::Range<usize>)> = Vec::new();
        for r in &s.route {
            let span = r.span();
            let r = r.get_ref();
            let errors_before = self.diags.len();
            if mode == Mode::Redirect {
                self.error(
                    span,
                    "service.route",
                    "does not apply to mode = \"redirect\"".into(),
                    "the kernel forwards these packets by address and port: remove the route, or use mode = \"tcp\" or \"http\"",
                );
                continue;
            }
            let http_keys = [
                ("host", r.host.as_ref().map(|v| v.span())),
                ("path_prefix", r.path_prefix.as_ref().map(|v| v.span())),
                ("method", r.method.as_ref().map(|v| v.span())),
                ("header", r.header.as_ref().map(|v| v.span())),
                ("redirect", r.redirect.as_ref().map(|v| v.span())),
                ("respond", r.respond.as_ref().map(|v| v.span())),
                ("hsts", r.hsts.as_ref().map(|v| v.span())),
            ];
            if mode == Mode::Tcp {
                for (key, at) in http_keys {
                    if let Some(at) = at {
                        self.error(
                            at,
                            &format!("service.route.{key}"),
                            "applies to mode = \"http\" services; a tcp service routes by sni only"
                                .into(),
                            "set mode = \"http\", or route by sni = \"name\" to a pool",
                        );
                    }
                }
                match (&r.sni, &s.tls) {
                    (None, _) => self.error(
                        span.clone(),
                        "service.route",
                        "a tcp route needs sni, the server name of the TLS ClientHello".into(),
                        "add sni = \"www.example.org\" or sni = \"*.example.org\"",
                    ),
                    (Some(sni), Some(_)) => self.error(
                        sni.span(),
                        "service.route.sni",
                        "routes TLS passed through, but this service terminates TLS".into(),
                        "remove tls to pass TLS through to the backends, or use mode = \"http\" and route by host",
                    ),
                    _ => {}
                }
            } else if let Some(sni) = &r.sni {
                self.error(
                    sni.span(),
                    "service.route.sni",
                    "applies to mode = \"tcp\" services (TLS passthrough)".into(),
                    "route by host = \"name\" in http mode",
                );
            }
            let host = r
                .host
                .as_ref()
                .and_then(|h| self.name_pattern(h, "service.route.host"));
            let sni = r
                .sni
                .as_ref()
                .and_then(|h| self.name_pattern(h, "service.route.sni"));
            let path_prefix = r.path_prefix.as_ref().map(|p| {
                if !p.get_ref().starts_with('/') {
                    self.error(
                        p.span(),
                        "service.route.path_prefix",
                        format!("{:?} does not start with /", p.get_ref()),
                        "write the path as requests carry it, e.g. path_prefix = \"/api/\"",
                    );
                }
                p.get_ref().clone()
            });
            let mut methods = Vec::new();
            if let Some(list) = &r.method {
                if list.get_ref().is_empty() {
                    self.error(
                        list.span(),
                        "service.route.method",
                        "is empty: no request would match".into(),
                        "list methods, e.g. method = [\"GET\", \"HEAD\"], or remove the key",
                    );
                }
                for m in list.get_ref() {
                    if is_token(m.get_ref()) {
                        methods.push(m.get_ref().clone());
                    } else {
                        self.error(
                            m.span(),
                            "service.route.method",
                            format!("{:?} is not a method", m.get_ref()),
                            "methods are words in capitals, e.g. \"POST\"",
                        );
                    }
                }
            }
            let header = r.header.as_ref().and_then(|h| self.header_match(h));
            let hsts = r.hsts.as_ref().and_then(|v| {
                if mode == Mode::Http && s.tls.is_none() {
                    self.error(
                        v.span(),
                        "service.route.hsts",
                        "is sent over TLS only, and this service has no tls".into(),
                        "move the route to the service that terminates TLS (port 443)",
                    );
                }
                if r.pool.is_none() {
                    self.error(
                        v.span(),
                        "service.route.hsts",
                        "is written on responses relayed from a pool, and this route answers itself".into(),
                        "remove hsts here, or give it to a route with pool",
                    );
                }
                self.hsts(v, "service.route.hsts")
            });
            let action = self.route_action(r, span.clone());
            // A route with a wrong condition is left out (also of the shadowing check,
            // where a missing condition would read as "any").
            if let Some(action) = action.filter(|_| self.diags.len() == errors_before) {
                routes.push((
                    Route {
                        host,
                        path_prefix,
                        methods,
                        header,
                        sni,
                        action,
                        hsts,
                    },
                    span,
                ));
            }
        }
        for later in 0..routes.len() {
            if let Some(earlier) = (0..later).find(|&e| routes[e].0.covers(&routes[later].0)) {
                self.error(
                    routes[later].1.clone(),
                    "service.route",
                    format!(
                        "is never used: route {} of this service, before it, matches everything it matches",
                        earlier + 1
                    ),
                    "put the more specific route first, or remove this one",
                );
            }
        }
        routes.into_iter().map(|(r, _)| r).collect()
    }

    /// A route's one action: pool, redirect or respond.
    fn route_action(
        &mut self,
        r: &raw::RawRoute,
        span: std::ops::Range<usize>,
    ) -> Option<RouteAction> {
        let given = [r.pool.is_some(), r.redirect.is_some(), r.respond.is_some()]
            .into_iter()
            .filter(|g| *g)
            .count();
        if given != 1 {
            let message = if given == 0 {
                "has no action"
            } else {
                "has more than one action"
            };
            self.error(
                span,
                "service.route",
                message.into(),
                "give one of pool = \"name\", redirect = { status, location } or respond = { status, body }",
            );
            return None;
        }
        if let Some(p) = &r.pool {
            return Some(RouteAction::Pool(p.get_ref().clone()));
        }
        if let Some(red) = &r.redirect {
            let whole = red.span();
            let red = red.get_ref();
            let status = match &red.status {
                None => 302,
                Some(st) => match *st.get_ref() {
                    n @ (301 | 302 | 303 | 307 | 308) => n as u16,
                    n => {
                        self.error(
                            st.span(),
                            "service.route.redirect.status",
                            format!("{n} is not a redirect status"),
                            "use 301 or 308 (permanent), 302, 303 or 307 (temporary)",
                        );
                        302
                    }
                },
            };
            let Some(location) = &red.location else {
                self.error(
                    whole,
                    "service.route.redirect",
                    "has no location".into(),
                    "add location, e.g. location = \"https://{host}{uri}\"",
                );
                return None;
            };
            if let Err(why) = check_template(location.get_ref()) {
                self.error(
                    location.span(),
                    "service.route.redirect.location",
                    why,
                    "fill in {host}, {path}, {query} or {uri}, e.g. \"https://{host}{uri}\"",
                );
            }
            return Some(RouteAction::Redirect {
                status,
                location: location.get_ref().clone(),
            });
        }
        let resp = r.respond.as_ref()?.get_ref();
        let status = match &resp.status {
            None => 200,
            Some(st) => match *st.get_ref() {
                n @ 200..=599 => n as u16,
                n => {
                    self.error(
                        st.span(),
                        "service.route.respond.status",
                        format!("{n} is not a status tandem can answer with"),
                        "use a status from 200 to 599, e.g. 503 for a maintenance page",
                    );
                    200
                }
            },
        };
        let content_type = match &resp.content_type {
            Some(ct) if ct.get_ref().is_empty() || ct.get_ref().bytes().any(|b| b < 0x20) => {
                self.error(
                    ct.span(),
                    "service.route.respond.content_type",
                    "is empty or holds a control character".into(),
                    "e.g. content_type = \"text/html; charset=utf-8\"",
                );
                String::new()
            }
            Some(ct) => ct.get_ref().clone(),
            None => "text/plain; charset=utf-8".into(),
        };
        Some(RouteAction::Respond {
            status,
            body: resp
                .body
                .as_ref()
                .map(|b| b.get_ref().clone())
                .unwrap_or_default(),
            content_type,
        })
    }

    /// A host or server name: `name`, or `*.name` for every name under it.
    fn name_pattern(&mut self, v: &S<String>, key: &str) -> Option<NamePattern> {
        let text = v.get_ref().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            let hint = if name.contains(':') {
                "write the name without a port: routes match any port"
            } else {
                "write a name, e.g. \"www.example.org\", or \"*.example.org\" for every name under it"
            };
            self.error(
                v.span(),
                key,
                format!("{:?} is not a host name or *.name pattern", v.get_ref()),
                hint,
            );
            return None;
        }
        Some(if wild {
            NamePattern::Suffix(format!(".{name}"))
        } else {
            NamePattern::Exact(name.to_string())
        })
    }

    /// `header = { name, value | prefix | present = true }`.
    fn header_match(&mut self, h: &S<raw::RawHeaderMatch>) -> Option<HeaderMatch> {
        let whole = h.span();
        let h = h.get_ref();
        if !is_token(h.name.get_ref()) {
            self.error(
                h.name.span(),
                "service.route.header.name",
                format!("{:?} is not a header name", h.name.get_ref()),
                "use letters, digits and - (e.g. X-Debug)",
            );
            return None;
        }
        let test = match (&h.value, &h.prefix, &h.present) {
            (Some(v), None, None) => HeaderTest::Equals(v.get_ref().clone()),
            (None, Some(p), None) => HeaderTest::Prefix(p.get_ref().clone()),
            (None, None, Some(p)) if *p.get_ref() => HeaderTest::Present,
            (None, None, Some(p)) => {
                self.error(
                    p.span(),
                    "service.route.header.present",
                    "present = false is not a test tandem makes".into(),
                    "write present = true, value = \"...\" or prefix = \"...\"",
                );
                return None;
            }
            _ => {
                self.error(
                    whole,
                    "service.route.header",
                    "needs exactly one of value, prefix or present".into(),
                    "e.g. header = { name = \"X-Debug\", value = \"1\" }, or present = true",
                );
                return None;
            }
        };
        Some(HeaderMatch {
            name: h.name.get_ref().clone(),
            test,
        })
    }

    /// A list of addresses and networks (`"192.0.2.7"`, `"10.0.0.0/8"`).
    fn networks(&mut self, list: Option<&S<Vec<S<String>>>>, key: &str) -> Vec<(IpAddr, u8)> {
        let mut nets = Vec::new();
        for entry in list.iter().flat_map(|l| l.get_ref()) {
            match parse_cidr(entry.get_ref()) {
                Ok(net) => nets.push(net),
                Err(e) => self.error(
                    entry.span(),
                    key,
                    e,
                    "write an address or a network: \"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\"",
                ),
            }
        }
        nets
    }

    /// `accept_proxy` and its trusted sources, which go together (tcp and http modes).
    fn accept_proxy(&mut self, s: &raw::RawService, mode: Mode) -> (bool, Vec<(IpAddr, u8)>) {
        let on = s.accept_proxy.as_ref().is_some_and(|a| *a.get_ref());
        let from = self.networks(s.accept_proxy_from.as_ref(), "service.accept_proxy_from");
        if mode == Mode::Redirect {
            if let Some(a) = &s.accept_proxy {
                self.error(
                    a.span(),
                    "service.accept_proxy",
                    "does not apply to mode = \"redirect\"".into(),
                    "the kernel forwards these connections and tandem never reads them: remove accept_proxy, or use mode = \"tcp\"",
                );
            } else if let Some(l) = &s.accept_proxy_from {
                self.error(
                    l.span(),
                    "service.accept_proxy_from",
                    "does not apply to mode = \"redirect\"".into(),
                    "remove accept_proxy_from",
                );
            }
            return (false, Vec::new());
        }
        match (&s.accept_proxy, &s.accept_proxy_from) {
            (Some(a), None) if on => self.error(
                a.span(),
                "service.accept_proxy",
                "needs accept_proxy_from, the balancers trusted to send PROXY headers".into(),
                "list them: accept_proxy_from = [\"10.0.0.0/8\", \"192.0.2.7\"]",
            ),
            (Some(_), Some(l)) if on && l.get_ref().is_empty() => self.error(
                l.span(),
                "service.accept_proxy_from",
                "is empty: no source could connect".into(),
                "list the balancers trusted to send PROXY headers, e.g. [\"10.0.0.0/8\"]",
            ),
            (_, Some(l)) if !on => self.error(
                l.span(),
                "service.accept_proxy_from",
                "has no effect without accept_proxy = true".into(),
                "set accept_proxy = true, or remove accept_proxy_from",
            ),
            _ => {}
        }
        (on, from)
    }

    fn http(&mut self, h: Option<&S<raw::RawHttp>>, mode: Mode) -> Http {
        let Some(h) = h else { return Http::default() };
        if mode != Mode::Http {
            self.error(
                h.span(),
                "service.http",
                "applies to mode = \"http\" services".into(),
                "set mode = \"http\" or remove [service.http]",
            );
        }
        let h = h.get_ref();
        let d = Http::default();
        let max_header_size = match &h.max_header_size {
            Some(v) if (8192..=1 << 20).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                self.error(
                    v.span(),
                    "service.http.max_header_size",
                    format!("{} is out of range", v.get_ref()),
                    "use 8192 to 1048576 bytes",
                );
                d.max_header_size
            }
            None => d.max_header_size,
        };
        Http {
            header_timeout: self.duration(
                &h.header_timeout,
                "service.http.header_timeout",
                d.header_timeout,
                true,
            ),
            max_header_size,
            response_timeout: self.duration(
                &h.response_timeout,
                "service.http.response_timeout",
                d.response_timeout,
                true,
            ),
            client_timeout: self.duration(
                &h.client_timeout,
                "service.http.client_timeout",
                d.client_timeout,
                true,
            ),
            max_requests_per_connection: self.count(
                &h.max_requests_per_connection,
                "service.http.max_requests_per_connection",
                d.max_requests_per_connection,
                u32::MAX as i64,
            ),
            backend_idle_timeout: self.duration(
                &h.backend_idle_timeout,
                "service.http.backend_idle_timeout",
                d.backend_idle_timeout,
                true,
            ),
            backend_max_idle: self.count(
                &h.backend_max_idle,
                "service.http.backend_max_idle",
                d.backend_max_idle as u32,
                10_000,
            ) as usize,
            via: h.via.unwrap_or(false),
            backend_tls: h.backend_tls.unwrap_or(false),
            backend_verify: {
                let verify = h.backend_verify.as_ref().is_some_and(|v| *v.get_ref());
                if let Some(v) = h
                    .backend_verify
                    .as_ref()
                    .filter(|_| verify && h.backend_ca_file.is_none())
                {
                    self.error(
                        v.span(),
                        "service.http.backend_verify",
                        "needs backend_ca_file".into(),
                        "name the CA of the backends' certificates",
                    );
                }
                verify
            },
            backend_ca_file: h
                .backend_ca_file
                .as_ref()
                .map(|f| self.readable_file(f, "service.http.backend_ca_file")),
            request_headers: h
                .request_headers
                .as_ref()
                .map(|r| self.header_rules(r, "service.http.request_headers"))
                .unwrap_or_default(),
            response_headers: h
                .response_headers
                .as_ref()
                .map(|r| self.header_rules(r, "service.http.response_headers"))
                .unwrap_or_default(),
            hsts: h
                .hsts
                .as_ref()
                .and_then(|v| self.hsts(v, "service.http.hsts")),
        }
    }

    /// `service.http.hsts` or `service.route.hsts` (`key`): a Strict-Transport-Security
    /// value (`max-age=SECONDS` and its directives), or a duration that becomes its max-age.
    fn hsts(&mut self, v: &S<String>, key: &str) -> Option<String> {
        let text = v.get_ref().trim();
        if let Ok(d) = parse_duration(text) {
            return Some(format!("max-age={}", d.as_secs()));
        }
        let mut parts = text.split(';').map(str::trim);
        let max_age_ok = parts
            .next()
            .and_then(|p| p.strip_prefix("max-age="))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let rest_ok = parts.all(|p| {
            p.eq_ignore_ascii_case("includeSubDomains") || p.eq_ignore_ascii_case("preload")
        });
        if max_age_ok && rest_ok {
            Some(text.to_string())
        } else {
            self.error(
                v.span(),
                key,
                format!("{text:?} is not a Strict-Transport-Security value"),
                "write \"max-age=31536000; includeSubDomains\" (directives: includeSubDomains, preload), or a duration such as \"365d\"",
            );
            None
        }
    }

    fn acme(&mut self, a: &S<raw::RawAcme>) -> Acme {
        let whole = a.span();
        let a = a.get_ref();
        let directory = a.directory.get_ref().clone();
        if !directory.starts_with("https://") {
            self.error(
                a.directory.span(),
                "service.tls.acme.directory",
                format!("{directory:?} is not an https URL"),
                "the CA's directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            );
        }
        let contact = a
            .contact
            .iter()
            .flatten()
            .map(|c| {
                if !c.get_ref().starts_with("mailto:") || c.get_ref().len() <= "mailto:".len() {
                    self.error(
                        c.span(),
                        "service.tls.acme.contact",
                        format!("{:?} is not a mailto: URL", c.get_ref()),
                        "write contact = [\"mailto:ops@example.org\"]",
                    );
                }
                c.get_ref().clone()
            })
            .collect();
        let mut domains: Vec<String> = Vec::new();
        for d in &a.domains {
            let name = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').count() >= 2
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                self.error(
                    d.span(),
                    "service.tls.acme.domains",
                    format!("{:?} is not a DNS name tandem can order", d.get_ref()),
                    "give full names such as \"www.example.org\" (no wildcards: they need DNS-01)",
                );
            } else if domains.contains(&name) {
                self.error(
                    d.span(),
                    "service.tls.acme.domains",
                    format!("{name:?} is listed twice"),
                    "list each name once",
                );
            } else {
                domains.push(name);
            }
        }
        if a.domains.is_empty() {
            self.error(
                whole,
                "service.tls.acme.domains",
                "is empty".into(),
                "domains = [\"www.example.org\"]",
            );
        }
        let challenge = match a.challenge.as_ref().map(|c| (c, c.get_ref().as_str())) {
            None | Some((_, "http-01")) => AcmeChallenge::Http01,
            Some((_, "tls-alpn-01")) => AcmeChallenge::TlsAlpn01,
            Some((c, other)) => {
                self.error(
                    c.span(),
                    "service.tls.acme.challenge",
                    format!("{other:?} is not a challenge tandem answers"),
                    "use \"http-01\" (port 80) or \"tls-alpn-01\" (port 443)",
                );
                AcmeChallenge::Http01
            }
        };
        let ca_file = match &a.ca_file {
            Some(f) => self.readable_file(f, "service.tls.acme.ca_file"),
            None => PathBuf::from(DEFAULT_ACME_CA_FILE),
        };
        Acme {
            directory,
            contact,
            domains,
            challenge,
            ca_file,
        }
    }

    fn header_rules(&mut self, r: &S<raw::RawHeaderRules>, key: &str) -> HeaderRules {
        let r = r.get_ref();
        let name_ok = |n: &S<String>, this: &mut Self| {
            let ok = !n.get_ref().is_empty()
                && n.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !ok {
                this.error(
                    n.span(),
                    key,
                    format!("{:?} is not a header name", n.get_ref()),
                    "use letters, digits and - (e.g. X-Request-Id)",
                );
                return false;
            }
            // The fields that frame a message or manage its connection are tandem's:
            // a rule changing them would make client and backend read different
            // messages out of the same bytes.
            const FRAMING: [&str; 9] = [
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
                "te",
                "trailer",
                "upgrade",
                "proxy-connection",
                "expect",
            ];
            if FRAMING.iter().any(|f| n.get_ref().eq_ignore_ascii_case(f)) {
                this.error(
                    n.span(),
                    key,
                    format!(
                        "{} frames the message or its connection; tandem sets it itself",
                        n.get_ref()
                    ),
                    "remove this rule",
                );
                return false;
            }
            true
        };
        let pairs = |map: &std::collections::BTreeMap<S<String>, S<String>>, this: &mut Self| {
            let mut out = Vec::new();
            for (n, v) in map {
                if name_ok(n, this) {
                    if v.get_ref()
                        .bytes()
                        .any(|b| b == b'\r' || b == b'\n' || b == 0)
                    {
                        this.error(
                            v.span(),
                            key,
                            "header value holds a line break or NUL".into(),
                            "write the value on one line",
                        );
                    } else {
                        out.push((n.get_ref().clone(), v.get_ref().clone()));
                    }
                }
            }
            out
        };
        let set = pairs(&r.set, self);
        let add = pairs(&r.add, self);
        let remove = r
            .remove
            .iter()
            .filter(|n| name_ok(n, self))
            .map(|n| n.get_ref().clone())
            .collect();
        HeaderRules { set, add, remove }
    }

    fn tls(&mut self, t: &S<raw::RawTls>) -> Tls {
        let whole = t.span();
        let t = t.get_ref();
        let mut certs = Vec::new();
        match (&t.cert, &t.key) {
            (Some(c), Some(k)) => certs.push(CertPair {
                cert: self.readable_file(c, "service.tls.cert"),
                key: self.readable_file(k, "service.tls.key"),
            }),
            (None, None) => {}
            _ => self.error(
                whole.clone(),
                "service.tls",
                "cert and key go together".into(),
                "give both cert and key files",
            ),
        }
        for pair in t.certs.iter().flatten() {
            let pair = pair.get_ref();
            certs.push(CertPair {
                cert: self.readable_file(&pair.cert, "service.tls.certs.cert"),
                key: self.readable_file(&pair.key, "service.tls.certs.key"),
            });
        }
        let acme = t.acme.as_ref().map(|a| self.acme(a));
        if certs.is_empty() && acme.is_none() {
            self.error(whole, "service.tls", "names no certificate".into(), "tls = { cert = \"cert.pem\", key = \"key.pem\" }, or certs = [{ cert, key }, ...] for several names, or acme = { directory, contact, domains }");
        }
        Tls { certs, acme }
    }

    fn service_cross_checks(
        &mut self,
        services: &[S<raw::RawService>],
        raw_pools: &[S<raw::RawPool>],
        pools: &[Pool],
    ) {
        let names: HashSet<&str> = raw_pools
            .iter()
            .map(|p| p.get_ref().name.get_ref().as_str())
            .collect();
        let mut service_names = HashSet::new();
        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        for s in services {
            let s = s.get_ref();
            if !service_names.insert(s.name.get_ref().as_str()) {
                self.error(
                    s.name.span(),
                    "service.name",
                    format!(
                        "{:?} is already the name of another service",
                        s.name.get_ref()
                    ),
                    "service names must be unique",
                );
            }
            if !names.contains(s.pool.get_ref().as_str()) {
                self.error(
                    s.pool.span(),
                    "service.pool",
                    format!("no pool is named {:?}", s.pool.get_ref()),
                    &known_names_hint(&names),
                );
            }
            for l in s.listen.get_ref() {
                // Port 0 asks the kernel for a free port: never a conflict.
                if let Ok(addr) = l.get_ref().parse::<SocketAddr>()
                    && addr.port() != 0
                    && let Some(other) = listens.insert(addr, s.name.get_ref().clone())
                {
                    self.error(
                        l.span(),
                        "service.listen",
                        format!("{addr} is already the address of service {other:?}"),
                        "each address:port can serve one service",
                    );
                }
            }
            let mode = s.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();
            for p in s.route.iter().filter_map(|r| r.get_ref().pool.as_ref()) {
                if !names.contains(p.get_ref().as_str()) {
                    self.error(
                        p.span(),
                        "service.route.pool",
                        format!("no pool is named {:?}", p.get_ref()),
                        &known_names_hint(&names),
                    );
                } else if mode != Mode::Http
                    && pools.iter().any(|pool| {
                        &pool.name == p.get_ref()
                            && pool
                                .sticky
                                .as_ref()
                                .is_some_and(|st| st.key == StickyKey::Cookie)
                    })
                {
                    self.error(
                        p.span(),
                        "service.route.pool",
                        format!(
                            "pool {:?} is sticky by cookie, which needs mode = \"http\"",
                            p.get_ref()
                        ),
                        "use sticky key = \"source-ip\" for tcp services",
                    );
                }
            }
            if let Some(pool) = pools.iter().find(|p| &p.name == s.pool.get_ref())
                && pool
                    .sticky
                    .as_ref()
                    .is_some_and(|st| st.key == StickyKey::Cookie)
                && mode != Mode::Http
            {
                self.error(
                    s.pool.span(),
                    "service.pool",
                    format!(
                        "pool {:?} is sticky by cookie, which needs mode = \"http\"",
                        pool.name
                    ),
                    "use sticky key = \"source-ip\" for tcp services",
                );
            }
        }
    }

    fn ha(&mut self, table: &S<raw::RawHa>, prefix: &str, pools: &[Pool]) -> Ha {
        let h = table.get_ref();
        let key = |name: &str| format!("{prefix}.{name}");
        let missing = |v: &mut Self, name: &str, hint: &str| {
            v.error(
                table.span(),
                &key(name),
                format!("missing field `{name}`"),
                hint,
            );
        };
        let empty_name = S::new(0..0, String::new());
        let interface = h.interface.as_ref().unwrap_or_else(|| {
            missing(
                self,
                "interface",
                "name the interface VRRP runs on, e.g. \"eth0\"",
            );
            &empty_name
        });
        let one = S::new(0..0, 1);
        let vrid = h.vrid.as_ref().unwrap_or_else(|| {
            missing(
                self,
                "vrid",
                "a virtual router id is 1 to 255, the same on every node of the pair",
            );
            &one
        });
        let no_ips = S::new(0..0, Vec::new());
        let virtual_ips = h.virtual_ips.as_ref().unwrap_or_else(|| {
            missing(
                self,
                "virtual_ips",
                "list the shared addresses, e.g. [\"192.0.2.10/24\"]",
            );
            &no_ips
        });
        if interface.get_ref().trim().is_empty() && h.interface.is_some() {
            self.error(
                interface.span(),
                &key("interface"),
                "is empty".into(),
                "name the interface VRRP runs on, e.g. \"eth0\"",
            );
        }
        let vrid = match vrid.get_ref() {
            v @ 1..=255 => *v as u8,
            v => {
                self.error(
                    vrid.span(),
                    &key("vrid"),
                    format!("{v} is out of range"),
                    "a virtual router id is 1 to 255, the same on every node of the pair",
                );
                1
            }
        };
        let priority = match h.priority.as_ref() {
            None => DEFAULT_PRIORITY,
            Some(p) => match p.get_ref() {
                v @ 1..=255 => *v as u8,
                v => {
                    self.error(
                        p.span(),
                        &key("priority"),
                        format!("{v} is out of range"),
                        "priority is 1 to 254, or 255 for the address owner",
                    );
                    DEFAULT_PRIORITY
                }
            },
        };
        let advert_interval = self.duration(
            &h.advert_interval,
            &key("advert_interval"),
            Duration::from_secs(1),
            true,
        );
        if let Some(a) = &h.advert_interval {
            let ms = advert_interval.as_millis();
            if !ms.is_multiple_of(10) || !(10..=40_950).contains(&ms) {
                self.error(
                    a.span(),
                    &key("advert_interval"),
                    format!(
                        "{} is not a VRRPv3 interval",
                        humantime::format_duration(advert_interval)
                    ),
                    "VRRPv3 counts in centiseconds: 10ms to 40950ms, in steps of 10ms",
                );
            }
        }
        let mut ips = Vec::new();
        if virtual_ips.get_ref().is_empty() && h.virtual_ips.is_some() {
            self.error(
                virtual_ips.span(),
                &key("virtual_ips"),
                "is empty".into(),
                "list the shared addresses, e.g. [\"192.0.2.10/24\"]",
            );
        }
        for ip in virtual_ips.get_ref() {
            match parse_cidr(ip.get_ref()) {
                Ok(v) => ips.push(v),
                Err(e) => self.error(
                    ip.span(),
                    &key("virtual_ips"),
                    e,
                    "write address/prefix, e.g. \"192.0.2.10/24\"",
                ),
            }
        }
        let mut unicast_peers = Vec::new();
        for p in &h.unicast_peers {
            match p.get_ref().parse::<IpAddr>() {
                Ok(a) => unicast_peers.push(a),
                Err(_) => self.error(
                    p.span(),
                    &key("unicast_peers"),
                    format!("{:?} is not an IP address", p.get_ref()),
                    "write the peer's address without port, e.g. \"10.0.0.2\"",
                ),
            }
        }
        let mut track_pools = BTreeMap::new();
        for (name, weight) in &h.track_pools {
            if !pools.iter().any(|p| &p.name == name.get_ref()) {
                self.error(
                    name.span(),
                    &key("track_pools"),
                    format!("no pool is named {:?}", name.get_ref()),
                    "track a pool defined by a [[pool]]",
                );
            }
            match weight.get_ref() {
                w @ 1..=254 => {
                    track_pools.insert(name.get_ref().clone(), *w as u8);
                }
                w => self.error(
                    weight.span(),
                    &key("track_pools"),
                    format!("weight {w} is out of range"),
                    "the priority drop is 1 to 254",
                ),
            }
        }
        self.ha_family(h, prefix);
        Ha {
            interface: interface.get_ref().clone(),
            vrid,
            priority,
            advert_interval,
            preempt: h.preempt.as_ref().is_none_or(|p| *p.get_ref()),
            preempt_delay: self.duration(
                &h.preempt_delay,
                &key("preempt_delay"),
                Duration::ZERO,
                false,
            ),
            virtual_ips: ips,
            unicast_peers,
            track_pools,
            notify: h.notify.as_ref().map(|n| {
                let path = self.resolve(n.get_ref());
                if !is_executable(&path) {
                    self.error(
                        n.span(),
                        &key("notify"),
                        format!("{} is not an executable file", path.display()),
                        "give the full path of a program to run on state changes",
                    );
                }
                path
            }),
            checksum_pseudo_header: h
                .checksum_pseudo_header
                .as_ref()
                .is_none_or(|c| *c.get_ref()),
            group: h.group.iter().map(|g| self.ha_group(g, prefix)).collect(),
            garp_refresh: self.garp_refresh(h.garp_refresh.as_ref(), &key("garp_refresh")),
        }
    }

    /// A VRRP router is IPv4 or IPv6 (RFC 5798), as its first virtual address says;
    /// an IPv6 one's first address is its link-local address, the others global, and
    /// its unicast peers are link-local (where its adverts come from).
    fn ha_family(&mut self, h: &raw::RawHa, prefix: &str) {
        let vips: Vec<_> = h
            .virtual_ips
            .iter()
            .flat_map(|v| v.get_ref())
            .filter_map(|ip| parse_cidr(ip.get_ref()).ok().map(|(a, _)| (a, ip.span())))
            .collect();
        let Some((first, first_span)) = vips.first().cloned() else {
            return;
        };
        let virtual_ips_key = format!("{prefix}.virtual_ips");
        let group_key = format!("{prefix}.group.virtual_ips");
        let peers_key = format!("{prefix}.unicast_peers");
        let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let hint = "a VRRP router is of one family (RFC 5798): give the other family's addresses a router of their own";
        let link_local =
            |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if first.is_ipv6() && !link_local(&first) {
            self.error(
                first_span,
                &virtual_ips_key,
                format!("{first} is not link-local: an IPv6 router's first virtual address is its link-local address (RFC 5798)"),
                "start with a link-local address, e.g. [\"fe80::10/64\", \"2001:db8::10/64\"]",
            );
        }
        let others = vips
            .iter()
            .skip(1)
            .map(|(ip, span)| (ip, span.clone(), &virtual_ips_key));
        let groups = h
            .group
            .iter()
            .flat_map(|g| g.get_ref().virtual_ips.get_ref().iter());
        let groups = groups.filter_map(|ip| {
            parse_cidr(ip.get_ref())
                .ok()
                .map(|(a, _)| (a, ip.span(), &group_key))
        });
        let peers = h.unicast_peers.iter().filter_map(|p| {
            p.get_ref()
                .parse::<IpAddr>()
                .ok()
                .map(|a| (a, p.span(), &peers_key))
        });
        let mut wrong = Vec::new();
        for (ip, span, key) in others
            .map(|(ip, s, k)| (*ip, s, k))
            .chain(groups)
            .chain(peers)
        {
            if ip.is_ipv4() != first.is_ipv4() {
                wrong.push((
                    span,
                    key,
                    format!(
                        "{ip} is {}, but this router is {} (its first virtual address is {first})",
                        family(&ip),
                        family(&first)
                    ),
                    hint,
                ));
            } else if key == &virtual_ips_key && link_local(&ip) {
                wrong.push((
                    span,
                    key,
                    format!("{ip} is link-local: only the first IPv6 virtual address is"),
                    "list global addresses after the link-local one",
                ));
            } else if key == &peers_key && ip.is_ipv6() && !link_local(&ip) {
                wrong.push((
                    span,
                    key,
                    format!("{ip} is not link-local: IPv6 adverts come from the peers' link-local addresses (RFC 5798)"),
                    "list each peer's link-local address on ha.interface, e.g. \"fe80::2\"",
                ));
            }
        }
        for (span, key, message, hint) in wrong {
            self.error(span, key, message, hint);
        }
    }

    /// `garp_refresh`: off when absent or zero, at least a second otherwise (each
    /// announcement is a burst of gratuitous ARPs over two seconds).
    fn garp_refresh(&mut self, value: Option<&S<String>>, key: &str) -> Option<Duration> {
        let v = value?;
        let d = self.duration(&Some(v.clone()), key, Duration::ZERO, false);
        if !d.is_zero() && d < Duration::from_secs(1) {
            self.error(
                v.span(),
                key,
                format!("{} is too short", humantime::format_duration(d)),
                "announce at most every second; tens of seconds are plenty for ARP caches",
            );
        }
        (!d.is_zero()).then_some(d)
    }

    /// `[ha]`: one instance of its own keys, or one per `[[ha.instance]]`; never both
    /// (a key beside the tables would leave unclear which instance it belongs to).
    /// Across instances, a vrid is used once per interface and an address by one
    /// instance only.
    fn ha_instances(&mut self, table: &S<raw::RawHa>, pools: &[Pool]) -> Vec<Ha> {
        let top = table.get_ref();
        if top.instance.is_empty() {
            return vec![self.ha(table, "ha", pools)];
        }
        let beside: [(&str, Option<std::ops::Range<usize>>); 13] = [
            ("interface", top.interface.as_ref().map(|v| v.span())),
            ("vrid", top.vrid.as_ref().map(|v| v.span())),
            ("priority", top.priority.as_ref().map(|v| v.span())),
            (
                "advert_interval",
                top.advert_interval.as_ref().map(|v| v.span()),
            ),
            ("preempt", top.preempt.as_ref().map(|v| v.span())),
            (
                "preempt_delay",
                top.preempt_delay.as_ref().map(|v| v.span()),
            ),
            ("virtual_ips", top.virtual_ips.as_ref().map(|v| v.span())),
            ("unicast_peers", top.unicast_peers.first().map(|v| v.span())),
            (
                "track_pools",
                top.track_pools.keys().next().map(|v| v.span()),
            ),
            ("notify", top.notify.as_ref().map(|v| v.span())),
            (
                "checksum_pseudo_header",
                top.checksum_pseudo_header.as_ref().map(|v| v.span()),
            ),
            ("group", top.group.first().map(|v| v.span())),
            ("garp_refresh", top.garp_refresh.as_ref().map(|v| v.span())),
        ];
        for (name, span) in beside {
            if let Some(span) = span {
                self.error(
                    span,
                    &format!("ha.{name}"),
                    "is set in [ha] beside [[ha.instance]] tables: no instance would own it".into(),
                    &format!("move {name} into each [[ha.instance]] it applies to (an [[ha.group]] becomes [[ha.instance.group]])"),
                );
            }
        }
        let mut instances = Vec::new();
        let mut vrids: HashSet<(String, u8)> = HashSet::new();
        let mut addresses: HashSet<IpAddr> = HashSet::new();
        for raw in &top.instance {
            if let Some(nested) = raw.get_ref().instance.first() {
                self.error(
                    nested.span(),
                    "ha.instance.instance",
                    "instances do not nest".into(),
                    "write each instance as its own [[ha.instance]] table",
                );
            }
            let ha = self.ha(raw, "ha.instance", pools);
            let r = raw.get_ref();
            if let Some(v) = &r.vrid
                && !vrids.insert((ha.interface.clone(), ha.vrid))
            {
                self.error(
                    v.span(),
                    "ha.instance.vrid",
                    format!("vrid {} is used twice on {}", ha.vrid, ha.interface),
                    "each instance on one interface needs its own vrid (1 to 255), the same on both nodes",
                );
            }
            let written = r
                .virtual_ips
                .iter()
                .flat_map(|v| v.get_ref())
                .map(|ip| ("ha.instance.virtual_ips", ip))
                .chain(r.group.iter().flat_map(|g| {
                    g.get_ref()
                        .virtual_ips
                        .get_ref()
                        .iter()
                        .map(|ip| ("ha.instance.group.virtual_ips", ip))
                }));
            for (key, ip) in written {
                if let Ok((addr, _)) = parse_cidr(ip.get_ref())
                    && !addresses.insert(addr)
                {
                    self.error(
                        ip.span(),
                        key,
                        format!("{addr} belongs to another instance already"),
                        "an address moves with one election: keep it in one instance",
                    );
                }
            }
            instances.push(ha);
        }
        instances
    }

    fn ha_group(&mut self, g: &S<raw::RawHaGroup>, prefix: &str) -> HaGroup {
        let g = g.get_ref();
        let key = |name: &str| format!("{prefix}.group.{name}");
        if g.interface.get_ref().trim().is_empty() {
            self.error(
                g.interface.span(),
                &key("interface"),
                "is empty".into(),
                "name the interface that holds these addresses, e.g. \"eth1\"",
            );
        }
        if g.virtual_ips.get_ref().is_empty() {
            self.error(
                g.virtual_ips.span(),
                &key("virtual_ips"),
                "is empty".into(),
                "list the addresses that move with the master, e.g. [\"10.1.0.1/24\"]",
            );
        }
        let mut virtual_ips = Vec::new();
        for ip in g.virtual_ips.get_ref() {
            match parse_cidr(ip.get_ref()) {
                Ok(v) => virtual_ips.push(v),
                Err(e) => self.error(
                    ip.span(),
                    &key("virtual_ips"),
                    e,
                    "write address/prefix, e.g. \"10.1.0.1/24\"",
                ),
            }
        }
        HaGroup {
            interface: g.interface.get_ref().clone(),
            virtual_ips,
        }
    }

    /// What a redirect (kernel DNAT) service needs: an address to match, a spread the
    /// kernel can do, backends of the same family, and a way back for the replies.
    fn redirect_checks(&mut self, services: &[S<raw::RawService>], pools: &[Pool], ha: &[Ha]) {
        for s in services {
            let s = s.get_ref();
            let mode = s.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();
            if mode != Mode::Redirect {
                if let Some(r) = &s.return_path {
                    self.error(
                        r.span(),
                        "service.return_path",
                        "applies to mode = \"redirect\" only".into(),
                        "remove it: relayed connections come back to tandem's own socket",
                    );
                }
                continue;
            }
            for l in s.listen.get_ref() {
                if let Ok(addr) = l.get_ref().parse::<SocketAddr>()
                    && (addr.ip().is_unspecified() || addr.port() == 0)
                {
                    self.error(
                        l.span(),
                        "service.listen",
                        format!("{addr} names no single address and port to redirect"),
                        "give the virtual address and port, e.g. \"192.0.2.10:143\"",
                    );
                }
            }
            if let Some(p) = s
                .proxy_protocol
                .as_ref()
                .filter(|p| *p.get_ref() != ProxyProtocol::None)
            {
                self.error(
                    p.span(),
                    "service.proxy_protocol",
                    "cannot be sent by kernel forwarding".into(),
                    "backends of a redirect service see the client's own address already; remove proxy_protocol, or use mode = \"tcp\"",
                );
            }
            if let Some(pool) = pools.iter().find(|p| &p.name == s.pool.get_ref()) {
                if !matches!(
                    pool.balance,
                    Balance::RoundRobin | Balance::Random | Balance::SourceHash
                ) {
                    self.error(
                        s.pool.span(),
                        "service.pool",
                        format!("pool {:?} balances by {}, which the kernel cannot do", pool.name, pool.balance.name()),
                        "redirect pools use balance = \"round-robin\", \"random\" or \"source-hash\"",
                    );
                }
                if pool.sticky.is_some() {
                    self.error(
                        s.pool.span(),
                        "service.pool",
                        format!("pool {:?} has a sticky table, which lives in tandem's relay, not in the kernel", pool.name),
                        "for redirect use balance = \"source-hash\": the kernel hashes the client address, the same way on both nodes",
                    );
                }
                for l in s.listen.get_ref() {
                    if let Ok(addr) = l.get_ref().parse::<SocketAddr>()
                        && let Some(b) = pool
                            .backends
                            .iter()
                            .find(|b| b.address.is_ipv4() != addr.is_ipv4())
                    {
                        self.error(
                            l.span(),
                            "service.listen",
                            format!("{addr} and backend {} of pool {:?} are of different IP families", b.address, pool.name),
                            "kernel forwarding translates addresses within one family: use an IPv4 or IPv6 pool to match",
                        );
                    }
                }
            }
            let return_path = s
                .return_path
                .as_ref()
                .map(|r| *r.get_ref())
                .unwrap_or_default();
            if return_path == ReturnPath::Vip && ha.iter().all(|h| h.group.is_empty()) {
                let span = s
                    .return_path
                    .as_ref()
                    .map(|r| r.span())
                    .or(s.mode.as_ref().map(|m| m.span()))
                    .unwrap_or(s.name.span());
                self.error(
                    span,
                    "service.return_path",
                    format!("service {:?}: the backends' replies must come back through the balancer, and no [[ha.group]] gives them a gateway address that moves with the master", s.name.get_ref()),
                    "add [[ha.group]] with the backends' gateway on the private interface (interface = \"eth1\", virtual_ips = [\"10.1.0.1/24\"]); or set return_path = \"snat\" (backends then see the balancer's address) or \"static\" (this host routes for them already)",
                );
            }
        }
    }

    fn sync(&mut self, s: &S<raw::RawSync>) -> Sync {
        let s = s.get_ref();
        let listen = self.socket_addr(&s.listen, "sync.listen");
        if listen.is_some_and(|a| a.ip().is_unspecified()) {
            self.error(s.listen.span(), "sync.listen", "is not this node's own address".into(), "listen on the node's address on the sync network, the one its peers list (e.g. \"10.0.1.1:7946\")");
        }
        let peers = s
            .peers
            .iter()
            .filter_map(|p| self.socket_addr(p, "sync.peers"))
            .collect();
        let key_file = self.readable_file(&s.key_file, "sync.key_file");
        if let Ok(meta) = std::fs::metadata(&key_file)
            && meta.len() < 16
        {
            self.error(
                s.key_file.span(),
                "sync.key_file",
                format!("{} holds fewer than 16 bytes", key_file.display()),
                "make a key with: head -c 32 /dev/urandom | base64 > sync.key",
            );
        }
        let conntrack_port = match s.conntrack_port.as_ref() {
            None => DEFAULT_CONNTRACK_PORT,
            Some(p) => match p.get_ref() {
                v @ 1..=65535 => *v as u16,
                v => {
                    self.error(
                        p.span(),
                        "sync.conntrack_port",
                        format!("{v} is not a port"),
                        "a UDP port, 1 to 65535, the same on both nodes",
                    );
                    DEFAULT_CONNTRACK_PORT
                }
            },
        };
        Sync {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            peers,
            key_file,
            conntrack_port,
            conntrackd: s
                .conntrackd
                .as_ref()
                .map(|c| {
                    if c.get_ref().contains('/') {
                        self.resolve(c.get_ref())
                    } else {
                        PathBuf::from(c.get_ref())
                    }
                })
                .unwrap_or_else(|| PathBuf::from("conntrackd")),
        }
    }

    // ---- value helpers ----

    fn duration(
        &mut self,
        value: &Option<S<String>>,
        key: &str,
        default: Duration,
        nonzero: bool,
    ) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if nonzero && d.is_zero() => {
                self.error(
                    v.span(),
                    key,
                    "is zero".into(),
                    "give a positive duration such as \"2s\"",
                );
                default
            }
            Ok(d) => d,
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{:?} is not a duration", v.get_ref()),
                    "write a number and a unit: \"150ms\", \"2s\", \"5m\", \"1h\"",
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, value: &S<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if value.get_ref().parse::<IpAddr>().is_ok() {
                    "add the port: \"10.0.0.1:80\", or \"[2001:db8::1]:80\" for IPv6"
                } else {
                    "write IP:PORT, e.g. \"10.0.0.1:80\" or \"[2001:db8::1]:80\""
                };
                self.error(
                    value.span(),
                    key,
                    format!("{:?} is not an IP:port address", value.get_ref()),
                    hint,
                );
                None
            }
        }
    }

    fn count(&mut self, value: &Option<S<i64>>, key: &str, default: u32, max: i64) -> u32 {
        match value {
            None => default,
            Some(v) if (0..=max).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} is out of range", v.get_ref()),
                    &format!("use 0 to {max}"),
                );
                default
            }
        }
    }

    fn at_least_one(&mut self, value: &Option<S<i64>>, key: &str, default: u32) -> u32 {
        match value {
            None => default,
            Some(v) if (1..=1000).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} is out of range", v.get_ref()),
                    "use 1 to 1000 consecutive results",
                );
                default
            }
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn readable_file(&mut self, value: &S<String>, key: &str) -> PathBuf {
        let path = self.resolve(value.get_ref());
        if let Err(e) = std::fs::File::open(&path) {
            self.error(
                value.span(),
                key,
                format!("cannot read {}: {e}", path.display()),
                "relative paths are taken from the config file's folder",
            );
        }
        path
    }
}

/// An HTTP token (a method or a field name, RFC 9110 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A redirect's Location template: placeholders {host}, {path}, {query}, {uri} only,
/// on one line.
fn check_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("holds a control character or line break".into());
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("has a { that is not closed".into());
        };
        let name = &after[..close];
        if !matches!(name, "host" | "path" | "query" | "uri") {
            return Err(format!("{{{name}}} is not a placeholder tandem fills in"));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn proxy_name(p: ProxyProtocol) -> &'static str {
    match p {
        ProxyProtocol::None => "no PROXY header",
        ProxyProtocol::V1 => "PROXY v1",
        ProxyProtocol::V2 => "PROXY v2",
    }
}

fn kind_name(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Tls => "tls",
        CheckKind::Http => "http",
        CheckKind::Https => "https",
        CheckKind::SendExpect => "send-expect",
        CheckKind::Script => "script",
    }
}

fn known_names_hint(names: &HashSet<&str>) -> String {
    let mut names: Vec<&str> = names.iter().copied().collect();
    names.sort_unstable();
    if names.is_empty() {
        "define it with a [[pool]] section".to_string()
    } else {
        format!("defined pools: {}", names.join(", "))
    }
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
    };
    Ok((ip, prefix))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tandem".to_string())
}
