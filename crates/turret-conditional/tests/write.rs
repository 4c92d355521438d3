//! A successful write's response carries the new ETag (hashed from the representation it
//! returns, or asked of the validator source), and the layer's own 412/428 are RFC 9457
//! problem details — or what `on_rejection` builds. Memory, and two instances on a real Redis.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_conditional::{
    BoxError, ConditionalLayer, ResourceState, Target, ValidatorStore, Validators,
};

type Svc = BoxCloneService<Request<String>, Response<Bytes>, Infallible>;

/// One document at `/doc`: GET returns it, PUT and PATCH replace it with the request body
/// and return it (as an axum handler returning `Json(doc)` from both routes does), unless
/// the request says `x-answer: empty` (a `204`) or `x-answer: etag` (the handler's own tag).
#[derive(Clone, Default)]
struct Doc {
    body: Arc<Mutex<String>>,
    version: Arc<AtomicU64>,
}

impl Doc {
    fn new(body: &str) -> Self {
        let doc = Doc::default();
        *doc.body.lock().unwrap() = body.to_owned();
        doc.version.store(1, Ordering::SeqCst);
        doc
    }

    fn service(&self, layer: ConditionalLayer) -> Svc {
        let doc = self.clone();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |req: Request<String>| {
                let doc = doc.clone();
                async move {
                    let answer = req.headers().get("x-answer").cloned();
                    let write = req.method() == Method::PUT || req.method() == Method::PATCH;
                    if write {
                        *doc.body.lock().unwrap() = req.into_body();
                        doc.version.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut res = Response::new(Full::from(doc.body.lock().unwrap().clone()));
                    match answer.as_ref().map(|v| v.as_bytes()) {
                        Some(b"empty") if write => {
                            *res.status_mut() = StatusCode::NO_CONTENT;
                            *res.body_mut() = Full::default();
                        }
                        Some(b"etag") => {
                            res.headers_mut()
                                .insert(header::ETAG, HeaderValue::from_static("\"mine\""));
                        }
                        _ => {}
                    }
                    Ok::<_, Infallible>(res)
                }
            }))
            .and_then(
                |res: Response<turret_conditional::ResponseBody<Full<Bytes>>>| async {
                    let (parts, body) = res.into_parts();
                    let bytes = body.collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(Response::from_parts(parts, bytes))
                },
            );
        BoxCloneService::new(svc)
    }
}

async fn send(svc: &Svc, method: Method, headers: &[(&str, &str)], body: &str) -> Response<Bytes> {
    let mut req = Request::builder().method(method).uri("/doc");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    svc.clone()
        .oneshot(req.body(body.to_owned()).unwrap())
        .await
        .unwrap()
}

fn etag(res: &Response<Bytes>) -> Option<String> {
    res.headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A PUT answered with the new representation carries the tag a GET then gets, and that tag
/// is what the store holds: the next `If-Match` with it is performed, the old one is 412.
async fn put_carries_the_etag_the_next_get_gets(a: Svc, b: Svc) {
    let read = send(&a, Method::GET, &[], "").await;
    let old = etag(&read).expect("a GET's tag");

    let put = send(&a, Method::PUT, &[("if-match", &old)], r#"{"name":"new"}"#).await;
    assert_eq!(put.status(), StatusCode::OK);
    let new = etag(&put).expect("the PUT's response carries the new tag");
    assert_ne!(new, old);

    // Without a GET in between: the new tag is current, on the other instance too.
    let again = send(
        &b,
        Method::PUT,
        &[("if-match", &new)],
        r#"{"name":"newer"}"#,
    )
    .await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the PUT's tag passes If-Match"
    );
    let newer = etag(&again).expect("a tag");
    let stale = send(&b, Method::PUT, &[("if-match", &new)], r#"{"name":"lost"}"#).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);

    // And it is the tag a GET gets.
    let read = send(&b, Method::GET, &[], "").await;
    assert_eq!(read.body(), r#"{"name":"newer"}"#);
    assert_eq!(etag(&read), Some(newer));
}

#[tokio::test]
async fn a_put_answered_with_the_representation_carries_the_etag_a_get_gets() {
    let doc = Doc::new(r#"{"name":"old"}"#);
    let svc = doc.service(ConditionalLayer::new().validator_store(ValidatorStore::memory()));
    put_carries_the_etag_the_next_get_gets(svc.clone(), svc).await;
}

#[tokio::test]
async fn without_a_store_a_put_and_a_patch_still_carry_the_body_tag() {
    let doc = Doc::new("a");
    let svc = doc.service(ConditionalLayer::new());
    let put = send(&svc, Method::PUT, &[], "b").await;
    let get = send(&svc, Method::GET, &[], "").await;
    assert_eq!(etag(&put).as_deref(), etag(&get).as_deref());
    assert!(etag(&put).is_some());
    let patch = send(&svc, Method::PATCH, &[], "c").await;
    let get = send(&svc, Method::GET, &[], "").await;
    assert!(etag(&patch).is_some());
    assert_eq!(etag(&patch), etag(&get));
    // A POST or DELETE is not a new representation of its target: no tag.
    let post = send(&svc, Method::POST, &[], "d").await;
    assert_eq!(etag(&post), None);
}

#[tokio::test]
async fn an_empty_write_response_the_handlers_own_tag_and_write_etags_off_are_left_alone() {
    let doc = Doc::new("a");
    let svc = doc.service(ConditionalLayer::new().validator_store(ValidatorStore::memory()));
    let empty = send(&svc, Method::PUT, &[("x-answer", "empty")], "b").await;
    assert_eq!(empty.status(), StatusCode::NO_CONTENT);
    assert_eq!(etag(&empty), None);
    let own = send(&svc, Method::PUT, &[("x-answer", "etag")], "c").await;
    assert_eq!(etag(&own).as_deref(), Some("\"mine\""));

    let off = doc.service(ConditionalLayer::new().write_etags(false));
    let put = send(&off, Method::PUT, &[], "d").await;
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(etag(&put), None);
    // Reads still get theirs.
    assert!(etag(&send(&off, Method::GET, &[], "").await).is_some());
}

#[tokio::test]
async fn with_a_source_a_put_carries_the_sources_new_version() {
    let doc = Doc::new("a");
    let versions = doc.version.clone();
    let layer = ConditionalLayer::new().validator_source(move |_: Target| {
        let v = versions.load(Ordering::SeqCst);
        async move {
            Ok::<_, BoxError>(ResourceState::Current(
                Validators::new().with_etag(HeaderValue::from_str(&format!("\"v{v}\"")).unwrap()),
            ))
        }
    });
    let svc = doc.service(layer);
    let put = send(&svc, Method::PUT, &[("if-match", "\"v1\"")], "b").await;
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(
        etag(&put).as_deref(),
        Some("\"v2\""),
        "the source's, not a hash"
    );
    let next = send(&svc, Method::PUT, &[("if-match", "\"v2\"")], "c").await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(etag(&next).as_deref(), Some("\"v3\""));
}

fn json(res: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(res.body()).expect("a JSON body")
}

#[tokio::test]
async fn the_layers_412_and_428_are_rfc_9457_problem_details_by_default() {
    let doc = Doc::new("a");
    let svc = doc.service(
        ConditionalLayer::new()
            .validator_store(ValidatorStore::memory())
            .require_precondition(true),
    );
    send(&svc, Method::GET, &[], "").await;
    let stale = send(&svc, Method::PUT, &[("if-match", "\"nope\"")], "b").await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        stale.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = json(&stale);
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["title"], "Precondition Failed");
    assert_eq!(body["status"], 412);
    assert!(body["detail"].as_str().unwrap().contains("If-Match"));

    let bare = send(&svc, Method::PUT, &[], "b").await;
    assert_eq!(bare.status(), StatusCode::PRECONDITION_REQUIRED);
    let body = json(&bare);
    assert_eq!(body["title"], "Precondition Required");
    assert_eq!(body["status"], 428);
    assert!(body["detail"].as_str().unwrap().contains("If-Match"));

    // A GET whose If-Match fails is refused the same way; a 304 stays empty.
    let get = send(&svc, Method::GET, &[("if-match", "\"nope\"")], "").await;
    assert_eq!(get.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json(&get)["status"], 412);
    let tag = etag(&send(&svc, Method::GET, &[], "").await).unwrap();
    let not_modified = send(&svc, Method::GET, &[("if-none-match", &tag)], "").await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert!(not_modified.body().is_empty());
    // The handler never saw the refused writes.
    assert_eq!(doc.version.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn on_rejection_builds_the_body_and_the_layer_keeps_the_status() {
    let doc = Doc::new("a");
    let layer = ConditionalLayer::new()
        .validator_store(ValidatorStore::memory())
        .on_rejection(|status: StatusCode| {
            // A hook that forgets the status: the layer sets it.
            let mut res = Response::new(Bytes::from(format!(
                r#"{{"error":"precondition","code":{}}}"#,
                status.as_u16()
            )));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res
        });
    let svc = doc.service(layer);
    send(&svc, Method::GET, &[], "").await;
    let stale = send(&svc, Method::PUT, &[("if-match", "\"nope\"")], "b").await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(json(&stale)["code"], 412);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_a_puts_tag_from_one_instance_passes_if_match_on_another() {
    use std::time::{Duration, Instant};
    use turret_redis::{Redis, RedisConfig};

    let server = turret_testkit::RedisServer::start();
    let connect = || async {
        Redis::connect(RedisConfig::from_url(&server.url()).unwrap())
            .await
            .unwrap()
    };
    let (ra, rb) = (connect().await, connect().await);
    let doc = Doc::new(r#"{"name":"old"}"#);
    let a = doc.service(ConditionalLayer::new().validator_store(ValidatorStore::redis(ra)));
    let store_b = ValidatorStore::redis(rb);
    let b = doc.service(ConditionalLayer::new().validator_store(store_b.clone()));
    // A GET's record is written in the background on Redis: wait for it before writing.
    send(&a, Method::GET, &[], "").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while store_b.get("/doc").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the GET was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    put_carries_the_etag_the_next_get_gets(a, b).await;
}
