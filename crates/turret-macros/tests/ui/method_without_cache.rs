use turret_macros::cached;

struct ProductService;

impl ProductService {
    #[cached(ttl = "10m", key = "product:{id}")]
    async fn get_product(&self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
