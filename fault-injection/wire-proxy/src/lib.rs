//! The fault harness's PostgreSQL wire proxy: a fault-injecting TCP proxy between a PostgreSQL client and a
//! PostgreSQL server, to attack "a COMMIT whose reply is lost", "a COMMIT that never reaches the server while
//! its transaction lives on" and "a database outage". `ratchet matrix --real-crash` puts it between each
//! child process and its database (`ratchet-fault-injection`'s `real_crash`), and the cross-crate tests use it
//! directly.
//!
//! # Design
//!
//! [`PgProxy::start`] binds `127.0.0.1:0` once and keeps that listener for its whole life (it binds no
//! second time, so the port stays the proxy's between an outage and its end). One accept task owns the
//! listener and a [`JoinSet`] holding one task per proxied connection; dropping the [`PgProxy`] aborts the
//! accept task, which drops the `JoinSet`, which aborts every connection task, which drops (closes) both
//! sockets of every connection.
//!
//! A connection task connects to the [`Upstream`] (a Unix socket or TCP), relays the untyped start-up
//! exchange (an `SSLRequest` / `GSSENCRequest` is forwarded and the server's one-byte answer passed back; a
//! refusal, `N`, is followed by the real start-up message), then runs two pumps concurrently:
//!
//! - client → server: every byte is forwarded as soon as it is read; a `MessageScanner` follows the typed
//!   message boundaries on the side (boundaries may be split across reads), capturing only the starts of
//!   simple-query (`Q`), Parse (`P`), Bind (`B`) and Execute (`E`) bodies, to spot the execution of a
//!   `COMMIT`: a `Q` whose text is one, or an `E` of a portal bound to a statement parsed from one;
//! - server → client: a raw byte copy, gated by the connection's "drop replies" state.
//!
//! When a read from the client completes a message executing a `COMMIT` and a fault is armed
//! ([`PgProxy::drop_next_commit_reply`]), the connection enters "drop replies" mode *before* that read is
//! forwarded, so no byte of the reply can reach the client: from then on the server → client pump reads and
//! discards. Once the read has been forwarded whole, the hold starts; when it expires the task ends, closing
//! both sides.
//!
//! When such a read completes a `COMMIT` and [`PgProxy::withhold_next_commit`] is armed instead, that read is
//! not forwarded and the client → server pump ends: nothing more from that client reaches the server. The
//! connection task then stops relaying and holds the connection: it closes the client's socket when the hold
//! expires, and reads and discards the server's bytes until the server closes its side (its backend stays
//! "idle in transaction" until then, e.g. until its `idle_in_transaction_session_timeout`) or until
//! [`PgProxy::release_withheld`], which closes the server's socket too. Releases use a `watch` channel holding
//! a generation, bumped by each release; a withheld connection ends once it differs from the one current
//! when its `COMMIT` was withheld.
//!
//! Outages use one `watch` channel holding `(active, generation)`: [`PgProxy::begin_outage`] sets `active` and
//! bumps `generation`; every connection task waits (first, in a `biased` select) for the generation it was
//! born in to change and then ends, closing its sockets. The accept task reads the state when it accepts, and
//! closes the new connection at once while an outage is active. A withheld connection stops watching once it
//! holds: an outage closes its client side early, never its server side.
//!
//! # Limits
//!
//! - If the server accepts SSL or GSS encryption (`S` / `G`), the proxy relays the rest of that connection
//!   blindly: it cannot see `COMMIT`s inside an encrypted stream. tokio-postgres with `NoTls` (as diesel-async
//!   uses) never asks, and a server on a Unix socket always refuses.
//! - A client that pipelines other messages in the same read as the `COMMIT` loses their replies too, and
//!   replies to earlier pipelined messages that the server has not sent yet are dropped as well: the proxy
//!   does not parse the server's messages.
//! - With the extended protocol the fault fires on the Execute, not on the Parse: tokio-postgres parses a
//!   statement and waits for the answer before binding and executing it (and reuses cached statements
//!   without parsing), so dropping replies from the Parse on would lose a `COMMIT` that never ran.
//! - A withheld `COMMIT` takes the rest of its read with it: a Parse and Bind sent with its Execute (as
//!   tokio-postgres sends them) are withheld too, and so is anything the client pipelined in the same read.
//!   Messages of the `COMMIT`'s extended-protocol sequence that arrived in an earlier read (a Parse or Bind
//!   split from its Execute) have been forwarded: the backend then waits for a Sync, reported as `active`
//!   rather than "idle in transaction", and its `idle_in_transaction_session_timeout` does not apply.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A URL the proxy cannot forward to: what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(String);

/// Names what went wrong while reading a URL, for an `Option` (nothing there) or a `Result` (the cause is
/// appended).
trait Context<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, BadUrl>;
}

impl<T> Context<T> for Option<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, BadUrl> {
        self.ok_or_else(|| BadUrl(what()))
    }
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, BadUrl> {
        self.map_err(|error| BadUrl(format!("{}: {error}", what())))
    }
}

/// The start-up code of an `SSLRequest`.
const SSL_REQUEST: u32 = 80_877_103;
/// The start-up code of a `GSSENCRequest`.
const GSSENC_REQUEST: u32 = 80_877_104;
/// The longest untyped start-up message PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_LEN: usize = 10_000;
/// The longest `Q` / `P` body the scanner captures; a longer one is not a bare `COMMIT`.
const MAX_CAPTURE: usize = 64 * 1024;
/// How much one read of a pump takes at most.
const READ_CHUNK: usize = 16 * 1024;

/// Where the proxy forwards its connections: a PostgreSQL server's Unix socket or TCP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The server's socket file, e.g. `<socket dir>/.s.PGSQL.5432` (not the directory).
    Unix(PathBuf),
    /// The server's TCP address.
    Tcp(SocketAddr),
}

impl Upstream {
    /// Parses a postgres URL as this project writes them, returning `(upstream, user, dbname)`:
    ///
    /// - `postgresql://postgres@/DBNAME?host=/some/socket/dir`: a Unix socket; the socket file is
    ///   `<dir>/.s.PGSQL.<port>`, the port from a `port=` query parameter or 5432;
    /// - `postgresql://user@HOST:PORT/DBNAME` (or `postgres://…`): TCP, `localhost` meaning `127.0.0.1`, other
    ///   names resolved with the system resolver; the port defaults to 5432 (a `port=` parameter also counts).
    ///
    /// A `host=` parameter wins over the URL's host, and `user=` / `dbname=` parameters over the URL's user
    /// and path, as libpq does. The user defaults to `postgres` and the database to the user. Components are
    /// percent-decoded. A password is accepted but dropped: the proxied URL ([`PgProxy::url_for`]) carries
    /// none, so the server must trust the connection (the embedded test server does).
    pub fn from_url(url: &str) -> Result<(Upstream, String, String), BadUrl> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .with_context(|| format!("not a postgres URL: {url:?}"))?;
        let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = head.split_once('/').unwrap_or((head, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let mut user = match userinfo {
            Some(userinfo) => {
                let name = userinfo.split_once(':').map_or(userinfo, |(name, _)| name);
                Some(percent_decode(name)?)
            }
            None => None,
        };
        let mut dbname = if path.is_empty() {
            None
        } else {
            Some(percent_decode(path)?)
        };
        let (mut host, mut port) = split_host_port(hostport)?;
        let mut query_port = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "host" => host = Some(value),
                "port" => {
                    query_port = Some(
                        value
                            .parse::<u16>()
                            .with_context(|| format!("bad port {value:?} in {url:?}"))?,
                    )
                }
                "user" => user = Some(value),
                "dbname" => dbname = Some(value),
                _ => {}
            }
        }
        if let Some(query_port) = query_port {
            port = Some(query_port);
        }
        let port = port.unwrap_or(5432);
        let user = user.unwrap_or_else(|| "postgres".to_string());
        let dbname = dbname.unwrap_or_else(|| user.clone());
        let host = host.with_context(|| format!("no host in {url:?}"))?;
        if host.contains(',') {
            return Err(BadUrl(format!("several hosts are not supported: {url:?}")));
        }
        let upstream = if host.starts_with('/') {
            Upstream::Unix(PathBuf::from(host).join(format!(".s.PGSQL.{port}")))
        } else if host == "localhost" {
            Upstream::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Upstream::Tcp(SocketAddr::new(ip, port))
        } else {
            let addr = (host.as_str(), port)
                .to_socket_addrs()
                .with_context(|| format!("resolving {host:?}"))?
                .next()
                .with_context(|| format!("{host:?} resolves to no address"))?;
            Upstream::Tcp(addr)
        };
        Ok((upstream, user, dbname))
    }
}

/// Splits `host[:port]` / `[v6]:port` (either part may be empty) into its parts.
fn split_host_port(hostport: &str) -> Result<(Option<String>, Option<u16>), BadUrl> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .with_context(|| format!("unclosed '[' in {hostport:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let host = if host.is_empty() {
        None
    } else {
        Some(percent_decode(host)?)
    };
    let port = match port.filter(|port| !port.is_empty()) {
        Some(port) => Some(
            port.parse::<u16>()
                .with_context(|| format!("bad port in {hostport:?}"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

/// Decodes `%XX` escapes.
fn percent_decode(text: &str) -> Result<String, BadUrl> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .with_context(|| format!("bad percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{text:?} does not decode to UTF-8"))
}

/// The outage state every connection task watches.
#[derive(Clone, Copy, Debug, Default)]
struct Outage {
    /// New connections are refused.
    active: bool,
    /// Bumped by every [`PgProxy::begin_outage`]: a connection born in an older generation closes.
    generation: u64,
}

/// A one-shot fault fired by the next message executing a `COMMIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitFault {
    /// [`PgProxy::drop_next_commit_reply`]: forward the `COMMIT`, drop the reply, close both sides after `hold`.
    DropReply { hold: Duration },
    /// [`PgProxy::withhold_next_commit`]: do not forward the `COMMIT`, close the client side after `hold`, keep
    /// the server side until the server closes it or [`PgProxy::release_withheld`].
    Withhold { hold: Duration },
}

/// What the proxy's handle and its tasks share.
#[derive(Debug)]
struct Shared {
    upstream: Upstream,
    /// The armed one-shot `COMMIT` fault, if any.
    armed_commit_fault: Mutex<Option<CommitFault>>,
    commit_replies_dropped: AtomicUsize,
    commits_withheld: AtomicUsize,
    connections_accepted: AtomicUsize,
    outage: watch::Sender<Outage>,
    /// Bumped by every [`PgProxy::release_withheld`]: a connection withheld in an older generation closes.
    release: watch::Sender<u64>,
}

impl Shared {
    /// Arms `fault`, replacing any armed one.
    fn arm_commit_fault(&self, fault: CommitFault) {
        *self
            .armed_commit_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// Disarms and returns the armed `COMMIT` fault, if any.
    fn take_commit_fault(&self) -> Option<CommitFault> {
        self.armed_commit_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// A fault-injecting TCP proxy in front of one PostgreSQL server (see the module documentation). Dropping it
/// stops accepting and closes every proxied connection.
#[derive(Debug)]
pub struct PgProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl PgProxy {
    /// Starts listening on `127.0.0.1:0` (the listener is kept for the proxy's life; it binds no
    /// second time), forwarding every accepted connection to `upstream`. Must be called inside a tokio runtime.
    pub async fn start(upstream: Upstream) -> std::io::Result<PgProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            armed_commit_fault: Mutex::new(None),
            commit_replies_dropped: AtomicUsize::new(0),
            commits_withheld: AtomicUsize::new(0),
            connections_accepted: AtomicUsize::new(0),
            outage: watch::Sender::new(Outage::default()),
            release: watch::Sender::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(PgProxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// The local address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL for database `dbname` as `user` through the proxy:
    /// `postgresql://USER@127.0.0.1:PORT/DBNAME`, with no password and no `host=` parameter.
    pub fn url_for(&self, dbname: &str, user: &str) -> String {
        format!(
            "postgresql://{user}@127.0.0.1:{}/{dbname}",
            self.addr.port()
        )
    }

    /// Arms a one-shot fault and returns at once. The next message, on any connection, that executes a
    /// `COMMIT` is forwarded to the server, but every byte the server sends on that connection from then on
    /// is discarded, and `hold` after the message has been forwarded the proxy closes both sides of the
    /// connection: the client sees its connection closed without any reply, while the server has received
    /// (and, a moment later, carried out) the `COMMIT`.
    ///
    /// A message executes a `COMMIT` when it is a simple query (`Q`) whose SQL text is one, or an Execute
    /// (`E`) of a portal bound (`B`) on that connection to a statement parsed (`P`) from such text. The text,
    /// trimmed, without one trailing `;`, with whitespace runs taken as one space and compared
    /// case-insensitively, must be exactly `COMMIT`, `COMMIT TRANSACTION`, `COMMIT WORK`, `END`,
    /// `END TRANSACTION` or `END WORK` (not `COMMIT AND CHAIN`, not a batch such as `SELECT 1; COMMIT`).
    ///
    /// One `COMMIT` fault is armed at a time: arming again, this fault or [`Self::withhold_next_commit`],
    /// before it fired replaces it (and its `hold`); it still fires once.
    pub fn drop_next_commit_reply(&self, hold: Duration) {
        self.shared
            .arm_commit_fault(CommitFault::DropReply { hold });
    }

    /// How many `COMMIT` replies have been dropped so far: counted when the fault fires, just before the
    /// `COMMIT` message is forwarded (its connection already dropping replies).
    pub fn commit_replies_dropped(&self) -> usize {
        self.shared.commit_replies_dropped.load(Ordering::SeqCst)
    }

    /// Arms a one-shot fault and returns at once. The next message, on any connection, that executes a
    /// `COMMIT` (recognized as by [`Self::drop_next_commit_reply`]) is *not* forwarded to the server, nor is
    /// anything else in the read that brought it (see the module documentation's limits) or anything that
    /// client sends later. `hold` after that read the proxy closes the connection's client side: the client
    /// sees its connection closed without any reply. The server side stays open and idle: its backend stays
    /// "idle in transaction", holding the transaction's locks, until the server ends the session (e.g. its
    /// `idle_in_transaction_session_timeout`) or [`Self::release_withheld`] closes it. Meanwhile the proxy
    /// reads and discards whatever the server sends on it, so the server can close it. An outage
    /// ([`Self::begin_outage`]) closes the client side early but leaves the server side alone; dropping the
    /// proxy closes both.
    ///
    /// One `COMMIT` fault is armed at a time: arming again, this fault or [`Self::drop_next_commit_reply`],
    /// before it fired replaces it (and its `hold`); it still fires once.
    pub fn withhold_next_commit(&self, hold: Duration) {
        self.shared.arm_commit_fault(CommitFault::Withhold { hold });
    }

    /// Closes the server side (and, if its hold has not expired yet, the client side) of every connection
    /// whose `COMMIT` was withheld ([`Self::withhold_next_commit`]) before this call: the server sees the
    /// connection closed and ends its session, rolling back its transaction. Returns at once; the closing
    /// happens in the connections' tasks, promptly. A `COMMIT` withheld after this call is not released.
    pub fn release_withheld(&self) {
        self.shared
            .release
            .send_modify(|generation| *generation += 1);
    }

    /// How many `COMMIT`s have been withheld so far ([`Self::withhold_next_commit`]): counted when the fault
    /// fires, as the `COMMIT` is read from the client.
    pub fn commits_withheld(&self) -> usize {
        self.shared.commits_withheld.load(Ordering::SeqCst)
    }

    /// Starts an outage: every open proxied connection is closed (both sides) and, until [`Self::end_outage`],
    /// every new connection is accepted and closed at once. The closing happens in the connections' tasks,
    /// promptly after this returns; no byte is relayed on an old connection once its task next runs.
    pub fn begin_outage(&self) {
        self.shared.outage.send_modify(|outage| {
            outage.active = true;
            outage.generation += 1;
        });
    }

    /// Ends an outage: new connections are proxied again.
    pub fn end_outage(&self) {
        self.shared
            .outage
            .send_modify(|outage| outage.active = false);
    }

    /// How many connections have been accepted so far, refused ones during an outage included.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections_accepted.load(Ordering::SeqCst)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        // Dropping the accept task's future drops its `JoinSet`, which aborts every connection task.
        self.accept_task.abort();
    }
}

/// Accepts connections until aborted; owns every connection task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    shared.connections_accepted.fetch_add(1, Ordering::SeqCst);
                    // Subscribing and reading the state in one step: an outage that begins later bumps the
                    // generation this connection watches.
                    let outage = shared.outage.subscribe();
                    let Outage { active, generation } = *outage.borrow();
                    if active {
                        tracing::debug!(%peer, "pg proxy: outage, refusing a connection");
                        drop(client);
                        continue;
                    }
                    connections.spawn(serve(client, Arc::clone(&shared), outage, generation));
                }
                Err(error) => {
                    // E.g. too many open files: back off instead of spinning.
                    tracing::warn!(%error, "pg proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reaps finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Proxies one connection until either side closes, an outage begins, or a dropped `COMMIT` reply's hold
/// expires; then drops (closes) both sockets. A connection whose `COMMIT` is withheld is then held
/// ([`hold_withheld`]) instead.
async fn serve(
    client: TcpStream,
    shared: Arc<Shared>,
    mut outage: watch::Receiver<Outage>,
    generation: u64,
) {
    let proxied = proxy(client, &shared);
    let withheld = tokio::select! {
        biased;
        // An error means the sender is gone, i.e. the proxy is being torn down: close too.
        _ = outage.wait_for(|outage| outage.generation != generation) => {
            tracing::debug!("pg proxy: outage, closing a connection");
            None
        }
        result = proxied => match result {
            Ok(withheld) => withheld,
            Err(error) => {
                tracing::debug!(%error, "pg proxy: connection ended with an error");
                None
            }
        },
    };
    if let Some(withheld) = withheld {
        hold_withheld(withheld, &shared, outage, generation).await;
    }
}

/// A connection whose `COMMIT` was withheld, no longer relaying.
struct Withheld {
    client: TcpStream,
    /// Only read from (and discarded) from now on.
    server: Box<dyn AsyncRead + Send + Unpin>,
    /// When to close the client side.
    close_client_at: Instant,
    /// The release generation current when the `COMMIT` was withheld.
    release_generation: u64,
}

/// Connects to the upstream and relays. Returns the connection if its `COMMIT` was withheld.
async fn proxy(client: TcpStream, shared: &Shared) -> std::io::Result<Option<Withheld>> {
    // Latency matters more than throughput for a test proxy.
    client.set_nodelay(true)?;
    match &shared.upstream {
        Upstream::Unix(path) => {
            let server = UnixStream::connect(path).await.inspect_err(|error| {
                tracing::warn!(%error, path = %path.display(), "pg proxy: upstream connect failed");
            })?;
            relay(client, server, shared).await
        }
        Upstream::Tcp(addr) => {
            let server = TcpStream::connect(addr).await.inspect_err(|error| {
                tracing::warn!(%error, %addr, "pg proxy: upstream connect failed");
            })?;
            server.set_nodelay(true)?;
            relay(client, server, shared).await
        }
    }
}

/// Holds a connection whose `COMMIT` was withheld: closes the client side when its hold expires (or an outage
/// begins), reads and discards the server's bytes, and ends (closing the server side) when the server closes
/// its side or fails, or on a release ([`PgProxy::release_withheld`]).
async fn hold_withheld(
    withheld: Withheld,
    shared: &Shared,
    mut outage: watch::Receiver<Outage>,
    generation: u64,
) {
    let Withheld {
        client,
        mut server,
        close_client_at,
        release_generation,
    } = withheld;
    let mut client = Some(client);
    let mut release = shared.release.subscribe();
    let mut hold_expired = pin!(tokio::time::sleep_until(close_client_at));
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            // An error means the sender is gone, i.e. the proxy is being torn down: close too.
            _ = release.wait_for(|release| *release != release_generation) => {
                tracing::debug!("pg proxy: releasing a connection whose COMMIT was withheld");
                return;
            }
            () = &mut hold_expired, if client.is_some() => {
                tracing::debug!("pg proxy: closing the client side of a connection whose COMMIT was withheld");
                client = None;
            }
            _ = outage.wait_for(|outage| outage.generation != generation), if client.is_some() => {
                tracing::debug!(
                    "pg proxy: outage, closing the client side of a connection whose COMMIT was withheld"
                );
                client = None;
            }
            read = server.read(&mut buf) => match read {
                Ok(0) => {
                    tracing::debug!("pg proxy: the server closed a connection whose COMMIT was withheld");
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "pg proxy: a connection whose COMMIT was withheld failed");
                    return;
                }
            },
        }
    }
}

/// Whether a connection relays the server's bytes or drops them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replies {
    /// Relayed to the client.
    Relay,
    /// Dropped: a `COMMIT` is being forwarded; the hold starts once it is.
    Drop,
    /// Dropped, and the connection closes at this instant.
    DropUntil(Instant),
    /// Dropped: a `COMMIT` was withheld (and the client → server pump ended); the connection is to be held,
    /// its client side closing at `close_client_at`, its server side on release generation
    /// `release_generation`'s end.
    Withheld {
        close_client_at: Instant,
        release_generation: u64,
    },
}

/// Relays the start-up exchange, then both directions. Returns the connection if its `COMMIT` was withheld.
async fn relay<S>(
    mut client: TcpStream,
    mut server: S,
    shared: &Shared,
) -> std::io::Result<Option<Withheld>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let scan = negotiate(&mut client, &mut server).await?;
    let withheld = relay_messages(&mut client, &mut server, scan, shared).await?;
    Ok(
        withheld.map(|(close_client_at, release_generation)| Withheld {
            client,
            server: Box::new(server),
            close_client_at,
            release_generation,
        }),
    )
}

/// Relays both directions after the start-up exchange. Returns `(close_client_at, release_generation)` if the
/// connection's `COMMIT` was withheld.
async fn relay_messages<S>(
    client: &mut TcpStream,
    server: &mut S,
    scan: Option<MessageScanner>,
    shared: &Shared,
) -> std::io::Result<Option<(Instant, u64)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (from_client, to_client) = client.split();
    let (from_server, to_server) = tokio::io::split(server);
    let (replies_tx, replies_rx) = watch::channel(Replies::Relay);
    let mut client_to_server = pin!(pump_client(
        from_client,
        to_server,
        scan,
        shared,
        &replies_tx
    ));
    let mut server_to_client = pin!(pump_server(from_server, to_client, replies_rx.clone()));
    let mut deadline_rx = replies_rx;
    let mut hold_expired = pin!(async move {
        let deadline = match deadline_rx
            .wait_for(|replies| matches!(replies, Replies::DropUntil(_)))
            .await
        {
            Ok(replies) => match *replies {
                Replies::DropUntil(deadline) => Some(deadline),
                Replies::Relay | Replies::Drop | Replies::Withheld { .. } => None,
            },
            // The sender lives as long as this function's frame, so this is unreachable.
            Err(_) => None,
        };
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    let mut client_done = false;
    let mut server_done = false;
    loop {
        let result = tokio::select! {
            result = &mut client_to_server, if !client_done => {
                client_done = true;
                result
            }
            result = &mut server_to_client, if !server_done => {
                server_done = true;
                result
            }
            () = &mut hold_expired => {
                tracing::debug!("pg proxy: closing a connection whose COMMIT reply was dropped");
                return Ok(None);
            }
        };
        // Normally either side ending ends the connection; once a reply is being dropped, only the hold does;
        // once a `COMMIT` is withheld (the client → server pump ends as it is), the caller holds it.
        match *replies_tx.borrow() {
            Replies::Relay => return result.map(|()| None),
            Replies::Withheld {
                close_client_at,
                release_generation,
            } => return Ok(Some((close_client_at, release_generation))),
            Replies::Drop | Replies::DropUntil(_) => {}
        }
        if let Err(error) = result {
            tracing::debug!(%error, "pg proxy: a pump of a connection being held ended");
        }
    }
}

/// Relays the untyped start-up messages: an `SSLRequest` / `GSSENCRequest` goes to the server and its
/// one-byte answer back to the client, then the next start-up message; the first other one (a start-up or
/// cancel request) is forwarded and ends the exchange. Returns the scanner for the typed messages that
/// follow, or `None` when the server agreed to encrypt (the stream can no longer be read).
async fn negotiate<S>(
    client: &mut TcpStream,
    server: &mut S,
) -> std::io::Result<Option<MessageScanner>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut length = [0u8; 4];
        client.read_exact(&mut length).await?;
        let len = u32::from_be_bytes(length) as usize;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad start-up message length {len}"),
            ));
        }
        let mut message = vec![0u8; len];
        message[..4].copy_from_slice(&length);
        client.read_exact(&mut message[4..]).await?;
        server.write_all(&message).await?;
        // `len >= 8`, so the code's four bytes are there.
        let code = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
        if code != SSL_REQUEST && code != GSSENC_REQUEST {
            return Ok(Some(MessageScanner::default()));
        }
        let mut answer = [0u8; 1];
        server.read_exact(&mut answer).await?;
        client.write_all(&answer).await?;
        if answer[0] != b'N' {
            tracing::debug!(
                answer = %char::from(answer[0]),
                "pg proxy: encrypted connection, relaying it without looking"
            );
            return Ok(None);
        }
    }
}

/// Client → server: forwards every byte as soon as it is read. When a read completes a `COMMIT` and a fault
/// is armed, the connection's replies are dropped from before that read is forwarded, and its hold starts
/// once it has been; or, for a withheld `COMMIT`, that read is not forwarded and the pump ends at once.
async fn pump_client<R, W>(
    mut from: R,
    mut to: W,
    mut scan: Option<MessageScanner>,
    shared: &Shared,
    replies: &watch::Sender<Replies>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buf[..n];
        let commits = scan.as_mut().is_some_and(|scan| scan.feed(chunk));
        let fault = if commits && *replies.borrow() == Replies::Relay {
            shared.take_commit_fault()
        } else {
            None
        };
        let hold = match fault {
            None => None,
            Some(CommitFault::DropReply { hold }) => Some(hold),
            Some(CommitFault::Withhold { hold }) => {
                let release_generation = *shared.release.borrow();
                replies.send_replace(Replies::Withheld {
                    close_client_at: Instant::now() + hold,
                    release_generation,
                });
                shared.commits_withheld.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(?hold, "pg proxy: withholding a COMMIT");
                // Ending here (with no await since the state changed) is what ends the relaying.
                return Ok(());
            }
        };
        if let Some(hold) = hold {
            replies.send_replace(Replies::Drop);
            shared.commit_replies_dropped.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(?hold, "pg proxy: dropping the reply to a COMMIT");
        }
        to.write_all(chunk).await?;
        if let Some(hold) = hold {
            // Only now is the whole `COMMIT` with the server: closing cannot cut it short.
            to.flush().await?;
            replies.send_replace(Replies::DropUntil(Instant::now() + hold));
        }
    }
}

/// Server → client: a raw copy, discarding everything once the connection is dropping replies.
async fn pump_server<R, W>(
    mut from: R,
    mut to: W,
    replies: watch::Receiver<Replies>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // Checked after the read: the state changes before the `COMMIT` goes upstream, so every byte of its
        // reply is read after the change.
        if *replies.borrow() != Replies::Relay {
            continue;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Follows the client's typed messages (type byte, Int32 length counting itself, body) across arbitrary
/// reads, to recognize the execution of a `COMMIT`: a simple query (`Q`) whose text is one, or an Execute
/// (`E`) of a portal bound (`B`) to a statement parsed (`P`) from one. Only the first [`MAX_CAPTURE`] bytes
/// of `Q`, `P`, `B` and `E` bodies are kept; other messages are skipped without buffering.
#[derive(Debug, Default)]
struct MessageScanner {
    state: ScanState,
    /// Names of this connection's prepared statements whose query is a `COMMIT`.
    commit_statements: HashSet<Vec<u8>>,
    /// Names of this connection's portals bound to such a statement.
    commit_portals: HashSet<Vec<u8>>,
}

/// Where a [`MessageScanner`] is in the stream.
#[derive(Debug)]
enum ScanState {
    /// Reading a type byte and length.
    Header { bytes: [u8; 5], have: usize },
    /// Inside a body: `remaining` bytes to go; `captured` holds the start of a body of interest.
    Body {
        kind: u8,
        remaining: usize,
        captured: Option<Vec<u8>>,
        /// `captured` misses the end of the body.
        cut: bool,
    },
    /// A length smaller than 4 was seen: the boundaries are lost; nothing more is recognized.
    Lost,
}

impl Default for ScanState {
    fn default() -> Self {
        ScanState::Header {
            bytes: [0; 5],
            have: 0,
        }
    }
}

impl MessageScanner {
    /// Consumes `data`; returns whether a message executing a `COMMIT` was completed in it.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut commit = false;
        while !data.is_empty() {
            match &mut self.state {
                ScanState::Header { bytes, have } => {
                    let take = (bytes.len() - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < bytes.len() {
                        continue;
                    }
                    let kind = bytes[0];
                    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                    let Some(body_len) = len.checked_sub(4) else {
                        tracing::warn!(len, "pg proxy: bad message length; no longer scanning");
                        self.state = ScanState::Lost;
                        return commit;
                    };
                    let captured = matches!(kind, b'Q' | b'P' | b'B' | b'E')
                        .then(|| Vec::with_capacity(body_len.min(MAX_CAPTURE)));
                    self.state = ScanState::Body {
                        kind,
                        remaining: body_len,
                        captured,
                        cut: false,
                    };
                }
                ScanState::Body {
                    remaining,
                    captured,
                    cut,
                    ..
                } => {
                    let take = (*remaining).min(data.len());
                    if let Some(captured) = captured {
                        let room = MAX_CAPTURE - captured.len();
                        captured.extend_from_slice(&data[..take.min(room)]);
                        *cut |= take > room;
                    }
                    *remaining -= take;
                    data = &data[take..];
                }
                ScanState::Lost => return commit,
            }
            // A body may be complete right after its header (length 4) or after some bytes.
            if let ScanState::Body {
                kind,
                remaining: 0,
                captured,
                cut,
            } = &mut self.state
            {
                let (kind, cut) = (*kind, *cut);
                let captured = captured.take();
                self.state = ScanState::default();
                if let Some(body) = captured {
                    commit |= self.message(kind, &body, cut);
                }
            }
        }
        commit
    }

    /// Takes in a complete message of interest, `body` cut at [`MAX_CAPTURE`] bytes if `cut`; returns
    /// whether it executes a `COMMIT`. A cut query is longer than any `COMMIT`.
    fn message(&mut self, kind: u8, body: &[u8], cut: bool) -> bool {
        // NUL-terminated fields first: the query; the statement's name and query; the portal's and the
        // statement's names; the portal's name.
        let mut fields = body.split(|&b| b == 0);
        match kind {
            b'Q' => !cut && fields.next().is_some_and(text_is_commit),
            b'P' => {
                let (Some(name), Some(query)) = (fields.next(), fields.next()) else {
                    return false;
                };
                if !cut && text_is_commit(query) {
                    self.commit_statements.insert(name.to_vec());
                } else {
                    self.commit_statements.remove(name);
                }
                false
            }
            b'B' => {
                let (Some(portal), Some(statement)) = (fields.next(), fields.next()) else {
                    return false;
                };
                if self.commit_statements.contains(statement) {
                    self.commit_portals.insert(portal.to_vec());
                } else {
                    self.commit_portals.remove(portal);
                }
                false
            }
            b'E' => fields
                .next()
                .is_some_and(|portal| self.commit_portals.contains(portal)),
            _ => false,
        }
    }
}

/// Whether `sql` is UTF-8 and a bare `COMMIT` (see [`sql_is_commit`]).
fn text_is_commit(sql: &[u8]) -> bool {
    std::str::from_utf8(sql).is_ok_and(sql_is_commit)
}

/// Whether `sql`, trimmed and without one trailing `;`, is a bare `COMMIT` / `END` (case-insensitive).
fn sql_is_commit(sql: &str) -> bool {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql);
    let words: Vec<&str> = sql.split_whitespace().collect();
    let words = words.join(" ");
    [
        "COMMIT",
        "COMMIT TRANSACTION",
        "COMMIT WORK",
        "END",
        "END TRANSACTION",
        "END WORK",
    ]
    .iter()
    .any(|commit| words.eq_ignore_ascii_case(commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;
    use diesel::QueryableByName;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

    /// How long a test waits for anything before failing instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(20);

    #[derive(QueryableByName)]
    struct One {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        x: i32,
    }

    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        present: bool,
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// A fresh database, a proxy in front of its server, and the URL through the proxy.
    async fn proxied_database()
    -> anyhow::Result<(ratchet_template_db::TestDatabase, PgProxy, String)> {
        let db = ratchet_test_utils::testing::fresh_database(&[]).await?;
        let (upstream, user, dbname) = Upstream::from_url(&db.url)?;
        let proxy = PgProxy::start(upstream).await?;
        let url = proxy.url_for(&dbname, &user);
        Ok((db, proxy, url))
    }

    async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
        Ok(tokio::time::timeout(PATIENCE, AsyncPgConnection::establish(url)).await??)
    }

    async fn select_one(conn: &mut AsyncPgConnection) -> anyhow::Result<i32> {
        let row: One = tokio::time::timeout(
            PATIENCE,
            diesel::sql_query("SELECT 1 AS x").get_result(conn),
        )
        .await??;
        Ok(row.x)
    }

    /// Waits until table `t` exists, on a direct connection; fails after [`PATIENCE`].
    async fn wait_for_table_t(direct_url: &str) -> anyhow::Result<()> {
        let mut direct = connect(direct_url).await?;
        let give_up = Instant::now() + PATIENCE;
        loop {
            let row: Present =
                diesel::sql_query("SELECT to_regclass('public.t') IS NOT NULL AS present")
                    .get_result(&mut direct)
                    .await?;
            if row.present {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!("the COMMIT did not land: no table t");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `n` of a query returning one row with a `bigint` column `n`.
    async fn count(conn: &mut AsyncPgConnection, sql: &str) -> anyhow::Result<i64> {
        let row: Count =
            tokio::time::timeout(PATIENCE, diesel::sql_query(sql).get_result(conn)).await??;
        Ok(row.n)
    }

    /// How many rows table `t` has.
    async fn rows_in_t(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
        count(conn, "SELECT count(*) AS n FROM t").await
    }

    /// How many backends of the connection's database are idle in a transaction.
    async fn idle_in_transaction(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
        count(
            conn,
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND datname = current_database()",
        )
        .await
    }

    /// Inserts key 1 into table `t`.
    async fn insert_key_1(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
        tokio::time::timeout(
            PATIENCE,
            diesel::sql_query("INSERT INTO t VALUES (1)").execute(conn),
        )
        .await??;
        Ok(())
    }

    fn is_lock_timeout(error: &anyhow::Error) -> bool {
        format!("{error:#}").contains("lock timeout")
    }

    /// Inserts key 1 into table `t` on `direct` (whose `lock_timeout` is short), retrying while that times
    /// out on a lock; fails on another error or after [`PATIENCE`].
    async fn insert_key_1_once_unlocked(direct: &mut AsyncPgConnection) -> anyhow::Result<()> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            match insert_key_1(direct).await {
                Ok(()) => return Ok(()),
                Err(error) if is_lock_timeout(&error) && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error.context("inserting key 1 directly")),
            }
        }
    }

    /// Waits until no backend of `direct`'s database is idle in a transaction; fails after [`PATIENCE`].
    async fn wait_for_no_idle_transaction(direct: &mut AsyncPgConnection) -> anyhow::Result<()> {
        let give_up = Instant::now() + PATIENCE;
        while idle_in_transaction(direct).await? != 0 {
            if Instant::now() > give_up {
                bail!("a backend is still idle in a transaction");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A direct connection to `direct_url` with table `t (x int PRIMARY KEY)` created and a short
    /// `lock_timeout`.
    async fn direct_with_table_t(direct_url: &str) -> anyhow::Result<AsyncPgConnection> {
        let mut direct = connect(direct_url).await?;
        direct
            .batch_execute("CREATE TABLE t (x int PRIMARY KEY); SET lock_timeout = '200ms'")
            .await?;
        Ok(direct)
    }

    #[tokio::test]
    async fn select_through_the_proxy() -> anyhow::Result<()> {
        let (_db, proxy, url) = proxied_database().await?;
        let mut conn = connect(&url).await?;
        assert_eq!(select_one(&mut conn).await?, 1);
        conn.batch_execute("SELECT 1; SELECT 2").await?;
        assert_eq!(proxy.connections_accepted(), 1);
        assert_eq!(proxy.commit_replies_dropped(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_commit_reply_still_commits() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut conn = connect(&url).await?;
        conn.batch_execute("BEGIN").await?;
        conn.batch_execute("CREATE TABLE t (x int)").await?;
        let hold = Duration::from_millis(300);
        proxy.drop_next_commit_reply(hold);
        let started = Instant::now();
        let result = tokio::time::timeout(PATIENCE, conn.batch_execute("COMMIT")).await?;
        let error = result.expect_err("the COMMIT's reply was dropped");
        eprintln!("the client saw: {error:?} / {error}");
        assert!(
            started.elapsed() >= hold,
            "the connection was held for {hold:?}, not {:?}",
            started.elapsed()
        );
        assert_eq!(proxy.commit_replies_dropped(), 1);
        wait_for_table_t(&db.url).await?;

        // One-shot: the next COMMIT, on a new connection, gets its reply.
        let mut conn = connect(&url).await?;
        conn.batch_execute("BEGIN").await?;
        conn.batch_execute("INSERT INTO t VALUES (1)").await?;
        conn.batch_execute("commit;").await?;
        assert_eq!(proxy.commit_replies_dropped(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_reply_to_a_prepared_commit() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut conn = connect(&url).await?;
        // `sql_query(..).execute` uses the extended protocol: Parse (unless cached), Bind, Execute, Sync.
        conn.batch_execute("BEGIN").await?;
        diesel::sql_query("COMMIT").execute(&mut conn).await?;
        assert_eq!(proxy.commit_replies_dropped(), 0, "not armed yet");
        conn.batch_execute("BEGIN; CREATE TABLE t (x int)").await?;
        proxy.drop_next_commit_reply(Duration::ZERO);
        let result =
            tokio::time::timeout(PATIENCE, diesel::sql_query("COMMIT").execute(&mut conn)).await?;
        let error = result.expect_err("the COMMIT's reply was dropped");
        eprintln!("the client saw: {error:?} / {error}");
        assert_eq!(proxy.commit_replies_dropped(), 1);
        wait_for_table_t(&db.url).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_withheld_commit_never_lands_and_holds_its_locks() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut direct = direct_with_table_t(&db.url).await?;
        let mut conn = connect(&url).await?;
        conn.batch_execute("BEGIN").await?;
        conn.batch_execute("INSERT INTO t VALUES (1)").await?;
        let hold = Duration::from_millis(100);
        proxy.withhold_next_commit(hold);
        let started = Instant::now();
        let result = tokio::time::timeout(PATIENCE, conn.batch_execute("COMMIT")).await?;
        let error = result.expect_err("the COMMIT was withheld");
        eprintln!("the client saw: {error:?} / {error}");
        assert!(
            started.elapsed() >= hold,
            "the client side was held for {hold:?}, not {:?}",
            started.elapsed()
        );
        assert_eq!(proxy.commits_withheld(), 1);
        assert_eq!(proxy.commit_replies_dropped(), 0);

        // The COMMIT never landed, and the transaction lives on, holding key 1.
        assert_eq!(rows_in_t(&mut direct).await?, 0);
        assert_eq!(idle_in_transaction(&mut direct).await?, 1);
        let error = insert_key_1(&mut direct)
            .await
            .expect_err("the withheld transaction holds key 1");
        assert!(is_lock_timeout(&error), "{error:#}");
        assert_eq!(idle_in_transaction(&mut direct).await?, 1, "still held");

        // Released: the server rolls it back.
        proxy.release_withheld();
        insert_key_1_once_unlocked(&mut direct).await?;
        assert_eq!(rows_in_t(&mut direct).await?, 1, "only the direct insert");
        wait_for_no_idle_transaction(&mut direct).await?;

        // One-shot: the next COMMIT, on a new connection, goes through.
        let mut conn = connect(&url).await?;
        conn.batch_execute("BEGIN").await?;
        conn.batch_execute("INSERT INTO t VALUES (2)").await?;
        conn.batch_execute("COMMIT").await?;
        assert_eq!(rows_in_t(&mut direct).await?, 2);
        assert_eq!(proxy.commits_withheld(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_withheld_commit_is_ended_by_the_server() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut direct = direct_with_table_t(&db.url).await?;
        let mut conn = connect(&url).await?;
        let idle_timeout = Duration::from_millis(500);
        conn.batch_execute("SET idle_in_transaction_session_timeout = '500ms'")
            .await?;
        conn.batch_execute("BEGIN").await?;
        conn.batch_execute("INSERT INTO t VALUES (1)").await?;
        let idle_since = Instant::now();
        proxy.withhold_next_commit(Duration::from_millis(100));
        let result = tokio::time::timeout(PATIENCE, conn.batch_execute("COMMIT")).await?;
        let error = result.expect_err("the COMMIT was withheld");
        eprintln!("the client saw: {error:?} / {error}");
        assert_eq!(proxy.commits_withheld(), 1);

        // The client side is closed, the server side not: the backend is still there until its timeout.
        let idle = idle_in_transaction(&mut direct).await?;
        assert!(
            idle == 1 || idle_since.elapsed() >= idle_timeout,
            "{idle} backends idle in a transaction after {:?}",
            idle_since.elapsed()
        );

        // The server ends the session, rolling back; no release.
        wait_for_no_idle_transaction(&mut direct).await?;
        insert_key_1_once_unlocked(&mut direct).await?;
        assert_eq!(rows_in_t(&mut direct).await?, 1, "only the direct insert");
        Ok(())
    }

    #[tokio::test]
    async fn a_withheld_prepared_commit() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut direct = direct_with_table_t(&db.url).await?;
        let mut conn = connect(&url).await?;
        // `sql_query(..).execute` uses the extended protocol: Parse (unless cached), Bind, Execute, Sync.
        conn.batch_execute("BEGIN").await?;
        diesel::sql_query("COMMIT").execute(&mut conn).await?;
        conn.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await?;
        proxy.withhold_next_commit(Duration::ZERO);
        let result =
            tokio::time::timeout(PATIENCE, diesel::sql_query("COMMIT").execute(&mut conn)).await?;
        let error = result.expect_err("the COMMIT was withheld");
        eprintln!("the client saw: {error:?} / {error}");
        assert_eq!(proxy.commits_withheld(), 1);
        assert_eq!(rows_in_t(&mut direct).await?, 0);
        assert_eq!(idle_in_transaction(&mut direct).await?, 1);

        proxy.release_withheld();
        insert_key_1_once_unlocked(&mut direct).await?;
        assert_eq!(rows_in_t(&mut direct).await?, 1, "only the direct insert");
        Ok(())
    }

    #[tokio::test]
    async fn an_outage_leaves_a_withheld_transaction_alone() -> anyhow::Result<()> {
        let (db, proxy, url) = proxied_database().await?;
        let mut direct = direct_with_table_t(&db.url).await?;
        let mut conn = connect(&url).await?;
        conn.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await?;
        // A hold longer than the test's patience: only the outage can close the client side in time.
        proxy.withhold_next_commit(PATIENCE * 3);
        let commit = tokio::spawn(async move { conn.batch_execute("COMMIT").await });
        let give_up = Instant::now() + PATIENCE;
        while proxy.commits_withheld() == 0 {
            assert!(Instant::now() < give_up, "the COMMIT was not withheld");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.begin_outage();
        let error = tokio::time::timeout(PATIENCE, commit)
            .await??
            .expect_err("the outage closed the client side");
        eprintln!("the client saw: {error:?} / {error}");
        assert_eq!(
            idle_in_transaction(&mut direct).await?,
            1,
            "the server side is left alone"
        );
        let error = insert_key_1(&mut direct)
            .await
            .expect_err("the withheld transaction holds key 1");
        assert!(is_lock_timeout(&error), "{error:#}");

        proxy.end_outage();
        proxy.release_withheld();
        insert_key_1_once_unlocked(&mut direct).await?;
        assert_eq!(rows_in_t(&mut direct).await?, 1, "only the direct insert");
        Ok(())
    }

    #[tokio::test]
    async fn an_outage_closes_and_refuses_connections() -> anyhow::Result<()> {
        let (_db, proxy, url) = proxied_database().await?;
        let mut conn = connect(&url).await?;
        assert_eq!(select_one(&mut conn).await?, 1);

        proxy.begin_outage();
        let error = select_one(&mut conn)
            .await
            .expect_err("an outage closes open connections");
        eprintln!("an open connection saw: {error:?}");
        let error = connect(&url)
            .await
            .err()
            .expect("an outage refuses new connections");
        eprintln!("a new connection saw: {error:?}");
        assert_eq!(proxy.connections_accepted(), 2);

        proxy.end_outage();
        let mut conn = connect(&url).await?;
        assert_eq!(select_one(&mut conn).await?, 1);
        assert_eq!(proxy.connections_accepted(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() -> anyhow::Result<()> {
        let (_db, proxy, url) = proxied_database().await?;
        let mut conn = connect(&url).await?;
        assert_eq!(select_one(&mut conn).await?, 1);
        let addr = proxy.addr();
        drop(proxy);
        // Aborting is asynchronous: let the runtime run the aborts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        select_one(&mut conn)
            .await
            .expect_err("the proxy's connections are closed");
        // The listener is gone too.
        let give_up = Instant::now() + PATIENCE;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < give_up, "the proxy still listens");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    #[test]
    fn urls_parse() -> anyhow::Result<()> {
        assert_eq!(
            Upstream::from_url("postgresql://postgres@/db1?host=/tmp/pg/s")?,
            (
                Upstream::Unix(PathBuf::from("/tmp/pg/s/.s.PGSQL.5432")),
                "postgres".to_string(),
                "db1".to_string()
            )
        );
        assert_eq!(
            Upstream::from_url("postgresql://postgres@/db1?host=%2Ftmp%2Fs&port=5433")?.0,
            Upstream::Unix(PathBuf::from("/tmp/s/.s.PGSQL.5433"))
        );
        assert_eq!(
            Upstream::from_url("postgres://alice:secret@localhost:6543/db2")?,
            (
                Upstream::Tcp("127.0.0.1:6543".parse()?),
                "alice".to_string(),
                "db2".to_string()
            )
        );
        assert_eq!(
            Upstream::from_url("postgresql://bob@10.1.2.3/db3")?,
            (
                Upstream::Tcp("10.1.2.3:5432".parse()?),
                "bob".to_string(),
                "db3".to_string()
            )
        );
        assert_eq!(
            Upstream::from_url("postgresql://root@[::1]:26257/defaultdb?sslmode=disable")?.0,
            Upstream::Tcp("[::1]:26257".parse()?)
        );
        assert!(Upstream::from_url("mysql://x@y/z").is_err());
        assert!(Upstream::from_url("postgresql://x@/z").is_err(), "no host");
        Ok(())
    }

    #[test]
    fn commits_are_recognized() {
        for sql in [
            "COMMIT",
            "commit",
            " Commit ;",
            "COMMIT TRANSACTION",
            "commit\n  transaction;",
            "END",
            "end;",
        ] {
            assert!(sql_is_commit(sql), "{sql:?}");
        }
        for sql in [
            "BEGIN",
            "COMMIT; SELECT 1",
            "SELECT 1; COMMIT",
            "COMMIT AND CHAIN",
            "COMMIT PREPARED 'x'",
            "COMMIT;;",
            "ENDX",
            "",
        ] {
            assert!(!sql_is_commit(sql), "{sql:?}");
        }
    }

    /// A typed message: type byte, length, body.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    /// Parse, Bind and Execute of `query` as statement `statement` through portal `portal`, then Sync.
    fn extended(statement: &[u8], portal: &[u8], query: &[u8]) -> Vec<u8> {
        let mut parse = [statement, b"\0", query, b"\0"].concat();
        parse.extend_from_slice(&0u16.to_be_bytes());
        let mut bind = [portal, b"\0", statement, b"\0"].concat();
        bind.extend_from_slice(&[0; 6]);
        let execute = [portal, b"\0", &[0; 4]].concat();
        [
            message(b'P', &parse),
            message(b'B', &bind),
            message(b'E', &execute),
            message(b'S', b""),
        ]
        .concat()
    }

    #[test]
    fn the_scanner_survives_split_messages() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        stream.extend(message(b'Q', b"SELECT 1\0"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'D', &[7; 40]));
        stream.extend(message(b'Q', b"COMMIT\0"));
        ends.push(stream.len());
        // The extended protocol: the Execute (before the 5-byte Sync) counts.
        stream.extend(extended(b"s1", b"", b"commit"));
        ends.push(stream.len() - 5);
        stream.extend(extended(b"", b"p1", b"SELECT 1"));
        // A cached statement: Bind and Execute only.
        let mut bind_again = b"p2\0s1\0".to_vec();
        bind_again.extend_from_slice(&[0; 6]);
        stream.extend(message(b'B', &bind_again));
        stream.extend(message(b'E', b"p2\0\0\0\0\0"));
        ends.push(stream.len());
        // s1 re-parsed as something else; a long query is captured only in part.
        stream.extend(extended(b"s1", b"", b"SELECT 2"));
        let long = format!("SELECT '{}'", "x".repeat(MAX_CAPTURE));
        stream.extend(extended(b"", b"", long.as_bytes()));
        stream.extend(message(b'Q', format!("{long}\0").as_bytes()));
        stream.extend(message(b'Q', b"BEGIN\0"));

        // One byte at a time: each COMMIT completes exactly at its last byte.
        let mut scanner = MessageScanner::default();
        let completed: Vec<usize> = (0..stream.len())
            .filter(|&i| scanner.feed(&stream[i..=i]))
            .map(|i| i + 1)
            .collect();
        assert_eq!(completed, ends);

        // In uneven chunks: the same COMMITs, counted by chunk.
        for size in [2, 3, 7, 1000, 100_000] {
            let mut scanner = MessageScanner::default();
            let mut offset = 0;
            for piece in stream.chunks(size) {
                let start = offset;
                offset += piece.len();
                let expected = ends.iter().any(|&end| start < end && end <= offset);
                assert_eq!(scanner.feed(piece), expected, "size {size}, at {start}");
            }
        }
        let mut scanner = MessageScanner::default();
        assert!(scanner.feed(&stream));
        assert!(!scanner.feed(&message(b'Q', b"SELECT 2\0")));
    }
}
