//! Least privilege: tandem started as root becomes `global.user` before it starts any
//! thread, keeping only the capabilities its configuration needs.
//!
//! The switch happens before the runtime exists because Linux keeps credentials and
//! capabilities per thread: done later, worker threads would keep root's. So the
//! listeners are bound after it, which is why a configuration with ports below 1024
//! keeps CAP_NET_BIND_SERVICE (a reload may open such ports too).

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Group, User};
use tandem_config::{Config, Mode};
use tracing::{info, warn};

/// The capabilities `config` needs once running as an ordinary user.
pub fn needed(config: &Config) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    let low_port = config
        .services
        .iter()
        .filter(|s| s.mode != Mode::Redirect)
        .flat_map(|s| s.listen.iter())
        .chain(config.global.admin_listen.iter())
        .any(|a| a.port() != 0 && a.port() < 1024);
    if low_port {
        set.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    if !config.ha.is_empty() || config.has_redirect() {
        // Raw VRRP and ARP sockets, virtual addresses, nftables and conntrack.
        set.insert(Capability::CAP_NET_RAW);
        set.insert(Capability::CAP_NET_ADMIN);
    }
    if config.announce.is_some() {
        // The announced addresses on tandem's own interface.
        set.insert(Capability::CAP_NET_ADMIN);
    }
    set
}

/// What to do about root, decided before anything starts.
///
/// - not root: nothing (an unprivileged tandem cannot change users);
/// - root without `global.user`: refused unless `allow_root`;
/// - root with `global.user`: becomes that user and group, keeps [`needed`] (and with
///   redirect services CAP_NET_ADMIN in the ambient set, for nft and conntrackd), sets
///   no_new_privs.
pub fn drop_root(config: &Config, allow_root: bool) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        if let Some(user) = &config.global.user {
            warn!(user, "not started as root: global.user is ignored");
        }
        return Ok(());
    }
    let Some(name) = &config.global.user else {
        if allow_root {
            warn!("running as root (--allow-root): set global.user to run as an ordinary user");
            return Ok(());
        }
        return Err("tandem refuses to run as root: set [global] user = \"tandem\" (it binds what it needs, then runs as that user with only the capabilities it uses), or pass --allow-root".into());
    };
    let user = User::from_name(name)
        .map_err(|e| format!("global.user {name:?}: {e}"))?
        .ok_or_else(|| format!("global.user: no user is named {name:?} (create it: useradd --system --no-create-home {name})"))?;
    let gid = match &config.global.group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("global.group {g:?}: {e}"))?
                .ok_or_else(|| format!("global.group: no group is named {g:?}"))?
                .gid
        }
        None => user.gid,
    };
    let keep = needed(config);
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("dropping root ({what}): {e}");
    // The bounding set first, while CAP_SETPCAP is still effective.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("bounding set", &e))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(|e| fail("keepcaps", &e))?;
    nix::unistd::setgroups(&[gid]).map_err(|e| fail("setgroups", &e))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail("setresgid", &e))?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid).map_err(|e| fail("setresuid", &e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| fail("keepcaps", &e))?;
    for set in [CapSet::Permitted, CapSet::Effective, CapSet::Inheritable] {
        caps::set(None, set, &keep).map_err(|e| fail("capabilities", &e))?;
    }
    if config.has_redirect() {
        // nft and conntrackd run as children and need it too.
        caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN)
            .map_err(|e| fail("ambient capabilities", &e))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("no_new_privs", &e))?;
    let mut names: Vec<String> = keep.iter().map(ToString::to_string).collect();
    names.sort();
    info!(user = %name, uid = user.uid.as_raw(), gid = gid.as_raw(), capabilities = %names.join(","), "running as an ordinary user");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml", Path::new(".")).unwrap()
    }

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n";

    #[test]
    fn capabilities_follow_the_configuration() {
        let high = config(&format!(
            "{POOL}[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:8080\"]\npool = \"p\"\n"
        ));
        assert!(needed(&high).is_empty(), "high ports, no ha: nothing");
        let low = config(&format!(
            "{POOL}[[service]]\nname = \"s\"\nlisten = [\"0.0.0.0:443\"]\npool = \"p\"\n"
        ));
        assert_eq!(
            needed(&low),
            [Capability::CAP_NET_BIND_SERVICE].into_iter().collect()
        );
        let ha = config(&format!(
            "{POOL}[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:8080\"]\npool = \"p\"\n\
             [ha]\ninterface = \"eth0\"\nvrid = 1\nvirtual_ips = [\"192.0.2.1/24\"]\n"
        ));
        assert_eq!(
            needed(&ha),
            [Capability::CAP_NET_RAW, Capability::CAP_NET_ADMIN]
                .into_iter()
                .collect()
        );
    }
}
