//! Kernel L4 forwarding for tandem's `mode = "redirect"` services: the nftables table
//! that DNATs each service address to the live backends ([`rules`], [`nft`]), and the
//! conntrackd that replicates the kernel's connection states to the peer so that
//! established connections survive a failover ([`conntrackd`]).

pub mod conntrackd;
pub mod nft;
pub mod rules;

pub use conntrackd::{ConntrackSettings, ConntrackStatus, Conntrackd};
pub use nft::{Nft, NftError};
pub use rules::{Forward, Spread, Target};

use std::path::Path;

/// What this host lacks to forward `forwards` in the kernel, one sentence each with
/// its fix; empty when ready. `conntrackd` is the program when state sync is on.
pub fn preflight(forwards: &[Forward], nft: &Nft, conntrackd: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    if forwards.is_empty() {
        return problems;
    }
    let sysctl = |path: &str| {
        std::fs::read_to_string(path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false)
    };
    if forwards.iter().any(|f| f.listen.is_ipv4()) && !sysctl("/proc/sys/net/ipv4/ip_forward") {
        problems.push(
            "IPv4 forwarding is off, so the kernel would not pass redirected connections on: \
             run `sysctl -w net.ipv4.ip_forward=1` (and set it in /etc/sysctl.d/)"
                .to_string(),
        );
    }
    if forwards.iter().any(|f| f.listen.is_ipv6())
        && !sysctl("/proc/sys/net/ipv6/conf/all/forwarding")
    {
        problems.push(
            "IPv6 forwarding is off: run `sysctl -w net.ipv6.conf.all.forwarding=1`".to_string(),
        );
    }
    if !nft.available() {
        problems.push(
            "the nft program (package nftables) is missing: install it (apt-get install nftables)"
                .to_string(),
        );
    }
    if let Some(program) = conntrackd
        && !conntrackd::program_exists(program)
    {
        problems.push(format!(
            "{} is missing, and established connections would not survive a failover: \
             install conntrackd (apt-get install conntrackd) or set sync.conntrackd to its path",
            program.display()
        ));
    }
    problems
}
