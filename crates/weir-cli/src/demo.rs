//! `weir demo`: local stand-ins for the remote services the service
//! examples call (`examples/pipelines/prices.yaml`, `crawler.yaml`), so
//! that those examples run on one machine without internet access. The
//! same services back the examples' end-to-end tests.
//!
//! They are served by the scripted HTTP/1.1 server of `weir-testkit` (a
//! thread per connection, one request per connection): enough for an
//! example, not a benchmark target.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use weir_testkit::http::{MockHttp, Request, Response};

/// Base price of a product, in cents, from its SKU: the same on every run.
fn base_cents(sku: &str) -> u64 {
    let h = sku.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    500 + h % 20_000
}

fn json(status: u16, body: &str) -> Response {
    Response::new(status, body).header("content-type", "application/json")
}

/// One price service's answer for `/price/<sku>`: the base price times
/// `factor` (each vendor prices differently).
fn price(req: &Request, service: &str, factor: f64) -> Response {
    let Some(sku) = req.path.strip_prefix("/price/") else {
        return json(404, "{\"error\":\"no such path; try /price/<sku>\"}");
    };
    let cents = (base_cents(sku) as f64 * factor).round() / 100.0;
    json(
        200,
        &format!("{{\"sku\":\"{sku}\",\"price\":{cents:.2},\"service\":\"{service}\"}}"),
    )
}

/// The three price services of the scatter-gather example, on ports
/// `port`, `port + 1` and `port + 2`:
/// * `fast` answers at once;
/// * `slow` takes 30 ms, and one request in four takes 1.5 s (a latency
///   tail: what hedging is for);
/// * `flaky` fails one request in five with 503.
pub fn prices(port: u16) -> Result<Vec<(&'static str, MockHttp)>> {
    let slow_n = Arc::new(AtomicU64::new(0));
    let flaky_n = Arc::new(AtomicU64::new(0));
    let at = |p: u16| if port == 0 { 0 } else { p };
    let fast = MockHttp::serve_on(at(port), |r| price(r, "fast", 1.04))
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let slow = MockHttp::serve_on(at(port + 1), move |r| {
        let n = slow_n.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(if n % 4 == 3 {
            Duration::from_millis(1500)
        } else {
            Duration::from_millis(30)
        });
        price(r, "slow", 0.97)
    })
    .with_context(|| format!("cannot listen on 127.0.0.1:{}", port + 1))?;
    let flaky = MockHttp::serve_on(at(port + 2), move |r| {
        if flaky_n.fetch_add(1, Ordering::Relaxed) % 5 == 4 {
            json(503, "{\"error\":\"overloaded, try again\"}").header("retry-after", "0")
        } else {
            price(r, "flaky", 0.99)
        }
    })
    .with_context(|| format!("cannot listen on 127.0.0.1:{}", port + 2))?;
    Ok(vec![("fast", fast), ("slow", slow), ("flaky", flaky)])
}

/// The links of page `i` of a site of `pages` pages: forward, back and
/// across (so there are cycles), and every tenth page a broken one.
pub fn site_links(i: u64, pages: u64) -> Vec<String> {
    let mut links = vec![
        format!("/page/{}", (i * 7 + 1) % pages),
        // Relative to /page/<i>.
        format!("{}", (i * 13 + 5) % pages),
        format!("/page/{}#top", i / 2),
    ];
    if i % 10 == 9 {
        links.push(format!("/missing/{i}"));
    }
    links
}

/// Whether page `i` is served in Latin-1, not UTF-8 (a crawler meets such
/// pages; weir dead-letters them with the reason).
pub fn latin1_page(i: u64) -> bool {
    i % 100 == 42
}

/// The generated site of the crawler example: `/` redirects to page 0; page
/// `i` has a title and the links of [`site_links`], one of them relative,
/// one with a fragment, plus a `mailto:` link; unknown paths are 404; a
/// few pages are Latin-1 ([`latin1_page`]).
pub fn site(port: u16, pages: u64) -> Result<MockHttp> {
    MockHttp::serve_on(port, move |r| {
        if r.path == "/" {
            return Response::new(302, "").header("location", "/page/0");
        }
        let page = r
            .path
            .strip_prefix("/page/")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n < pages);
        match page {
            None => Response::new(404, "<html><body>not found</body></html>")
                .header("content-type", "text/html"),
            Some(i) if latin1_page(i) => {
                // "Café" in Latin-1: é is the single byte 0xE9.
                let mut body = b"<html><head><title>Caf".to_vec();
                body.push(0xe9);
                body.extend_from_slice(format!(" {i}</title></head></html>").as_bytes());
                Response {
                    status: 200,
                    headers: vec![(
                        "content-type".into(),
                        "text/html; charset=iso-8859-1".into(),
                    )],
                    body,
                }
            }
            Some(i) => {
                let links: String = site_links(i, pages)
                    .iter()
                    .map(|l| format!("<li><a href=\"{l}\">{l}</a></li>"))
                    .collect();
                Response::new(
                    200,
                    &format!(
                        "<!doctype html><html><head><title>Page {i}</title></head><body><h1>Page {i}</h1><ul>{links}<li><a href=\"mailto:web@example.invalid\">mail</a></li></ul></body></html>"
                    ),
                )
                .header("content-type", "text/html; charset=utf-8")
            }
        }
    })
    .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))
}

/// Serves until the process is stopped, after printing where.
pub fn serve(what: &str, servers: &[(&str, &MockHttp)]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (name, s) in servers {
        writeln!(out, "{what} {name}: {}", s.url(""))?;
    }
    writeln!(out, "serving until Ctrl-C")?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
