use turret_macros::cached;

#[cached(ttl = "10m", key = "product:{id}")]
async fn get_product(id: u64, verbose: bool) -> String {
    format!("{id} {verbose}")
}

fn main() {}
