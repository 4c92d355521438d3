//! Which resource a request targets, for the validator store or source.

use http::{HeaderMap, Request, Uri};

/// Names the resource a request targets: the key under which the validator store records its
/// validators and under which a [`ValidatorSource`](crate::ValidatorSource) is asked.
///
/// A GET and the PUT that later updates the same resource must get the same key. `None` means
/// "no resource key": the request is handled as if no store or source were configured.
///
/// Implemented for closures `Fn(&Uri, &HeaderMap) -> Option<String>`.
pub trait MakeResourceKey {
    /// The resource key for `request`.
    fn make_resource_key<B>(&self, request: &Request<B>) -> Option<String>;
}

impl<F> MakeResourceKey for F
where
    F: Fn(&Uri, &HeaderMap) -> Option<String>,
{
    fn make_resource_key<B>(&self, request: &Request<B>) -> Option<String> {
        self(request.uri(), request.headers())
    }
}

/// The default [`MakeResourceKey`]: the request target's path and query (`/items/7?v=2`).
///
/// The query is part of the resource's identity (RFC 9110 §4.2.1), so `/items?page=2` and
/// `/items` never share validators. The target is kept byte for byte as received: two targets
/// that differ in any byte never share a record, and two spellings of one resource
/// (`/items/7` and `/items/%37`, or reordered query parameters) do not either: writes through
/// different spellings are not decided against one record. The `Host` is not part of it:
/// add it (or a tenant) with a custom key when one service answers for several origins, or
/// one origin's validators decide another's writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathAndQuery;

impl MakeResourceKey for PathAndQuery {
    fn make_resource_key<B>(&self, request: &Request<B>) -> Option<String> {
        let uri = request.uri();
        Some(
            uri.path_and_query()
                .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        )
    }
}
