//! Sources and sinks at their public API: what a pipeline file configures,
//! what a run reads and writes.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use weir::{ErrorPolicy, Pipeline, Sink};
use weir_connectors::sinks::dead_letter::{DeadLetterConfig, DeadLetterFile};
use weir_connectors::sinks::file::FileSink;
use weir_connectors::sinks::sqlite::SqliteSink;
use weir_connectors::sources::BuildContext;
use weir_connectors::sources::decode::Decoder;
use weir_connectors::sources::events::{events, write_events};
use weir_connectors::sources::file::FileSource;
use weir_connectors::sources::generate::GenerateSource;
use weir_connectors::{ConfigError, Position, Raw, Record};

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

fn ctx(dir: &Path) -> BuildContext {
    BuildContext {
        input: "in".into(),
        base_dir: dir.to_path_buf(),
        state: None,
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn pos(line: u64) -> Arc<Position> {
    Arc::new(Position {
        input: "in".into(),
        file: Some("t.jsonl".into()),
        line,
    })
}

fn rec(v: Value, line: u64) -> Record {
    Record::from_json(&v, pos(line))
}

/// Every raw item a source yields.
async fn read_all(source: weir::Source<Raw>) -> Vec<Raw> {
    let p = Pipeline::new();
    let out = p.source("in", source).sink("all", weir::collect());
    bounded(p.run()).await.unwrap();
    out.take().unwrap()
}

/// Every raw item decoded: the records, and the errors with their items.
async fn decode_all(yaml: &str, dir: &Path) -> (Vec<Raw>, Vec<Result<Record, String>>) {
    let cfg: FileSource = serde_saphyr::from_str(yaml).unwrap();
    let (source, decoder) = cfg.build(&ctx(dir)).unwrap();
    let raws = read_all(source).await;
    let decoded = raws
        .iter()
        .map(|r| decoder.decode(r).map_err(|e| e.to_string()))
        .collect();
    (raws, decoded)
}

fn file_of(r: &Raw) -> String {
    r.pos().file.as_deref().unwrap_or("").to_string()
}

#[tokio::test]
async fn decode_errors_carry_position_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "data/a.jsonl",
        "{\"id\":1}\n{\"id\":2,\"x\" 3}\n\n{\"id\":3}\n",
    );
    let (raws, decoded) = decode_all("path: data/a.jsonl\n", dir.path()).await;
    // The blank line is skipped, but line numbers count it.
    let lines: Vec<u64> = raws.iter().map(|r| r.pos().line).collect();
    assert_eq!(lines, vec![1, 2, 4]);
    assert_eq!(file_of(&raws[1]), "data/a.jsonl");
    assert_eq!(raws[1].pos().input.as_ref(), "in");
    assert_eq!(decoded[0].as_ref().unwrap().json(), json!({"id": 1}));
    let err = decoded[1].as_ref().unwrap_err();
    assert!(
        err.starts_with("parse_error: invalid JSON at column 13: "),
        "{err}"
    );
    assert_eq!(decoded[2].as_ref().unwrap().pos.line, 4);
}

/// Each decoded item: its line, and its record's value or its error.
fn outcomes(
    raws: &[Raw],
    decoded: Vec<Result<Record, String>>,
) -> Vec<(u64, Result<Value, String>)> {
    raws.iter()
        .zip(decoded)
        .map(|(raw, d)| (raw.pos().line, d.map(|r| r.json())))
        .collect()
}

/// A line that is not UTF-8 is rejected with reason `invalid_utf8` and the
/// byte offset of the first bad byte, in every text format, gzipped or
/// not; the lines around it are read as usual. It used to be decoded with
/// U+FFFD in place of the bad bytes, silently.
#[tokio::test]
async fn invalid_utf8_is_rejected_with_its_byte_offset_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |what: &str, at: usize, hex: &str| {
        Err(format!(
            "invalid_utf8: invalid UTF-8 at byte offset {at} of the {what} ({hex})"
        ))
    };
    std::fs::write(dir.path().join("x.log"), b"one\r\ntw\xffo\r\nthree").unwrap();
    let (raws, decoded) = decode_all("path: x.log\n", dir.path()).await;
    assert_eq!(
        outcomes(&raws, decoded),
        vec![
            (1, Ok(json!({"line": "one"}))),
            (2, bad("line", 2, "0xff")),
            (3, Ok(json!({"line": "three"}))),
        ]
    );
    // The dead-letter file shows the line with U+FFFD for the bad byte.
    assert_eq!(
        raws[1],
        Raw::NotUtf8 {
            pos: raws[1].pos().clone(),
            text: "tw\u{fffd}o".into(),
            detail: "invalid UTF-8 at byte offset 2 of the line (0xff)".into(),
        }
    );

    let jsonl: &[u8] =
        b"{\"a\":\"ok\"}\n{\"a\":\"bad\xff\"}\n{\"a\":\"caf\xc3\xa9\"}\n{\"a\":\"\xe2\x82\"}\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(jsonl).unwrap();
    std::fs::write(dir.path().join("a.jsonl"), jsonl).unwrap();
    std::fs::write(dir.path().join("b.jsonl.gz"), gz.finish().unwrap()).unwrap();
    for path in ["a.jsonl", "b.jsonl.gz"] {
        let (raws, decoded) = decode_all(&format!("path: {path}\n"), dir.path()).await;
        assert_eq!(
            outcomes(&raws, decoded),
            vec![
                (1, Ok(json!({"a": "ok"}))),
                (2, bad("line", 9, "0xff")),
                (3, Ok(json!({"a": "café"}))),
                (
                    4,
                    Err(
                        "invalid_utf8: invalid UTF-8 at byte offset 6 of the line (0xe2 0x82)"
                            .into()
                    )
                ),
            ],
            "{path}"
        );
    }

    std::fs::write(
        dir.path().join("c.csv"),
        b"id,name,note\n1,ok,x\n2,b\xffd,\"q\xfe\"\n3,fine,y\n4,x,y,\xff\n",
    )
    .unwrap();
    let (raws, decoded) = decode_all("path: c.csv\ncolumns: {id: int}\n", dir.path()).await;
    assert_eq!(
        outcomes(&raws, decoded),
        vec![
            (2, Ok(json!({"id": 1, "name": "ok", "note": "x"}))),
            (
                3,
                Err(
                    "invalid_utf8: column name: invalid UTF-8 at byte offset 1 of the field (0xff)"
                        .into()
                )
            ),
            (4, Ok(json!({"id": 3, "name": "fine", "note": "y"}))),
            (
                5,
                Err(
                    "invalid_utf8: field 4: invalid UTF-8 at byte offset 0 of the field (0xff)"
                        .into()
                )
            ),
        ]
    );
    match &raws[1] {
        Raw::NotUtf8 { text, .. } => assert_eq!(text, "2,b\u{fffd}d,q\u{fffd}"),
        other => panic!("{other:?}"),
    }

    // A csv header that is not UTF-8 stops the run, naming the file.
    std::fs::write(dir.path().join("h.csv"), b"id,n\xffme\n1,2\n").unwrap();
    let cfg: FileSource = serde_saphyr::from_str("path: h.csv\n").unwrap();
    let (source, _) = cfg.build(&ctx(dir.path())).unwrap();
    let p = Pipeline::new();
    let _out = p.source("in", source).sink("all", weir::collect::<Raw>());
    let err = bounded(p.run()).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "stage 'in' failed: cannot read h.csv at line 1: header field 2: invalid UTF-8 at byte offset 1 of the field (0xff); set `invalid_utf8: replace` to read it anyway"
    );
}

/// `invalid_utf8: replace` keeps the old behaviour: U+FFFD for each invalid
/// sequence, and the line is decoded.
#[tokio::test]
async fn invalid_utf8_replace_decodes_the_repaired_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.log"), b"one\ntw\xffo\n").unwrap();
    std::fs::write(dir.path().join("h.csv"), b"id,n\xffme\n1,\xfe\n").unwrap();
    let (raws, decoded) = decode_all("path: x.log\ninvalid_utf8: replace\n", dir.path()).await;
    assert_eq!(
        outcomes(&raws, decoded),
        vec![
            (1, Ok(json!({"line": "one"}))),
            (2, Ok(json!({"line": "tw\u{fffd}o"}))),
        ]
    );
    let (raws, decoded) = decode_all("path: h.csv\ninvalid_utf8: replace\n", dir.path()).await;
    assert_eq!(
        outcomes(&raws, decoded),
        vec![(2, Ok(json!({"id": "1", "n\u{fffd}me": "\u{fffd}"})))]
    );
}

#[tokio::test]
async fn glob_reads_files_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["c", "a", "b"] {
        write(
            dir.path(),
            &format!("data/{name}.jsonl"),
            &format!("{{\"f\":\"{name}\",\"n\":1}}\n{{\"f\":\"{name}\",\"n\":2}}\n"),
        );
    }
    write(dir.path(), "data/skip.csv", "a,b\n1,2\n");
    let (raws, decoded) = decode_all("path: \"data/*.jsonl\"\n", dir.path()).await;
    let got: Vec<(String, u64)> = raws.iter().map(|r| (file_of(r), r.pos().line)).collect();
    assert_eq!(
        got,
        vec![
            ("data/a.jsonl".into(), 1),
            ("data/a.jsonl".into(), 2),
            ("data/b.jsonl".into(), 1),
            ("data/b.jsonl".into(), 2),
            ("data/c.jsonl".into(), 1),
            ("data/c.jsonl".into(), 2),
        ]
    );
    assert!(decoded.iter().all(Result::is_ok));
}

#[tokio::test]
async fn gzip_is_read_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/e.jsonl.gz");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Two gzip members, as `cat a.gz b.gz` makes.
    let mut bytes = Vec::new();
    for chunk in ["{\"n\":1}\n{\"n\":2}\n", "{\"n\":3}\n"] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(chunk.as_bytes()).unwrap();
        bytes.extend(enc.finish().unwrap());
    }
    std::fs::write(&path, bytes).unwrap();
    let (raws, decoded) = decode_all("path: data/e.jsonl.gz\n", dir.path()).await;
    let values: Vec<Value> = decoded.into_iter().map(|r| r.unwrap().json()).collect();
    assert_eq!(values, vec![json!({"n":1}), json!({"n":2}), json!({"n":3})]);
    assert_eq!(raws[2].pos().line, 3);
    assert_eq!(file_of(&raws[2]), "data/e.jsonl.gz");
}

#[tokio::test]
async fn corrupt_gzip_fails_the_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.jsonl.gz", "this is not gzip\n");
    let cfg: FileSource = serde_saphyr::from_str("path: bad.jsonl.gz\n").unwrap();
    let (source, _) = cfg.build(&ctx(dir.path())).unwrap();
    let p = Pipeline::new();
    let _out = p.source("in", source).sink("all", weir::collect::<Raw>());
    let err = bounded(p.run()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot read bad.jsonl.gz at line 1"), "{msg}");
}

#[tokio::test]
async fn csv_typed_columns_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "orders.csv",
        "id;amount;paid;note\n1;9.5;true;hello\n2;abc;false;\n3;1;maybe;x\n4;2\n\"5\";\"7\";TRUE;\"multi\nline\"\n6;1;false;end\n",
    );
    let yaml =
        "path: orders.csv\ndelimiter: \";\"\ncolumns:\n  id: int\n  amount: float\n  paid: bool\n";
    let (raws, decoded) = decode_all(yaml, dir.path()).await;
    let lines: Vec<u64> = raws.iter().map(|r| r.pos().line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6, 8]);
    assert_eq!(
        decoded[0].as_ref().unwrap().json(),
        json!({"id": 1, "amount": 9.5, "paid": true, "note": "hello"})
    );
    assert_eq!(
        decoded[1].as_ref().unwrap_err(),
        "parse_error: column amount: 'abc' is not a float"
    );
    assert_eq!(
        decoded[2].as_ref().unwrap_err(),
        "parse_error: column paid: 'maybe' is not a bool"
    );
    assert_eq!(
        decoded[3].as_ref().unwrap_err(),
        "parse_error: csv row has 2 fields, the header has 4"
    );
    assert_eq!(
        decoded[4].as_ref().unwrap().json(),
        json!({"id": 5, "amount": 7.0, "paid": true, "note": "multi\nline"})
    );
    assert_eq!(decoded[5].as_ref().unwrap().json()["note"], json!("end"));
}

fn build_err(yaml: &str, dir: &Path) -> ConfigError {
    let cfg: FileSource = serde_saphyr::from_str(yaml).unwrap();
    match cfg.build(&ctx(dir)) {
        Ok(_) => panic!("expected a config error for {yaml:?}"),
        Err(e) => e,
    }
}

#[test]
fn missing_files_are_config_errors_with_location() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data/a.jsonl", "{}\n");
    write(dir.path(), "data/b.csv", "a\n1\n");
    let yaml = "format: jsonl\npath: data/nope.jsonl\n";
    let e = build_err(yaml, dir.path());
    assert_eq!(e.at, Some((2, 7)), "{e}");
    assert!(
        e.message
            .contains("cannot open 'data/nope.jsonl': no such file"),
        "{e}"
    );

    let e = build_err("path: \"data/*.xml\"\n", dir.path());
    assert_eq!(e.at, Some((1, 7)), "{e}");
    assert!(e.message.contains("no file matches 'data/*.xml'"), "{e}");

    let e = build_err("path: \"data/[\"\n", dir.path());
    assert_eq!(e.at, Some((1, 7)), "{e}");
    assert!(e.message.contains("invalid glob"), "{e}");

    let e = build_err("path: \"data/*\"\n", dir.path());
    assert!(e.message.contains("different formats"), "{e}");

    let e = build_err("path: data\n", dir.path());
    assert!(e.message.contains("is a directory"), "{e}");

    let e = build_err("path: data/a.jsonl\ncolumns: {a: int}\n", dir.path());
    assert!(e.message.contains("csv only"), "{e}");

    // Unknown options are rejected by the parser, with a location.
    let bad = serde_saphyr::from_str::<FileSource>("path: a\nform: jsonl\n");
    assert!(bad.is_err());
}

fn sqlite_cfg(dir: &Path, extra: &str) -> SqliteSink {
    let _ = dir;
    let yaml = format!(
        "path: db/out.db\ntable: orders\ncolumns:\n  id: integer\n  user: text\n  amount: real\n  tags: json\n{extra}"
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

/// A row of the test table: id, user, amount, tags.
type Row = (i64, Option<String>, Option<f64>, Option<String>);

fn rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut st = conn
        .prepare("SELECT id, user, amount, tags FROM orders ORDER BY id, rowid")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn orders() -> Vec<Record> {
    vec![
        rec(
            json!({"id": 1, "user": "u1", "amount": 2.5, "tags": ["a"]}),
            1,
        ),
        rec(
            json!({"id": 2, "user": "u2", "amount": 3, "extra": true}),
            2,
        ),
        rec(
            json!({"id": 1, "user": "u1b", "amount": 4.0, "tags": []}),
            3,
        ),
    ]
}

#[tokio::test]
async fn sqlite_upsert_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(dir.path(), "key: [id]\n");
    let db = dir.path().join("db/out.db");
    for _ in 0..2 {
        let mut w = cfg.build(&ctx(dir.path())).unwrap();
        bounded(w.write(orders())).await.unwrap();
        bounded(w.write(orders())).await.unwrap();
        assert_eq!(bounded(w.finish()).await.unwrap(), 6);
        assert_eq!(
            rows(&db),
            vec![
                (1, Some("u1b".into()), Some(4.0), Some("[]".into())),
                (2, Some("u2".into()), Some(3.0), None),
            ]
        );
    }
    // The table was created with the configured columns and key.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'orders'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("\"amount\" REAL"), "{sql}");
    assert!(sql.contains("PRIMARY KEY (\"id\")"), "{sql}");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_without_key_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(dir.path(), "");
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    bounded(w.write(orders())).await.unwrap();
    assert_eq!(bounded(w.finish()).await.unwrap(), 3);
    assert_eq!(rows(&dir.path().join("db/out.db")).len(), 3);
}

#[tokio::test]
async fn sqlite_bad_value_gives_back_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(dir.path(), "key: [id]\n");
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    let batch = vec![
        rec(json!({"id": 1, "amount": 1}), 1),
        rec(json!({"id": 2, "amount": "abc"}), 2),
        rec(json!({"id": 3, "amount": 3}), 3),
    ];
    let err = bounded(w.write(batch)).await.unwrap_err();
    assert_eq!(err.unwritten.len(), 2);
    assert_eq!(err.unwritten[0].pos.line, 2);
    assert_eq!(
        err.error.to_string(),
        "record at t.jsonl:2: column amount: expected a number, got \"abc\""
    );
    assert_eq!(bounded(w.finish()).await.unwrap(), 1);
    assert_eq!(rows(&dir.path().join("db/out.db")).len(), 1);
}

#[tokio::test]
async fn sqlite_read_only_and_locked_databases_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(dir.path(), "busy_timeout_ms: 50\n");
    drop(cfg.build(&ctx(dir.path())).unwrap());
    let db = dir.path().join("db/out.db");

    // Locked: another connection holds the write lock.
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = bounded(w.write(orders())).await.unwrap_err();
    assert_eq!(err.unwritten.len(), 3);
    assert_eq!(
        err.error.to_string(),
        "writing to database db/out.db is locked by another connection"
    );
    other.execute_batch("ROLLBACK").unwrap();
    bounded(w.write(orders())).await.unwrap();
    drop(w);
    drop(other);

    // Read-only file.
    let mut perm = std::fs::metadata(&db).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&db, perm).unwrap();
    let e = cfg.build(&ctx(dir.path())).unwrap_err();
    assert_eq!(
        e.message,
        "sqlite sink: database file db/out.db is read-only"
    );
    assert_eq!(e.at, Some((1, 7)));
}

/// A keyed table refuses a record whose key is missing or null (SQLite
/// would store it, and every rerun would add it again): it alone is
/// dead-lettered, naming its position and the key column, the rest is
/// written, and a rerun leaves the same rows.
#[tokio::test]
async fn sqlite_missing_or_null_key_is_dead_lettered_and_reruns_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_cfg(dir.path(), "key: [id]\n");
    let records = || {
        vec![
            rec(json!({"id": 1, "user": "a"}), 1),
            rec(json!({"id": null, "user": "b"}), 2),
            rec(json!({"user": "c"}), 3),
            rec(json!({"id": 2, "user": "d"}), 4),
        ]
    };
    for _run in 0..2 {
        let p = Pipeline::new();
        let dead = p.dead_letter_sink(weir::collect());
        let written = p
            .source("in", weir::from_iter(records()))
            .sink("db", cfg.build(&ctx(dir.path())).unwrap())
            .on_error(ErrorPolicy::DeadLetter);
        let report = bounded(p.run()).await.unwrap();
        let db = report.stage("db").unwrap();
        assert_eq!((db.received, db.ok, db.dead_lettered), (4, 2, 2));
        assert_eq!(written.take(), Some(2));
        let letters: Vec<(String, String, u64)> = dead
            .take()
            .unwrap()
            .iter()
            .map(|d: &weir::DeadLetter| {
                (
                    d.stage.clone(),
                    d.error.clone(),
                    d.item::<Record>().unwrap().pos.line,
                )
            })
            .collect();
        assert_eq!(
            letters,
            vec![
                (
                    "db".to_string(),
                    "record at t.jsonl:2: key column id is null".to_string(),
                    2
                ),
                (
                    "db".to_string(),
                    "record at t.jsonl:3: key column id is missing".to_string(),
                    3
                ),
            ]
        );
        assert_eq!(
            rows(&dir.path().join("db/out.db")),
            vec![
                (1, Some("a".into()), None, None),
                (2, Some("d".into()), None, None)
            ]
        );
    }
    // Without a key, null ids are rows like any other.
    let cfg = sqlite_cfg(dir.path(), "");
    let dir2 = tempfile::tempdir().unwrap();
    let mut w = cfg.build(&ctx(dir2.path())).unwrap();
    bounded(w.write(records())).await.unwrap();
    assert_eq!(bounded(w.finish()).await.unwrap(), 4);
}

/// A write waits `busy_timeout_ms` for another connection's lock, then
/// fails; the default is 5 s; a value SQLite cannot hold is a config error
/// at the option.
#[tokio::test]
async fn sqlite_busy_timeout_is_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db/out.db");
    assert_eq!(
        sqlite_cfg(dir.path(), "").busy_timeout().unwrap(),
        Duration::from_secs(5)
    );
    let cfg = sqlite_cfg(dir.path(), "busy_timeout_ms: 400\n");
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t0 = std::time::Instant::now();
    let err = bounded(w.write(orders())).await.unwrap_err();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
    assert_eq!(err.unwritten.len(), 3);
    other.execute_batch("ROLLBACK").unwrap();

    let cfg = sqlite_cfg(dir.path(), "busy_timeout_ms: 2147483648\n");
    let e = cfg.build(&ctx(dir.path())).unwrap_err();
    assert_eq!(
        e.message,
        "sqlite sink: busy_timeout_ms must be at most 86400000 (a day), not 2147483648"
    );
    assert_eq!(e.at, Some((8, 18)));
    assert_eq!(cfg.check().unwrap_err(), e);
}

#[tokio::test]
async fn sqlite_table_that_does_not_fit_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(sqlite_cfg(dir.path(), "").build(&ctx(dir.path())).unwrap());
    // Same table, now with a key the existing table lacks.
    let e = sqlite_cfg(dir.path(), "key: [id]\n")
        .build(&ctx(dir.path()))
        .unwrap_err();
    assert!(e.message.contains("does not fit the configuration"), "{e}");
    let e = sqlite_cfg(dir.path(), "key: [nope]\n")
        .build(&ctx(dir.path()))
        .unwrap_err();
    assert!(
        e.message.contains("key column 'nope' is not in 'columns'"),
        "{e}"
    );
}

#[tokio::test]
async fn file_sink_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    // jsonl out, then read back with the file source.
    let cfg: FileSink = serde_saphyr::from_str("path: out/o.jsonl\n").unwrap();
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    bounded(w.write(orders())).await.unwrap();
    // Data is in the file as soon as a write returns.
    let text = std::fs::read_to_string(dir.path().join("out/o.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert_eq!(bounded(w.finish()).await.unwrap(), 3);
    let (_, decoded) = decode_all("path: out/o.jsonl\n", dir.path()).await;
    let back: Vec<Value> = decoded.into_iter().map(|r| r.unwrap().json()).collect();
    let orig: Vec<Value> = orders().into_iter().map(|r| r.json()).collect();
    assert_eq!(back, orig);

    // csv out with default columns (the first record's keys).
    let cfg: FileSink = serde_saphyr::from_str("path: out/o.csv\n").unwrap();
    let mut w = cfg.build(&ctx(dir.path())).unwrap();
    bounded(w.write(orders())).await.unwrap();
    let err = bounded(w.write(vec![rec(json!([1]), 9), rec(json!({"id": 5}), 10)]))
        .await
        .unwrap_err();
    assert_eq!(err.unwritten.len(), 2);
    assert!(err.error.to_string().contains("t.jsonl:9"), "{}", err.error);
    assert_eq!(bounded(w.finish()).await.unwrap(), 3);
    let text = std::fs::read_to_string(dir.path().join("out/o.csv")).unwrap();
    assert_eq!(
        text,
        "id,user,amount,tags\n1,u1,2.5,\"[\"\"a\"\"]\"\n2,u2,3,\n1,u1b,4.0,[]\n"
    );
}

#[tokio::test]
async fn whole_pipeline_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..5000u64 {
        if i % 100 == 7 {
            text.push_str(&format!("{{\"id\":{i},\"amount\":\n"));
        } else if i % 250 == 3 {
            text.push_str(&format!("{{\"id\":{i},\"amount\":\"lots\"}}\n"));
        } else {
            text.push_str(&format!(
                "{{\"id\":{i},\"user\":\"u{}\",\"amount\":{}.5}}\n",
                i % 10,
                i
            ));
        }
    }
    write(dir.path(), "in/orders.jsonl", &text);
    let yaml = "path: in/orders.jsonl\n";
    let cfg: FileSource = serde_saphyr::from_str(yaml).unwrap();
    let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
    let sink = sqlite_cfg(dir.path(), "key: [id]\n")
        .build(&ctx(dir.path()))
        .unwrap();
    let dl: DeadLetterConfig = serde_saphyr::from_str("path: out/dead.jsonl\n").unwrap();
    let dl = dl.build(&ctx(dir.path())).unwrap();

    let p = Pipeline::with_options(weir::PipelineOptions {
        batch_size: 64,
        ..Default::default()
    });
    let dead = p.dead_letter_sink(dl);
    let rows_out = p
        .source("orders", source)
        .try_map("decode", move |raw: &Raw| decoder.decode(raw))
        .workers(2)
        .on_error(ErrorPolicy::DeadLetter)
        .sink("db", sink)
        .on_error(ErrorPolicy::DeadLetter);
    let report = bounded(p.run()).await.unwrap();

    let src = report.stage("orders").unwrap();
    let dec = report.stage("decode").unwrap();
    let db = report.stage("db").unwrap();
    assert_eq!(src.received, 5000);
    assert_eq!(dec.received, 5000);
    assert_eq!(dec.dead_lettered, 50);
    assert_eq!(dec.ok, 4950);
    assert!(dec.is_balanced() && db.is_balanced());
    // The string amount fails at the sink, taking the rest of its batch.
    assert!(db.dead_lettered >= 20, "{db:?}");
    let written = rows_out.take().unwrap();
    assert_eq!(written, db.ok);
    assert_eq!(written + db.dead_lettered, 4950);
    assert_eq!(rows(&dir.path().join("db/out.db")).len() as u64, written);
    let letters = dead.take().unwrap();
    assert_eq!(letters, 50 + db.dead_lettered);
    let dl_text = std::fs::read_to_string(dir.path().join("out/dead.jsonl")).unwrap();
    assert_eq!(dl_text.lines().count() as u64, letters);
    let first: Value = serde_json::from_str(dl_text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["position"].as_str().unwrap().split(':').next(),
        Some("in/orders.jsonl")
    );
}

#[tokio::test]
async fn dead_letter_file_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl/dead.jsonl");
    let sink = DeadLetterFile::create(&path).unwrap();
    let p = Pipeline::new();
    let dead = p.dead_letter_sink(sink);
    let items = vec![
        Raw::Line {
            pos: Arc::new(Position {
                input: "orders".into(),
                file: Some("data/o.jsonl".into()),
                line: 7,
            }),
            text: "{\"id\":".into(),
        },
        Raw::Record(rec(json!({"id": 1}), 8)),
        Raw::Row {
            pos: Arc::new(Position {
                input: "csv".into(),
                file: None,
                line: 3,
            }),
            headers: vec!["a".to_string(), "b".to_string(), "c".to_string()].into(),
            fields: vec!["1".into(), "x,y".into()],
        },
    ];
    let out = p
        .source("in", weir::from_iter(items))
        .try_map("decode", |raw: &Raw| {
            let d = Decoder::jsonl();
            match raw {
                Raw::Record(_) => Err(weir_connectors::ProcessError::new("nope", "a record")),
                _ => d.decode(raw).map(|_| ()),
            }
        })
        .on_error(ErrorPolicy::DeadLetter)
        .sink("all", weir::collect());
    bounded(p.run()).await.unwrap();
    assert_eq!(out.take().unwrap().len(), 0);
    assert_eq!(dead.take(), Some(3));
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let by_pos = |p: &str| {
        lines
            .iter()
            .find(|l| l["position"] == json!(p))
            .unwrap_or_else(|| panic!("no letter at {p}: {lines:?}"))
            .clone()
    };
    let l = by_pos("data/o.jsonl:7");
    assert_eq!(l["stage"], "decode");
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["input"], "orders");
    assert_eq!(l["raw"], "{\"id\":");
    assert_eq!(l["record"], Value::Null);
    assert!(
        l["error"]
            .as_str()
            .unwrap()
            .starts_with("parse_error: invalid JSON at column 6: EOF"),
        "{l}"
    );
    let l = by_pos("t.jsonl:8");
    assert_eq!(l["record"], json!({"id": 1}));
    assert_eq!(l["error"], "nope: a record");
    assert_eq!(l["raw"], Value::Null);
    let l = by_pos("csv#3");
    assert_eq!(l["raw"], "1,\"x,y\"");
}

/// The dead letters of a stage that rejects a record per line of `lines`.
async fn letters_for(lines: &[u64]) -> Vec<weir::DeadLetter> {
    let p = Pipeline::new();
    let dead = p.dead_letter_sink(weir::collect());
    let records: Vec<Record> = lines.iter().map(|&l| rec(json!({"n": l}), l)).collect();
    let _out = p
        .source("in", weir::from_iter(records))
        .try_map("check", |r: &Record| {
            Err::<Record, _>(weir_connectors::ProcessError::new(
                "bad",
                format!("line {}", r.pos.line),
            ))
        })
        .on_error(ErrorPolicy::DeadLetter)
        .sink("out", weir::collect());
    bounded(p.run()).await.unwrap();
    dead.take().unwrap()
}

/// The positions of the letters in a dead-letter file, in file order.
fn letter_positions(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["position"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Opened for a resumed run, the dead-letter file skips the letters it
/// already holds (as many times as it holds each), writes the others, and
/// cuts off a line torn by a crash.
#[tokio::test]
async fn dead_letter_file_appends_each_letter_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl/dead.jsonl");
    let mut f = DeadLetterFile::create(&path).unwrap();
    f.write_batch(letters_for(&[1, 2, 3]).await).unwrap();
    drop(f);
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    torn.write_all(b"{\"stage\":\"check\",\"err").unwrap();
    drop(torn);

    let mut f = DeadLetterFile::append(&path).unwrap();
    f.write_batch(letters_for(&[2, 3, 4]).await).unwrap();
    assert_eq!((f.written(), f.repeats()), (1, 2));
    bounded(f.finish()).await.unwrap();
    assert_eq!(
        letter_positions(&path),
        ["t.jsonl:1", "t.jsonl:2", "t.jsonl:3", "t.jsonl:4"]
    );

    // A letter met twice where the file holds it once is written once more.
    let mut f = DeadLetterFile::append(&path).unwrap();
    f.write_batch(letters_for(&[4, 4]).await).unwrap();
    assert_eq!((f.written(), f.repeats()), (1, 1));
    drop(f);
    assert_eq!(
        letter_positions(&path),
        [
            "t.jsonl:1",
            "t.jsonl:2",
            "t.jsonl:3",
            "t.jsonl:4",
            "t.jsonl:4"
        ]
    );
    // A fresh run starts the file over.
    let mut f = DeadLetterFile::create(&path).unwrap();
    f.write_batch(letters_for(&[9]).await).unwrap();
    drop(f);
    assert_eq!(letter_positions(&path), ["t.jsonl:9"]);
}

/// An `io::Write` that hashes and counts.
struct HashWriter(sha2::Sha256, u64);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn events_checksum_and_counts_one_million() {
    let mut hash = HashWriter(sha2::Sha256::new(), 0);
    let (mut truncated, mut missing, mut negative, mut valid) = (0, 0, 0, 0);
    for mut line in events(42, 1_000_000, 10_000) {
        // A full line ends in "]}" and has it nowhere else.
        if !line.ends_with("]}") {
            truncated += 1;
        } else if ["\"user\":", "\"ts\":", "\"kind\":", "\"amount\":"]
            .iter()
            .any(|f| !line.contains(f))
        {
            missing += 1;
        } else if line.contains("\"amount\":-") {
            negative += 1;
        } else {
            valid += 1;
        }
        line.push('\n');
        hash.write_all(line.as_bytes()).unwrap();
    }
    assert_eq!(hash.1, 100_168_501);
    let hex: String = hash
        .0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "7d65043f016fb52940070302f02dcb2668696246ab9439d6e73358e4eef3ff17"
    );
    assert_eq!((truncated, missing, negative), (3_829, 3_123, 2_980));
    assert_eq!(valid, 990_068);
}

#[test]
fn write_events_writes_the_lines() {
    let mut out = Vec::new();
    let n = write_events(7, 10_000, 50, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    let expected: String = events(7, 10_000, 50).map(|l| l + "\n").collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // Every line that parses is an object with an id.
    let parsed = expected
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .inspect(|v| assert!(v["id"].is_u64()))
        .count();
    assert!(parsed > 9_900 && parsed < 10_000, "{parsed}");
}

#[tokio::test]
async fn generate_template_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |seed: u64| {
        format!(
            "count: 500\nseed: {seed}\ntemplate:\n  id: \"{{{{seq}}}}\"\n  n: \"{{{{int:-5..5}}}}\"\n  label: \"k-{{{{choice:a|b}}}}-{{{{int:0..3}}}}\"\n  nested: {{x: [\"{{{{float:0..1}}}}\", 2]}}\n  fixed: true\n"
        )
    };
    let run = |seed: u64| {
        let cfg: GenerateSource = serde_saphyr::from_str(&yaml(seed)).unwrap();
        let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
        async move {
            read_all(source)
                .await
                .iter()
                .map(|r| decoder.decode(r).unwrap())
                .collect::<Vec<Record>>()
        }
    };
    let a = run(1).await;
    let b = run(1).await;
    let c = run(2).await;
    assert_eq!(a.len(), 500);
    assert_eq!(a, b);
    assert_ne!(a, c);
    for (i, r) in a.iter().enumerate() {
        assert_eq!(r.json()["id"], json!(i));
        assert_eq!(r.pos.line, i as u64 + 1);
        assert_eq!(r.pos.file, None);
        let n = r.json()["n"].as_i64().unwrap();
        assert!((-5..5).contains(&n));
        let json = r.json();
        let label = json["label"].as_str().unwrap();
        assert!(
            label.starts_with("k-a-") || label.starts_with("k-b-"),
            "{label}"
        );
        assert!(r.json()["nested"]["x"][0].is_f64());
        assert_eq!(r.json()["nested"]["x"][1], json!(2));
        assert_eq!(r.json()["fixed"], json!(true));
    }
}

#[tokio::test]
async fn generate_events_preset_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: GenerateSource =
        serde_saphyr::from_str("count: 20\nseed: 42\npreset: events\nrate: 400\n").unwrap();
    let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
    let t0 = std::time::Instant::now();
    let raws = read_all(source).await;
    // 20 records at 400/s: the last is due after 19/400 s.
    assert!(
        t0.elapsed() >= Duration::from_millis(45),
        "{:?}",
        t0.elapsed()
    );
    let expected: Vec<String> = events(42, 20, 10_000).collect();
    let got: Vec<String> = raws
        .iter()
        .map(|r| match r {
            Raw::Line { text, .. } => text.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, expected);
    assert!(decoder.decode(&raws[0]).is_ok());

    for bad in ["count: 1\n", "count: 1\npreset: events\ntemplate: {a: 1}\n"] {
        let cfg: GenerateSource = serde_saphyr::from_str(bad).unwrap();
        assert!(cfg.build(&ctx(dir.path())).is_err(), "{bad}");
    }
    // Rates that cannot be paced are errors at the `rate` value (a tiny
    // one used to panic in `Duration::from_secs_f64`).
    for rate in ["0", "-1", "1e-300", "5e-6", ".nan", ".inf", "1e300"] {
        let yaml = format!("count: 1\npreset: events\nrate: {rate}\n");
        let cfg: GenerateSource = serde_saphyr::from_str(&yaml).unwrap();
        let e = match cfg.build(&ctx(dir.path())) {
            Ok(_) => panic!("rate {rate} was accepted"),
            Err(e) => e,
        };
        assert_eq!(e.at, Some((3, 7)), "{e}");
        assert!(
            e.message.starts_with(
                "generate source: rate must be between 1/86400 (one record a day) and 1e9 records per second, not "
            ),
            "{e}"
        );
    }
}

/// A paced source hands each record on when it is due, and a cancelled run
/// stops it at once: it used to fill a whole batch first (at 20 records a
/// second, 1024 records took 51 s, and Ctrl-C waited for them).
#[tokio::test]
async fn paced_generate_is_prompt_and_stops_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: GenerateSource =
        serde_saphyr::from_str("count: 200\nrate: 20\ntemplate: { a: 1 }\n").unwrap();
    let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
    let p = Pipeline::new();
    let t0 = std::time::Instant::now();
    let first = Arc::new(std::sync::Mutex::new(None));
    let seen = first.clone();
    let out = p
        .source("gen", source)
        .try_map("decode", move |raw: &Raw| decoder.decode(raw))
        .sink(
            "out",
            weir::fold(0u64, move |n, _r: Record| {
                seen.lock().unwrap().get_or_insert_with(|| t0.elapsed());
                n + 1
            }),
        );
    let cancel = p.cancel_token();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    let report = tokio::time::timeout(Duration::from_secs(5), p.run())
        .await
        .expect("the cancelled run did not stop within 5 s")
        .unwrap();
    let first = first.lock().unwrap().expect("a record arrived");
    assert!(
        first < Duration::from_millis(400),
        "first record after {first:?}"
    );
    let got = out.take().unwrap();
    // About 10 records in 500 ms; all of them drained to the sink.
    assert!((5..=20).contains(&got), "{got}");
    assert_eq!(report.stage("gen").unwrap().ok, got);
}

/// A manual throughput check of reading and decoding (B4 data):
/// `cargo test --release -p weir-connectors --test sources_sinks -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_read_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write_events(42, 1_000_000, 10_000, &mut out).unwrap();
    out.flush().unwrap();
    drop(out);
    let cfg: FileSource = serde_saphyr::from_str("path: events.jsonl\n").unwrap();
    let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
    let p = Pipeline::new();
    let dead = p.dead_letter_sink(weir::fold(0u64, |n, _d: weir::DeadLetter| n + 1));
    let count = p
        .source("events", source)
        .try_map("decode", move |raw: &Raw| decoder.decode(raw))
        .workers(2)
        .on_error(ErrorPolicy::DeadLetter)
        .sink("count", weir::fold(0u64, |n, _r: Record| n + 1));
    let t0 = std::time::Instant::now();
    let report = bounded(p.run()).await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(count.take(), Some(1_000_000 - 3_829));
    assert_eq!(dead.take(), Some(3_829));
    eprintln!("{:.0} lines/s\n{report}", 1e6 / secs);
}
