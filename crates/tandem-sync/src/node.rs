//! The IO of sync: a listener, a dialer per peer (with backoff), a batcher that turns a
//! burst of changes into a few frames, and one task per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{FrameKey, MAX_FRAME, Message, Packed, WireEntry};
use crate::session::{Role, Session};

/// Most entries in one frame of protocol version 1.
pub const BATCH_ENTRIES: usize = 2048;
/// Most entries in one frame of version 2 (packed, a few bytes each: the more in a
/// frame, the closer the sorted clients, the fewer bytes).
pub const PACKED_ENTRIES: usize = 16_384;
/// How long a change may wait to be batched with others.
pub const BATCH_DELAY: Duration = Duration::from_millis(20);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Without any peer answering for this long after start, the node counts as synced.
pub const LONE_NODE_GRACE: Duration = Duration::from_secs(10);

/// Settings of a sync node.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// This node's name.
    pub node: String,
    /// Address to listen on (this node's address on the sync network).
    pub listen: SocketAddr,
    /// Peers' sync addresses.
    pub peers: Vec<SocketAddr>,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Digest of the pool configuration.
    pub pools_digest: u64,
    /// Highest protocol version to speak: [`crate::codec::VERSION`]; 1 makes the node
    /// one of version 1 on the wire (to test a rolling upgrade).
    pub max_version: u16,
}

/// Where entries come from and go to: the daemon's sticky tables and pools.
pub trait Store: Send + Sync + 'static {
    /// Every live entry, for a bulk transfer.
    fn entries(&self) -> Vec<WireEntry>;
    /// Merges entries from a peer (newest pin wins).
    fn apply(&self, entries: &[WireEntry]);
    /// Removes entries.
    fn delete(&self, keys: &[(String, IpAddr)]);
    /// An operator's enable/disable from a peer.
    fn set_backend(&self, pool: &str, address: SocketAddr, enabled: bool);
    /// The ACME records a bulk transfer carries (account, pending challenges,
    /// certificates); none by default.
    fn acme_records(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// An ACME record from a peer; ignored by default.
    fn apply_acme(&self, _record: &[u8]) {}
}

/// A local change to send to the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new, re-pinned or refreshed entry.
    Entry(WireEntry),
    /// An entry removed.
    Delete(String, IpAddr),
    /// An operator enabled or disabled a backend.
    Backend {
        /// Pool.
        pool: String,
        /// Backend.
        address: SocketAddr,
        /// New flag.
        enabled: bool,
    },
    /// An ACME record (see [`Message::Acme`]).
    Acme(Vec<u8>),
}

/// What is known of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Configured address (or the address it came from).
    pub address: String,
    /// Its node name, once it said hello.
    pub name: Option<String>,
    /// Session up.
    pub connected: bool,
    /// Its bulk transfer reached us.
    pub synced: bool,
    /// Entries sent to it.
    pub sent: u64,
    /// Entries received from it.
    pub received: u64,
    /// Frames sent to it.
    pub frames_sent: u64,
    /// Last error.
    pub last_error: Option<String>,
    /// Its pool configuration differs from ours.
    pub config_mismatch: bool,
    /// Sessions established with it by this process.
    pub sessions: u64,
    /// Sessions with it up now: more than one while a peer's process is replaced in
    /// place (`tandem upgrade`: the successor connects before its predecessor
    /// exits); only the end of the last one is the peer's exit.
    pub live: u32,
    /// Protocol version of the last session established (0 before one).
    pub version: u16,
    /// Authentic frames from it that did not decode, dropped.
    pub frames_dropped: u64,
}

type Peers = Arc<Mutex<Vec<PeerStatus>>>;

/// A running sync node.
#[derive(Debug)]
pub struct SyncNode {
    changes: mpsc::Sender<Change>,
    sessions_ended: watch::Receiver<u64>,
    peers: Peers,
    synced: watch::Receiver<bool>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    local: SocketAddr,
    listener_fd: std::os::fd::OwnedFd,
    accepting: CancellationToken,
}

impl SyncNode {
    /// Binds the listener and starts dialing peers.
    pub async fn start(settings: SyncSettings, store: Arc<dyn Store>) -> std::io::Result<SyncNode> {
        let listener = TcpListener::bind(settings.listen).await?;
        SyncNode::start_on(settings, store, listener, false)
    }

    /// Starts a node that takes over from its predecessor process (`tandem upgrade`):
    /// on the predecessor's `listener`, synced from the start (it has the table), and
    /// its first session with each peer says so in its hello, so that neither side
    /// asks for a bulk transfer and the peer takes the predecessor's session ending
    /// for what it is.
    pub async fn resume(
        settings: SyncSettings,
        store: Arc<dyn Store>,
        listener: std::net::TcpListener,
    ) -> std::io::Result<SyncNode> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        SyncNode::start_on(settings, store, listener, true)
    }

    fn start_on(
        settings: SyncSettings,
        store: Arc<dyn Store>,
        listener: TcpListener,
        resumed: bool,
    ) -> std::io::Result<SyncNode> {
        let local = listener.local_addr()?;
        let listener_fd = {
            use std::os::fd::AsFd;
            listener.as_fd().try_clone_to_owned()?
        };
        let stop = CancellationToken::new();
        let (changes, rx) = mpsc::channel(65_536);
        let (batches, _) = broadcast::channel::<Arc<Batch>>(1024);
        let (synced_tx, synced) = watch::channel(resumed);
        let (ended_tx, sessions_ended) = watch::channel(0);
        let peers: Peers = Arc::new(Mutex::new(
            settings
                .peers
                .iter()
                .map(|p| PeerStatus {
                    address: p.to_string(),
                    ..PeerStatus::default()
                })
                .collect(),
        ));
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            secret: FrameKey::from_secret(&settings.secret),
            store,
            batches: batches.clone(),
            peers: peers.clone(),
            synced: synced_tx,
            sessions_ended: ended_tx,
            started: Instant::now(),
            resumed,
        });
        tokio::spawn(batcher(rx, batches, stop.clone()));
        let accepting = stop.child_token();
        tokio::spawn(accept(listener, shared.clone(), accepting.clone()));
        for peer in &settings.peers {
            // One connection per pair: the node with the lower address dials.
            if settings.listen < *peer {
                tokio::spawn(dial(*peer, shared.clone(), stop.clone()));
            } else if resumed {
                // The peer dials this node, but its session is with the predecessor:
                // connect once now, so that a session with this process is up before
                // the predecessor's ends.
                tokio::spawn(dial_once(*peer, shared.clone(), stop.clone()));
            }
        }
        let grace = shared.clone();
        let grace_stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = grace_stop.cancelled() => {}
                () = tokio::time::sleep(LONE_NODE_GRACE) => {
                    if !*grace.synced.borrow() && !grace.peers.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|p| p.connected) {
                        warn!(target: "tandem::sync", "no sync peer answered within {LONE_NODE_GRACE:?}: going on with the local table");
                        let _ = grace.synced.send(true);
                    }
                }
            }
        });
        info!(target: "tandem::sync", listen = %local, peers = ?settings.peers, resumed, "sync ready");
        Ok(SyncNode {
            listener_fd,
            accepting,
            changes,
            peers,
            synced,
            sessions_ended,
            dropped: Arc::default(),
            stop,
            local,
        })
    }

    /// Counts sessions that were up and ended: when the peer's process exits (or is
    /// killed) its kernel closes the session at once, long before VRRP notices.
    pub fn sessions_ended(&self) -> watch::Receiver<u64> {
        self.sessions_ended.clone()
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting sessions (the sessions up run on): a successor process accepts
    /// from the same listener.
    pub fn stop_accepting(&self) {
        self.accepting.cancel();
    }

    /// A copy of the listening socket's descriptor, to hand to a successor process.
    pub fn listener(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.listener_fd.try_clone()
    }

    /// Queues a local change for every peer. Never blocks: when the queue is full the
    /// change is counted as dropped (the peers' next bulk transfer carries it).
    pub fn publish(&self, change: Change) {
        if self.changes.try_send(change).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Every peer's state.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Becomes true once a peer's bulk transfer has arrived (or no peer answered at all
    /// within [`LONE_NODE_GRACE`]).
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Stops every task and connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SyncNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    settings: SyncSettings,
    secret: FrameKey,
    store: Arc<dyn Store>,
    batches: broadcast::Sender<Arc<Batch>>,
    peers: Peers,
    synced: watch::Sender<bool>,
    /// Sessions that were up and ended (the peer exited, or the link broke).
    sessions_ended: watch::Sender<u64>,
    started: Instant,
    resumed: bool,
}

impl Shared {
    fn peer<R>(&self, address: &str, f: impl FnOnce(&mut PeerStatus) -> R) -> R {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let i = match peers.iter().position(|p| p.address == address) {
            Some(i) => i,
            None => {
                peers.push(PeerStatus {
                    address: address.to_string(),
                    ..PeerStatus::default()
                });
                peers.len() - 1
            }
        };
        f(&mut peers[i])
    }
}

/// A batch of local changes, for every session to send in its protocol version.
#[derive(Debug, Default)]
struct Batch {
    /// Operator changes and ACME records, in order.
    messages: Vec<Message>,
    /// Entries new or changed, sent after `messages`.
    entries: Vec<WireEntry>,
    /// The entries' messages in each form, made by the first session that sends them
    /// and shared by the others: packed (version 2 and later), whole (version 1).
    packed: std::sync::OnceLock<Vec<Message>>,
    whole: std::sync::OnceLock<Vec<Message>>,
    /// Entries removed, sent last.
    deletes: Option<Message>,
}

impl Batch {
    /// The entries' messages in the form a session of `version` speaks.
    fn entry_messages(&self, version: u16) -> &[Message] {
        let (cell, packed) = if version >= 2 {
            (&self.packed, true)
        } else {
            (&self.whole, false)
        };
        cell.get_or_init(|| entry_messages(&self.entries, packed, false).collect())
    }
}

/// Collects changes for up to [`BATCH_DELAY`] (or four frames of [`BATCH_ENTRIES`]),
/// keeps the last change of each entry, and broadcasts them as one [`Batch`].
async fn batcher(
    mut rx: mpsc::Receiver<Change>,
    out: broadcast::Sender<Arc<Batch>>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        let mut entries: HashMap<(Arc<str>, IpAddr), WireEntry> = HashMap::new();
        let mut deletes = Vec::new();
        let mut messages = Vec::new();
        let mut take = |c: Change, entries: &mut HashMap<(Arc<str>, IpAddr), WireEntry>| match c {
            Change::Entry(e) => {
                entries.insert((e.pool.clone(), e.client), e);
            }
            Change::Delete(pool, client) => {
                entries.remove(&(Arc::from(pool.as_str()), client));
                deletes.push((pool, client));
            }
            Change::Backend {
                pool,
                address,
                enabled,
            } => messages.push(Message::Backend {
                pool,
                address,
                enabled,
            }),
            Change::Acme(record) => messages.push(Message::Acme(record)),
        };
        take(first, &mut entries);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while entries.len() < BATCH_ENTRIES * 4 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => take(c, &mut entries),
                _ => break,
            }
        }
        let _ = out.send(Arc::new(Batch {
            messages,
            entries: entries.into_values().collect(),
            deletes: (!deletes.is_empty()).then_some(Message::Deletes(deletes)),
            ..Batch::default()
        }));
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, from) = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!(target: "tandem::sync", error = %e, "sync accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Name the peer by its configured address when its IP matches one.
        let address = shared
            .settings
            .peers
            .iter()
            .find(|p| p.ip() == from.ip())
            .map_or(from.to_string(), ToString::to_string);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut up = false;
            let result =
                connection(stream, Role::Responder, &address, &shared, &stop, &mut up).await;
            finish(&shared, &address, up, result);
        });
    }
}

async fn dial(peer: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let address = peer.to_string();
    let mut backoff = BACKOFF_MIN;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(peer)) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                let started = Instant::now();
                let mut up = false;
                let result =
                    connection(stream, Role::Initiator, &address, &shared, &stop, &mut up).await;
                finish(&shared, &address, up, result);
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = BACKOFF_MIN;
                }
            }
            Ok(Err(e)) => shared.peer(&address, |p| p.last_error = Some(format!("connect: {e}"))),
            Err(_) => shared.peer(&address, |p| {
                p.last_error = Some("connect: timed out".into())
            }),
        }
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One attempt at a session with `peer` (a resumed node's, to a peer that dials).
async fn dial_once(peer: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let address = peer.to_string();
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => {
            let mut up = false;
            let result =
                connection(stream, Role::Initiator, &address, &shared, &stop, &mut up).await;
            finish(&shared, &address, up, result);
        }
        Ok(Err(e)) => shared.peer(&address, |p| p.last_error = Some(format!("connect: {e}"))),
        Err(_) => shared.peer(&address, |p| {
            p.last_error = Some("connect: timed out".into())
        }),
    }
}

/// Ends a session with the peer at `address` (`up`: it was established). While
/// another session with the peer is up (its process was replaced in place and
/// connected anew), the peer stays connected: no exit is signalled.
fn finish(shared: &Shared, address: &str, up: bool, result: Result<(), String>) {
    let others = up
        && shared.peer(address, |p| {
            p.live = p.live.saturating_sub(1);
            p.live
        }) > 0;
    if others {
        info!(target: "tandem::sync", peer = address, "a sync session with this peer ended; another one is up");
        return;
    }
    let mut was_up = false;
    shared.peer(address, |p| {
        was_up = p.connected;
        p.connected = false;
        if let Err(e) = &result {
            p.last_error = Some(e.clone());
        }
    });
    if was_up {
        shared.sessions_ended.send_modify(|n| *n += 1);
    }
    match result {
        Ok(()) => debug!(target: "tandem::sync", peer = address, "sync session closed"),
        Err(e) => warn!(target: "tandem::sync", peer = address, "sync session ended: {e}"),
    }
}

/// Sends a sealed frame; the codec writes the length itself.
async fn send_frame(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    frame: Vec<u8>,
) -> std::io::Result<()> {
    framed.send(bytes::Bytes::from(frame).slice(4..)).await
}

/// The messages of `entries`: packed in frames of [`PACKED_ENTRIES`], or whole in
/// frames of [`BATCH_ENTRIES`] for a node of version 1.
fn entry_messages(
    entries: &[WireEntry],
    packed: bool,
    bulk: bool,
) -> impl Iterator<Item = Message> + '_ {
    let size = if packed {
        PACKED_ENTRIES
    } else {
        BATCH_ENTRIES
    };
    entries.chunks(size).map(move |chunk| {
        if packed {
            Message::Packed {
                bulk,
                entries: Packed::pack(chunk),
            }
        } else {
            Message::Entries {
                bulk,
                entries: chunk.to_vec(),
            }
        }
    })
}

/// Seals and sends `message`.
async fn send_message(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    session: &mut Session,
    message: &Message,
    now: Duration,
) -> Result<(), String> {
    send_frame(framed, session.seal(message, now))
        .await
        .map_err(|e| e.to_string())
}

/// Sends the whole table, `entries`, in the session's protocol version, a frame's
/// worth made at a time.
async fn send_bulk(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    session: &mut Session,
    entries: &[WireEntry],
    now: impl Fn() -> Duration,
) -> Result<(), String> {
    let packed = session.version() >= 2;
    for m in entry_messages(entries, packed, true) {
        send_message(framed, session, &m, now()).await?;
    }
    Ok(())
}

/// Counts and logs an authentic frame from the peer that did not decode (a newer
/// node's message this one does not know, or a bad one): dropped, the session goes on.
fn drop_frame(shared: &Shared, address: &str, error: &str) {
    let dropped = shared.peer(address, |p| {
        p.frames_dropped += 1;
        p.frames_dropped
    });
    warn!(target: "tandem::sync", peer = address, dropped, "dropped a sync frame: {error}");
}

/// Runs one session until it ends.
async fn connection(
    stream: TcpStream,
    role: Role,
    address: &str,
    shared: &Shared,
    stop: &CancellationToken,
    up: &mut bool,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    let mut nonce = [0u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "no random bytes".to_string())?;
    let now = || shared.started.elapsed();
    // The first session of a process that took over from its predecessor.
    let we_resumed = shared.resumed && shared.peer(address, |p| p.sessions == 0);
    let mut session = Session::new(
        role,
        shared.secret.clone(),
        &shared.settings.node,
        nonce,
        shared.settings.pools_digest,
        now(),
    )
    .resumed(we_resumed)
    .max_version(shared.settings.max_version);
    let hello = session.hello(now());
    send_frame(&mut framed, hello)
        .await
        .map_err(|e| format!("sending hello: {e}"))?;
    let first = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| "no hello within 5s".to_string())?
        .ok_or("closed before its hello")?
        .map_err(|e| format!("reading hello: {e}"))?;
    if let Err(e) = session.receive(&first, now()) {
        warn!(target: "tandem::sync", peer = address, "refused a sync peer: {e}");
        return Err(format!("refused: {e}"));
    }
    let peer = session.peer().cloned().expect("established");
    let mismatch = peer.pools_digest != shared.settings.pools_digest;
    if mismatch {
        warn!(target: "tandem::sync", peer = address, node = %peer.node, "peer's pools differ from ours: entries of pools it lacks are ignored there");
    }
    // A resumed session (either side) continues the table its predecessor synced; one
    // beside a synced session with the peer has the table too.
    let mut continued = we_resumed || peer.resumed;
    shared.peer(address, |p| {
        continued |= p.live > 0 && p.synced;
        p.sessions += 1;
        p.live += 1;
        *up = true;
        p.connected = true;
        p.synced = continued;
        p.name = Some(peer.node.clone());
        p.last_error = None;
        p.config_mismatch = mismatch;
        p.version = session.version();
    });
    let version = session.version();
    let mut batches = shared.batches.subscribe();
    if continued {
        info!(target: "tandem::sync", peer = address, node = %peer.node, version, we_resumed, peer_resumed = peer.resumed, "sync session up, continuing a process's table after an upgrade in place: no bulk transfer");
    } else {
        info!(target: "tandem::sync", peer = address, node = %peer.node, version, "sync session up");
        send_message(&mut framed, &mut session, &Message::BulkRequest, now()).await?;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            frame = framed.next() => {
                let body = match frame {
                    None => return Err("peer closed the connection".into()),
                    Some(Err(e)) => return Err(format!("reading: {e}")),
                    Some(Ok(body)) => body,
                };
                let message = match session.receive(&body, now()) {
                    Ok(message) => message,
                    Err(e) if e.is_dropped_frame() => {
                        drop_frame(shared, address, &e.to_string());
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                };
                match message {
                    Message::Entries { entries, .. } => {
                        shared.peer(address, |p| p.received += entries.len() as u64);
                        shared.store.apply(&entries);
                    }
                    // What a node of version 1 cannot read (it would end the session).
                    Message::Packed { .. } if version < 2 => {
                        drop_frame(shared, address, "packed entries in a session of version 1");
                    }
                    Message::Packed { entries, .. } => match entries.unpack() {
                        Ok(entries) => {
                            shared.peer(address, |p| p.received += entries.len() as u64);
                            shared.store.apply(&entries);
                        }
                        Err(e) => drop_frame(shared, address, &e.to_string()),
                    },
                    Message::BulkRequest => {
                        let entries = shared.store.entries();
                        let count = entries.len();
                        send_bulk(&mut framed, &mut session, &entries, now).await?;
                        for record in shared.store.acme_records() {
                            send_message(&mut framed, &mut session, &Message::Acme(record), now()).await?;
                        }
                        send_message(&mut framed, &mut session, &Message::BulkEnd, now()).await?;
                        shared.peer(address, |p| p.sent += count as u64);
                        info!(target: "tandem::sync", peer = address, entries = count, "bulk transfer sent");
                    }
                    Message::BulkEnd => {
                        shared.peer(address, |p| p.synced = true);
                        let _ = shared.synced.send(true);
                        info!(target: "tandem::sync", peer = address, "bulk transfer received: synced");
                    }
                    Message::Deletes(keys) => shared.store.delete(&keys),
                    Message::Backend { pool, address: backend, enabled } => shared.store.set_backend(&pool, backend, enabled),
                    Message::Heartbeat => {}
                    Message::Acme(record) => shared.store.apply_acme(&record),
                    Message::Hello { .. } => return Err("a second hello".into()),
                }
            }
            batch = batches.recv() => match batch {
                Ok(batch) => {
                    let messages: Vec<&Message> = batch.messages.iter()
                        .chain(batch.entry_messages(session.version()))
                        .chain(&batch.deletes)
                        .collect();
                    for m in &messages {
                        send_message(&mut framed, &mut session, m, now()).await?;
                    }
                    let frames = messages.len() as u64;
                    let count = batch.entries.len() as u64;
                    shared.peer(address, |p| {
                        p.sent += count;
                        p.frames_sent += frames;
                    });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Too far behind to catch up change by change: send everything.
                    warn!(target: "tandem::sync", peer = address, missed = n, "sync link lagging: sending the whole table");
                    let entries = shared.store.entries();
                    send_bulk(&mut framed, &mut session, &entries, now).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = tick.tick() => {
                if let Some(heartbeat) = session.poll(now()).map_err(|e| e.to_string())? {
                    send_frame(&mut framed, heartbeat).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
