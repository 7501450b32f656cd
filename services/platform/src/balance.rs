//! Connections to other services: the gateway's to each service it forwards to, and a service's
//! to the services it calls. Calls are sent round-robin over the HTTP/2 connections to a service
//! (to each of its replicas when its URL lists several). Calls sharing a connection share its
//! reads and writes, so one connection per address costs the least; several to one address are
//! for a load balancer in between (Kubernetes' Service) to place on different replicas.
//!
//! Each connection is opened on first use and again after it closes. A service closes its older
//! connections now and then (`PAC_GRPC_MAX_CONNECTION_AGE_MS`), and a call sent just as that happens
//! finds the connection gone before the call was written to it: such a call is sent again on a
//! new connection, whether or not it is a read, since the service cannot have seen it. A call
//! that may have reached the service is never sent twice here.
//!
//! A call with a deadline (`grpc-timeout`) that the service has not answered shortly after it is
//! ended here with `DEADLINE_EXCEEDED`, should the service not end it itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;
use tower::{BoxError, Service};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Sends of one call on connections that closed before it was written, before it fails.
const SENDS: usize = 3;
/// How long past a call's deadline the service's own answer is waited for.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Balanced {
    connections: Arc<[Connection]>,
    next: Arc<AtomicUsize>,
}

impl Balanced {
    /// `connections` lazily opened connections to each of `urls` (comma-separated `http://host:port`).
    pub fn new(urls: &str, connections: usize) -> anyhow::Result<Self> {
        let mut all = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let uri: Uri = url.parse().map_err(|_| anyhow::anyhow!("{url} is not a URL"))?;
            let authority = match (uri.scheme(), uri.authority()) {
                (Some(scheme), Some(authority)) if *scheme == Scheme::HTTP && authority.port().is_some() => authority.clone(),
                _ => anyhow::bail!("{url}: a service URL is http://host:port"),
            };
            for _ in 0..connections.max(1) {
                all.push(Connection { authority: authority.clone(), open: Arc::default(), opening: Arc::default() });
            }
        }
        anyhow::ensure!(!all.is_empty(), "no service URL given");
        Ok(Self { connections: all.into(), next: Arc::default() })
    }
}

/// One HTTP/2 connection to one address, (re)opened when a call needs it.
#[derive(Clone)]
struct Connection {
    authority: Authority,
    /// The open connection, if any.
    open: Arc<Mutex<Option<SendRequest<Body>>>>,
    /// Held while opening, so that calls finding no connection wait for one rather than each open one.
    opening: Arc<tokio::sync::Mutex<()>>,
}

impl Connection {
    fn current(&self) -> Option<SendRequest<Body>> {
        self.open.lock().expect("connection slot").as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn reopen(&self) -> Result<SendRequest<Body>, BoxError> {
        let _opening = self.opening.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let address = self.authority.as_str();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .handshake(TokioIo::new(stream))
            .await?;
        let address = address.to_string();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, error = %error, "connection to a service ended");
            }
        });
        *self.open.lock().expect("connection slot") = Some(sender.clone());
        Ok(sender)
    }

    async fn send(self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let deadline = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(crate::grpc::parse_grpc_timeout);
        match deadline {
            Some(deadline) => tokio::time::timeout(deadline + DEADLINE_GRACE, self.send_now(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the service did not answer within the deadline").into())),
            None => self.send_now(request).await,
        }
    }

    async fn send_now(self, mut request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        (uri.scheme, uri.authority) = (Some(Scheme::HTTP), Some(self.authority.clone()));
        *request.uri_mut() = Uri::from_parts(uri)?;
        let mut sends = 0;
        loop {
            let mut sender = match self.current() {
                Some(sender) => sender,
                None => self.reopen().await?,
            };
            sends += 1;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(Body::new)),
                Err(mut error) => match error.take_message() {
                    // Not written: the connection closed first. Send it on a new one.
                    Some(unsent) if sends < SENDS => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}

impl Service<Request<Body>> for Balanced {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        Box::pin(self.connections[index].clone().send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_are_http_with_a_port() {
        let balanced = Balanced::new("http://records-a:50051, http://records-b:50051", 2).unwrap();
        let to: Vec<&str> = balanced.connections.iter().map(|c| c.authority.as_str()).collect();
        assert_eq!(to, ["records-a:50051", "records-a:50051", "records-b:50051", "records-b:50051"]);
        for bad in ["https://records:50051", "http://records", "records:50051", " , ", "http://"] {
            assert!(Balanced::new(bad, 2).is_err(), "{bad}");
        }
    }
}
