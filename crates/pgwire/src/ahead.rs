//! A result's messages produced ahead of the socket.
//!
//! Pulled on the connection's task, a result alternates: the next batch is read and encoded
//! while nothing is sent, then its rows are sent while nothing is read. Against a client that
//! parses as fast as the server encodes (psycopg's `stream()`), each side then waits for the
//! other about half the time. Here the batches are read and encoded on a task of their own, a
//! few batches ahead, while the connection's task writes the rows already encoded.

use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt, stream};
use medlake_common::Code;
use pgwire::error::PgWireResult;
use tokio::task::AbortHandle;

use crate::error::user_error;

/// Encoded batches held ready beside the one being written.
const AHEAD: usize = 2;

/// What the producing task hands over: a batch's messages, or the end of the result.
enum Piece<T> {
    Items(Vec<PgWireResult<T>>),
    End,
}

/// Stops the producing task when the result is dropped before its end (the client left, a
/// portal was closed).
struct Abort(AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The messages of `items`, each batch turned into messages by `encode` on a task of its own,
/// up to [`AHEAD`] batches before they are written. A result whose task stopped without
/// reaching its end (a panic) ends with an error, never silently short.
pub(crate) fn ahead<B, T, S, F>(items: S, mut encode: F) -> impl Stream<Item = PgWireResult<T>>
where
    B: Send + 'static,
    T: Send + 'static,
    S: Stream<Item = PgWireResult<B>> + Send + 'static,
    F: FnMut(B) -> Vec<PgWireResult<T>> + Send + 'static,
{
    let (mut sender, receiver) = mpsc::channel::<Piece<T>>(AHEAD);
    let task = tokio::spawn(async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            let messages = match item {
                Ok(batch) => encode(batch),
                Err(e) => vec![Err(e)],
            };
            if sender.send(Piece::Items(messages)).await.is_err() {
                return;
            }
        }
        let _ = sender.send(Piece::End).await;
    });
    let state = (receiver, Some(Abort(task.abort_handle())));
    stream::unfold(state, |(mut receiver, abort)| async move {
        let abort = abort?;
        match receiver.next().await {
            Some(Piece::Items(messages)) => Some((stream::iter(messages), (receiver, Some(abort)))),
            Some(Piece::End) => None,
            None => {
                let stopped = user_error(Code::Internal, "the result stopped before its end");
                Some((stream::iter(vec![Err(stopped)]), (receiver, None)))
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_message_arrives_in_order_and_errors_pass_through() {
        let items = stream::iter((0..100).map(|i| {
            if i == 50 {
                Err(user_error(Code::DataException, "bad batch"))
            } else {
                Ok(i)
            }
        }));
        let out: Vec<_> = ahead(items, |i: u32| vec![Ok(i * 10), Ok(i * 10 + 1)])
            .collect()
            .await;
        assert_eq!(out.len(), 199);
        let values: Vec<u32> = out
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let expected: Vec<u32> = (0..100)
            .filter(|i| *i != 50)
            .flat_map(|i| [i * 10, i * 10 + 1])
            .collect();
        assert_eq!(values, expected);
        assert!(
            out[100].is_err(),
            "the failed batch's error is at its place"
        );
    }

    #[tokio::test]
    async fn a_producer_that_panics_ends_the_result_with_an_error() {
        let items = stream::iter((0..10).map(Ok));
        let out: Vec<_> = ahead(items, |i: u32| {
            assert!(i < 3, "encoder broke");
            vec![Ok(i)]
        })
        .collect()
        .await;
        assert_eq!(out.len(), 4);
        assert!(out[..3].iter().all(Result::is_ok));
        let last = out[3]
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(last.contains("stopped before its end"), "{last}");
    }

    #[tokio::test]
    async fn dropping_the_result_stops_the_producer() {
        let (seen, watch) = std::sync::mpsc::channel();
        let items = stream::iter(0..u32::MAX).map(Ok);
        let mut out = Box::pin(ahead(items, move |i: u32| {
            let _ = seen.send(i);
            vec![Ok(i)]
        }));
        assert!(matches!(out.next().await, Some(Ok(0))));
        drop(out);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let produced = watch.try_iter().count();
        assert!(
            produced <= AHEAD + 3,
            "{produced} batches encoded after the drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(watch.try_iter().count(), 0, "the producer stopped");
    }
}
