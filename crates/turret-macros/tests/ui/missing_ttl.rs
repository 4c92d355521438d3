use turret_macros::cached;

#[cached(key = "product:{id}")]
async fn get_product(id: u64) -> String {
    id.to_string()
}

fn main() {}
