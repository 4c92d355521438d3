//! The response body of [`Conditional`](crate::Conditional): the inner body passed through
//! untouched, the body the layer buffered to compute an ETag (or what it read of one that
//! turned out larger than its size hint, then the rest), or no body at all (304, 412, 428).

pub use turret_body::ResponseBody;
pub(crate) use turret_body::{CollectBounded, Collected, collect_bounded};
