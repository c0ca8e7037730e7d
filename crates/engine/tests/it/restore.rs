//! `RESTORE TABLE` needs OWNERSHIP of the table (or an admin): INSERT or a writer's
//! role are not enough. The statement's own behaviour is in tests/sql/restore.slt.

use medlake_engine::{Engine, Principal, Role, Session};

use crate::{outcome, scratch};

fn user(engine: &Engine, name: &str, role: Role, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, role);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

async fn count(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn only_owners_and_admins_restore_a_table() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE ROLE engineers;
             GRANT CREATE ON SCHEMA bronze TO engineers;
             GRANT USAGE ON SCHEMA bronze TO engineers;",
        )
        .await
        .unwrap();
    let eve = user(&engine, "eve", Role::None, &["engineers"]);
    let oscar = user(&engine, "oscar", Role::None, &["engineers"]);
    let writer = user(&engine, "wanda", Role::Writer, &[]);
    let reader = user(&engine, "rita", Role::Reader, &[]);
    for sql in [
        "CREATE TABLE bronze.mine (x INT)",
        "INSERT INTO bronze.mine VALUES (1)",
        "INSERT INTO bronze.mine VALUES (2)",
        "GRANT SELECT, INSERT ON TABLE bronze.mine TO oscar",
    ] {
        assert_eq!(outcome(&eve, sql).await, "ok", "{sql}");
    }
    // Privileges to read and write the table, a writer's or a reader's role: 42501.
    assert_eq!(
        outcome(&oscar, "INSERT INTO bronze.mine VALUES (3)").await,
        "ok"
    );
    let restore = "RESTORE TABLE bronze.mine TO VERSION AS OF 1";
    for session in [&oscar, &writer, &reader] {
        assert_eq!(outcome(session, restore).await, "42501");
    }
    assert!(
        count(&eve, "SELECT count(*) AS n FROM bronze.mine")
            .await
            .contains("| 3 |")
    );
    // The owner may: the table is at version 1's rows again, in a new version.
    assert_eq!(outcome(&eve, restore).await, "ok");
    assert!(
        count(&eve, "SELECT count(*) AS n FROM bronze.mine")
            .await
            .contains("| 1 |")
    );
    // So may the new owner once ownership moves, and not the old one; and an admin always.
    assert_eq!(
        outcome(&eve, "ALTER TABLE bronze.mine OWNER TO oscar").await,
        "ok"
    );
    let back = "RESTORE TABLE bronze.mine TO VERSION AS OF 2";
    assert_eq!(outcome(&eve, back).await, "42501");
    assert_eq!(outcome(&oscar, back).await, "ok");
    let admin = user(&engine, "ada", Role::Admin, &[]);
    assert_eq!(outcome(&admin, restore).await, "ok");
    // Prepared (described) like any statement; nested nowhere (it is not a query).
    assert_eq!(
        outcome(
            &reader,
            "EXPLAIN RESTORE TABLE bronze.mine TO VERSION AS OF 1"
        )
        .await,
        "42601"
    );
}

#[tokio::test]
async fn a_clone_needs_ownership_of_its_source_and_its_creator_owns_it() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE ROLE engineers;
             GRANT CREATE ON SCHEMA bronze TO engineers;
             GRANT USAGE ON SCHEMA bronze TO engineers;
             CREATE TABLE bronze.patients (id INT, name VARCHAR);
             INSERT INTO bronze.patients VALUES (1, 'Ada');
             GRANT SELECT ON TABLE bronze.patients TO engineers;
             ALTER TABLE bronze.patients ALTER COLUMN name SET MASK CASE WHEN is_member('admins') THEN name ELSE NULL END;",
        )
        .await
        .unwrap();
    let eve = user(&engine, "eve", Role::None, &["engineers"]);
    // A reader of a masked table must not get its rows unmasked in a table of its own.
    for kind in ["SHALLOW", "DEEP"] {
        let sql = format!("CREATE TABLE bronze.mine {kind} CLONE bronze.patients");
        assert_eq!(outcome(&eve, &sql).await, "42501", "{sql}");
    }
    assert!(
        count(&eve, "SELECT count(*) AS n FROM bronze.patients")
            .await
            .contains("| 1 |")
    );
    // Its owner may, and owns the clone; a user without CREATE in the schema may not.
    assert_eq!(outcome(&eve, "CREATE TABLE bronze.own (x INT)").await, "ok");
    assert_eq!(
        outcome(&eve, "CREATE TABLE bronze.own_copy DEEP CLONE bronze.own").await,
        "ok"
    );
    assert_eq!(
        outcome(&eve, "RESTORE TABLE bronze.own_copy TO VERSION AS OF 0").await,
        "22023"
    );
    let nobody = user(&engine, "nobody", Role::None, &[]);
    assert_eq!(
        outcome(&nobody, "CREATE TABLE bronze.x SHALLOW CLONE bronze.own").await,
        "42501"
    );
    assert_eq!(
        outcome(&eve, "CREATE TABLE system.x SHALLOW CLONE bronze.own").await,
        "42501"
    );
}
