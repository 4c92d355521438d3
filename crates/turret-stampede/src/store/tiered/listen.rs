//! The invalidation channel: the message format, and the listener that applies other
//! instances' invalidations to this instance's L1 and tracks whether it is live.

use std::{
    hash::{BuildHasher, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::oneshot;
use turret_redis::{Event, Redis};

use super::{Shared, l1::L1};

/// The pub/sub channel of invalidation messages (in the handle's key namespace).
pub(super) const CHANNEL: &str = "stampede:invalidate";

/// Probe delays while the subscription is not live: from the first to the last.
const PROBE_FIRST: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_secs(2);

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target<'a> {
    /// One key was written or removed.
    Key(&'a str),
    /// Every key of a tag was removed.
    Tag(&'a str),
    /// A sender's liveness probe (its sequence number).
    Probe(u64),
}

/// An invalidation broadcast: `[version 1][b'k' | b't' | b'p'][sender id, u64 BE]` then the
/// key or tag (UTF-8) or the probe's sequence number (u64 BE). The response cache's channel
/// (`cache-invalidate`) has the same shape plus its purge mode; the two never share a
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Message<'a> {
    pub(super) target: Target<'a>,
    pub(super) instance: u64,
}

const VERSION: u8 = 1;
const HEADER: usize = 1 + 1 + 8;

impl<'a> Message<'a> {
    pub(super) fn encode(&self) -> Vec<u8> {
        let seq;
        let (kind, body): (u8, &[u8]) = match self.target {
            Target::Key(k) => (b'k', k.as_bytes()),
            Target::Tag(t) => (b't', t.as_bytes()),
            Target::Probe(n) => {
                seq = n.to_be_bytes();
                (b'p', &seq)
            }
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `None` for anything that is not a message of this version: never a panic.
    pub(super) fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (head, body) = bytes.split_at_checked(HEADER)?;
        if head[0] != VERSION {
            return None;
        }
        let instance = u64::from_be_bytes(head[2..10].try_into().ok()?);
        let target = match head[1] {
            b'k' => Target::Key(std::str::from_utf8(body).ok()?),
            b't' => Target::Tag(std::str::from_utf8(body).ok()?),
            b'p' => Target::Probe(u64::from_be_bytes(body.try_into().ok()?)),
            _ => return None,
        };
        Some(Self { target, instance })
    }
}

/// A random id for this store, so that it can skip its own messages and find its probes.
pub(super) fn instance_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// The listener's view of the subscription.
struct State {
    /// Sequence number of the next probe.
    next_probe: u64,
    /// Probes numbered below this were sent before the last gap: they prove nothing.
    accept_from: u64,
    /// A gap happened and the L1 has not been cleared since with Redis reachable.
    clear_pending: bool,
    delay: Duration,
}

/// Applies other instances' invalidations to the L1 and keeps [`Shared::live`] true only
/// while the subscription is known to deliver: from the moment this store's own probe
/// comes back until the next gap. Ends when the store is dropped (`stopped`) or the handle
/// is gone.
pub(super) async fn listen(
    redis: Redis,
    l1: Arc<L1>,
    shared: Arc<Shared>,
    instance: u64,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut subscription = match redis.subscribe(CHANNEL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot subscribe to value invalidations: the two-tier store reads Redis on every L1 miss and never fills its L1"
            );
            return;
        }
    };
    let mut state = State {
        next_probe: 0,
        accept_from: 0,
        clear_pending: false,
        delay: PROBE_FIRST,
    };
    let probe_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(probe_timer);
    loop {
        let live = shared.live();
        tokio::select! {
            _ = &mut stopped => return,
            () = &mut probe_timer, if !live => {
                let message = Message { target: Target::Probe(state.next_probe), instance };
                state.next_probe += 1;
                if redis.publish(CHANNEL, &message.encode()).await.is_ok() && state.clear_pending {
                    // Redis is reachable: what was missed during the gap may be stale.
                    state.clear_pending = false;
                    shared.clear(&l1);
                }
                probe_timer.as_mut().reset(tokio::time::Instant::now() + state.delay);
                state.delay = (state.delay * 2).min(PROBE_MAX);
            }
            event = subscription.recv() => match event {
                None => return,
                Some(Event::Gap) => {
                    if shared.set_live(false) {
                        tracing::warn!(
                            "value invalidations may have been missed: the L1 serves what it holds (each entry within l1_ttl), fills nothing, and is cleared once Redis answers"
                        );
                    }
                    state.clear_pending = true;
                    state.accept_from = state.next_probe;
                    state.delay = PROBE_FIRST;
                    probe_timer.as_mut().reset(tokio::time::Instant::now());
                }
                Some(Event::Message(bytes)) => match Message::decode(&bytes) {
                    Some(Message { target: Target::Probe(n), instance: from }) => {
                        if from == instance && n >= state.accept_from && !shared.live() {
                            // Everything published from now on reaches this L1; anything
                            // published since the gap may not have.
                            state.clear_pending = false;
                            shared.clear(&l1);
                            shared.set_live(true);
                            tracing::info!("value invalidations subscribed: the L1 fills again");
                        }
                    }
                    Some(m) if m.instance == instance => {}
                    Some(Message { target, .. }) => {
                        metrics::counter!("turret_stampede_l1_invalidations_received_total")
                            .increment(1);
                        match target {
                            Target::Key(key) => l1.invalidate(key),
                            Target::Tag(tag) => l1.invalidate_tag(tag),
                            Target::Probe(_) => {}
                        }
                    }
                    None => {
                        metrics::counter!("turret_stampede_l1_messages_ignored_total").increment(1);
                        tracing::debug!(len = bytes.len(), "ignoring a foreign value invalidation message");
                    }
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn messages_round_trip() {
        for message in [
            Message {
                target: Target::Key("product:42"),
                instance: 7,
            },
            Message {
                target: Target::Tag("category:{3}"),
                instance: u64::MAX,
            },
            Message {
                target: Target::Tag(""),
                instance: 0,
            },
            Message {
                target: Target::Probe(u64::MAX - 1),
                instance: 1,
            },
        ] {
            assert_eq!(Message::decode(&message.encode()), Some(message));
        }
    }

    #[test]
    fn foreign_or_corrupt_messages_are_ignored() {
        let good = Message {
            target: Target::Key("k"),
            instance: 1,
        }
        .encode();
        for n in 0..HEADER {
            assert_eq!(Message::decode(&good[..n]), None, "prefix {n}");
        }
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(Message::decode(&bad), None, "unknown version");
        bad = good.clone();
        bad[1] = b'x';
        assert_eq!(Message::decode(&bad), None, "unknown kind");
        bad = good.clone();
        bad.push(0xff);
        assert_eq!(Message::decode(&bad), None, "not UTF-8");
        bad = good.clone();
        bad[1] = b'p';
        assert_eq!(Message::decode(&bad), None, "a probe is 8 bytes");
        assert_eq!(Message::decode(b"stampede:released probe"), None);
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_does_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Some(m) = Message::decode(&bytes) {
                let encoded = m.encode();
                prop_assert_eq!(Message::decode(&encoded), Some(m));
            }
        }
    }
}
