//! The status page: one self-contained HTML document (no external assets, no build
//! step) whose inline script renders the state and keeps it live: the snapshot twice
//! a second, the last hour's rates as small charts, the timeline of events.

use crate::history::HistoryView;
use crate::protocol::Snapshot;

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

/// The page's script, inline in the document (its hash is in the CSP).
pub const SCRIPT: &str = include_str!("page.js");

/// The `script-src` source that allows [`SCRIPT`] and nothing else.
pub fn script_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(SCRIPT.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    })
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a1a1a; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.meta { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; }
caption { text-align: left; color: #555; padding: .2em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: middle; }
th { background: #eee; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 0 .6em; border-radius: .8em; font-weight: 600; color: #fff; }
.up { background: #1b5e20; } .down { background: #b71c1c; } .drain { background: #8a4b00; }
.unchecked { background: #616161; } .master { background: #0d47a1; } .backup { background: #4a148c; }
.kind { background: #37474f; }
.since { color: #555; margin-left: .4em; white-space: nowrap; }
.err { color: #b71c1c; }
.chart { display: inline-flex; align-items: center; gap: .4em; white-space: nowrap; }
.spark { background: #f4f4f4; } .spark polyline { fill: none; stroke-width: 1.5; }
.spark polyline.ok { stroke: #0d47a1; } .spark polyline.bad { stroke: #b71c1c; } .spark polyline.slow { stroke: #e65100; }
.reading { font-variant-numeric: tabular-nums; color: #333; min-width: 4.5em; }
#timeline { padding-left: 1.5em; max-height: 24em; overflow-y: auto; background: #fff; border: 1px solid #ccc; }
#timeline li { padding: .15em 0; } #timeline time { color: #555; font-variant-numeric: tabular-nums; }
button.act { font: inherit; padding: .1em .7em; }
@media (max-width: 700px) { body { margin: .6em; font-size: 13px; } th, td { padding: .25em .4em; } }
"#;

/// The whole page: a shell whose script renders `s` and `history` at once and then follows
/// `/status.json`, `/history.json` and `/events.json`. `write` shows the drain and
/// enable buttons (the admin port checks each action again).
pub fn render(s: &Snapshot, history: &HistoryView, write: bool) -> String {
    let boot = serde_json::json!({ "snapshot": s, "history": history, "write": write });
    // Inside a script element, "<" must not start "</script>".
    let boot = boot.to_string().replace('<', "\\u003c");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="5;url=/status.json"></noscript>
<title>tandem {node}</title>
<style>{STYLE}</style></head><body>
<main id="app"><h1>tandem <span id="node">{node}</span></h1>
<noscript><p>This page draws with JavaScript; <a href="/status.json">/status.json</a> has the same figures and <a href="/metrics">/metrics</a> the counters.</p></noscript></main>
<script type="application/json" id="boot">{boot}</script>
<script>{SCRIPT}</script>
</body></html>
"#,
        node = esc(&s.node),
    )
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
        let page = render(&s, &HistoryView::default(), false);
        assert!(page.contains("<title>tandem &lt;script&gt;</title>"));
        // The data island cannot close its element early.
        assert!(!page.contains("\"<script>"), "{page}");
        assert_eq!(page.matches("</script>").count(), 2);
        let boot = page
            .split("id=\"boot\">")
            .nth(1)
            .unwrap()
            .split("</script>")
            .next()
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(boot).unwrap();
        assert_eq!(data["snapshot"]["pools"][0]["name"], "a&b");
        assert_eq!(data["snapshot"]["node"], "<script>");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(3725), "1h 2m");
    }
}
