//! A scripted HTTP/1.1 server on a free loopback port, standing in for "a
//! remote service" in tests of HTTP components.
//!
//! Each request is recorded and answered by the test's handler; every
//! response closes its connection, so the client under test reconnects for
//! each request (keeping this server a few dozen lines, with no HTTP
//! stack of its own; connection reuse is not exercised). Bodies must carry
//! `Content-Length` (chunked bodies are refused with 411; more than
//! [`MAX_BODY`] with 413), which every client that sends a buffer does. A
//! handler that panics answers 500, and [`MockHttp::requests`] then fails
//! the test with the panic, so a broken handler cannot pass unnoticed.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, `GET` ...
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and a text body.
    pub fn new(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// The largest body read.
pub const MAX_BODY: usize = 256 << 20;

/// What the connection threads share with the server.
#[derive(Default)]
struct Log {
    /// Keep each request (tests read them); off for a long-running
    /// service, whose log would only grow.
    keep: bool,
    requests: Vec<Request>,
    panics: Vec<String>,
}

/// The server; stopped on drop.
pub struct MockHttp {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl MockHttp {
    /// Starts a server answering every request with `handler`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> MockHttp {
        MockHttp::bind(0, true, handler).expect("bind a loopback port")
    }

    /// Starts a long-running server on loopback port `port` (0: any free
    /// one) that keeps no log of its requests ([`requests`](Self::requests)
    /// stays empty): a demo service.
    ///
    /// # Errors
    /// The port cannot be bound (in use).
    pub fn serve_on(
        port: u16,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> std::io::Result<MockHttp> {
        MockHttp::bind(port, false, handler)
    }

    fn bind(
        port: u16,
        keep: bool,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> std::io::Result<MockHttp> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr().expect("local address");
        // Polled, so that stopping never depends on a connection waking it.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let log = Arc::new(Mutex::new(Log {
            keep,
            ..Log::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let (log, handler) = (log.clone(), handler.clone());
                            std::thread::spawn(move || serve(conn, &log, &*handler));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Ok(MockHttp {
            addr,
            log,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests received so far, in the order they were read.
    ///
    /// # Panics
    /// When the handler panicked on a request (with its message).
    pub fn requests(&self) -> Vec<Request> {
        let log = self.log.lock().expect("log");
        assert!(
            log.panics.is_empty(),
            "the test server's handler panicked: {}",
            log.panics.join("; ")
        );
        log.requests.clone()
    }
}

impl Drop for MockHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request, records it, answers and closes.
fn serve(conn: TcpStream, log: &Mutex<Log>, handler: &Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let reply = match read_request(conn) {
        Ok(Some(req)) => {
            {
                let mut log = log.lock().expect("log");
                if log.keep {
                    log.requests.push(req.clone());
                }
            }
            match catch_unwind(AssertUnwindSafe(|| handler(&req))) {
                Ok(resp) => resp,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    log.lock().expect("log").panics.push(msg);
                    Response::new(500, "the test handler panicked")
                }
            }
        }
        Ok(None) => return,
        Err(status) => Response::new(status, "bad request"),
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = writer.write_all(head.as_bytes());
    let _ = writer.write_all(&reply.body);
    let _ = writer.flush();
}

/// The request on `conn`; `None` when the connection closed before one;
/// `Err(status)` for what this server does not read.
fn read_request(conn: TcpStream) -> Result<Option<Request>, u16> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|_| 400u16)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().ok_or(400u16)?.to_string();
    let path = parts.next().ok_or(400u16)?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|_| 400u16)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').ok_or(400u16)?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some() {
        return Err(411);
    }
    let len: usize = get("content-length")
        .map(|v| v.parse().map_err(|_| 400u16))
        .transpose()?
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(413);
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|_| 400u16)?;
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}
