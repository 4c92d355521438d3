//! The client: one method per RPC over `tonic::client::Grpc` and prost's codec, the way
//! `tonic-build` would generate it, sending the API key as `x-api-key` metadata.
//!
//! Each method returns the whole `tonic::Response`, so that the caller can read the rate
//! limiter's fields (`x-ratelimit-remaining`, `ratelimit`) from its metadata; a refusal is a
//! `Status` with `Code::ResourceExhausted` and `retry-after` in [`Status::metadata`].

use http::uri::PathAndQuery;
use tonic::{
    Status,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_prost::ProstCodec;

use crate::{
    proto::{
        GET_PRODUCT, GetProductRequest, LIST_PRODUCTS, ListProductsRequest, ListProductsResponse,
        Product, STATS, StatsRequest, StatsResponse,
    },
    server::API_KEY,
};

/// A client of `catalog.v1.Catalog`. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct CatalogClient {
    grpc: tonic::client::Grpc<Channel>,
    api_key: Option<AsciiMetadataValue>,
}

impl CatalogClient {
    /// Connects to `server` (`http://127.0.0.1:50051`), sending `api_key` with every call.
    pub async fn connect(server: &str, api_key: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(server.to_owned())
            .map_err(|e| format!("server address {server:?}: {e}"))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect to {server}: {e}"))?;
        Self::new(channel).with_api_key(api_key)
    }

    /// A client over `channel`, sending no API key.
    pub fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
            api_key: None,
        }
    }

    /// Sends `api_key` (printable ASCII) as `x-api-key` with every call.
    pub fn with_api_key(mut self, api_key: &str) -> Result<Self, String> {
        let value = api_key
            .parse()
            .map_err(|_| format!("API key {api_key:?}: must be printable ASCII"))?;
        self.api_key = Some(value);
        Ok(self)
    }

    /// Sends no API key (the server answers `UNAUTHENTICATED`).
    pub fn without_api_key(mut self) -> Self {
        self.api_key = None;
        self
    }

    /// `GetProduct`.
    pub async fn get_product(&mut self, id: u64) -> Result<tonic::Response<Product>, Status> {
        self.unary(GET_PRODUCT, GetProductRequest { id }).await
    }

    /// `ListProducts`.
    pub async fn list_products(
        &mut self,
        category: &str,
        page_size: u32,
    ) -> Result<tonic::Response<ListProductsResponse>, Status> {
        let req = ListProductsRequest {
            category: category.to_owned(),
            page_size,
        };
        self.unary(LIST_PRODUCTS, req).await
    }

    /// `Stats`.
    pub async fn stats(&mut self) -> Result<tonic::Response<StatsResponse>, Status> {
        self.unary(STATS, StatsRequest {}).await
    }

    async fn unary<Req, Res>(
        &mut self,
        path: &'static str,
        message: Req,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
        let mut req = tonic::Request::new(message);
        if let Some(key) = &self.api_key {
            req.metadata_mut().insert(API_KEY, key.clone());
        }
        let codec = ProstCodec::<Req, Res>::default();
        self.grpc
            .unary(req, PathAndQuery::from_static(path), codec)
            .await
    }
}
