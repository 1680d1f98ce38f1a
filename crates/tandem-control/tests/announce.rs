//! Route announcement as an operator sees it: `tandem ctl announce`, the metrics and
//! the status page's events, from snapshots.

use tandem_control::events::{EventKind, changes};
use tandem_control::metrics::encode;
use tandem_control::protocol::*;
use tandem_control::table;

fn snapshot(announced: bool, reason: &str, operator: bool) -> Snapshot {
    Snapshot {
        node: "lb1".into(),
        announce: Some(AnnounceSnapshot {
            interface: "tdm-ann0".into(),
            ready: true,
            operator_withdrawn: operator,
            stopping: false,
            addresses: vec![
                AnnouncedAddress {
                    address: "192.0.2.10".into(),
                    announced,
                    reason: reason.into(),
                    pools: vec!["web".into(), "api".into()],
                    for_secs: 12,
                },
                AnnouncedAddress {
                    address: "2001:db8::10".into(),
                    announced: true,
                    reason: "serving".into(),
                    pools: vec!["web".into()],
                    for_secs: 40,
                },
            ],
            last_error: None,
        }),
        ..Default::default()
    }
}

#[test]
fn ctl_announce_says_what_is_announced_and_why_not() {
    let s = snapshot(false, "no healthy backend in pool web, api", false);
    assert_eq!(
        table::announce(s.announce.as_ref()),
        "interface tdm-ann0\n\
192.0.2.10    withdrawn  12s  no healthy backend in pool web, api  (pools web, api)\n\
2001:db8::10  announced  40s  serving  (pools web)\n"
    );
    let drained = snapshot(false, "withdrawn by the operator", true);
    assert!(table::announce(drained.announce.as_ref()).starts_with(
        "interface tdm-ann0  (withdrawn by the operator: tandem ctl announce restore)\n"
    ));
    assert!(
        table::status(&drained)
            .contains("announce 1 of 2 address(es) on tdm-ann0 (withdrawn by the operator)\n"),
        "{}",
        table::status(&drained)
    );
    assert_eq!(
        table::announce(None),
        "announce not configured (no [announce] section)\n"
    );
}

#[test]
fn the_state_of_each_address_is_a_metric() {
    let text = encode(&snapshot(false, "withdrawn by the operator", true));
    assert!(
        text.contains("tandem_announce_state{address=\"192.0.2.10\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tandem_announce_state{address=\"2001:db8::10\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_announce_operator_withdrawn 1"),
        "{text}"
    );
    assert!(!encode(&Snapshot::default()).contains("announce"));
}

#[test]
fn a_withdraw_and_an_announce_are_events_with_the_reason() {
    let up = snapshot(true, "serving", false);
    let down = snapshot(false, "no healthy backend in pool web, api", false);
    assert_eq!(
        changes(&up, &down),
        [(
            EventKind::Announce,
            "192.0.2.10".to_string(),
            "withdrawn: no healthy backend in pool web, api".to_string()
        )]
    );
    assert_eq!(
        changes(&down, &up),
        [(
            EventKind::Announce,
            "192.0.2.10".to_string(),
            "announced".to_string()
        )]
    );
    assert!(changes(&up, &up).is_empty());
    // The control protocol carries the request and its answer.
    let request = Request::Announce {
        action: AnnounceAction::Withdraw,
    };
    let wire = serde_json::to_string(&request).unwrap();
    assert_eq!(wire, r#"{"cmd":"announce","action":"withdraw"}"#);
    let reply = Response::ok(Reply::Announce(up.announce.clone()))
        .into_reply(&request)
        .unwrap();
    assert_eq!(reply, Reply::Announce(up.announce));
}
