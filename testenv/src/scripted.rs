//! A scripted API server for tests that drive code against a Kubernetes API (the controller-rs
//! `fixtures.rs` style): between the pure tests and the e2e tests. The operator's reconcile
//! tests and the agents' command tests both use it.
//!
//! [`client`] returns a [`kube::Client`] that talks to a `tower_test` mock, and the
//! [`ApiServerVerifier`] on the other end. A test lists the requests it expects, in order
//! ([`Exchange`]: method, path with query, optional assertions on the JSON body) with the
//! response each gets (status and JSON, or the request body echoed back), runs the code under
//! test, then calls [`ApiServer::verify`]. It fails when a request is unexpected (none or
//! another one was due), comes out of order, or fails its body assertions, and when an
//! expected request never came. An unexpected request is answered `500` at once, so the code
//! never hangs on it. Nothing is answered unless scripted: a request the code should not issue
//! fails the test by itself, and so does an Event nobody scripted ([`event_by`]). Requests that
//! may come at any point, such as the watch a whole controller runs beside its reconciles, are
//! listed apart ([`ApiServerVerifier::run_with_anytime`]).
use std::{
    collections::VecDeque,
    fmt::Write as _,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// Assertions on a request's JSON body (`Value::Null` when it had none).
type Check = Box<dyn Fn(&Value) + Send>;

/// What the scripted server answers.
enum Reply {
    /// This status and JSON body.
    Json(u16, Value),
    /// This status and the request's own body (server-side apply, create).
    Echo(u16),
    /// `200` and these objects, one JSON document a line (a watch's events).
    Lines(Vec<Value>),
    /// No answer until the server is verified (a watch left open).
    Hang,
}

/// One expected request and its scripted response.
pub struct Exchange {
    method: Method,
    uri: String,
    check: Option<Check>,
    reply: Reply,
}

/// Expect `method` on `uri` (path and query, exactly as the client sends it); answered `200 {}`
/// unless [`Exchange::reply`] or [`Exchange::echo`] says otherwise.
pub fn expect(method: Method, uri: impl Into<String>) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        check: None,
        reply: Reply::Json(200, json!({})),
    }
}

// === impl Exchange ===

impl Exchange {
    /// Assert on the request's JSON body (panics inside are reported as failures); checks
    /// added one after the other all run, in order.
    pub fn body(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(match self.check.take() {
            None => Box::new(check),
            Some(first) => Box::new(move |b: &Value| {
                first(b);
                check(b);
            }),
        });
        self
    }

    /// Answer with `status` and `body`.
    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.reply = Reply::Json(status, body);
        self
    }

    /// Answer with `status` and the request's own body.
    pub fn echo(mut self, status: u16) -> Self {
        self.reply = Reply::Echo(status);
        self
    }

    /// Answer `200` with these watch events, one a line, then end the response.
    pub fn watch_events(mut self, events: Vec<Value>) -> Self {
        self.reply = Reply::Lines(events);
        self
    }

    /// Never answer (a watch that stays open until the test ends).
    pub fn hang(mut self) -> Self {
        self.reply = Reply::Hang;
        self
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// A `metav1.Status` failure body, as the API server sends it.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

/// A `404 NotFound` for `GET uri`.
pub fn get_not_found(uri: impl Into<String>) -> Exchange {
    expect(Method::GET, uri).reply(404, failure(404, "NotFound", "not found"))
}

/// Server-side apply at `path` (an object's path, or its `/status`) by `manager`, forced; the
/// object is echoed back.
pub fn apply_at(path: &str, manager: &str) -> Exchange {
    expect(
        Method::PATCH,
        format!("{path}?&force=true&fieldManager={manager}"),
    )
    .echo(200)
}

/// The Event `reason` (type `Normal` or `Warning`) about an object of namespace `ns`, POSTed
/// by the publisher reporting as `controller`; `note` gets the event's note. Answered `201`
/// with the event.
pub fn event_by(
    controller: &'static str,
    ns: &str,
    type_: &'static str,
    reason: &'static str,
    note: impl Fn(&str) + Send + 'static,
) -> Exchange {
    expect(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events?"),
    )
    .body(move |b| {
        assert_eq!(b["reason"], reason, "event reason");
        assert_eq!(b["type"], type_, "event type");
        assert_eq!(b["reportingController"], controller);
        note(b["note"].as_str().unwrap_or_default());
    })
    .echo(201)
}

/// The mock's end of the client.
type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The server side of a [`client`], before it is given its script.
pub struct ApiServerVerifier(ApiServerHandle);

/// A client that talks to a scripted API server (default namespace `default`), and the
/// server's end, to give its script ([`ApiServerVerifier::run`]).
pub fn client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// What the running script has seen.
#[derive(Default)]
struct State {
    /// Still expected, in order.
    script: VecDeque<Exchange>,
    /// Still expected, each once, at any point ([`ApiServerVerifier::run_with_anytime`]).
    anytime: Vec<Exchange>,
    /// Every request received, in order (for the failure report).
    seen: Vec<String>,
    /// Why the test fails.
    failures: Vec<String>,
    /// Requests left unanswered on purpose ([`Exchange::hang`]).
    open: Vec<tower_test::mock::SendResponse<Response<Body>>>,
}

/// A scripted API server answering a [`client`].
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl ApiServerVerifier ===

impl ApiServerVerifier {
    /// Serve `script`, in order, from now on.
    pub fn run(self, script: Vec<Exchange>) -> ApiServer {
        self.run_with_anytime(script, vec![])
    }

    /// Serve `script`, in order, and `anytime`, each once whenever it comes: the requests of a
    /// controller's own watch, which runs beside its reconciles.
    pub fn run_with_anytime(self, script: Vec<Exchange>, anytime: Vec<Exchange>) -> ApiServer {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            anytime,
            ..State::default()
        }));
        let task = tokio::spawn(serve(self.0, state.clone()));
        ApiServer { state, task }
    }
}

async fn serve(mut handle: ApiServerHandle, state: Arc<Mutex<State>>) {
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), ToString::to_string);
        let got = format!("{} {uri}", parts.method);
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        let reply = {
            let mut st = state.lock().expect("scripted server state");
            st.seen.push(got.clone());
            let n = st.seen.len();
            let matches = |e: &Exchange| e.method == parts.method && e.uri == uri;
            let in_order = st.script.front().is_some_and(matches);
            let anytime = st.anytime.iter().position(matches);
            match st.script.front() {
                _ if in_order || anytime.is_some() => {
                    let next = match anytime {
                        Some(i) if !in_order => st.anytime.remove(i),
                        _ => st.script.pop_front().expect("front"),
                    };
                    if let Some(check) = &next.check
                        && let Err(panic) =
                            std::panic::catch_unwind(AssertUnwindSafe(|| check(&body)))
                    {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                            .unwrap_or_default();
                        st.failures
                            .push(format!("request {n} ({got}): body check failed: {why}"));
                    }
                    match next.reply {
                        Reply::Echo(s) => Reply::Json(s, body),
                        Reply::Hang => {
                            st.open.push(send);
                            continue;
                        }
                        other => other,
                    }
                }
                Some(next) => {
                    let want = next.describe();
                    st.failures
                        .push(format!("request {n}: expected {want}, got {got}"));
                    Reply::Json(
                        500,
                        failure(500, "Unexpected", &format!("unexpected {got}")),
                    )
                }
                None => {
                    st.failures
                        .push(format!("request {n}: unexpected {got} after the script"));
                    Reply::Json(
                        500,
                        failure(500, "Unexpected", &format!("unexpected {got}")),
                    )
                }
            }
        };
        let (status, bytes) = match reply {
            Reply::Json(s, v) => (s, serde_json::to_vec(&v).expect("json")),
            Reply::Lines(events) => (
                200,
                events
                    .iter()
                    .map(|e| format!("{e}\n"))
                    .collect::<String>()
                    .into_bytes(),
            ),
            Reply::Echo(_) | Reply::Hang => unreachable!("answered above"),
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .expect("response");
        send.send_response(response);
    }
}

// === impl ApiServer ===

impl ApiServer {
    /// Fail the test unless every expected request came, in order, with a body that passed
    /// its checks, and nothing else came. Waits up to a second for the last expected ones.
    pub async fn verify(self) {
        self.verify_seen().await;
    }

    /// [`ApiServer::verify`], then every request received ("METHOD path?query"), in order.
    pub async fn verify_seen(self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let done = {
                let st = self.state.lock().expect("scripted server state");
                st.script.is_empty() && st.anytime.is_empty()
            };
            if done || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.task.abort();
        let st = self.state.lock().expect("scripted server state");
        let mut report = String::new();
        for f in &st.failures {
            let _ = writeln!(report, "  {f}");
        }
        for e in st.script.iter().chain(&st.anytime) {
            let _ = writeln!(report, "  expected request never came: {}", e.describe());
        }
        assert!(
            report.is_empty(),
            "the scripted API server saw another conversation:\n{report}requests received:\n  {}",
            st.seen.join("\n  ")
        );
        st.seen.clone()
    }
}
