//! Backend connections over TLS (`[backend.tls]`): the shared pool, the pinned pool and the
//! connections that check credentials all open theirs through it, inside
//! `backend.connect_timeout`. A refused certificate is a failed connect: logged with
//! rustls's reason, counted (`moat_backend_tls_failures_total`), and fed to the breaker
//! like any other.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::stream::TlsStream;
use crate::net::Stream;

/// Where and how to reach Redis over TLS.
pub(crate) struct BackendTls {
    pub(crate) address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    metrics: Arc<crate::Metrics>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendTls({}, {})", self.address, self.name.to_str())
    }
}

impl BackendTls {
    /// Loads `[backend.tls]` (at start). Warns loudly when verification is off.
    pub(crate) fn load(
        config: &crate::Config,
        metrics: Arc<crate::Metrics>,
    ) -> Result<Option<Arc<Self>>, crate::ConfigError> {
        let Some(tls) = &config.backend.tls else {
            return Ok(None);
        };
        let address = config.backend.address;
        let (client, name) = tls.load(address)?;
        if tls.insecure_skip_verify {
            tracing::warn!(
                backend = %address,
                "backend.tls.insecure_skip_verify is set: Redis's certificate is NOT verified; \
                 anyone on the path can read and change the traffic"
            );
        }
        Ok(Some(Arc::new(Self {
            address,
            config: client,
            name,
            metrics,
        })))
    }

    /// Opens a TCP connection and runs the handshake; a refused handshake is an error
    /// naming the backend and rustls's reason.
    pub(crate) async fn connect(&self) -> io::Result<Stream> {
        let tcp = TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        let fail = |e: &dyn std::fmt::Display| {
            self.metrics
                .backend_tls_failures
                .fetch_add(1, Ordering::Relaxed);
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "TLS handshake with backend {} (as {}) failed: {e}",
                    self.address,
                    self.name.to_str()
                ),
            )
        };
        let conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| fail(&e))?;
        let mut conn = rustls::Connection::Client(conn);
        super::handshake::run(&tcp, &mut conn)
            .await
            .map_err(|e| fail(&e))?;
        Ok(Stream::Tls(Box::new(TlsStream::new(tcp, conn))))
    }
}
