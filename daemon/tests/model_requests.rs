//! A roster member asking a running daemon for models many times at once
//! (as one catching up with a slow link might, or a misbehaving one): the
//! daemon answers only a few at a time, so each answer waits its turn, but
//! every request gets the right blob (or "not found" for a model it never
//! had), and the daemon goes on with its rounds. An asker that stops
//! reading holds one turn until it reads again, so others are still
//! answered; only when every turn is held does everyone wait (the daemon
//! holds no more answers than turns).

mod consortium_support;

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use consortium_support::{WAIT, latest_model, stock_swarm};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use primia_tests::{Consortium, Settings};
use primiad::identity::NodeIdentity;
use primiad::net::codec::{BULK_PROTOCOL, BulkCodec, BulkMessage};
use primiad::node::wire::{self, Request, Response};
use primiad::store::ModelHash;
use tokio::sync::{mpsc, watch};

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

/// The bulk protocol, asking only, over `codec`.
fn asking<C>(codec: C) -> request_response::Behaviour<C>
where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    request_response::Behaviour::with_codec(
        codec,
        [(BULK_PROTOCOL, ProtocolSupport::Outbound)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(64),
    )
}

fn codec() -> BulkCodec {
    BulkCodec::new(1 << 20, 64 << 20)
}

/// A stock libp2p stack speaking only the bulk protocol, with `key`.
fn client(key: libp2p::identity::Keypair) -> Swarm<request_response::Behaviour<BulkCodec>> {
    stock_swarm(key, |_| asking(codec()))
}

/// Where the daemon and this test's askers meet.
struct Daemon {
    consortium: Consortium,
    peer: PeerId,
    addr: Multiaddr,
    /// The latest model of member 0.
    hash: ModelHash,
    round: u64,
    /// Keys the daemon accepts: those of the stopped members.
    keys: Vec<libp2p::identity::Keypair>,
}

/// Starts `n` members with models of 200,000 parameters, waits for
/// round 1, stops the last `stop` members and takes their keys, so that
/// the test can ask member 0 as roster members.
fn start(n: usize, stop: usize) -> Daemon {
    let mut settings = Settings::fast(n);
    // Large enough that answers take a moment (and more than a stream's
    // flow-control window); every model kept, so the one asked for stays.
    settings.parameters = 200_000;
    settings.keep_models = 0;
    let mut c = Consortium::new(BIN, &settings);
    c.start_all();
    c.wait_until("every member past round 1", WAIT, |c| {
        (0..n).all(|i| {
            c.status(i)
                .and_then(|s| s.pointer("/latest_model/round")?.as_u64())
                .is_some_and(|r| r >= 1)
        })
    });
    let mut keys = Vec::new();
    for m in n - stop..n {
        assert!(c.stop(m, Duration::from_secs(20)), "{}", c.logs());
        let key_file = c.members[m].config.parent().unwrap().join("identity.key");
        keys.push(NodeIdentity::load(&key_file).unwrap().keypair().clone());
    }
    let (hash, round) = latest_model(&c.status(0).expect("m0's status"));
    let peer: PeerId = c.members[0].peer_id.parse().unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", c.members[0].port)
        .parse()
        .unwrap();
    Daemon {
        consortium: c,
        peer,
        addr,
        hash,
        round,
        keys,
    }
}

/// The bulk codec, except that it reads only the length of a response
/// (and tells `started` whose answer has begun), then nothing more until
/// `release` turns true: an asker that stops reading its streams.
#[derive(Clone)]
struct Stalling {
    inner: BulkCodec,
    who: usize,
    started: mpsc::UnboundedSender<usize>,
    release: watch::Receiver<bool>,
}

impl request_response::Codec for Stalling {
    type Protocol = StreamProtocol;
    type Request = BulkMessage;
    type Response = BulkMessage;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<BulkMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.inner.read_request(p, io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BulkMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut prefix = [0u8; 4];
        io.read_exact(&mut prefix).await?;
        let _ = self.started.send(self.who);
        let mut release = self.release.clone();
        let _ = release.wait_for(|r| *r).await;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > 64 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too long",
            ));
        }
        let mut body = vec![0; len];
        io.read_exact(&mut body).await?;
        Ok(body.into())
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: BulkMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.inner.write_request(p, io, req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: BulkMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.inner.write_response(p, io, res).await
    }
}

/// One connection, two ways of asking over it.
#[derive(NetworkBehaviour)]
struct Askers {
    stalling: request_response::Behaviour<Stalling>,
    reading: request_response::Behaviour<BulkCodec>,
}

/// An event of `Askers`, without the megabytes of a response.
fn describe(e: &AskersEvent) -> String {
    let (who, e) = match e {
        AskersEvent::Stalling(e) => ("stalling", e),
        AskersEvent::Reading(e) => ("reading", e),
    };
    let what = match e {
        request_response::Event::Message { .. } => "an answer".to_string(),
        request_response::Event::OutboundFailure { error, .. } => format!("failure: {error}"),
        other => format!("{other:?}"),
    };
    format!("{who} asker: {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_model_requests_at_once_are_all_answered() {
    // Five, so that four carry on (t = 4) when one steps out.
    let Daemon {
        consortium: mut c,
        peer,
        addr,
        hash,
        round,
        mut keys,
    } = start(5, 1);
    let mut x = client(keys.pop().unwrap());
    const ASKS: usize = 12;
    let unknown = ModelHash([9; 32]);
    let mut pending = HashMap::new();
    for i in 0..=ASKS {
        let asked = if i == ASKS { unknown } else { hash };
        let id = x.behaviour_mut().send_request_with_addresses(
            &peer,
            wire::encode_request(&Request::Model(asked)).into(),
            vec![addr.clone()],
        );
        pending.insert(id, asked);
    }
    let (mut models, mut not_found) = (0, 0);
    tokio::time::timeout(WAIT, async {
        while !pending.is_empty() {
            match x.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) => {
                    let asked = pending.remove(&request_id).expect("a request of ours");
                    let response = response.into_vec();
                    match wire::decode_response(&response).unwrap() {
                        Response::Model(blob) => {
                            assert_eq!(asked, hash);
                            assert_eq!(ModelHash::of(blob), hash, "a blob of another model");
                            models += 1;
                        }
                        Response::NotFound => {
                            assert_eq!(asked, unknown);
                            not_found += 1;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("a request failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} requests unanswered\n{}", pending.len(), c.logs()));
    assert_eq!((models, not_found), (ASKS, 1));

    // The daemon went on with its rounds meanwhile (four are enough).
    c.wait_until("two more rounds", WAIT, |c| {
        c.status(0)
            .and_then(|s| s.pointer("/latest_model/round")?.as_u64())
            .is_some_and(|r| r >= round + 2)
    });
}

/// The next event of any of three askers.
async fn next_event(askers: &mut [Swarm<Askers>; 3]) -> (usize, AskersEvent) {
    let [a, b, c] = askers;
    loop {
        let (i, e) = tokio::select! {
            e = a.select_next_some() => (0, e),
            e = b.select_next_some() => (1, e),
            e = c.select_next_some() => (2, e),
        };
        if let SwarmEvent::Behaviour(e) = e {
            return (i, e);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn askers_that_stop_reading_hold_one_turn_each() {
    // Three stopped members lend their keys to three askers: A and B stop
    // reading at times, C always reads.
    let Daemon {
        consortium: c,
        peer,
        addr,
        hash,
        keys,
        ..
    } = start(5, 3);
    let (release, released) = watch::channel(false);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let mut askers: [_; 3] = std::array::from_fn(|who| {
        stock_swarm(keys[who].clone(), |_| Askers {
            stalling: asking(Stalling {
                inner: codec(),
                who,
                started: started_tx.clone(),
                release: released.clone(),
            }),
            reading: asking(codec()),
        })
    });
    let model = || wire::encode_request(&Request::Model(hash)).into();
    let ask = |askers: &mut [Swarm<Askers>; 3], who: usize, stalling: bool| {
        let b = askers[who].behaviour_mut();
        let addrs = vec![addr.clone()];
        if stalling {
            b.stalling
                .send_request_with_addresses(&peer, model(), addrs);
        } else {
            b.reading.send_request_with_addresses(&peer, model(), addrs);
        }
    };
    let check = |(who, e): (usize, AskersEvent)| {
        let response = match e {
            AskersEvent::Stalling(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })
            | AskersEvent::Reading(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => response.into_vec(),
            e => panic!("asker {who}: {}\n{}", describe(&e), c.logs()),
        };
        match wire::decode_response(&response).unwrap() {
            Response::Model(blob) => assert_eq!(ModelHash::of(blob), hash),
            other => panic!("unexpected answer {other:?}"),
        }
        who
    };
    /// Drives the askers until the daemon begins an answer to a stalling
    /// asker, which must be `who`'s; nothing else may happen meanwhile.
    async fn begun(
        askers: &mut [Swarm<Askers>; 3],
        started: &mut mpsc::UnboundedReceiver<usize>,
        who: usize,
        logs: &str,
    ) {
        tokio::select! {
            s = started.recv() => assert_eq!(s, Some(who), "whose answer began"),
            (w, e) = next_event(askers) => panic!("asker {w}: {}\n{logs}", describe(&e)),
            _ = tokio::time::sleep(WAIT) => panic!("no answer to asker {who} began\n{logs}"),
        }
    }
    /// Drives the askers for `secs`: no answer may come or begin.
    async fn quiet(
        askers: &mut [Swarm<Askers>; 3],
        started: &mut mpsc::UnboundedReceiver<usize>,
        secs: u64,
        logs: &str,
    ) {
        tokio::select! {
            s = started.recv() => panic!("an answer to asker {s:?} began\n{logs}"),
            (w, e) = next_event(askers) => panic!("asker {w}: {}\n{logs}", describe(&e)),
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
    }
    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

    // A asks three times and reads nothing: the daemon begins one answer,
    // which holds A's one turn.
    for _ in 0..3 {
        ask(&mut askers, A, true);
    }
    begun(&mut askers, &mut started, A, &c.logs()).await;
    // C is answered all the same, and A's own reading request waits.
    ask(&mut askers, A, false);
    ask(&mut askers, C, false);
    let first = tokio::time::timeout(WAIT, next_event(&mut askers))
        .await
        .unwrap_or_else(|_| panic!("C unanswered while A stalls\n{}", c.logs()));
    assert_eq!(check(first), C, "only C may be answered");
    // B stalls too: every turn is held, and C now waits as well.
    ask(&mut askers, B, true);
    begun(&mut askers, &mut started, B, &c.logs()).await;
    ask(&mut askers, C, false);
    quiet(&mut askers, &mut started, 3, &c.logs()).await;

    // A and B read again: every answer comes (A 3 + 1, B 1, C 1), right.
    release.send_replace(true);
    let mut answered = [0; 3];
    tokio::time::timeout(WAIT, async {
        while answered != [4, 1, 1] {
            let who = check(next_event(&mut askers).await);
            answered[who] += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("answered {answered:?}\n{}", c.logs()));
}
