use turret_macros::cached;

#[cached(ttl = "10m", key = "product:{id}", key_prefix = "products")]
async fn both(id: u64) -> u64 {
    id
}

#[cached(ttl = "10m", key_prefix = "products:{id}")]
async fn prefix_with_argument(id: u64) -> u64 {
    id
}

#[cached(ttl = "10m", key = "product:{id}", tags = ["category:{category}"])]
async fn tag_names_missing_argument(id: u64) -> u64 {
    id
}

fn main() {}
