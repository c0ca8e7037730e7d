//! The MLLP door with a client on loopback: ORU and ADT into bronze, ACK only after the
//! commit, idempotency on the control id, quarantine of refused messages, micro-batching
//! across connections, mutual TLS and the sender checks.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::Int64Array;
use arrow::util::display::array_value_to_string;
use medlake_engine::Engine;
use medlake_engine::{Principal, Role};
use medlake_mllp::{Auth, Config, Sender, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

struct Door {
    _dir: tempfile::TempDir,
    engine: Engine,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Door {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds a door on `engine` and serves it until the returned sender is used or dropped.
async fn start(
    engine: &Engine,
    config: Config,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let server = Server::bind(engine.clone(), config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn door(configure: impl FnOnce(&mut Config)) -> Door {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), Auth::InsecureNoAuth);
    configure(&mut config);
    let (addr, stop) = start(&engine, config).await;
    Door {
        _dir: dir,
        engine,
        addr,
        stop: Some(stop),
    }
}

fn oru(control_id: &str, patient: &str, spo2: &str) -> String {
    format!(
        "MSH|^~\\&|MON^0001^EUI-64|ICU|LAKE|HOSP|20261123080000+0000||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8\r\
         PID|||{patient}^^^HOSP^MR||Müller^Anna\r\
         PV1||I|ICU^Bed 3^1\r\
         OBR|1||{control_id}-1|182777000^monitoring of patient^SCT|||20261123075959+0000\r\
         OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|{spo2}|262688^MDC_DIM_PERCENT^MDC|90-100||||F|||20261123080000+0000||||0012ABCDEF123456^^0012ABCDEF123456^EUI-64\r\
         OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.2|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||F|||20261123080000+0000\r"
    )
}

fn adt(control_id: &str, event: &str, patient: &str, bed: &str) -> String {
    format!(
        "MSH|^~\\&|PAS|HOSP|LAKE|HOSP|20261123090000||ADT^{event}^ADT_A01|{control_id}|P|2.5\r\
         EVN|{event}|20261123090000\r\
         PID|||{patient}^^^HOSP^MR||Smith^John||19500101|M\r\
         PV1||I|ICU^{bed}^1||||1234^House^Gregory||||||||||||V{patient}|||||||||||||||||||||||||20261123085500\r"
    )
}

fn frame(message: &str) -> Vec<u8> {
    medlake_hl7::mllp::frame(message.as_bytes())
}

/// Sends one message and reads its ACK (MSA-1, MSA-3, the ACK text).
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &str,
) -> (String, String) {
    stream.write_all(&frame(message)).await.unwrap();
    read_ack(stream).await
}

async fn read_ack<S: AsyncRead + Unpin>(stream: &mut S) -> (String, String) {
    let mut decoder = medlake_hl7::mllp::Decoder::new(1 << 20);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(payload) = decoder.decode(&mut buf).unwrap() {
            let ack = medlake_hl7::parse(&payload).unwrap();
            let code = ack.get("MSA-1").unwrap_or_default();
            let text = ack.get("MSA-3").unwrap_or_default();
            assert_eq!(ack.header().message_code, "ACK");
            return (code, text);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("an ACK within 30 s")
            .unwrap();
        assert!(n > 0, "the door closed the connection without an ACK");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The rows of a query as text, as an auditor (who may read `system.audit` too).
async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<String>> {
    let mut auditor = Principal::user("audrey", Role::None);
    auditor.roles = ["auditor".to_string()].into();
    let session = engine.session_for(Principal::local("test"));
    let batches = match session.query(sql).await {
        Ok(b) => b,
        Err(_) => engine.session_for(auditor).query(sql).await.unwrap(),
    };
    let mut out = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            out.push(
                (0..b.num_columns())
                    .map(|c| array_value_to_string(b.column(c), r).unwrap())
                    .collect(),
            );
        }
    }
    out
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    if sql.contains("system.audit") {
        return rows(engine, sql).await[0][0].parse().unwrap();
    }
    let batches = engine.query(sql).await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn oru_is_stored_once_and_acknowledged_after_the_commit() {
    let door = door(|_| {}).await;
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    let (code, text) = send(&mut stream, &oru("M-1", "P1001", "97")).await;
    assert_eq!((code.as_str(), text.as_str()), ("AA", ""));
    // Acknowledged means committed: readable right away.
    let r = rows(
        &door.engine,
        "SELECT code, coding_system, numeric_value, units, equipment, patient_id, patient_name, \
         location, message_id, sending_application, observed_at = TIMESTAMP '2026-11-23 08:00:00' \
         FROM bronze.hl7_observations ORDER BY set_id",
    )
    .await;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0][0], "150456");
    assert_eq!(r[0][1], "MDC");
    assert_eq!(r[0][2], "97.0");
    assert_eq!(r[0][3], "262688");
    assert_eq!(r[0][4], "0012ABCDEF123456");
    assert_eq!(r[0][5], "P1001");
    assert!(r[0][6].starts_with("Müller"), "{:?}", r[0]);
    assert!(r[0][7].contains("Bed 3"), "{:?}", r[0]);
    assert_eq!(r[1][8], "M-1");
    assert!(r[0][9].starts_with("MON"));
    assert_eq!(r[0][10], "true");
    // The same message again (a lost ACK): AA, not stored twice.
    let (code, _) = send(&mut stream, &oru("M-1", "P1001", "97")).await;
    assert_eq!(code, "AA");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_observations").await,
        2
    );
    // The same control id with other content: AE (duplicate key), kept in quarantine.
    let (code, text) = send(&mut stream, &oru("M-1", "P1001", "85")).await;
    assert_eq!(code, "AE", "{text}");
    assert!(text.contains("M-1"), "{text}");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_observations").await,
        2
    );
    assert_eq!(
        count(
            &door.engine,
            "SELECT count(*) FROM bronze.hl7_quarantine WHERE error_code = 205 AND message_id = 'M-1'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn malformed_and_unsupported_messages_are_refused_and_quarantined() {
    let door = door(|_| {}).await;
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    // Not HL7 at all: AR.
    let (code, _) = send(&mut stream, "hello, this is not hl7").await;
    assert_eq!(code, "AR");
    // An OBX without its observation identifier: AE, content error.
    let broken = oru("M-2", "P1", "97").replace("150456^MDC_PULS_OXIM_SAT_O2^MDC", "");
    let (code, text) = send(&mut stream, &broken).await;
    assert_eq!(code, "AE", "{text}");
    assert!(text.contains("observation identifier"), "{text}");
    // An order message: not accepted here (AR, unsupported message type).
    let orm = oru("M-3", "P1", "97").replace("ORU^R01^ORU_R01", "ORM^O01");
    let (code, text) = send(&mut stream, &orm).await;
    assert_eq!(code, "AR", "{text}");
    // Training messages do not go into production bronze.
    let training = oru("M-4", "P1", "97").replace("|M-4|P|", "|M-4|T|");
    let (code, text) = send(&mut stream, &training).await;
    assert_eq!(code, "AR", "{text}");
    assert!(text.contains("MSH-11"), "{text}");
    // Two patients in one message, and more observations than one message may carry.
    let two = oru("M-6", "P1", "97").replacen("PV1|", "PID|||P2^^^HOSP^MR||Other^Pat\rPV1|", 1);
    let (code, text) = send(&mut stream, &two).await;
    assert_eq!(code, "AR", "{text}");
    let mut many = oru("M-7", "P1", "97");
    for i in 0..5_001 {
        many.push_str(&format!(
            "OBX|{i}|NM|147842^MDC_ECG_HEART_RATE^MDC||72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F\r"
        ));
    }
    let (code, text) = send(&mut stream, &many).await;
    assert_eq!(code, "AR", "{text}");
    assert!(text.contains("split it"), "{text}");
    // The connection still works, and nothing of the refused ones was stored.
    let (code, _) = send(&mut stream, &oru("M-5", "P1", "97")).await;
    assert_eq!(code, "AA");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_observations").await,
        2
    );
    let kept = rows(
        &door.engine,
        "SELECT ack_code, error_code, raw FROM bronze.hl7_quarantine ORDER BY received_at",
    )
    .await;
    assert_eq!(kept.len(), 6, "{kept:?}");
    assert_eq!(kept[0][..2], ["AR", "100"], "{kept:?}");
    assert!(kept[0][2].contains("not hl7"));
    assert_eq!(kept[1][..2], ["AE", "101"], "{kept:?}");
    assert_eq!(kept[2][..2], ["AR", "200"], "{kept:?}");
    // A retry of a refused message is not quarantined twice.
    let (code, _) = send(&mut stream, &orm).await;
    assert_eq!(code, "AR");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_quarantine").await,
        6
    );
}

#[tokio::test]
async fn adt_events_are_stored() {
    let door = door(|_| {}).await;
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    for (id, event, bed) in [
        ("A-1", "A01", "Bed 3"),
        ("A-2", "A02", "Bed 4"),
        ("A-3", "A03", "Bed 4"),
    ] {
        let (code, text) = send(&mut stream, &adt(id, event, "P2002", bed)).await;
        assert_eq!(code, "AA", "{event}: {text}");
    }
    let r = rows(
        &door.engine,
        "SELECT event, location, visit_number, attending FROM bronze.hl7_adt ORDER BY message_id",
    )
    .await;
    let events: Vec<&str> = r.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(events, ["A01", "A02", "A03"]);
    assert!(r[1][1].contains("Bed 4"), "{:?}", r[1]);
    assert_eq!(r[0][2], "VP2002");
    assert!(r[0][3].contains("House"), "{:?}", r[0]);
}

#[tokio::test]
async fn many_connections_are_micro_batched_and_stored_exactly_once() {
    let door = door(|_| {}).await;
    let connections = 16;
    let per_connection = 25;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = door.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for i in 0..per_connection {
                let id = format!("C{c}-{i}");
                let (code, text) = send(&mut stream, &oru(&id, "P1", "96")).await;
                assert_eq!(code, "AA", "{text}");
                if i % 5 == 0 {
                    // A retransmission after a lost ACK.
                    let (code, _) = send(&mut stream, &oru(&id, "P1", "96")).await;
                    assert_eq!(code, "AA");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let messages = count(
        &door.engine,
        "SELECT count(DISTINCT message_id) FROM bronze.hl7_observations",
    )
    .await;
    assert_eq!(messages, (connections * per_connection) as i64);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_observations").await,
        2 * (connections * per_connection) as i64
    );
    // Fewer commits than messages: the writer took what was queued together.
    let commits = rows(&door.engine, "DESCRIBE HISTORY bronze.hl7_observations")
        .await
        .len();
    assert!(
        commits < connections * per_connection,
        "{commits} commits for {} messages",
        connections * per_connection
    );
}

#[tokio::test]
async fn ingest_commits_are_audited_as_the_mllp_door() {
    let door = door(|_| {}).await;
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    let (code, _) = send(&mut stream, &oru("M-9", "P1", "97")).await;
    assert_eq!(code, "AA");
    let n = count(
        &door.engine,
        "SELECT count(*) FROM system.audit WHERE door = 'mllp' AND kind = 'INGEST' \
         AND user_name = 'local' AND objects_written = 'bronze.hl7_observations'",
    )
    .await;
    assert_eq!(n, 1);
}

// ---- mutual TLS ----

struct Pki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hospital device CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let pki = Self {
            dir,
            ca_cert,
            ca_key,
        };
        let (cert, key) = pki.issue("localhost", false);
        std::fs::write(pki.dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(pki.dir.path().join("server.key"), key).unwrap();
        pki
    }

    /// A certificate (PEM) and key (PEM) for `name`, for a client or a server.
    fn issue(&self, name: &str, client: bool) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn connector(pki: &Pki, client: Option<(String, String)>) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pki.ca_cert.der().to_vec(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = rustls_pemfile_certs(&cert);
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn rustls_pemfile_certs(
    pem: &str,
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

async fn tls_door(pki: &Pki) -> Door {
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    door(move |c| {
        c.tls = Some(medlake_auth::TlsFiles { cert, key });
        c.client_ca = Some(ca);
        c.auth = Auth::Senders(vec![Sender {
            name: "icu-gateway".into(),
            certificate: Some("icu-gateway.hospital.example".into()),
            addresses: Vec::new(),
            applications: vec!["MON".into()],
            facilities: vec!["ICU".into()],
            message_types: vec!["ORU".into()],
        }]);
    })
    .await
}

async fn tls_connect(
    door: &Door,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(door.addr).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await?;
    // TLS 1.3: a refused client certificate shows on the first read or write.
    stream.write_all(&frame(&oru("PING-0", "P0", "99"))).await?;
    Ok(stream)
}

#[tokio::test]
async fn mutual_tls_names_the_sender_and_msh_is_checked_against_it() {
    let pki = Pki::new();
    let door = tls_door(&pki).await;
    // The gateway's own certificate: its messages are stored.
    let good = connector(&pki, Some(pki.issue("icu-gateway.hospital.example", true)));
    let mut stream = tls_connect(&door, &good).await.unwrap();
    let (code, text) = read_ack(&mut stream).await;
    assert_eq!(code, "AA", "{text}");
    // ... but not as another application than it may claim (MSH-3 is not authentication).
    let spoofed = oru("M-7", "P1", "97").replace("MON^0001^EUI-64|ICU", "LAB|ICU");
    let (code, text) = send(&mut stream, &spoofed).await;
    assert_eq!(code, "AR", "{text}");
    assert!(text.contains("MSH-3"), "{text}");
    // Nor by escaping a component separator into its namespace id.
    let escaped = oru("M-8", "P1", "97").replace("MON^0001^EUI-64|ICU", "MON\\S\\X|ICU");
    let (code, text) = send(&mut stream, &escaped).await;
    assert_eq!(code, "AR", "{text}");
    let senders = rows(
        &door.engine,
        "SELECT DISTINCT sender FROM bronze.hl7_observations",
    )
    .await;
    assert_eq!(senders, [["icu-gateway"]]);

    // Only the message types it may send (ORU): an ADT from it is refused.
    let (code, text) = send(&mut stream, &adt("A-9", "A01", "P1", "Bed 1")).await;
    assert_eq!(code, "AR", "{text}");
    // No client certificate, or one for another name, or from another CA, or a wildcard
    // certificate of the right CA: no session.
    for client in [
        connector(&pki, Some(pki.issue("*.hospital.example", true))),
        connector(&pki, None),
        connector(&pki, Some(pki.issue("lab-gateway.hospital.example", true))),
        connector(
            &pki,
            Some(Pki::new().issue("icu-gateway.hospital.example", true)),
        ),
    ] {
        match tls_connect(&door, &client).await {
            Err(_) => {}
            Ok(mut stream) => {
                let mut buf = [0u8; 64];
                let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                    .await
                    .unwrap();
                assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            }
        }
    }
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.hl7_observations").await,
        2
    );
    let refused = count(
        &door.engine,
        "SELECT count(*) FROM system.audit WHERE door = 'mllp' AND outcome <> 'ok'",
    )
    .await;
    assert!(refused >= 1, "{refused}");
}

#[tokio::test]
async fn unsafe_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let sender = |nets: &[&str]| Sender {
        name: "lab".into(),
        certificate: None,
        addresses: nets.iter().map(|n| n.parse().unwrap()).collect(),
        applications: Vec::new(),
        facilities: Vec::new(),
        message_types: Vec::new(),
    };
    // No authentication off loopback.
    let config = Config::new("0.0.0.0:0".parse().unwrap(), Auth::InsecureNoAuth);
    assert!(Server::bind(engine.clone(), config).await.is_err());
    // An IP allow-list of a public network.
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Auth::Senders(vec![sender(&["8.8.8.0/24"])]),
    );
    let e = Server::bind(engine.clone(), config).await.err().unwrap();
    assert!(e.to_string().contains("private"), "{e}");
    // Or of all addresses.
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Auth::Senders(vec![sender(&["0.0.0.0/0"])]),
    );
    assert!(Server::bind(engine.clone(), config).await.is_err());
    // Plaintext off loopback.
    let config = Config::new(
        "0.0.0.0:0".parse().unwrap(),
        Auth::Senders(vec![sender(&["10.1.0.0/16"])]),
    );
    let e = Server::bind(engine.clone(), config).await.err().unwrap();
    assert!(e.to_string().contains("tls"), "{e}");
    // A private allow-list on loopback: fine, and a peer outside it is refused.
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Auth::Senders(vec![sender(&["10.1.0.0/16"])]),
    );
    let (addr, stop) = start(&engine, config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(&frame(&oru("X-1", "P1", "97"))).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let _ = stop.send(());
}

#[tokio::test]
async fn the_reference_warehouse_declares_the_doors_own_tables() {
    // sql/bronze/hl7.sql creates the tables before the door ever ran: the door must take them
    // as they are (same columns, same types), or the project and the door disagree.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    engine
        .sql(include_str!("../../../sql/bronze/hl7.sql"))
        .await
        .unwrap();
    let config = Config::new("127.0.0.1:0".parse().unwrap(), Auth::InsecureNoAuth);
    let (addr, stop) = start(&engine, config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (code, text) = send(&mut stream, &oru("S-1", "P1", "97")).await;
    assert_eq!(code, "AA", "{text}");
    let (code, text) = send(&mut stream, &adt("S-2", "A01", "P1", "Bed 1")).await;
    assert_eq!(code, "AA", "{text}");
    let (code, _) = send(&mut stream, "not hl7").await;
    assert_eq!(code, "AR");
    for (table, rows) in [
        ("hl7_observations", 2),
        ("hl7_adt", 1),
        ("hl7_quarantine", 1),
    ] {
        assert_eq!(
            count(&engine, &format!("SELECT count(*) FROM bronze.{table}")).await,
            rows,
            "{table}"
        );
    }
    let _ = stop.send(());
}

#[tokio::test]
async fn erase_patient_reaches_hl7_rows_and_quarantined_messages() {
    let door = door(|_| {}).await;
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    assert_eq!(send(&mut stream, &oru("E-1", "7001", "97")).await.0, "AA");
    assert_eq!(
        send(&mut stream, &adt("E-2", "A01", "7001", "Bed 2"))
            .await
            .0,
        "AA"
    );
    assert_eq!(send(&mut stream, &oru("E-3", "7002", "96")).await.0, "AA");
    // A refused message about the same patient: only its raw text names them.
    let broken = oru("E-4", "7001", "97").replace("150456^MDC_PULS_OXIM_SAT_O2^MDC", "");
    assert_eq!(send(&mut stream, &broken).await.0, "AE");
    let erased = door.engine.sql("ERASE PATIENT 7001").await;
    assert!(erased.is_ok(), "{erased:?}");
    let left = |table: &str, patient: &str| {
        format!(
            "SELECT count(*) FROM bronze.{table} WHERE {}",
            if table == "hl7_quarantine" {
                format!("raw LIKE '%{patient}^%'")
            } else {
                format!("patient_id = '{patient}'")
            }
        )
    };
    for table in ["hl7_observations", "hl7_adt", "hl7_quarantine"] {
        assert_eq!(
            count(&door.engine, &left(table, "7001")).await,
            0,
            "{table}"
        );
    }
    // The other patient stays.
    assert_eq!(
        count(&door.engine, &left("hl7_observations", "7002")).await,
        2
    );
}
