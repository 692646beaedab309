//! Just enough HTTP/1.1, over tokio's TCP types, for the simulated services and their clients.
//!
//! One request per connection: every response carries `Connection: close` and the server closes the connection
//! after writing it. Bodies are delimited by `Content-Length` only; a request with `Transfer-Encoding` is
//! answered with 501. The head is limited to [`MAX_HEAD`] bytes and the body to [`MAX_BODY`] bytes. A request
//! that cannot be parsed gets a 400 (or 413, 431, 501) with an [`ErrorBody`]; the parser never panics.
//!
//! The server is a task that accepts connections and runs a [`Handler`] on each one, in a task of its own
//! owned by a `JoinSet`, so stopping the server (or dropping it) stops every connection too. A handler may
//! answer [`Reply::Drop`], which closes the connection without writing anything: that is how a lost response
//! is simulated.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{ErrorBody, SimError};

/// Largest message head (start line and headers) accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest message body accepted, in bytes.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Largest number of header lines accepted.
const MAX_HEADERS: usize = 100;
/// How long the server waits for a complete request before giving up on the connection.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server keeps reading (and discarding) after answering a request it could not parse, so the
/// client gets the answer instead of a reset.
const LINGER: Duration = Duration::from_millis(500);

/// Reading or parsing an HTTP message failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The peer closed the connection before sending a single byte.
    #[error("connection closed before any data")]
    ClosedEmpty,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("message body exceeds {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// A parsed request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target without its query string, e.g. `/vmms/<uuid>`.
    pub(crate) path: String,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The value of the first header named `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The path split into its non-empty segments.
    pub(crate) fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// A JSON document.
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A 200 response with `body` serialized as JSON.
    pub(crate) fn json<T: serde::Serialize>(body: &T) -> Response {
        match serde_json::to_vec(body) {
            Ok(body) => Response { status: 200, body },
            Err(e) => Response::error(
                500,
                "internal",
                format!("failed to serialize response: {e}"),
            ),
        }
    }

    /// An error response whose body says the request was not applied.
    pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        let body = ErrorBody {
            applied: false,
            code: code.to_string(),
            message: message.into(),
        };
        // Serializing three plain fields cannot fail; fall back to a fixed document rather than unwrap.
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"applied":false,"code":"internal","message":"unserializable error"}"#.to_vec()
        });
        Response { status, body }
    }
}

/// What a handler does with a request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Write this response.
    Send(Response),
    /// Close the connection without writing anything (a lost response).
    Drop,
}

/// The service behind a server.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
}

/// A running server; stopping or dropping it closes the listener and every open connection.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1 on an ephemeral port and spawns the accept loop on the current tokio runtime.
    pub(crate) fn start<H: Handler>(
        name: &'static str,
        handler: Arc<H>,
    ) -> Result<Server, SimError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?;
        let _entered = runtime.enter();
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(SimError::Bind)?;
        std_listener.set_nonblocking(true).map_err(SimError::Bind)?;
        let addr = std_listener.local_addr().map_err(SimError::Bind)?;
        let listener = TcpListener::from_std(std_listener).map_err(SimError::Bind)?;
        let (stop, stopped) = oneshot::channel();
        let task = runtime.spawn(accept_loop(name, listener, handler, stopped));
        tracing::info!(service = name, %addr, "simulated service listening");
        Ok(Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, aborts open connections, and waits for the accept loop to finish.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::trace!(service = name, %peer, "accepted connection");
                    connections.spawn(serve_connection(name, stream, Arc::clone(&handler)));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(service = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    tracing::info!(service = name, "simulated service stopped");
    // Dropping `connections` aborts the connections still open.
}

async fn serve_connection<H: Handler>(name: &'static str, mut stream: TcpStream, handler: Arc<H>) {
    let request = match tokio::time::timeout(SERVER_READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => {
            tracing::debug!(service = name, "timed out reading a request");
            return;
        }
        Ok(Err(HttpError::ClosedEmpty)) => return,
        Ok(Err(e)) => {
            let (status, code) = match &e {
                HttpError::HeadTooLarge => (431, "head_too_large"),
                HttpError::BodyTooLarge => (413, "body_too_large"),
                HttpError::Unsupported(_) => (501, "unsupported"),
                _ => (400, "bad_request"),
            };
            tracing::info!(service = name, error = %e, status, "rejecting malformed request");
            let response = Response::error(status, code, e.to_string());
            if let Err(e) = write_response(&mut stream, &response).await {
                tracing::debug!(service = name, error = %e, "failed to write error response");
                return;
            }
            linger(&mut stream).await;
            return;
        }
        Ok(Ok(request)) => request,
    };
    tracing::debug!(service = name, method = %request.method, path = %request.path, "request");
    match handler.handle(request).await {
        Reply::Send(response) => {
            if let Err(e) = write_response(&mut stream, &response).await {
                tracing::debug!(service = name, error = %e, "failed to write response");
            }
        }
        Reply::Drop => {
            tracing::debug!(service = name, "closing the connection without a response");
        }
    }
}

/// After answering a request that may not have been read in full: close our side, then discard what the client
/// still sends for a short while, so that closing does not reset the connection before the client has read the
/// answer.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut discarded = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < MAX_BODY {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A message head: its start line and headers.
#[derive(Debug)]
struct Head {
    start_line: String,
    headers: Vec<(String, String)>,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where the head ends in `buf`: (end of the head, start of the body). Accepts CRLF and, leniently, bare LF.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else if rest.starts_with(b"\n\n") {
            Some((i, i + 2))
        } else {
            None
        }
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(bytes: &[u8]) -> Result<Head, HttpError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| HttpError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().unwrap_or_default().to_string();
    if start_line.is_empty() {
        return Err(HttpError::Malformed("empty start line".into()));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!(
                "header line without a colon: {line:?}"
            )));
        };
        if !is_token(name) {
            return Err(HttpError::Malformed(format!(
                "invalid header name: {name:?}"
            )));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Head {
        start_line,
        headers,
    })
}

/// Reads up to the end of the head; returns the head and the body bytes read past it.
async fn read_head<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(Head, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::ClosedEmpty
            } else {
                HttpError::Truncated
            });
        }
        // Only the region that could contain a new terminator needs searching.
        let search_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head_end, body_start)) = find_head_end(&buf[search_from..]) {
            let (head_end, body_start) = (search_from + head_end, search_from + body_start);
            if head_end > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            let head = parse_head(&buf[..head_end])?;
            return Ok((head, buf[body_start..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

/// The value of the `Content-Length` header, if there is one. Conflicting duplicates are malformed.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, HttpError> {
    let mut length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::Malformed(format!(
                "invalid Content-Length: {value:?}"
            )));
        }
        let parsed: usize = value
            .parse()
            .map_err(|_| HttpError::Malformed(format!("invalid Content-Length: {value:?}")))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(HttpError::Malformed(
                "conflicting Content-Length headers".into(),
            ));
        }
        length = Some(parsed);
    }
    if length.is_some_and(|l| l > MAX_BODY) {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(length)
}

/// Reads the rest of a body of `length` bytes, `already` of which have been read.
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut already: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, HttpError> {
    if already.len() >= length {
        // Anything past the body (a pipelined request) is ignored: one request per connection.
        already.truncate(length);
        return Ok(already);
    }
    let mut rest = vec![0u8; length - already.len()];
    reader
        .read_exact(&mut rest)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => HttpError::Truncated,
            _ => HttpError::Io(e),
        })?;
    already.extend_from_slice(&rest);
    Ok(already)
}

/// Reads a body delimited by the end of the connection.
async fn read_to_eof<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut already: Vec<u8>,
) -> Result<Vec<u8>, HttpError> {
    let mut chunk = [0u8; 4096];
    loop {
        if already.len() > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(already);
        }
        already.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and parses one request.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Request, HttpError> {
    let (head, already) = read_head(reader).await?;
    let mut parts = head.start_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!(
            "invalid request line: {:?}",
            head.start_line
        )));
    };
    if !is_token(method) {
        return Err(HttpError::Malformed(format!("invalid method: {method:?}")));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!(
            "invalid request target: {target:?}"
        )));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed(format!(
            "unsupported HTTP version: {version:?}"
        )));
    }
    if find_header(&head.headers, "transfer-encoding").is_some() {
        return Err(HttpError::Unsupported(
            "Transfer-Encoding (send Content-Length)".into(),
        ));
    }
    let body = match content_length(&head.headers)? {
        Some(length) => read_body(reader, already, length).await?,
        None => Vec::new(),
    };
    let path = target
        .split_once('?')
        .map_or(target, |(p, _)| p)
        .to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        headers: head.headers,
        body,
    })
}

/// Reads and parses one response (the status code and the body).
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Response, HttpError> {
    let (head, already) = read_head(reader).await?;
    let mut parts = head.start_line.splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed(format!(
            "invalid status line: {:?}",
            head.start_line
        )));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed(format!(
            "unsupported HTTP version: {version:?}"
        )));
    }
    let status = match status.parse::<u16>() {
        Ok(s) if (100..=599).contains(&s) && status.len() == 3 => s,
        _ => {
            return Err(HttpError::Malformed(format!(
                "invalid status code: {status:?}"
            )));
        }
    };
    if find_header(&head.headers, "transfer-encoding").is_some() {
        return Err(HttpError::Unsupported(
            "Transfer-Encoding in a response".into(),
        ));
    }
    let body = match content_length(&head.headers)? {
        Some(length) => read_body(reader, already, length).await?,
        None => read_to_eof(reader, already).await?,
    };
    Ok(Response { status, body })
}

/// Sends one request on a fresh connection and reads the response, all within `timeout`.
///
/// Every failure (connect, write, read, parse, timeout) is returned as a description: to the caller they all
/// mean the same thing, that the outcome is unknown.
pub(crate) async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write request: {e}"))?;
        stream
            .flush()
            .await
            .map_err(|e| format!("write request: {e}"))?;
        read_response(&mut stream).await.map_err(|e| match e {
            HttpError::ClosedEmpty => {
                "the server closed the connection without a response".to_string()
            }
            e => format!("read response: {e}"),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no response within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        let mut reader = bytes;
        read_request(&mut reader).await
    }

    #[tokio::test]
    async fn parses_a_request() {
        let r = parse(
            b"PUT /vmms/x?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-A:  b \r\n\r\n{}extra",
        )
        .await
        .expect("parses");
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/vmms/x");
        assert_eq!(r.segments(), vec!["vmms", "x"]);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.body, b"{}");
    }

    #[tokio::test]
    async fn rejects_malformed_requests() {
        let cases: &[&[u8]] = &[
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
            b"",
        ];
        for case in cases {
            assert!(
                parse(case).await.is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[tokio::test]
    async fn enforces_limits() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&big).await, Err(HttpError::HeadTooLarge)));
        let huge = format!("GET / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(
            parse(huge.as_bytes()).await,
            Err(HttpError::BodyTooLarge)
        ));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(chunked).await,
            Err(HttpError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn parses_responses() {
        let mut ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let r = read_response(&mut ok).await.expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let mut eof: &[u8] = b"HTTP/1.0 503 Nope\r\n\r\nbody";
        let r = read_response(&mut eof).await.expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"body"[..]));
        let mut bad: &[u8] = b"HTTP/1.1 2000 OK\r\n\r\n";
        assert!(read_response(&mut bad).await.is_err());
    }
}
