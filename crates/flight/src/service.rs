//! The Flight SQL service: metadata, queries, prepared statements, updates and ingest.

use medlake_common::Code;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_empty_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable,
    ProstMessageExt, Searchable, SqlInfo, TableExistsOption, TableNotExistOption,
    TicketStatementQuery, XdbcDataType,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use medlake_auth::Access;
use medlake_engine::{Engine, Output, Statement};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, Tokens};

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight SQL service over one engine.
#[derive(Clone)]
pub struct FlightSql {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    tokens: Tokens,
    limits: crate::Limits,
    prepared: Mutex<HashMap<Bytes, Prepared>>,
    /// Running statements by ticket, so CancelFlightInfo can stop them.
    running: Mutex<HashMap<Bytes, tokio::sync::watch::Sender<bool>>>,
}

/// A statement being streamed, registered for CancelFlightInfo until it is dropped.
struct Running {
    inner: Arc<Inner>,
    handle: Bytes,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.handle);
    }
}

/// A prepared statement: its text, parsed form, schemas, and the parameter rows bound by
/// DoPut.
#[derive(Clone)]
struct Prepared {
    user: String,
    /// When it was last used; idle ones expire (`Limits::prepared_idle`).
    used: std::time::Instant,
    statement: Statement,
    dataset: Option<SchemaRef>,
    bound: Vec<Vec<ScalarValue>>,
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "medlake");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    // No transactions: every statement is its own atomic Delta commit.
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlQuotedIdentifierCase, 1i32);
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().expect("the static SqlInfo is valid")
});

static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let mut add = |name: &str, data_type: XdbcDataType, size: Option<i32>, prefix: Option<&str>| {
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: size,
            literal_prefix: prefix.map(Into::into),
            literal_suffix: prefix.map(Into::into),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
            searchable: Searchable::Full,
            unsigned_attribute: Some(false),
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: None,
            interval_precision: None,
        });
    };
    add("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None);
    add("TINYINT", XdbcDataType::XdbcTinyint, Some(3), None);
    add("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), None);
    add("INT", XdbcDataType::XdbcInteger, Some(10), None);
    add("BIGINT", XdbcDataType::XdbcBigint, Some(19), None);
    add("REAL", XdbcDataType::XdbcReal, Some(24), None);
    add("DOUBLE", XdbcDataType::XdbcDouble, Some(53), None);
    add("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), None);
    add("VARCHAR", XdbcDataType::XdbcVarchar, None, Some("'"));
    add("BYTEA", XdbcDataType::XdbcVarbinary, None, None);
    add("DATE", XdbcDataType::XdbcDate, Some(10), Some("'"));
    add(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        Some("'"),
    );
    b.build().expect("the static type info is valid")
});

/// A medlake error as a gRPC status: its message with the SQLSTATE, and the gRPC code of
/// its kind.
fn status(e: &medlake_engine::Error) -> Status {
    let code = e.code();
    Status::new(
        grpc_code(code),
        format!("{e} (SQLSTATE {})", code.sqlstate()),
    )
}

/// The gRPC code of each failure kind (one entry per kind: a new kind must be placed here).
pub(crate) fn grpc_code(code: Code) -> tonic::Code {
    use tonic::Code as G;
    match code {
        Code::UndefinedTable
        | Code::UndefinedSchema
        | Code::UndefinedObject
        | Code::UndefinedFunction
        | Code::InvalidCatalogName
        | Code::FdwTableNotFound => G::NotFound,
        Code::InsufficientPrivilege => G::PermissionDenied,
        Code::InvalidAuthorization | Code::InvalidPassword => G::Unauthenticated,
        Code::QueryCanceled => G::Cancelled,
        Code::FeatureNotSupported => G::Unimplemented,
        Code::DuplicateTable | Code::DuplicateSchema | Code::DuplicateObject => G::AlreadyExists,
        Code::SyntaxError
        | Code::UndefinedColumn
        | Code::DatatypeMismatch
        | Code::WrongObjectType
        | Code::InvalidObjectDefinition
        | Code::DataException
        | Code::NumericValueOutOfRange
        | Code::InvalidParameterValue
        | Code::InvalidTextRepresentation
        | Code::DivisionByZero
        | Code::NotNullViolation
        | Code::UniqueViolation
        | Code::CheckViolation
        | Code::ProtocolViolation
        | Code::FdwInvalidDataType
        | Code::FdwInvalidOptionName
        | Code::FdwInvalidAttributeValue
        | Code::FdwNoSchemas => G::InvalidArgument,
        Code::CantChangeRuntimeParam
        | Code::ObjectNotInPrerequisiteState
        | Code::SerializationFailure
        | Code::DependentObjectsStillExist => G::FailedPrecondition,
        Code::OutOfMemory | Code::ProgramLimitExceeded => G::ResourceExhausted,
        Code::FdwUnableToEstablishConnection | Code::ObjectInUse | Code::AuditUnavailable => {
            G::Unavailable
        }
        Code::Warning => G::Unknown,
        Code::Internal
        | Code::IoError
        | Code::UndefinedFile
        | Code::FdwError
        | Code::FdwInvalidStringFormat => G::Internal,
    }
}

fn ipc_schema(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

/// Parses the one statement of a request. `?` placeholders (ADBC's qmark paramstyle, JDBC)
/// are numbered `$1`, `$2`, ... first, so they are described and bound as `$n` ones.
/// Text that does not parse is audited as the caller's error.
fn one_statement(session: &medlake_engine::Session, sql: &str) -> Result<Statement, Status> {
    let numbered = session
        .audit_unparsed(sql, medlake_engine::qmark_placeholders(sql))
        .map_err(|e| status(&e))?;
    let mut statements = session.parse(&numbered).map_err(|e| status(&e))?;
    match (statements.pop(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        (None, _) => Err(Status::invalid_argument("empty statement")),
        (Some(_), false) => Err(Status::invalid_argument(
            "one statement per request (found several separated by ';')",
        )),
    }
}

/// A batch with exactly the announced schema (names, nullability, metadata), which clients
/// compare with the FlightInfo's.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, Status> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|e| Status::internal(e.to_string()))?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Status::internal(e.to_string()))
}

/// A stream of Flight data for `batches` under `schema`; it ends with CANCELLED as soon as
/// `stop` turns true, even while DataFusion is still computing the next batch.
fn flight_stream(
    schema: SchemaRef,
    batches: SendableRecordBatchStream,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> FlightStream<arrow_flight::FlightData> {
    let target = schema.clone();
    let guarded = stream::unfold(Some((batches, stop)), |state| async move {
        let (mut batches, mut stop) = state?;
        let next = match stop.as_mut() {
            Some(stop) => tokio::select! {
                item = batches.next() => Some(item),
                _ = stop.wait_for(|stopped| *stopped) => None,
            },
            None => Some(batches.next().await),
        };
        match next {
            None => Some((
                Err(FlightError::Tonic(Box::new(Status::cancelled(
                    "the query was cancelled (CancelFlightInfo)",
                )))),
                None,
            )),
            Some(None) => None,
            Some(Some(batch)) => Some((
                batch.map_err(|e| FlightError::Tonic(Box::new(status(&e.into())))),
                Some((batches, stop)),
            )),
        }
    });
    let batches = guarded.map(move |batch| {
        batch.and_then(|b| conform(b, &target).map_err(|s| FlightError::Tonic(Box::new(s))))
    });
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

fn batch_stream(
    schema: SchemaRef,
    batch: Result<RecordBatch, FlightError>,
) -> FlightStream<arrow_flight::FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream::once(async move { batch }))
            .map_err(Status::from),
    )
}

fn info(
    schema: &Schema,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// The first rows of parameters sent with DoPut, as scalar values per row.
async fn parameter_rows(
    request: Request<PeekableFlightDataStream>,
    limit: usize,
) -> Result<Vec<Vec<ScalarValue>>, Status> {
    // A message with only the descriptor (arrow-flight's Rust client sends one for an update
    // without parameters) carries no data: it is not the parameters' schema.
    let flight = request
        .into_inner()
        .try_filter(|data| {
            std::future::ready(!(data.data_header.is_empty() && data.data_body.is_empty()))
        })
        .map_err(FlightError::from);
    let mut batches = FlightRecordBatchStream::new_from_flight_data(flight);
    let mut rows = Vec::new();
    while let Some(batch) = batches.next().await {
        // What the client sent is not Arrow IPC: its mistake, not ours.
        let batch = batch.map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::invalid_argument(format!("bad parameters: {other}")),
        })?;
        if rows.len().saturating_add(batch.num_rows()) > limit {
            return Err(Status::resource_exhausted(format!(
                "more than {limit} parameter rows ([flight] max_parameter_rows)"
            )));
        }
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, row))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?,
            );
        }
    }
    Ok(rows)
}

impl FlightSql {
    pub(crate) fn new(
        engine: Engine,
        access: Access,
        lifetime: Duration,
        limits: crate::Limits,
        logins: medlake_auth::Logins,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                tokens: Tokens::new(access, lifetime, logins),
                limits,
                prepared: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let mut caller = self.inner.tokens.check(request.metadata())?;
        caller.client = request.remote_addr();
        Ok(caller)
    }

    /// Whether a request may be decoded at all (see `Tokens::admit`).
    pub(crate) fn admit(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        client: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        self.inner.tokens.admit(metadata, client).inspect_err(|refused| {
            let code = match refused.code() {
                tonic::Code::Unauthenticated => Code::InvalidPassword,
                tonic::Code::ResourceExhausted => Code::InvalidAuthorization,
                _ => return,
            };
            let claimed = crate::auth::claimed(metadata);
            let client = client.map(|a| a.to_string());
            let door = medlake_engine::Door::Flight;
            if let Err(e) = self
                .inner
                .engine
                .audit_refused(door, client, &claimed, "LOGIN", code)
            {
                tracing::warn!(target: "medlake::audit", error = %e, "a refused login could not be audited");
            }
        })
    }

    /// The prepared statements, locked, with the idle ones expired; and the time now.
    fn live_prepared(
        &self,
    ) -> (
        std::sync::MutexGuard<'_, HashMap<Bytes, Prepared>>,
        std::time::Instant,
    ) {
        let mut all = self
            .inner
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let idle = self.inner.limits.prepared_idle;
        all.retain(|_, p| now.duration_since(p.used) < idle);
        (all, now)
    }

    fn prepared(&self, handle: &Bytes, caller: &Caller) -> Result<Prepared, Status> {
        let prepared = {
            let (mut all, now) = self.live_prepared();
            let prepared = all
                .get_mut(handle)
                .ok_or_else(|| Status::not_found("unknown or expired prepared statement handle"))?;
            if prepared.user == caller.user {
                prepared.used = now;
            }
            prepared.clone()
        };
        if prepared.user != caller.user {
            return Err(Status::permission_denied(
                "the prepared statement belongs to another user",
            ));
        }
        Ok(prepared)
    }

    /// Runs a statement; returns its rows as a stream, or the number of rows it wrote.
    async fn run(&self, caller: &Caller, statement: Statement) -> Result<Output, Status> {
        self.inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(caller))
            .execute(statement)
            .await
            .map_err(|e| status(&e))
    }

    /// Runs a prepared statement with one row of values (its plan kept by the engine's plan
    /// cache between executions).
    async fn run_bound(
        &self,
        caller: &Caller,
        statement: &Statement,
        values: Vec<datafusion::scalar::ScalarValue>,
    ) -> Result<Output, Status> {
        self.inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(caller))
            .execute_bound(statement, values)
            .await
            .map_err(|e| status(&e))
    }

    async fn written(&self, caller: &Caller, statement: Statement) -> Result<i64, Status> {
        match self.run(caller, statement).await? {
            Output::Command { rows, .. } => Ok(i64::try_from(rows).unwrap_or(i64::MAX)),
            Output::Rows(stream) => {
                // A query sent as an update: run it to the end, report no rows written.
                let _ = Output::Rows(stream)
                    .collect()
                    .await
                    .map_err(|e| status(&e))?;
                Ok(0)
            }
        }
    }

    /// The tables of the warehouse (schema, name, type) for GetTables.
    async fn tables(&self, caller: &Caller) -> Result<Vec<(String, String, String)>, Status> {
        let batches = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(caller))
            .query(
                "SELECT table_schema, table_name, table_type FROM information_schema.tables \
                 WHERE table_schema NOT IN ('information_schema', 'pg_catalog') \
                 ORDER BY 1, 2",
            )
            .await
            .map_err(|e| status(&e))?;
        let mut out = Vec::new();
        for batch in batches {
            let text = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
            let (s, t, k) = (
                text(0).map_err(|e| Status::internal(e.to_string()))?,
                text(1).map_err(|e| Status::internal(e.to_string()))?,
                text(2).map_err(|e| Status::internal(e.to_string()))?,
            );
            let (s, t, k) = (
                arrow::array::AsArray::as_string::<i32>(&s).clone(),
                arrow::array::AsArray::as_string::<i32>(&t).clone(),
                arrow::array::AsArray::as_string::<i32>(&k).clone(),
            );
            for row in 0..batch.num_rows() {
                let kind = match k.value(row) {
                    "BASE TABLE" => "TABLE",
                    other => other,
                };
                out.push((s.value(row).into(), t.value(row).into(), kind.into()));
            }
        }
        Ok(out)
    }

    /// The declared columns of a table for GetTables: `None` when the caller does not list
    /// it (the engine's listing rule: any of SELECT, INSERT, UPDATE, DELETE, REFRESH, so a
    /// writer sees the columns it writes). A table that cannot be opened (an external table
    /// its source policy now refuses) is listed without columns rather than failing the
    /// whole listing.
    async fn table_schema(
        &self,
        caller: &Caller,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, Status> {
        let described = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(caller))
            .table_columns(schema, table)
            .await;
        let columns = match described {
            Ok(Some(columns)) => columns,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, schema, table, "GetTables: listed without columns");
                Arc::new(Schema::empty())
            }
        };
        // Plain string and binary types, as tables store them.
        let fields: Vec<Field> = columns
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
                DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
                _ => f.as_ref().clone(),
            })
            .collect();
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    /// Appends (creating when asked) the batches of a `CommandStatementIngest` in one commit.
    async fn ingest(
        &self,
        caller: &Caller,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if command.temporary {
            return Err(Status::unimplemented("temporary tables are not supported"));
        }
        if command.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let schema_name = command
            .schema
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "bronze".to_string());
        let name = format!("{schema_name}.{}", command.table);
        let session = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(caller));
        // Checked before a byte of data is read (and again by the engine when it writes).
        let target = medlake_engine::TableName::new(
            schema_name.to_lowercase(),
            command.table.to_lowercase(),
        )
        .map_err(|e| status(&e.into()))?;
        session.authorize_ingest(&target).map_err(|e| status(&e))?;
        let options = command.table_definition_options.unwrap_or_default();
        let if_exists = TableExistsOption::try_from(options.if_exists).unwrap_or_default();
        let if_not_exist = TableNotExistOption::try_from(options.if_not_exist).unwrap_or_default();

        let flight = request.into_inner().map_err(FlightError::from);
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(flight);
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let limit = self.inner.limits.max_ingest_bytes;
        while let Some(batch) = decoded.next().await {
            let batch = batch.map_err(Status::from)?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > limit {
                return Err(Status::resource_exhausted(format!(
                    "the ingest stream exceeds {limit} bytes ([flight] max_ingest_bytes); send it in several requests"
                )));
            }
            batches.push(batch);
        }
        let schema = match (batches.first(), decoded.schema()) {
            (Some(b), _) => b.schema(),
            (None, Some(s)) => s.clone(),
            (None, None) => return Err(Status::invalid_argument("no schema was sent")),
        };
        session
            .ingest(
                &name,
                schema,
                batches,
                medlake_engine::Ingest {
                    create: !matches!(if_not_exist, TableNotExistOption::Fail),
                    exists: match if_exists {
                        TableExistsOption::Fail => medlake_engine::IfExists::Fail,
                        TableExistsOption::Replace => medlake_engine::IfExists::Replace,
                        _ => medlake_engine::IfExists::Append,
                    },
                },
            )
            .await
            .map(|rows| i64::try_from(rows).unwrap_or(i64::MAX))
            .map_err(|e| status(&e))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<FlightStream<HandshakeResponse>>, Status> {
        let (token, _caller) = self.inner.tokens.login(request.metadata())?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(token.clone()),
        };
        let mut response: Response<FlightStream<HandshakeResponse>> =
            Response::new(Box::pin(stream::iter([Ok(reply)])));
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(&caller));
        let statement = one_statement(&session, &query.query)?;
        // A plain query has no way to carry parameter values: one with a parameter is refused
        // here, naming it (22023), not deep in execution.
        medlake_engine::bind(&statement, Vec::new()).map_err(|e| status(&e))?;
        let description = session.describe(&statement).await.map_err(|e| status(&e))?;
        match description.columns {
            Some(schema) => {
                // A unique ticket per call, so that CancelFlightInfo names this run.
                let mut handle = crate::auth::random_id().into_bytes();
                handle.push(b':');
                handle.extend_from_slice(query.query.as_bytes());
                let ticket = TicketStatementQuery {
                    statement_handle: Bytes::from(handle),
                };
                info(
                    &schema,
                    ticket.as_any().encode_to_vec().into(),
                    request.into_inner(),
                )
            }
            None => {
                // DDL and DML sent as a query (ADBC's execute does): run it now; its result
                // is empty.
                self.written(&caller, statement).await?;
                let ticket = TicketStatementQuery {
                    statement_handle: Bytes::from_static(b"done:"),
                };
                info(
                    &Schema::empty(),
                    ticket.as_any().encode_to_vec().into(),
                    request.into_inner(),
                )
            }
        }
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let handle = ticket.statement_handle.clone();
        let text =
            std::str::from_utf8(&handle).map_err(|_| Status::invalid_argument("bad ticket"))?;
        let Some((_, sql)) = text.split_once(':') else {
            return Err(Status::invalid_argument("bad ticket"));
        };
        if sql.is_empty() {
            return Ok(Response::new(batch_stream(
                Arc::new(Schema::empty()),
                Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
            )));
        }
        let session = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(&caller));
        let statement = one_statement(&session, sql)?;
        let description = session.describe(&statement).await.map_err(|e| status(&e))?;
        let schema = description
            .columns
            .ok_or_else(|| Status::invalid_argument("the ticket's statement returns no rows"))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(handle.clone(), stop);
        // Forgotten when the stream ends or the client goes away.
        let running = Running {
            inner: self.inner.clone(),
            handle,
        };
        let output = match self.run(&caller, statement).await? {
            Output::Rows(stream) => stream,
            Output::Command { .. } => {
                return Err(Status::invalid_argument(
                    "the ticket's statement returns no rows",
                ));
            }
        };
        let data = flight_stream(schema, output, Some(stopped)).map(move |item| {
            let _ = &running;
            item
        });
        Ok(Response::new(Box::pin(data)))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let prepared = self.prepared(&query.prepared_statement_handle, &caller)?;
        match prepared.dataset.clone() {
            Some(schema) => info(
                &schema,
                query.as_any().encode_to_vec().into(),
                request.into_inner(),
            ),
            None => {
                // A prepared command executed as a query (ADBC's execute): run it now, once
                // per bound row; its result is empty.
                let rows = if prepared.bound.is_empty() {
                    vec![Vec::new()]
                } else {
                    prepared.bound.clone()
                };
                for values in rows {
                    let statement = medlake_engine::bind(&prepared.statement, values)
                        .map_err(|e| status(&e))?;
                    self.written(&caller, statement).await?;
                }
                let ticket = TicketStatementQuery {
                    statement_handle: Bytes::from_static(b"done:"),
                };
                info(
                    &Schema::empty(),
                    ticket.as_any().encode_to_vec().into(),
                    request.into_inner(),
                )
            }
        }
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let prepared = self.prepared(&query.prepared_statement_handle, &caller)?;
        let values = prepared.bound.first().cloned().unwrap_or_default();
        let schema = prepared
            .dataset
            .clone()
            .ok_or_else(|| Status::invalid_argument("the prepared statement returns no rows"))?;
        match self.run_bound(&caller, &prepared.statement, values).await? {
            Output::Rows(stream) => Ok(Response::new(flight_stream(schema, stream, None))),
            Output::Command { .. } => Err(Status::invalid_argument(
                "the prepared statement returns no rows",
            )),
        }
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        let handle = query.prepared_statement_handle.clone();
        let prepared = self.prepared(&handle, &caller)?;
        let rows = parameter_rows(request, self.inner.limits.max_parameter_rows).await?;
        if rows.len() > 1 && prepared.dataset.is_some() {
            return Err(Status::invalid_argument(
                "a prepared query takes one row of parameters",
            ));
        }
        let mut prepared = self
            .inner
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = prepared.get_mut(&handle) {
            p.bound = rows;
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        let prepared = self.prepared(&query.prepared_statement_handle, &caller)?;
        let rows = parameter_rows(request, self.inner.limits.max_parameter_rows).await?;
        let rows = if rows.is_empty() {
            vec![Vec::new()]
        } else {
            rows
        };
        let mut written = 0i64;
        for values in rows {
            let statement =
                medlake_engine::bind(&prepared.statement, values).map_err(|e| status(&e))?;
            written = written.saturating_add(self.written(&caller, statement).await?);
        }
        Ok(written)
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        if ticket.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(&caller));
        let statement = one_statement(&session, &ticket.query)?;
        self.written(&caller, statement).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = self.caller(&request)?;
        self.ingest(&caller, command, request).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(&caller));
        let statement = one_statement(&session, &query.query)?;
        let description = session.describe(&statement).await.map_err(|e| status(&e))?;
        let parameters = Arc::new(Schema::new(
            description
                .parameters
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(DataType::Utf8),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        ));
        let handle = Bytes::from(crate::auth::random_id());
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone(),
            dataset_schema: match &description.columns {
                Some(schema) => ipc_schema(schema)?,
                None => Bytes::new(),
            },
            parameter_schema: ipc_schema(&parameters)?,
        };
        let (mut all, now) = self.live_prepared();
        // At the cap, the user's least recently used statement makes room.
        let mine: Vec<(Bytes, std::time::Instant)> = all
            .iter()
            .filter(|(_, p)| p.user == caller.user)
            .map(|(h, p)| (h.clone(), p.used))
            .collect();
        if mine.len() >= self.inner.limits.max_prepared_per_user.max(1)
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, used)| *used)
        {
            all.remove(oldest);
        }
        all.insert(
            handle,
            Prepared {
                user: caller.user,
                used: now,
                statement,
                dataset: description.columns,
                bound: Vec::new(),
            },
        );
        Ok(result)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = self.caller(&request)?;
        self.prepared(&query.prepared_statement_handle, &caller)?;
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&query.prepared_statement_handle);
        Ok(())
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.caller(&request)?;
        let action = request.into_inner();
        match action.r#type.as_str() {
            "CancelFlightInfo" => {
                let cancel = CancelFlightInfoRequest::decode(action.body)
                    .map_err(|e| Status::invalid_argument(format!("bad CancelFlightInfo: {e}")))?;
                let mut status = CancelStatus::NotCancellable;
                for endpoint in cancel.info.map(|i| i.endpoint).unwrap_or_default() {
                    let Some(ticket) = endpoint.ticket else {
                        continue;
                    };
                    let Ok(any) = arrow_flight::sql::Any::decode(ticket.ticket.clone()) else {
                        continue;
                    };
                    let Ok(statement) = TicketStatementQuery::decode(any.value.clone()) else {
                        continue;
                    };
                    if let Some(stop) = self
                        .inner
                        .running
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&statement.statement_handle)
                    {
                        let _ = stop.send(true);
                        status = CancelStatus::Cancelled;
                    }
                }
                let result = CancelFlightInfoResult {
                    status: status as i32,
                };
                let body = arrow_flight::Result {
                    body: result.encode_to_vec().into(),
                };
                Ok(Response::new(Box::pin(stream::iter([Ok(body)]))))
            }
            // Nothing is kept per session beyond prepared statements and tokens.
            "CloseSession" => {
                let body = arrow_flight::Result { body: Bytes::new() };
                Ok(Response::new(Box::pin(stream::iter([Ok(body)]))))
            }
            other => Err(Status::unimplemented(format!(
                "action {other} is not supported"
            ))),
        }
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let mut builder = query.into_builder();
        builder.append(medlake_engine::CATALOG);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let mut builder = query.into_builder();
        let schemas = self
            .inner
            .engine
            .session_for_at(caller.principal.clone(), flight_origin(&caller))
            .query(
                "SELECT schema_name FROM information_schema.schemata \
                 WHERE catalog_name = 'medlake' AND schema_name NOT IN ('information_schema', 'pg_catalog')",
            )
            .await
            .map_err(|e| status(&e))?;
        for batch in schemas {
            let names = arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| Status::internal(e.to_string()))?;
            for name in arrow::array::AsArray::as_string::<i32>(&names)
                .iter()
                .flatten()
            {
                builder.append(medlake_engine::CATALOG, name);
            }
        }
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let include_schema = query.include_schema;
        let mut builder = query.into_builder();
        for (schema, table, kind) in self.tables(&caller).await? {
            let columns = if include_schema {
                match self.table_schema(&caller, &schema, &table).await? {
                    Some(columns) => columns,
                    // No longer listed (a grant revoked since the listing): omitted.
                    None => continue,
                }
            } else {
                Arc::new(Schema::empty())
            };
            builder
                .append(medlake_engine::CATALOG, &schema, &table, &kind, &columns)
                .map_err(Status::from)?;
        }
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder().schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let mut builder = query.into_builder();
        for kind in ["TABLE", "VIEW"] {
            builder.append(kind);
        }
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder(&XDBC_TYPES).schema();
        info(
            &schema,
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        let builder = query.into_builder(&XDBC_TYPES);
        let schema = builder.schema();
        Ok(Response::new(batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        info(
            &primary_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        Ok(Response::new(empty(primary_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        info(
            &foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        Ok(Response::new(empty(foreign_keys_schema())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        info(
            &foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        Ok(Response::new(empty(foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        info(
            &foreign_keys_schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request)?;
        Ok(Response::new(empty(foreign_keys_schema())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// GetPrimaryKeys' result: medlake tables have no keys (Delta cannot enforce them).
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// GetImportedKeys / GetExportedKeys / GetCrossReference's result.
fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

fn empty(schema: SchemaRef) -> FlightStream<arrow_flight::FlightData> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| new_empty_array(f.data_type()))
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(FlightError::from);
    batch_stream(schema, batch)
}

/// The gRPC service: Flight SQL as arrow-flight dispatches it, plus `GetSchema` (which its
/// blanket implementation leaves unimplemented) for statement and prepared queries.
#[derive(Clone)]
pub struct Door(pub FlightSql);

#[tonic::async_trait]
impl FlightService for Door {
    type HandshakeStream = <FlightSql as FlightService>::HandshakeStream;
    type ListFlightsStream = <FlightSql as FlightService>::ListFlightsStream;
    type DoGetStream = <FlightSql as FlightService>::DoGetStream;
    type DoPutStream = <FlightSql as FlightService>::DoPutStream;
    type DoExchangeStream = <FlightSql as FlightService>::DoExchangeStream;
    type DoActionStream = <FlightSql as FlightService>::DoActionStream;
    type ListActionsStream = <FlightSql as FlightService>::ListActionsStream;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(&self.0, request).await
    }

    async fn list_flights(
        &self,
        request: Request<arrow_flight::Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        FlightService::list_flights(&self.0, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(&self.0, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<arrow_flight::PollInfo>, Status> {
        FlightService::poll_flight_info(&self.0, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<arrow_flight::SchemaResult>, Status> {
        let caller = self.0.caller(&request)?;
        let any = arrow_flight::sql::Any::decode(request.get_ref().cmd.clone())
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        let schema = if let Some(query) = any
            .unpack::<CommandStatementQuery>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
        {
            let session = self
                .0
                .inner
                .engine
                .session_for_at(caller.principal.clone(), flight_origin(&caller));
            let statement = one_statement(&session, &query.query)?;
            session
                .describe(&statement)
                .await
                .map_err(|e| status(&e))?
                .columns
                .unwrap_or_else(|| Arc::new(Schema::empty()))
        } else if let Some(query) = any
            .unpack::<CommandPreparedStatementQuery>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
        {
            self.0
                .prepared(&query.prepared_statement_handle, &caller)?
                .dataset
                .unwrap_or_else(|| Arc::new(Schema::empty()))
        } else {
            return Err(Status::unimplemented(format!(
                "GetSchema of {}",
                any.type_url
            )));
        };
        let result: arrow_flight::SchemaResult =
            SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(&self.0, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.0, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        FlightService::do_exchange(&self.0, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.0, request).await
    }

    async fn list_actions(
        &self,
        request: Request<arrow_flight::Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.0, request).await
    }
}

/// Flight SQL sessions' origin, for the audit (tonic hands the peer address to the
/// interceptor, not to these calls).
fn flight_origin(caller: &Caller) -> medlake_engine::Origin {
    medlake_engine::Origin::new(
        medlake_engine::Door::Flight,
        caller.client.map(|a| a.to_string()),
    )
}
