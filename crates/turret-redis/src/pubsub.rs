//! One subscriber connection per handle, fanned out to any number of subscriptions.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_core::Stream;
use redis::{
    ProtocolVersion, PushInfo, PushKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterConfig,
    cluster_async::ClusterConnection,
};
use tokio::sync::{Notify, broadcast};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{Error, RedisConfig, Topology};

/// Messages a subscription buffers before a slow reader gets [`Event::Gap`].
const CHANNEL_CAPACITY: usize = 1024;

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message published on the channel.
    Message(Bytes),
    /// Messages may have been missed: the connection dropped (it re-subscribes by itself),
    /// or this reader fell more than 1024 messages behind. A reader that keeps derived state
    /// (an L1 cache, a waiter list) should treat it as suspect: flush, or re-check.
    Gap,
}

/// A stream of [`Event`]s from one channel. Dropping it stops delivery to it; the channel
/// stays subscribed for the life of the [`crate::Redis`] handle.
pub struct Subscription {
    channel: String,
    inner: BroadcastStream<Event>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Subscription {
    /// The full channel name (namespace prefix included).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Waits for the next event; `None` once the handle is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(event)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                Poll::Ready(Some(Event::Gap))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

type Channels = Mutex<HashMap<Vec<u8>, broadcast::Sender<Event>>>;

#[derive(Clone)]
enum SubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub(crate) struct Subscriber {
    conn: SubConn,
    channels: Arc<Channels>,
    disconnected: Arc<Notify>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Wakes the watchdog so that it sees the subscriber is gone and ends.
        self.disconnected.notify_one();
    }
}

impl Subscriber {
    pub(crate) fn new(config: &RedisConfig) -> Result<Arc<Self>, Error> {
        let channels: Arc<Channels> = Arc::default();
        let disconnected = Arc::new(Notify::new());
        let weak = Arc::downgrade(&channels);
        let notify = disconnected.clone();
        let sender = move |info: PushInfo| -> Result<(), redis::aio::SendError> {
            if info.kind == PushKind::Disconnection {
                notify.notify_one();
            }
            dispatch(&weak, info);
            Ok(())
        };
        let conn = match &config.topology {
            Topology::Single(url) => {
                let info = RedisConfig::node_info(url)?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = config.node_client(info.set_redis_settings(settings))?;
                let mgr_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(8)
                    .set_push_sender(sender)
                    .set_automatic_resubscription();
                SubConn::Single(ConnectionManager::new_lazy_with_config(client, mgr_config)?)
            }
            Topology::Cluster(seeds) => {
                let client = config
                    .cluster_builder(seeds)
                    .use_protocol(ProtocolVersion::RESP3)
                    .build()?;
                let cluster_config = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_push_sender(sender);
                SubConn::Cluster(client.get_pending_async_connection_with_config(cluster_config))
            }
        };
        let this = Arc::new(Self {
            conn,
            channels,
            disconnected,
        });
        tokio::spawn(watchdog(Arc::downgrade(&this), this.disconnected.clone()));
        Ok(this)
    }

    pub(crate) fn subscribe(self: &Arc<Self>, channel: String) -> Subscription {
        let (rx, first) = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(channel.as_bytes()) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                    channels.insert(channel.clone().into_bytes(), tx);
                    (rx, true)
                }
            }
        };
        if first {
            tokio::spawn(subscribe_until_done(Arc::downgrade(self), channel.clone()));
        }
        Subscription {
            channel,
            inner: BroadcastStream::new(rx),
        }
    }

    async fn ping(&self) -> bool {
        let cmd = redis::cmd("PING");
        let fut = async {
            match self.conn.clone() {
                SubConn::Single(mut c) => cmd.query_async::<redis::Value>(&mut c).await,
                SubConn::Cluster(mut c) => cmd.query_async::<redis::Value>(&mut c).await,
            }
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), fut).await,
            Ok(Ok(_))
        )
    }
}

/// After a disconnect, the connection manager reconnects (and re-subscribes) when a command
/// fails; a subscriber sends no commands, so probe with `PING` until one succeeds.
async fn watchdog(subscriber: Weak<Subscriber>, disconnected: Arc<Notify>) {
    loop {
        disconnected.notified().await;
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(this) = subscriber.upgrade() else {
                return;
            };
            if this.ping().await {
                break;
            }
            drop(this);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

async fn subscribe_until_done(subscriber: Weak<Subscriber>, channel: String) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(this) = subscriber.upgrade() else {
            return;
        };
        let fut = async {
            match this.conn.clone() {
                SubConn::Single(mut c) => c.subscribe(&channel).await,
                SubConn::Cluster(mut c) => c.subscribe(&channel).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), fut).await {
            Ok(Ok(())) => {
                tracing::debug!(channel, "subscribed");
                return;
            }
            Ok(Err(e)) => tracing::debug!(channel, error = %e, "subscribe failed; retrying"),
            Err(_) => tracing::debug!(channel, "subscribe timed out; retrying"),
        }
        drop(this);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn dispatch(channels: &Weak<Channels>, info: PushInfo) {
    let Some(channels) = channels.upgrade() else {
        return;
    };
    match info.kind {
        PushKind::Message => {
            let mut data = info.data.into_iter();
            let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                return;
            };
            let (Some(channel), Some(payload)) = (bytes_of(channel), bytes_of(payload)) else {
                return;
            };
            let channels = channels.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = channels.get(channel.as_ref()) {
                let _ = tx.send(Event::Message(payload));
            }
        }
        PushKind::Disconnection => {
            metrics::counter!("turret_redis_subscriber_disconnects_total").increment(1);
            tracing::warn!("redis subscriber connection lost; re-subscribing");
            let channels = channels.lock().unwrap_or_else(|e| e.into_inner());
            for tx in channels.values() {
                let _ = tx.send(Event::Gap);
            }
        }
        _ => {}
    }
}

fn bytes_of(value: redis::Value) -> Option<Bytes> {
    match value {
        redis::Value::BulkString(b) => Some(Bytes::from(b)),
        redis::Value::SimpleString(s) => Some(Bytes::from(s)),
        _ => None,
    }
}
