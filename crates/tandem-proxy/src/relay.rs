//! Moving bytes both ways between a client and a backend until both sides are done.
//!
//! Two half-duplex pumps run side by side. A pump that reads end-of-file shuts down the
//! write side of the other socket (half-close), and the other pump goes on: a client
//! that has sent its whole request still receives the whole response. An error on
//! either side ends both. A connection with no bytes either way for `idle` ends too.
//!
//! Each direction picks its own way to move bytes, chunk by chunk. Small chunks (a
//! request line, an IMAP command, a short response) are read into the thread's scratch
//! buffer and written straight out: two system calls, and a short read tells that the
//! socket is drained, so no third call is spent to learn it. A chunk that fills the
//! scratch buffer shows a bulk transfer: on Linux the next chunks go socket -> pipe ->
//! socket with splice(2) and never enter user space, until a chunk is small again.
//! Pipes come from a small per-thread pool and are held only while bytes are in flight,
//! and the scratch buffer is shared by the thread's connections, so an idle connection
//! holds neither (two sockets, no extra descriptors, no buffer).
//!
//! A client whose TLS session tandem terminated is relayed by [`relay_stream`]: the
//! same two pumps, counters, idle timeout and cancellation, but every chunk is copied
//! through the scratch buffer (the bytes must pass through the TLS session), and an
//! ended direction shuts the other side down through its stream (close_notify first).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How a relayed connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write side.
    Closed,
    /// The client side failed (reset, broken pipe...).
    ClientError(String),
    /// The backend side failed.
    BackendError(String),
    /// No bytes moved either way for the idle timeout.
    IdleTimeout,
    /// tandem closed it (drain deadline passed).
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::BackendError(e) => write!(f, "backend error: {e}"),
            End::IdleTimeout => f.write_str("idle timeout"),
            End::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes from client to backend.
    pub to_backend: u64,
    /// Bytes from backend to client.
    pub to_client: u64,
    /// How the relay ended.
    pub end: End,
}

/// The last time bytes moved, as milliseconds since the relay (or tunnel) started.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts counting now, as if bytes had just moved.
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Notes that bytes moved now.
    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// How long since bytes last moved.
    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Relaxed)))
    }

    /// Returns once no bytes have moved for `idle`.
    pub(crate) async fn quiet_for(&self, idle: Duration) {
        loop {
            let quiet = self.idle_for();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// What ends a relay from outside: its connection's own token (`tandem ctl connections
/// close` closes it alone) and the node's (the drain deadline closes every one, and
/// cancels the own token too). One select watches both, in the relay's own state.
#[derive(Debug, Clone, Copy)]
pub struct Cancel<'a> {
    /// The connection's own token.
    pub own: &'a CancellationToken,
    /// The node's.
    pub all: &'a CancellationToken,
}

/// Relays between `client` and `backend` until both directions end, one fails, the
/// connection is idle for `idle`, or `cancel` fires. `meter(to_backend, bytes)` is told
/// of every chunk as it moves, so counters stay live on long connections.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    cancel: Cancel<'_>,
    meter: &(dyn Fn(bool, u64) + Sync),
) -> Outcome {
    let moved = Moved::new();
    let (meter_up, meter_down) = (|n| meter(true, n), |n| meter(false, n));
    // Pinned here and lent to `run`: moved into it, each pump's state would be held
    // again by every async level it passes through (arguments and awaited values both
    // keep a copy), which made an idle relayed connection's future 4.6 KiB.
    let up = std::pin::pin!(pump(
        client,
        backend,
        &moved.up,
        &moved.activity,
        &moved.ended,
        &meter_up,
    ));
    let down = std::pin::pin!(pump(
        backend,
        client,
        &moved.down,
        &moved.activity,
        &moved.ended,
        &meter_down,
    ));
    moved.run(up, down, idle, cancel).await
}

/// As [`relay`], for a client whose bytes tandem must see in user space (a TLS
/// session it terminated): both directions copy through the thread's scratch buffer
/// (no splice), and an ended direction shuts the other side's write half down (for
/// TLS: close_notify, then the TCP half-close). A TLS client that closes without
/// close_notify ends its direction as a plain end-of-file would.
pub async fn relay_stream<S>(
    client: S,
    backend: &mut TcpStream,
    idle: Duration,
    cancel: Cancel<'_>,
    meter: &(dyn Fn(bool, u64) + Sync),
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Moved::new();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = backend.split();
    let (meter_up, meter_down) = (|n| meter(true, n), |n| meter(false, n));
    // (Pinned here and lent to `run`, as in `relay`.)
    let up = std::pin::pin!(copy_pump(
        &mut client_read,
        &mut backend_write,
        &moved.up,
        &moved.activity,
        &meter_up,
    ));
    let down = std::pin::pin!(copy_pump(
        &mut backend_read,
        &mut client_write,
        &moved.down,
        &moved.activity,
        &meter_down,
    ));
    moved.run(up, down, idle, cancel).await
}

/// What both pumps of one relay share: byte counts, activity, directions done.
struct Moved {
    activity: Activity,
    up: AtomicU64,
    down: AtomicU64,
    ended: AtomicU64,
}

impl Moved {
    fn new() -> Moved {
        Moved {
            activity: Activity::new(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        }
    }

    /// Runs the client-to-backend pump `up` and the backend-to-client pump `down` until
    /// both end, one fails, nothing moves for `idle`, or either token of `cancel` fires.
    async fn run(
        &self,
        up: std::pin::Pin<&mut impl Future<Output = Result<(), PumpError>>>,
        down: std::pin::Pin<&mut impl Future<Output = Result<(), PumpError>>>,
        idle: Duration,
        cancel: Cancel<'_>,
    ) -> Outcome {
        let both = async {
            let up = async {
                up.await.map_err(|e| match e {
                    PumpError::Read(e) => End::ClientError(e.to_string()),
                    PumpError::Write(e) => End::BackendError(e.to_string()),
                })
            };
            let down = async {
                down.await.map_err(|e| match e {
                    PumpError::Read(e) => End::BackendError(e.to_string()),
                    PumpError::Write(e) => End::ClientError(e.to_string()),
                })
            };
            match tokio::try_join!(up, down) {
                Ok(_) => End::Closed,
                Err(end) => end,
            }
        };
        let end = tokio::select! {
            end = both => end,
            () = self.activity.quiet_for(idle) => End::IdleTimeout,
            () = cancel.own.cancelled() => End::Shutdown,
            () = cancel.all.cancelled() => {
                cancel.own.cancel();
                End::Shutdown
            }
        };
        Outcome {
            to_backend: self.up.load(Relaxed),
            to_client: self.down.load(Relaxed),
            end,
        }
    }
}

/// Shuts down the write side of `socket` after its peer's input ended.
fn half_close(socket: &TcpStream) {
    // The peer may have gone already (ENOTCONN): then there is nothing to tell it.
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
}

/// Moves bytes from `src` to `dst` until `src` ends, counting them in `moved`. The
/// first direction to end passes the half-close on; the second needs no shutdown(2)
/// since both sockets close right after (`ended` counts the directions done).
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    moved: &AtomicU64,
    activity: &Activity,
    ended: &AtomicU64,
    meter: &(dyn Fn(u64) + Sync),
) -> Result<(), PumpError> {
    // Whether the last chunk was a bulk one: then the next goes through a pipe.
    let mut bulk = false;
    loop {
        read_ready(src).await.map_err(PumpError::Read)?;
        #[cfg(target_os = "linux")]
        let chunk = match bulk.then(splice::Pipe::take) {
            Some(Ok(pipe)) => splice::chunk(src, dst, pipe, moved).await?,
            // Small chunks, or out of descriptors for a pipe: through user space.
            _ => copy_chunk(src, dst, moved).await?,
        };
        #[cfg(not(target_os = "linux"))]
        let chunk = copy_chunk(src, dst, moved).await?;
        match chunk {
            Chunk::Moved(n) => {
                bulk = n >= SCRATCH_SIZE as u64;
                activity.touch();
                meter(n);
            }
            Chunk::NotReady => {}
            Chunk::Eof => {
                if ended.fetch_add(1, Relaxed) == 0 {
                    half_close(dst);
                }
                return Ok(());
            }
        }
    }
}

/// Waits until `socket` is readable. Its waker is kept in the socket's registration
/// (`readable()` keeps a waiter of its own in the future: 152 bytes more in each pump
/// of every idle connection); a relay has one pump reading each socket and one writing
/// it, so each waker slot has one user.
async fn read_ready(socket: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| socket.poll_read_ready(cx)).await
}

/// Waits until `socket` is writable, as [`read_ready`].
async fn write_ready(socket: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| socket.poll_write_ready(cx)).await
}

enum Chunk {
    Moved(u64),
    NotReady,
    Eof,
}

/// Size of the per-thread scratch buffer; a read that fills it marks a bulk transfer.
const SCRATCH_SIZE: usize = 16 * 1024;

thread_local! {
    /// The buffer every copy on this thread reads into; borrowed only between a read
    /// and the write that follows it, never across an await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// One read from `src` written wholly to `dst`. The bytes are written from the scratch
/// buffer at once; only what `dst` cannot take now is copied out to wait for it.
async fn copy_chunk(
    src: &TcpStream,
    dst: &TcpStream,
    moved: &AtomicU64,
) -> Result<Chunk, PumpError> {
    // Read and write at once from the scratch buffer; what is left is the part of the
    // chunk `dst` could not take yet (usually nothing).
    let (chunk, left) = SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let mut got = 0;
        // A short read means the socket is drained (edge-triggered readiness): the
        // closure then reports WouldBlock so that tokio clears the readiness and the
        // next loop waits instead of spending a read on learning it. End-of-file is
        // kept apart by tokio and still wakes the next readable().
        let read = src.try_io(Interest::READABLE, || {
            got = rustix::io::read(src, &mut buf[..])?;
            if 0 < got && got < buf.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match read {
            Ok(0) => return Ok((Chunk::Eof, Vec::new())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok((Chunk::NotReady, Vec::new()));
            }
            Err(e) => return Err(PumpError::Read(e)),
        }
        let sent = match dst.try_write(&buf[..got]) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(PumpError::Write(e)),
        };
        moved.fetch_add(sent as u64, Relaxed);
        Ok((Chunk::Moved(got as u64), buf[sent..got].to_vec()))
    })?;
    let mut sent = 0;
    while sent < left.len() {
        write_ready(dst).await.map_err(PumpError::Write)?;
        match dst.try_write(&left[sent..]) {
            Ok(m) => {
                sent += m;
                moved.fetch_add(m as u64, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(PumpError::Write(e)),
        }
    }
    Ok(chunk)
}

/// Moves bytes from `src` to `dst` until `src` ends (then shuts `dst`'s write side
/// down), counting them in `moved`: the user-space pump of [`relay_stream`].
async fn copy_pump<R, W>(
    src: &mut R,
    dst: &mut W,
    moved: &AtomicU64,
    activity: &Activity,
    meter: &(dyn Fn(u64) + Sync),
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match copy_stream_chunk(src, dst, moved).await? {
            Chunk::Moved(n) => {
                activity.touch();
                meter(n);
            }
            Chunk::NotReady => {}
            Chunk::Eof => {
                // The peer may have gone already: then there is nothing to tell it.
                let _ = dst.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// One read from `src` into the scratch buffer, written to `dst` at once as far as it
/// takes it; the rest is copied out to wait for room, and `dst` is flushed (a TLS
/// session sends its records). The scratch buffer is borrowed only inside one poll.
async fn copy_stream_chunk<R, W>(
    src: &mut R,
    dst: &mut W,
    moved: &AtomicU64,
) -> Result<Chunk, PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use std::pin::Pin;
    use std::task::Poll;
    let (chunk, left) = std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let mut read = tokio::io::ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                // A TLS peer that closed without close_notify: its data ended all the same.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok((Chunk::Eof, Vec::new())));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Read(e))),
                Poll::Ready(Ok(())) => {}
            }
            let got = read.filled().len();
            if got == 0 {
                return Poll::Ready(Ok((Chunk::Eof, Vec::new())));
            }
            let sent = match Pin::new(&mut *dst).poll_write(cx, &buf[..got]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                Poll::Pending => 0,
            };
            moved.fetch_add(sent as u64, Relaxed);
            Poll::Ready(Ok((Chunk::Moved(got as u64), buf[sent..got].to_vec())))
        })
    })
    .await?;
    if !left.is_empty() {
        dst.write_all(&left).await.map_err(PumpError::Write)?;
        moved.fetch_add(left.len() as u64, Relaxed);
    }
    if matches!(chunk, Chunk::Moved(_)) {
        dst.flush().await.map_err(PumpError::Write)?;
    }
    Ok(chunk)
}

#[cfg(target_os = "linux")]
mod splice {
    //! splice(2) through pooled pipes.

    use std::cell::RefCell;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    use rustix::pipe::{PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Chunk, PumpError};

    /// Pipes kept per worker thread for reuse.
    const POOL_SIZE: usize = 64;
    /// Bytes asked of one splice; the pipe's capacity bounds what moves.
    const SPLICE_LEN: usize = 1 << 20;
    /// Capacity asked for each pipe (the kernel may grant less).
    const PIPE_SIZE: usize = 256 * 1024;

    /// An empty pipe; dropped (closed) rather than pooled if it may hold bytes.
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    thread_local! {
        static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    impl Pipe {
        /// An empty pipe from this thread's pool, or a new one.
        pub(super) fn take() -> io::Result<Pipe> {
            if let Some(pipe) = POOL.with(|p| p.borrow_mut().pop()) {
                return Ok(pipe);
            }
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
            // A larger pipe moves more per system call; keep the default if refused.
            let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
            Ok(Pipe { read, write })
        }

        /// Returns an empty pipe to this thread's pool.
        fn give(self) {
            POOL.with(|p| {
                let mut pool = p.borrow_mut();
                if pool.len() < POOL_SIZE {
                    pool.push(self);
                }
            });
        }
    }

    fn splice(
        from: impl std::os::fd::AsFd,
        to: impl std::os::fd::AsFd,
        len: usize,
    ) -> io::Result<usize> {
        Ok(rustix::pipe::splice(
            from,
            None,
            to,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )?)
    }

    /// Splices what `src` has into `pipe`, then all of it out to `dst`.
    pub(super) async fn chunk(
        src: &TcpStream,
        dst: &TcpStream,
        pipe: Pipe,
        moved: &AtomicU64,
    ) -> Result<Chunk, PumpError> {
        let mut left = match src.try_io(Interest::READABLE, || splice(src, &pipe.write, SPLICE_LEN))
        {
            Ok(0) => {
                pipe.give();
                return Ok(Chunk::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give();
                return Ok(Chunk::NotReady);
            }
            Err(e) => {
                pipe.give();
                return Err(PumpError::Read(e));
            }
        };
        // From here the pipe holds bytes: on error or cancellation it is dropped, never
        // pooled, so no stray byte can reach another connection.
        let total = left;
        while left > 0 {
            super::write_ready(dst).await.map_err(PumpError::Write)?;
            match dst.try_io(Interest::WRITABLE, || splice(&pipe.read, dst, left)) {
                Ok(n) => {
                    left -= n;
                    moved.fetch_add(n as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(PumpError::Write(e)),
            }
        }
        pipe.give();
        Ok(Chunk::Moved(total as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two ends of one loopback TCP connection.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap());
        let (dialed, accepted) = tokio::join!(dialed, listener.accept());
        (dialed.unwrap(), accepted.unwrap().0)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_chunks_a_stalled_backend_cannot_take_at_once_arrive_whole_and_in_order() {
        // The client sends small pieces, each read and copied on its own; the backend
        // reads nothing for a while, so tandem's writes to it go short and the rest must
        // wait for room, then go out before anything read later.
        let (mut client, client_side) = connected().await;
        let (backend_side, mut backend) = connected().await;
        socket2::SockRef::from(&backend_side)
            .set_send_buffer_size(4096)
            .unwrap();
        let relay = tokio::spawn(async move {
            let (own, all) = (CancellationToken::new(), CancellationToken::new());
            relay(
                &client_side,
                &backend_side,
                Duration::from_secs(10),
                Cancel {
                    own: &own,
                    all: &all,
                },
                &|_, _| {},
            )
            .await
        });
        const TOTAL: usize = 1 << 20;
        let data = pattern(TOTAL);
        let send = async {
            for piece in data.chunks(5000) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            client.shutdown().await.unwrap();
        };
        let receive = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut got = Vec::with_capacity(TOTAL);
            backend.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("relayed within 20 s");
        assert_eq!(got.len(), TOTAL);
        assert!(got == data, "bytes changed or reordered on the way");
        drop(backend);
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.to_backend, TOTAL as u64);
    }
}
