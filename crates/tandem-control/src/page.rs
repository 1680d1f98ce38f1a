//! The status page: one self-contained HTML document (no external assets) that a person
//! reads at a glance, refreshed by the browser every two seconds.

use std::fmt::Write;

use crate::protocol::{BackendSnapshot, Snapshot};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Human bytes: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Human duration from seconds: 3d 4h, 5m 2s.
pub fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn state_of(b: &BackendSnapshot) -> (&'static str, &'static str) {
    match (b.enabled, b.health.as_str()) {
        (false, _) => ("disabled", "drain"),
        (true, "down") => ("down", "down"),
        (true, "up") => ("up", "up"),
        (true, "pending") => ("pending", "unchecked"),
        _ => ("unchecked", "unchecked"),
    }
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tandem {node}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.4em; margin: 0 0 .2em; }} h2 {{ font-size: 1.1em; margin: 1.4em 0 .4em; }}
.meta {{ color: #666; }}
table {{ border-collapse: collapse; background: #fff; min-width: 40em; }}
th, td {{ border: 1px solid #ddd; padding: .3em .6em; text-align: left; }}
th {{ background: #f0f0f0; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.badge {{ display: inline-block; padding: 0 .6em; border-radius: .8em; font-weight: 600; color: #fff; }}
.up {{ background: #2e7d32; }} .down {{ background: #c62828; }} .drain {{ background: #ef6c00; }}
.unchecked {{ background: #757575; }} .master {{ background: #1565c0; }} .backup {{ background: #6a1b9a; }}
.err {{ color: #c62828; }}
</style></head><body>
<h1>tandem <span id="node">{node}</span></h1>
<div class="meta">version {version} &middot; pid {pid} &middot; up {uptime} &middot; {reloads} reload(s){config}</div>
"#,
        node = esc(&s.node),
        version = esc(&s.version),
        pid = s.pid,
        uptime = ago(s.uptime_secs),
        reloads = s.reloads,
        config = s
            .config_path
            .as_ref()
            .map(|p| format!(" &middot; {}", esc(p)))
            .unwrap_or_default(),
    );
    h.push_str("<h2>High availability</h2>\n");
    match &s.ha {
        Some(ha) => {
            let class = match ha.state.to_ascii_lowercase().as_str() {
                "master" => "master",
                "backup" => "backup",
                _ => "unchecked",
            };
            let _ = writeln!(
                h,
                r#"<p id="ha">role <span class="badge {class}">{}</span> &middot; {} vrid {} &middot; priority {} (configured {}) &middot; {}</p>"#,
                esc(&ha.state),
                esc(&ha.interface),
                ha.vrid,
                ha.effective_priority,
                ha.priority,
                esc(&ha.virtual_ips.join(", "))
            );
        }
        None => h.push_str("<p id=\"ha\">not configured</p>\n"),
    }
    h.push_str("<h2>Services</h2>\n<table id=\"services\"><tr><th>service</th><th>mode</th><th>listen</th><th>pool</th><th>active</th><th>total</th><th>rejected</th><th>no backend</th></tr>\n");
    for sv in &s.services {
        let _ = writeln!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&sv.name),
            esc(&sv.mode),
            esc(&sv.listen.join(", ")),
            esc(&sv.pool),
            sv.active,
            sv.total,
            sv.rejected,
            sv.no_backend
        );
    }
    h.push_str("</table>\n");
    for p in &s.pools {
        let sticky = p
            .sticky_entries
            .map(|n| format!(" &middot; {n} sticky entries"))
            .unwrap_or_default();
        let fallback = p
            .fallback
            .as_ref()
            .map(|f| format!(" &middot; fallback {}", esc(f)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            r#"<h2>Pool {} <span class="meta">{}{sticky}{fallback}</span></h2>"#,
            esc(&p.name),
            esc(&p.balance)
        );
        let _ = writeln!(
            h,
            r#"<table class="pool" data-pool="{}"><tr><th>backend</th><th>state</th><th>weight</th><th>active</th><th>total</th><th>in</th><th>out</th><th>connect errors</th><th>last check</th></tr>"#,
            esc(&p.name)
        );
        for b in &p.backends {
            let (label, class) = state_of(b);
            let check = match &b.last_check {
                Some(c) if c.ok => format!("ok in {:.1} ms, {} ago", c.latency_ms, ago(c.age_secs)),
                Some(c) => format!(
                    r#"<span class="err">{}</span>, {} ago"#,
                    esc(&c.error),
                    ago(c.age_secs)
                ),
                None => "&ndash;".into(),
            };
            let backup = if b.backup { " (backup)" } else { "" };
            let _ = writeln!(
                h,
                r#"<tr class="backend" data-address="{addr}" data-state="{label}"><td>{addr}{backup}</td><td><span class="badge {class}">{label}</span></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{check}</td></tr>"#,
                b.weight,
                b.active,
                b.total,
                bytes(b.bytes_to_backend),
                bytes(b.bytes_to_client),
                b.connect_errors,
                addr = esc(&b.address),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Sync peers</h2>\n");
    if s.sync.is_empty() {
        h.push_str("<p id=\"sync\">not configured</p>\n");
    } else {
        h.push_str("<table id=\"sync\"><tr><th>peer</th><th>link</th><th>synced</th><th>sent</th><th>received</th><th>last error</th></tr>\n");
        for p in &s.sync {
            let link = if p.connected {
                r#"<span class="badge up">up</span>"#
            } else {
                r#"<span class="badge down">down</span>"#
            };
            let _ = writeln!(
                h,
                r#"<tr><td>{}{}</td><td>{link}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&p.address),
                p.name
                    .as_ref()
                    .map(|n| format!(" ({})", esc(n)))
                    .unwrap_or_default(),
                if p.synced { "yes" } else { "no" },
                p.sent,
                p.received,
                esc(p.last_error.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PoolSnapshot;

    #[test]
    fn names_are_escaped() {
        let s = Snapshot {
            node: "<script>".into(),
            pools: vec![PoolSnapshot {
                name: "a&b".into(),
                ..PoolSnapshot::default()
            }],
            ..Snapshot::default()
        };
        let page = render(&s);
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("Pool a&amp;b"));
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(3725), "1h 2m");
    }
}
