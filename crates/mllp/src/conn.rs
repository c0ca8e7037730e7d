//! One MLLP connection: TLS (and who the sender is), then frames in, ACKs out, in order.
//! A sender in original mode waits for each ACK before the next message; one that sends
//! several at once gets their ACKs in the order sent.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use medlake_engine::ingest::IngestKey;
use medlake_engine::push::{Push, PushError};
use medlake_engine::{Door, Engine, TableName};
use medlake_hl7::{AckCode, Header, Message, mllp};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::rows::{self, Context, Refusal};
use crate::{Auth, Inner, Sender, within};

/// The sender a connection was recognised as.
struct Who {
    name: String,
    sender: Option<Sender>,
}

/// Runs one connection to its end (closed by the peer, idle, refused).
pub(crate) async fn accept(inner: &Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    match &inner.tls {
        None => {
            let Some(who) = recognise(inner, peer, None) else {
                return refuse(inner, peer, "(no certificate)");
            };
            serve(inner, stream, peer, who).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                    .await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "mllp TLS handshake");
                    return refuse(inner, peer, "(TLS handshake failed)");
                }
                Err(_) => return refuse(inner, peer, "(TLS handshake timed out)"),
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let Some(who) = recognise(inner, peer, cert.as_deref()) else {
                return refuse(inner, peer, "(unknown client certificate)");
            };
            serve(inner, stream, peer, who).await;
        }
    }
}

/// Which configured sender this is: certificate and address both as configured.
fn recognise(inner: &Inner, peer: SocketAddr, cert: Option<&[u8]>) -> Option<Who> {
    let senders = match &inner.config.auth {
        Auth::InsecureNoAuth => {
            return Some(Who {
                name: "local".into(),
                sender: None,
            });
        }
        Auth::Senders(senders) => senders,
    };
    senders
        .iter()
        .find(|s| {
            let by_cert = match (&s.certificate, cert) {
                (None, _) => true,
                (Some(name), Some(der)) => medlake_auth::certificate_names(der, name),
                (Some(_), None) => false,
            };
            let by_address = s.addresses.is_empty() || within(&s.addresses, peer.ip());
            by_cert && by_address
        })
        .map(|s| Who {
            name: s.name.clone(),
            sender: Some(s.clone()),
        })
}

/// A connection no sender matches: audited as a refused login, closed without a byte.
fn refuse(inner: &Inner, peer: SocketAddr, claimed: &str) {
    warn!(%peer, "mllp: connection refused {claimed}");
    if let Err(e) = inner.engine.audit_refused(
        Door::Mllp,
        Some(peer.to_string()),
        claimed,
        "LOGIN",
        medlake_common::Code::InvalidAuthorization,
    ) {
        warn!(target: "medlake::audit", error = %e, "a refused connection could not be audited");
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    mut stream: S,
    peer: SocketAddr,
    who: Who,
) {
    let mut decoder = mllp::Decoder::new(inner.config.max_message_bytes);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let answer = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => handle(inner, &who, peer, frame).await,
                Ok(None) => break,
                Err(e) => {
                    let now = Utc::now();
                    let reason = format!("MLLP framing: {e}");
                    quarantine_unread(inner, &who, peer, &reason, b"").await;
                    medlake_hl7::reject_unparsed_code(207, &reason, &inner.next_control_id(), now)
                }
            };
            if stream.write_all(&mllp::frame(&answer)).await.is_err() {
                return;
            }
        }
        let _ = stream.flush().await;
        let read = tokio::time::timeout(inner.config.idle_timeout, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                debug!(%peer, "mllp connection idle; closing");
                return;
            }
        }
    }
}

/// What one message comes to: the ACK to send back.
async fn handle(inner: &Inner, who: &Who, peer: SocketAddr, frame: Vec<u8>) -> Vec<u8> {
    let now = Utc::now();
    let control_id = inner.next_control_id();
    let msg = match medlake_hl7::parse(&frame) {
        Ok(msg) => msg,
        Err(e) => {
            let header = medlake_hl7::parse_header_lenient(&frame);
            let raw = String::from_utf8_lossy(&frame);
            let refusal = Refusal {
                received_at: now.timestamp_micros(),
                sender: &who.name,
                peer: &peer.to_string(),
                header: header.as_ref(),
                ack_code: e.ack_code().as_str(),
                error_code: e.hl7_code(),
                reason: &e.to_string(),
                raw: &raw,
            };
            let key = header.as_ref().map(|h| key_of(h, &frame, who));
            if let Err(failure) = quarantine(inner, &refusal, key).await {
                return retry_later(header.as_ref(), &failure, &control_id);
            }
            return medlake_hl7::ack_error(&frame, &e, &control_id, now);
        }
    };
    let header = msg.header();
    let key = key_of(header, &frame, who);
    let raw = rows::raw_text(&msg);
    let outcome = match admit(inner, who, header) {
        Err(refusal) => Err(refusal),
        Ok(()) => write(inner, who, &msg, &raw, key.clone(), now.timestamp_micros()).await,
    };
    match outcome {
        Ok(()) => medlake_hl7::ack(header, AckCode::Accept, None, &control_id, Utc::now()),
        Err(r) if r.hl7 == RETRY => medlake_hl7::ack(
            header,
            AckCode::Reject,
            Some((207, &r.reason)),
            &control_id,
            now,
        ),
        Err(r) => {
            let refusal = Refusal {
                received_at: now.timestamp_micros(),
                sender: &who.name,
                peer: &peer.to_string(),
                header: Some(header),
                ack_code: r.code.as_str(),
                error_code: r.hl7,
                reason: &r.reason,
                raw: &raw,
            };
            if let Err(failure) = quarantine(inner, &refusal, Some(key)).await {
                return retry_later(Some(header), &failure, &control_id);
            }
            medlake_hl7::ack(header, r.code, Some((r.hl7, &r.reason)), &control_id, now)
        }
    }
}

/// A refused message: its acknowledgement code, HL7 error code and reason.
struct Refused {
    code: AckCode,
    hl7: u16,
    reason: String,
}

/// The pseudo error code of "not written now, send it again" (answered AR, code 207, and not
/// quarantined: nothing is wrong with the message).
const RETRY: u16 = 0;

/// An AR that asks the sender to send the message again later.
fn retry_later(header: Option<&Header>, failure: &str, control_id: &str) -> Vec<u8> {
    let reason = format!("not stored now ({failure}); send it again");
    match header {
        Some(h) => medlake_hl7::ack(
            h,
            AckCode::Reject,
            Some((207, &reason)),
            control_id,
            Utc::now(),
        ),
        None => medlake_hl7::reject_unparsed_code(207, &reason, control_id, Utc::now()),
    }
}

/// Whether `who` may send this message at all: processing id, MSH-3 and MSH-4.
fn admit(inner: &Inner, who: &Who, header: &Header) -> Result<(), Refused> {
    if !inner
        .config
        .processing_ids
        .iter()
        .any(|p| header.processing_id.split('^').next() == Some(p.as_str()))
    {
        return Err(Refused {
            code: AckCode::Reject,
            hl7: 202,
            reason: format!(
                "processing id '{}' (MSH-11) is not accepted by this receiver (accepted: {})",
                header.processing_id,
                inner.config.processing_ids.join(", ")
            ),
        });
    }
    let Some(sender) = &who.sender else {
        return Ok(());
    };
    let namespace = |hd: &str| hd.split('^').next().unwrap_or("").to_string();
    let app = namespace(&header.sending_application);
    let facility = namespace(&header.sending_facility);
    let allowed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|a| a == v);
    if !allowed(&sender.applications, &app) || !allowed(&sender.facilities, &facility) {
        return Err(Refused {
            code: AckCode::Reject,
            hl7: 207,
            reason: format!(
                "sender '{}' may not send as application '{app}' of facility '{facility}' \
                 (MSH-3/MSH-4)",
                who.name
            ),
        });
    }
    Ok(())
}

/// The idempotency key of a message: its sending application, facility and control id, with
/// the SHA-256 of its bytes and the sender's name.
fn key_of(header: &Header, frame: &[u8], who: &Who) -> IngestKey {
    let mut key = format!(
        "hl7:{}|{}|{}",
        header.sending_application, header.sending_facility, header.control_id
    );
    if key.len() > 200 {
        // Kept bounded: the hash of the long parts stands for them.
        let digest = hex(&Sha256::digest(key.as_bytes()));
        key = format!("hl7#{digest}");
    }
    IngestKey {
        key,
        body_sha256: Some(hex(&Sha256::digest(frame))),
        token: Some(who.name.clone()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The table a message goes to and its rows.
fn rows_of(
    inner: &Inner,
    who: &Who,
    msg: &Message,
    raw: &str,
    received_at: i64,
) -> Result<(&'static str, arrow::array::RecordBatch), Refused> {
    let header = msg.header();
    let ctx = Context {
        header,
        raw,
        sender: &who.name,
        received_at,
        zone: inner.config.time_zone,
    };
    let content = |reason: String| Refused {
        code: AckCode::Error,
        hl7: 102,
        reason,
    };
    let parse_error = |e: medlake_hl7::ParseError| Refused {
        code: e.ack_code(),
        hl7: e.hl7_code(),
        reason: e.to_string(),
    };
    match header.message_code.as_str() {
        "ORU" => {
            let obs = medlake_hl7::observations(msg).map_err(parse_error)?;
            let batch = rows::observation_rows(&ctx, &obs).map_err(content)?;
            Ok((rows::OBSERVATIONS, batch))
        }
        "ADT" => {
            let event = medlake_hl7::adt(msg).map_err(parse_error)?;
            let batch = rows::adt_rows(&ctx, &event).map_err(content)?;
            Ok((rows::ADT, batch))
        }
        other => Err(Refused {
            code: AckCode::Reject,
            hl7: 200,
            reason: format!(
                "message type '{other}' (MSH-9) is not accepted: this receiver takes ORU^R01 and \
                 ADT"
            ),
        }),
    }
}

/// Writes a message's rows; `Err` when it is refused, with `hl7` =
/// [`RETRY`] when it should just be sent again.
async fn write(
    inner: &Inner,
    who: &Who,
    msg: &Message,
    raw: &str,
    key: IngestKey,
    received_at: i64,
) -> Result<(), Refused> {
    let refused = |code: AckCode, hl7: u16, reason: String| Refused { code, hl7, reason };
    let (table, batch) = rows_of(inner, who, msg, raw, received_at)?;
    let table = table_name(inner, table).map_err(|e| refused(AckCode::Reject, RETRY, e))?;
    // The engine decides whether this sender may push into the table.
    let principal = inner.principal(&who.name);
    if let Err(e) = inner.engine.session_for(principal).authorize_ingest(&table) {
        return Err(refused(AckCode::Reject, 207, e.to_string()));
    }
    let push = Push {
        schema: batch.schema(),
        rows: Some(batch),
        quarantine: None,
        key: Some(key),
        sender: Some(who.name.clone()),
    };
    match inner.writers.push(&table, push).await {
        Ok(pushed) => {
            debug!(%table, duplicate = pushed.duplicate, version = ?pushed.version, "hl7 message stored");
            Ok(())
        }
        Err(PushError::KeyReused(_)) => Err(refused(
            AckCode::Error,
            205,
            format!(
                "control id '{}' (MSH-10) was already used by this sender for another message; \
                 nothing was stored",
                msg.header().control_id
            ),
        )),
        Err(PushError::Retry(why)) => Err(refused(AckCode::Reject, RETRY, why)),
        Err(PushError::Engine(e)) if retryable(e.code()) => {
            Err(refused(AckCode::Reject, RETRY, e.to_string()))
        }
        Err(PushError::Engine(e)) => Err(refused(AckCode::Error, 207, e.to_string())),
    }
}

/// Failures that are the receiver's, not the message's: the sender should send it again.
fn retryable(code: medlake_common::Code) -> bool {
    use medlake_common::Code;
    matches!(
        code,
        Code::SerializationFailure
            | Code::ObjectInUse
            | Code::OutOfMemory
            | Code::AuditUnavailable
            | Code::IoError
            | Code::Internal
            | Code::UndefinedTable
    )
}

fn table_name(inner: &Inner, table: &str) -> Result<TableName, String> {
    Engine::ingest_name(&format!("{}.{table}", inner.config.schema)).map_err(|e| e.to_string())
}

/// Keeps a refused message in the quarantine table (idempotently when it has a key).
async fn quarantine(
    inner: &Inner,
    refusal: &Refusal<'_>,
    key: Option<IngestKey>,
) -> Result<(), String> {
    let table = table_name(inner, rows::QUARANTINE)?;
    let batch = rows::quarantine_row(refusal);
    let push = Push {
        schema: batch.schema(),
        rows: Some(batch),
        quarantine: None,
        key,
        sender: Some(refusal.sender.to_string()),
    };
    match inner.writers.push(&table, push).await {
        Ok(_) | Err(PushError::KeyReused(_)) => Ok(()),
        Err(e) => {
            warn!(error = %e, "mllp: quarantining a refused message");
            Err(e.to_string())
        }
    }
}

/// Quarantines bytes that never made a message (framing errors).
async fn quarantine_unread(inner: &Inner, who: &Who, peer: SocketAddr, reason: &str, raw: &[u8]) {
    let refusal = Refusal {
        received_at: Utc::now().timestamp_micros(),
        sender: &who.name,
        peer: &peer.to_string(),
        header: None,
        ack_code: AckCode::Reject.as_str(),
        error_code: 207,
        reason,
        raw: &String::from_utf8_lossy(raw),
    };
    let _ = quarantine(inner, &refusal, None).await;
}
