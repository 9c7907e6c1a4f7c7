//! HTTP beside the DICOM port: health, readiness, Prometheus metrics, a
//! small status API, and two operator actions (retry jobs, retry parked
//! deliveries).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pneumo_store::{JobView, Listing, RetryableState, Store, JOB_STATES};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::diskguard::DiskGuard;
use crate::metrics::Metrics;

/// What `/readyz` reports about the model.
#[derive(Debug, Clone, Default)]
pub struct ModelStatus {
    pub loaded: bool,
    pub detail: Value,
    /// Why every analysis would fail although the model loaded (a lung-box
    /// model without its segmentation model): /readyz is not ready.
    pub unusable: Option<String>,
}

impl ModelStatus {
    pub fn of(engine: &pneumo_inference::InferenceEngine) -> ModelStatus {
        let id = engine.identity();
        ModelStatus {
            loaded: true,
            detail: json!({
                "loaded": true,
                "name": id.name,
                "version": id.version,
                "weights_kind": id.weights_kind,
                "weights_sha256": id.weights_sha256,
                "contract_sha256": id.contract_sha256,
                "precision": id.precision,
                "demo": engine.contract().is_demo(),
                "warning": engine.contract().is_demo().then_some(pneumo_inference::DEMO_WARNING),
                "execution_provider": engine.execution_provider().as_str(),
            }),
            unusable: None,
        }
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub disk: Arc<DiskGuard>,
    pub active_associations: Arc<AtomicUsize>,
    pub model: Arc<std::sync::RwLock<ModelStatus>>,
    /// For batch statistics in /metrics.
    pub engine: Option<Arc<pneumo_inference::InferenceEngine>>,
    /// The lung segmentation model, when the model's crop uses it.
    pub segmenter: Option<Arc<pneumo_inference::LungSegmenter>>,
    /// Woken when jobs are sent back to `received` (the router takes them).
    pub wake_router: Arc<tokio::sync::Notify>,
    /// Woken when parked deliveries are pending again.
    pub wake_outbox: Arc<tokio::sync::Notify>,
    /// The configured destinations' names (a retry names one of them).
    pub destinations: Vec<String>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/jobs", get(jobs))
        .route("/api/instances/{sop_uid}", get(instance))
        .route("/api/jobs/retry", post(retry_jobs))
        .route("/api/deliveries", get(deliveries))
        .route("/api/deliveries/retry", post(retry_deliveries))
        .route("/api/deliveries/cancel", post(cancel_deliveries))
        .route("/api/deliveries/move", post(move_deliveries))
        .route("/api/deliveries/resend", post(resend_deliveries))
        // JSON like every other error (these were empty, without a type)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such path" })),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({ "error": "this path does not take that method" })),
            )
        })
        .layer(axum::middleware::from_fn(body_in_time))
        // (the last layer runs first: nothing of the body is read)
        .layer(axum::middleware::from_fn(refuse_cross_site))
        .with_state(state)
}

/// How long a request's body may take to arrive, and how large it may be:
/// the API's actions take none, and a request that announced 5 bytes and
/// sent nothing held its connection for good.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const BODY_LIMIT: usize = 64 << 10;

/// Reads the body before the handler does: 408 when it does not arrive in
/// [`BODY_TIMEOUT`], 413 when larger than [`BODY_LIMIT`].
async fn body_in_time(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = request.into_parts();
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > BODY_LIMIT as u64) {
        // Said at once: waiting for a body that will be refused anyway
        // held the connection the whole timeout.
        return too_large();
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                Json(json!({ "error": format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()) })),
            )
                .into_response()
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// The site of a browser's cross-site request (its `Origin` names another
/// host than `Host`, or the browser says so): a web page on the node's host
/// re-queued every failed job with a form POST. Scripts, curl and
/// Prometheus send no `Origin`.
fn cross_site(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site") == Some("cross-site") {
        return Some(header("origin").unwrap_or("cross-site").to_string());
    }
    let origin = header("origin")?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, host)| host);
    // Host names compare without case, and port 80 may be left out.
    let site = |host: &str| {
        let host = host.trim().to_ascii_lowercase();
        host.strip_suffix(":80").map(str::to_string).unwrap_or(host)
    };
    (Some(site(origin_host)) != header("host").map(site)).then(|| origin.to_string())
}

/// 403 for a browser's cross-site request ([`cross_site`]).
async fn refuse_cross_site(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match cross_site(request.headers()) {
        Some(origin) => (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": format!(
                "a request from a web page of another site ({origin}) is refused: the API \
                 has no authentication, and a page in a browser on this host could act on it"
            ) })),
        )
            .into_response(),
        None => next.run(request).await,
    }
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({ "error": format!("a body of more than {BODY_LIMIT} bytes, or cut") })),
    )
        .into_response()
}

/// How long a client may take to send a request's line and headers (and,
/// between requests, to start the next one): `axum::serve` sets no timer,
/// and a client that sent half a header line held its connection for good.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP connections served at once: health checks, a scraper and a few
/// operators need a handful.
const MAX_HTTP_CONNECTIONS: usize = 128;

pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listening");
    }
    let service = hyper_util::service::TowerToHyperService::new(router(state));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        // At the cap, connections wait in the kernel's backlog, holding
        // none of the process's descriptors: 1,100 idle ones at a limit of
        // 1,024 made the DICOM listener's accepts fail.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}

fn bad_request(body: Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// The query string, or what is wrong with it: an unknown parameter is
/// refused rather than ignored, so that a misspelt filter on an operator
/// action cannot widen it to every job.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, String> {
    q.map(|Query(q)| q)
        .map_err(|e| query_problem(&e.body_text()))
}

/// serde's account of a query string ("Failed to deserialize query string:
/// limit: invalid digit found in string") in the words of the rest of the
/// API: the parameter named, and what it takes.
fn query_problem(serde_text: &str) -> String {
    let text = serde_text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(serde_text);
    if let Some((_, rest)) = text.split_once("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let takes = expected
            .trim_start_matches([',', ' '])
            .strip_prefix("expected ")
            .map(|list| format!(": this action takes {}", list.replace("one of ", "")))
            .unwrap_or_default();
        return format!("unknown parameter `{name}`{takes}");
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!("parameter `{name}` is required");
    }
    if let Some(rest) = text.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!("parameter `{name}` is given twice");
    }
    let Some((name, why)) = text.split_once(": ") else {
        return format!("the query string cannot be read: {text}");
    };
    let wants = if why.contains("digit") || why.contains("number") || why.contains("integer") {
        "a whole number"
    } else if why.contains("`true` or `false`") {
        "true or false"
    } else {
        return format!("parameter `{name}`: {why}");
    };
    format!("parameter `{name}` takes {wants} ({why})")
}

/// An operator action's parameters: the query string only. A body (say
/// `{"job_ids": [...]}`) is refused rather than ignored, which would act on
/// everything.
fn action_query<T>(q: Result<Query<T>, QueryRejection>, body: &Bytes) -> Result<T, String> {
    let q = query(q)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(q)
    } else {
        Err(
            "this action takes no body: its parameters go in the query string (docs/operations.md)"
                .into(),
        )
    }
}

/// A UID filter of an action: trimmed (one pasted with a space around it,
/// `%20`, matched nothing); an empty one is an error (it would match
/// nothing, or be read as "everything"): the body of the 400.
fn uid_filter(v: &Option<String>) -> Result<Option<&str>, Value> {
    v.as_deref().map(checked_uid).transpose()
}

/// A UID given by the operator, trimmed, or the body of the 400.
fn checked_uid(uid: &str) -> Result<&str, Value> {
    match uid.trim() {
        "" => Err(json!({ "error": "an empty UID" })),
        // A typo answered as "nothing found" (or "0 resent") reads as the
        // truth; no instance is stored under what is no UID.
        uid if !pneumo_report::is_referable_uid(uid) => Err(json!({
            "error": format!(
                "`{uid}` is not a UID (digits and dots, at most 64 characters, no empty part)"
            )
        })),
        uid => Ok(uid),
    }
}

/// The study and instance filters of an action, each a [`uid_filter`].
type StudyAndInstance<'a> = (Option<&'a str>, Option<&'a str>);
fn study_and_instance_filters<'a>(
    study_instance_uid: &'a Option<String>,
    sop_instance_uid: &'a Option<String>,
) -> Result<StudyAndInstance<'a>, Value> {
    Ok((
        uid_filter(study_instance_uid)?,
        uid_filter(sop_instance_uid)?,
    ))
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let database = match s.store.ping().await {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    let storage = s.disk.status();
    let model = s.model.read().map(|m| m.clone()).unwrap_or_default();
    let database_lost = s.store.database_lost_at_open();
    // Blocking: a moved stamp costs a hash of the files.
    let (engine, segmenter) = (s.engine.clone(), s.segmenter.clone());
    let model_files_changed = tokio::task::spawn_blocking(move || {
        engine
            .as_ref()
            .and_then(|e| e.files_changed())
            .or_else(|| segmenter.as_ref()?.files_changed())
    })
    .await
    .unwrap_or_else(|e| Some(format!("looking at the model's files failed: {e}")));
    let ready = database["ok"] == json!(true)
        && !database_lost
        && storage.ok
        && model.loaded
        && model.unusable.is_none()
        && model_files_changed.is_none();
    let mut reasons = Vec::new();
    if database_lost {
        reasons.push(
            "a start found instances/ holding files and the database no instance: the \
             database was deleted or replaced, and the instances of those files are unknown \
             (restore the database, or stop the node and run `pneumo-node recover-files`)"
                .to_string(),
        );
    }
    if let Some(error) = database["error"].as_str() {
        reasons.push(format!("database unavailable: {error}"));
    }
    if let Some(r) = &storage.reason {
        reasons.push(r.clone());
    }
    if !model.loaded {
        reasons.push("no model loaded".to_string());
    }
    if let Some(why) = &model.unusable {
        reasons.push(why.clone());
    }
    if let Some(why) = model_files_changed {
        reasons.push(format!(
            "{why}: analyses wait until the files hold the loaded bytes again, or the node is \
             restarted to load the model anew"
        ));
    }
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "database": database,
        "storage": {
            "ok": storage.ok,
            "writable": storage.writable,
            "free_bytes": storage.free_bytes,
            "floor_bytes": storage.floor_bytes,
        },
        "model": model.detail,
        "build": { "version": crate::BUILD_VERSION, "commit": crate::BUILD_COMMIT },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    // A database that cannot answer still leaves the process's counters
    // (refused instances above all) to scrape, with pneumo_database_up 0:
    // the scrape failed exactly when they mattered. A file known damaged
    // is not queried: a read of a truncated database could wait out
    // SQLite's busy time-out, past the scraper's.
    let sound = s.store.check_database_file().is_ok();
    let jobs = match sound {
        true => s.store.job_counts().await.ok(),
        false => None,
    }
    .map(|j| {
        j.into_iter()
            .map(|c| (c.state, c.count))
            .collect::<Vec<_>>()
    });
    let now = pneumo_store::now_ms();
    let outbox = match sound {
        true => s.store.outbox_counts().await.ok(),
        false => None,
    }
    .map(|o| {
        o.into_iter()
            .map(|c| {
                let age_s = (now - c.oldest_owed_since_ms).max(0) / 1000;
                (c.destination, c.state, c.count, age_s)
            })
            .collect::<Vec<_>>()
    });
    // (ping: the file, a read, and whether a write could begin)
    let database_up = jobs.is_some() && outbox.is_some() && s.store.ping().await.is_ok();
    let mut text = s.metrics.render(
        &jobs.unwrap_or_default(),
        &outbox.unwrap_or_default(),
        &s.destinations,
        s.active_associations.load(Ordering::Relaxed),
    );
    text.push_str(&format!(
        "# HELP pneumo_build_info The build that serves: its version and commit.\n\
         # TYPE pneumo_build_info gauge\npneumo_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
        crate::BUILD_VERSION,
        crate::BUILD_COMMIT
    ));
    let commitment_counts = match database_up {
        true => s.store.commitment_result_counts().await.ok(),
        false => None,
    };
    if let Some(counts) = commitment_counts {
        text.push_str(
            "# HELP pneumo_commitment_results Storage Commitment results for requesters that take them on an association of their own, by state (pending: to be sent; sent: answered by the requester, and given_up: both over the last 7 days).\n\
             # TYPE pneumo_commitment_results gauge\n",
        );
        for state in ["pending", "sent", "given_up"] {
            let n = counts
                .iter()
                .find(|c| c.state == state)
                .map_or(0, |c| c.count);
            text.push_str(&format!(
                "pneumo_commitment_results{{state=\"{state}\"}} {n}\n"
            ));
        }
    }
    text.push_str(&format!(
        "# HELP pneumo_database_up Whether the database answers and its file is sound (0: see /readyz).\n\
         # TYPE pneumo_database_up gauge\npneumo_database_up {}\n",
        u8::from(database_up)
    ));
    text.push_str(&format!(
        "# HELP pneumo_unrecorded_files Files under instances/ no instance row named when the start looked (run recover-files).\n\
         # TYPE pneumo_unrecorded_files gauge\npneumo_unrecorded_files {}\n",
        s.store.unrecorded_files_found()
    ));
    if let Some(engine) = &s.engine {
        let st = engine.stats();
        text.push_str(&format!(
            "# HELP pneumo_inference_batches_total Batches run by the model.\n\
             # TYPE pneumo_inference_batches_total counter\npneumo_inference_batches_total {}\n\
             # HELP pneumo_inference_images_total Images run by the model (images / batches = mean batch size).\n\
             # TYPE pneumo_inference_images_total counter\npneumo_inference_images_total {}\n\
             # HELP pneumo_inference_largest_batch Largest batch so far.\n\
             # TYPE pneumo_inference_largest_batch gauge\npneumo_inference_largest_batch {}\n",
            st.batches, st.images, st.largest_batch
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

fn job_json(j: &JobView) -> Value {
    json!({
        "job_id": j.job_id,
        "state": j.state,
        "reason": j.reason,
        "attempts": j.attempts,
        "created_at_ms": j.created_at_ms,
        "updated_at_ms": j.updated_at_ms,
        "sop_instance_uid": j.sop_instance_uid,
        "study_instance_uid": j.study_instance_uid,
        "modality": j.modality,
        "result": j.result_json.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
        "sr_sop_instance_uid": j.sr_sop_instance_uid,
        "notice_sop_instance_uid": j.notice_sop_instance_uid,
    })
}

/// The query string of the listings, `GET /api/jobs` and `GET
/// /api/deliveries`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingQuery {
    state: Option<String>,
    study_instance_uid: Option<String>,
    sop_instance_uid: Option<String>,
    accession_number: Option<String>,
    limit: Option<i64>,
    /// The next page: rows older than this one (`next_before_id` of the
    /// previous answer).
    before_id: Option<i64>,
    /// Deliveries only: to one destination.
    destination: Option<String>,
    /// Jobs only: `false` leaves out each job's result (smaller answers).
    result: Option<bool>,
}

/// Parameters of `GET /api/jobs` and `GET /api/deliveries` (they share
/// [`ListingQuery`], whose refusal of an unknown one listed both's).
const JOBS_PARAMETERS: &str =
    "state, study_instance_uid, sop_instance_uid, accession_number, limit, before_id, result";
const DELIVERIES_PARAMETERS: &str =
    "state, study_instance_uid, sop_instance_uid, accession_number, limit, before_id, destination";

/// A listing's query, an unknown parameter named with this endpoint's own.
fn listing_query(
    q: Result<Query<ListingQuery>, QueryRejection>,
    parameters: &str,
) -> Result<ListingQuery, String> {
    query(q).map_err(|e| match e.split_once("unknown parameter `") {
        Some((_, rest)) => {
            let name = rest.split('`').next().unwrap_or_default();
            format!("unknown parameter `{name}`: this listing takes {parameters}")
        }
        None => e,
    })
}

async fn jobs(
    State(s): State<HttpState>,
    q: Result<Query<ListingQuery>, QueryRejection>,
) -> Response {
    let q = match listing_query(q, JOBS_PARAMETERS) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if q.destination.is_some() {
        return bad_request(json!({ "error": "`destination` lists deliveries, not jobs" }));
    }
    let listing = match listing(JOB_STATES, &q) {
        Ok(listing) => listing,
        Err(body) => return bad_request(body),
    };
    let with_result = q.result.unwrap_or(true);
    match s.store.list_jobs(&one_more(&listing), with_result).await {
        Ok(list) => {
            let (list, next) = one_page(list, listing.limit, |j| j.job_id);
            let jobs: Vec<Value> = list
                .iter()
                .map(|j| {
                    let mut v = job_json(j);
                    if !with_result {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("result");
                        }
                    }
                    v
                })
                .collect();
            Json(json!({ "jobs": jobs, "next_before_id": next })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// `GET /api/deliveries`: outbox rows, newest first (what is parked, what
/// is still owed, and why), one page at a time.
async fn deliveries(
    State(s): State<HttpState>,
    q: Result<Query<ListingQuery>, QueryRejection>,
) -> Response {
    let q = match listing_query(q, DELIVERIES_PARAMETERS) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if q.result.is_some() {
        return bad_request(json!({ "error": "`result` is a job's, not a delivery's" }));
    }
    let listing = match listing(pneumo_store::OUTBOX_STATES, &q) {
        Ok(listing) => listing,
        Err(body) => return bad_request(body),
    };
    // A name no destination has, nor any row (a typo, another case, a
    // comma list): said, as the actions say it, not "nothing owed". A
    // destination no longer configured lists its rows, none included.
    if let Some(name) = q.destination.as_deref() {
        if let Some(refused) = unknown_destination_without_rows(&s, name).await {
            return refused;
        }
    }
    match s.store.list_deliveries(&one_more(&listing)).await {
        Ok(rows) => {
            let (rows, next) = one_page(rows, listing.limit, |r| r.id);
            let rows: Vec<Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "kind": r.kind,
                        "sop_instance_uid": r.sop_instance_uid,
                        "sent_as_uid": r.sent_as_uid,
                        "study_instance_uid": r.study_instance_uid,
                        "destination": r.destination,
                        "configured": s.destinations.contains(&r.destination),
                        "state": r.state,
                        "attempts": r.attempts,
                        "last_status": r.last_status,
                        "next_attempt_at_ms": r.next_attempt_at_ms,
                        "updated_at_ms": r.updated_at_ms,
                    })
                })
                .collect();
            Json(json!({ "deliveries": rows, "next_before_id": next })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A listing's filters: its `state` (one of `states`, if given), study and
/// instance ([`uid_filter`]s), and its `limit` (1 to [`MAX_JOBS_LISTED`],
/// default 100); or the body of the 400 answer.
/// The listing `q` asks for; its states (`state`) one or several
/// comma-separated, each among `known`.
fn listing<'a>(known: &[&str], q: &'a ListingQuery) -> Result<Listing<'a>, Value> {
    let mut asked = Vec::new();
    for state in q
        .state
        .as_deref()
        .map(|s| s.split(','))
        .into_iter()
        .flatten()
    {
        let state = state.trim();
        if !known.contains(&state) {
            return Err(json!({ "error": format!("unknown state `{state}`"), "states": known }));
        }
        asked.push(state);
    }
    let (study_instance_uid, sop_instance_uid) =
        study_and_instance_filters(&q.study_instance_uid, &q.sop_instance_uid)?;
    let accession_number = match q.accession_number.as_deref().map(str::trim) {
        Some("") => return Err(json!({ "error": "an empty accession number" })),
        accession => accession,
    };
    if let Some(before_id) = q.before_id.filter(|id| *id < 1) {
        // Row ids start at 1: "before 0" is an empty page read as the truth.
        return Err(json!({ "error": format!("before_id must be at least 1, not {before_id}") }));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_JOBS_LISTED).contains(&limit) {
        return Err(
            json!({ "error": format!("limit must be 1 to {MAX_JOBS_LISTED}, not {limit}") }),
        );
    }
    Ok(Listing {
        states: asked,
        study_instance_uid,
        sop_instance_uid,
        accession_number,
        destination: q.destination.as_deref(),
        before_id: q.before_id,
        limit,
    })
}

/// One more row than the page, to tell whether another page follows.
fn one_more<'a>(listing: &Listing<'a>) -> Listing<'a> {
    Listing {
        limit: listing.limit + 1,
        ..listing.clone()
    }
}

/// A page of `limit` rows from a listing asked for `limit + 1`, and the
/// `before_id` of the next page: None when nothing is behind it (a full
/// last page said there was more, and the next was empty).
fn one_page<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<i64>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next = if more { rows.last().map(id) } else { None };
    (rows, next)
}

/// The most jobs (or deliveries) one listing returns.
const MAX_JOBS_LISTED: i64 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryJobsQuery {
    /// `failed` (default), `skipped`, `reported`, `delivered`, or several
    /// comma-separated.
    state: Option<String>,
    sop_instance_uid: Option<String>,
}

/// `POST /api/jobs/retry`: failed (or skipped) jobs go through routing and
/// analysis again, e.g. after the model or the routing rules were fixed;
/// reported and delivered ones are analysed again (a new model's reports).
async fn retry_jobs(
    State(s): State<HttpState>,
    q: Result<Query<RetryJobsQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match action_query(q, &body) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    let sop_instance_uid = match uid_filter(&q.sop_instance_uid) {
        Ok(uid) => uid,
        Err(body) => return bad_request(body),
    };
    let asked = q.state.as_deref().unwrap_or("failed");
    let states: Option<Vec<RetryableState>> = asked.split(',').map(RetryableState::parse).collect();
    let Some(states) = states else {
        return bad_request(
            json!({ "error": format!("cannot retry state `{asked}`"), "states": RetryableState::ALL.map(RetryableState::as_str) }),
        );
    };
    match s.store.requeue_jobs(&states, sop_instance_uid).await {
        Ok(n) => {
            tracing::info!(
                jobs = n,
                states = asked,
                "jobs sent back for another analysis"
            );
            s.wake_router.notify_one();
            Json(json!({ "requeued": n })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A 400 naming the configured destinations, when `name` is not one.
fn unknown_destination(s: &HttpState, name: &str) -> Option<Response> {
    (!s.destinations.iter().any(|d| d == name)).then(|| {
        bad_request(json!({
            "error": format!("no destination named `{name}`"),
            "destinations": s.destinations,
        }))
    })
}

/// The same for a name that may also be a destination no longer
/// configured whose rows are still there (a renamed one): a 400 only when
/// no row names it either.
async fn unknown_destination_without_rows(s: &HttpState, name: &str) -> Option<Response> {
    let refused = unknown_destination(s, name)?;
    match s.store.has_deliveries_to(name).await {
        Ok(true) => None,
        Ok(false) => Some(refused),
        Err(e) => Some(internal(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDeliveriesQuery {
    destination: Option<String>,
}

/// `POST /api/deliveries/retry`: parked deliveries, and those waiting for
/// their next try (of one destination, or all), are tried again now, e.g.
/// after the destination was fixed.
async fn retry_deliveries(
    State(s): State<HttpState>,
    q: Result<Query<RetryDeliveriesQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match action_query(q, &body) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if let Some(refused) = q
        .destination
        .as_deref()
        .and_then(|d| unknown_destination(&s, d))
    {
        return refused;
    }
    match s.store.requeue_deliveries(q.destination.as_deref()).await {
        Ok(n) => {
            tracing::info!(
                deliveries = n,
                destination = q.destination.as_deref().unwrap_or("(all)"),
                "parked and waiting deliveries due now"
            );
            s.wake_outbox.notify_one();
            Json(json!({ "requeued": n })).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelDeliveriesQuery {
    /// Required: cancelling everything everywhere is never what is meant.
    destination: String,
    /// `parked`, `pending`, or both comma-separated (default both).
    state: Option<String>,
    /// Only this study's or this instance's rows (one a PACS will never
    /// take, while the rest is still owed).
    study_instance_uid: Option<String>,
    sop_instance_uid: Option<String>,
}

/// `POST /api/deliveries/cancel`: the rows owed to one destination that
/// will never take them are dropped (all of them, or a study's or an
/// instance's).
async fn cancel_deliveries(
    State(s): State<HttpState>,
    q: Result<Query<CancelDeliveriesQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match action_query(q, &body) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if q.destination.trim().is_empty() {
        return bad_request(json!({ "error": "destination is empty" }));
    }
    // A typo, another case or a comma list cancelled nothing and said 200.
    if let Some(refused) = unknown_destination_without_rows(&s, &q.destination).await {
        return refused;
    }
    let (study_instance_uid, sop_instance_uid) =
        match study_and_instance_filters(&q.study_instance_uid, &q.sop_instance_uid) {
            Ok(filters) => filters,
            Err(body) => return bad_request(body),
        };
    let asked = q.state.as_deref().unwrap_or("pending,parked");
    let (mut pending, mut parked) = (false, false);
    for state in asked.split(',') {
        match state {
            "pending" => pending = true,
            "parked" => parked = true,
            other => {
                return bad_request(json!({
                    "error": format!("cannot cancel state `{other}`"),
                    "states": ["pending", "parked"],
                }))
            }
        }
    }
    match s
        .store
        .cancel_deliveries(
            &q.destination,
            pending,
            parked,
            study_instance_uid,
            sop_instance_uid,
        )
        .await
    {
        Ok(n) => {
            tracing::warn!(
                deliveries = n,
                destination = %q.destination,
                states = asked,
                study_instance_uid,
                sop_instance_uid,
                "deliveries cancelled by the operator; they will not be sent"
            );
            Json(json!({ "cancelled": n })).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendDeliveriesQuery {
    destination: String,
    study_instance_uid: Option<String>,
    sop_instance_uid: Option<String>,
}

/// `POST /api/deliveries/resend`: what one destination was sent of a
/// study (or an instance) goes again, e.g. to a PACS that lost it.
async fn resend_deliveries(
    State(s): State<HttpState>,
    q: Result<Query<ResendDeliveriesQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match action_query(q, &body) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if let Some(refused) = unknown_destination(&s, &q.destination) {
        return refused;
    }
    let (study_instance_uid, sop_instance_uid) =
        match study_and_instance_filters(&q.study_instance_uid, &q.sop_instance_uid) {
            Ok(filters) => filters,
            Err(body) => return bad_request(body),
        };
    if study_instance_uid.is_none() && sop_instance_uid.is_none() {
        return bad_request(json!({
            "error": "say what to send again: study_instance_uid or sop_instance_uid"
        }));
    }
    match s
        .store
        .resend_deliveries(&q.destination, study_instance_uid, sop_instance_uid)
        .await
    {
        Ok((n, removed)) => {
            tracing::info!(
                deliveries = n,
                files_removed = removed,
                destination = %q.destination,
                study_instance_uid,
                sop_instance_uid,
                "sent deliveries to be sent again"
            );
            s.wake_outbox.notify_one();
            let mut answer = json!({ "resent": n });
            if removed > 0 {
                // Said, not parked: a resend of a study whose files
                // retention removed turned its sent rows into parked ones.
                answer["not_resent_files_removed"] = json!(removed);
            }
            Json(answer).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveDeliveriesQuery {
    /// The destination whose rows move: configured or not (a renamed one).
    from: String,
    /// A configured destination.
    to: String,
}

/// `POST /api/deliveries/move`: what one destination is owed goes to
/// another (after a rename, or to a PACS that replaces it).
async fn move_deliveries(
    State(s): State<HttpState>,
    q: Result<Query<MoveDeliveriesQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match action_query(q, &body) {
        Ok(q) => q,
        Err(e) => return bad_request(json!({ "error": e })),
    };
    if let Some(refused) = unknown_destination(&s, &q.to) {
        return refused;
    }
    if q.from.trim().is_empty() {
        return bad_request(json!({ "error": "from is empty" }));
    }
    if let Some(refused) = unknown_destination_without_rows(&s, &q.from).await {
        return refused;
    }
    if q.from == q.to {
        return bad_request(json!({ "error": "`from` and `to` are the same destination" }));
    }
    match s.store.move_deliveries(&q.from, &q.to).await {
        Ok((moved, dropped)) => {
            tracing::warn!(
                moved,
                dropped_as_already_owed = dropped,
                from = %q.from,
                to = %q.to,
                "deliveries moved by the operator"
            );
            s.wake_outbox.notify_one();
            Json(json!({ "moved": moved, "dropped": dropped })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A GET that takes no parameters: one given is a misunderstanding (a
/// filter that filters nothing), refused like the listings' unknown ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParameters {}

async fn instance(
    State(s): State<HttpState>,
    Path(sop_uid): Path<String>,
    q: Result<Query<NoParameters>, QueryRejection>,
) -> Response {
    if let Err(e) = query(q) {
        return bad_request(json!({ "error": e }));
    }
    // A typo is told apart from an instance never received, as in the
    // filters (the node stores no instance under what is no UID).
    let sop_uid = match checked_uid(&sop_uid) {
        Ok(uid) => uid,
        Err(body) => return bad_request(body),
    };
    let details = match s.store.instance_details(sop_uid).await {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    if details.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no instance {sop_uid}") })),
        )
            .into_response();
    }
    let copies: Vec<Value> = details
        .iter()
        .map(|(i, job, deliveries)| {
            json!({
                "instance_id": i.instance_id,
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "study_instance_uid": i.study_instance_uid,
                "series_instance_uid": i.series_instance_uid,
                "transfer_syntax_uid": i.transfer_syntax_uid,
                "modality": i.modality,
                "path": i.path,
                "file_size": i.file_size,
                "sha256": i.sha256,
                "calling_ae": i.calling_ae,
                "received_at_ms": i.received_at_ms,
                "purged_at_ms": i.purged_at_ms,
                "restored_at_ms": i.restored_at_ms,
                "job": job.as_ref().map(job_json),
                "deliveries": deliveries.iter().map(|d| json!({
                    "kind": d.kind,
                    "sop_instance_uid": d.sop_instance_uid,
                    "sent_as_uid": d.sent_as_uid,
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_status": d.last_status,
                    "updated_at_ms": d.updated_at_ms,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "sop_instance_uid": sop_uid, "copies": copies })).into_response()
}
