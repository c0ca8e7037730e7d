//! A device gateway that speaks HL7 v2 (IHE PCD-01): a batch's readings as `ORU^R01`
//! messages, one per device and instant with an OBX per measurement (MDC codes and units,
//! LOINC for glucose), sent over MLLP to `medlake serve --mllp`, each message sent again
//! until it is acknowledged `AA` (its control id is the same every time, so the door stores
//! it once).

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use medlake_hl7::mllp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Metric, Reading, Rng, backoff};

/// What MLLP told the gateway about a batch.
pub(super) enum Sent {
    /// Every message acknowledged AA.
    Acknowledged,
    /// A message was refused (AE, or AR after every retry), with the door's reason.
    GaveUp(String),
}

/// The observation identifier (OBX-3) and units (OBX-6) of a reading.
fn codes(r: &Reading) -> (&'static str, String) {
    let unit = match r.unit {
        "%" => "262688^MDC_DIM_PERCENT^MDC".to_string(),
        "bpm" => "264864^MDC_DIM_BEAT_PER_MIN^MDC".to_string(),
        "/min" => "264928^MDC_DIM_RESP_PER_MIN^MDC".to_string(),
        "degC" => "268192^MDC_DIM_DEGC^MDC".to_string(),
        "degF" => "266560^MDC_DIM_FAHR^MDC".to_string(),
        "mmHg" => "266016^MDC_DIM_MMHG^MDC".to_string(),
        other => format!("{other}^^UCUM"),
    };
    let code = match (r.metric, r.unit) {
        (Metric::HeartRate, _) => "147842^MDC_ECG_HEART_RATE^MDC",
        (Metric::Spo2, _) => "150456^MDC_PULS_OXIM_SAT_O2^MDC",
        (Metric::RespirationRate, _) => "151562^MDC_RESP_RATE^MDC",
        (Metric::Temperature, _) => "150364^MDC_TEMP_BODY^MDC",
        (Metric::SystolicBp, _) => "150021^MDC_PRESS_BLD_NONINV_SYS^MDC",
        (Metric::DiastolicBp, _) => "150022^MDC_PRESS_BLD_NONINV_DIA^MDC",
        (Metric::Glucose, "mmol/L") => "15074-8^Glucose [Moles/volume] in Blood^LN",
        (Metric::Glucose, _) => "2339-0^Glucose [Mass/volume] in Blood^LN",
    };
    (code, unit)
}

/// HL7 DTM with milliseconds, in UTC.
fn dtm(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y%m%d%H%M%S%.3f+0000")
        .to_string()
}

/// HL7 text for a value that is not supposed to hold delimiters (device ids): any that do
/// are escaped.
fn text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The `ORU^R01` messages of `readings` (those with a value), one per device and instant, with
/// control ids `<key>-<n>`.
pub(super) fn messages(readings: &[&Reading], key: &str) -> Vec<(String, Vec<u8>)> {
    let mut groups: Vec<Vec<&Reading>> = Vec::new();
    for r in readings {
        match groups
            .iter_mut()
            .find(|g| g[0].device_id == r.device_id && g[0].taken_at_ms == r.taken_at_ms)
        {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    let now = dtm(Utc::now().timestamp_millis());
    groups
        .into_iter()
        .enumerate()
        .map(|(n, group)| {
            let first = group[0];
            let control_id = format!("{key}-{n}");
            let device = text(&first.device_id);
            let at = dtm(first.taken_at_ms);
            let mut msg = format!(
                "MSH|^~\\&|MEDLAKE_SIM_GW|WARD|MEDLAKE|HOSPITAL|{now}||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8\r\
                 PID|||{}^^^HOSPITAL^MR\r\
                 OBR|1||{control_id}|182777000^monitoring of patient^SCT|||{at}\r",
                first.patient_id
            );
            for (i, r) in group.iter().enumerate() {
                let (code, unit) = codes(r);
                let value = r.value.unwrap_or_default();
                msg.push_str(&format!(
                    "OBX|{}|NM|{code}||{value}|{unit}|||||F|||{at}||||{device}\r",
                    i + 1
                ));
            }
            (control_id, msg.into_bytes())
        })
        .collect()
}

/// How long one message may wait for its ACK.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `messages` in order over one connection (opened again after a failure), each until
/// it is acknowledged AA; AE is a refusal of the message, AR and lost connections are retried
/// up to `max_retries` times.
pub(super) async fn send(
    addr: SocketAddr,
    messages: Vec<(String, Vec<u8>)>,
    max_retries: u32,
    jitter: &mut Rng,
) -> Sent {
    let mut stream: Option<TcpStream> = None;
    for (control_id, message) in messages {
        let mut attempt = 0;
        loop {
            let answer = exchange(addr, &mut stream, &message).await;
            match answer {
                Ok((code, _)) if code == "AA" => break,
                Ok((code, reason)) if code == "AE" || attempt >= max_retries => {
                    return Sent::GaveUp(format!(
                        "HL7 message {control_id} answered {code}: {reason}"
                    ));
                }
                Err(e) if attempt >= max_retries => {
                    return Sent::GaveUp(format!("HL7 message {control_id}: {e}"));
                }
                _ => {
                    stream = None;
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt, jitter)).await;
                }
            }
        }
    }
    Sent::Acknowledged
}

/// Writes one framed message and reads its ACK: MSA-1 and MSA-3.
async fn exchange(
    addr: SocketAddr,
    stream: &mut Option<TcpStream>,
    message: &[u8],
) -> Result<(String, String), String> {
    if stream.is_none() {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        *stream = Some(s);
    }
    let Some(s) = stream.as_mut() else {
        return Err("no connection".into());
    };
    s.write_all(&mllp::frame(message))
        .await
        .map_err(|e| e.to_string())?;
    let mut decoder = mllp::Decoder::new(1 << 20);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(payload) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                let ack = medlake_hl7::parse(&payload).map_err(|e| e.to_string())?;
                return Ok((
                    ack.get("MSA-1").unwrap_or_default(),
                    ack.get("MSA-3").unwrap_or_default(),
                ));
            }
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the door closed the connection".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(ACK_TIMEOUT, read)
        .await
        .map_err(|_| "no ACK within 30 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readings_become_parseable_oru_messages_per_device_and_instant() {
        let r = |metric, value, unit, ms| Reading {
            device_id: Arc::from("monitor-7"),
            patient_id: 1007,
            metric,
            value: Some(value),
            unit,
            taken_at_ms: ms,
        };
        let readings = [
            r(Metric::Spo2, 91.0, "%", 1_795_000_000_000),
            r(Metric::HeartRate, 88.0, "bpm", 1_795_000_000_000),
            r(Metric::Glucose, 6.1, "mmol/L", 1_795_000_001_000),
        ];
        let refs: Vec<&Reading> = readings.iter().collect();
        let messages = messages(&refs, "k");
        assert_eq!(messages.len(), 2);
        let msg = medlake_hl7::parse(&messages[0].1).unwrap();
        let obs = medlake_hl7::observations(&msg).unwrap();
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[0].code, "150456");
        assert_eq!(obs[0].numeric, Some(91.0));
        assert_eq!(obs[0].equipment, "monitor-7");
        assert_eq!(obs[0].patient_id, "1007");
        let at = obs[0].observed_at.as_ref().unwrap();
        assert_eq!(
            at.to_utc_micros(chrono_tz::UTC).unwrap(),
            1_795_000_000_000_000
        );
        let glucose =
            medlake_hl7::observations(&medlake_hl7::parse(&messages[1].1).unwrap()).unwrap();
        assert_eq!(
            (glucose[0].code.as_str(), glucose[0].coding_system.as_str()),
            ("15074-8", "LN")
        );
        assert_eq!(glucose[0].units, "mmol/L");
    }
}
