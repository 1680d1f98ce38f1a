//! The nftables table of redirect services, as data: what the kernel should do with
//! new connections to each service address. Pure: no IO, tested by its JSON.
//!
//! One table, `inet tandem`, owned by tandem and replaced whole in one transaction:
//!
//! ```text
//! table inet tandem {
//!   chain prerouting { type nat hook prerouting priority dstnat;
//!     ip daddr . tcp dport vmap { 192.0.2.10 . 143 : jump to0, 192.0.2.10 . 993 : jump to1 }
//!     ip6 daddr . tcp dport vmap { ... }
//!   }
//!   chain output { type nat hook output priority -100; ... the same dispatch ... }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ct status dnat ct original ip daddr 192.0.2.10 ip daddr . tcp dport { ... } masquerade
//!   }
//!   chain to0 { meta l4proto tcp counter
//!     dnat ip to numgen inc mod 3 map { 0 : 10.1.0.11 . 143, 1 : 10.1.0.12 . 143, ... }
//!   }
//!   chain to1 { ... }
//! }
//! ```
//!
//! A new connection costs one map lookup, however many services there are: the
//! dispatch is a verdict map keyed by service address and port (one rule per address
//! family), not a rule per service tried in turn. Only the first packet of a
//! connection meets these rules; the kernel's connection state carries the rest, so
//! replacing the table never moves or drops an established connection.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use nftables::batch::Batch;
use nftables::expr::{
    CT, CTDir, Expression, JHash, Map, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload,
    PayloadField, SetItem, Verdict,
};
use nftables::schema::{Chain, Nftables, Rule, Table};
use nftables::stmt::{Counter, JumpTarget, Match, NAT, NATFamily, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The name of tandem's table (family inet).
pub const TABLE: &str = "tandem";

/// Most slots a rule's map holds; larger weight sums are scaled down to it.
pub const MAX_SLOTS: u32 = 256;

/// Seed of the source hash: the same on every node, so that both balancers of a pair
/// send a client address to the same backend (given the same live backends).
pub const HASH_SEED: u32 = 0x7461_6e64;

/// How new connections spread over the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// In turn (nftables `numgen inc`), by weight.
    RoundRobin,
    /// At random (`numgen random`), by weight.
    Random,
    /// By a hash of the client address (`jhash ip saddr`), by weight.
    SourceHash,
}

impl Spread {
    /// The pool's balance name.
    pub fn name(self) -> &'static str {
        match self {
            Spread::RoundRobin => "round-robin",
            Spread::Random => "random",
            Spread::SourceHash => "source-hash",
        }
    }
}

/// A backend that receives new connections, with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Where connections go.
    pub address: SocketAddr,
    /// Relative share, at least 1.
    pub weight: u32,
}

/// One service address forwarded by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Service name (the rule's comment).
    pub service: String,
    /// The address clients connect to.
    pub listen: SocketAddr,
    /// How connections spread.
    pub spread: Spread,
    /// Live targets; none means no rule (new connections are refused by the host).
    pub targets: Vec<Target>,
    /// Rewrite the source of forwarded connections to the balancer's address.
    pub snat: bool,
}

/// The map slots of `targets`: each target appears in proportion to its weight
/// (reduced by the common divisor, at most [`MAX_SLOTS`] in all), interleaved in
/// smooth weighted round-robin order so that consecutive connections alternate.
pub fn slots(targets: &[Target]) -> Vec<SocketAddr> {
    if targets.is_empty() {
        return Vec::new();
    }
    let divisor = targets.iter().map(|t| t.weight.max(1)).fold(0, gcd).max(1);
    let mut shares: Vec<u32> = targets.iter().map(|t| t.weight.max(1) / divisor).collect();
    let total: u32 = shares.iter().sum();
    if total > MAX_SLOTS {
        for share in &mut shares {
            *share = ((u64::from(*share) * u64::from(MAX_SLOTS) / u64::from(total)) as u32).max(1);
        }
    }
    let total: i64 = shares.iter().map(|s| i64::from(*s)).sum();
    let mut current = vec![0i64; shares.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, s) in current.iter_mut().zip(&shares) {
            *c += i64::from(*s);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("targets is not empty");
        current[best] -= total;
        out.push(targets[best].address);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn equals(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn ip_protocol(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "ip" } else { "ip6" }
}

fn address(addr: &SocketAddr) -> Expression<'static> {
    Expression::String(Cow::Owned(addr.ip().to_string()))
}

fn address_and_port(addr: &SocketAddr) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        address(addr),
        Expression::Number(u32::from(addr.port())),
    ]))
}

/// The regular chain that holds the DNAT rule of the forward at `index`.
fn forward_chain(index: usize) -> String {
    format!("to{index}")
}

/// The dispatch rule of one address family (`protocol` "ip" or "ip6") for `chain`:
/// one verdict map from service address and port to the forward's chain, or `None`
/// when no forward of that family has a live target. The first forward of an address
/// wins, as the first of a list of rules would.
fn dispatch_rule(
    forwards: &[Forward],
    protocol: &'static str,
    chain: &'static str,
) -> Option<Rule<'static>> {
    let mut seen = HashSet::new();
    let data: Vec<SetItem> = forwards
        .iter()
        .enumerate()
        .filter(|(_, f)| ip_protocol(&f.listen) == protocol && !f.targets.is_empty())
        .filter(|(_, f)| seen.insert(f.listen))
        .map(|(i, f)| {
            SetItem::Mapping(
                address_and_port(&f.listen),
                Expression::Verdict(Verdict::Jump(JumpTarget {
                    target: Cow::Owned(forward_chain(i)),
                })),
            )
        })
        .collect();
    if data.is_empty() {
        return None;
    }
    let expr = vec![Statement::VerdictMap(VerdictMap {
        key: Expression::Named(NamedExpression::Concat(vec![
            payload(protocol, "daddr"),
            payload("tcp", "dport"),
        ])),
        data: Expression::Named(NamedExpression::Set(data)),
    })];
    Some(rule(chain, expr, None))
}

/// The DNAT rule of one forward, for its own chain, or `None` without live targets.
/// The dispatch has matched the address and port; `meta l4proto tcp` gives nft the
/// transport protocol the port mapping needs.
fn dnat_rule(f: &Forward, chain: String) -> Option<Rule<'static>> {
    let slots = slots(&f.targets);
    if slots.is_empty() {
        return None;
    }
    let modulus = slots.len() as u32;
    let key = match f.spread {
        Spread::RoundRobin | Spread::Random => NamedExpression::Numgen(Numgen {
            mode: if f.spread == Spread::Random {
                NgMode::Random
            } else {
                NgMode::Inc
            },
            ng_mod: modulus,
            offset: None,
        }),
        Spread::SourceHash => NamedExpression::JHash(JHash {
            hash_mod: modulus,
            offset: None,
            expr: Box::new(payload(ip_protocol(&f.listen), "saddr")),
            seed: Some(HASH_SEED),
        }),
    };
    let data = slots
        .iter()
        .enumerate()
        .map(|(i, a)| SetItem::Mapping(Expression::Number(i as u32), address_and_port(a)))
        .collect();
    let mut expr = vec![
        equals(
            Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::L4proto,
            })),
            Expression::String(Cow::Borrowed("tcp")),
        ),
        Statement::Counter(Counter::Anonymous(None)),
    ];
    expr.push(Statement::DNAT(Some(NAT {
        addr: Some(Expression::Named(NamedExpression::Map(Box::new(Map {
            key: Expression::Named(key),
            data: Expression::Named(NamedExpression::Set(data)),
        })))),
        family: Some(if f.listen.is_ipv4() {
            NATFamily::IP
        } else {
            NATFamily::IP6
        }),
        port: None,
        flags: None,
    })));
    Some(rule(chain, expr, Some(f.service.clone())))
}

/// The masquerade rule of a forward with `snat`.
fn snat_rule(f: &Forward) -> Option<Rule<'static>> {
    if !f.snat || f.targets.is_empty() {
        return None;
    }
    let protocol = ip_protocol(&f.listen);
    let mut seen = HashSet::new();
    let targets: Vec<SetItem> = f
        .targets
        .iter()
        .filter(|t| seen.insert(t.address))
        .map(|t| SetItem::Element(address_and_port(&t.address)))
        .collect();
    let expr = vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: Cow::Borrowed("status"),
                family: None,
                dir: None,
            })),
            right: Expression::String(Cow::Borrowed("dnat")),
            op: Operator::IN,
        }),
        equals(
            Expression::Named(NamedExpression::CT(CT {
                key: Cow::Owned(format!("{protocol} daddr")),
                family: None,
                dir: Some(CTDir::Original),
            })),
            address(&f.listen),
        ),
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Concat(vec![
                payload(protocol, "daddr"),
                payload("tcp", "dport"),
            ])),
            right: Expression::Named(NamedExpression::Set(targets)),
            op: Operator::EQ,
        }),
        Statement::Masquerade(None),
    ];
    Some(rule("postrouting", expr, Some(f.service.clone())))
}

fn rule(
    chain: impl Into<Cow<'static, str>>,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: comment.map(Cow::Owned),
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn base_chain(name: &'static str, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        newname: None,
        handle: None,
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }
}

fn regular_chain(name: String) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name),
        newname: None,
        handle: None,
        _type: None,
        hook: None,
        prio: None,
        dev: None,
        policy: None,
    }
}

/// One transaction that replaces tandem's table (or creates it) with the rules of
/// `forwards`. Adding the table first makes the delete valid when none exists.
pub fn ruleset(forwards: &[Forward]) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(nftables::schema::NfListObject::Table(table()));
    batch.delete(nftables::schema::NfListObject::Table(table()));
    batch.add(nftables::schema::NfListObject::Table(table()));
    // dstnat = -100, srcnat = 100.
    for (name, hook, prio) in [
        ("prerouting", NfHook::Prerouting, -100),
        ("output", NfHook::Output, -100),
        ("postrouting", NfHook::Postrouting, 100),
    ] {
        batch.add(nftables::schema::NfListObject::Chain(base_chain(
            name, hook, prio,
        )));
    }
    // Each forward's chain before the dispatch that jumps to it.
    for (i, f) in forwards.iter().enumerate() {
        if let Some(r) = dnat_rule(f, forward_chain(i)) {
            batch.add(nftables::schema::NfListObject::Chain(regular_chain(
                forward_chain(i),
            )));
            batch.add(nftables::schema::NfListObject::Rule(r));
        }
    }
    // output: connections the balancer host opens itself (an operator's test).
    for chain in ["prerouting", "output"] {
        for protocol in ["ip", "ip6"] {
            if let Some(r) = dispatch_rule(forwards, protocol, chain) {
                batch.add(nftables::schema::NfListObject::Rule(r));
            }
        }
    }
    for f in forwards {
        if let Some(r) = snat_rule(f) {
            batch.add(nftables::schema::NfListObject::Rule(r));
        }
    }
    batch.to_nftables()
}

/// The rules of `forwards` as one string (the JSON nft is given): equal strings, equal
/// tables. An upgrade's successor compares it with its predecessor's to keep the table
/// as it is.
pub fn fingerprint(forwards: &[Forward]) -> String {
    serde_json::to_string(&ruleset(forwards)).unwrap_or_default()
}

/// One transaction that removes tandem's table, whether or not it exists.
pub fn removal() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(nftables::schema::NfListObject::Table(table()));
    batch.delete(nftables::schema::NfListObject::Table(table()));
    batch.to_nftables()
}

/// A line per forward for logs and `tandem ctl`: where new connections go.
pub fn describe(f: &Forward) -> String {
    let mut line = format!("{} {} ->", f.service, f.listen);
    if f.targets.is_empty() {
        line.push_str(" (no live backend: refused)");
    }
    for t in &f.targets {
        let _ = write!(line, " {}", t.address);
        if t.weight != 1 {
            let _ = write!(line, "*{}", t.weight);
        }
    }
    let _ = write!(line, " [{}", f.spread.name());
    if f.snat {
        line.push_str(", snat");
    }
    line.push(']');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, weight: u32) -> Target {
        Target {
            address: addr.parse().unwrap(),
            weight,
        }
    }

    fn forward(spread: Spread, targets: Vec<Target>, snat: bool) -> Forward {
        Forward {
            service: "imap".into(),
            listen: "192.0.2.10:143".parse().unwrap(),
            spread,
            targets,
            snat,
        }
    }

    #[test]
    fn slots_follow_weights_reduced_and_interleaved() {
        let a = t("10.1.0.11:143", 20);
        let b = t("10.1.0.12:143", 10);
        let s = slots(&[a, b]);
        assert_eq!(s, vec![a.address, b.address, a.address]);
        assert_eq!(slots(&[a]), vec![a.address]);
        assert!(slots(&[]).is_empty());
    }

    #[test]
    fn slots_are_bounded_and_every_target_keeps_one() {
        let targets: Vec<Target> = (1..=40)
            .map(|i| t(&format!("10.1.0.{i}:80"), if i == 1 { 1 } else { 255 - i }))
            .collect();
        let s = slots(&targets);
        assert!(s.len() as u32 <= MAX_SLOTS + targets.len() as u32);
        for target in &targets {
            assert!(
                s.contains(&target.address),
                "{} lost its slot",
                target.address
            );
        }
    }

    #[test]
    fn round_robin_rule_is_a_numgen_map_to_address_and_port() {
        let f = forward(
            Spread::RoundRobin,
            vec![t("10.1.0.11:143", 1), t("10.1.0.12:1143", 2)],
            false,
        );
        let json = serde_json::to_value(ruleset(&[f])).unwrap();
        let objects = json["nftables"].as_array().unwrap();
        // add, delete, add the table; three base chains; the forward's chain and its
        // rule; the dispatch in prerouting and output.
        assert_eq!(objects.len(), 10, "{json:#}");
        assert!(objects[1]["delete"]["table"]["name"] == "tandem");
        assert_eq!(objects[6]["add"]["chain"]["name"], "to0");
        assert!(objects[6]["add"]["chain"].get("hook").is_none());
        let rule = &objects[7]["add"]["rule"];
        assert_eq!(rule["chain"], "to0");
        assert_eq!(rule["comment"], "imap");
        let expr = rule["expr"].as_array().unwrap();
        assert_eq!(expr[0]["match"]["left"]["meta"]["key"], "l4proto");
        assert_eq!(expr[0]["match"]["right"], "tcp");
        let dnat = &expr[2]["dnat"];
        assert_eq!(dnat["family"], "ip");
        assert_eq!(dnat["addr"]["map"]["key"]["numgen"]["mode"], "inc");
        assert_eq!(dnat["addr"]["map"]["key"]["numgen"]["mod"], 3);
        for (object, chain) in [(8, "prerouting"), (9, "output")] {
            let dispatch = &objects[object]["add"]["rule"];
            assert_eq!(dispatch["chain"], chain);
            let vmap = &dispatch["expr"][0]["vmap"];
            assert_eq!(vmap["key"]["concat"][0]["payload"]["field"], "daddr");
            assert_eq!(vmap["key"]["concat"][1]["payload"]["field"], "dport");
            let entry = &vmap["data"]["set"][0];
            assert_eq!(entry[0]["concat"][0], "192.0.2.10");
            assert_eq!(entry[0]["concat"][1], 143);
            assert_eq!(entry[1]["jump"]["target"], "to0");
        }
        let set = dnat["addr"]["map"]["data"]["set"].as_array().unwrap();
        let targets: Vec<String> = set
            .iter()
            .map(|e| {
                let c = &e[1]["concat"];
                format!("{}:{}", c[0].as_str().unwrap(), c[1])
            })
            .collect();
        assert_eq!(
            targets,
            ["10.1.0.12:1143", "10.1.0.11:143", "10.1.0.12:1143"]
        );
    }

    #[test]
    fn source_hash_hashes_the_client_address_with_a_fixed_seed() {
        let f = forward(Spread::SourceHash, vec![t("10.1.0.11:143", 1)], false);
        let json = serde_json::to_value(ruleset(&[f])).unwrap();
        let key = &json["nftables"][7]["add"]["rule"]["expr"][2]["dnat"]["addr"]["map"]["key"];
        assert_eq!(key["jhash"]["expr"]["payload"]["field"], "saddr");
        assert_eq!(key["jhash"]["seed"], HASH_SEED);
    }

    #[test]
    fn no_live_target_means_no_rule_and_ipv6_uses_ip6() {
        let f = forward(Spread::RoundRobin, vec![], true);
        let json = serde_json::to_value(ruleset(&[f])).unwrap();
        assert_eq!(json["nftables"].as_array().unwrap().len(), 6);
        let f6 = Forward {
            listen: "[fd00::10]:80".parse().unwrap(),
            ..forward(Spread::Random, vec![t("[fd01::11]:80", 1)], false)
        };
        let json = serde_json::to_value(ruleset(&[f6])).unwrap();
        let expr = &json["nftables"][7]["add"]["rule"]["expr"];
        assert_eq!(expr[2]["dnat"]["family"], "ip6");
        assert_eq!(
            expr[2]["dnat"]["addr"]["map"]["key"]["numgen"]["mode"],
            "random"
        );
        let vmap = &json["nftables"][8]["add"]["rule"]["expr"][0]["vmap"];
        assert_eq!(vmap["key"]["concat"][0]["payload"]["protocol"], "ip6");
        assert_eq!(vmap["data"]["set"][0][0]["concat"][0], "fd00::10");
    }

    #[test]
    fn one_dispatch_rule_per_family_however_many_services() {
        let mut forwards: Vec<Forward> = (0..300)
            .map(|i| Forward {
                service: format!("s{i}"),
                listen: format!("192.0.2.{}:{}", i % 200 + 1, 1000 + i)
                    .parse()
                    .unwrap(),
                ..forward(Spread::RoundRobin, vec![t("10.1.0.11:80", 1)], false)
            })
            .collect();
        // A second forward of an address already taken: the first one wins.
        forwards.push(Forward {
            service: "late".into(),
            ..forwards[0].clone()
        });
        // Without a live target: no chain, no map entry.
        forwards.push(Forward {
            service: "dead".into(),
            listen: "192.0.2.250:9".parse().unwrap(),
            ..forward(Spread::RoundRobin, vec![], false)
        });
        forwards.push(Forward {
            listen: "[fd00::10]:80".parse().unwrap(),
            ..forward(Spread::RoundRobin, vec![t("[fd01::11]:80", 1)], false)
        });
        let json = serde_json::to_value(ruleset(&forwards)).unwrap();
        let objects = json["nftables"].as_array().unwrap();
        let in_chain = |chain: &str| -> Vec<&serde_json::Value> {
            objects
                .iter()
                .filter_map(|o| o["add"].get("rule"))
                .filter(|r| r["chain"] == chain)
                .collect()
        };
        for chain in ["prerouting", "output"] {
            let rules = in_chain(chain);
            assert_eq!(rules.len(), 2, "{chain}: one rule per address family");
            let v4 = rules[0]["expr"][0]["vmap"]["data"]["set"]
                .as_array()
                .unwrap();
            assert_eq!(v4.len(), 300);
            assert_eq!(v4[0][1]["jump"]["target"], "to0");
            let v6 = rules[1]["expr"][0]["vmap"]["data"]["set"]
                .as_array()
                .unwrap();
            assert_eq!(v6.len(), 1);
            assert_eq!(v6[0][1]["jump"]["target"], "to302");
        }
        assert!(
            in_chain("to301").is_empty(),
            "a forward without targets has no rule"
        );
        assert_eq!(in_chain("to0")[0]["comment"], "s0");
        // Every chain a dispatch jumps to is in the transaction before the dispatch.
        let first_dispatch = objects
            .iter()
            .position(|o| o["add"]["rule"]["chain"] == "prerouting")
            .unwrap();
        let chains_before: HashSet<&str> = objects[..first_dispatch]
            .iter()
            .filter_map(|o| o["add"]["chain"]["name"].as_str())
            .collect();
        for entry in in_chain("prerouting")
            .iter()
            .flat_map(|r| r["expr"][0]["vmap"]["data"]["set"].as_array().unwrap())
        {
            assert!(chains_before.contains(entry[1]["jump"]["target"].as_str().unwrap()));
        }
    }

    #[test]
    fn snat_masquerades_only_what_was_redirected_to_the_targets() {
        let f = forward(
            Spread::RoundRobin,
            vec![t("10.1.0.11:143", 1), t("10.1.0.12:143", 1)],
            true,
        );
        let json = serde_json::to_value(ruleset(&[f])).unwrap();
        let rule = &json["nftables"][10]["add"]["rule"];
        assert_eq!(rule["chain"], "postrouting");
        let expr = rule["expr"].as_array().unwrap();
        assert_eq!(expr[0]["match"]["right"], "dnat");
        assert_eq!(expr[1]["match"]["left"]["ct"]["dir"], "original");
        assert_eq!(
            expr[2]["match"]["right"]["set"].as_array().unwrap().len(),
            2
        );
        assert!(expr[3].get("masquerade").is_some());
    }

    #[test]
    fn removal_is_add_then_delete() {
        let json = serde_json::to_value(removal()).unwrap();
        assert!(json["nftables"][0]["add"]["table"].is_object());
        assert!(json["nftables"][1]["delete"]["table"].is_object());
    }

    #[test]
    fn describe_names_targets_and_spread() {
        let f = forward(
            Spread::SourceHash,
            vec![t("10.1.0.11:143", 1), t("10.1.0.12:143", 3)],
            true,
        );
        assert_eq!(
            describe(&f),
            "imap 192.0.2.10:143 -> 10.1.0.11:143 10.1.0.12:143*3 [source-hash, snat]"
        );
        assert_eq!(
            describe(&forward(Spread::RoundRobin, vec![], false)),
            "imap 192.0.2.10:143 -> (no live backend: refused) [round-robin]"
        );
    }
}
