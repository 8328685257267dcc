//! A client connection: plain or TLS stream, a fixed-size read buffer,
//! bounded line reading, DATA reading through the [`Decoder`], and reply
//! batching for PIPELINING (replies are queued and flushed before we block
//! on reading, so pipelined commands get their replies in one write).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::data::{Decoder, Outcome};
use crate::message_sink::MessageSink;
use crate::reply::Reply;

/// Read buffer size; also the largest line we could ever hold.
const BUF_SIZE: usize = 16 * 1024;

/// A plain TCP stream or a TLS stream over one (`T`: the server or the client side).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Only during the STARTTLS switch; all I/O fails.
    Switching,
}

/// What a session with a client reads and writes.
pub type Stream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

fn switching() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is switching to TLS")
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }
}

/// Where reading message data stopped.
#[derive(Debug)]
pub enum DataRead {
    /// The end of the data, and whether the sink took every byte.
    Done(Outcome, io::Result<()>),
    /// The sink holds as much as it may: spill it, then read on.
    SinkFull,
}

/// Result of reading one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line without CRLF (or LF).
    Line(Vec<u8>),
    /// Longer than the limit; it was read to its end and dropped.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

pub struct Conn {
    stream: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    discarding: bool,
    out: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// `timeout` bounds every wait for the peer (a read, or a TLS handshake).
    pub fn new(stream: Stream, timeout: Duration) -> Conn {
        Conn {
            stream,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            discarding: false,
            out: Vec::new(),
            timeout,
        }
    }

    /// Changes the bound on each wait for the peer (e.g. for DATA).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether unread input is waiting in our buffer.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end
    }

    /// Queues a reply; it is sent before the next blocking read or on flush.
    pub fn queue(&mut self, reply: &Reply) {
        self.out.extend_from_slice(reply.to_wire().as_bytes());
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            tokio::time::timeout(self.timeout, async {
                self.stream.write_all(&out).await?;
                self.stream.flush().await
            })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        }
        Ok(())
    }

    /// Sends pending replies and closes the write side (TLS close_notify).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }

    /// Reads more input, flushing queued replies first. Returns 0 on EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.flush().await?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut self.buf[self.end..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))??;
        self.end += n;
        Ok(n)
    }

    /// Reads one line of at most `limit` octets including the line ending.
    /// Longer lines are consumed and reported as [`Line::TooLong`], so the
    /// buffer never grows.
    pub async fn read_line(&mut self, limit: usize) -> io::Result<Line> {
        let limit = limit.min(BUF_SIZE);
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let mut line = &pending[..pos];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                let too_long = self.discarding || line.len() + 2 > limit;
                let line = line.to_vec();
                self.start += pos + 1;
                self.discarding = false;
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Line(line)
                });
            }
            if self.discarding || pending.len() >= limit {
                self.discarding = true;
                self.start = self.end;
            }
            if self.fill().await? == 0 {
                return Ok(Line::Eof);
            }
        }
    }

    /// Drops buffered input: plaintext pipelined after STARTTLS must not be
    /// taken as if it came over TLS (CVE-2011-0411 class).
    pub fn discard_input(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = false;
    }

    /// Switches to TLS (after the 220 to STARTTLS, or at connect for 465).
    pub async fn start_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        handshake_timeout: Duration,
    ) -> io::Result<()> {
        self.flush().await?;
        self.discard_input();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Switching) else {
            return Err(io::Error::other("TLS already active"));
        };
        let tls = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// The negotiated TLS version, e.g. `TLSv1_3`.
    pub fn tls_version(&self) -> Option<String> {
        match &self.stream {
            Stream::Tls(s) => s.get_ref().1.protocol_version().map(|v| format!("{v:?}")),
            _ => None,
        }
    }

    /// Reads message data up to its real end, writing decoded bytes to
    /// `sink`. Network errors are `Err`; a failing sink does not stop the
    /// reading (we must still find the end to stay in sync) and is returned
    /// beside the outcome. A sink that is full stops the reading
    /// ([`DataRead::SinkFull`]); calling again with the same decoder goes on.
    pub async fn read_data(
        &mut self,
        decoder: &mut Decoder,
        sink: &mut MessageSink,
    ) -> io::Result<DataRead> {
        let mut decoded = Vec::with_capacity(BUF_SIZE);
        let mut sink_result = Ok(());
        loop {
            if self.start < self.end {
                decoded.clear();
                let (used, outcome) = decoder.feed(&self.buf[self.start..self.end], &mut decoded);
                self.start += used;
                if !decoded.is_empty() && sink_result.is_ok() {
                    sink_result = sink.write(&decoded).await;
                }
                if let Some(outcome) = outcome {
                    return Ok(DataRead::Done(outcome, sink_result));
                }
                // Only a holding sink fills up, and holding never fails a write.
                if sink.is_full() {
                    return Ok(DataRead::SinkFull);
                }
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during DATA",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected (server Conn, client socket) pair on loopback.
    async fn pair() -> (Conn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (
            Conn::new(Stream::Plain(server), Duration::from_secs(5)),
            client,
        )
    }

    #[tokio::test]
    async fn lines_are_bounded_and_pipelined_input_kept() {
        let (mut conn, mut client) = pair().await;
        let mut input = b"NOOP\r\nbare lf\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 20_000));
        input.extend_from_slice(b"\r\nQUIT\r\n");
        input.extend_from_slice(&[b'y'; 510]);
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(&[b'z'; 511]);
        input.extend_from_slice(b"\r\npartial");
        // Fits the loopback socket buffers: all of it is there before we read.
        client.write_all(&input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        assert_eq!(
            conn.read_line(512).await.expect("read"),
            Line::Line(b"NOOP".to_vec())
        );
        assert!(
            conn.has_buffered_input(),
            "pipelined input must stay buffered"
        );
        assert_eq!(
            conn.read_line(512).await.expect("read"),
            Line::Line(b"bare lf".to_vec())
        );
        assert_eq!(conn.read_line(512).await.expect("read"), Line::TooLong);
        assert_eq!(
            conn.read_line(512).await.expect("read"),
            Line::Line(b"QUIT".to_vec())
        );
        assert_eq!(
            conn.read_line(512).await.expect("read"),
            Line::Line(vec![b'y'; 510])
        );
        assert_eq!(conn.read_line(512).await.expect("read"), Line::TooLong);
        // An unterminated last line is not a command.
        assert_eq!(conn.read_line(512).await.expect("read"), Line::Eof);
    }

    #[tokio::test]
    async fn replies_are_queued_until_input_is_needed() {
        let (mut conn, mut client) = pair().await;
        conn.queue(&Reply::new(250, "2.0.0", "one"));
        conn.queue(&Reply::new(250, "2.0.0", "two"));
        client.write_all(b"NOOP\r\n").await.expect("write");
        // Reading flushes the queued replies first.
        assert_eq!(
            conn.read_line(512).await.expect("read"),
            Line::Line(b"NOOP".to_vec())
        );
        let mut got = [0u8; 30];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"250 2.0.0 one\r\n250 2.0.0 two\r\n");
    }
}
