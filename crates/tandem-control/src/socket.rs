//! The control socket: a unix stream socket, mode 0600, speaking one JSON line per
//! request and per response. Only the user tandem runs as (and root) may use it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::events::Event;
use crate::protocol::{Request, Response};

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// A request with the channel to answer it on.
pub type Command = (Request, oneshot::Sender<Response>);

/// Subscribes to the event log, for `monitor` sessions.
pub type Follow = std::sync::Arc<dyn Fn() -> tokio::sync::broadcast::Receiver<Event> + Send + Sync>;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket.
    #[error("{0} is in use by another running tandem (stop it, or set global.control_socket)")]
    InUse(PathBuf),
    /// The socket cannot be created.
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The client cannot reach tandem.
    #[error("cannot reach tandem at {path}: {reason}")]
    Connect {
        /// The path.
        path: PathBuf,
        /// Why, with a hint.
        reason: String,
    },
    /// The exchange failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
}

/// Binds the control socket at `path` with mode 0600. A stale socket file (nobody
/// answering) is replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_error = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // /run/tandem is made at boot by systemd (RuntimeDirectory); elsewhere, here.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    // Created with no access for group and others from the start.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Serves connections on `listener` until `stop`, sending each request to `commands`;
/// returns once every session has ended (they end at `stop` too).
pub async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) {
    serve_until(listener, commands, stop.clone(), stop, None).await
}

/// As [`serve`], but accepting ends at `stop_accepting` (the listener is closed; open
/// sessions go on answering until `stop`): an upgraded tandem leaves the socket to its
/// successor while it answers the request that started it. With `follow`, a `monitor`
/// request is followed, on its connection, by every event (one JSON [`Event`] per line)
/// until the client closes or `stop`.
pub async fn serve_until(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    stop_accepting: CancellationToken,
    stop: CancellationToken,
    follow: Option<Follow>,
) {
    let own_uid = rustix::process::geteuid().as_raw();
    let sessions = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "control socket accept");
                    continue;
                }
            },
        };
        // File mode keeps others out; the peer's credentials are checked too, in case
        // the mode was loosened by hand.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    "control socket: refused a client of another user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "control socket: cannot read the client's credentials");
                continue;
            }
        }
        let commands = commands.clone();
        let stop = stop.clone();
        let follow = follow.clone();
        sessions.spawn(async move {
            if let Err(e) = session(stream, commands, stop, follow).await {
                debug!(error = %e, "control session ended");
            }
        });
    }
    drop(listener);
    sessions.close();
    sessions.wait().await;
}

/// Answers one client's requests; ends at `stop` while waiting for a request, but a
/// request read is answered (its handler sees `stop` too): the answer to `upgrade` is
/// written while its process shuts down.
async fn session(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    follow: Option<Follow>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut lines).take(MAX_LINE as u64);
        let n = tokio::select! {
            n = limited.read_line(&mut line) => n?,
            () = stop.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let request = serde_json::from_str::<Request>(line.trim());
        // Subscribed before the daemon answers, so no event falls between its answer
        // (the latest kept events) and the stream.
        let events = match (&request, &follow) {
            (Ok(Request::Monitor), Some(f)) => Some(f()),
            _ => None,
        };
        let response = match request {
            Ok(Request::Monitor) if follow.is_none() => {
                Response::error("this tandem cannot stream events here")
            }
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if commands.send((request, tx)).await.is_err() {
                    Response::error("tandem is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::error("tandem is shutting down"))
                }
            }
            Err(e) if n as u64 >= MAX_LINE as u64 => {
                Response::error(format!("request longer than {MAX_LINE} bytes: {e}"))
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if let (Some(events), true) = (events, response.ok) {
            let sent: Vec<(u64, u64)> = serde_json::from_value::<Vec<Event>>(response.data)
                .unwrap_or_default()
                .iter()
                .map(|e| (e.seq, e.repeats))
                .collect();
            return stream_events(lines, write, events, sent, stop).await;
        }
    }
}

/// Writes each event of `events` as a JSON line (but those already `sent` in the
/// answer) until the client closes its side, the log ends or `stop`.
async fn stream_events(
    mut from_client: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    sent: Vec<(u64, u64)>,
    stop: CancellationToken,
) -> io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut scratch = [0u8; 256];
    loop {
        let event = tokio::select! {
            r = from_client.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
            e = events.recv() => e,
            () = stop.cancelled() => return Ok(()),
        };
        let event = match event {
            Ok(e) if sent.contains(&(e.seq, e.repeats)) => continue,
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                debug!(missed = n, "control socket: a monitor client fell behind");
                continue;
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        let mut out = serde_json::to_vec(&event).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// Sends `request` (a `monitor`) to the tandem at `path` and calls `each` with the
/// kept events of its answer, then with every event as it comes, until `each` returns
/// false or tandem closes the connection. A refusal is returned as the response.
pub async fn follow(
    path: &Path,
    request: &Request,
    mut each: impl FnMut(Event) -> bool,
) -> Result<Response, ControlError> {
    let stream = connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    lines.read_line(&mut line).await?;
    let response: Response =
        serde_json::from_str(&line).map_err(|e| ControlError::Io(io::Error::other(e)))?;
    if !response.ok {
        return Ok(response);
    }
    let kept: Vec<Event> = serde_json::from_value(response.data.clone())
        .map_err(|e| ControlError::Io(io::Error::other(e)))?;
    for e in kept {
        if !each(e) {
            return Ok(response);
        }
    }
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(response);
        }
        let event: Event =
            serde_json::from_str(&line).map_err(|e| ControlError::Io(io::Error::other(e)))?;
        if !each(event) {
            return Ok(response);
        }
    }
}

/// Sends one request to the tandem listening at `path` and returns its response.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream = connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    if line.is_empty() {
        return Err(ControlError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tandem closed the connection without answering",
        )));
    }
    serde_json::from_str(&line).map_err(|e| ControlError::Io(io::Error::other(e)))
}

/// Connects to the control socket at `path`, with a hint on failure.
async fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(path).await.map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => {
                format!("{e} (is tandem running? is this its global.control_socket?)")
            }
            io::ErrorKind::ConnectionRefused => {
                format!("{e} (tandem is not running; the socket file is stale)")
            }
            io::ErrorKind::PermissionDenied => {
                format!("{e} (run as the user tandem runs as, or as root)")
            }
            _ => e.to_string(),
        };
        ControlError::Connect {
            path: path.to_path_buf(),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Reply, UpgradeReply};

    /// The answer to a request whose handling stops the server (an upgrade) still
    /// reaches the client; accepting has ended by then.
    #[tokio::test]
    async fn a_request_read_is_answered_though_its_handler_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Command>(1);
        let stop = CancellationToken::new();
        let accepting = stop.child_token();
        let server = tokio::spawn(serve_until(
            listener,
            tx,
            accepting.clone(),
            stop.clone(),
            None,
        ));
        let handler = tokio::spawn(async move {
            let (_, reply) = rx.recv().await.unwrap();
            accepting.cancel();
            stop.cancel();
            tokio::task::yield_now().await;
            let _ = reply.send(Response::ok(Reply::Upgrade(UpgradeReply {
                new_pid: 9,
                ..UpgradeReply::default()
            })));
        });
        let response = request(&path, &Request::Upgrade { binary: None })
            .await
            .unwrap();
        assert!(response.ok, "{response:?}");
        handler.await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server ends once the session has answered")
            .unwrap();
        assert!(
            UnixStream::connect(&path).await.is_err(),
            "no longer accepting"
        );
    }
}
