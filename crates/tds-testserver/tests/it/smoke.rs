use medlake_tds_testserver::Encryption;

use crate::common::{connect, server, within};

#[tokio::test]
async fn select_one() {
    let server = server(Encryption::Off).await;
    within("select 1", async {
        let mut client = connect(&server).await;
        let row = client
            .simple_query("SELECT 1")
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<i32, _>(0), Some(1));
    })
    .await;
}
