//! One connection's message loop. pgwire's `process_socket` only reacts to what the client
//! sends; this loop is built from the same public pieces (`negotiate_tls`, `process_message`,
//! `process_error`) and also waits for the session's alert notifications, so a client that
//! ran `LISTEN name` and sits idle (psycopg's `notifies()`, psql between commands) receives
//! each firing as a `NotificationResponse` when it happens.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::response::NotificationResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::connection::Connection;

/// How long a client has to finish TLS, startup and authentication (as pgwire's own loop).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one TCP connection until the client leaves.
pub(crate) async fn serve<H: PgWireServerHandlers>(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: H,
) -> std::io::Result<()> {
    let startup_timeout = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_timeout);
    let socket = tokio::select! {
        () = &mut startup_timeout => return Ok(()),
        socket = negotiate_tls(tcp, tls) => socket?,
    };
    // A direct TLS negotiation without TLS configured: nothing to talk about.
    let Some(mut socket) = socket else {
        return Ok(());
    };
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if starting {
            tokio::select! {
                () = &mut startup_timeout => None,
                message = socket.next() => message,
            }
        } else {
            let connection = socket
                .session_extensions()
                .get::<Arc<Connection>>()
                .map(|c| (*c).clone());
            match connection {
                Some(connection) => {
                    tokio::select! {
                        message = socket.next() => message,
                        (channel, payload) = connection.session.next_notification() => {
                            let (pid, _) = socket.pid_and_secret_key();
                            socket
                                .send(PgWireBackendMessage::NotificationResponse(
                                    NotificationResponse::new(pid, channel, payload),
                                ))
                                .await?;
                            continue;
                        }
                    }
                }
                None => socket.next().await,
            }
        };
        let Some(Ok(message)) = message else {
            return Ok(());
        };
        // Terminate: the client is leaving (some wait for the server to close first).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let processed = process_message(
            message,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(mut e) = processed {
            errors.on_error(&socket, &mut e);
            process_error(&mut socket, e, extended_query).await?;
        }
    }
}
