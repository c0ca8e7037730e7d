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
    if !may_connect(inner, peer) {
        // No sender can be at this address: closed before a TLS handshake costs anything.
        return refuse(inner, peer, "(address not allowed)");
    }
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

/// Whether any sender may connect from `peer` (senders without addresses: any).
fn may_connect(inner: &Inner, peer: SocketAddr) -> bool {
    match &inner.config.auth {
        Auth::InsecureNoAuth => true,
        Auth::Senders(senders) => senders
            .iter()
            .any(|s| s.addresses.is_empty() || within(&s.addresses, peer.ip())),
    }
}

/// A certificate valid for a made-up name under `name`'s parent: a wildcard certificate,
/// which names no one sender.
fn wildcard(der: &[u8], name: &str) -> bool {
    let parent = name.split_once('.').map_or("", |(_, rest)| rest);
    !parent.is_empty() && medlake_auth::certificate_names(der, &format!("medlake-probe-0.{parent}"))
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
                (Some(name), Some(der)) => {
                    medlake_auth::certificate_names(der, name) && !wildcard(der, name)
                }
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
                    // A start block inside a frame that lost nothing is not worth a row (and
                    // one per byte would be a quarantine flood).
                    if !matches!(e, mllp::FrameError::Interrupted { discarded: 0 }) {
                        quarantine_unread(inner, &who, peer, &reason, b"").await;
                    }
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
    let outcome = match admit(inner, who, &msg) {
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
fn admit(inner: &Inner, who: &Who, msg: &Message) -> Result<(), Refused> {
    let header = msg.header();
    let refuse = |hl7: u16, reason: String| Refused {
        code: AckCode::Reject,
        hl7,
        reason,
    };
    for (field, value) in [
        ("MSH-3", &header.sending_application),
        ("MSH-4", &header.sending_facility),
        ("MSH-10", &header.control_id),
    ] {
        if value.len() > MAX_ID_BYTES {
            return Err(refuse(
                102,
                format!("{field} is longer than {MAX_ID_BYTES} bytes"),
            ));
        }
    }
    if msg.segments("PID").nth(1).is_some() {
        return Err(refuse(
            100,
            "one patient per message: this message has more than one PID".into(),
        ));
    }
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
    if !sender.message_types.is_empty() && !sender.message_types.contains(&header.message_code) {
        return Err(refuse(
            200,
            format!(
                "sender '{}' may not send {} messages (MSH-9)",
                who.name, header.message_code
            ),
        ));
    }
    // The namespace ids themselves (component 1, unescaped): an escaped component separator
    // inside them (`MONITOR_GW\S\X`) is part of the value, not a way past the check.
    let app = msg.get("MSH-3-1").unwrap_or_default();
    let facility = msg.get("MSH-4-1").unwrap_or_default();
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

/// Longest MSH-3, MSH-4 and MSH-10 taken (HL7 allows 199 characters at most for an EI/HD).
const MAX_ID_BYTES: usize = 199;

/// Most observations one message may carry, and most bytes its rows may hold (each row keeps
/// the message): beyond, AR without building anything.
const MAX_OBSERVATIONS: usize = 5_000;
const MAX_ROW_BYTES: usize = 32 << 20;

/// Most bytes of a refused message kept in the quarantine (its length and hash say the rest).
const MAX_QUARANTINED_BYTES: usize = 64 << 10;

/// The idempotency key of a message: its sending application, facility and control id, with
/// the SHA-256 of its bytes and the sender's name.
fn key_of(header: &Header, frame: &[u8], who: &Who) -> IngestKey {
    // The sender is part of the key: another sender reusing MSH-3/4/10 (by accident or to
    // shadow this one's next messages) is another message. Parts are length-prefixed, so no
    // value can be made to look like two.
    let mut h = Sha256::new();
    for part in [
        who.name.as_str(),
        &header.sending_application,
        &header.sending_facility,
        &header.control_id,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    IngestKey {
        key: format!("hl7:{}", hex(&h.finalize())),
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
            if obs.len() > MAX_OBSERVATIONS || obs.len().saturating_mul(raw.len()) > MAX_ROW_BYTES {
                return Err(Refused {
                    code: AckCode::Reject,
                    hl7: 207,
                    reason: format!(
                        "{} observations in a message of {} bytes: more than this receiver \
                         takes in one message ({MAX_OBSERVATIONS} observations, {} MiB of rows); \
                         split it",
                        obs.len(),
                        raw.len(),
                        MAX_ROW_BYTES >> 20
                    ),
                });
            }
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
    let batch = rows::quarantine_row(refusal, MAX_QUARANTINED_BYTES);
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
