//! The blob connectors end to end: SQL through the engine over folders on local disk and in
//! Azurite (the Azure Storage emulator, started here from `$AZURITE_BLOB`; tests/run.sh
//! installs it). The account key comes from `${MEDLAKE_TEST_AZURITE_KEY}` (.cargo/config.toml)
//! exactly as users give theirs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use datafusion::object_store::azure::MicrosoftAzureBuilder;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use datafusion::prelude::SessionContext;
use medlake_engine::{Code, Engine};
use medlake_source_blob::dicom::dicom_core::{DataElement, PrimitiveValue, VR};
use medlake_source_blob::dicom::dicom_dictionary_std::{tags, uids};
use medlake_source_blob::dicom::dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::{count, scratch};

const ACCOUNT: &str = "devstoreaccount1";
const KEY_ENV: &str = "MEDLAKE_TEST_AZURITE_KEY";

/// Azurite on a free loopback port, killed on drop.
struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    fn start() -> Self {
        let program = std::env::var("AZURITE_BLOB").expect(
            "AZURITE_BLOB must point at Azurite's azurite-blob program (tests/run.sh installs it: \
             npm install azurite; AZURITE_BLOB=node_modules/.bin/azurite-blob)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Azurite ({program}): {e}"));
        let azurite = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        azurite
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// OPTIONS reaching this Azurite with the account key `key_env` names.
    fn options(&self, key_env: &str, extra: &str) -> String {
        format!(
            "OPTIONS ('azure_storage_account_name' '{ACCOUNT}', \
             'azure_storage_account_key' '${{{key_env}}}', \
             'azure_storage_endpoint' '{}', 'azure_allow_http' 'true'{extra})",
            self.endpoint()
        )
    }

    /// Creates a container with a SharedKey-signed `PUT ?restype=container` (object_store
    /// cannot create containers).
    async fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT{}x-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container",
            "\n".repeat(12)
        );
        let key = base64_decode(&key());
        let signature = base64_encode(&hmac_sha256(&key, to_sign.as_bytes()).await);
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "creating container {name}: {response}"
        );
    }

    /// An object_store client of a container, to upload test files.
    fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_account(ACCOUNT)
                .with_access_key(key())
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_container_name(container)
                .build()
                .unwrap(),
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key() -> String {
    std::env::var(KEY_ENV).expect("set by .cargo/config.toml")
}

async fn sha256(ctx: &SessionContext, bytes: &[u8]) -> Vec<u8> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let batches = ctx
        .sql(&format!("SELECT sha256(X'{hex}')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let column = batches[0].column(0);
    let array = column
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .expect("sha256 gives binary");
    array.value(0).to_vec()
}

/// HMAC-SHA256 (RFC 2104) over DataFusion's sha256.
async fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let ctx = SessionContext::new();
    let mut block = if key.len() > 64 {
        sha256(&ctx, key).await
    } else {
        key.to_vec()
    };
    block.resize(64, 0);
    let mut inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let inner = sha256(&ctx, &inner).await;
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&inner);
    sha256(&ctx, &outer).await
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

async fn put(store: &Arc<dyn ObjectStore>, path: &str, bytes: Vec<u8>) {
    store
        .put(&StorePath::from(path), PutPayload::from(bytes))
        .await
        .unwrap();
}

/// Rows as `a|b|c` lines.
async fn rows(engine: &Engine, sql: &str) -> Vec<String> {
    let batches = engine.query(sql).await.expect(sql);
    lines(&batches)
}

fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(row) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, row).unwrap()
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// A Parquet file's bytes, written by DataFusion.
async fn parquet_bytes(sql: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.parquet");
    let ctx = SessionContext::new();
    ctx.sql(&format!(
        "COPY ({sql}) TO '{}' STORED AS PARQUET",
        file.display()
    ))
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    std::fs::read(file).unwrap()
}

/// A DICOM file written by dicom-rs, with `pixels` bytes of Pixel Data after the header.
fn dicom_file(patient: &str, modality: &str, description: &str, pixels: usize) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE));
    let uid = format!("1.2.826.0.1.{}", patient.trim_start_matches('P'));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &uid));
    obj.put(text(tags::STUDY_DATE, VR::DA, "20260115"));
    obj.put(text(tags::STUDY_TIME, VR::TM, "142530.5"));
    obj.put(text(tags::ACCESSION_NUMBER, VR::SH, "ACC-7"));
    obj.put(text(tags::MODALITY, VR::CS, modality));
    obj.put(text(tags::MANUFACTURER, VR::LO, "medlake test"));
    obj.put(text(tags::STUDY_DESCRIPTION, VR::LO, description));
    obj.put(text(tags::PATIENT_NAME, VR::PN, &format!("Doe^{patient}")));
    obj.put(text(tags::PATIENT_ID, VR::LO, patient));
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.9"));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.9.1"));
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(256_u16),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(128_u16),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![7u8; pixels]),
    ));
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes
}

fn write(root: &std::path::Path, relative: &str, bytes: &[u8]) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn local_folders_read_as_tables_with_partitions_and_new_files_only() {
    let (_dir, engine) = scratch().await;
    let landing = tempfile::tempdir().unwrap();
    let root = landing.path();
    write(root, "csv/year=2025/a.csv", b"id,ward\n1,icu\n2,er\n");
    write(root, "csv/year=2026/b.csv", b"id,ward\n3,icu\n");
    write(root, "csv/_SUCCESS", b"");
    write(root, "csv/year=2026/notes.txt", b"not a table file");
    write(
        root,
        "json/day=01/a.json",
        b"{\"id\": 1, \"hr\": 70}\n{\"id\": 2, \"hr\": 80}\n",
    );
    write(
        root,
        "parquet/site=north/p.parquet",
        &parquet_bytes("SELECT CAST(1 AS BIGINT) AS id, 'x' AS code").await,
    );
    write(root, "docs/scan.pdf", b"%PDF-1.7 fake");
    write(root, "dicom/ct.dcm", &dicom_file("P9", "CT", "local", 10));
    let url = |folder: &str| format!("file://{}/{folder}/", root.display());
    engine.sql("CREATE SCHEMA landing").await.unwrap();
    // Columns inferred, the partition column from the folders (text).
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.csv_inferred STORED AS CSV LOCATION '{}' \
             OPTIONS ('has_header' 'true')",
            url("csv")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT id, ward, year FROM landing.csv_inferred ORDER BY id"
        )
        .await,
        ["1|icu|2025", "2|er|2025", "3|icu|2026"]
    );
    // Declared columns, the partition column typed by PARTITIONED BY.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.csv_typed (id BIGINT, ward VARCHAR) STORED AS CSV \
             PARTITIONED BY (year INT) LOCATION '{}' OPTIONS ('has_header' 'true')",
            url("csv")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT year + 1, count(*) FROM landing.csv_typed WHERE year > 2025 GROUP BY year"
        )
        .await,
        ["2027|1"]
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.vitals STORED AS NDJSON LOCATION '{}'",
            url("json")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT id, hr, day FROM landing.vitals ORDER BY id"
        )
        .await,
        ["1|70|01", "2|80|01"]
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.codes STORED AS PARQUET LOCATION '{}'",
            url("parquet")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(&engine, "SELECT id, code, site FROM landing.codes").await,
        ["1|x|north"]
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.docs STORED AS BINARYFILE LOCATION '{}'",
            url("docs")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT size, content_type, CAST(content AS VARCHAR) FROM landing.docs"
        )
        .await,
        ["13|application/pdf|%PDF-1.7 fake"]
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.images STORED AS DICOM LOCATION '{}'",
            url("dicom")
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT patient_id, modality, study_date, error FROM landing.images"
        )
        .await,
        ["P9|CT|2026-01-15|NULL"]
    );

    // A bronze view takes the files once: new files only on the next refresh.
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.admissions AS SELECT * FROM landing.csv_typed")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.admissions").await,
        3
    );
    let outcome = engine
        .refresh("bronze.admissions", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "none", "{}", outcome[0].reason);
    write(root, "csv/year=2026/c.csv", b"id,ward\n4,er\n5,er\n");
    let outcome = engine
        .refresh("bronze.admissions", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "incremental", "{}", outcome[0].reason);
    assert_eq!(outcome[0].rows_written, 2);
    assert_eq!(
        rows(&engine, "SELECT id FROM bronze.admissions ORDER BY id").await,
        ["1", "2", "3", "4", "5"]
    );

    // A missing folder is named; literal secrets are refused without echoing them.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.gone STORED AS CSV LOCATION '{}'",
            url("nope")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FdwTableNotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A LOCATION naming one file, for every kind: the table is that file (whatever its
/// extension), and a bronze view over it takes it again only when it changed.
#[tokio::test]
async fn a_location_naming_one_file_is_that_file() {
    let (_dir, engine) = scratch().await;
    let landing = tempfile::tempdir().unwrap();
    let root = landing.path();
    write(root, "admissions.csv", b"id,ward\n1,icu\n2,er\n");
    write(root, "other.csv", b"id,ward\n9,other\n");
    write(root, "export.txt", b"id,ward\n5,lab\n");
    write(root, "vitals.json", b"{\"id\": 1, \"hr\": 70}\n");
    write(
        root,
        "codes.parquet",
        &parquet_bytes("SELECT CAST(1 AS BIGINT) AS id, 'x' AS code").await,
    );
    write(root, "scan.pdf", b"%PDF-1.7 fake");
    write(root, "ct", &dicom_file("P9", "CT", "one file", 10));
    let file = |name: &str| format!("{}/{name}", root.canonicalize().unwrap().display());
    engine.sql("CREATE SCHEMA landing").await.unwrap();
    for (table, kind, name, options) in [
        (
            "adm",
            "CSV",
            "admissions.csv",
            "OPTIONS ('has_header' 'true')",
        ),
        ("txt", "CSV", "export.txt", "OPTIONS ('has_header' 'true')"),
        ("vit", "NDJSON", "vitals.json", ""),
        ("cod", "PARQUET", "codes.parquet", ""),
        ("pdf", "BINARYFILE", "scan.pdf", ""),
        ("img", "DICOM", "ct", ""),
    ] {
        engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE landing.{table} STORED AS {kind} LOCATION '{}' {options}",
                file(name)
            ))
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    }
    assert_eq!(
        rows(&engine, "SELECT id, ward FROM landing.adm ORDER BY id").await,
        ["1|icu", "2|er"]
    );
    assert_eq!(
        rows(&engine, "SELECT id, ward FROM landing.txt").await,
        ["5|lab"]
    );
    assert_eq!(
        rows(&engine, "SELECT id, hr FROM landing.vit").await,
        ["1|70"]
    );
    assert_eq!(
        rows(&engine, "SELECT id, code FROM landing.cod").await,
        ["1|x"]
    );
    assert_eq!(
        rows(&engine, "SELECT path, size, content_type FROM landing.pdf").await,
        [format!("file://{}|13|application/pdf", file("scan.pdf"))]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT patient_id, modality, error FROM landing.img"
        )
        .await,
        ["P9|CT|NULL"]
    );

    // Incremental discovery of one file: "it changed or not".
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.adm AS SELECT * FROM landing.adm")
        .await
        .unwrap();
    let outcome = engine.refresh("bronze.adm", false, false).await.unwrap();
    assert_eq!(outcome[0].mode, "none", "{}", outcome[0].reason);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(root, "admissions.csv", b"id,ward\n3,icu\n");
    let outcome = engine.refresh("bronze.adm", false, false).await.unwrap();
    assert_eq!(outcome[0].mode, "incremental", "{}", outcome[0].reason);
    assert_eq!(outcome[0].rows_written, 1);
    assert_eq!(
        rows(&engine, "SELECT id FROM bronze.adm ORDER BY id").await,
        ["1", "2", "3"]
    );
    let outcome = engine.refresh("bronze.adm", false, false).await.unwrap();
    assert_eq!(outcome[0].mode, "none", "{}", outcome[0].reason);
}

#[tokio::test]
async fn azure_blob_folders_binary_files_dicom_and_clear_errors() {
    let azurite = Azurite::start();
    azurite.create_container("landing").await;
    let store = azurite.store("landing");
    put(
        &store,
        "csv/year=2025/month=12/a.csv",
        b"id,ward\n1,icu\n2,er\n".to_vec(),
    )
    .await;
    put(
        &store,
        "csv/year=2026/month=01/b.csv",
        b"id,ward\n3,icu\n".to_vec(),
    )
    .await;
    put(
        &store,
        "json/site=a/1.json",
        b"{\"id\":1,\"v\":\"x\"}\n{\"id\":2,\"v\":\"y\"}\n".to_vec(),
    )
    .await;
    put(
        &store,
        "parquet/site=b/part-0.parquet",
        parquet_bytes("SELECT CAST(v AS BIGINT) AS id FROM (SELECT unnest(range(10)) AS v)").await,
    )
    .await;
    put(&store, "scans/referral.pdf", b"%PDF-1.7 referral".to_vec()).await;
    put(&store, "scans/2026/notes.txt", b"hello".to_vec()).await;
    // Pixel data far beyond the first read; one header longer than `header_bytes`.
    put(
        &store,
        "dicom/a.dcm",
        dicom_file("P1", "CT", "short", 300_000),
    )
    .await;
    put(
        &store,
        "dicom/b.dcm",
        dicom_file("P2", "MR", &"x".repeat(3000), 100),
    )
    .await;
    put(
        &store,
        "dicom/broken.dcm",
        b"this is not a DICOM file at all".to_vec(),
    )
    .await;

    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA landing").await.unwrap();
    let create = |name: &str, kind: &str, folder: &str, extra: &str| {
        format!(
            "CREATE EXTERNAL TABLE landing.{name} STORED AS {kind} LOCATION 'az://landing/{folder}/' {}",
            azurite.options(KEY_ENV, extra)
        )
    };
    engine
        .sql(&create("csv", "CSV", "csv", ", 'has_header' 'true'"))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT id, ward, year, month FROM landing.csv ORDER BY id"
        )
        .await,
        ["1|icu|2025|12", "2|er|2025|12", "3|icu|2026|01"]
    );
    engine
        .sql(&create("json", "NDJSON", "json", ""))
        .await
        .unwrap();
    assert_eq!(
        rows(&engine, "SELECT id, v, site FROM landing.json ORDER BY id").await,
        ["1|x|a", "2|y|a"]
    );
    engine
        .sql(&create("parquet", "PARQUET", "parquet", ""))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT count(*), sum(id), min(site) FROM landing.parquet"
        )
        .await,
        ["10|45|b"]
    );

    // Binary files: content only when selected.
    engine
        .sql(&create("scans", "BINARYFILE", "scans", ""))
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT path, size, content_type FROM landing.scans ORDER BY path"
        )
        .await,
        [
            "az://landing/scans/2026/notes.txt|5|text/plain",
            "az://landing/scans/referral.pdf|17|application/pdf"
        ]
    );
    let plan = lines(
        &engine
            .query("EXPLAIN SELECT path, size FROM landing.scans")
            .await
            .unwrap(),
    )
    .join("\n");
    assert!(plan.contains("reads_content=false"), "{plan}");
    let plan = lines(
        &engine
            .query("EXPLAIN SELECT content FROM landing.scans")
            .await
            .unwrap(),
    )
    .join("\n");
    assert!(plan.contains("reads_content=true"), "{plan}");
    assert_eq!(
        rows(
            &engine,
            "SELECT CAST(content AS VARCHAR) FROM landing.scans WHERE path LIKE '%.txt'"
        )
        .await,
        ["hello"]
    );

    // DICOM headers, a further tag by keyword, and a damaged file listed with its error.
    engine
        .sql(&create(
            "images",
            "DICOM",
            "dicom",
            ", 'tags' 'AccessionNumber', 'header_bytes' '1024'",
        ))
        .await
        .unwrap();
    let found = rows(
        &engine,
        "SELECT patient_id, patient_name, modality, study_date, study_time, body_part_examined, \
         rows, columns, accession_number, sop_instance_uid, transfer_syntax_uid, \
         length(study_description), error IS NULL FROM landing.images ORDER BY path",
    )
    .await;
    assert_eq!(
        found[..2],
        [
            "P1|Doe^P1|CT|2026-01-15|14:25:30.5|CHEST|256|128|ACC-7|1.2.826.0.1.1|1.2.840.10008.1.2.1|5|true",
            "P2|Doe^P2|MR|2026-01-15|14:25:30.5|CHEST|256|128|ACC-7|1.2.826.0.1.2|1.2.840.10008.1.2.1|3000|true",
        ]
    );
    let broken = rows(
        &engine,
        "SELECT path, patient_id, error FROM landing.images WHERE error IS NOT NULL",
    )
    .await;
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].starts_with("az://landing/dicom/broken.dcm|NULL|"),
        "{broken:?}"
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM landing.images").await,
        3
    );

    // A missing container; wrong and literal keys, never echoed.
    let err = engine
        .sql(&create("missing", "CSV", "x", "").replace("az://landing/", "az://no-such-container/"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FdwTableNotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let wrong = std::env::var("MEDLAKE_TEST_AZURITE_WRONG_KEY").unwrap();
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.wrong STORED AS CSV LOCATION 'az://landing/csv/' {}",
            azurite.options("MEDLAKE_TEST_AZURITE_WRONG_KEY", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FdwUnableToEstablishConnection, "{err}");
    let message = err.to_string();
    assert!(message.contains("refused"), "{message}");
    for secret in [wrong.as_str(), &key()] {
        assert!(!message.contains(&secret[..20]), "{message}");
    }
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.literal STORED AS CSV LOCATION 'az://landing/csv/' \
             OPTIONS ('azure_storage_account_key' '{}')",
            key()
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("secrets are never stored"),
        "{err}"
    );
    assert!(!err.to_string().contains(&key()[..20]), "{err}");
}

#[tokio::test]
async fn bronze_refreshes_take_each_landing_file_once_while_files_keep_arriving() {
    let azurite = Azurite::start();
    azurite.create_container("landing").await;
    let store = azurite.store("landing");
    let file = |i: usize| {
        let mut text = String::from("id,batch\n");
        for r in 0..5 {
            text.push_str(&format!("{},f{i:03}\n", i * 5 + r));
        }
        text.into_bytes()
    };
    for i in 0..3 {
        put(&store, &format!("events/f{i:03}.csv"), file(i)).await;
    }
    let (_dir, engine) = scratch().await;
    let engine = Arc::new(engine);
    engine.sql("CREATE SCHEMA landing").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE landing.events (id BIGINT, batch VARCHAR) STORED AS CSV \
             LOCATION 'az://landing/events/' {}",
            azurite.options(KEY_ENV, ", 'has_header' 'true', 'lookback_seconds' '60'")
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.events AS SELECT * FROM landing.events")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.events").await,
        15
    );

    // Files land while refreshes run, in the same second as each other.
    const FILES: usize = 60;
    let uploader = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 3..FILES {
                put(&store, &format!("events/f{i:03}.csv"), file(i)).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let mut modes = Vec::new();
    while !uploader.is_finished() {
        let outcome = engine.refresh("bronze.events", false, false).await.unwrap();
        modes.push(outcome[0].mode);
    }
    uploader.await.unwrap();
    let last = engine.refresh("bronze.events", false, false).await.unwrap();
    modes.push(last[0].mode);
    assert!(modes.contains(&"incremental"), "{modes:?}");
    assert!(!modes.contains(&"full"), "{modes:?}");
    let outcome = engine.refresh("bronze.events", false, false).await.unwrap();
    assert_eq!(outcome[0].mode, "none", "{}", outcome[0].reason);

    let total = (FILES * 5) as i64;
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.events").await,
        total
    );
    assert_eq!(
        count(&engine, "SELECT count(DISTINCT id) FROM bronze.events").await,
        total,
        "a file was taken twice"
    );
    assert_eq!(
        count(
            &engine,
            "SELECT CAST(max(id) + 1 AS BIGINT) FROM bronze.events"
        )
        .await,
        total,
        "a file was skipped"
    );
    // A full refresh reads the same files again, replacing what the view holds.
    engine.refresh("bronze.events", true, false).await.unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.events").await,
        total
    );
}

/// A folder of many files scanned by the executors of a cluster: every task reads only the
/// files of its own partition (never its idle siblings', as one process does), and only the
/// files the server listed while planning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_scan_a_folder_each_file_once() {
    let landing = tempfile::tempdir().unwrap();
    let root = landing.path();
    for f in 0..24 {
        let rows: String = (0..50)
            .map(|i| format!("{},{}\n", f * 50 + i, ["icu", "er", "ward"][i % 3]))
            .collect();
        write(
            root,
            &format!("batch/{f:02}.csv"),
            format!("id,ward\n{rows}").as_bytes(),
        );
    }
    let policy = medlake_source::Policy {
        allowed_paths: vec![root.to_path_buf()],
        ..medlake_source::Policy::strict()
    };
    let (_members, _dir, engine) = super::on_cluster_reading_sources(policy).await;
    engine
        .sql(&format!(
            "CREATE SCHEMA landing;
             CREATE EXTERNAL TABLE landing.batch (id BIGINT, ward VARCHAR) STORED AS CSV \
             LOCATION 'file://{}/batch/' OPTIONS ('has_header' 'true');
             CREATE TABLE bronze.wards (ward VARCHAR, floor INT);
             INSERT INTO bronze.wards VALUES ('icu', 3), ('er', 0), ('ward', 5)",
            root.display()
        ))
        .await
        .unwrap();
    let sql = "SELECT w.floor, count(*), sum(b.id) FROM landing.batch b \
               JOIN bronze.wards w ON b.ward = w.ward GROUP BY w.floor ORDER BY w.floor";
    let on_cluster = rows(&engine, sql).await;
    assert_eq!(on_cluster, ["0|408|244800", "3|408|244392", "5|384|230208"]);
    let metrics = engine.metrics_text().await;
    assert!(
        metrics.contains("medlake_cluster_queries_total{ran=\"cluster\"} 1"),
        "the query did not run on the cluster:\n{metrics}"
    );
}
