//! The response body of [`super::Coalesce`]: the inner body untouched, a collected body
//! shared with the waiters, or what the leader read of a body it could not share (larger than
//! its size hint, or failed) followed by the rest or the error.

pub use turret_body::ResponseBody;
pub(crate) use turret_body::{CollectBounded, Collected, collect_bounded, concat};
