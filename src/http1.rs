//! One HTTP/1.1 client connection over a stream the caller connected (TCP, TLS or a unix
//! socket): the handshake, a task driving the connection that is aborted when its owner is
//! dropped, and sending. The etcd client and the CLI's client to skiffd both use it; a pooled
//! client (`hyper_util`'s legacy `Client`) is the images crate's, for registries.

use http_body_util::Full;
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

/// An HTTP/1.1 connection: the request sender and the task driving the connection.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: ConnTask,
}

impl Conn {
    /// The HTTP/1.1 handshake over `stream`, with the connection driven by a task of its own.
    pub(crate) async fn handshake<S>(stream: S) -> Result<Conn, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let task = ConnTask(tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(?err, "HTTP/1.1 connection ended with an error");
            }
        }));
        Ok(Conn { sender, task })
    }

    /// Sends `request` once the connection can take it; the response head.
    pub(crate) async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Whether the connection can take another request now (kept alive, not busy).
    pub(crate) fn is_reusable(&self) -> bool {
        !self.sender.is_closed() && self.sender.is_ready()
    }

    /// Whether the peer or an error closed the connection.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The task driving the connection, for whoever keeps reading a response's body after
    /// the sender is gone (a watch, a log stream): dropping it closes the connection.
    pub(crate) fn into_task(self) -> ConnTask {
        self.task
    }
}

/// Owns the task driving one HTTP connection; aborted when dropped.
#[derive(Debug)]
pub(crate) struct ConnTask(JoinHandle<()>);

impl ConnTask {
    /// Owns `task`: it is aborted when this is dropped (tests' helper tasks).
    #[cfg(test)]
    pub(crate) fn new(task: JoinHandle<()>) -> ConnTask {
        ConnTask(task)
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
