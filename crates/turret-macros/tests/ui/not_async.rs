use turret_macros::cached;

#[cached(ttl = "10m", key = "product:{id}")]
fn get_product(id: u64) -> String {
    id.to_string()
}

fn main() {}
