use turret_macros::cached;

#[cached(ttl = "10min", key = "product:{id}")]
async fn get_product(id: u64) -> String {
    id.to_string()
}

#[cached(ttl = "10m", grace = "0s", key = "product:{id}")]
async fn get_other(id: u64) -> String {
    id.to_string()
}

fn main() {}
