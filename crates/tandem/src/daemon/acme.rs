//! The ACME task: each second, for every service's `tls.acme`, asks [`plan::next`]
//! whether an order is due and, when this node orders ([`orders_here`]), runs it.
//! Its records are applied here and published to the peer over sync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tandem_net::ocsp::unix_now;

use tandem_config::Acme;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;
use crate::acme::plan::{self, Failures, Next};
use crate::acme::{AcmeState, Record, order};

/// How often the task looks again.
const TICK: Duration = Duration::from_secs(1);

/// Whether this node orders certificates: a single node does; of a pair, the VRRP
/// master only (the backup gets them over sync): with several instances, the master
/// of the first one, so that one node of an active/active pair orders.
pub(super) fn orders_here(daemon: &Daemon) -> bool {
    match daemon.vrrp().first() {
        None => true,
        Some(vrrp) => vrrp.status().state == tandem_vrrp::State::Master,
    }
}

/// Every `tls.acme` of the running configuration.
fn configured(daemon: &Daemon) -> Vec<Acme> {
    daemon
        .config()
        .services
        .iter()
        .filter_map(|s| s.tls.as_ref()?.acme.clone())
        .collect()
}

/// Applies `record` here and sends it to the peer.
pub(super) fn record(daemon: &Daemon, state: &AcmeState, r: Record) {
    if let Err(e) = state.apply(&r) {
        warn!("acme: {e:#}");
    }
    publish(daemon, &r);
}

/// Sends `record` to the peer.
fn publish(daemon: &Daemon, r: &Record) {
    if let Some(sync) = daemon.sync() {
        sync.publish(tandem_sync::Change::Acme(crate::acme::encode(r)));
    }
}

/// Runs until `stop`.
/// How long a challenge's answer has to reach the peer over sync (its batching, 20 ms,
/// and a LAN round trip, with room) before the CA is told to validate it. Sync has no
/// acknowledgement of single records: this is a wait, not a confirmation.
const PEER_SETTLE: Duration = Duration::from_millis(250);

pub(super) async fn run(daemon: Daemon, state: Arc<AcmeState>, stop: CancellationToken) {
    let mut failures: HashMap<String, Failures> = HashMap::new();
    let mut accounts: HashMap<String, instant_acme::Account> = HashMap::new();
    // Names whose files were read (at build; a reload's new names here).
    let mut loaded: HashSet<String> = configured(&daemon)
        .iter()
        .filter_map(|a| a.domains.first().cloned())
        .collect();
    loop {
        for acme in configured(&daemon) {
            let Some(first) = acme.domains.first().cloned() else {
                continue;
            };
            if loaded.insert(first.clone()) {
                for problem in state.load(&[&acme]) {
                    warn!("acme: {problem}");
                }
            }
            let failed = failures.get(&first).copied().unwrap_or_default();
            let held = state.held(&acme);
            let Next::Order(why) = plan::next(&acme.domains, held.as_ref(), failed, unix_now())
            else {
                continue;
            };
            if !orders_here(&daemon) {
                continue;
            }
            info!(names = ?acme.domains, reason = ?why, directory = %acme.directory, "acme: ordering a certificate");
            let ordered = tokio::select! {
                () = stop.cancelled() => return,
                r = order_one(&daemon, &state, &acme, &mut accounts) => r,
            };
            match ordered {
                Ok(()) => {
                    failures.remove(&first);
                    if let Some(h) = state.held(&acme) {
                        info!(names = ?acme.domains, not_after = h.not_after, renew_at = plan::renew_at(&h), "acme: certificate issued and served");
                    }
                }
                Err(e) => {
                    let f = Failures {
                        count: failed.count + 1,
                        last: unix_now(),
                    };
                    warn!(names = ?acme.domains, failures = f.count, retry_in = ?plan::backoff(f.count), "acme: order failed: {e:#}");
                    failures.insert(first, f);
                    // A failure may be the account's: restore it again next time.
                    accounts.remove(&acme.directory);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn order_one(
    daemon: &Daemon,
    state: &AcmeState,
    acme: &Acme,
    accounts: &mut HashMap<String, instant_acme::Account>,
) -> anyhow::Result<()> {
    let account = match accounts.get(&acme.directory) {
        Some(a) => a.clone(),
        None => {
            let saved = state.account(&acme.directory);
            let (account, new) = order::account(acme, saved.as_deref()).await?;
            if let Some(credentials) = new {
                record(
                    daemon,
                    state,
                    Record::Account {
                        directory: acme.directory.clone(),
                        credentials,
                    },
                );
            }
            accounts.insert(acme.directory.clone(), account.clone());
            account
        }
    };
    // Challenges left pending by an order that did not end here (the peer's, before
    // it died) are withdrawn on both nodes first.
    for withdrawn in state.stale_challenges() {
        record(daemon, state, withdrawn);
    }
    let apply = |r: Record| record(daemon, state, r);
    // With a peer, its copy of each answer gets a moment to arrive before the CA
    // validates (its request may reach the peer, e.g. right after a failover).
    let settle = if daemon.sync().is_some() {
        PEER_SETTLE
    } else {
        Duration::ZERO
    };
    let (chain, key) = order::order(&account, acme, &apply, settle).await?;
    let cert = Record::Certificate {
        names: acme.domains.clone(),
        chain,
        key,
    };
    state.apply(&cert)?;
    publish(daemon, &cert);
    Ok(())
}
