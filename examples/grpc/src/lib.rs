//! The gRPC example: a small tonic product catalogue (`catalog.v1.Catalog`) behind turret's
//! rate limiter, keyed by the `x-api-key` metadata value, with its deliberately slow read
//! protected by turret's stampede cache. See the README beside this crate, `server --help`
//! and `client --help`.
//!
//! No `protoc` and no build script: the messages are declared by hand with prost's derive
//! ([`proto`], matching `proto/catalog.proto`), and the service ([`server`]) and client
//! ([`client`]) are written with tonic's own building blocks, the way `tonic-build` would
//! generate them.
//!
//! - [`proto`]: the messages and method paths.
//! - [`server`]: the service, the catalogue data, the layers and [`server::serve`].
//! - [`client`]: [`client::CatalogClient`], used by the `client` binary and the tests.
//! - [`config`]: flags of both binaries, with environment fallbacks.

pub mod client;
pub mod config;
pub mod proto;
pub mod server;
