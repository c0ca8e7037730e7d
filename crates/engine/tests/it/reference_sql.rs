//! The reference warehouse's standards routes (`sql/`), run from the files themselves: HL7 v2
//! ADT into stays (`silver.hl7_encounters`).

use arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};

use crate::scratch;

const BRONZE_HL7: &str = include_str!("../../../../sql/bronze/hl7.sql");
const SILVER_HL7: &str = include_str!("../../../../sql/silver/hl7.sql");

/// One `bronze.hl7_adt` row: (message id, event, visit, patient, location, occurred at).
fn adt(row: (&str, &str, &str, &str, &str, &str)) -> String {
    let (id, event, visit, patient, location, at) = row;
    format!(
        "('{id}', 'GW', 'WARD', 'ADT^{event}', NULL, TIMESTAMP '2026-12-04 12:00:00', 'gw', '{event}', NULL, \
         TIMESTAMP '{at}', '{patient}', 'HOSP', 'Doe^Jane', '19700101', 'F', 'I', '{location}', '', '', '{visit}', \
         NULL, NULL, '', '', 'MSH|...')"
    )
}

#[tokio::test]
async fn adt_events_become_stays_with_cancels_applied() {
    let (_dir, engine) = scratch().await;
    engine.sql(BRONZE_HL7).await.unwrap();
    let rows = [
        // Visit V1: admitted to ICU bed 1, transferred to ward 5 bed 2, discharged.
        (
            "m1",
            "A01",
            "V1",
            "1001",
            "ICU^101^1",
            "2026-12-01 08:00:00",
        ),
        (
            "m1b",
            "A01",
            "V1",
            "1001",
            "ICU^101^1",
            "2026-12-01 08:00:00",
        ),
        ("m2", "A02", "V1", "1001", "W5^12^2", "2026-12-01 20:00:00"),
        ("m3", "A03", "V1", "1001", "W5^12^2", "2026-12-02 10:00:00"),
        // Visit V2: admitted, a transfer that is cancelled, a discharge that is cancelled.
        ("m4", "A01", "V2", "1002", "ED^1^3", "2026-12-03 09:00:00"),
        ("m5", "A02", "V2", "1002", "W7^1^1", "2026-12-03 11:00:00"),
        ("m6", "A12", "V2", "1002", "ED^1^3", "2026-12-03 11:30:00"),
        ("m7", "A03", "V2", "1002", "ED^1^3", "2026-12-03 15:00:00"),
        ("m8", "A13", "V2", "1002", "ED^1^3", "2026-12-03 15:10:00"),
        // Visit V3: an admission cancelled; V4: a patient id that is not a number.
        ("m9", "A04", "V3", "1003", "OPD^2^1", "2026-12-03 10:00:00"),
        ("m10", "A11", "V3", "1003", "OPD^2^1", "2026-12-03 10:05:00"),
        (
            "m11",
            "A01",
            "V4",
            "X-9",
            "ICU^102^4",
            "2026-12-03 12:00:00",
        ),
        // V5: registered in the ED (A04), admitted (A01), the admission cancelled (A11): the
        // ED stay stays.
        ("m13", "A04", "V5", "1005", "ED^2^7", "2026-12-03 08:00:00"),
        ("m14", "A01", "V5", "1005", "W1^3^1", "2026-12-03 09:00:00"),
        ("m15", "A11", "V5", "1005", "W1^3^1", "2026-12-03 09:30:00"),
    ];
    let values: Vec<String> = rows.into_iter().map(adt).collect();
    engine
        .sql(&format!(
            "INSERT INTO bronze.hl7_adt VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    engine.sql(SILVER_HL7).await.unwrap();
    let batches = engine
        .query(
            "SELECT visit_number, patient_id, ward, bed, admitted_at, discharged_at, encounter_id \
             FROM silver.hl7_encounters ORDER BY visit_number, admitted_at",
        )
        .await
        .unwrap();
    let mut stays = Vec::new();
    let mut ids = Vec::new();
    for b in &batches {
        let text = |i: usize| cast(b.column(i), &DataType::Utf8).unwrap();
        let (visit, patient, ward, bed) = (text(0), text(1), text(2), text(3));
        let at = |i: usize| {
            cast(
                b.column(i),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )
            .unwrap()
        };
        let (from, to) = (at(4), at(5));
        let from = from
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let to = to
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let s = |a: &arrow::array::ArrayRef, r: usize| {
            let a = a.as_any().downcast_ref::<StringArray>().unwrap();
            if a.is_null(r) {
                "-".to_owned()
            } else {
                a.value(r).to_owned()
            }
        };
        let ts = |a: &TimestampMicrosecondArray, r: usize| {
            if a.is_null(r) {
                "open".to_owned()
            } else {
                chrono::DateTime::from_timestamp_micros(a.value(r))
                    .unwrap()
                    .format("%d %H:%M")
                    .to_string()
            }
        };
        for r in 0..b.num_rows() {
            stays.push(format!(
                "{} {} {} {} {} .. {}",
                s(&visit, r),
                s(&patient, r),
                s(&ward, r),
                s(&bed, r),
                ts(from, r),
                ts(to, r)
            ));
        }
        let id = b.column(6).as_any().downcast_ref::<Int64Array>().unwrap();
        ids.extend((0..id.len()).map(|r| id.value(r)));
    }
    assert_eq!(
        stays,
        [
            "V1 1001 ICU 1 01 08:00 .. 01 20:00",
            "V1 1001 W5 2 01 20:00 .. 02 10:00",
            "V2 1002 ED 3 03 09:00 .. open",
            "V4 - ICU 4 03 12:00 .. open",
            "V5 1005 ED 7 03 08:00 .. open",
        ]
    );
    assert!(ids.iter().all(|id| *id < 0), "{ids:?}");
    // V4 is discharged later: the refresh follows the change.
    let later = [adt((
        "m12",
        "A03",
        "V4",
        "X-9",
        "ICU^102^4",
        "2026-12-04 09:00:00",
    ))];
    engine
        .sql(&format!(
            "INSERT INTO bronze.hl7_adt VALUES {}",
            later.join(", ")
        ))
        .await
        .unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.hl7_encounters")
        .await
        .unwrap();
    let modes = engine
        .query("SELECT mode, reason FROM system.refreshes WHERE view = 'silver.hl7_encounters' ORDER BY started DESC LIMIT 1")
        .await
        .unwrap();
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&modes).unwrap()
    );
    let open = crate::count(
        &engine,
        "SELECT count(*) FROM silver.hl7_encounters WHERE visit_number = 'V4' AND discharged_at IS NULL",
    )
    .await;
    assert_eq!(open, 0);
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
}
