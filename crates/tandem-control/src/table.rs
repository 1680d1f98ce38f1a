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
                "sync peer {} {} {}\n",
                p.address,
                if p.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                if p.synced { "synced" } else { "not synced" }
            );
        }
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
