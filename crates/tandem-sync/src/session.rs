//! One sync session between two nodes, without IO: the hello exchange that derives the
//! session key, sequence numbers both ways, heartbeats and the dead-peer timeout.

use std::time::Duration;

use crate::codec::{self, Direction, FrameError, FrameKey, MIN_VERSION, Message, VERSION};

/// Send a heartbeat after this long without sending.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Give the peer up after this long without a frame.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connected to the peer.
    Initiator,
    /// Accepted the peer.
    Responder,
}

/// What the peer said of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node name.
    pub node: String,
    /// Its pool configuration digest.
    pub pools_digest: u64,
    /// Its process took over from its predecessor with the table (see
    /// [`Message::Hello`]).
    pub resumed: bool,
    /// The protocol versions it speaks, lowest and highest.
    pub versions: (u16, u16),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A frame was refused.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The first frame was not a hello.
    #[error("peer did not start with a hello: {0}")]
    Handshake(String),
    /// The two nodes speak no common protocol version.
    #[error(
        "no common sync protocol version: the peer speaks versions {}..={}, this node {}..={} (upgrade the older node)",
        theirs.0, theirs.1, ours.0, ours.1
    )]
    Versions {
        /// The peer's lowest and highest.
        theirs: (u16, u16),
        /// Ours.
        ours: (u16, u16),
    },
    /// The peer fell silent.
    #[error("no frame from the peer for {0:?}")]
    Silent(Duration),
}

impl SessionError {
    /// An authentic frame that did not decode: dropped, the session goes on.
    pub fn is_dropped_frame(&self) -> bool {
        matches!(self, SessionError::Frame(FrameError::Decode(_)))
    }
}

/// A session.
#[derive(Debug)]
pub struct Session {
    role: Role,
    secret: FrameKey,
    node: String,
    nonce: [u8; 32],
    pools_digest: u64,
    key: Option<FrameKey>,
    peer: Option<Peer>,
    send_seq: u64,
    recv_seq: u64,
    last_rx: Duration,
    last_tx: Duration,
    resumed: bool,
    max_version: u16,
}

impl Session {
    /// A new session; `nonce` must be fresh random bytes.
    pub fn new(
        role: Role,
        secret: FrameKey,
        node: &str,
        nonce: [u8; 32],
        pools_digest: u64,
        now: Duration,
    ) -> Session {
        Session {
            role,
            secret,
            node: node.to_string(),
            nonce,
            pools_digest,
            key: None,
            peer: None,
            send_seq: 0,
            recv_seq: 0,
            last_rx: now,
            last_tx: now,
            resumed: false,
            max_version: VERSION,
        }
    }

    /// Speaks at most protocol version `max` (at least [`MIN_VERSION`]); limited to 1,
    /// the session is a node of version 1 on the wire, its hello included (to test
    /// what a rolling upgrade meets).
    pub fn max_version(mut self, max: u16) -> Session {
        self.max_version = max.clamp(MIN_VERSION, VERSION);
        self
    }

    /// The protocol version the session speaks: the highest both nodes do (before the
    /// peer's hello, [`MIN_VERSION`]).
    pub fn version(&self) -> u16 {
        self.peer
            .as_ref()
            .map_or(MIN_VERSION, |p| p.versions.1.min(self.max_version))
    }

    /// Says in our hello that this process took over from its predecessor with the
    /// table (see [`Message::Hello`]).
    pub fn resumed(mut self, resumed: bool) -> Session {
        self.resumed = resumed;
        self
    }

    fn out(&self) -> Direction {
        match self.role {
            Role::Initiator => Direction::FromInitiator,
            Role::Responder => Direction::FromResponder,
        }
    }

    fn inbound(&self) -> Direction {
        match self.role {
            Role::Initiator => Direction::FromResponder,
            Role::Responder => Direction::FromInitiator,
        }
    }

    /// Our hello: the first frame to send, authenticated with the shared key.
    pub fn hello(&mut self, now: Duration) -> Vec<u8> {
        self.last_tx = now;
        self.send_seq = 1;
        if self.max_version == 1 {
            let payload =
                codec::version1_hello(&self.node, self.nonce, self.pools_digest, self.resumed);
            return codec::seal_payload(&self.secret, self.out(), 0, &payload);
        }
        let hello = Message::Hello {
            version: MIN_VERSION,
            node: self.node.clone(),
            nonce: self.nonce,
            pools_digest: self.pools_digest,
            resumed: self.resumed,
            max_version: self.max_version,
        };
        codec::seal(&self.secret, self.out(), 0, &hello)
    }

    /// The peer, once its hello verified.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// Whether both hellos are through.
    pub fn is_established(&self) -> bool {
        self.key.is_some()
    }

    /// Checks a received frame body (without length); returns its message. The first
    /// must be the peer's hello, which establishes the session. After it, an authentic
    /// frame in sequence that does not decode ([`FrameError::Decode`]) counts as
    /// received: the caller may drop it and go on (see [`SessionError::is_dropped_frame`]).
    pub fn receive(&mut self, body: &[u8], now: Duration) -> Result<Message, SessionError> {
        let message = match &self.key {
            Some(key) => match codec::open(key, self.inbound(), self.recv_seq, body) {
                Ok(message) => message,
                // Authentic and in sequence, but not a message this node knows: the
                // frame is dropped and the session goes on.
                Err(e @ FrameError::Decode(_)) => {
                    self.recv_seq += 1;
                    self.last_rx = now;
                    return Err(SessionError::Frame(e));
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let message = codec::open(&self.secret, self.inbound(), 0, body)?;
                let Message::Hello {
                    version,
                    node,
                    nonce,
                    pools_digest,
                    resumed,
                    max_version,
                } = &message
                else {
                    return Err(SessionError::Handshake(format!("{message:?}")));
                };
                let theirs = (*version, (*max_version).max(*version));
                if theirs.0 > self.max_version || theirs.1 < MIN_VERSION {
                    return Err(SessionError::Versions {
                        theirs,
                        ours: (MIN_VERSION, self.max_version),
                    });
                }
                let (initiator, responder) = match self.role {
                    Role::Initiator => (&self.nonce, nonce),
                    Role::Responder => (nonce, &self.nonce),
                };
                self.key = Some(self.secret.session(initiator, responder));
                self.peer = Some(Peer {
                    node: node.clone(),
                    pools_digest: *pools_digest,
                    resumed: *resumed,
                    versions: theirs,
                });
                message
            }
        };
        self.recv_seq += 1;
        self.last_rx = now;
        Ok(message)
    }

    /// Seals `message` as our next frame (after the hello exchange).
    pub fn seal(&mut self, message: &Message, now: Duration) -> Vec<u8> {
        let key = self
            .key
            .as_ref()
            .expect("seal after the session is established");
        let frame = codec::seal(key, self.out(), self.send_seq, message);
        self.send_seq += 1;
        self.last_tx = now;
        frame
    }

    /// Time passes: a heartbeat to send when idle, or an error when the peer is silent.
    pub fn poll(&mut self, now: Duration) -> Result<Option<Vec<u8>>, SessionError> {
        let silent = now.saturating_sub(self.last_rx);
        if silent >= DEAD_AFTER {
            return Err(SessionError::Silent(silent));
        }
        if self.key.is_some() && now.saturating_sub(self.last_tx) >= HEARTBEAT {
            return Ok(Some(self.seal(&Message::Heartbeat, now)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn pair(secret_a: &[u8], secret_b: &[u8]) -> (Session, Session) {
        let a = Session::new(
            Role::Initiator,
            FrameKey::from_secret(secret_a),
            "lb1",
            [1; 32],
            7,
            s(0),
        );
        let b = Session::new(
            Role::Responder,
            FrameKey::from_secret(secret_b),
            "lb2",
            [2; 32],
            7,
            s(0),
        );
        (a, b)
    }

    /// Delivers a whole frame (length included) to `to`.
    fn deliver(to: &mut Session, frame: &[u8], now: Duration) -> Result<Message, SessionError> {
        to.receive(&frame[4..], now)
    }

    #[test]
    fn a_resumed_hello_tells_the_peer() {
        let (a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let mut a = a.resumed(true);
        let ha = a.hello(s(0));
        let hb = b.hello(s(0));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        assert!(b.peer().unwrap().resumed, "b hears that a resumed");
        assert!(!a.peer().unwrap().resumed, "b did not");
    }

    #[test]
    fn a_session_speaks_the_highest_version_both_nodes_do() {
        // Both of this version: 2, both ways.
        let (mut a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let (ha, hb) = (a.hello(s(0)), b.hello(s(0)));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        assert_eq!((a.version(), b.version()), (VERSION, VERSION));
        assert_eq!(b.peer().unwrap().versions, (MIN_VERSION, VERSION));
        // One of version 1 (its hello byte for byte a version 1 node's): 1, both ways.
        for old_dials in [true, false] {
            let (a, b) = pair(b"shared secret 16", b"shared secret 16");
            let (mut a, mut b) = if old_dials {
                (a.max_version(1), b)
            } else {
                (a, b.max_version(1))
            };
            let (ha, hb) = (a.hello(s(0)), b.hello(s(0)));
            deliver(&mut b, &ha, s(0)).unwrap();
            deliver(&mut a, &hb, s(0)).unwrap();
            assert_eq!((a.version(), b.version()), (1, 1));
            let old = if old_dials { &b } else { &a };
            assert_eq!(old.peer().unwrap().versions, (1, 1));
        }
    }

    #[test]
    fn a_peer_of_no_common_version_is_refused_naming_both() {
        let (mut a, _) = pair(b"shared secret 16", b"shared secret 16");
        let _ = a.hello(s(0));
        // A future node that no longer speaks version 1 or 2.
        let future = Message::Hello {
            version: VERSION + 1,
            node: "lb2".into(),
            nonce: [2; 32],
            pools_digest: 7,
            resumed: false,
            max_version: VERSION + 2,
        };
        let frame = codec::seal(
            &FrameKey::from_secret(b"shared secret 16"),
            Direction::FromResponder,
            0,
            &future,
        );
        let err = deliver(&mut a, &frame, s(0)).unwrap_err();
        assert_eq!(
            err,
            SessionError::Versions {
                theirs: (VERSION + 1, VERSION + 2),
                ours: (MIN_VERSION, VERSION)
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no common sync protocol version: the peer speaks versions {}..={}, this node 1..={VERSION} (upgrade the older node)",
                VERSION + 1,
                VERSION + 2
            )
        );
        assert!(!a.is_established());
        // A node limited to version 1 refuses it too.
        let mut b1 = Session::new(
            Role::Initiator,
            FrameKey::from_secret(b"shared secret 16"),
            "lb1",
            [1; 32],
            7,
            s(0),
        )
        .max_version(1);
        let _ = b1.hello(s(0));
        assert!(matches!(
            deliver(&mut b1, &frame, s(0)),
            Err(SessionError::Versions { .. })
        ));
    }

    #[test]
    fn an_authentic_frame_that_does_not_decode_is_dropped_and_the_session_goes_on() {
        let (mut a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let (ha, hb) = (a.hello(s(0)), b.hello(s(0)));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        // What a newer node's unknown message looks like: an index past ours.
        let key = a.key.clone().unwrap();
        let unknown = codec::seal_payload(&key, Direction::FromInitiator, 1, &[200, 1, 2]);
        let err = deliver(&mut b, &unknown, s(1)).unwrap_err();
        assert!(err.is_dropped_frame(), "{err}");
        // The next frame is number 2, and is read.
        let next = codec::seal(&key, Direction::FromInitiator, 2, &Message::BulkRequest);
        assert_eq!(deliver(&mut b, &next, s(1)), Ok(Message::BulkRequest));
        // A tampered frame is no dropped frame: it ends the session.
        let mut bad = codec::seal(&key, Direction::FromInitiator, 3, &Message::Heartbeat);
        *bad.last_mut().unwrap() ^= 1;
        assert!(!deliver(&mut b, &bad, s(1)).unwrap_err().is_dropped_frame());
    }

    #[test]
    fn hellos_establish_and_frames_flow_both_ways() {
        let (mut a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let ha = a.hello(s(0));
        let hb = b.hello(s(0));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        assert!(a.is_established() && b.is_established());
        assert_eq!(a.peer().unwrap().node, "lb2");
        for n in 0..5 {
            let f = a.seal(&Message::BulkRequest, s(n));
            assert_eq!(deliver(&mut b, &f, s(n)).unwrap(), Message::BulkRequest);
            let f = b.seal(&Message::BulkEnd, s(n));
            assert_eq!(deliver(&mut a, &f, s(n)).unwrap(), Message::BulkEnd);
        }
    }

    #[test]
    fn a_peer_without_the_key_is_refused_at_its_hello() {
        let (mut a, mut b) = pair(b"shared secret 16", b"another secret!!");
        let ha = a.hello(s(0));
        assert_eq!(
            deliver(&mut b, &ha, s(0)),
            Err(SessionError::Frame(FrameError::Mac))
        );
        assert!(!b.is_established());
    }

    #[test]
    fn replayed_and_old_session_frames_are_refused() {
        let (mut a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let (ha, hb) = (a.hello(s(0)), b.hello(s(0)));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        let f1 = a.seal(&Message::Heartbeat, s(1));
        deliver(&mut b, &f1, s(1)).unwrap();
        assert!(matches!(
            deliver(&mut b, &f1, s(1)),
            Err(SessionError::Frame(FrameError::Sequence { .. }))
        ));
        // A recorded hello replayed into a new session gives the attacker nothing: the
        // new session key depends on the new nonce, so its old frames fail.
        let mut b2 = Session::new(
            Role::Responder,
            FrameKey::from_secret(b"shared secret 16"),
            "lb2",
            [9; 32],
            7,
            s(0),
        );
        deliver(&mut b2, &ha, s(2)).unwrap();
        assert_eq!(
            deliver(&mut b2, &f1, s(2)),
            Err(SessionError::Frame(FrameError::Mac))
        );
    }

    #[test]
    fn heartbeats_when_idle_and_silence_ends_the_session() {
        let (mut a, mut b) = pair(b"shared secret 16", b"shared secret 16");
        let (ha, hb) = (a.hello(s(0)), b.hello(s(0)));
        deliver(&mut b, &ha, s(0)).unwrap();
        deliver(&mut a, &hb, s(0)).unwrap();
        assert_eq!(a.poll(Duration::from_millis(500)), Ok(None));
        let hb1 = a.poll(s(1)).unwrap().expect("heartbeat after 1 s idle");
        assert_eq!(deliver(&mut b, &hb1, s(1)).unwrap(), Message::Heartbeat);
        // b heard a at 1 s and has sent nothing since 0 s: a heartbeat is due.
        assert!(b.poll(s(5)).unwrap().is_some());
        assert_eq!(a.poll(s(6)), Err(SessionError::Silent(s(6))));
    }
}
