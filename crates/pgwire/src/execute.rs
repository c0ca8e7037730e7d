//! The extended protocol's Execute, with a result streamed to the socket as it is produced.
//!
//! pgwire 0.41's default `on_execute` starts the portal and then takes its rows with
//! `Portal::fetch(max_rows)`, which collects them in a `Vec` before the first is written; for
//! an Execute without a row limit (what psycopg, pgjdbc without a fetch size, Npgsql and
//! Power BI send) that is the whole result: a 10M-row `SELECT` held ~1 GB of DataRows and sent
//! nothing for 3.5 s, then the client parsed while the server sat idle (benches/RESULTS.md,
//! serve, session 42), and a client asking for a large result could make the server hold all
//! of it, outside the engine's memory limit. Here every Execute writes each row as the engine
//! produces it; with a row limit (a cursor's pages, JDBC's `setFetchSize`) it stops there,
//! answers PortalSuspended and keeps the rest of the stream in the portal for the next Execute
//! (nothing is held but the batches the stream reads ahead). Everything else (the other
//! responses, the connection's state and transaction status, a finished portal answering no
//! rows, cancellation while the query starts) is as in pgwire's default.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::{Either, select};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::portal::{Portal, PortalExecutionState};
use pgwire::api::query::{ExtendedQueryHandler, send_execution_response};
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, copy,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::{Execute, PortalSuspended};
use pgwire::messages::response::EmptyQueryResponse;

/// `Execute` for `handler` (see the module documentation).
pub(crate) async fn execute<H, C>(handler: &H, client: &mut C, message: Execute) -> PgWireResult<()>
where
    H: ExtendedQueryHandler,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
    let Some(Entry::Value(portal)) = client.portal_store().get_portal(name) else {
        // An empty statement or no such portal: pgwire's answer.
        return handler._on_execute(client, message).await;
    };
    if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
        return Err(PgWireError::NotReadyForQuery);
    }
    let limit = message.max_rows as usize;
    let mut transaction = client.transaction_status();
    client.set_state(PgWireConnectionState::QueryInProgress);
    // The rows still to send: a suspended portal's, or the query's once started.
    let taken = std::mem::replace(
        &mut *portal.state.lock().await,
        PortalExecutionState::Finished,
    );
    let response = match taken {
        PortalExecutionState::Suspended(rows) => Response::Query(rows),
        // Sent whole already: no rows, as pgwire answers.
        PortalExecutionState::Finished => Response::Query(QueryResponse::new(
            Arc::new(Vec::new()),
            futures::stream::empty(),
        )),
        PortalExecutionState::Initial => {
            let started = start(handler, client, &portal, limit).await;
            if started.is_err() {
                // Not started, as pgwire leaves it.
                *portal.state.lock().await = PortalExecutionState::Initial;
            }
            started?
        }
    };
    match response {
        Response::Query(rows) => {
            if let Some(rest) = send_rows(client, rows, limit).await? {
                // The limit was reached: the rest waits in the portal for the next Execute.
                *portal.state.lock().await = PortalExecutionState::Suspended(rest);
            }
        }
        Response::EmptyQuery => {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        }
        Response::Execution(tag) => send_execution_response(client, tag).await?,
        Response::TransactionStart(tag) => {
            send_execution_response(client, tag).await?;
            transaction = transaction.to_in_transaction_state();
        }
        Response::TransactionEnd(tag) => {
            send_execution_response(client, tag).await?;
            transaction = transaction.to_idle_state();
            client.portal_store().rm_portal(DEFAULT_NAME);
        }
        Response::Error(e) => {
            client
                .send(PgWireBackendMessage::ErrorResponse((*e).into()))
                .await?;
            transaction = transaction.to_error_state();
        }
        Response::CopyIn(result) => {
            client.set_state(PgWireConnectionState::CopyInProgress(true));
            copy::send_copy_in_response(client, result).await?;
        }
        Response::CopyOut(result) => copy::send_copy_out_response(client, result).await?,
        Response::CopyBoth(result) => {
            client.set_state(PgWireConnectionState::CopyInProgress(true));
            copy::send_copy_both_response(client, result).await?;
        }
    }
    if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction);
    }
    Ok(())
}

/// Runs the portal's query (`do_query`), stopped by a cancel request while it starts when
/// the connection takes them through pgwire's handle.
async fn start<H, C>(
    handler: &H,
    client: &mut C,
    portal: &Portal<H::Statement>,
    limit: usize,
) -> PgWireResult<Response>
where
    H: ExtendedQueryHandler,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let cancelled = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
        Some(handle) => Some(handle.start_query().await),
        None => None,
    };
    match cancelled {
        Some(cancelled) => match select(handler.do_query(client, portal, limit), cancelled).await {
            Either::Left((result, _)) => result,
            Either::Right(_) => Err(PgWireError::QueryCanceled),
        },
        None => handler.do_query(client, portal, limit).await,
    }
}

/// Writes `rows` as they come, at most `limit` (0: all): ending with the command tag, or
/// with PortalSuspended when the limit stopped it, returning the rows not yet sent.
async fn send_rows<C>(
    client: &mut C,
    mut rows: QueryResponse,
    limit: usize,
) -> PgWireResult<Option<QueryResponse>>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut sent = 0usize;
    while limit == 0 || sent < limit {
        match rows.data_rows().next().await {
            Some(row) => {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                sent += 1;
            }
            None => {
                let tag = Tag::new(rows.command_tag()).with_rows(sent);
                client
                    .send(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
                return Ok(None);
            }
        }
    }
    client
        .send(PgWireBackendMessage::PortalSuspended(PortalSuspended::new()))
        .await?;
    Ok(Some(rows))
}
