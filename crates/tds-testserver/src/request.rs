//! Decoding of client messages: PRELOGIN, LOGIN7, SQL batch and RPC (MS-TDS 2.2.6).

use crate::encode::{cp1252_decode, format_guid, reorder_guid};
use crate::types::SqlType;

use crate::error::{Error, Result};

fn bad(what: &'static str, detail: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        detail: detail.into(),
    }
}

/// A little-endian cursor over a message payload.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| bad(self.what, format!("truncated at byte {}", self.pos)))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn utf16(&mut self, chars: usize) -> Result<String> {
        let bytes = self.take(chars * 2)?;
        utf16_string(bytes).map_err(|e| bad(self.what, e))
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

pub(crate) fn utf16_string(bytes: &[u8]) -> Result<String, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err("odd UTF-16 byte length".into());
    }
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|e| e.to_string())
}

/// The client's PRELOGIN options the server reacts to.
#[derive(Debug, Default)]
pub(crate) struct PreLogin {
    pub encryption: u8,
    pub fed_auth_required: Option<bool>,
}

pub(crate) fn decode_prelogin(payload: &[u8]) -> Result<PreLogin> {
    let mut out = PreLogin {
        encryption: 0x02,
        fed_auth_required: None,
    };
    let mut r = Reader::new(payload, "PRELOGIN");
    loop {
        let token = r.u8()?;
        if token == 0xFF {
            break;
        }
        let b = r.take(4)?;
        let offset = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let length = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let value = payload
            .get(offset..offset + length)
            .ok_or_else(|| bad("PRELOGIN", "option outside the message"))?;
        match token {
            0x01 if length >= 1 => out.encryption = value[0],
            0x06 if length >= 1 => out.fed_auth_required = Some(value[0] != 0),
            _ => {}
        }
    }
    Ok(out)
}

/// PRELOGIN response options (MS-TDS 2.2.6.5).
pub(crate) fn encode_prelogin_response(encryption: u8, fed_auth: Option<bool>) -> Vec<u8> {
    let (major, minor, build) = crate::wire::SERVER_VERSION;
    let mut options: Vec<(u8, Vec<u8>)> = vec![
        (0x00, {
            let mut v = vec![major, minor];
            v.extend_from_slice(&build.to_be_bytes());
            v.extend_from_slice(&[0, 0]);
            v
        }),
        (0x01, vec![encryption]),
        (0x02, vec![0]),
        (0x03, vec![]),
        (0x04, vec![0]),
    ];
    if let Some(required) = fed_auth {
        options.push((0x06, vec![u8::from(required)]));
    }
    let mut offset = options.len() * 5 + 1;
    let mut out = Vec::new();
    for (token, value) in &options {
        out.push(*token);
        out.extend_from_slice(&(offset as u16).to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        offset += value.len();
    }
    out.push(0xFF);
    for (_, value) in options {
        out.extend_from_slice(&value);
    }
    out
}

/// The LOGIN7 fields the server uses.
#[derive(Debug, Default)]
pub(crate) struct Login7 {
    pub tds_version: u32,
    pub packet_size: u32,
    pub user: String,
    pub password: String,
    pub app_name: String,
    pub database: String,
    /// The access token of a FEDAUTH (security token) feature extension.
    pub fed_auth_token: Option<String>,
}

pub(crate) fn decode_login7(payload: &[u8]) -> Result<Login7> {
    let mut r = Reader::new(payload, "LOGIN7");
    let _length = r.u32()?;
    let tds_version = r.u32()?;
    let packet_size = r.u32()?;
    r.take(12)?; // client prog version, pid, connection id
    let _flags1 = r.u8()?;
    let _flags2 = r.u8()?;
    let _type_flags = r.u8()?;
    let flags3 = r.u8()?;
    r.take(8)?; // time zone, lcid
    let mut fields = Vec::new();
    for _ in 0..9 {
        fields.push((usize::from(r.u16()?), usize::from(r.u16()?)));
    }
    // fields: 0 host, 1 user, 2 password, 3 app, 4 server, 5 extension, 6 library,
    // 7 language, 8 database.
    let text = |i: usize| -> Result<String> {
        let (offset, chars) = fields[i];
        let bytes = payload
            .get(offset..offset + chars * 2)
            .ok_or_else(|| bad("LOGIN7", "string outside the message"))?;
        utf16_string(bytes).map_err(|e| bad("LOGIN7", e))
    };
    let password_bytes = {
        let (offset, chars) = fields[2];
        payload
            .get(offset..offset + chars * 2)
            .ok_or_else(|| bad("LOGIN7", "password outside the message"))?
            .iter()
            .map(|b| {
                let x = b ^ 0xA5;
                x.rotate_left(4)
            })
            .collect::<Vec<u8>>()
    };
    let password = utf16_string(&password_bytes).map_err(|e| bad("LOGIN7", e))?;
    let mut login = Login7 {
        tds_version,
        packet_size,
        user: text(1)?,
        password,
        app_name: text(3)?,
        database: text(8)?,
        fed_auth_token: None,
    };
    if flags3 & 0x10 != 0 {
        let (offset, len) = fields[5];
        if len >= 4 {
            let ext = payload
                .get(offset..offset + 4)
                .ok_or_else(|| bad("LOGIN7", "extension outside the message"))?;
            let feature_offset = u32::from_le_bytes([ext[0], ext[1], ext[2], ext[3]]) as usize;
            let features = payload
                .get(feature_offset..)
                .ok_or_else(|| bad("LOGIN7", "feature extension outside the message"))?;
            login.fed_auth_token = decode_features(features)?;
        }
    }
    Ok(login)
}

/// Walk FeatureExt; return the FEDAUTH security token if present.
fn decode_features(data: &[u8]) -> Result<Option<String>> {
    let mut r = Reader::new(data, "LOGIN7 FeatureExt");
    let mut token = None;
    while !r.is_empty() {
        let id = r.u8()?;
        if id == 0xFF {
            break;
        }
        let len = r.u32()? as usize;
        let body = r.take(len)?;
        if id == 0x02 {
            let mut b = Reader::new(body, "FEDAUTH feature");
            let options = b.u8()?;
            if options >> 1 != 0x01 {
                return Err(bad(
                    "FEDAUTH feature",
                    "only the security token library is supported",
                ));
            }
            let token_len = b.u32()? as usize;
            let bytes = b.take(token_len)?;
            token = Some(utf16_string(bytes).map_err(|e| bad("FEDAUTH feature", e))?);
        }
    }
    Ok(token)
}

/// Skip ALL_HEADERS (a total length that includes itself).
fn skip_all_headers(payload: &[u8], what: &'static str) -> Result<usize> {
    let mut r = Reader::new(payload, what);
    let total = r.u32()? as usize;
    if total < 4 || total > payload.len() {
        return Err(bad(what, "bad ALL_HEADERS length"));
    }
    Ok(total)
}

pub(crate) fn decode_sql_batch(payload: &[u8]) -> Result<String> {
    let start = skip_all_headers(payload, "SQL batch")?;
    utf16_string(&payload[start..]).map_err(|e| bad("SQL batch", e))
}

/// A decoded parameter value of an RPC call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    /// tinyint values (unsigned).
    TinyInt(u8),
    Bit(bool),
    Float(f64),
    Real(f32),
    /// Unscaled value, precision, scale.
    Decimal(i128, u8, u8),
    String(String),
    Binary(Vec<u8>),
    /// Days since 0001-01-01.
    Date(i64),
    /// Nanoseconds since midnight.
    Time(u64),
    /// Days since 0001-01-01 and nanoseconds since midnight.
    DateTime(i64, u64),
    /// UTC days since 0001-01-01, UTC nanoseconds since midnight, offset in minutes.
    DateTimeOffset(i64, u64, i16),
    Guid(String),
}

/// One RPC parameter.
#[derive(Debug, Clone)]
pub(crate) struct RpcParam {
    pub name: String,
    pub ty: Option<SqlType>,
    pub value: Value,
}

/// One RPC call.
#[derive(Debug)]
pub(crate) struct RpcCall {
    /// `Some(id)` for a well-known procedure id (10 = sp_executesql).
    pub proc_id: Option<u16>,
    pub proc_name: Option<String>,
    pub params: Vec<RpcParam>,
}

pub(crate) fn decode_rpc(payload: &[u8]) -> Result<Vec<RpcCall>> {
    let start = skip_all_headers(payload, "RPC")?;
    let mut r = Reader::new(&payload[start..], "RPC");
    let mut calls = Vec::new();
    loop {
        let name_len = r.u16()?;
        let (proc_id, proc_name) = if name_len == 0xFFFF {
            (Some(r.u16()?), None)
        } else {
            (None, Some(r.utf16(usize::from(name_len))?))
        };
        let _options = r.u16()?;
        let mut params = Vec::new();
        while !r.is_empty() {
            // Batch separator between RPC calls (0x80 in TDS 7.2+, 0xFF before).
            if matches!(r.data[r.pos], 0x80 | 0xFF) {
                break;
            }
            params.push(decode_param(&mut r)?);
        }
        calls.push(RpcCall {
            proc_id,
            proc_name,
            params,
        });
        if r.is_empty() {
            break;
        }
        r.u8()?;
        if r.is_empty() {
            break;
        }
    }
    Ok(calls)
}

fn decode_param(r: &mut Reader<'_>) -> Result<RpcParam> {
    let name_len = usize::from(r.u8()?);
    let name = r.utf16(name_len)?;
    let _status = r.u8()?;
    let ty = r.u8()?;
    let (sql_type, value) = decode_typed_value(r, ty)?;
    Ok(RpcParam {
        name,
        ty: sql_type,
        value,
    })
}

/// Read TYPE_INFO (after its type byte) and the value that follows it.
fn decode_typed_value(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    Ok(match ty {
        0x1F => (None, Value::Null),
        // Fixed-length types.
        0x30 => (Some(SqlType::TinyInt), Value::TinyInt(r.u8()?)),
        0x32 => (Some(SqlType::Bit), Value::Bit(r.u8()? != 0)),
        0x34 => (Some(SqlType::SmallInt), Value::Int(le_int(r.take(2)?))),
        0x38 => (Some(SqlType::Int), Value::Int(le_int(r.take(4)?))),
        0x7F => (Some(SqlType::BigInt), Value::Int(le_int(r.take(8)?))),
        0x3B => (
            Some(SqlType::Real),
            Value::Real(f32::from_le_bytes(
                r.take(4)?.try_into().map_err(|_| bad(what, "real"))?,
            )),
        ),
        0x3E => (
            Some(SqlType::Float),
            Value::Float(f64::from_le_bytes(
                r.take(8)?.try_into().map_err(|_| bad(what, "float"))?,
            )),
        ),
        0x3C => (Some(SqlType::Money), money(r.take(8)?)),
        0x7A => (Some(SqlType::SmallMoney), money(r.take(4)?)),
        0x3D => (Some(SqlType::DateTime), datetime(r.take(8)?)),
        0x3A => (Some(SqlType::SmallDateTime), datetime(r.take(4)?)),
        // Nullable fixed-size types: max length, then a length-prefixed value.
        0x26 | 0x68 | 0x6D | 0x6E | 0x6F | 0x24 => decode_nullable_fixed(r, ty)?,
        0x6A | 0x6C => decode_decimal(r, ty)?,
        0x28 => decode_date(r)?,
        0x29..=0x2B => decode_time(r, ty)?,
        // Character and binary types with a two-byte max length.
        0xA7 | 0xAF | 0xE7 | 0xEF | 0xA5 | 0xAD => decode_short_text(r, ty)?,
        0xF1 => decode_xml(r)?,
        0x23 | 0x63 | 0x22 => decode_long_text(r, ty)?,
        other => {
            return Err(bad(
                what,
                format!("unsupported parameter type 0x{other:02X}"),
            ));
        }
    })
}

/// A little-endian signed integer of 1 to 8 bytes, sign-extended.
fn le_int(bytes: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a[..bytes.len()].copy_from_slice(bytes);
    let v = i64::from_le_bytes(a);
    let shift = 64 - 8 * bytes.len() as u32;
    if shift == 64 {
        0
    } else {
        (v << shift) >> shift
    }
}

/// Nullable fixed-size types: max length, then a length-prefixed value.
fn decode_nullable_fixed(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let max = r.u8()?;
    let len = usize::from(r.u8()?);
    let sql_type = match (ty, max) {
        (0x26, 1) => SqlType::TinyInt,
        (0x26, 2) => SqlType::SmallInt,
        (0x26, 4) => SqlType::Int,
        (0x26, _) => SqlType::BigInt,
        (0x68, _) => SqlType::Bit,
        (0x6D, 4) => SqlType::Real,
        (0x6D, _) => SqlType::Float,
        (0x6E, 4) => SqlType::SmallMoney,
        (0x6E, _) => SqlType::Money,
        (0x6F, 4) => SqlType::SmallDateTime,
        (0x6F, _) => SqlType::DateTime,
        _ => SqlType::UniqueIdentifier,
    };
    if len == 0 {
        return Ok((Some(sql_type), Value::Null));
    }
    let valid = match ty {
        0x26 => matches!(len, 1 | 2 | 4 | 8),
        0x68 => len == 1,
        0x24 => len == 16,
        _ => matches!(len, 4 | 8),
    };
    if !valid {
        return Err(bad(what, format!("length {len} for type 0x{ty:02X}")));
    }
    let bytes = r.take(len)?;
    let value = match sql_type {
        SqlType::TinyInt if len == 1 => Value::TinyInt(bytes[0]),
        SqlType::TinyInt | SqlType::SmallInt | SqlType::Int | SqlType::BigInt => {
            Value::Int(le_int(bytes))
        }
        SqlType::Bit => Value::Bit(bytes[0] != 0),
        SqlType::Real | SqlType::Float if len == 4 => Value::Real(f32::from_le_bytes(
            bytes.try_into().map_err(|_| bad(what, "real"))?,
        )),
        SqlType::Real | SqlType::Float => Value::Float(f64::from_le_bytes(
            bytes.try_into().map_err(|_| bad(what, "float"))?,
        )),
        SqlType::Money | SqlType::SmallMoney => money(bytes),
        SqlType::DateTime | SqlType::SmallDateTime => datetime(bytes),
        _ => {
            let mut b: [u8; 16] = bytes.try_into().map_err(|_| bad(what, "guid"))?;
            reorder_guid(&mut b);
            Value::Guid(format_guid(&b))
        }
    };
    Ok((Some(sql_type), value))
}

/// DECIMAL / NUMERIC: max length, precision, scale, then sign and magnitude.
fn decode_decimal(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let _max = r.u8()?;
    let precision = r.u8()?;
    let scale = r.u8()?;
    let sql_type = if ty == 0x6A {
        SqlType::Decimal { precision, scale }
    } else {
        SqlType::Numeric { precision, scale }
    };
    let len = usize::from(r.u8()?);
    if len == 0 {
        return Ok((Some(sql_type), Value::Null));
    }
    let bytes = r.take(len)?;
    let mut magnitude = [0u8; 16];
    let m = &bytes[1..];
    if m.len() > 16 {
        return Err(bad(what, "decimal too long"));
    }
    magnitude[..m.len()].copy_from_slice(m);
    let magnitude = i128::try_from(u128::from_le_bytes(magnitude))
        .map_err(|_| bad(what, "decimal magnitude"))?;
    let v = if bytes[0] == 0 { -magnitude } else { magnitude };
    Ok((Some(sql_type), Value::Decimal(v, precision, scale)))
}

/// DATE: a length, then three bytes of days.
fn decode_date(r: &mut Reader<'_>) -> Result<(Option<SqlType>, Value)> {
    let len = r.u8()?;
    if len == 0 {
        return Ok((Some(SqlType::Date), Value::Null));
    }
    Ok((Some(SqlType::Date), Value::Date(le_uint(r.take(3)?) as i64)))
}

/// TIME, DATETIME2, DATETIMEOFFSET: scale, length, time increments, then days (and an offset).
fn decode_time(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let scale = r.u8()?;
    let len = usize::from(r.u8()?);
    let sql_type = match ty {
        0x29 => SqlType::Time { scale },
        0x2A => SqlType::DateTime2 { scale },
        _ => SqlType::DateTimeOffset { scale },
    };
    if len == 0 {
        return Ok((Some(sql_type), Value::Null));
    }
    let bytes = r.take(len)?;
    let tlen = usize::from(crate::encode::time_len(scale));
    if bytes.len() < tlen {
        return Err(bad(what, "time value too short"));
    }
    let increments = le_uint(&bytes[..tlen]);
    let ns = increments * 10u64.pow(9 - u32::from(scale.min(7)));
    let value = match ty {
        0x29 => Value::Time(ns),
        0x2A if bytes.len() >= tlen + 3 => {
            Value::DateTime(le_uint(&bytes[tlen..tlen + 3]) as i64, ns)
        }
        0x2B if bytes.len() >= tlen + 5 => {
            let offset = i16::from_le_bytes([bytes[tlen + 3], bytes[tlen + 4]]);
            Value::DateTimeOffset(le_uint(&bytes[tlen..tlen + 3]) as i64, ns, offset)
        }
        _ => return Err(bad(what, "date/time value too short")),
    };
    Ok((Some(sql_type), value))
}

/// Character and binary types with a two-byte max length (or PLP for MAX).
fn decode_short_text(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let max = r.u16()?;
    let has_collation = matches!(ty, 0xA7 | 0xAF | 0xE7 | 0xEF);
    if has_collation {
        r.take(5)?;
    }
    let sized = (max != 0xFFFF).then_some(max);
    let sql_type = match ty {
        0xA7 => SqlType::VarChar(sized),
        0xAF => SqlType::Char(max),
        0xE7 => SqlType::NVarChar(sized.map(|m| m / 2)),
        0xEF => SqlType::NChar(max / 2),
        0xA5 => SqlType::VarBinary(sized),
        _ => SqlType::Binary(max),
    };
    let bytes = if max == 0xFFFF {
        read_plp(r)?
    } else {
        let len = r.u16()?;
        if len == 0xFFFF {
            None
        } else {
            Some(r.take(usize::from(len))?.to_vec())
        }
    };
    let Some(bytes) = bytes else {
        return Ok((Some(sql_type), Value::Null));
    };
    let value = match ty {
        0xA7 | 0xAF => Value::String(cp1252_decode(&bytes)),
        0xE7 | 0xEF => Value::String(utf16_string(&bytes).map_err(|e| bad(what, e))?),
        _ => Value::Binary(bytes),
    };
    Ok((Some(sql_type), value))
}

/// XML: optional schema names, then a PLP UTF-16 value.
fn decode_xml(r: &mut Reader<'_>) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let schema = r.u8()?;
    if schema != 0 {
        let db = usize::from(r.u8()?);
        r.utf16(db)?;
        let owner = usize::from(r.u8()?);
        r.utf16(owner)?;
        let coll = usize::from(r.u16()?);
        r.utf16(coll)?;
    }
    Ok(match read_plp(r)? {
        None => (Some(SqlType::Xml), Value::Null),
        Some(bytes) => {
            let bytes = bytes.strip_prefix(&[0xFF, 0xFE]).unwrap_or(&bytes);
            (
                Some(SqlType::Xml),
                Value::String(utf16_string(bytes).map_err(|e| bad(what, e))?),
            )
        }
    })
}

/// TEXT, NTEXT, IMAGE: four-byte lengths and a collation for text.
fn decode_long_text(r: &mut Reader<'_>, ty: u8) -> Result<(Option<SqlType>, Value)> {
    let what = r.what;
    let _max = r.u32()?;
    if ty != 0x22 {
        r.take(5)?;
    }
    let sql_type = match ty {
        0x23 => SqlType::Text,
        0x63 => SqlType::NText,
        _ => SqlType::VarBinary(None),
    };
    let len = r.u32()?;
    if len == 0xFFFF_FFFF {
        return Ok((Some(sql_type), Value::Null));
    }
    let bytes = r.take(len as usize)?;
    let value = match ty {
        0x23 => Value::String(cp1252_decode(bytes)),
        0x63 => Value::String(utf16_string(bytes).map_err(|e| bad(what, e))?),
        _ => Value::Binary(bytes.to_vec()),
    };
    Ok((Some(sql_type), value))
}

fn le_uint(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(a)
}

fn money(bytes: &[u8]) -> Value {
    let v: i64 = if bytes.len() == 4 {
        i64::from(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    } else {
        let hi = i64::from(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        let lo = i64::from(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
        (hi << 32) | lo
    };
    Value::Decimal(i128::from(v), if bytes.len() == 4 { 10 } else { 19 }, 4)
}

/// DATETIME (days since 1900, 1/300 s ticks) or SMALLDATETIME (days, minutes).
fn datetime(bytes: &[u8]) -> Value {
    const DAYS_CE_TO_1900: i64 = 693_595;
    if bytes.len() == 4 {
        let days = i64::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        let minutes = u64::from(u16::from_le_bytes([bytes[2], bytes[3]]));
        Value::DateTime(days + DAYS_CE_TO_1900, minutes * 60_000_000_000)
    } else {
        let days = i64::from(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        let ticks = u64::from(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
        Value::DateTime(days + DAYS_CE_TO_1900, ticks * 1_000_000_000 / 300)
    }
}

/// PLP value: total length (all ones = NULL), then chunks up to a zero-length terminator.
fn read_plp(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>> {
    let total = r.u64()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let chunk = r.u32()? as usize;
        if chunk == 0 {
            break;
        }
        out.extend_from_slice(r.take(chunk)?);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelogin_response_is_decodable() {
        let out = encode_prelogin_response(0x00, Some(true));
        let decoded = decode_prelogin(&out).unwrap();
        assert_eq!(decoded.encryption, 0x00);
        assert_eq!(decoded.fed_auth_required, Some(true));
    }

    #[test]
    fn signed_le_ints() {
        let mut payload = vec![0x26, 2, 2];
        payload.extend_from_slice(&(-5i16).to_le_bytes());
        let mut r = Reader::new(&payload, "test");
        let ty = r.u8().unwrap();
        let (_, v) = decode_typed_value(&mut r, ty).unwrap();
        assert_eq!(v, Value::Int(-5));
    }
}
