//! The messages of `catalog.v1` (`proto/catalog.proto`), declared by hand with prost's
//! derive: the field numbers and types are the `.proto` file's, so any client generated from
//! that file talks to this server, and nothing here needs `protoc`.
//!
//! `Product` and `ListProductsResponse` also derive serde, so that the stampede cache can
//! store a computed list (in memory, or on Redis for a fleet).

use serde::{Deserialize, Serialize};

/// The service's full name.
pub const SERVICE: &str = "catalog.v1.Catalog";
/// The path of `GetProduct`.
pub const GET_PRODUCT: &str = "/catalog.v1.Catalog/GetProduct";
/// The path of `ListProducts`.
pub const LIST_PRODUCTS: &str = "/catalog.v1.Catalog/ListProducts";
/// The path of `Stats`.
pub const STATS: &str = "/catalog.v1.Catalog/Stats";

/// `GetProduct`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetProductRequest {
    /// The product's id (from 1).
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// One product of the catalogue.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its category.
    #[prost(string, tag = "3")]
    pub category: String,
    /// Its price in cents.
    #[prost(uint64, tag = "4")]
    pub price_cents: u64,
}

/// `ListProducts`' request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListProductsRequest {
    /// Only this category; every product when empty.
    #[prost(string, tag = "1")]
    pub category: String,
    /// At most this many products, 1 to 100 (0 means 20).
    #[prost(uint32, tag = "2")]
    pub page_size: u32,
}

/// `ListProducts`' response.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct ListProductsResponse {
    /// The products, by id.
    #[prost(message, repeated, tag = "1")]
    pub products: Vec<Product>,
    /// When the list was computed (Unix milliseconds): equal for calls that shared it.
    #[prost(uint64, tag = "2")]
    pub computed_at_unix_ms: u64,
}

/// `Stats`' request (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsRequest {}

/// `Stats`' response: the server's counters since it started.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsResponse {
    /// How many times `ListProducts` ran its slow read.
    #[prost(uint64, tag = "1")]
    pub list_computations: u64,
    /// `ListProducts` calls answered.
    #[prost(uint64, tag = "2")]
    pub list_calls: u64,
    /// `GetProduct` calls answered.
    #[prost(uint64, tag = "3")]
    pub get_calls: u64,
}
