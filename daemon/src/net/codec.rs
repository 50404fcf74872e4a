//! The request-response codec for bulk data: one opaque payload per stream,
//! framed by a big-endian `u32` length, with a hard cap checked before any
//! buffer is allocated.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// The protocol name of bulk transfers between members.
pub const BULK_PROTOCOL: StreamProtocol = StreamProtocol::new("/primia/bulk/1");

/// How much of an incoming payload's buffer is zeroed ahead of the bytes
/// that fill it.
///
/// The buffer is reserved once at the announced length (at most the cap),
/// so no byte is copied into a larger buffer later (growing it by doubling
/// moved each megabyte-sized payload once more and touched twice its
/// pages). A reservation is address space: the allocator backs it with
/// memory only as it is written, and it is written one piece at a time as
/// bytes arrive. A peer that announces a large payload and then stalls so
/// costs us what it sent plus one piece of memory, not the announced
/// length; and the piece just zeroed is still in cache when the stream
/// copies the bytes over it.
const READ_PIECE_BYTES: usize = 256 << 10;

/// Length-prefixed framing of opaque requests and responses with size caps.
///
/// The caps apply both ways: we refuse to read a larger frame (an
/// `InvalidData` error that resets the stream, so the peer gets an error
/// rather than a hang) and refuse to write one.
#[derive(Debug, Clone)]
pub struct BulkCodec {
    max_request_bytes: usize,
    max_response_bytes: usize,
    /// Incoming frames refused or broken off, shared by every clone (one
    /// per stream). libp2p only logs a failed read of a request, so this
    /// is how the event loop learns about them.
    bad_frames: Arc<AtomicU64>,
}

impl BulkCodec {
    /// A codec with the given caps; each must fit the `u32` length prefix.
    pub fn new(max_request_bytes: usize, max_response_bytes: usize) -> Self {
        Self {
            max_request_bytes: max_request_bytes.min(u32::MAX as usize),
            max_response_bytes: max_response_bytes.min(u32::MAX as usize),
            bad_frames: Arc::default(),
        }
    }

    /// How many incoming requests and responses were over the cap,
    /// truncated or broken off so far, across all streams.
    pub fn bad_frames(&self) -> u64 {
        self.bad_frames.load(Ordering::Relaxed)
    }

    pub(crate) fn count_bad<T>(&self, result: io::Result<T>) -> io::Result<T> {
        let refused = |e: &io::Error| e.get_ref().is_some_and(|inner| inner.is::<NoFrame>());
        if result.as_ref().is_err_and(|e| !refused(e)) {
            self.bad_frames.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// The stream ended before a frame began: the peer refused to answer (or
/// sent nothing), which is not a malformed frame.
#[derive(Debug)]
struct NoFrame(String);

impl std::fmt::Display for NoFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer closed the stream without a {}", self.0)
    }
}

impl std::error::Error for NoFrame {}

/// Reads one frame of at most `max_bytes`.
pub async fn read_frame<T>(io: &mut T, max_bytes: usize, what: &str) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match io.read(&mut prefix[got..]).await? {
            0 if got == 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    NoFrame(what.to_owned()),
                ));
            }
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes exceeds the limit of {max_bytes} bytes"),
        ));
    }
    // Zero each byte once, a piece ahead of the bytes (see
    // `READ_PIECE_BYTES`). (`read_to_end` would zero the whole spare
    // capacity again after every pending read, which is quadratic for large
    // frames.)
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("no memory for a {what} of {len} bytes"),
        )
    })?;
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            buf.resize(len.min(filled + READ_PIECE_BYTES), 0);
        }
        match io.read(&mut buf[filled..]).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{what} ended after {filled} of {len} bytes"),
                ));
            }
            n => filled += n,
        }
    }
    Ok(buf)
}

/// Writes one frame, refusing a payload over `max_bytes`.
pub async fn write_frame<T>(
    io: &mut T,
    payload: &[u8],
    max_bytes: usize,
    what: &str,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    write_frame_parts(io, &[payload], max_bytes, what).await
}

/// Writes one frame whose payload is `parts` one after the other (the
/// reader sees one payload), refusing a payload over `max_bytes`.
pub async fn write_frame_parts<T>(
    io: &mut T,
    parts: &[&[u8]],
    max_bytes: usize,
    what: &str,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let total = parts
        .iter()
        .map(|p| p.len())
        .fold(0usize, usize::saturating_add);
    if total > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {total} bytes exceeds the limit of {max_bytes} bytes"),
        ));
    }
    let len = u32::try_from(total).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} does not fit a u32 length"),
        )
    })?;
    if total <= COALESCE_BYTES {
        // One write, so one yamux frame: yamux sends each write as a frame
        // of its own and flushes the connection after each (a Noise frame
        // and a system call apiece), and most round messages are this small.
        let mut frame = Vec::with_capacity(4 + total);
        frame.extend_from_slice(&len.to_be_bytes());
        for part in parts {
            frame.extend_from_slice(part);
        }
        io.write_all(&frame).await?;
    } else {
        io.write_all(&len.to_be_bytes()).await?;
        for part in parts {
            io.write_all(part).await?;
        }
    }
    io.flush().await
}

/// Payloads up to this size are written with their length prefix in one
/// write (see [`write_frame_parts`]); yamux splits larger writes into
/// frames of this size anyway.
const COALESCE_BYTES: usize = 16 << 10;

/// A bulk request or response: one frame on the wire, held as shared
/// parts, so that a message for several members, or a large message and a
/// small trailer, go out without being copied into one buffer first. An
/// incoming message is always one part.
#[derive(Clone, Default)]
pub struct BulkMessage {
    parts: Vec<Bytes>,
}

impl BulkMessage {
    /// The parts, sent one after the other as one payload.
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Self {
        Self {
            parts: parts.into_iter().collect(),
        }
    }

    /// Length of the whole payload.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// Writes the parts as one frame (see [`write_frame_parts`]).
    pub(crate) async fn write<T>(&self, io: &mut T, max_bytes: usize, what: &str) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let parts: Vec<&[u8]> = self.parts.iter().map(|p| &p[..]).collect();
        write_frame_parts(io, &parts, max_bytes, what).await
    }

    /// The payload in one buffer: without a copy when it is one part held
    /// nowhere else, as every incoming request is.
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.parts.len() == 1 {
            return Vec::from(self.parts.remove(0));
        }
        let mut out = Vec::with_capacity(self.len());
        for p in &self.parts {
            out.extend_from_slice(p);
        }
        out
    }
}

impl From<Vec<u8>> for BulkMessage {
    fn from(v: Vec<u8>) -> Self {
        Self::from_parts([Bytes::from(v)])
    }
}

impl From<Bytes> for BulkMessage {
    fn from(b: Bytes) -> Self {
        Self::from_parts([b])
    }
}

impl std::fmt::Debug for BulkMessage {
    // A payload can be megabytes: its length and parts only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BulkMessage(len = {}, parts = {})",
            self.len(),
            self.parts.len()
        )
    }
}

impl Codec for BulkCodec {
    type Protocol = StreamProtocol;
    /// Shared parts (see [`BulkMessage`]).
    type Request = BulkMessage;
    /// Shared parts too: a round message answered to several members.
    type Response = BulkMessage;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BulkMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        let result = read_frame(io, self.max_request_bytes, "request").await;
        self.count_bad(result).map(BulkMessage::from)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BulkMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        let result = read_frame(io, self.max_response_bytes, "response").await;
        self.count_bad(result).map(BulkMessage::from)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: BulkMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        req.write(io, self.max_request_bytes, "request").await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: BulkMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        res.write(io, self.max_response_bytes, "response").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn frame(len_prefix: u32, body: &[u8]) -> Vec<u8> {
        let mut v = len_prefix.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn read(bytes: Vec<u8>, max: usize) -> io::Result<Vec<u8>> {
        futures::executor::block_on(read_frame(&mut Cursor::new(bytes), max, "request"))
    }

    #[test]
    fn round_trip() {
        let mut out = Cursor::new(Vec::new());
        futures::executor::block_on(write_frame(&mut out, b"hello", 10, "request")).unwrap();
        assert_eq!(out.get_ref(), &frame(5, b"hello"));
        assert_eq!(read(out.into_inner(), 10).unwrap(), b"hello");
        assert_eq!(read(frame(0, b""), 10).unwrap(), b"");
    }

    #[test]
    fn parts_are_one_frame_and_the_cap_counts_them_all() {
        let write = |parts: &[&[u8]], max: usize| {
            let mut out = Cursor::new(Vec::new());
            futures::executor::block_on(write_frame_parts(&mut out, parts, max, "request"))
                .map(|()| out.into_inner())
        };
        let joined = write(&[b"hello, ", b"", b"world"], 12).unwrap();
        assert_eq!(joined, frame(12, b"hello, world"));
        assert_eq!(read(joined, 12).unwrap(), b"hello, world");
        let err = write(&[b"hello, ", b"world"], 11).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("12 bytes"), "{err}");

        let req = BulkMessage::from_parts([Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]);
        assert_eq!(req.len(), 4);
        assert!(!req.is_empty());
        assert_eq!(format!("{req:?}"), "BulkMessage(len = 4, parts = 2)");
        assert_eq!(req.into_vec(), b"abcd");
        let one = BulkMessage::from(b"xyz".to_vec());
        assert_eq!(one.into_vec(), b"xyz");
        assert!(BulkMessage::default().is_empty());
    }

    /// Records each write it is given, as yamux makes a frame of each.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_small_payload_is_one_write_and_a_large_one_is_not_copied_whole() {
        let write = |parts: &[&[u8]]| {
            let mut w = Writes::default();
            futures::executor::block_on(write_frame_parts(&mut w, parts, usize::MAX, "request"))
                .unwrap();
            w.0
        };
        let small = write(&[b"envelope", b"", b"trailer"]);
        assert_eq!(small, vec![frame(15, b"envelopetrailer")]);
        let at_limit = vec![1u8; COALESCE_BYTES];
        assert_eq!(write(&[&at_limit]).len(), 1);
        let big = vec![2u8; COALESCE_BYTES + 1];
        let writes = write(&[&big[..10], &big[10..]]);
        assert_eq!(writes.len(), 3);
        assert_eq!(writes.concat(), frame(big.len() as u32, &big));
    }

    /// Hands out at most 7 bytes per read, returning `Pending` in between
    /// like a network stream.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            self.ready = false;
            let n = buf.len().min(7).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn frames_arrive_intact_in_pieces_and_across_buffer_chunks() {
        let body: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut trickle = Trickle {
            data: frame(body.len() as u32, &body),
            pos: 0,
            ready: false,
        };
        let got = futures::executor::block_on(read_frame(&mut trickle, 1 << 20, "request"));
        assert!(got.unwrap() == body);

        let big: Vec<u8> = (0..(3 * READ_PIECE_BYTES + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        assert!(read(frame(big.len() as u32, &big), 4 * READ_PIECE_BYTES).unwrap() == big);
    }

    #[test]
    fn a_stream_closed_before_any_byte_is_a_refusal_not_a_bad_frame() {
        let codec = BulkCodec::new(10, 10);
        let mut c = codec.clone();
        let proto = BULK_PROTOCOL;
        let err = futures::executor::block_on(c.read_response(&proto, &mut Cursor::new(vec![])))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("closed the stream without a response"),
            "{err}"
        );
        assert_eq!(codec.bad_frames(), 0);
        let err =
            futures::executor::block_on(c.read_request(&proto, &mut Cursor::new(frame(11, b""))))
                .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(codec.bad_frames(), 1, "clones share the counter");
    }

    #[test]
    fn oversize_length_is_refused_before_reading_the_body() {
        // Announces 4 GiB with no body: refused from the prefix alone.
        let err = read(frame(u32::MAX, b""), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn truncated_frames_are_errors() {
        assert_eq!(
            read(frame(10, b"abc"), 100).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read(vec![0, 0], 100).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn oversize_payload_is_not_written() {
        let mut out = Cursor::new(Vec::new());
        let err = futures::executor::block_on(write_frame(&mut out, &[0; 11], 10, "response"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(out.get_ref().is_empty());
    }
}
