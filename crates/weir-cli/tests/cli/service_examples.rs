//! The service examples of `examples/pipelines`, run end to end on copies,
//! against the local services `weir demo` starts (on free ports, found
//! from what it prints).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{Dir, assert_accounting, code, n, text};

/// A `weir demo` process, killed when dropped.
struct Demo {
    child: Child,
    /// Each service's name and URL, as printed.
    urls: Vec<(String, String)>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
            .arg("demo")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("weir demo starts");
        let mut urls = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("weir demo prints its services")
                .unwrap();
            if line.starts_with("serving until") {
                break;
            }
            // "prices fast: http://127.0.0.1:PORT"
            let (name, url) = line.split_once(": ").expect("name: url");
            let name = name.rsplit(' ').next().unwrap().to_string();
            urls.push((name, url.to_string()));
        }
        Demo { child, urls }
    }

    fn url(&self, name: &str) -> &str {
        &self
            .urls
            .iter()
            .find(|(n, _)| n == name)
            .expect("a service")
            .1
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `example` and the data files it reads into `d`.
fn copy_example(d: &Dir, example: &str, data: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines");
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::copy(src.join(example), d.join(example)).unwrap();
    for f in data {
        std::fs::copy(src.join("data").join(f), d.join("data").join(f)).unwrap();
    }
}

fn report(out: &std::process::Output) -> Value {
    serde_json::from_str(text(&out.stdout).lines().last().expect("a report")).expect("JSON")
}

/// `prices.yaml`: every product priced by the services that answered, the
/// lowest price kept; the slow service's tail is hedged, so it always
/// answers within its deadline; the flaky one misses now and then and is
/// named when it does.
#[test]
fn prices_example_scatters_and_keeps_the_best_answer() {
    let demo = Demo::start(&["prices"]);
    let d = Dir::new();
    copy_example(&d, "prices.yaml", &["products.jsonl"]);
    let out = d
        .weir(&["run", "prices.yaml", "--report", "json"])
        .env("PRICES_FAST", demo.url("fast"))
        .env("PRICES_SLOW", demo.url("slow"))
        .env("PRICES_FLAKY", demo.url("flaky"))
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r = report(&out);
    assert_accounting(&r);
    assert_eq!(n(&r, "quotes", "ok"), 200, "every product priced");
    let conn = rusqlite::Connection::open(d.join("out/prices.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT sku, price, service, answered, missed FROM best_prices")
        .unwrap();
    let rows: Vec<(String, f64, String, String, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 200);
    for (sku, price, service, answered, missed) in &rows {
        // The slow service is the cheapest and, hedged, always answers.
        assert_eq!(service, "slow", "{sku}");
        assert!(
            answered.contains("fast") && answered.contains("slow"),
            "{sku}: {answered}"
        );
        assert!(missed.is_empty() || missed == "flaky", "{sku}: {missed}");
        assert_eq!(answered.contains("flaky"), missed.is_empty(), "{sku}");
        assert!(*price > 0.0);
    }
}

/// The pages page `i` links to, as paths (mirrors `weir demo site`: three
/// links, one relative and one with a fragment, every tenth page a broken
/// one).
fn site_links(i: u64, pages: u64) -> Vec<String> {
    let mut links = vec![
        format!("/page/{}", (i * 7 + 1) % pages),
        format!("/page/{}", (i * 13 + 5) % pages),
        format!("/page/{}", i / 2),
    ];
    if i % 10 == 9 {
        links.push(format!("/missing/{i}"));
    }
    links
}

/// Pages of `weir demo site` served in Latin-1 (dead-lettered).
fn latin1(i: u64) -> bool {
    i % 100 == 42
}

/// `crawler.yaml`: the crawl reaches exactly the pages a breadth-first
/// walk of the site reaches (each fetched once, cycles and all), records
/// broken links as 404s, dead-letters the pages that are not UTF-8 with
/// the reason, stores every link of every page, and ends by itself.
#[test]
fn crawler_example_crawls_the_whole_site_once_and_ends_by_itself() {
    let demo = Demo::start(&["site", "--pages", "1000"]);
    let site = demo.url("pages").to_string();
    let d = Dir::new();
    copy_example(&d, "crawler.yaml", &["crawl-start.jsonl"]);
    let out = d
        .weir(&["run", "crawler.yaml", "--report", "json"])
        .env("SITE", &site)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r = report(&out);
    assert_accounting(&r);

    // What a plain breadth-first walk finds: "/" (page 0's content),
    // every reachable page, every broken link of a UTF-8 page.
    let pages = 1000;
    let mut seen = std::collections::BTreeSet::from(["/page/0".to_string()]);
    let mut todo = vec![0u64];
    let mut fine = std::collections::BTreeSet::from(["/".to_string()]);
    let mut broken = std::collections::BTreeSet::new();
    let mut bad = std::collections::BTreeSet::new();
    // (from, to) of every link stored: unique per page.
    let mut edges = std::collections::BTreeSet::new();
    for l in site_links(0, pages) {
        edges.insert(("/".to_string(), l));
    }
    while let Some(i) = todo.pop() {
        if latin1(i) {
            bad.insert(format!("/page/{i}"));
            continue;
        }
        fine.insert(format!("/page/{i}"));
        for l in site_links(i, pages) {
            edges.insert((format!("/page/{i}"), l.clone()));
            if seen.insert(l.clone())
                && let Some(n) = l.strip_prefix("/page/")
            {
                todo.push(n.parse().unwrap());
            }
        }
    }
    for l in &seen {
        if l.starts_with("/missing/") {
            broken.insert(l.clone());
        }
    }

    let conn = rusqlite::Connection::open(d.join("out/crawl.db")).unwrap();
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT url, status FROM pages")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let path = |u: &str| u.strip_prefix(site.as_str()).unwrap().to_string();
    let got_fine: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(u, _)| path(u))
        .collect();
    let got_broken: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|(_, s)| *s == 404)
        .map(|(u, _)| path(u))
        .collect();
    assert_eq!(
        rows.len(),
        got_fine.len() + got_broken.len(),
        "only 200s and 404s"
    );
    assert_eq!(got_fine, fine, "exactly the reachable pages");
    assert_eq!(got_broken, broken, "every broken link, as a 404");
    assert_eq!(
        n(&r, "fetch", "in") as usize,
        fine.len() + broken.len() + bad.len(),
        "each URL fetched once"
    );

    let letters = d.jsonl("out/crawl-dead-letters.jsonl");
    let got_bad: std::collections::BTreeSet<String> = letters
        .iter()
        .map(|l| {
            assert!(l["error"].as_str().unwrap().contains("not UTF-8"), "{l}");
            path(l["record"]["url"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        got_bad, bad,
        "the Latin-1 pages, dead-lettered with the reason"
    );

    let got_edges: std::collections::BTreeSet<(String, String)> = conn
        .prepare("SELECT \"from\", url FROM links")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|e| {
            let (f, t) = e.unwrap();
            (path(&f), path(&t))
        })
        .collect();
    assert_eq!(got_edges, edges, "every link of every UTF-8 page");
}

/// A `weir run` of the ingest example on a free port, and where it listens.
struct Ingest {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Ingest {
    fn start(d: &Dir) -> Ingest {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
            .current_dir(d.path())
            .args(["run", "ingest.yaml", "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir run starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("it says where it listens").unwrap();
            if let Some(a) = line.strip_prefix("http_server 'events' listening on http://") {
                break a.parse().expect("an address");
            }
        };
        // Keep reading stderr so the process never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ingest { child, addr }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs an NDJSON body; the status, or `None` when no answer came
/// (refused, reset: the server is gone).
fn post_events(addr: std::net::SocketAddr, body: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST /events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// `ingest.yaml` through a crash: 8 clients POST 40 requests of 50
/// events each (every tenth invalid), resending any request without a
/// 200; the service is killed with SIGKILL partway and started again on
/// the same database. Every event a client got a 200 for is in the table,
/// and the table is exactly the valid events: none lost, none twice.
#[test]
fn ingest_example_keeps_every_acknowledged_record_through_kill_9() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let d = Dir::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines");
    std::fs::create_dir_all(d.join("schemas")).unwrap();
    std::fs::copy(src.join("schemas/event.json"), d.join("schemas/event.json")).unwrap();
    let yaml = std::fs::read_to_string(src.join("ingest.yaml"))
        .unwrap()
        .replace("127.0.0.1:18080", "127.0.0.1:0");
    d.file("ingest.yaml", yaml);

    let server = Arc::new(Mutex::new(Ingest::start(&d)));
    let addr = Arc::new(Mutex::new(server.lock().unwrap().addr));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (addr, acknowledged) = (addr.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut valid = Vec::new();
                for q in 0..40 {
                    let body: String = (0..50)
                        .map(|i| {
                            let kind = if i % 10 == 7 { "bogus" } else { "click" };
                            format!("{{\"id\":\"c{c}-q{q}-e{i}\",\"kind\":\"{kind}\",\"ts\":\"2026-11-30T10:00:00Z\"}}\n")
                        })
                        .collect();
                    let deadline = std::time::Instant::now() + Duration::from_secs(120);
                    loop {
                        let at = *addr.lock().unwrap();
                        if post_events(at, &body) == Some(200) {
                            break;
                        }
                        assert!(std::time::Instant::now() < deadline, "request c{c}-q{q} never got a 200");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                    valid.extend((0..50).filter(|i| i % 10 != 7).map(|i| format!("c{c}-q{q}-e{i}")));
                }
                valid
            })
        })
        .collect();

    // Kill -9 once a third of the requests are acknowledged, mid-stream.
    while acknowledged.load(Ordering::SeqCst) < 8 * 40 / 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    {
        let mut s = server.lock().unwrap();
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        let at_kill = acknowledged.load(Ordering::SeqCst);
        assert!(at_kill < 8 * 40, "the kill came before the end");
        *s = Ingest::start(&d);
        *addr.lock().unwrap() = s.addr;
    }
    let mut expected: Vec<String> = Vec::new();
    for c in clients {
        expected.extend(c.join().expect("a client"));
    }
    expected.sort();

    // Every acknowledged record is committed before its 200: the table
    // can be read with the service still running.
    let conn = rusqlite::Connection::open(d.join("out/ingest.db")).unwrap();
    let mut ids: Vec<String> = conn
        .prepare("SELECT id FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 8 * 40 * 45);
    assert_eq!(ids, expected, "exactly the valid events, each once");
    let letters = d.jsonl("out/ingest-dead-letters.jsonl");
    assert!(
        letters.len() >= 8 * 40 * 5,
        "the invalid ones are dead letters"
    );
    assert!(
        letters.iter().all(|l| l["stage"] == "valid"),
        "{:?}",
        letters.first()
    );
}
