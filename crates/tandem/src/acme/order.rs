//! Talking to the ACME CA (RFC 8555) with instant-acme: the account, and one order
//! from its challenges to the issued chain. Every change the serving side needs (a
//! challenge to answer, a certificate to serve) leaves through a callback as a
//! [`Record`], so the same record goes to this node's store and to the peer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tandem_config::{Acme, AcmeChallenge};

use super::Record;

/// The longest an order may take, from the new-order request to the chain.
pub const ORDER_WITHIN: Duration = Duration::from_secs(90);

/// instant-acme's HTTP client: hyper over rustls with tandem's crypto provider,
/// trusting `tls.acme.ca_file`.
struct AcmeHttp(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.0.request(req);
        Box::pin(async move {
            let response = sent
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                .to_bytes();
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                http_body_util::Full::new(body),
            )))
        })
    }
}

fn http_client(acme: &Acme) -> anyhow::Result<Box<dyn HttpClient>> {
    let tls = tandem_net::tls::client_config(true, Some(&acme.ca_file))
        .with_context(|| format!("tls.acme.ca_file {}", acme.ca_file.display()))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Box::new(AcmeHttp(
        Client::builder(TokioExecutor::new()).build(connector),
    )))
}

/// The account for `acme.directory`: from `credentials` (saved or from the peer), or
/// new (its credentials are then `Some`, to be kept).
pub async fn account(
    acme: &Acme,
    credentials: Option<&str>,
) -> anyhow::Result<(Account, Option<String>)> {
    let builder = Account::builder_with_http(http_client(acme)?);
    if let Some(json) = credentials {
        let creds: AccountCredentials =
            serde_json::from_str(json).context("the saved ACME account is damaged")?;
        let account = builder
            .from_credentials(creds)
            .await
            .context("restoring the ACME account")?;
        return Ok((account, None));
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", acme.directory))?;
    Ok((account, Some(serde_json::to_string(&creds)?)))
}

/// Orders a certificate for `acme.domains`, answering its challenges through
/// `record`; returns the chain and its new private key (PEM). Each challenge's answer
/// is recorded `settle` before the CA is told to validate it (time for the peer to
/// get it: the CA's request may reach the peer). Challenges are withdrawn at the end,
/// issued or not.
pub async fn order(
    account: &Account,
    acme: &Acme,
    record: &(dyn Fn(Record) + Sync),
    settle: Duration,
) -> anyhow::Result<(String, String)> {
    let mut withdraw = Vec::new();
    let result = tokio::time::timeout(
        ORDER_WITHIN,
        order_inner(account, acme, record, settle, &mut withdraw),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow!("no certificate within {ORDER_WITHIN:?}")));
    for r in withdraw {
        record(r);
    }
    result
}

async fn order_inner(
    account: &Account,
    acme: &Acme,
    record: &(dyn Fn(Record) + Sync),
    settle: Duration,
    withdraw: &mut Vec<Record>,
) -> anyhow::Result<(String, String)> {
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("new order")?;
    let kind = match acme.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| anyhow!("the CA offers no {kind:?} challenge"))?;
        let name = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        let (answer, withdrawn) = match acme.challenge {
            AcmeChallenge::Http01 => (
                Record::Http01 {
                    token: challenge.token.clone(),
                    key_authorization: Some(key_authorization.as_str().to_string()),
                },
                Record::Http01 {
                    token: challenge.token.clone(),
                    key_authorization: None,
                },
            ),
            AcmeChallenge::TlsAlpn01 => (
                Record::TlsAlpn01 {
                    name: name.clone(),
                    digest: Some(key_authorization.digest().as_ref().to_vec()),
                },
                Record::TlsAlpn01 { name, digest: None },
            ),
        };
        record(answer);
        withdraw.push(withdrawn);
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        challenge.set_ready().await.context("challenge ready")?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await.context("validation")?;
    if status != OrderStatus::Ready {
        bail!("the order is {status:?} after validation");
    }
    let mut params = rcgen::CertificateParams::new(acme.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await.context("finalize")?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .context("certificate")?;
    Ok((chain, key.serialize_pem()))
}
