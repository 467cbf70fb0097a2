//! TLS for the daemon's TCP listener (`serve --tls-cert/--tls-key`): the certificate chain and
//! key are loaded once at start (a file that does not load stops `serve` with its name and why),
//! and handshakes run beside the accept loop, so one slow or silent client never holds up the
//! next.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const READY: usize = 64;

/// Handshakes under way at once.
const HANDSHAKES: usize = 128;

/// Where the certificate chain and private key are (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Loads the certificate and key into a server configuration.
pub fn load(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "--tls-key {} does not go with the certificate in --tls-cert {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("--tls-cert {}: cannot read", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: not PEM ({e})", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--tls-cert {}: no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
            path.display()
        );
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("--tls-key {}: cannot read", path.display()))?;
    // Never quote the file: it is a secret.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "--tls-key {}: no private key in it (expected a PEM `PRIVATE KEY` block: PKCS#8, \
             PKCS#1 or SEC1)",
            path.display()
        )
    })
}

/// A TCP listener whose connections are handed on once their TLS handshake succeeded. The
/// accept loop ends (and the port is let go) when the listener is dropped.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TlsListener {
    /// Accepts on `tcp` in the background, each handshake in its own task (at most
    /// [`HANDSHAKES`] at once: silent clients cannot use up the file descriptors).
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    _ = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("cannot accept on {local}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accepting,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, cert).expect("test setup");
        std::fs::write(&files.key, key).expect("test setup");
        files
    }

    /// Why `files` do not load.
    fn refusal(files: &TlsFiles) -> String {
        match load(files) {
            Ok(_) => panic!("{files:?} loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn generated() -> (String, String) {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("test setup");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempfile::tempdir().expect("test setup");
        let (cert, key) = generated();
        assert!(load(&files(dir.path(), &cert, &key)).is_ok());
    }

    #[test]
    fn files_that_do_not_load_are_named_with_the_reason_and_the_key_is_never_quoted() {
        let dir = tempfile::tempdir().expect("test setup");
        let (cert, key) = generated();
        let missing = TlsFiles {
            cert: dir.path().join("nowhere.pem"),
            key: dir.path().join("key.pem"),
        };
        let error = refusal(&missing);
        assert!(
            error.contains("--tls-cert") && error.contains("nowhere.pem"),
            "{error}"
        );
        assert!(error.contains("cannot read"), "{error}");

        let error = refusal(&files(dir.path(), "hello", &key));
        assert!(error.contains("no certificate"), "{error}");

        let secret = "-----BEGIN NOTHING-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END NOTHING-----\n";
        let error = refusal(&files(dir.path(), &cert, secret));
        assert!(
            error.contains("--tls-key") && error.contains("no private key"),
            "{error}"
        );
        assert!(
            !error.contains("c2VjcmV0"),
            "the key file is not quoted: {error}"
        );

        // A key of another certificate.
        let (_, other_key) = generated();
        let error = refusal(&files(dir.path(), &cert, &other_key));
        assert!(
            error.contains("does not go with the certificate"),
            "{error}"
        );
    }
}
