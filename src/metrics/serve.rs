//! Serving the metrics: the loopback HTTP endpoint and the node_exporter
//! textfile.

use std::fs;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// The HTTP endpoint: GET (or HEAD) `/metrics` on a loopback address, served
/// from a thread of its own. Dropping it stops the thread; see
/// [`MetricsServer::detach`] to keep it running. Should accepting a
/// connection fail (tiny_http then stops listening), the thread logs an
/// error and ends; Prometheus sees the target down.
pub struct MetricsServer {
    /// Taken when stopping: the last handle's drop closes the listener.
    server: Option<Arc<tiny_http::Server>>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Listens on `addr`, which must be a loopback address (the metrics
    /// name every domain on the host, and the endpoint has no
    /// authentication); returns once listening. Port 0 picks a free port:
    /// [`MetricsServer::local_addr`] tells which.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "metrics address {addr} is not a loopback address; \
                     numapin serves metrics on 127.0.0.0/8 or [::1] only"
                ),
            ));
        }
        let server = tiny_http::Server::http(addr).map_err(|e| {
            let kind = e
                .downcast_ref::<io::Error>()
                .map_or(io::ErrorKind::Other, io::Error::kind);
            io::Error::new(kind, format!("cannot listen on {addr} for metrics: {e}"))
        })?;
        let server = Arc::new(server);
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("numapin-metrics".into())
            .spawn({
                let server = server.clone();
                let stopping = stopping.clone();
                move || serve_requests(&server, &metrics, &stopping)
            })?;
        Ok(MetricsServer {
            server: Some(server),
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the server run for the rest of the process; returns its thread.
    pub fn detach(mut self) -> JoinHandle<()> {
        self.thread.take().expect("the thread is only taken here")
    }

    /// Stops serving and returns once the address is free again (or after
    /// two seconds at most), so it can be listened on anew.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let (Some(thread), Some(server)) = (self.thread.take(), self.server.take()) else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        server.unblock();
        let _ = thread.join();
        // tiny_http closes the listener from its own accept thread once the
        // last handle is dropped, a moment later: wait for that.
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Serves `render()` at GET /metrics on `addr` (must be a loopback address:
/// refuses others with an error naming the address) from a thread of its
/// own; returns once listening. The server runs for the rest of the process;
/// [`MetricsServer`] can also be stopped.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<JoinHandle<()>> {
    Ok(MetricsServer::start(addr, metrics)?.detach())
}

fn serve_requests(server: &tiny_http::Server, metrics: &Metrics, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => {
                let (status, content_type, body) = respond_to(&request, metrics);
                let header = |name: &str, value: &str| {
                    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                        .expect("header names and values here are ASCII")
                };
                let mut response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header("Content-Type", content_type));
                if status == 405 {
                    response.add_header(header("Allow", "GET, HEAD"));
                }
                if let Err(e) = request.respond(response) {
                    tracing::debug!("metrics: answering a request failed: {e}");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                // tiny_http stops accepting after an accept error (e.g. out
                // of file descriptors): nothing more will come.
                tracing::error!("metrics: the HTTP endpoint stopped: {e}");
                return;
            }
        }
    }
}

fn respond_to(request: &tiny_http::Request, metrics: &Metrics) -> (u16, &'static str, String) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = request.url().split('?').next().unwrap_or("");
    if path != "/metrics" {
        return (
            404,
            PLAIN,
            "not found; numapin's metrics are at /metrics\n".into(),
        );
    }
    if !matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    ) {
        return (405, PLAIN, "only GET and HEAD\n".into());
    }
    let openmetrics = request.headers().iter().any(|h| {
        h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
    });
    if openmetrics {
        (200, OPENMETRICS_CONTENT_TYPE, metrics.render_openmetrics())
    } else {
        (200, TEXT_CONTENT_TYPE, metrics.render())
    }
}

/// node_exporter textfile collector: writes render() to `path` atomically
/// (temp file in the same dir, then rename), so the collector never reads
/// half a file. The file is made readable by all (0644), whatever the
/// umask: node_exporter runs as another user.
pub fn write_textfile(path: &Path, metrics: &Metrics) -> io::Result<()> {
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot write metrics file {}: {e}", path.display()),
        )
    };
    let name = path.file_name().ok_or_else(|| {
        context(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    // Not `*.prom`, so the collector skips it; the pid keeps two writers
    // apart.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(metrics.render().as_bytes())?;
        // No fsync: after a crash a stale or empty metrics file is harmless,
        // and the rename alone keeps readers from a partial one.
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(context)
}
