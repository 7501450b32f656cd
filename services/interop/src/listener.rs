//! The MLLP listener: accepts an integration engine's connections and answers each message with its
//! ACK before reading the next (one message in flight per connection). Connections may stay open
//! for many messages or carry one each; TCP keepalive finds peers that went away silently. With
//! TLS configured every connection is TLS, and with a client CA each must present a certificate
//! it signed (mutual TLS).

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::inbound::Handler;
use crate::mllp::{FrameError, Mllp};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest message accepted; a longer frame closes the connection.
    pub max_frame: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// TCP keepalive: idle time before the first probe.
    pub keepalive: Duration,
}

/// Serves `listener` until `shutdown` fires, over TLS when `tls` is given. A connection in the
/// middle of a message finishes it and sends its ACK before closing.
pub async fn serve(listener: TcpListener, handler: Handler, limits: Limits, tls: Option<TlsAcceptor>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "accepting an MLLP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        set_keepalive(&stream, limits.keepalive);
        let (handler, shutdown, tls) = (handler.clone(), shutdown.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, handler, limits.max_frame, shutdown).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, handler, limits.max_frame, shutdown).await,
                    Ok(Err(error)) => tracing::info!(%error, "an MLLP connection's TLS handshake failed"),
                    Err(_) => tracing::info!("an MLLP connection's TLS handshake timed out"),
                },
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

fn set_keepalive(stream: &TcpStream, idle: Duration) {
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(Duration::from_secs(10));
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "setting TCP keepalive failed");
    }
    let _ = stream.set_nodelay(true);
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, handler: Handler, max_frame: usize, shutdown: CancellationToken) {
    let mut framed = Framed::new(stream, Mllp::new(max_frame));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = framed.next() => next,
        };
        let frame = match next {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(FrameError::TooLarge { max })) => {
                tracing::warn!(max, "an MLLP frame over the size limit: connection closed");
                return;
            }
            Some(Err(FrameError::Truncated)) => return,
            Some(Err(FrameError::Io(error))) => {
                tracing::debug!(%error, "an MLLP connection failed");
                return;
            }
        };
        // A defect met while handling one message answers it AE and keeps the connection serving.
        let ack = match std::panic::AssertUnwindSafe(handler.handle(&frame)).catch_unwind().await {
            Ok(ack) => ack,
            Err(_) => {
                tracing::error!("handling a message failed on a defect: answered AE 207");
                crate::inbound::defect_ack()
            }
        };
        if let Err(error) = framed.send(ack).await {
            tracing::debug!(%error, "sending an ACK failed");
            return;
        }
    }
}
