//! Streaming fills: a response of unknown length reaches the client chunk by chunk while a
//! copy is kept and stored at its end; a body past `max_entry_size` streams whole and is not
//! stored; 50 concurrent large fills never hold more than the layer's budget of fill bytes.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};
use turret_cache::ResponseCacheLayer;
use turret_testkit::body::Streaming;

fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header(header::HOST, "files.example")
        .body(())
        .unwrap()
}

/// An origin whose every response is `chunks` chunks of `size` bytes sent by a task, one
/// every `gap`; counts its calls.
fn origin(
    calls: Arc<AtomicUsize>,
    chunks: usize,
    size: usize,
    gap: Duration,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Streaming>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Streaming>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (tx, body) = Streaming::channel(1);
        tokio::spawn(async move {
            for i in 0..chunks {
                tokio::time::sleep(gap).await;
                if tx
                    .send(Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        async move {
            let mut res = Response::new(body);
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            Ok::<_, Infallible>(res)
        }
    })
}

#[tokio::test]
async fn a_body_past_the_entry_bound_streams_whole_and_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::new().max_entry_size(10_000);
    let svc = layer.layer(origin(calls.clone(), 4, 4_000, Duration::ZERO));
    let body = svc.clone().oneshot(get("/big")).await.unwrap().into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes().len(), 16_000);
    let again = svc.oneshot(get("/big")).await.unwrap();
    assert_ne!(again.headers().get("x-cache").unwrap(), "HIT");
    assert_eq!(
        again.into_body().collect().await.unwrap().to_bytes().len(),
        16_000
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.fill_bytes_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_large_fills_stay_within_the_fill_budget() {
    const BUDGET: u64 = 1024 * 1024;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::new()
        .max_entry_size(4 * 1024 * 1024)
        .max_fill_bytes_in_flight(BUDGET);
    // 50 URLs × 10 chunks × 64 KiB: 32 MiB in all, 640 KiB each.
    let svc = layer.layer(origin(
        calls.clone(),
        10,
        64 * 1024,
        Duration::from_millis(5),
    ));
    let mut clients = Vec::new();
    for i in 0..50 {
        let svc = svc.clone();
        clients.push(tokio::spawn(async move {
            let body = svc
                .oneshot(get(&format!("/f/{i}")))
                .await
                .unwrap()
                .into_body();
            body.collect().await.unwrap().to_bytes().len()
        }));
    }
    let watcher = {
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..400 {
                peak = peak.max(layer.fill_bytes_in_flight());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            peak
        })
    };
    for c in clients {
        assert_eq!(
            c.await.unwrap(),
            640 * 1024,
            "every client got its whole body"
        );
    }
    let peak = watcher.await.unwrap();
    assert!(
        peak <= BUDGET,
        "{peak} bytes held, over the {BUDGET} budget"
    );
    assert!(peak > 0, "no fill was collecting");
    assert_eq!(layer.fill_bytes_in_flight(), 0, "everything given back");
    // Some fills were stored (those within the budget), the rest streamed uncached.
    let mut hits = 0;
    for i in 0..50 {
        let res = svc.clone().oneshot(get(&format!("/f/{i}"))).await.unwrap();
        if res.headers().get("x-cache").is_some_and(|v| v == "HIT") {
            hits += 1;
        }
        let _ = res.into_body().collect().await;
    }
    assert!((1..50).contains(&hits), "{hits} of 50 stored");
}

#[tokio::test]
async fn a_fill_whose_client_goes_away_is_abandoned_and_gives_its_bytes_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::new();
    let svc = layer.layer(origin(calls.clone(), 4, 1_000, Duration::from_millis(20)));
    let mut body = svc.clone().oneshot(get("/cut")).await.unwrap().into_body();
    // One chunk in, then the client hangs up.
    body.frame().await.unwrap().unwrap();
    assert_eq!(layer.fill_bytes_in_flight(), 1_000);
    drop(body);
    assert_eq!(layer.fill_bytes_in_flight(), 0);
    let next = svc.oneshot(get("/cut")).await.unwrap();
    assert_ne!(
        next.headers().get("x-cache").unwrap(),
        "HIT",
        "a cut fill was stored"
    );
    assert_eq!(
        next.into_body().collect().await.unwrap().to_bytes().len(),
        4_000
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
