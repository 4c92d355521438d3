use turret_macros::cached;

#[cached(ttl = "10m", expire = "1h", key = "product:{id}")]
async fn get_product(id: u64) -> String {
    id.to_string()
}

#[cached(ttl = "10m", ttl = "1h", key = "product:{id}")]
async fn get_twice(id: u64) -> String {
    id.to_string()
}

fn main() {}
