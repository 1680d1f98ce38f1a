//! The rules as the kernel takes them: applied with the real `nft` inside a network
//! namespace made (and always removed) by the test. Needs root and nftables; says
//! SKIPPED otherwise.

use std::process::Command;

use tandem_redirect::{Forward, Nft, Spread, Target};

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn namespace() -> Option<Namespace> {
    let root = rustix::process::geteuid().is_root();
    if !root || !Nft::default().available() {
        eprintln!("SKIPPED: needs root and nft (scripts/test installs nftables)");
        return None;
    }
    let name = format!("tdnft{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .ok()?
        .success();
    ok.then_some(Namespace(name))
}

/// Runs `f` on a thread inside the namespace; programs it starts run there too.
fn inside<T: Send + 'static>(ns: &Namespace, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn forward(
    service: &str,
    listen: &str,
    spread: Spread,
    targets: &[(&str, u32)],
    snat: bool,
) -> Forward {
    Forward {
        service: service.into(),
        listen: listen.parse().unwrap(),
        spread,
        targets: targets
            .iter()
            .map(|(a, w)| Target {
                address: a.parse().unwrap(),
                weight: *w,
            })
            .collect(),
        snat,
    }
}

#[test]
fn the_kernel_takes_the_table_replaces_it_whole_and_removes_it() {
    let Some(ns) = namespace() else { return };
    inside(&ns, || {
        let nft = Nft::default();
        let forwards = vec![
            forward(
                "imap",
                "10.0.0.10:143",
                Spread::RoundRobin,
                &[("10.1.0.11:143", 1), ("10.1.0.12:1143", 2)],
                false,
            ),
            forward(
                "pop3",
                "10.0.0.10:110",
                Spread::SourceHash,
                &[("10.1.0.11:110", 1)],
                true,
            ),
            forward(
                "web6",
                "[fd00::10]:80",
                Spread::Random,
                &[("[fd01::11]:80", 1), ("[fd01::12]:80", 1)],
                false,
            ),
        ];
        nft.apply(&forwards).expect("the kernel takes the rules");
        let listed = nft.list().unwrap();
        // One dispatch per family in prerouting and output: a map lookup, not a rule
        // per service (the kernel lists a map's entries in its own order).
        for (text, count) in [
            ("ip daddr . tcp dport vmap {", 2),
            ("10.0.0.10 . 143 : jump to0", 2),
            ("10.0.0.10 . 110 : jump to1", 2),
            ("ip6 daddr . tcp dport vmap { fd00::10 . 80 : jump to2 }", 2),
            ("tcp dport 143", 0),
        ] {
            assert_eq!(listed.matches(text).count(), count, "{text}: {listed}");
        }
        assert!(listed.contains("dnat ip to numgen inc mod 3 map { 0 : 10.1.0.12 . 1143, 1 : 10.1.0.11 . 143, 2 : 10.1.0.12 . 1143 }"), "{listed}");
        assert!(
            listed.contains("dnat ip to jhash ip saddr mod 1 seed 0x74616e64"),
            "{listed}"
        );
        assert!(
            listed.contains("dnat ip6 to numgen random mod 2"),
            "{listed}"
        );
        assert!(listed.contains("masquerade"), "{listed}");
        assert_eq!(
            listed.matches("comment \"imap\"").count(),
            1,
            "its own chain, which both dispatches jump to: {listed}"
        );

        // A backend leaves: the table is replaced in one go, the others stay.
        let fewer = vec![forward(
            "imap",
            "10.0.0.10:143",
            Spread::RoundRobin,
            &[("10.1.0.11:143", 1)],
            false,
        )];
        nft.apply(&fewer).unwrap();
        let listed = nft.list().unwrap();
        assert!(listed.contains("map { 0 : 10.1.0.11 . 143 }"), "{listed}");
        assert!(!listed.contains("10.1.0.12"), "{listed}");
        assert!(!listed.contains(". 110"), "{listed}");
        assert!(!listed.contains("chain to1"), "{listed}");

        nft.remove().unwrap();
        assert!(nft.list().is_err(), "the table is gone");
        nft.remove().expect("removing twice is fine");
    });
}
