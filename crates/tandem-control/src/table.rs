//! Plain-text tables for `tandem ctl`.

use crate::page::{ago, bytes};
use crate::protocol::{HaSnapshot, Snapshot};

/// Left-aligned columns separated by two spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `tandem ctl status`.
pub fn status(s: &Snapshot) -> String {
    let mut out = format!(
        "node {}  version {}  pid {}  up {}  reloads {}\n",
        s.node,
        s.version,
        s.pid,
        ago(s.uptime_secs),
        s.reloads
    );
    if let Some(p) = &s.config_path {
        out += &format!("config {p}\n");
    }
    for ha in s.ha.iter() {
        out += &format!(
            "ha {} on {} vrid {}  priority {} (configured {})\n",
            ha.state, ha.interface, ha.vrid, ha.effective_priority, ha.priority
        );
    }
    if s.ha.is_empty() {
        out += "ha not configured\n";
    }
    if s.sync.is_empty() {
        out += "sync not configured\n";
    } else {
        for p in &s.sync {
            out += &format!(
                "sync peer {} {} {}, protocol version {}, {} entries sent, {} received, {} frames dropped{}\n",
                p.address,
                if p.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                if p.synced { "synced" } else { "not synced" },
                p.version,
                p.sent,
                p.received,
                p.frames_dropped,
                match &p.last_error {
                    Some(e) => format!(", last error: {e}"),
                    None => String::new(),
                }
            );
        }
    }
    if let Some(a) = &s.announce {
        let announced = a.addresses.iter().filter(|x| x.announced).count();
        out += &format!(
            "announce {} of {} address(es) on {}{}\n",
            announced,
            a.addresses.len(),
            a.interface,
            if a.operator_withdrawn {
                " (withdrawn by the operator)"
            } else {
                ""
            }
        );
    }
    out.push('\n');
    let mut rows = vec![
        [
            "SERVICE",
            "MODE",
            "LISTEN",
            "POOL",
            "ACTIVE",
            "TOTAL",
            "REJECTED",
            "NO-BACKEND",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for sv in &s.services {
        rows.push(vec![
            sv.name.clone(),
            sv.mode.clone(),
            sv.listen.join(","),
            sv.pool.clone(),
            sv.active.to_string(),
            sv.total.to_string(),
            sv.rejected.to_string(),
            sv.no_backend.to_string(),
        ]);
    }
    out + &columns(&rows)
}

/// `tandem ctl pools`.
pub fn pools(s: &Snapshot) -> String {
    let mut rows = vec![
        [
            "POOL",
            "BACKEND",
            "STATE",
            "HEALTH",
            "WEIGHT",
            "ACTIVE",
            "TOTAL",
            "IN",
            "OUT",
            "ERRORS",
            "LAST CHECK",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &s.pools {
        for b in &p.backends {
            let check = match &b.last_check {
                Some(c) if c.ok => format!("ok {:.1}ms {} ago", c.latency_ms, ago(c.age_secs)),
                Some(c) => format!("{} ({} ago)", c.error, ago(c.age_secs)),
                None => "-".into(),
            };
            rows.push(vec![
                p.name.clone(),
                format!("{}{}", b.address, if b.backup { " (backup)" } else { "" }),
                if b.enabled { "enabled" } else { "disabled" }.into(),
                b.health.clone(),
                b.weight.to_string(),
                b.active.to_string(),
                b.total.to_string(),
                bytes(b.bytes_to_backend),
                bytes(b.bytes_to_client),
                b.connect_errors.to_string(),
                check,
            ]);
        }
    }
    let mut out = columns(&rows);
    for p in &s.pools {
        for b in &p.backends {
            if let Some(agent) = &b.agent {
                out += &format!("pool {} {}: agent {agent}\n", p.name, b.address);
            }
        }
    }
    for p in &s.pools {
        if let Some(n) = p.sticky_entries {
            out += &format!("pool {}: {} sticky entries\n", p.name, n);
        }
    }
    out
}

/// `tandem ctl ha`: each instance, a blank line between two.
pub fn ha(instances: &[HaSnapshot]) -> String {
    if instances.is_empty() {
        return "ha not configured (no [ha] section)\n".into();
    }
    let blocks: Vec<String> = instances.iter().map(ha_instance).collect();
    blocks.join("\n")
}

fn ha_instance(ha: &HaSnapshot) -> String {
    let mut out = format!(
        "state {}\ninterface {}  vrid {}\npriority {} (configured {})\n",
        ha.state, ha.interface, ha.vrid, ha.effective_priority, ha.priority
    );
    for (why, by) in &ha.demotions {
        out += &format!("  -{by}: {why}\n");
    }
    out += &format!("virtual addresses {}\n", ha.virtual_ips.join(", "));
    if let Some(m) = &ha.master {
        out += &format!("master {m}\n");
    }
    out += &format!("transitions {}\n", ha.transitions);
    for (reason, n) in &ha.dropped {
        out += &format!("dropped {n} packet(s): {reason}\n");
    }
    out
}

/// `tandem ctl redirect`: the rules and the state sync.
pub fn redirect(r: Option<&crate::protocol::RedirectSnapshot>) -> String {
    let Some(r) = r else {
        return "no redirect service configured\n".into();
    };
    let mut out = String::from("rules (new connections):\n");
    for line in &r.rules {
        out += &format!("  {line}\n");
    }
    match &r.conntrack {
        Some(c) => {
            out += &format!(
                "connection states: conntrackd {} as {}, {} local, {} from the peer, {} restart(s)\n",
                if c.running { "running" } else { "NOT RUNNING" },
                if c.role.is_empty() { "-" } else { &c.role },
                c.internal,
                c.external,
                c.restarts
            );
        }
        None => out += "connection states: not synced (needs [ha] and [sync])\n",
    }
    out += "\nkernel table:\n";
    out += &r.table;
    out
}

/// `tandem ctl announce`: each address, announced or withdrawn, and why.
pub fn announce(a: Option<&crate::protocol::AnnounceSnapshot>) -> String {
    let Some(a) = a else {
        return "announce not configured (no [announce] section)\n".into();
    };
    let mut out = format!("interface {}", a.interface);
    if a.stopping {
        out += "  (stopping)";
    } else if a.operator_withdrawn {
        out += "  (withdrawn by the operator: tandem ctl announce restore)";
    } else if !a.ready {
        out += "  (starting)";
    }
    out += "\n";
    let width = a
        .addresses
        .iter()
        .map(|x| x.address.len())
        .max()
        .unwrap_or(0);
    for x in &a.addresses {
        out += &format!(
            "{:width$}  {:9}  {}s  {}  (pools {})\n",
            x.address,
            if x.announced {
                "announced"
            } else {
                "withdrawn"
            },
            x.for_secs,
            x.reason,
            x.pools.join(", "),
        );
    }
    if let Some(e) = &a.last_error {
        out += &format!("last error: {e}\n");
    }
    out
}
/// `tandem ctl backend weight/add/remove`: what changed, and for how long.
pub fn backend_change(r: &crate::protocol::BackendChangeReply) -> String {
    let mut out = format!("{} {}: {}\n", r.pool, r.address, r.change);
    if let Some(b) = &r.backend {
        out += &format!(
            "  weight {}{}  max_conns {}  health {}\n",
            b.weight,
            if b.backup { " (backup)" } else { "" },
            b.max_conns,
            b.health
        );
    } else if r.draining > 0 {
        out += &format!(
            "  {} open connection(s) finish on it; no new ones\n",
            r.draining
        );
    }
    out += &format!("  kept {}\n", r.lasts);
    out
}

/// `tandem ctl sticky show`.
pub fn sticky(entries: &[crate::protocol::StickySnapshot]) -> String {
    if entries.is_empty() {
        return "no sticky entries\n".into();
    }
    let mut rows = vec![
        ["POOL", "CLIENT", "BACKEND", "EXPIRES IN", "PINNED"]
            .map(String::from)
            .to_vec(),
    ];
    for e in entries {
        rows.push(vec![
            e.pool.clone(),
            e.client.clone(),
            e.backend.clone(),
            ago(e.expires_in_secs),
            format!("{} ago", ago(e.pinned_secs_ago)),
        ]);
    }
    let mut out = columns(&rows);
    out += &format!("{} entries\n", entries.len());
    out
}

/// `tandem ctl sticky clear`.
pub fn sticky_cleared(r: &crate::protocol::StickyClearReply) -> String {
    format!(
        "{} sticky entries cleared{}\n",
        r.cleared,
        if r.synced {
            " (and on the sync peers)"
        } else {
            ""
        }
    )
}

/// `tandem ctl connections`.
pub fn connections(list: &[crate::protocol::ConnectionSnapshot]) -> String {
    if list.is_empty() {
        return "no open connections\n".into();
    }
    let mut rows = vec![
        ["ID", "SERVICE", "CLIENT", "BACKEND", "AGE", "IN", "OUT"]
            .map(String::from)
            .to_vec(),
    ];
    for c in list {
        rows.push(vec![
            c.id.to_string(),
            c.service.clone(),
            c.client.clone(),
            format!("{}/{}", c.pool, c.backend),
            ago(c.age_secs),
            bytes(c.bytes_to_backend),
            bytes(c.bytes_to_client),
        ]);
    }
    columns(&rows)
}

/// One event of `tandem ctl monitor`: time (UTC), kind, subject, text.
pub fn event(e: &crate::events::Event) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms);
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let repeats = if e.repeats > 0 {
        format!(" (x{})", e.repeats + 1)
    } else {
        String::new()
    };
    format!(
        "{} {kind} {}: {}{repeats}\n",
        humantime::format_rfc3339_seconds(at),
        e.subject,
        e.text
    )
}

#[cfg(test)]
mod runtime_tests {
    use super::*;
    use crate::events::{Event, EventKind};
    use crate::protocol::{ConnectionSnapshot, StickySnapshot};

    #[test]
    fn an_event_line_has_time_kind_subject_and_text() {
        let e = Event {
            seq: 3,
            at_ms: 1_796_000_000_000,
            kind: EventKind::Health,
            subject: "web/127.0.0.1:8001".into(),
            text: "down: connect: Connection refused".into(),
            repeats: 2,
        };
        assert_eq!(
            event(&e),
            "2026-11-30T00:53:20Z health web/127.0.0.1:8001: down: connect: Connection refused (x3)\n"
        );
    }

    #[test]
    fn tables_list_connections_and_entries() {
        let c = connections(&[ConnectionSnapshot {
            id: 12,
            service: "www".into(),
            client: "127.0.0.1:5000".into(),
            pool: "web".into(),
            backend: "127.0.0.1:8001".into(),
            age_secs: 65,
            bytes_to_backend: 10,
            bytes_to_client: 2048,
        }]);
        assert!(c.starts_with("ID  SERVICE"), "{c}");
        assert!(
            c.contains("12  www      127.0.0.1:5000  web/127.0.0.1:8001  1m 5s"),
            "{c}"
        );
        assert_eq!(connections(&[]), "no open connections\n");
        let s = sticky(&[StickySnapshot {
            pool: "web".into(),
            client: "192.0.2.7".into(),
            backend: "127.0.0.1:8001".into(),
            expires_in_secs: 1800,
            pinned_secs_ago: 3,
        }]);
        assert!(s.contains("192.0.2.7"), "{s}");
        assert!(s.ends_with("1 entries\n"), "{s}");
    }
}

#[cfg(test)]
mod sync_tests {
    use super::*;
    use crate::protocol::PeerSnapshot;

    #[test]
    fn status_shows_each_sync_peers_version_and_dropped_frames() {
        let s = Snapshot {
            sync: vec![PeerSnapshot {
                address: "10.9.0.2:7400".into(),
                connected: true,
                synced: true,
                sent: 12,
                received: 7,
                version: 2,
                frames_dropped: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = status(&s);
        assert!(
            text.contains("sync peer 10.9.0.2:7400 connected synced, protocol version 2, 12 entries sent, 7 received, 3 frames dropped\n"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod ha_tests {
    use super::*;

    #[test]
    fn ctl_ha_lists_every_instance() {
        assert_eq!(ha(&[]), "ha not configured (no [ha] section)\n");
        let one = HaSnapshot {
            state: "MASTER".into(),
            interface: "eth0".into(),
            vrid: 51,
            priority: 150,
            effective_priority: 150,
            virtual_ips: vec!["192.0.2.10/24".into()],
            ..Default::default()
        };
        let single = ha(std::slice::from_ref(&one));
        assert_eq!(
            single,
            "state MASTER\ninterface eth0  vrid 51\npriority 150 (configured 150)\nvirtual addresses 192.0.2.10/24\ntransitions 0\n"
        );
        let two = HaSnapshot {
            state: "BACKUP".into(),
            vrid: 52,
            ..one.clone()
        };
        let both = ha(&[one, two]);
        assert!(both.starts_with(&single), "{both}");
        assert!(
            both[single.len()..].starts_with("\nstate BACKUP\ninterface eth0  vrid 52\n"),
            "{both}"
        );
    }
}
