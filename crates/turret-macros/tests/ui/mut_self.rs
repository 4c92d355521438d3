use turret_macros::cached;

struct ProductService {
    cache: u8,
}

impl ProductService {
    #[cached(cache = self.cache, ttl = "10m", key = "product:{id}")]
    async fn get_product(&mut self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
