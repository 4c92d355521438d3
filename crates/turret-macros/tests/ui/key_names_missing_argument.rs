use turret_macros::cached;

#[cached(ttl = "10m", key = "product:{product_id}")]
async fn get_product(id: u64) -> String {
    id.to_string()
}

fn main() {}
