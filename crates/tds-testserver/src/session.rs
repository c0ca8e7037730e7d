//! One client connection: PRELOGIN, TLS, LOGIN7, then SQL batches and RPCs until the client
//! goes away.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::encode::ColumnEncoder;
use crate::error::{Error, Result};
use crate::exec::{self, ResultColumn};
use crate::request::{self, RpcCall, Value};
use crate::tls::PreloginWrapper;
use crate::tsql::{self, Params, SessionInfo, SqlError, Stmt};
use crate::types::{COLLATION, SqlType};
use crate::wire::{self, MessageWriter, done, packet_type, token};
use crate::{Encryption, Fault, LoginAuth, LoginRecord, Param, Received, Shared};

type TlsStream = tokio_rustls::server::TlsStream<PreloginWrapper<TcpStream>>;

/// The socket, bare or inside TLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0.get_ref(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// PRELOGIN ENCRYPTION values.
mod enc {
    pub const OFF: u8 = 0x00;
    pub const ON: u8 = 0x01;
    pub const NOT_SUP: u8 = 0x02;
    pub const REQ: u8 = 0x03;
}

/// The server's ENCRYPTION answer for the client's, and whether the server then closes the
/// connection (a client that cannot encrypt talking to a server that requires it).
fn negotiate(server: Encryption, client: u8) -> (u8, bool) {
    let client_encrypts = client != enc::NOT_SUP;
    match server {
        Encryption::NotSupported => (enc::NOT_SUP, false),
        Encryption::Off => match client {
            enc::OFF => (enc::OFF, false),
            enc::NOT_SUP => (enc::NOT_SUP, false),
            _ => (enc::ON, false),
        },
        Encryption::On => match client {
            enc::NOT_SUP => (enc::NOT_SUP, false),
            _ => (enc::ON, false),
        },
        Encryption::Required => match client {
            enc::OFF => (enc::REQ, false),
            _ if client_encrypts => (enc::ON, false),
            _ => (enc::REQ, true),
        },
    }
}

pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, spid: u16) {
    if let Err(error) = run(shared, tcp, spid).await {
        tracing::debug!(%error, spid, "connection ended");
    }
}

async fn run(shared: Arc<Shared>, tcp: TcpStream, spid: u16) -> Result<()> {
    if matches!(shared.fault(), Some(Fault::RefuseLogins)) {
        return Ok(());
    }
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;

    // PRELOGIN
    let Some(msg) = wire::read_message(&mut tcp).await? else {
        return Ok(());
    };
    if msg.ty != packet_type::PRELOGIN {
        return Err(Error::UnexpectedPacket(msg.ty));
    }
    let prelogin = request::decode_prelogin(&msg.payload)?;
    // The high bit (ENCRYPT_CLIENT_CERT) is about client certificates, not the level.
    let client_level = prelogin.encryption & 0x0F;
    let (answer, refuse) = negotiate(shared.config.encryption, client_level);
    let fed_auth = prelogin
        .fed_auth_required
        .map(|_| !shared.config.aad_tokens.is_empty());
    let mut w = MessageWriter::new(packet_type::TABULAR_RESULT, 4096, 0);
    w.buf()
        .extend_from_slice(&request::encode_prelogin_response(answer, fed_auth));
    w.finish(&mut tcp).await?;
    if refuse {
        return Ok(());
    }

    // TLS, if both sides agreed to encrypt at least the login.
    let client_encrypts = client_level != enc::NOT_SUP;
    let use_tls = answer != enc::NOT_SUP && client_encrypts;
    let mut transport = if use_tls {
        let acceptor = shared
            .tls
            .as_ref()
            .map(|t| t.acceptor.clone())
            .ok_or_else(|| io::Error::other("TLS negotiated without a certificate"))?;
        let mut tls = acceptor.accept(PreloginWrapper::new(tcp)).await?;
        tls.get_mut().0.handshake_complete();
        Transport::Tls(Box::new(tls))
    } else {
        Transport::Plain(tcp)
    };

    // LOGIN7
    let Some(msg) = wire::read_message(&mut transport).await? else {
        return Ok(());
    };
    if msg.ty != packet_type::LOGIN7 {
        return Err(Error::UnexpectedPacket(msg.ty));
    }
    let login = request::decode_login7(&msg.payload)?;
    if answer == enc::OFF
        && let Transport::Tls(tls) = transport
    {
        // ENCRYPT_OFF: only the login travelled encrypted; the rest is plain TDS.
        let (wrapper, _) = tls.into_inner();
        transport = Transport::Plain(wrapper.into_inner());
    }
    let encrypted = use_tls;
    let mut session = Session {
        shared,
        transport,
        spid,
        database: String::new(),
        packet_size: 4096,
    };
    session.login(login, encrypted).await?;
    session.serve_requests().await
}

struct Session {
    shared: Arc<Shared>,
    transport: Transport,
    spid: u16,
    database: String,
    packet_size: usize,
}

/// How a response ended.
enum Flow {
    Continue,
    /// The connection was dropped on purpose (fault injection).
    Dropped,
}

/// Decrements the running-query count when a response is over, however it ends.
struct RunningQuery<'a>(&'a Shared);

impl<'a> RunningQuery<'a> {
    fn start(shared: &'a Shared) -> Self {
        let now = shared.running_queries.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_concurrent.fetch_max(now, Ordering::SeqCst);
        RunningQuery(shared)
    }
}

impl Drop for RunningQuery<'_> {
    fn drop(&mut self) {
        self.0.running_queries.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    fn writer(&self) -> MessageWriter {
        MessageWriter::new(packet_type::TABULAR_RESULT, self.packet_size, self.spid)
    }

    async fn login(&mut self, login: request::Login7, encrypted: bool) -> Result<()> {
        let config = &self.shared.config;
        let (user, auth, authenticated) = match &login.fed_auth_token {
            Some(token) => (
                "<token-identified principal>".to_string(),
                LoginAuth::AadToken,
                config.aad_tokens.iter().any(|t| t == token),
            ),
            None => (
                login.user.clone(),
                LoginAuth::Sql,
                config
                    .users
                    .iter()
                    .any(|(u, p)| u.eq_ignore_ascii_case(&login.user) && *p == login.password),
            ),
        };
        let database = if login.database.is_empty() {
            config.database.clone()
        } else {
            login.database.clone()
        };
        let database_ok = database.eq_ignore_ascii_case(&config.database)
            || database.eq_ignore_ascii_case("master");
        let success = authenticated && database_ok;
        self.shared.lock_logins().push(LoginRecord {
            user: user.clone(),
            database: database.clone(),
            app_name: login.app_name.clone(),
            encrypted,
            auth,
            success,
        });

        let mut w = self.writer();
        if !success {
            let buf = w.buf();
            if authenticated && !database_ok {
                wire::put_message(
                    buf,
                    token::ERROR,
                    4060,
                    1,
                    11,
                    &format!(
                        "Cannot open database \"{database}\" requested by the login. The login failed."
                    ),
                );
            }
            wire::put_message(
                buf,
                token::ERROR,
                18456,
                1,
                14,
                &format!("Login failed for user '{user}'."),
            );
            wire::put_done(buf, token::DONE, done::ERROR, 0, 0);
            w.finish(&mut self.transport).await?;
            return Err(Error::LoginFailed { user });
        }

        let packet_size = match login.packet_size {
            0 => 4096,
            n => n.clamp(512, 32767),
        };
        self.database = database.clone();
        let buf = w.buf();
        wire::put_env_change(buf, 1, &database, "master");
        wire::put_message(
            buf,
            token::INFO,
            5701,
            2,
            0,
            &format!("Changed database context to '{database}'."),
        );
        wire::put_env_collation(buf, &COLLATION);
        wire::put_env_change(buf, 2, "us_english", "");
        wire::put_message(
            buf,
            token::INFO,
            5703,
            1,
            0,
            "Changed language setting to us_english.",
        );
        wire::put_login_ack(buf, login.tds_version);
        if auth == LoginAuth::AadToken {
            wire::put_fedauth_ack(buf);
        }
        wire::put_env_change(buf, 4, &packet_size.to_string(), "4096");
        wire::put_done(buf, token::DONE, done::FINAL, 0, 0);
        w.finish(&mut self.transport).await?;
        self.packet_size = packet_size as usize;
        Ok(())
    }

    async fn serve_requests(&mut self) -> Result<()> {
        loop {
            let Some(msg) = wire::read_message(&mut self.transport).await? else {
                return Ok(());
            };
            let flow = match msg.ty {
                packet_type::SQL_BATCH => {
                    let sql = request::decode_sql_batch(&msg.payload)?;
                    self.shared.lock_received().push(Received {
                        sql: sql.clone(),
                        params: Vec::new(),
                        rpc: false,
                    });
                    let mut w = self.writer();
                    let flow = self.run_batch(&sql, &Params::new(), false, &mut w).await?;
                    if let Flow::Continue = flow {
                        w.finish(&mut self.transport).await?;
                    }
                    flow
                }
                packet_type::RPC => {
                    let calls = request::decode_rpc(&msg.payload)?;
                    self.run_rpcs(calls).await?
                }
                packet_type::ATTENTION => {
                    let mut w = self.writer();
                    wire::put_done(w.buf(), token::DONE, done::ATTENTION, 0, 0);
                    w.finish(&mut self.transport).await?;
                    Flow::Continue
                }
                packet_type::TRANSACTION_MANAGER => {
                    let mut w = self.writer();
                    let e = SqlError::general(
                        "transaction manager requests are not supported by medlake-tds-testserver",
                    );
                    put_error(w.buf(), &e);
                    wire::put_done(w.buf(), token::DONE, done::ERROR, 0, 0);
                    w.finish(&mut self.transport).await?;
                    Flow::Continue
                }
                other => return Err(Error::UnexpectedPacket(other)),
            };
            if let Flow::Dropped = flow {
                return Err(Error::FaultDrop);
            }
        }
    }

    async fn run_rpcs(&mut self, calls: Vec<RpcCall>) -> Result<Flow> {
        let mut w = self.writer();
        let count = calls.len();
        for (i, call) in calls.into_iter().enumerate() {
            let last = i + 1 == count;
            let proc_name = call
                .proc_name
                .clone()
                .unwrap_or_else(|| match call.proc_id {
                    Some(10) => "sp_executesql".into(),
                    Some(id) => format!("procedure id {id}"),
                    None => String::new(),
                });
            // By id (10) or by name: sp_executesql, sys.sp_executesql, [sys].[sp_executesql].
            let base_name = proc_name
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let is_executesql = call.proc_id == Some(10) || base_name == "sp_executesql";
            let mut params = call.params.into_iter();
            let status = if is_executesql {
                let stmt = match params.next().map(|p| p.value) {
                    Some(Value::String(s)) => s,
                    _ => String::new(),
                };
                let declarations = match params.next().map(|p| p.value) {
                    Some(Value::String(s)) => tsql::parse_param_declarations(&s),
                    _ => Vec::new(),
                };
                let mut map = Params::new();
                let mut recorded = Vec::new();
                for (idx, p) in params.enumerate() {
                    let name = if p.name.is_empty() {
                        declarations
                            .get(idx)
                            .map(|d| d.0.clone())
                            .unwrap_or_else(|| format!("@P{}", idx + 1))
                    } else {
                        p.name.clone()
                    };
                    let declared = declarations
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                        .map(|(_, t)| t.clone());
                    let ty = declared
                        .as_deref()
                        .and_then(SqlType::parse_declaration)
                        .or(p.ty);
                    recorded.push(Param {
                        name: name.clone(),
                        type_decl: declared
                            .or_else(|| p.ty.map(|t| t.declaration()))
                            .unwrap_or_default(),
                        value: tsql::render_param(&p.value, ty.or(p.ty)),
                    });
                    map.insert(name.to_lowercase(), (ty.or(p.ty), p.value));
                }
                self.shared.lock_received().push(Received {
                    sql: stmt.clone(),
                    params: recorded,
                    rpc: true,
                });
                match self.run_batch(&stmt, &map, true, &mut w).await? {
                    Flow::Dropped => return Ok(Flow::Dropped),
                    Flow::Continue => {}
                }
                0
            } else {
                let recorded = params
                    .map(|p| Param {
                        name: p.name.clone(),
                        type_decl: p.ty.map(|t| t.declaration()).unwrap_or_default(),
                        value: tsql::render_param(&p.value, p.ty),
                    })
                    .collect();
                self.shared.lock_received().push(Received {
                    sql: proc_name.clone(),
                    params: recorded,
                    rpc: true,
                });
                let e = SqlError::new(
                    2812,
                    16,
                    format!("Could not find stored procedure '{proc_name}'."),
                );
                put_error(w.buf(), &e);
                1
            };
            let buf = w.buf();
            buf.push(token::RETURN_STATUS);
            buf.extend_from_slice(&(status as i32).to_le_bytes());
            let more = if last { done::FINAL } else { done::MORE };
            let err = if status != 0 { done::ERROR } else { 0 };
            wire::put_done(buf, token::DONEPROC, more | err, wire::CMD_EXECUTE, 0);
        }
        w.finish(&mut self.transport).await?;
        Ok(Flow::Continue)
    }

    /// Run the statements of a batch (or of an sp_executesql @stmt when `rpc`), appending
    /// their results to `w`. In a plain batch the last DONE is final; in an RPC every DONE
    /// is a DONEINPROC and the caller closes with DONEPROC.
    async fn run_batch(
        &mut self,
        sql: &str,
        params: &Params,
        rpc: bool,
        w: &mut MessageWriter,
    ) -> Result<Flow> {
        let shared = self.shared.clone();
        let _running = RunningQuery::start(&shared);
        let done_token = if rpc { token::DONEINPROC } else { token::DONE };
        let fail = |w: &mut MessageWriter, e: &SqlError| {
            put_error(w.buf(), e);
            let status = done::ERROR | if rpc { done::MORE } else { 0 };
            wire::put_done(w.buf(), done_token, status, 0, 0);
        };

        if let Some(Fault::ErrorOnQuery { number, message }) = shared.fault() {
            fail(w, &SqlError::new(number, 16, message));
            return Ok(Flow::Continue);
        }
        let statements = match tsql::parse_batch(sql) {
            Ok(s) => s,
            Err(e) => {
                fail(w, &e);
                return Ok(Flow::Continue);
            }
        };
        if statements.is_empty() {
            wire::put_done(w.buf(), done_token, if rpc { done::MORE } else { 0 }, 0, 0);
            return Ok(Flow::Continue);
        }
        let n = statements.len();
        for (i, statement) in statements.into_iter().enumerate() {
            let more = if i + 1 < n || rpc { done::MORE } else { 0 };
            let info = SessionInfo {
                database: &self.database,
                spid: self.spid,
                tracking: shared.tracking_facts(),
            };
            let prepared = match tsql::prepare(statement, params, &info) {
                Ok(p) => p,
                Err(e) => {
                    fail(w, &e);
                    return Ok(Flow::Continue);
                }
            };
            match prepared {
                Stmt::Set => wire::put_done(w.buf(), done_token, more, 0, 0),
                Stmt::Use(db) => {
                    let name = db.rsplit('.').next().unwrap_or(&db).to_string();
                    let ok = name.eq_ignore_ascii_case(&shared.config.database)
                        || name.eq_ignore_ascii_case("master");
                    if !ok {
                        fail(
                            w,
                            &SqlError::new(
                                911,
                                16,
                                format!(
                                    "Database '{name}' does not exist. Make sure that the name is entered correctly."
                                ),
                            ),
                        );
                        return Ok(Flow::Continue);
                    }
                    let old = std::mem::replace(&mut self.database, name.clone());
                    wire::put_env_change(w.buf(), 1, &name, &old);
                    wire::put_message(
                        w.buf(),
                        token::INFO,
                        5701,
                        1,
                        0,
                        &format!("Changed database context to '{name}'."),
                    );
                    wire::put_done(w.buf(), done_token, more, 0, 0);
                }
                Stmt::Query(query) => {
                    let tables = shared.snapshot(&self.database);
                    let execution = match exec::start(*query, &tables).await {
                        Ok(x) => x,
                        Err(e) => {
                            fail(w, &e);
                            return Ok(Flow::Continue);
                        }
                    };
                    match self.stream_result(execution, w, done_token, more).await? {
                        StreamEnd::Done => {}
                        StreamEnd::Failed => return Ok(Flow::Continue),
                        StreamEnd::Dropped => return Ok(Flow::Dropped),
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }

    async fn stream_result(
        &mut self,
        mut execution: exec::Execution,
        w: &mut MessageWriter,
        done_token: u8,
        more: u16,
    ) -> Result<StreamEnd> {
        put_colmetadata(w.buf(), &execution.columns);
        w.send_full(&mut self.transport).await?;
        let fault = self.shared.fault();
        let drop_after = match &fault {
            Some(Fault::DropConnectionAfterRows(n)) => Some(*n),
            _ => None,
        };
        if drop_after == Some(0) {
            return self.drop_connection(w).await;
        }
        let mut sent: u64 = 0;
        while let Some(batch) = execution.stream.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    let e = exec::map_error(&e, &execution.spellings);
                    put_error(w.buf(), &e);
                    wire::put_done(w.buf(), done_token, done::ERROR | more, 0xC1, sent);
                    return Ok(StreamEnd::Failed);
                }
            };
            let encoders = match encoders(&execution.columns, &batch) {
                Ok(e) => e,
                Err(msg) => {
                    put_error(w.buf(), &SqlError::general(msg));
                    wire::put_done(w.buf(), done_token, done::ERROR | more, 0xC1, sent);
                    return Ok(StreamEnd::Failed);
                }
            };
            for row in 0..batch.num_rows() {
                if let Some(Fault::DelayPerRow(d)) = &fault {
                    w.send_partial(&mut self.transport).await?;
                    tokio::time::sleep(*d).await;
                }
                if let Err(msg) = put_row(w.buf(), &encoders, row, sent) {
                    put_error(w.buf(), &SqlError::general(msg));
                    wire::put_done(w.buf(), done_token, done::ERROR | more, 0xC1, sent);
                    return Ok(StreamEnd::Failed);
                }
                sent += 1;
                if drop_after == Some(sent) {
                    return self.drop_connection(w).await;
                }
                w.send_full(&mut self.transport).await?;
            }
        }
        wire::put_done(
            w.buf(),
            done_token,
            done::COUNT | more,
            wire::CMD_SELECT,
            sent,
        );
        Ok(StreamEnd::Done)
    }
}

impl Session {
    /// Send what is buffered (rows so far, no end of message), then close with a TCP reset
    /// instead of a FIN, like a server that died mid-result.
    async fn drop_connection(&mut self, w: &mut MessageWriter) -> Result<StreamEnd> {
        w.send_partial(&mut self.transport).await?;
        let _ = self.transport.tcp().set_zero_linger();
        Ok(StreamEnd::Dropped)
    }
}

enum StreamEnd {
    Done,
    Failed,
    Dropped,
}

fn put_error(buf: &mut Vec<u8>, e: &SqlError) {
    wire::put_message(buf, token::ERROR, e.number, e.state, e.class, &e.message);
}

fn encoders(columns: &[ResultColumn], batch: &RecordBatch) -> Result<Vec<ColumnEncoder>, String> {
    columns
        .iter()
        .zip(batch.columns())
        .map(|(c, array)| ColumnEncoder::new(c.ty, c.nullable, &c.wire, array))
        .collect()
}

fn put_colmetadata(buf: &mut Vec<u8>, columns: &[ResultColumn]) {
    buf.push(token::COLMETADATA);
    wire::put_u16(buf, columns.len() as u16);
    for c in columns {
        wire::put_u32(buf, c.ty.user_type());
        let mut flags: u16 = if c.nullable { 0x0001 } else { 0 };
        if !c.table.is_empty() {
            flags |= 0x0008; // usUpdateable = unknown, as for a table column
        }
        wire::put_u16(buf, flags);
        let table: Vec<&str> = c.table.iter().map(String::as_str).collect();
        c.ty.write_type_info(buf, c.nullable, &table);
        wire::put_b_varchar(buf, &c.name);
    }
}

/// ROW, or NBCROW when the row has NULLs (a bitmap instead of NULL values).
fn put_row(
    buf: &mut Vec<u8>,
    encoders: &[ColumnEncoder],
    row: usize,
    ordinal: u64,
) -> Result<(), String> {
    let has_null = encoders.iter().any(|e| e.is_null(row));
    if has_null {
        buf.push(token::NBCROW);
        let mut bitmap = vec![0u8; encoders.len().div_ceil(8)];
        for (i, e) in encoders.iter().enumerate() {
            if e.is_null(row) {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        buf.extend_from_slice(&bitmap);
        for e in encoders {
            if !e.is_null(row) {
                e.write_value(row, ordinal, buf)?;
            }
        }
    } else {
        buf.push(token::ROW);
        for e in encoders {
            e.write_value(row, ordinal, buf)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_negotiation_follows_sql_server() {
        assert_eq!(negotiate(Encryption::Off, enc::OFF), (enc::OFF, false));
        assert_eq!(negotiate(Encryption::Off, enc::ON), (enc::ON, false));
        assert_eq!(
            negotiate(Encryption::Off, enc::NOT_SUP),
            (enc::NOT_SUP, false)
        );
        assert_eq!(negotiate(Encryption::Required, enc::OFF), (enc::REQ, false));
        assert_eq!(
            negotiate(Encryption::Required, enc::NOT_SUP),
            (enc::REQ, true)
        );
        assert_eq!(negotiate(Encryption::Required, enc::REQ), (enc::ON, false));
        assert_eq!(
            negotiate(Encryption::NotSupported, enc::ON),
            (enc::NOT_SUP, false)
        );
    }
}
