//! The sticky tables on disk, so that pins outlive a restart of both nodes of a pair
//! (a power cut, a joint upgrade).
//!
//! `global.state_dir/sticky.state` is written atomically (a temporary file, fsync,
//! rename, fsync of the folder) every [`SAVE_EVERY`] and at stop, and read at start.
//! Entries carry absolute expiry times, so a pin loaded after a pause keeps only what
//! is left of its life. A file that is not ours (foreign) or damaged (corrupt) is
//! refused as a whole and tandem starts empty. Loaded entries are merged like a
//! peer's (newer pin wins), so a peer's sync still wins over a stale file.
//!
//! The format: the 8 bytes `TNDMSTK1`, the SHA-256 of the body, the body (postcard).

use std::borrow::Cow;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_balance::PoolSet;

/// The file's name in `state_dir`.
pub const FILE_NAME: &str = "sticky.state";
/// How often the tables are written while running.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);
const MAGIC: &[u8; 8] = b"TNDMSTK1";

/// What a state file holds. Pool names are borrowed (from the tables when written,
/// from the file's bytes when read): a million entries make no million strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved<'a> {
    /// The node that wrote it.
    pub node: String,
    /// When (Unix ms).
    pub written_unix_ms: u64,
    /// Every live entry of every sticky table.
    #[serde(borrow)]
    pub entries: Vec<SavedEntry<'a>>,
}

/// One pin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedEntry<'a> {
    /// The pool of the table.
    #[serde(borrow)]
    pub pool: Cow<'a, str>,
    /// The client.
    pub client: IpAddr,
    /// Its backend.
    pub backend: SocketAddr,
    /// When the entry expires (Unix ms).
    pub expires_unix_ms: u64,
    /// When the pin was decided (Unix ms), as sync compares pins.
    pub pinned_at_ms: u64,
    /// The node that decided it.
    pub origin: u64,
}

/// Why a state file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a state file of tandem's (another program's, or another version's).
    #[error("not a tandem sticky state file (it does not begin with {MAGIC:?})")]
    Foreign,
    /// Ours, but damaged: cut short, or its checksum does not match.
    #[error("damaged: {0}")]
    Corrupt(String),
    /// It could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What loading did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Entries put back in their tables.
    pub loaded: usize,
    /// Entries whose life ended while tandem was stopped.
    pub expired: usize,
    /// Entries of pools that are gone or no longer sticky.
    pub unknown_pool: usize,
}

/// The bytes of `saved`.
pub fn encode(saved: &Saved<'_>) -> Vec<u8> {
    let body = postcard::to_stdvec(saved).expect("a Saved always serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

/// Reads bytes written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Saved<'_>, StateError> {
    if !bytes.starts_with(MAGIC) {
        return Err(StateError::Foreign);
    }
    let rest = &bytes[MAGIC.len()..];
    if rest.len() < 32 {
        return Err(StateError::Corrupt(format!(
            "{} bytes, shorter than its header",
            bytes.len()
        )));
    }
    let (sum, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(StateError::Corrupt("its checksum does not match".into()));
    }
    postcard::from_bytes(body).map_err(|e| StateError::Corrupt(e.to_string()))
}

/// Every live entry of `pools`' sticky tables; `now_ms` is the tables' clock,
/// `unix_now` the wall clock at the same moment.
pub fn snapshot<'a>(pools: &'a PoolSet, node: &str, now_ms: u64, unix_now: u64) -> Saved<'a> {
    let entries = pools
        .live_pins(now_ms)
        .into_iter()
        .map(|(pool, client, e)| SavedEntry {
            pool: Cow::Borrowed(pool),
            client,
            backend: e.backend,
            expires_unix_ms: unix_now + (e.expires - now_ms),
            pinned_at_ms: e.pinned_at,
            origin: e.origin,
        })
        .collect();
    Saved {
        node: node.to_string(),
        written_unix_ms: unix_now,
        entries,
    }
}

/// Puts `saved`'s entries back into `pools`' tables with what is left of their life.
pub fn restore(pools: &PoolSet, saved: &Saved<'_>, now_ms: u64, unix_now: u64) -> Restored {
    let mut done = Restored::default();
    for e in &saved.entries {
        let Some(table) = pools.get(&e.pool).and_then(|p| p.sticky.as_ref()) else {
            done.unknown_pool += 1;
            continue;
        };
        if e.expires_unix_ms <= unix_now {
            done.expired += 1;
            continue;
        }
        let remaining = e.expires_unix_ms - unix_now;
        table.merge(
            e.client,
            e.backend,
            now_ms + remaining,
            e.pinned_at_ms,
            e.origin,
            now_ms,
        );
        done.loaded += 1;
    }
    done
}

/// The state file's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `saved` to `dir` atomically: whoever reads the file sees the old one or
/// the new one, whole, also after a power cut.
pub fn save(dir: &Path, saved: &Saved<'_>) -> Result<(), StateError> {
    write_atomic(dir, FILE_NAME, &encode(saved), 0o644)?;
    Ok(())
}

/// Writes `bytes` as `dir/name` atomically (a temporary file with permissions `mode`,
/// fsync, rename, fsync of the folder): a reader sees the old file or the new one,
/// whole, also after a power cut. `dir` is made when missing.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The bytes of `dir`'s state file, for [`decode`]; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path(dir)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved<'static> {
        Saved {
            node: "lb1".into(),
            written_unix_ms: 1_000_000,
            entries: vec![SavedEntry {
                pool: "imap".into(),
                client: "192.0.2.7".parse().unwrap(),
                backend: "10.1.0.21:143".parse().unwrap(),
                expires_unix_ms: 2_000_000,
                pinned_at_ms: 900_000,
                origin: 42,
            }],
        }
    }

    #[test]
    fn a_state_file_reads_back_as_written() {
        assert_eq!(decode(&encode(&saved())).unwrap(), saved());
    }

    #[test]
    fn foreign_and_damaged_files_are_refused() {
        assert!(matches!(
            decode(b"[global]\nname = \"x\"\n"),
            Err(StateError::Foreign)
        ));
        let bytes = encode(&saved());
        for cut in [MAGIC.len(), MAGIC.len() + 10, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(StateError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let err = decode(&flipped).unwrap_err().to_string();
        assert_eq!(err, "damaged: its checksum does not match");
    }

    #[test]
    fn entries_keep_what_is_left_of_their_life() {
        let pool = tandem_config::Config::parse(
            "[[pool]]\nname = \"imap\"\nbackends = [{ address = \"10.1.0.21:143\" }, { address = \"10.1.0.22:143\" }]\nsticky = { key = \"source-ip\", ttl = \"30m\" }\n\n\
[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.1.0.31:80\" }]\n\n\
[[service]]\nname = \"imap\"\nlisten = [\"127.0.0.1:0\"]\npool = \"imap\"\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        let pools = PoolSet::build(&pool.pools, None);
        let mut file = saved();
        file.entries.push(SavedEntry {
            client: "192.0.2.8".parse().unwrap(),
            expires_unix_ms: 1_400_000,
            ..file.entries[0].clone()
        });
        file.entries.push(SavedEntry {
            pool: "web".into(),
            ..file.entries[0].clone()
        });
        // Loaded 500 s after it was written (table clock at 7,000 ms).
        let done = restore(&pools, &file, 7_000, 1_500_000);
        assert_eq!(
            done,
            Restored {
                loaded: 1,
                expired: 1,
                unknown_pool: 1
            }
        );
        let table = pools.get("imap").unwrap().sticky.as_ref().unwrap();
        let entries = table.entries();
        assert_eq!(entries.len(), 1);
        let (client, entry) = entries[0];
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(entry.backend, "10.1.0.21:143".parse().unwrap());
        // 500 s of its life were left.
        assert_eq!(entry.expires, 7_000 + 500_000);
        assert_eq!((entry.pinned_at, entry.origin), (900_000, 42));
        let again = snapshot(&pools, "lb1", 8_000, 1_501_000);
        assert_eq!(again.entries.len(), 1);
        assert_eq!(again.entries[0].expires_unix_ms, 2_000_000);
    }
}
