//! `keel_server::backup` on both databases: what a backup holds, what restore checks.

mod common;

use std::path::Path;

use common::TestDb;
use keel_server::backup::{backup, restore, Source};
use keel_server::store::Store;

/// A data directory with a key, one layer file and an account with a token in `db`.
async fn populate(data: &Path, db: &TestDb) -> String {
    keel_server::node::create_data_dir(data).unwrap();
    keel_server::node::server_key(data).unwrap();
    std::fs::create_dir_all(data.join("objects/layers")).unwrap();
    std::fs::write(data.join("objects/layers/ab12"), b"layer bytes").unwrap();
    let store = db.open().await;
    store.create_account("acct-a", "a").await.unwrap();
    store.create_token("acct-a", "t").await.unwrap()
}

fn fresh(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("keel-backup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_restores_key_database_and_layers() {
    let db = TestDb::sqlite("backup-sqlite");
    let data = fresh("sqlite-data");
    let token = populate(&data, &db).await;
    let src = Source { data_dir: &data, database_url: Some(&db.url), objects_dir: Some(data.join("objects")) };
    let out = fresh("sqlite-out");
    let m = backup(&src, &out).await.unwrap();
    assert_eq!(m.database, "sqlite");
    assert!(m.notes.is_empty(), "{:?}", m.notes);
    // A second backup into the same place is refused.
    assert!(backup(&src, &out).await.unwrap_err().contains("not empty"));

    let restored = fresh("sqlite-restored");
    let r = restore(&out, &restored).unwrap();
    assert_eq!(r.server_public_key, m.server_public_key);
    assert_eq!(std::fs::read(restored.join("server.key")).unwrap(), std::fs::read(data.join("server.key")).unwrap());
    assert_eq!(std::fs::read(restored.join("objects/layers/ab12")).unwrap(), b"layer bytes");
    let store = Store::open(&keel_server::node::database_url(&restored, None)).await.unwrap();
    assert_eq!(store.account_for_token(&token).await.unwrap().as_deref(), Some("acct-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_says_how_to_dump_the_database() {
    let db = TestDb::postgres("backup-pg");
    let data = fresh("pg-data");
    populate(&data, &db).await;
    let src = Source { data_dir: &data, database_url: Some(&db.url), objects_dir: Some(data.join("objects")) };
    let out = fresh("pg-out");
    let m = backup(&src, &out).await.unwrap();
    assert_eq!(m.database, "postgres");
    assert!(m.notes.iter().any(|n| n.contains("pg_dump")), "{:?}", m.notes);
    assert!(!out.join("keel.db").exists());
    let restored = fresh("pg-restored");
    restore(&out, &restored).unwrap();
    assert_eq!(std::fs::read(restored.join("server.key")).unwrap(), std::fs::read(data.join("server.key")).unwrap());
    assert_eq!(std::fs::read(restored.join("objects/layers/ab12")).unwrap(), b"layer bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_not_restored() {
    let db = TestDb::sqlite("backup-damaged");
    let data = fresh("damaged-data");
    populate(&data, &db).await;
    let src = Source { data_dir: &data, database_url: Some(&db.url), objects_dir: Some(data.join("objects")) };
    let out = fresh("damaged-out");
    backup(&src, &out).await.unwrap();
    std::fs::write(out.join("objects/layers/ab12"), b"other bytes").unwrap();
    let restored = fresh("damaged-restored");
    let e = restore(&out, &restored).unwrap_err();
    assert!(e.contains("does not match"), "{e}");
    assert!(!restored.exists(), "a damaged backup left a data directory");
}
