//! HTTP/1.1 for the simulated services and their clients, on hyper over tokio's TCP types.
//!
//! hyper reads and writes the wire format; this module only decides what a connection does. One request per
//! connection: the server turns keep-alive off (hyper answers with `connection: close` and closes after the
//! response) and the client asks for `Connection: close`. A request whose head hyper cannot parse is
//! answered by hyper itself (400, or 431 for a head over [`MAX_HEAD`] bytes) with an empty body. A request
//! whose head parses but whose body cannot be read (cut short, over [`MAX_BODY`] bytes) gets a 400 or 413
//! with an [`ErrorBody`]. Either way the connection ends and the server keeps serving.
//!
//! The server is a task that accepts connections and serves each one in a task of its own owned by a
//! `JoinSet`, so stopping the server (or dropping it) stops every connection too. In that task, hyper's
//! service future only reads the request and waits for the answer; the [`Handler`] runs outside it, in the
//! connection task, while the hyper connection is not polled. So a caller that goes away (times out,
//! disconnects) does not cancel the handling: a delayed request is still applied. A handler may answer
//! [`Reply::Drop`]: the connection task then drops the hyper connection, and with it the socket, before
//! hyper has written a byte of the response: that is how a lost response is simulated.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{ErrorBody, SimError};

/// Largest request head (request line and headers) accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest message body accepted, in bytes.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Largest number of header lines accepted.
const MAX_HEADERS: usize = 100;
/// How long the server waits for a complete request, and then for its answer to be written, before giving up
/// on the connection.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A request, read in full.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target's path, without its query string, e.g. `/vmms/<uuid>`.
    pub(crate) path: String,
    headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    /// The value of the first header named `name` (case-insensitive). A value that is not visible ASCII is
    /// returned lossily decoded, so that it is present but parses as nothing.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The path split into its non-empty segments.
    pub(crate) fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A response to write, or one that was read.
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

    /// The response as hyper writes it: the status, `Content-Type: application/json` and the body (hyper
    /// adds `Content-Length`).
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        // Every status this crate writes is a literal between 200 and 599.
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
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

/// A request read by hyper's service future, handed to the connection task with the way back for its answer.
struct Exchange {
    request: Request,
    answer: oneshot::Sender<Response>,
}

async fn serve_connection<H: Handler>(name: &'static str, stream: TcpStream, handler: Arc<H>) {
    let (exchanges, mut received) = mpsc::channel::<Exchange>(1);
    let service = service_fn(move |request| read_request(request, exchanges.clone()));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        // A client that shuts down its sending side after the request still gets the answer: hyper does not
        // take that EOF for the client going away. (The handling does not depend on it either way: it does
        // not run in hyper's service future.)
        .half_close(true)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = pin!(connection);

    let reading = async {
        tokio::select! {
            // Ends when hyper answered by itself (a head it could not parse), `read_request` answered an error,
            // or the peer went away.
            ended = connection.as_mut() => Err(ended),
            // `received` yields `None` only once the service is dropped, with the connection: never here.
            Some(exchange) = received.recv() => Ok(exchange),
        }
    };
    let Exchange { request, answer } = match tokio::time::timeout(SERVER_IO_TIMEOUT, reading).await
    {
        Err(_) => {
            tracing::debug!(service = name, "timed out reading a request");
            return;
        }
        Ok(Err(ended)) => {
            if let Err(e) = ended {
                tracing::debug!(service = name, error = %e, "connection ended without a request");
            }
            return;
        }
        Ok(Ok(exchange)) => exchange,
    };

    tracing::debug!(service = name, method = %request.method, path = %request.path, "request");
    // The connection is not polled while the handler runs: the caller going away cancels nothing.
    match handler.handle(request).await {
        Reply::Send(response) => {
            if answer.send(response).is_err() {
                // Cannot happen: the service future waiting for the answer lives in `connection`.
                tracing::debug!(service = name, "the answer had nowhere to go");
                return;
            }
            match tokio::time::timeout(SERVER_IO_TIMEOUT, connection).await {
                Err(_) => tracing::debug!(service = name, "timed out writing a response"),
                Ok(Err(e)) => {
                    tracing::debug!(service = name, error = %e, "failed to write response")
                }
                Ok(Ok(())) => {}
            }
        }
        Reply::Drop => {
            // hyper writes nothing of the response before the service future resolves, and it never will:
            // dropping the connection closes the socket with no response byte sent.
            tracing::debug!(service = name, "closing the connection without a response");
        }
    }
}

/// hyper's service: reads the body, hands the request to the connection task, and answers what that task
/// sends back. A body that cannot be read is answered here, with an error document.
async fn read_request(
    request: hyper::Request<Incoming>,
    exchanges: mpsc::Sender<Exchange>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        let response = Response::error(
            413,
            "body_too_large",
            format!("message body exceeds {MAX_BODY} bytes"),
        );
        Ok(response.into_hyper())
    };
    // A declared length over the limit is refused before a byte of the body is read.
    if body.size_hint().lower() > MAX_BODY as u64 {
        return too_large();
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(e) => {
            let response = Response::error(
                400,
                "bad_request",
                format!("failed to read the body: {}", with_sources(&*e)),
            );
            return Ok(response.into_hyper());
        }
    };
    let request = Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    let (answer, answered) = oneshot::channel();
    if exchanges.send(Exchange { request, answer }).await.is_ok()
        && let Ok(response) = answered.await
    {
        return Ok(response.into_hyper());
    }
    // The connection task is gone, or chose not to answer: it is dropping this connection. Answering anything
    // now could only send a response the handler did not give, so never resolve.
    std::future::pending().await
}

/// Sends one request on a fresh connection and reads the response, all within `timeout`.
///
/// Every failure (connect, write, read, parse, timeout) is returned as a description: to the caller they all
/// mean the same thing, that the outcome is unknown.
pub(crate) async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, String> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("invalid request: {e}"))?;
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let answer = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(describe_client_error)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("read response body: {}", with_sources(&*e)))?
                .to_bytes();
            Ok(Response {
                status,
                body: body.to_vec(),
            })
        };
        tokio::select! {
            answer = answer => answer,
            // A connection that ends cleanly has delivered the answer; wait for it in the other branch.
            Err(e) = connection => Err(describe_client_error(e)),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no response within {timeout:?}")),
    }
}

fn describe_client_error(e: hyper::Error) -> String {
    if e.is_incomplete_message() {
        "the server closed the connection without a complete response".to_string()
    } else {
        format!("exchange failed: {}", with_sources(&e))
    }
}

/// An error and its sources, for a message: hyper's own say little (`connection error`) without the I/O
/// error under them.
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
