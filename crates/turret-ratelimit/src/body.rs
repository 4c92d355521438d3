//! The response body of the rate-limit layer: the inner service's body untouched, or the body
//! of a refusal.

pub use turret_body::ResponseBody;
