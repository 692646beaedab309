//! The host's status endpoint, on loopback: what a support engineer (or Nexus's own debugging tool) reads
//! first. `GET /counters` is the engine's counters (`CounterValues`), `GET /recent` its last outcomes
//! (`Vec<RecentOutcome>`), both JSON. In Nexus these would be routes of its internal API.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ratchet_engine::Engine;
use std::net::SocketAddr;

/// Serves the status of `engine` on a free loopback port, in the background; returns the address.
pub async fn serve(engine: Engine) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let engine = engine.clone();
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&engine, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

fn respond(engine: &Engine, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let body = match request.uri().path() {
        "/counters" => serde_json::to_string(&engine.counters().snapshot()),
        "/recent" => serde_json::to_string(&engine.recent_outcomes()),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let (status, body) = match body {
        Ok(json) => (StatusCode::OK, json),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
