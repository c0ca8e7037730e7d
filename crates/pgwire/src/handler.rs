//! The simple and extended query protocols over a connection's medlake session.

use medlake_common::Code;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Sink, SinkExt, Stream, StreamExt, stream};
use medlake_engine::{Output, Statement};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{
    Close, CloseComplete, Execute, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::startup::ParameterStatus;
use pgwire::types::format::FormatOptions;
use tracing::debug;

use crate::ahead::ahead;
use crate::commands::{self, Command, CopyOut};
use crate::connection::{Connection, Query};
use crate::encode::{CopyFormat, Encoder, Style};
use crate::error::{engine_error, stream_error, user_error};

/// A statement as the server keeps it between Parse and Execute.
#[derive(Clone, Debug)]
pub struct Prepared {
    kind: Kind,
    /// The types of `$1`, `$2`, ...: what the client declared, else what we inferred.
    parameters: Vec<Type>,
    /// Their Arrow types, for decoding.
    parameter_types: Vec<Option<DataType>>,
    /// The columns of its rows; `None` for a command.
    columns: Option<SchemaRef>,
}

#[derive(Clone, Debug)]
enum Kind {
    Engine(Statement),
    Command(Command),
}

/// The query handlers (one for the whole server; per-connection state is in the client's
/// session extensions).
pub struct Queries {
    parser: Arc<Parser>,
    /// Named prepared statements one connection may hold.
    max_prepared: usize,
}

impl Queries {
    pub(crate) fn new(max_prepared: usize) -> Self {
        Self {
            parser: Arc::new(Parser),
            max_prepared,
        }
    }
}

pub struct Parser;

fn connection<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Connection>> {
    client
        .session_extensions()
        .get::<Arc<Connection>>()
        .map(|c| (*c).clone())
        .ok_or_else(|| {
            user_error(
                Code::ProtocolViolation,
                "the connection is not authenticated",
            )
        })
}

fn format_options(connection: &Connection) -> Arc<FormatOptions> {
    let settings = connection.settings();
    let metadata: HashMap<String, String> = settings.values.into_iter().collect();
    Arc::new(FormatOptions::from_client_metadata(&metadata))
}

/// Recognizes and describes one statement.
async fn prepare(
    connection: &Connection,
    text: &str,
    declared: &[Option<Type>],
    describe: bool,
) -> PgWireResult<Prepared> {
    if let Some(command) = commands::parse(text)? {
        let columns = match &command {
            Command::Show(name) => Some(text_schema(&[name.as_str()])),
            Command::ShowAll => Some(text_schema(&["name", "setting", "description"])),
            _ => None,
        };
        return Ok(Prepared {
            kind: Kind::Command(command),
            parameters: Vec::new(),
            parameter_types: Vec::new(),
            columns,
        });
    }
    let mut statements = connection
        .session
        .parse(text)
        .map_err(|e| engine_error(&e))?;
    if statements.len() > 1 {
        return Err(user_error(
            Code::SyntaxError,
            "cannot insert multiple commands into a prepared statement",
        ));
    }
    let statement = statements
        .pop()
        .ok_or_else(|| user_error(Code::SyntaxError, "empty statement"))?;
    if !describe {
        return Ok(Prepared {
            kind: Kind::Engine(statement),
            parameters: Vec::new(),
            parameter_types: Vec::new(),
            columns: None,
        });
    }
    let description = connection
        .session
        .describe(&statement)
        .await
        .map_err(|e| engine_error(&e))?;
    let count = description.parameters.len().max(declared.len());
    let mut parameters = Vec::with_capacity(count);
    let mut parameter_types = Vec::with_capacity(count);
    for i in 0..count {
        let inferred = description.parameters.get(i).cloned().flatten();
        let declared = declared
            .get(i)
            .cloned()
            .flatten()
            .filter(|t| *t != Type::UNKNOWN);
        let wire = match (&declared, &inferred) {
            (Some(t), _) => t.clone(),
            (None, Some(dt)) => into_pg_type(dt).unwrap_or(Type::TEXT),
            (None, None) => Type::TEXT,
        };
        parameter_types.push(Some(inferred.unwrap_or(DataType::Utf8)));
        parameters.push(wire);
    }
    Ok(Prepared {
        kind: Kind::Engine(statement),
        parameters,
        parameter_types,
        columns: description.columns,
    })
}

fn text_schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

fn text_rows(names: &[&str], rows: Vec<Vec<String>>) -> PgWireResult<SendableRecordBatchStream> {
    let schema = text_schema(names);
    let columns = (0..names.len())
        .map(|i| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r[i].clone()),
            )) as arrow::array::ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| user_error(Code::Internal, e.to_string()))?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        stream::iter([Ok(batch)]),
    )))
}

/// Binds parameter values into a statement (the engine's binder: typed literals in the
/// syntax tree, never text).
/// A stream of batches that stops at a CancelRequest or at the statement's deadline.
fn guarded(
    connection: Arc<Connection>,
    query: Query,
    stream: SendableRecordBatchStream,
) -> impl Stream<Item = PgWireResult<RecordBatch>> + Send {
    stream::unfold(Some(stream), move |state| {
        let connection = connection.clone();
        async move {
            let mut stream = state?;
            let next = {
                let item = stream.next();
                let stopped = connection.stopped(&query);
                tokio::pin!(item, stopped);
                tokio::select! {
                    item = &mut item => Ok(item),
                    stop = &mut stopped => Err(stop),
                }
            };
            match next {
                Ok(None) => None,
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(stream_error(e)), None)),
                Err(stop) => Some((Err(stop.error()), None)),
            }
        }
    })
}

/// The Arrow type a column travels as: `Int8` (TINYINT) is sent as `int2`, which is what
/// arrow-pg announces for it (it would write one byte, which no client can read as int2).
fn wire_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int8 => Some(DataType::Int16),
        DataType::List(f) => wire_type(f.data_type())
            .map(|inner| DataType::List(Arc::new(f.as_ref().clone().with_data_type(inner)))),
        DataType::LargeList(f) => wire_type(f.data_type())
            .map(|inner| DataType::LargeList(Arc::new(f.as_ref().clone().with_data_type(inner)))),
        _ => None,
    }
}

/// The schema as it travels, if it differs.
fn wire_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if schema
        .fields()
        .iter()
        .all(|f| wire_type(f.data_type()).is_none())
    {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match wire_type(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// A result stream with every column in its wire type.
fn to_wire(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let Some(schema) = wire_schema(&stream.schema()) else {
        return stream;
    };
    let target = schema.clone();
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        stream.map(move |batch| {
            let batch = batch?;
            let columns = batch
                .columns()
                .iter()
                .zip(target.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(target.clone(), columns)?)
        }),
    ))
}

fn rows_response(
    connection: &Arc<Connection>,
    query: Query,
    stream: SendableRecordBatchStream,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let stream = to_wire(stream);
    let schema = stream.schema();
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &schema,
        format,
        Some(format_options(connection)),
    )?);
    let encode = fields.clone();
    let style = Style::from_settings(&connection.settings().values);
    let rows = ahead(
        guarded(connection.clone(), query, stream),
        move |batch: RecordBatch| -> Vec<PgWireResult<DataRow>> {
            match Encoder::new(&encode, &batch) {
                Some(encoder) => encoder.data_rows(&style).into_iter().map(Ok).collect(),
                None => encode_recordbatch(encode.clone(), batch).collect(),
            }
        },
    );
    Ok(QueryResponse::new(fields, rows))
}

/// The command tag of an engine command (`INSERT 0 5`) for pgwire.
fn tag(text: &str) -> Tag {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["INSERT", oid, rows] => match (oid.parse(), rows.parse()) {
            (Ok(oid), Ok(rows)) => Tag::new("INSERT").with_oid(oid).with_rows(rows),
            _ => Tag::new(text),
        },
        [command, rows] if rows.chars().all(|c| c.is_ascii_digit()) => match rows.parse() {
            Ok(rows) => Tag::new(command).with_rows(rows),
            Err(_) => Tag::new(text),
        },
        _ => Tag::new(text),
    }
}

/// Runs one statement.
async fn run<C>(
    client: &mut C,
    connection: &Arc<Connection>,
    prepared: &Prepared,
    values: Vec<datafusion::scalar::ScalarValue>,
    format: &Format,
) -> PgWireResult<Response>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match &prepared.kind {
        Kind::Command(command) => {
            let result = run_command(client, connection, command, format).await;
            audit_command(connection, command, &result)?;
            result
        }
        Kind::Engine(statement) => {
            let query = connection.begin_query();
            let output = {
                let execute = connection.session.execute_bound(statement, values);
                let stopped = connection.stopped(&query);
                tokio::pin!(execute, stopped);
                tokio::select! {
                    output = &mut execute => output.map_err(|e| engine_error(&e))?,
                    stop = &mut stopped => return Err(stop.error()),
                }
            };
            match output {
                Output::Rows(stream) => Ok(Response::Query(rows_response(
                    connection, query, stream, format,
                )?)),
                Output::Command { tag: text, rows } => {
                    if client.transaction_status()
                        == pgwire::messages::response::TransactionStatus::Transaction
                    {
                        connection
                            .wrote_in_transaction
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    // As Postgres: CREATE MATERIALIZED VIEW ... AS reports `SELECT n`.
                    if text == "CREATE MATERIALIZED VIEW" {
                        return Ok(Response::Execution(
                            Tag::new("SELECT")
                                .with_rows(usize::try_from(rows).unwrap_or(usize::MAX)),
                        ));
                    }
                    Ok(Response::Execution(tag(&text)))
                }
            }
        }
    }
}

/// Puts a statement this door answered itself in the audit (COPY's query is the engine's,
/// audited there).
fn audit_command(
    connection: &Connection,
    command: &Command,
    result: &PgWireResult<Response>,
) -> PgWireResult<()> {
    let text = match command {
        Command::Copy(_) | Command::EngineSet => return Ok(()),
        Command::Set { name, values } => format!(
            "SET {name} = {}",
            values.iter().map(|_| "'?'").collect::<Vec<_>>().join(", ")
        ),
        Command::Show(name) => format!("SHOW {name}"),
        Command::ShowAll => "SHOW ALL".into(),
        Command::Reset(name) => format!("RESET {name}"),
        Command::ResetAll => "RESET ALL".into(),
        Command::DiscardAll => "DISCARD ALL".into(),
        Command::Begin => "BEGIN".into(),
        Command::Commit => "COMMIT".into(),
        Command::Rollback => "ROLLBACK".into(),
        Command::Savepoint(tag) => (*tag).to_string(),
        Command::Deallocate(_) => "DEALLOCATE".into(),
        Command::Ignored(tag) => (*tag).to_string(),
    };
    let failed = result
        .as_ref()
        .err()
        .map(|_| medlake_common::Code::InvalidParameterValue);
    connection
        .session
        .audit_door_statement(&text, failed)
        .map_err(|e| crate::error::engine_error(&e))
}

async fn run_command<C>(
    client: &mut C,
    connection: &Arc<Connection>,
    command: &Command,
    format: &Format,
) -> PgWireResult<Response>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use std::sync::atomic::Ordering;
    let response = match command {
        Command::Set { name, values } => {
            if let Some((reported, value)) = commands::set(connection, name, values)? {
                client
                    .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                        reported.to_owned(),
                        value,
                    )))
                    .await?;
            }
            Response::Execution(Tag::new("SET"))
        }
        Command::EngineSet => unreachable!("engine SET runs as an engine statement"),
        Command::Show(name) => {
            let value = commands::show(connection, name)?;
            let query = connection.begin_query();
            Response::Query(rows_response(
                connection,
                query,
                text_rows(&[name.as_str()], vec![vec![value]])?,
                format,
            )?)
        }
        Command::ShowAll => Response::Query(show_all(connection, format)?),
        Command::Reset(name) => {
            commands::reset(connection, name)?;
            Response::Execution(Tag::new("RESET"))
        }
        Command::ResetAll => {
            commands::reset_all(connection)?;
            Response::Execution(Tag::new("RESET"))
        }
        Command::DiscardAll => {
            commands::reset_all(connection)?;
            connection.session.unlisten_all();
            client.portal_store().clear_portals();
            connection
                .wrote_in_transaction
                .store(false, Ordering::SeqCst);
            Response::Execution(Tag::new("DISCARD ALL"))
        }
        Command::Begin => {
            connection
                .wrote_in_transaction
                .store(false, Ordering::SeqCst);
            Response::TransactionStart(Tag::new("BEGIN"))
        }
        Command::Commit => {
            connection
                .wrote_in_transaction
                .store(false, Ordering::SeqCst);
            Response::TransactionEnd(Tag::new("COMMIT"))
        }
        Command::Rollback => {
            warn_if_wrote(client, connection).await?;
            Response::TransactionEnd(Tag::new("ROLLBACK"))
        }
        Command::Savepoint(tag) => Response::Execution(Tag::new(tag)),
        Command::Deallocate(name) => {
            let names = match name {
                Some(name) => vec![name.clone()],
                None => {
                    client.portal_store().clear_portals();
                    connection.prepared_names()
                }
            };
            for name in names {
                client.portal_store().rm_statement(&name);
                connection.prepared_removed(&name);
            }
            Response::Execution(Tag::new("DEALLOCATE"))
        }
        Command::Ignored(tag) => Response::Execution(Tag::new(tag)),
        Command::Copy(copy) => copy_out(connection, copy).await?,
    };
    Ok(response)
}

/// `SHOW ALL`: every setting of the connection.
fn show_all(connection: &Arc<Connection>, format: &Format) -> PgWireResult<QueryResponse> {
    let settings = connection.settings();
    let rows = settings
        .values
        .iter()
        .map(|(k, v)| {
            let v = if k == "search_path" {
                format!("\"$user\", {}", connection.session.default_schema())
            } else {
                v.clone()
            };
            vec![k.clone(), v, String::new()]
        })
        .collect();
    let query = connection.begin_query();
    rows_response(
        connection,
        query,
        text_rows(&["name", "setting", "description"], rows)?,
        format,
    )
}

/// A `ROLLBACK` after a write in `BEGIN ...` warns that nothing was undone.
async fn warn_if_wrote<C>(client: &mut C, connection: &Connection) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if connection
        .wrote_in_transaction
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        let mut notice = pgwire::error::ErrorInfo::new(
            "WARNING".to_owned(),
            Code::Warning.sqlstate().to_owned(),
            "ROLLBACK does not undo writes: every medlake statement commits on its own".to_owned(),
        );
        notice.hint =
            Some("use time travel (VERSION AS OF) to read the table as it was before".into());
        client
            .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                notice,
            )))
            .await?;
    }
    Ok(())
}

/// `COPY (query) TO STDOUT`: the rows as text or CSV, one CopyData per row, streamed.
async fn copy_out(connection: &Arc<Connection>, copy: &CopyOut) -> PgWireResult<Response> {
    let mut statements = connection
        .session
        .parse(&copy.query)
        .map_err(|e| engine_error(&e))?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        _ => {
            return Err(user_error(
                Code::SyntaxError,
                "COPY takes exactly one query",
            ));
        }
    };
    // Checked before anything runs: a command inside COPY (...) never executes.
    if !statement.is_query() {
        // A principal without the privilege hears 42501 first (planned, not run).
        connection
            .session
            .describe(&statement)
            .await
            .map_err(|e| engine_error(&e))?;
        return Err(user_error(
            Code::SyntaxError,
            "COPY (...) TO STDOUT takes a query (SELECT, VALUES, WITH ... SELECT)",
        ));
    }
    let query = connection.begin_query();
    let output = connection
        .session
        .execute(statement)
        .await
        .map_err(|e| engine_error(&e))?;
    let Output::Rows(stream) = output else {
        return Err(user_error(
            Code::SyntaxError,
            "COPY needs a query that returns rows",
        ));
    };
    let stream = to_wire(stream);
    let schema = stream.schema();
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &schema,
        &Format::UnifiedText,
        Some(format_options(connection)),
    )?);
    let columns = fields.len();
    let header = copy.header.then(|| {
        let names: Vec<Option<Vec<u8>>> = schema
            .fields()
            .iter()
            .map(|f| Some(f.name().as_bytes().to_vec()))
            .collect();
        Ok(CopyData::new(copy_line(&names, copy)))
    });
    let options = copy.clone();
    let encode = fields.clone();
    let style = Style::from_settings(&connection.settings().values);
    let rows = ahead(
        guarded(connection.clone(), query, stream),
        move |batch: RecordBatch| -> Vec<PgWireResult<CopyData>> {
            match Encoder::new(&encode, &batch) {
                // One CopyData per batch: clients read COPY data as a byte stream.
                Some(encoder) => {
                    let mut delimiter = [0u8; 4];
                    let format = CopyFormat {
                        csv: options.csv,
                        delimiter: options.delimiter.encode_utf8(&mut delimiter).as_bytes(),
                        null: options.null.as_bytes(),
                    };
                    let mut out = BytesMut::with_capacity(batch.num_rows() * 64);
                    encoder.copy_lines(&style, &format, &mut out);
                    vec![Ok(CopyData::new(out.freeze()))]
                }
                None => encode_recordbatch(encode.clone(), batch)
                    .map(|row| Ok(CopyData::new(copy_line(&row_fields(&row?), &options))))
                    .collect(),
            }
        },
    );
    let data = stream::iter(header).chain(rows);
    Ok(Response::CopyOut(CopyResponse::new(0, columns, data)))
}

/// The fields of a text-format DataRow (`None` is NULL).
fn row_fields(row: &DataRow) -> Vec<Option<Vec<u8>>> {
    let mut fields = Vec::with_capacity(usize::try_from(row.field_count).unwrap_or(0));
    let data = &row.data[..];
    let mut at = 0usize;
    for _ in 0..row.field_count {
        if at + 4 > data.len() {
            break;
        }
        let len = i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        at += 4;
        if len < 0 {
            fields.push(None);
        } else {
            let len = usize::try_from(len).unwrap_or(0);
            fields.push(Some(data[at..at + len].to_vec()));
            at += len;
        }
    }
    fields
}

/// One COPY line in text or CSV format, with its newline.
fn copy_line(fields: &[Option<Vec<u8>>], copy: &CopyOut) -> Bytes {
    let mut line = BytesMut::new();
    let mut delimiter = [0u8; 4];
    let delimiter = copy
        .delimiter
        .encode_utf8(&mut delimiter)
        .as_bytes()
        .to_vec();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.put_slice(&delimiter);
        }
        match field {
            None => line.put_slice(copy.null.as_bytes()),
            Some(value) if copy.csv => {
                let needs_quotes = value.is_empty()
                    || value.as_slice() == copy.null.as_bytes()
                    || value
                        .iter()
                        .any(|b| *b == b'"' || *b == b'\n' || *b == b'\r')
                    || value
                        .windows(delimiter.len())
                        .any(|w| w == delimiter.as_slice());
                if needs_quotes {
                    line.put_u8(b'"');
                    for b in value {
                        if *b == b'"' {
                            line.put_u8(b'"');
                        }
                        line.put_u8(*b);
                    }
                    line.put_u8(b'"');
                } else {
                    line.put_slice(value);
                }
            }
            Some(value) => {
                for b in value {
                    match b {
                        b'\\' => line.put_slice(b"\\\\"),
                        b'\n' => line.put_slice(b"\\n"),
                        b'\r' => line.put_slice(b"\\r"),
                        b'\t' if copy.delimiter == '\t' => line.put_slice(b"\\t"),
                        b if delimiter.len() == 1 && *b == delimiter[0] => {
                            line.put_u8(b'\\');
                            line.put_u8(*b);
                        }
                        b => line.put_u8(*b),
                    }
                }
            }
        }
    }
    line.put_u8(b'\n');
    line.freeze()
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        // Not the text: it may hold patient identifiers (the audit keeps it normalized).
        debug!(user = %connection.user, bytes = query.len(), "simple query");
        let texts = connection
            .session
            .split(query)
            .map_err(|e| engine_error(&e))?;
        let mut responses = Vec::with_capacity(texts.len());
        for text in texts {
            // A failing statement ends the query string, as in Postgres; what ran before
            // it keeps its results.
            let outcome = async {
                let prepared = prepare(&connection, &text, &[], false).await?;
                if let Kind::Command(Command::EngineSet) = prepared.kind {
                    let statement = connection
                        .session
                        .parse(&text)
                        .map_err(|e| engine_error(&e))?
                        .pop()
                        .ok_or_else(|| user_error(Code::SyntaxError, "empty statement"))?;
                    connection
                        .session
                        .execute(statement)
                        .await
                        .map_err(|e| engine_error(&e))?;
                    return Ok(Response::Execution(Tag::new("SET")));
                }
                run(
                    client,
                    &connection,
                    &prepared,
                    Vec::new(),
                    &Format::UnifiedText,
                )
                .await
            }
            .await;
            match outcome {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let connection = connection(client)?;
        debug!(user = %connection.user, bytes = sql.len(), "parse");
        let texts = connection
            .session
            .split(sql)
            .map_err(|e| engine_error(&e))?;
        match texts.as_slice() {
            [] => Ok(None),
            [text] => {
                let mut prepared = prepare(&connection, text, types, true).await?;
                if let Kind::Command(Command::EngineSet) = prepared.kind {
                    let statement = connection
                        .session
                        .parse(text)
                        .map_err(|e| engine_error(&e))?
                        .pop()
                        .ok_or_else(|| user_error(Code::SyntaxError, "empty statement"))?;
                    prepared.kind = Kind::Engine(statement);
                }
                Ok(Some(prepared))
            }
            _ => Err(user_error(
                Code::SyntaxError,
                "cannot insert multiple commands into a prepared statement",
            )),
        }
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameters.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &statement.columns {
            Some(schema) => arrow_schema_to_pg_fields(
                &wire_schema(schema).unwrap_or_else(|| schema.clone()),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// As pgwire's, but a connection holds at most `max_prepared` named statements: a client
    /// that never closes them cannot grow the server's memory without bound.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let name = message
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let named = name != DEFAULT_NAME;
        if named
            && client.portal_store().get_statement(&name).is_none()
            && connection.prepared_count() >= self.max_prepared
        {
            return Err(user_error(
                Code::ProgramLimitExceeded,
                format!(
                    "too many prepared statements on this connection (at most {}): close or DEALLOCATE some",
                    self.max_prepared
                ),
            ));
        }
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if named {
            connection.prepared_added(&name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// As pgwire's, but a result without a row limit is streamed as it is produced instead
    /// of collected first (`crate::execute`).
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::execute::execute(self, client, message).await
    }

    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                connection(client)?.prepared_removed(name);
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client
            .send(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let prepared = &portal.statement.statement;
        let values = if portal.parameters.is_empty() {
            Vec::new()
        } else {
            let inferred: Vec<Option<&DataType>> = prepared
                .parameter_types
                .iter()
                .map(Option::as_ref)
                .collect();
            let wire: Vec<Option<&Type>> = prepared.parameters.iter().map(Some).collect();
            match arrow_pg::datatypes::df::deserialize_parameters_with_server_types(
                portal, &inferred, &wire,
            )? {
                datafusion::common::ParamValues::List(values) => {
                    values.into_iter().map(|v| v.value).collect()
                }
                datafusion::common::ParamValues::Map(_) => {
                    return Err(user_error(
                        Code::ProtocolViolation,
                        "named parameters are not supported",
                    ));
                }
            }
        };
        run(
            client,
            &connection,
            prepared,
            values,
            &portal.result_column_format,
        )
        .await
    }
}
