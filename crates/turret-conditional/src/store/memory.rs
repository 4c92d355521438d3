//! The in-process validator store.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::{ClaimOutcome, Learned, Update};
use crate::{
    headers::{Conditions, Current},
    precondition::{Decision, evaluate},
};

/// Claims are few (one per in-flight conditional write); past this many, expired ones are
/// swept on insert.
const CLAIM_SWEEP_AT: usize = 1024;

#[derive(Debug, Clone)]
struct Record {
    current: Current,
    at: Instant,
}

#[derive(Debug)]
struct Claim {
    token: String,
    expires: Instant,
}

/// Records in a bounded `moka` cache; claims in a small map. Every mutation holds the
/// `claims` lock, which makes check-and-claim and complete-and-release atomic.
pub(crate) struct MemoryStore {
    records: moka::sync::Cache<String, Record>,
    claims: Mutex<HashMap<String, Claim>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.records.entry_count())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            records: moka::sync::Cache::new(max_entries),
            claims: Mutex::new(HashMap::new()),
        }
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<String, Claim>> {
        // No code panics while holding the lock; recover anyway rather than propagate.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lookup(&self, resource: &str, record_ttl: Duration) -> Option<Current> {
        self.records
            .get(resource)
            .filter(|r| r.at.elapsed() < record_ttl)
            .map(|r| r.current)
    }

    pub(crate) fn claim(
        &self,
        resource: &str,
        cond: &Conditions,
        token: String,
        learned: Option<&Learned>,
        claim_ttl: Duration,
        record_ttl: Duration,
    ) -> ClaimOutcome {
        let mut claims = self.claims();
        let now = Instant::now();
        if claims.get(resource).is_some_and(|c| c.expires > now) {
            return ClaimOutcome::Busy;
        }
        let current = match (self.lookup(resource, record_ttl), learned) {
            (Some(current), _) => Some(current),
            (None, None) => return ClaimOutcome::NoRecord,
            (None, Some(Learned::Absent)) => None,
            (None, Some(Learned::Current(current))) => {
                self.records.insert(
                    resource.to_owned(),
                    Record {
                        current: current.clone(),
                        at: now,
                    },
                );
                Some(current.clone())
            }
        };
        // Any unsafe method: `PUT` stands for all of them (only GET/HEAD differ).
        match evaluate(cond, &http::Method::PUT, current.as_ref()) {
            Decision::Proceed => {}
            Decision::NotModified | Decision::PreconditionFailed => return ClaimOutcome::Failed,
        }
        if claims.len() >= CLAIM_SWEEP_AT {
            claims.retain(|_, c| c.expires > now);
        }
        claims.insert(
            resource.to_owned(),
            Claim {
                token: token.clone(),
                expires: now + claim_ttl,
            },
        );
        ClaimOutcome::Granted(token)
    }

    pub(crate) fn complete(&self, resource: &str, token: Option<&str>, update: &Update) {
        let mut claims = self.claims();
        match update {
            Update::Set(current) => self.records.insert(
                resource.to_owned(),
                Record {
                    current: current.clone(),
                    at: Instant::now(),
                },
            ),
            Update::Delete => self.records.invalidate(resource),
            Update::Keep => {}
        }
        if let Some(token) = token
            && claims.get(resource).is_some_and(|c| c.token == token)
        {
            claims.remove(resource);
        }
    }

    pub(crate) fn record_read(&self, resource: &str, current: Current) {
        let claims = self.claims();
        if claims
            .get(resource)
            .is_some_and(|c| c.expires > Instant::now())
        {
            return;
        }
        self.records.insert(
            resource.to_owned(),
            Record {
                current,
                at: Instant::now(),
            },
        );
        drop(claims);
    }
}
