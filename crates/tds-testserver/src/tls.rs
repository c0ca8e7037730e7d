//! TLS as SQL Server does it: the handshake travels inside PRELOGIN (0x12) packets, then TLS
//! records flow bare on the socket (for the LOGIN7 only, or for the whole session).
//!
//! [`PreloginWrapper`] is the server-side mirror of tiberius's `TlsPreloginWrapper`: while the
//! handshake is pending it strips the 8-byte packet header from what the client sends and puts
//! one around every flush of handshake bytes rustls writes.
//!
//! The client switches to bare TLS records as soon as *its* side of the handshake is done
//! (TLS 1.3: right after sending Finished) and sends LOGIN7 at once, while rustls on this side
//! keeps reading after the handshake. So the wrapper also switches by itself when the next
//! byte is not a PRELOGIN packet type (a TLS record starts with 0x14..=0x17, never 0x12).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::wire::{HEADER_LEN, packet_type};

/// A self-signed certificate for `localhost` / `127.0.0.1` and the TLS acceptor built on it.
pub(crate) struct Tls {
    pub cert_pem: String,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

pub(crate) fn self_signed() -> io::Result<Tls> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(io::Error::other)?;
    let cert_der: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .map_err(io::Error::other)?;
    // A TLS 1.3 server sends session tickets after the client's Finished; by then tiberius
    // reads bare TLS records, so tickets wrapped in PRELOGIN packets would break the stream.
    config.send_tls13_tickets = 0;
    Ok(Tls {
        cert_pem: certified.cert.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    })
}

pub(crate) struct PreloginWrapper<S> {
    inner: S,
    handshake: bool,
    header: [u8; HEADER_LEN],
    header_pos: usize,
    read_remaining: usize,
    /// Handshake bytes written since the last flush.
    payload: Vec<u8>,
    /// A framed packet being written out.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes read while looking for a header that turned out to be bare TLS.
    pending: Vec<u8>,
}

impl<S> PreloginWrapper<S> {
    pub(crate) fn new(inner: S) -> Self {
        PreloginWrapper {
            inner,
            handshake: true,
            header: [0; HEADER_LEN],
            header_pos: 0,
            read_remaining: 0,
            payload: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            pending: Vec::new(),
        }
    }

    /// From now on bytes pass through untouched.
    pub(crate) fn handshake_complete(&mut self) {
        self.handshake = false;
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreloginWrapper<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if !this.handshake {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        while this.read_remaining == 0 {
            while this.header_pos < HEADER_LEN {
                let mut rb = ReadBuf::new(&mut this.header[this.header_pos..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.header_pos += n;
                if this.header[0] != packet_type::PRELOGIN {
                    // The client has finished its handshake: bare TLS from here on.
                    this.handshake = false;
                    this.pending = this.header[..this.header_pos].to_vec();
                    this.header_pos = 0;
                    let n = this.pending.len().min(buf.remaining());
                    buf.put_slice(&this.pending[..n]);
                    this.pending.drain(..n);
                    return Poll::Ready(Ok(()));
                }
            }
            let length = usize::from(u16::from_be_bytes([this.header[2], this.header[3]]));
            this.read_remaining = length.checked_sub(HEADER_LEN).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "PRELOGIN packet shorter than header",
                )
            })?;
            this.header_pos = 0;
        }
        let max = this.read_remaining.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(max));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        this.read_remaining -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreloginWrapper<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.handshake && this.out.is_empty() && this.payload.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // Handshake bytes wait for the next flush, which frames them as one packet.
        this.payload.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n =
                    ready!(Pin::new(&mut this.inner).poll_write(cx, &this.out[this.out_pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                this.out_pos += n;
                continue;
            }
            this.out.clear();
            this.out_pos = 0;
            if this.payload.is_empty() {
                break;
            }
            let payload = std::mem::take(&mut this.payload);
            if this.handshake {
                let len = u16::try_from(payload.len() + HEADER_LEN).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "TLS handshake flight too large")
                })?;
                this.out.push(packet_type::PRELOGIN);
                this.out.push(0x01); // end of message
                this.out.extend_from_slice(&len.to_be_bytes());
                this.out.extend_from_slice(&[0, 0, 1, 0]);
            }
            this.out.extend_from_slice(&payload);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
