//! The OCSP task: every few seconds, for each certificate a TLS service serves (files
//! and ACME's) whose chain holds its issuer and which names an OCSP responder (AIA),
//! fetches a response when none is held or half its validity has passed, and hands it
//! to [`tandem_net::ocsp`], whose resolvers staple it while it is current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::{Config, Tls};

use tandem_net::ocsp::unix_now;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tandem_net::ocsp;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Daemon;

/// How often the task looks again.
const TICK: Duration = Duration::from_secs(2);
/// After a failed fetch, the next try.
const RETRY_AFTER: i64 = 30;
/// The longest a responder may take.
const FETCH_WITHIN: Duration = Duration::from_secs(10);

/// The TLS settings of the services that terminate TLS, in the configuration's order.
fn tls_services(config: &Config) -> impl Iterator<Item = &Tls> {
    config.services.iter().filter_map(|s| s.tls.as_ref())
}

/// Runs until `stop`.
pub(super) async fn run(daemon: Daemon, stop: CancellationToken) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    // Per certificate (leaf DER): when to try again after a failure, or never (no
    // responder named).
    let mut not_before: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
    // The certificate files' chains of each TLS service, read once per configuration
    // (a reload brings a new one), not at every tick.
    let mut files_of: Option<Arc<Config>> = None;
    let mut file_chains: Vec<Vec<tandem_net::tls::Chain>> = Vec::new();
    loop {
        let config = daemon.config();
        if !files_of
            .as_ref()
            .is_some_and(|read| Arc::ptr_eq(read, &config))
        {
            file_chains = tls_services(&config)
                .map(tandem_net::tls::file_chains)
                .collect();
            files_of = Some(config.clone());
        }
        for (tls, from_files) in tls_services(&config).zip(&file_chains) {
            let from_acme = tandem_net::tls::acme_chains(tls, from_files);
            for chain in from_files.iter().chain(&from_acme) {
                let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
                    continue;
                };
                let now = unix_now();
                match not_before.get(leaf.as_ref()) {
                    Some(None) => continue,
                    Some(Some(t)) if now < *t => continue,
                    _ => {}
                }
                if ocsp::staple_of(leaf.as_ref()).is_some_and(|s| now < ocsp::refresh_at(&s)) {
                    continue;
                }
                let (url, body, serial) = match ocsp::request(leaf.as_ref(), issuer.as_ref()) {
                    Ok(r) => r,
                    Err(_) => {
                        not_before.insert(leaf.to_vec(), None);
                        continue;
                    }
                };
                let fetched = tokio::select! {
                    () = stop.cancelled() => return,
                    r = fetch(&client, &url, body) => r,
                };
                let parsed = fetched.and_then(|bytes| {
                    ocsp::parse(&bytes, &serial, issuer.as_ref()).map_err(|e| {
                        if matches!(e, ocsp::OcspError::NotGood(_)) {
                            // Revoked or unknown: the response held before is
                            // not stapled any more either.
                            ocsp::remove_staple(leaf.as_ref());
                        }
                        e.to_string()
                    })
                });
                match parsed {
                    Ok(staple) => {
                        info!(responder = %url, this_update = staple.this_update, next_update = ?staple.next_update, refresh_at = ocsp::refresh_at(&staple), "ocsp: response fetched, stapled while current");
                        ocsp::set_staple(leaf.as_ref(), staple);
                        not_before.remove(leaf.as_ref());
                    }
                    Err(e) => {
                        warn!(responder = %url, "ocsp: no response to staple: {e}");
                        not_before.insert(leaf.to_vec(), Some(now + RETRY_AFTER));
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// POSTs `body` to the responder at `url` (http).
async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if !url.starts_with("http://") {
        return Err(format!(
            "{url}: only http:// responders are asked (RFC 6960 A.1)"
        ));
    }
    let request = http::Request::post(url)
        .header("content-type", "application/ocsp-request")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(FETCH_WITHIN, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(body.to_bytes().to_vec())
    })
    .await
    .map_err(|_| format!("no answer within {FETCH_WITHIN:?}"))??;
    Ok(response)
}
