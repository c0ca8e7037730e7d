//! TDS packets and the server's tokens (MS-TDS 2.2.3, 2.2.7).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) const HEADER_LEN: usize = 8;

pub(crate) mod packet_type {
    pub const SQL_BATCH: u8 = 0x01;
    pub const RPC: u8 = 0x03;
    pub const TABULAR_RESULT: u8 = 0x04;
    pub const ATTENTION: u8 = 0x06;
    pub const TRANSACTION_MANAGER: u8 = 0x0E;
    pub const LOGIN7: u8 = 0x10;
    pub const PRELOGIN: u8 = 0x12;
}

const STATUS_EOM: u8 = 0x01;

/// A whole client message (one or more packets up to the end-of-message bit).
#[derive(Debug)]
pub(crate) struct Message {
    pub ty: u8,
    pub payload: Vec<u8>,
}

/// Read one message; `Ok(None)` on a clean end of stream before any byte of it.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Option<Message>> {
    let mut payload = Vec::new();
    let mut first = true;
    let mut message_ty = 0;
    loop {
        let mut header = [0u8; HEADER_LEN];
        if first {
            // Distinguish a clean close (no byte) from a truncated header.
            match io.read(&mut header[..1]).await? {
                0 => return Ok(None),
                _ => io.read_exact(&mut header[1..]).await?,
            };
        } else {
            io.read_exact(&mut header).await?;
        };
        if first {
            message_ty = header[0];
        }
        let status = header[1];
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let body = length.checked_sub(HEADER_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "packet length below header size",
            )
        })?;
        let start = payload.len();
        payload.resize(start + body, 0);
        io.read_exact(&mut payload[start..]).await?;
        if status & STATUS_EOM != 0 {
            return Ok(Some(Message {
                ty: message_ty,
                payload,
            }));
        }
        first = false;
    }
}

/// Writes one server message, cutting it into packets of the negotiated size as it grows.
pub(crate) struct MessageWriter {
    ty: u8,
    packet_size: usize,
    spid: u16,
    packet_id: u8,
    buf: Vec<u8>,
}

impl MessageWriter {
    pub(crate) fn new(ty: u8, packet_size: usize, spid: u16) -> Self {
        MessageWriter {
            ty,
            packet_size: packet_size.max(512),
            spid,
            packet_id: 1,
            buf: Vec::with_capacity(packet_size),
        }
    }

    /// The pending payload of the message; append tokens here, then call [`Self::send_full`].
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn max_payload(&self) -> usize {
        self.packet_size - HEADER_LEN
    }

    async fn write_packet<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        len: usize,
        last: bool,
    ) -> io::Result<()> {
        let mut packet = Vec::with_capacity(len + HEADER_LEN);
        packet.push(self.ty);
        packet.push(if last { STATUS_EOM } else { 0 });
        packet.extend_from_slice(&((len + HEADER_LEN) as u16).to_be_bytes());
        packet.extend_from_slice(&self.spid.to_be_bytes());
        packet.push(self.packet_id);
        packet.push(0);
        packet.extend(self.buf.drain(..len));
        self.packet_id = self.packet_id.wrapping_add(1);
        io.write_all(&packet).await
    }

    /// Send every packet that is full; a packet is only sent once more data follows it, so
    /// the last one can carry the end-of-message bit.
    pub(crate) async fn send_full<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        let max = self.max_payload();
        while self.buf.len() > max {
            self.write_packet(io, max, false).await?;
        }
        Ok(())
    }

    /// Send what is buffered now as a packet without the end-of-message bit and flush it,
    /// so the client sees the rows written so far.
    pub(crate) async fn send_partial<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
    ) -> io::Result<()> {
        self.send_full(io).await?;
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.write_packet(io, len, false).await?;
        }
        io.flush().await
    }

    /// Send the rest of the message with the end-of-message bit and flush.
    pub(crate) async fn finish<W: AsyncWrite + Unpin>(mut self, io: &mut W) -> io::Result<()> {
        self.send_full(io).await?;
        let len = self.buf.len();
        self.write_packet(io, len, true).await?;
        io.flush().await
    }
}

pub(crate) fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// B_VARCHAR: a length in characters (one byte), then UTF-16LE.
pub(crate) fn put_b_varchar(buf: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(255).collect();
    buf.push(units.len() as u8);
    for u in units {
        put_u16(buf, u);
    }
}

/// US_VARCHAR: a length in characters (two bytes), then UTF-16LE.
pub(crate) fn put_us_varchar(buf: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(65535).collect();
    put_u16(buf, units.len() as u16);
    for u in units {
        put_u16(buf, u);
    }
}

pub(crate) mod token {
    pub const RETURN_STATUS: u8 = 0x79;
    pub const COLMETADATA: u8 = 0x81;
    pub const ERROR: u8 = 0xAA;
    pub const INFO: u8 = 0xAB;
    pub const LOGINACK: u8 = 0xAD;
    pub const FEATUREEXTACK: u8 = 0xAE;
    pub const ROW: u8 = 0xD1;
    pub const NBCROW: u8 = 0xD2;
    pub const ENVCHANGE: u8 = 0xE3;
    pub const DONE: u8 = 0xFD;
    pub const DONEPROC: u8 = 0xFE;
    pub const DONEINPROC: u8 = 0xFF;
}

pub(crate) mod done {
    pub const FINAL: u16 = 0x00;
    pub const MORE: u16 = 0x01;
    pub const ERROR: u16 = 0x02;
    pub const COUNT: u16 = 0x10;
    pub const ATTENTION: u16 = 0x20;
}

/// `CurCmd` of a SELECT in DONE tokens.
pub(crate) const CMD_SELECT: u16 = 0xC1;
/// `CurCmd` of the DONEPROC closing an RPC (EXECUTE).
pub(crate) const CMD_EXECUTE: u16 = 0xE0;

/// DONE / DONEPROC / DONEINPROC with an 8-byte row count (TDS 7.2+).
pub(crate) fn put_done(buf: &mut Vec<u8>, token: u8, status: u16, cur_cmd: u16, rows: u64) {
    buf.push(token);
    put_u16(buf, status);
    put_u16(buf, cur_cmd);
    buf.extend_from_slice(&rows.to_le_bytes());
}

/// The server name put in ERROR and INFO tokens.
pub(crate) const SERVER_NAME: &str = "medlake-tds-testserver";

/// ERROR (0xAA) or INFO (0xAB) token.
pub(crate) fn put_message(
    buf: &mut Vec<u8>,
    token: u8,
    number: u32,
    state: u8,
    class: u8,
    message: &str,
) {
    let mut body = Vec::new();
    put_u32(&mut body, number);
    body.push(state);
    body.push(class);
    // SQL Server messages are at most 2047 characters; the token length is two bytes.
    let message: String = message.chars().take(2047).collect();
    put_us_varchar(&mut body, &message);
    put_b_varchar(&mut body, SERVER_NAME);
    put_b_varchar(&mut body, "");
    put_u32(&mut body, 1);
    buf.push(token);
    put_u16(buf, body.len() as u16);
    buf.extend_from_slice(&body);
}

/// ENVCHANGE with B_VARCHAR new and old values (database, language, packet size).
pub(crate) fn put_env_change(buf: &mut Vec<u8>, ty: u8, new: &str, old: &str) {
    let mut body = vec![ty];
    put_b_varchar(&mut body, new);
    put_b_varchar(&mut body, old);
    buf.push(token::ENVCHANGE);
    put_u16(buf, body.len() as u16);
    buf.extend_from_slice(&body);
}

/// ENVCHANGE SQL collation: new value as B_VARBYTE, old value empty.
pub(crate) fn put_env_collation(buf: &mut Vec<u8>, collation: &[u8; 5]) {
    let mut body = vec![7, 5];
    body.extend_from_slice(collation);
    body.push(0);
    buf.push(token::ENVCHANGE);
    put_u16(buf, body.len() as u16);
    buf.extend_from_slice(&body);
}

/// SQL Server 2022 RTM-CU: 16.0.4003; the version in PRELOGIN and LOGINACK.
pub(crate) const SERVER_VERSION: (u8, u8, u16) = (16, 0, 4003);

/// LOGINACK for TDS 7.4, or the client's version if it asked for an older one (7.1..7.3),
/// as SQL Server answers.
pub(crate) fn put_login_ack(buf: &mut Vec<u8>, client_tds_version: u32) {
    let version = if (0x7100_0000..0x7400_0004).contains(&client_tds_version) {
        client_tds_version
    } else {
        0x7400_0004
    };
    let mut body = vec![1]; // interface: SQL_TSQL
    body.extend_from_slice(&version.to_be_bytes());
    put_b_varchar(&mut body, "Microsoft SQL Server");
    body.push(SERVER_VERSION.0);
    body.push(SERVER_VERSION.1);
    body.extend_from_slice(&SERVER_VERSION.2.to_be_bytes());
    buf.push(token::LOGINACK);
    put_u16(buf, body.len() as u16);
    buf.extend_from_slice(&body);
}

/// FEATUREEXTACK acknowledging FEDAUTH (security token library, no nonce), then terminator.
pub(crate) fn put_fedauth_ack(buf: &mut Vec<u8>) {
    buf.push(token::FEATUREEXTACK);
    buf.push(0x02);
    put_u32(buf, 0);
    buf.push(0xFF);
}

/// `@@VERSION` text.
pub(crate) fn version_string() -> String {
    format!(
        "Microsoft SQL Server 2022 ({}.{}.{}) - medlake-tds-testserver (DataFusion) \n\tDeveloper Edition (64-bit)",
        SERVER_VERSION.0, SERVER_VERSION.1, SERVER_VERSION.2
    )
}
