//! ACME (RFC 8555): certificates tandem orders itself for `tls.acme` names.
//!
//! [`plan`] decides when (pure, simulated time); [`order`] talks to the CA; this
//! module keeps what must outlive a restart and travel to the peer. Every change is
//! a [`Record`]: the account, a challenge to answer or withdraw, an issued certificate.
//! [`AcmeState::apply`] puts a record in force on this node (files in
//! `global.state_dir/acme/`, the serving side's [`tandem_net::acme::store`]); the node
//! that orders applies its own records and sends them over sync, and the peer applies
//! them the same way, so it answers a challenge that reaches it and serves the same
//! certificate after a failover.
//!
//! Files: `account-HASH.json` (the account's credentials, per directory URL),
//! `NAME.crt` (the chain) and `NAME.key` (its private key), NAME being the first of
//! the certificate's names. Keys and the account are 0600; every file is written
//! atomically ([`crate::state_file::write_atomic`]).

pub mod order;
pub mod plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use tandem_config::Acme;

use plan::Held;

/// The folder of ACME's files in `global.state_dir`.
pub const DIR_NAME: &str = "acme";

/// A change to the ACME state that both nodes of a pair apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The account's credentials (instant-acme's JSON) for a directory URL.
    Account {
        /// The CA's directory URL.
        directory: String,
        /// The credentials, private key included.
        credentials: String,
    },
    /// An HTTP-01 token to answer (`Some`), or withdrawn (`None`).
    Http01 {
        /// The token of the challenge URL.
        token: String,
        /// The body to answer with.
        key_authorization: Option<String>,
    },
    /// A TLS-ALPN-01 challenge for a name: the SHA-256 of the key authorization
    /// (`Some`), or withdrawn (`None`).
    TlsAlpn01 {
        /// The name validated.
        name: String,
        /// The acmeIdentifier value.
        digest: Option<Vec<u8>>,
    },
    /// An issued certificate.
    Certificate {
        /// The names ordered (the configured `domains`; the first names the files).
        names: Vec<String>,
        /// The chain, leaf first (PEM).
        chain: String,
        /// Its private key (PEM).
        key: String,
    },
}

/// What this node holds of ACME: the files' folder, the certificates' validity (by
/// first name) and the accounts' credentials (by directory).
#[derive(Debug)]
pub struct AcmeState {
    dir: PathBuf,
    held: Mutex<HashMap<String, Held>>,
    accounts: Mutex<HashMap<String, String>>,
    /// The records in force, for a peer's bulk transfer: by kind and key.
    current: Mutex<HashMap<(u8, String), Record>>,
}

/// A record's bytes on the sync link.
pub fn encode(record: &Record) -> Vec<u8> {
    postcard::to_stdvec(record).expect("a Record always serializes")
}

/// Reads bytes written by [`encode`].
pub fn decode(bytes: &[u8]) -> anyhow::Result<Record> {
    postcard::from_bytes(bytes).context("an undecodable ACME record")
}

impl AcmeState {
    /// The state kept in `state_dir/acme`.
    pub fn new(state_dir: &Path) -> AcmeState {
        AcmeState {
            dir: state_dir.join(DIR_NAME),
            held: Mutex::default(),
            accounts: Mutex::default(),
            current: Mutex::default(),
        }
    }

    /// The records in force: accounts, pending challenges and certificates (what a
    /// peer gets in a bulk transfer).
    pub fn records(&self) -> Vec<Record> {
        let mut all: Vec<((u8, String), Record)> = lock(&self.current)
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, r)| r).collect()
    }

    /// The withdrawals of every challenge pending here (one the peer published before
    /// it died, say), to apply before this node orders.
    pub fn stale_challenges(&self) -> Vec<Record> {
        lock(&self.current)
            .values()
            .filter_map(|r| match r {
                Record::Http01 { token, .. } => Some(Record::Http01 {
                    token: token.clone(),
                    key_authorization: None,
                }),
                Record::TlsAlpn01 { name, .. } => Some(Record::TlsAlpn01 {
                    name: name.clone(),
                    digest: None,
                }),
                _ => None,
            })
            .collect()
    }

    fn remember(&self, record: &Record) {
        let mut current = lock(&self.current);
        match record {
            Record::Account { directory, .. } => {
                current.insert((0, directory.clone()), record.clone());
            }
            Record::Http01 {
                token,
                key_authorization,
            } => {
                let key = (1, token.clone());
                match key_authorization {
                    Some(_) => current.insert(key, record.clone()),
                    None => current.remove(&key),
                };
            }
            Record::TlsAlpn01 { name, digest } => {
                let key = (2, name.clone());
                match digest {
                    Some(_) => current.insert(key, record.clone()),
                    None => current.remove(&key),
                };
            }
            Record::Certificate { names, .. } => {
                let first = names.first().cloned().unwrap_or_default();
                current.insert((3, first), record.clone());
            }
        }
    }

    /// The folder of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate held for the names of `acme` (by its first name).
    pub fn held(&self, acme: &Acme) -> Option<Held> {
        let first = acme.domains.first()?;
        lock(&self.held).get(first).cloned()
    }

    /// The account credentials kept for `directory`.
    pub fn account(&self, directory: &str) -> Option<String> {
        lock(&self.accounts).get(directory).cloned()
    }

    /// Reads what the files hold for `configs` and serves it; a file that cannot be
    /// used is named in the error list and left alone (an order replaces it).
    pub fn load(&self, configs: &[&Acme]) -> Vec<String> {
        let mut problems = Vec::new();
        for acme in configs {
            let path = self.account_path(&acme.directory);
            match std::fs::read_to_string(&path) {
                Ok(credentials) => {
                    self.remember(&Record::Account {
                        directory: acme.directory.clone(),
                        credentials: credentials.clone(),
                    });
                    lock(&self.accounts).insert(acme.directory.clone(), credentials);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
            let Some(first) = acme.domains.first() else {
                continue;
            };
            let (crt, key) = self.cert_paths(first);
            let read = std::fs::read_to_string(&crt)
                .and_then(|c| std::fs::read_to_string(&key).map(|k| (c, k)));
            match read {
                Ok((chain, key_pem)) => match self.install(&acme.domains, &chain, &key_pem) {
                    Ok(()) => self.remember(&Record::Certificate {
                        names: acme.domains.clone(),
                        chain,
                        key: key_pem,
                    }),
                    Err(e) => problems.push(format!("{}: {e:#}", crt.display())),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", crt.display())),
            }
        }
        problems
    }

    /// Puts `record` in force on this node: files written, the serving side told.
    pub fn apply(&self, record: &Record) -> anyhow::Result<()> {
        let store = tandem_net::acme::store();
        match record {
            Record::Account {
                directory,
                credentials,
            } => {
                let path = self.account_path(directory);
                write(&self.dir, &path, credentials.as_bytes(), 0o600)?;
                lock(&self.accounts).insert(directory.clone(), credentials.clone());
            }
            Record::Http01 {
                token,
                key_authorization: Some(answer),
            } => store.add_http_token(token, answer),
            Record::Http01 {
                token,
                key_authorization: None,
            } => store.remove_http_token(token),
            Record::TlsAlpn01 {
                name,
                digest: Some(digest),
            } => store
                .add_alpn_challenge(name, digest)
                .with_context(|| format!("the TLS-ALPN-01 certificate of {name}"))?,
            Record::TlsAlpn01 { name, digest: None } => store.remove_alpn_challenge(name),
            Record::Certificate { names, chain, key } => {
                let first = names
                    .first()
                    .ok_or_else(|| anyhow!("a certificate of no name"))?;
                // Usable before it is kept: a bad chain changes nothing.
                self.install(names, chain, key)?;
                let (crt, key_path) = self.cert_paths(first);
                write(&self.dir, &key_path, key.as_bytes(), 0o600)?;
                write(&self.dir, &crt, chain.as_bytes(), 0o644)?;
            }
        }
        self.remember(record);
        Ok(())
    }

    /// Serves `chain` and `key` for `names` and remembers their validity.
    fn install(&self, names: &[String], chain: &str, key: &str) -> anyhow::Result<()> {
        let certified = tandem_net::acme::certified_key(chain, key)?;
        let validity = certified
            .cert
            .first()
            .and_then(|c| tandem_net::acme::validity(c.as_ref()))
            .ok_or_else(|| anyhow!("the certificate does not parse"))?;
        tandem_net::acme::store().set_issued(names, Arc::new(certified));
        if let Some(first) = names.first() {
            lock(&self.held).insert(
                first.clone(),
                Held {
                    names: validity.names,
                    not_before: validity.not_before,
                    not_after: validity.not_after,
                },
            );
        }
        Ok(())
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let hash = xxhash_rust::xxh3::xxh3_64(directory.as_bytes());
        self.dir.join(format!("account-{hash:016x}.json"))
    }

    fn cert_paths(&self, first: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{first}.crt")),
            self.dir.join(format!("{first}.key")),
        )
    }
}

fn write(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    crate::state_file::write_atomic(dir, name, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn acme(domains: &[&str]) -> Acme {
        Acme {
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            domains: domains.iter().map(|d| d.to_string()).collect(),
            challenge: Default::default(),
            ca_file: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn records_are_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = AcmeState::new(dir.path());
        let made = rcgen::generate_simple_self_signed(vec!["keep.test".to_string()]).unwrap();
        let names = vec!["keep.test".to_string()];
        state
            .apply(&Record::Account {
                directory: "https://ca.test/dir".into(),
                credentials: "{\"id\":1}".into(),
            })
            .unwrap();
        state
            .apply(&Record::Certificate {
                names: names.clone(),
                chain: made.cert.pem(),
                key: made.signing_key.serialize_pem(),
            })
            .unwrap();
        let mode = |name: &str| {
            std::fs::metadata(state.dir().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("keep.test.key"), 0o600);
        assert_eq!(mode("keep.test.crt"), 0o644);
        let account = std::fs::read_dir(state.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with("account-"))
            .unwrap();
        assert_eq!(
            account.metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );

        // A restart: a new state reads the files back.
        let again = AcmeState::new(dir.path());
        let config = acme(&["keep.test"]);
        assert!(again.load(&[&config]).is_empty());
        let held = again.held(&config).unwrap();
        assert_eq!(held.names, names);
        assert_eq!(
            again.account("https://ca.test/dir").as_deref(),
            Some("{\"id\":1}")
        );
        assert!(tandem_net::acme::store().issued("keep.test").is_some());
    }

    #[test]
    fn records_in_force_are_what_a_peer_gets() {
        let dir = tempfile::tempdir().unwrap();
        let state = AcmeState::new(dir.path());
        let token = |answer: Option<&str>| Record::Http01 {
            token: "tok".into(),
            key_authorization: answer.map(str::to_string),
        };
        state.apply(&token(Some("tok.thumb"))).unwrap();
        assert_eq!(state.records(), [token(Some("tok.thumb"))]);
        let bytes = encode(&state.records()[0]);
        assert_eq!(decode(&bytes).unwrap(), token(Some("tok.thumb")));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        // The peer answers the token; once withdrawn, neither does.
        let peer_dir = tempfile::tempdir().unwrap();
        let peer = AcmeState::new(peer_dir.path());
        peer.apply(&decode(&bytes).unwrap()).unwrap();
        let store = tandem_net::acme::store();
        assert_eq!(
            store
                .http_answer("/.well-known/acme-challenge/tok")
                .as_deref(),
            Some("tok.thumb")
        );
        // Before the peer orders, it withdraws what the first node left pending.
        assert_eq!(peer.stale_challenges(), [token(None)]);
        state.apply(&token(None)).unwrap();
        for r in peer.stale_challenges() {
            peer.apply(&r).unwrap();
        }
        assert!(peer.stale_challenges().is_empty());
        assert!(state.records().is_empty());
        assert_eq!(store.http_answer("/.well-known/acme-challenge/tok"), None);
    }

    #[test]
    fn a_bad_chain_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = AcmeState::new(dir.path());
        let a = rcgen::generate_simple_self_signed(vec!["bad.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["bad.test".to_string()]).unwrap();
        let crossed = Record::Certificate {
            names: vec!["bad.test".into()],
            chain: a.cert.pem(),
            key: b.signing_key.serialize_pem(),
        };
        assert!(state.apply(&crossed).is_err());
        assert!(!state.dir().join("bad.test.crt").exists());
        assert!(state.held(&acme(&["bad.test"])).is_none());
    }
}
