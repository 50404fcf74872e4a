//! One-way messages between members over long-lived streams: one stream per
//! member and direction, opened on the first message and kept, each message
//! a length-prefixed frame on it (the bulk codec's framing and cap).
//!
//! A round exchanges many small messages in quick succession. As
//! request-response, each opened a substream of its own: yamux's opening
//! and closing frames both ways, the protocol's name, an acknowledgement,
//! and two negotiation timers and two request timers on the timer thread:
//! 358-439 us of CPU per request on loopback, against 123-154 us for a
//! message and the message that answers it, each one yamux frame on a kept
//! stream (`cargo bench -p primiad --bench net_transfer`).
//!
//! Bounds: a member has at most one incoming stream here (a new one
//! replaces the last), each frame is capped, and a reader hands a message
//! on only when the consumer's bounded event queue has room (back-pressure
//! reaches the sender through yamux's window). Outgoing, each member has a
//! queue of [`NetLimits::message_queue`](super::NetLimits::message_queue)
//! messages served by one task; a message that cannot be written within
//! the request timeout is dropped with its stream, and when no stream can
//! be opened (the member is down) the whole queue is. Delivery is at most
//! once: a message is written again on a fresh stream only when writing it
//! failed, and the receiver drops a frame it did not read whole. A writer
//! starts on a new stream only once the reader has taken it (it sends a
//! byte first), so no message goes into a stream nobody reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::debug;

use super::codec::{BulkCodec, BulkMessage, read_frame};
use super::{NetConfig, NetError, NetEvent};

/// The protocol of the message streams.
pub const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new("/primia/messages/1");

/// What names a message in errors and logs.
const WHAT: &str = "message";

/// The byte a reader sends when it takes a new stream. libp2p drops an
/// incoming stream when the acceptor is busy, and yamux takes a write
/// before the other side reads it, so a writer that did not wait for this
/// could lose its first messages without noticing.
const READY: u8 = 1;

/// Streams opened for one message at most before it is dropped.
const OPEN_ATTEMPTS: u32 = 8;

/// Pause after the first failed attempt to open a stream; it doubles after
/// each further one (up to 128 ms, about 250 ms in all), with jitter. The
/// common failure is not an unreachable member but a busy acceptor:
/// libp2p-stream hands incoming streams to it through a channel of one, so
/// when the members of a round all open their first stream to a new leader
/// at once, most are dropped, and they must not all come back together
/// nor wait long.
const FIRST_REOPEN_PAUSE: Duration = Duration::from_millis(2);

/// Outgoing queues, one per member, each served by a task that owns the
/// member's stream. Shared by every clone of the network client.
pub(crate) struct Outboxes {
    control: libp2p_stream::Control,
    local: PeerId,
    roster: Arc<HashSet<PeerId>>,
    max_bytes: usize,
    queue: usize,
    timeout: Duration,
    queues: Mutex<HashMap<PeerId, mpsc::Sender<BulkMessage>>>,
}

impl Outboxes {
    /// Messages are capped like requests (`max_request_bytes`) and must be
    /// written within the request timeout.
    pub(crate) fn new(control: libp2p_stream::Control, local: PeerId, config: &NetConfig) -> Self {
        Self {
            control,
            local,
            roster: Arc::new(config.roster_set()),
            max_bytes: config.max_request_bytes.min(u32::MAX as usize),
            queue: config.limits.message_queue,
            timeout: config.request_timeout,
            queues: Mutex::default(),
        }
    }

    /// Queues `message` for `peer`. Fails at once, without waiting, for a
    /// peer off the roster, a message over the cap or a full queue.
    pub(crate) fn send(&self, peer: PeerId, message: BulkMessage) -> Result<(), NetError> {
        if peer == self.local {
            return Err(NetError::Request {
                peer,
                reason: "a message to ourselves".into(),
            });
        }
        if !self.roster.contains(&peer) {
            return Err(NetError::NotOnRoster(peer));
        }
        if message.len() > self.max_bytes {
            return Err(NetError::PayloadTooLarge {
                what: WHAT,
                len: message.len(),
                max: self.max_bytes,
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::Stopped)?;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = match queues.get(&peer) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(self.queue);
                let writer = Writer {
                    control: self.control.clone(),
                    peer,
                    max_bytes: self.max_bytes,
                    timeout: self.timeout,
                    stream: None,
                };
                runtime.spawn(writer.run(rx));
                queues.insert(peer, tx.clone());
                tx
            }
        };
        drop(queues);
        tx.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NetError::OutboxFull {
                peer,
                max: self.queue,
            },
            mpsc::error::TrySendError::Closed(_) => NetError::Stopped,
        })
    }
}

/// Writes one member's queue to its stream.
struct Writer {
    control: libp2p_stream::Control,
    peer: PeerId,
    max_bytes: usize,
    timeout: Duration,
    stream: Option<Stream>,
}

impl Writer {
    /// Runs until every sender of the queue is gone.
    async fn run(mut self, mut queue: mpsc::Receiver<BulkMessage>) {
        while let Some(message) = queue.recv().await {
            if !self.deliver(&message).await {
                // The member cannot be reached: what waits behind this
                // message would only wait as long again, and hold its
                // bytes meanwhile. Later messages try afresh.
                let mut dropped = 0;
                while queue.try_recv().is_ok() {
                    dropped += 1;
                }
                if dropped > 0 {
                    debug!(peer = %self.peer, dropped, "member unreachable; queued messages dropped");
                }
            }
        }
    }

    /// Writes `message` on the kept stream, or on a fresh one when there
    /// is none or the kept one broke. A message that breaks a fresh stream
    /// too (the member refuses it: over its cap) is dropped; opening is
    /// tried [`OPEN_ATTEMPTS`] times. False when no stream could be opened.
    async fn deliver(&mut self, message: &BulkMessage) -> bool {
        let peer = self.peer;
        let mut opened = 0;
        loop {
            let fresh = self.stream.is_none();
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    if opened == OPEN_ATTEMPTS {
                        debug!(%peer, "no message stream; message dropped");
                        return false;
                    }
                    if opened > 0 {
                        let pause = FIRST_REOPEN_PAUSE * (1 << (opened - 1));
                        let jitter = rand::random_range(0.5..1.5);
                        tokio::time::sleep(pause.mul_f64(jitter)).await;
                    }
                    opened += 1;
                    match self.open().await {
                        Ok(s) => self.stream.insert(s),
                        Err(e) => {
                            debug!(%peer, error = %e, attempt = opened, "message stream not opened");
                            continue;
                        }
                    }
                }
            };
            match tokio::time::timeout(self.timeout, message.write(stream, self.max_bytes, WHAT))
                .await
            {
                Ok(Ok(())) => return true,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, fresh, "message stream broke");
                    self.stream = None;
                    if fresh {
                        return true;
                    }
                }
                Err(_) => {
                    // The member does not read: give up on this message
                    // rather than on everything queued behind it.
                    debug!(%peer, "message not written in time; dropped with its stream");
                    self.stream = None;
                    return true;
                }
            }
        }
    }

    /// Opens a stream and waits until the member's reader has taken it.
    async fn open(&mut self) -> Result<Stream, String> {
        let open = async {
            let mut stream = self
                .control
                .open_stream(self.peer, MESSAGE_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            let mut ready = [0u8];
            stream
                .read_exact(&mut ready)
                .await
                .map_err(|e| format!("not taken: {e}"))?;
            if ready != [READY] {
                return Err(format!("unexpected first byte {}", ready[0]));
            }
            Ok(stream)
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

/// Readers of the incoming streams, at most one per member; dropping this
/// stops them all.
#[derive(Default)]
struct Readers(HashMap<PeerId, AbortHandle>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in self.0.values() {
            reader.abort();
        }
    }
}

/// Accepts incoming message streams and reads each on a task of its own,
/// handing every message on as a [`NetEvent::Message`]. Runs until the
/// behaviour is gone; aborting it stops the readers too.
pub(crate) async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    roster: Arc<HashSet<PeerId>>,
    events: mpsc::Sender<NetEvent>,
    codec: BulkCodec,
    max_bytes: usize,
) {
    let mut readers = Readers::default();
    while let Some((peer, stream)) = incoming.next().await {
        // Only roster members can connect at all; this keeps it so should
        // that ever change.
        if !roster.contains(&peer) {
            continue;
        }
        let reader = tokio::spawn(read(peer, stream, events.clone(), codec.clone(), max_bytes));
        if let Some(old) = readers.0.insert(peer, reader.abort_handle()) {
            old.abort();
        }
        readers.0.retain(|_, r| !r.is_finished());
    }
}

/// Reads frames from one member's stream until it ends or breaks.
async fn read(
    peer: PeerId,
    mut stream: Stream,
    events: mpsc::Sender<NetEvent>,
    codec: BulkCodec,
    max_bytes: usize,
) {
    if let Err(e) = async {
        stream.write_all(&[READY]).await?;
        stream.flush().await
    }
    .await
    {
        debug!(%peer, error = %e, "message stream not taken");
        return;
    }
    loop {
        match codec.count_bad(read_frame(&mut stream, max_bytes, WHAT).await) {
            Ok(payload) => {
                if events
                    .send(NetEvent::Message {
                        from: peer,
                        payload,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                debug!(%peer, error = %e, "message stream ended");
                return;
            }
        }
    }
}
