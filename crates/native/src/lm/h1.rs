//! The gateway's HTTP/1.1 client: kept-alive connections, each written and
//! read by the task that makes the call.
//!
//! Why the gateway has one of its own: through reqwest, a call crosses a
//! redirect layer (which parses the URL again), a retry layer, the pool's
//! checkout and a connection task of hyper's that the request and its
//! answer reach by channel — about 120 000 instructions and two more task
//! wake-ups per call on top of the socket I/O (callgrind, one worker's
//! DSPy calls through the gateway). That was most of the gateway's hop, and
//! the hop is what a worker's call pays for leaving its own HTTP client.
//! Here a call takes an idle connection to the origin, writes its request
//! with one `write`, reads and parses the answer (httparse) itself, and puts
//! the connection back when the answer is read to its end.
//!
//! reqwest stays for what this does not do: HTTP/2 (`gateway.http2`),
//! proxies (any `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` in the
//! environment), and URLs that are not plain ASCII `http(s)://host[:port]/…`
//! (see [`Client::target`]).
//!
//! A connection found closed or holding unasked-for bytes when taken from
//! the pool is dropped, not used. Idle connections are also swept every
//! 30 s by a task of the pool's (started with its first kept connection,
//! ended with the client): those idle for 90 s, or that the service
//! closed, are closed, so an origin no longer called keeps no sockets open.
//!
//! A call is never sent twice by this layer: a connection the service
//! closes as the call is written fails that call with a retryable transport
//! error, for the gateway's retry policy.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dspex_core::{Error, ErrorKind, Result};
use futures_util::stream::BoxStream;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections kept per origin; one more is closed when its call ends.
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// A connection idle this long is closed rather than reused (services
/// close theirs after a while; reqwest's default too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the pool's sweeper looks for connections to close.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;
/// Response headers parsed; a head with more is refused.
const MAX_HEADERS: usize = 128;

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

/// A request target this client can send to.
#[derive(Debug)]
pub(super) struct Target {
    origin: Origin,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// Path and query.
    path: String,
}

/// A connection: plain TCP or TLS.
enum Io {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A kept-alive connection and what it has read past the last answer.
struct Conn {
    io: Io,
    buf: BytesMut,
    origin: Origin,
    idle_since: Instant,
}

impl Conn {
    /// Read more into the buffer; `false` at end of input.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    /// Whether an idle connection can carry another call: nothing to read
    /// on it (end of input, an error or stray bytes mean it cannot).
    fn reusable(&mut self, idle_timeout: Duration) -> bool {
        if self.idle_since.elapsed() >= idle_timeout || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        // Pending: nothing has arrived, the connection is open. A TLS
        // stream reads (and keeps) session tickets here without yielding.
        self.io.read(&mut probe).now_or_never().is_none()
    }
}

/// How an answer's body is framed.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the service closes the connection.
    Close,
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// An answer's head.
pub(super) struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// An answer's body as it arrives: the connection it is read from goes
/// back to the pool when the body is read to its end.
pub(super) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
    url: Arc<str>,
}

/// What a framing makes of the bytes read so far.
enum Step {
    Data(Bytes),
    /// More must be read.
    More,
    End,
}

impl Framing {
    /// The next piece of the body, taken from `buf`; an error says what is
    /// wrong with the answer. Sans I/O: the caller reads on `More`.
    fn step(&mut self, buf: &mut BytesMut) -> std::result::Result<Step, &'static str> {
        loop {
            match self {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => *self = Framing::Done,
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Framing::Close if buf.is_empty() => return Ok(Step::More),
                Framing::Close => return Ok(Step::Data(buf.split().freeze())),
                Framing::Chunked(state) => match state {
                    Chunk::Size | Chunk::Trailers => {
                        let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
                            if buf.len() > MAX_LINE {
                                return Err("a chunk-size or trailer line of the LM's answer is too long");
                            }
                            return Ok(Step::More);
                        };
                        let line = buf.split_to(end + 2);
                        if matches!(state, Chunk::Trailers) {
                            if end == 0 {
                                *self = Framing::Done;
                            }
                            continue;
                        }
                        let size = std::str::from_utf8(&line[..end])
                            .ok()
                            .and_then(|l| u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
                            .ok_or("the LM's answer has a malformed chunk size")?;
                        *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let n = (*left).min(buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err("a chunk of the LM's answer does not end where its size says");
                        }
                        let _ = buf.split_to(2);
                        *state = Chunk::Size;
                    }
                },
            }
        }
    }

    /// The input ended: the body with it (`Close`), or an answer cut short.
    fn at_end_of_input(&mut self) -> std::result::Result<(), &'static str> {
        match self {
            Framing::Close => {
                *self = Framing::Done;
                Ok(())
            }
            _ => Err("the LM closed the connection before the end of its answer"),
        }
    }
}

impl Body {
    /// The next piece of the body, `None` at its end.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let Some(conn) = self.conn.as_mut() else { return Ok(None) };
        let url = &self.url;
        loop {
            match self.framing.step(&mut conn.buf).map_err(|what| broken(url, what))? {
                Step::Data(chunk) => return Ok(Some(chunk)),
                Step::End => break,
                Step::More => {
                    if !conn.fill().await.map_err(|e| io_error(url, e))? {
                        self.keep_alive = false;
                        self.framing.at_end_of_input().map_err(|what| broken(url, what))?;
                    }
                }
            }
        }
        // The whole answer is read: the connection may carry the next call.
        if let Some(mut conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                conn.idle_since = Instant::now();
                self.pool.put(conn);
            }
        }
        Ok(None)
    }

    /// The whole body.
    pub(super) async fn bytes(mut self) -> Result<Bytes> {
        let first = self.next_chunk().await?.unwrap_or_default();
        let Some(second) = self.next_chunk().await? else { return Ok(first) };
        let mut all = BytesMut::from(&first[..]);
        all.extend_from_slice(&second);
        while let Some(more) = self.next_chunk().await? {
            all.extend_from_slice(&more);
        }
        Ok(all.freeze())
    }

    /// The body as a stream of its pieces.
    pub(super) fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        Box::pin(futures_util::stream::unfold(Some(self), |body| async move {
            let mut body = body?;
            match body.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}

/// Idle connections by origin.
struct Pool {
    idle: Mutex<HashMap<Origin, Vec<Conn>>>,
    idle_timeout: Duration,
    sweep_every: Duration,
    /// Whether the sweeper task runs.
    sweeping: AtomicBool,
}

impl Pool {
    fn new(idle_timeout: Duration, sweep_every: Duration) -> Arc<Pool> {
        Arc::new(Pool { idle: Mutex::default(), idle_timeout, sweep_every, sweeping: AtomicBool::new(false) })
    }

    fn take(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let conns = idle.get_mut(origin)?;
        while let Some(mut conn) = conns.pop() {
            if conn.reusable(self.idle_timeout) {
                return Some(conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        let mut idle = self.idle.lock();
        let conns = idle.entry(conn.origin.clone()).or_default();
        // The oldest come first: close those idle too long.
        let expired = conns.iter().take_while(|c| c.idle_since.elapsed() >= self.idle_timeout).count();
        conns.drain(..expired);
        if conns.len() < MAX_IDLE_PER_ORIGIN {
            conns.push(conn);
        }
        drop(idle);
        if !self.sweeping.load(Ordering::Relaxed) {
            self.start_sweeping();
        }
    }

    /// The sweeper: a task that holds the pool weakly, so it ends with the
    /// client (or with the Tokio runtime it was started on; the next kept
    /// connection then starts another).
    fn start_sweeping(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = self.sweep_every;
        runtime.spawn(async move {
            let _stopped = Stopped(pool.clone());
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// Close the idle connections that have been idle too long or that the
    /// service closed (or wrote to unasked).
    fn sweep(&self) {
        let mut idle = self.idle.lock();
        idle.retain(|_, conns| {
            conns.retain_mut(|c| c.reusable(self.idle_timeout));
            !conns.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

/// Marks the sweeper stopped when its task ends or is dropped (its runtime
/// shut down), so a later kept connection starts it again.
struct Stopped(std::sync::Weak<Pool>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.sweeping.store(false, Ordering::Relaxed);
        }
    }
}

/// The client: a pool of kept-alive connections and, with the `tls`
/// feature, the TLS settings the gateway trusts LMs with.
pub(super) struct Client {
    pool: Arc<Pool>,
    #[cfg(feature = "tls")]
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("h1::Client")
    }
}

/// An error of the connection to `url`, retryable (another attempt may
/// find the service up), unless the service's certificate was refused.
fn io_error(url: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::TimedOut {
        return Error::new(ErrorKind::Timeout, format!("LM call to {url} ran past its time limit"))
            .with_retryable(true);
    }
    super::gateway::connection_error(format!("request to {url} failed: {e}"), &e)
}

fn broken(url: &str, what: &str) -> Error {
    Error::new(ErrorKind::Transport, format!("request to {url} failed: {what}")).with_retryable(true)
}

/// Whether a header value can be written as it is: no control character
/// but tab (a line break would split the request; HTTP allows no others).
fn writable(s: &str) -> bool {
    !s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

impl Client {
    #[cfg(feature = "tls")]
    pub(super) fn new(tls: Arc<tokio_rustls::rustls::ClientConfig>) -> Client {
        Client { pool: Pool::new(IDLE_TIMEOUT, SWEEP_EVERY), tls: tokio_rustls::TlsConnector::from(tls) }
    }

    #[cfg(not(feature = "tls"))]
    pub(super) fn new() -> Client {
        Client { pool: Pool::new(IDLE_TIMEOUT, SWEEP_EVERY) }
    }

    /// Where `url` goes, if this client can send there: `http://` (and
    /// `https://` with TLS), an ASCII host name or IP address, no user
    /// info. Anything else is reqwest's.
    pub(super) fn target(&self, url: &str) -> Option<Target> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            if cfg!(not(feature = "tls")) {
                return None;
            }
            (true, rest)
        } else {
            return None;
        };
        if !url.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], authority[i + 1..].parse::<u16>().ok()?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
            return None;
        }
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Some(Target {
            origin: Origin { tls, host: host.to_ascii_lowercase(), port },
            authority: authority.to_string(),
            path,
        })
    }

    /// A new connection to `origin`.
    async fn connect(&self, origin: &Origin, url: &str) -> Result<Conn> {
        let tcp = TcpStream::connect((origin.host.as_str(), origin.port)).await.map_err(|e| io_error(url, e))?;
        // Requests are written whole: waiting to coalesce only delays them.
        tcp.set_nodelay(true).map_err(|e| io_error(url, e))?;
        let io = if origin.tls { self.handshake(origin, tcp, url).await? } else { Io::Plain(tcp) };
        Ok(Conn { io, buf: BytesMut::with_capacity(16 * 1024), origin: origin.clone(), idle_since: Instant::now() })
    }

    #[cfg(feature = "tls")]
    async fn handshake(&self, origin: &Origin, tcp: TcpStream, url: &str) -> Result<Io> {
        use tokio_rustls::rustls::pki_types::ServerName;
        let name = ServerName::try_from(origin.host.clone()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidRequest,
                format!("request to {url}: {} is not a server name: {e}", origin.host),
            )
        })?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| io_error(url, e))?;
        Ok(Io::Tls(Box::new(tls)))
    }

    #[cfg(not(feature = "tls"))]
    async fn handshake(&self, _: &Origin, _: TcpStream, url: &str) -> Result<Io> {
        Err(Error::new(ErrorKind::Config, format!("request to {url}: this build has no TLS (the `tls` feature)")))
    }

    /// `POST` `body` with `headers` to `target`: the answer's head, and its
    /// body to read.
    pub(super) async fn post(
        &self,
        target: &Target,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(Head, Body)> {
        let mut request =
            Vec::with_capacity(256 + body.len() + headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
        request.extend_from_slice(b"POST ");
        request.extend_from_slice(target.path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(target.authority.as_bytes());
        request.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            // The client frames the request itself.
            if ["host", "content-length", "transfer-encoding", "connection"].iter().any(|h| k.eq_ignore_ascii_case(h)) {
                continue;
            }
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') || !writable(v) {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    format!("request to {url}: header {k:?} cannot be sent (a name must be a token, a value one line)"),
                ));
            }
            request.extend_from_slice(k.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(v.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"content-length: ");
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);

        let mut conn = match self.pool.take(&target.origin) {
            Some(conn) => conn,
            None => self.connect(&target.origin, url).await?,
        };
        conn.io.write_all(&request).await.map_err(|e| io_error(url, e))?;
        conn.io.flush().await.map_err(|e| io_error(url, e))?;
        let (head, framing, keep_alive) = read_head(&mut conn, url).await?;
        let body = Body { conn: Some(conn), framing, keep_alive, pool: self.pool.clone(), url: url.into() };
        Ok((head, body))
    }
}

/// The answer's head (interim 1xx answers skipped), how its body is
/// framed, and whether the connection stays open after it.
async fn read_head(conn: &mut Conn, url: &str) -> Result<(Head, Framing, bool)> {
    loop {
        if let Some(head) = parse_head(&mut conn.buf, url)? {
            return Ok(head);
        }
        if !conn.fill().await.map_err(|e| io_error(url, e))? {
            return Err(broken(url, "the LM closed the connection before answering"));
        }
    }
}

/// A complete final head at the start of the buffer, taken from it; `None`
/// while more must be read (an error once over 64 KiB without one). Not
/// async: the parser's header slots must not live in the call's future,
/// which is moved as it is built.
fn parse_head(buf: &mut BytesMut, url: &str) -> Result<Option<(Head, Framing, bool)>> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let parsed = response.parse(buf).map_err(|e| broken(url, &format!("the LM's answer is not HTTP/1.1: {e}")))?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() > MAX_HEAD {
                return Err(broken(url, "the LM's answer head is over 64 KiB"));
            }
            return Ok(None);
        };
        let status = response.code.unwrap_or(0);
        if !(100..1000).contains(&status) {
            return Err(broken(url, &format!("the LM's answer has status {status}, not an HTTP status")));
        }
        if (100..200).contains(&status) && status != 101 {
            let _ = buf.split_to(len);
            continue;
        }
        let mut keep_alive = response.version == Some(1);
        let (mut chunked, mut length) = (false, None);
        let mut headers = Vec::with_capacity(response.headers.len());
        for h in response.headers.iter() {
            let Ok(value) = std::str::from_utf8(h.value) else { continue };
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.split(',').next_back().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value.trim().parse::<u64>().map_err(|_| broken(url, "the LM's answer has a bad content-length"))?,
                );
            } else if h.name.eq_ignore_ascii_case("connection") {
                if value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                    keep_alive = false;
                } else if value.split(',').any(|t| t.trim().eq_ignore_ascii_case("keep-alive")) {
                    keep_alive = true;
                }
            }
            headers.push((h.name.to_ascii_lowercase(), value.to_string()));
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            keep_alive = false;
            Framing::Close
        };
        let _ = buf.split_to(len);
        return Ok(Some((Head { status, headers }, framing, keep_alive)));
    }
}

/// An LM's answer read as this client reads one off a connection: `bytes`
/// arrive `piece` bytes at a time (all at once if 0), then the connection
/// closes. The status and the body, or what is wrong with the answer. For
/// the fuzz target `lm_answer` and tests; not a stable API.
#[doc(hidden)]
pub fn read_answer(bytes: &[u8], piece: usize) -> std::result::Result<(u16, Vec<u8>), String> {
    let piece = if piece == 0 { bytes.len().max(1) } else { piece };
    let mut pieces = bytes.chunks(piece);
    let mut buf = BytesMut::new();
    let mut more = |buf: &mut BytesMut| pieces.next().map(|p| buf.extend_from_slice(p)).is_some();
    let head = loop {
        if let Some(head) = parse_head(&mut buf, "lm").map_err(|e| e.message().to_string())? {
            break head;
        }
        if !more(&mut buf) {
            return Err("the LM closed the connection before answering".into());
        }
    };
    let (Head { status, .. }, mut framing, _) = head;
    let mut body = Vec::new();
    loop {
        match framing.step(&mut buf)? {
            Step::Data(chunk) => body.extend_from_slice(&chunk),
            Step::End => return Ok((status, body)),
            Step::More => {
                if !more(&mut buf) {
                    framing.at_end_of_input()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        #[cfg(feature = "tls")]
        {
            Client::new(super::super::gateway::tls_config(None).expect("tls config"))
        }
        #[cfg(not(feature = "tls"))]
        {
            Client::new()
        }
    }

    #[test]
    fn targets_are_plain_urls_only() {
        let c = client();
        let t = c.target("http://127.0.0.1:8080/v1/chat/completions?x=1#f").expect("plain");
        assert_eq!((t.origin.host.as_str(), t.origin.port, t.origin.tls), ("127.0.0.1", 8080, false));
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/v1/chat/completions?x=1"));
        let t = c.target("http://[::1]:9/v1").expect("ipv6");
        assert_eq!((t.origin.host.as_str(), t.origin.port), ("::1", 9));
        let t = c.target("http://Example.COM").expect("no path");
        assert_eq!((t.origin.host.as_str(), t.origin.port, t.path.as_str()), ("example.com", 80, "/"));
        assert_eq!(
            c.target("https://api.openai.com/v1/chat/completions").map(|t| t.origin.port),
            cfg!(feature = "tls").then_some(443)
        );
        for other in [
            "ftp://h/x",
            "http://user:pw@h/x",
            "http://bücher.example/x",
            "http://h:notaport/x",
            "http://h/a b",
            "http:///x",
        ] {
            assert!(c.target(other).is_none(), "{other}");
        }
    }

    /// Idle connections are closed in the background: those idle past the
    /// timeout, and those the service closed, with no further call to
    /// their origin.
    #[tokio::test]
    async fn idle_connections_are_swept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Two connections: the first kept open by the service until the
        // client closes it (reported), the second closed by the service.
        let server = tokio::spawn(async move {
            let mut closed_by_client = None;
            for keep_open in [true, false] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await.expect("read");
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.expect("write");
                if keep_open {
                    let started = Instant::now();
                    assert_eq!(s.read(&mut buf).await.expect("read"), 0, "closed, not written to");
                    closed_by_client = Some(started.elapsed());
                }
            }
            closed_by_client
        });
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let call = async |c: &Client| {
            let t = c.target(&url).expect("target");
            let (head, body) = c.post(&t, &url, &[], b"{}").await.expect("call");
            assert_eq!((head.status, &body.bytes().await.expect("body")[..]), (200, &b"ok"[..]));
        };
        // Polls until the pool holds `n` idle connections (5 s at most).
        let settles = async |pool: &Pool, n: usize| {
            let started = Instant::now();
            while pool.idle_count() != n && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pool.idle_count() == n
        };
        let mut c = client();
        c.pool = Pool::new(Duration::from_secs(1), Duration::from_millis(50));
        call(&c).await;
        let kept = Instant::now();
        assert_eq!(c.pool.idle_count(), 1, "kept for the next call");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if kept.elapsed() < Duration::from_millis(900) {
            assert_eq!(c.pool.idle_count(), 1, "not idle long enough yet");
        }
        assert!(settles(&c.pool, 0).await, "idle too long: closed");
        assert!(kept.elapsed() >= Duration::from_secs(1), "{:?}", kept.elapsed());
        assert!(c.pool.idle.lock().is_empty(), "the origin is forgotten");
        // The service closes the next one at once: swept before its timeout.
        c.pool = Pool::new(Duration::from_secs(90), Duration::from_millis(50));
        call(&c).await;
        let closed = server.await.expect("server").expect("the first connection closed");
        assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(10), "{closed:?}");
        assert!(settles(&c.pool, 0).await, "closed by the service: dropped");
        // The sweeper holds the pool weakly: it ends with the client.
        let pool = Arc::downgrade(&c.pool);
        drop(c);
        assert!(pool.upgrade().is_none());
    }

    /// One answer, then the next on the same connection, each framed its
    /// own way.
    #[tokio::test]
    async fn answers_are_read_by_their_framing_and_the_connection_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let answers: [&[u8]; 3] = [
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: x\r\n\r\n",
                b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nbye",
            ];
            for answer in answers {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.expect("read");
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                s.write_all(answer).await.expect("write");
            }
            seen
        });
        let c = client();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let t = c.target(&url).expect("target");
        let headers = vec![("Authorization".to_string(), "Bearer k".to_string()), ("Host".into(), "evil".into())];
        let (head, body) = c.post(&t, &url, &headers, b"{}").await.expect("first");
        assert_eq!(head.status, 200);
        assert!(head.headers.contains(&("x-a".into(), "1".into())));
        assert_eq!(&body.bytes().await.expect("body")[..], b"hello");
        let (head, body) = c.post(&t, &url, &headers, b"{}").await.expect("second, same connection");
        assert_eq!(head.status, 200);
        let chunks: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(body.into_stream()).await;
        let chunks: Vec<Bytes> = chunks.into_iter().collect::<Result<_>>().expect("chunks");
        assert_eq!(chunks, vec![Bytes::from("abc"), Bytes::from("de")]);
        let (head, body) = c.post(&t, &url, &headers, b"{}").await.expect("third");
        assert_eq!(head.status, 500);
        assert_eq!(&body.bytes().await.expect("body")[..], b"bye");
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 3, "one connection carried all three");
        assert!(seen[0].starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:"), "{}", seen[0]);
        assert!(seen[0].contains("Authorization: Bearer k\r\n") && !seen[0].contains("evil"), "{}", seen[0]);
        assert!(seen[0].ends_with("content-length: 2\r\n\r\n{}"), "{}", seen[0]);
        // The last answer closed its connection: none is kept.
        assert!(c.pool.take(&t.origin).is_none());
    }

    #[tokio::test]
    async fn a_broken_answer_is_a_retryable_transport_error() {
        for (answer, what) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..], "before the end"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "does not end"),
            (b"NOT HTTP\r\n\r\n", "not HTTP/1.1"),
            (b"", "before answering"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
            let c = client();
            let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
            let t = c.target(&url).expect("target");
            let err = match c.post(&t, &url, &[], b"{}").await {
                Ok((_, body)) => body.bytes().await.expect_err("broken body"),
                Err(e) => e,
            };
            assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::Transport, true), "{err}");
            assert!(err.message().contains(what), "{what}: {err}");
        }
    }

    /// However the bytes arrive, an answer reads the same.
    #[test]
    fn answers_read_the_same_in_any_pieces() {
        /// An answer's bytes, and its status and body or a word of its error.
        type Case = (&'static [u8], std::result::Result<(u16, &'static [u8]), &'static str>);
        let cases: [Case; 7] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Ok((200, b"hello"))),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                Ok((200, b"abc")),
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\nuntil the end", Ok((404, b"until the end"))),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", Ok((204, b""))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Err("before the end")),
            (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", Err("bad content-length")),
            (b"HTTP/1.1 099 Continue\r\n\r\n", Err("not an HTTP status")),
        ];
        for (bytes, want) in cases {
            for piece in 0..8 {
                let got = read_answer(bytes, piece);
                match (&got, want) {
                    (Ok((status, body)), Ok((s, b))) => assert_eq!((*status, &body[..]), (s, b), "piece {piece}"),
                    (Err(e), Err(what)) => assert!(e.contains(what), "piece {piece}: {e}"),
                    _ => panic!("piece {piece}: {got:?}, want {want:?}"),
                }
            }
        }
        let long = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(read_answer(long.as_bytes(), 1000).is_err_and(|e| e.contains("64 KiB")));
    }

    #[tokio::test]
    async fn a_header_that_would_split_the_request_is_refused() {
        let c = client();
        let url = "http://127.0.0.1:9/v1/chat/completions";
        let t = c.target(url).expect("target");
        for (k, v) in [("x-a", "1\r\nx-b: 2"), ("x-a", "bell\u{7}"), ("x a", "1"), ("", "1")] {
            let err = c.post(&t, url, &[(k.into(), v.into())], b"{}").await.err().expect("refused");
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
        }
    }
}
