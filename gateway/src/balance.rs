//! Spreading calls over several HTTP/2 connections. One tonic channel is one connection, which one
//! core of a service drains; several connections (to one service, and to each of its replicas when
//! its URL lists several) share the load round-robin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

#[derive(Clone)]
pub struct Balanced {
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl Balanced {
    /// `connections` lazily connected channels to each of `urls` (comma-separated).
    pub fn new(urls: &str, connections: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            for _ in 0..connections.max(1) {
                channels.push(pac_platform::client::lazy_channel(url)?);
            }
        }
        anyhow::ensure!(!channels.is_empty(), "no service URL given");
        Ok(Self { channels: channels.into(), next: Arc::default() })
    }
}

impl Service<Request<Body>> for Balanced {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each channel buffers; readiness is awaited on the chosen one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let channel = self.channels[index].clone();
        Box::pin(async move { channel.oneshot(request).await })
    }
}
