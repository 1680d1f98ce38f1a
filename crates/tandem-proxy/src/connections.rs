//! The relayed connections open now, for `tandem ctl connections`: one entry per tcp
//! mode connection, made once its backend is connected and removed when it ends. An
//! entry is shared with the connection's task, which adds to its byte counters where
//! the backend's counters are kept, and holds the token that closes the connection.
//!
//! The cost on the hot path: one allocation and one map insert and remove per
//! connection (a mutex per shard, chosen by the connection's number), one
//! cancellation token of its own, and one relaxed atomic add per chunk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tandem_balance::{Sharded, ShardedMap};
use tokio_util::sync::CancellationToken;

/// Shards of the registry: connections spread by number, so that accepts on several
/// threads rarely wait for one another.
const SHARDS: usize = 16;

/// Numbers connections over every service of the process (never reused).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One open connection.
#[derive(Debug)]
pub struct Connection {
    /// Its number, unique in the process.
    pub id: u64,
    /// The client (the PROXY header's, when the service reads one).
    pub client: SocketAddr,
    /// The backend it is relayed to.
    pub backend: SocketAddr,
    /// The pool the backend was chosen from.
    pub pool: String,
    started: Instant,
    to_backend: AtomicU64,
    to_client: AtomicU64,
    close: CancellationToken,
}

impl Connection {
    /// Bytes relayed so far: (client to backend, backend to client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.to_backend.load(Relaxed), self.to_client.load(Relaxed))
    }

    /// Counts bytes relayed one way.
    pub fn record(&self, to_backend: bool, n: u64) {
        if to_backend {
            self.to_backend.fetch_add(n, Relaxed);
        } else {
            self.to_client.fetch_add(n, Relaxed);
        }
    }

    /// How long it has been open.
    pub fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The token that ends the relay when cancelled.
    pub fn close_token(&self) -> &CancellationToken {
        &self.close
    }
}

/// The open connections of one service.
#[derive(Debug)]
pub struct Connections {
    shards: ShardedMap<u64, Arc<Connection>>,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            shards: Sharded::new(SHARDS),
        }
    }
}

/// Removes its connection from the registry when dropped (the connection ended).
#[derive(Debug)]
pub struct Registered<'a> {
    registry: &'a Connections,
    /// The entry.
    pub connection: Arc<Connection>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry
            .shards
            .lock(&self.connection.id)
            .remove(&self.connection.id);
    }
}

impl Connections {
    /// Registers a connection of `client` to `backend`, with a token of its own (not a
    /// child of the node's: children share their parent's lock). Listed until the
    /// returned guard drops.
    pub fn register(&self, client: SocketAddr, backend: SocketAddr, pool: &str) -> Registered<'_> {
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let connection = Arc::new(Connection {
            id,
            client,
            backend,
            pool: pool.to_string(),
            started: Instant::now(),
            to_backend: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            close: CancellationToken::new(),
        });
        self.shards.lock(&id).insert(id, connection.clone());
        Registered {
            registry: self,
            connection,
        }
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        let mut all: Vec<Arc<Connection>> = self
            .shards
            .each()
            .flat_map(|s| s.values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Closes connection `id` (its relay ends, both sockets close) and returns it;
    /// none when it is not open here.
    pub fn close(&self, id: u64) -> Option<Arc<Connection>> {
        let found = self.shards.lock(&id).get(&id).cloned()?;
        found.close.cancel();
        Some(found)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_while_its_guard_does_and_close_cancels_its_token() {
        let registry = Connections::default();
        let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let backend: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let a = registry.register(client, backend, "web");
        let b = registry.register(client, backend, "web");
        a.connection.record(true, 5);
        a.connection.record(false, 7);
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].id < listed[1].id);
        assert_eq!(listed[0].bytes(), (5, 7));
        assert!(registry.close(b.connection.id).is_some());
        assert!(b.connection.close_token().is_cancelled());
        assert!(!a.connection.close_token().is_cancelled());
        let gone = b.connection.id;
        drop(b);
        assert!(
            registry.close(gone).is_none(),
            "an ended connection is not found"
        );
        assert_eq!(registry.len(), 1);
        drop(a);
        assert!(registry.is_empty());
    }

    #[test]
    fn registering_and_ending_a_connection_is_cheap() {
        let registry = Connections::default();
        let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let backend: SocketAddr = "10.0.0.1:80".parse().unwrap();
        // 1000 open at once, as a busy node has, while 100k come and go.
        let held: Vec<_> = (0..1000)
            .map(|_| registry.register(client, backend, "web"))
            .collect();
        const N: u32 = 100_000;
        let started = Instant::now();
        for _ in 0..N {
            let r = registry.register(client, backend, "web");
            r.connection.record(true, 1);
            drop(r);
        }
        let each = started.elapsed() / N;
        println!("register + one byte count + end: {each:?} per connection (this build)");
        assert_eq!(registry.len(), held.len());
        assert!(each < std::time::Duration::from_micros(50), "{each:?}");
    }

    #[tokio::test]
    async fn the_node_s_close_all_closes_each_connection_through_its_own_token() {
        use tokio::net::{TcpListener, TcpStream};
        let registry = Connections::default();
        let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let r = registry.register(client, "10.0.0.1:80".parse().unwrap(), "web");
        let close_all = CancellationToken::new();
        // An idle relay between two loopback connections.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        let closer = close_all.clone();
        tokio::spawn(async move { closer.cancel() });
        let cancel = crate::relay::Cancel {
            own: r.connection.close_token(),
            all: &close_all,
        };
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::relay::relay(
                &a,
                &b,
                std::time::Duration::from_secs(60),
                cancel,
                &|_, _| {},
            ),
        )
        .await
        .expect("the relay ends at close_all");
        assert_eq!(out.end, crate::relay::End::Shutdown);
        assert!(r.connection.close_token().is_cancelled());
    }
}
