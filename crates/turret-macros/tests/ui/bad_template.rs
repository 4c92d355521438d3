use turret_macros::cached;

#[cached(ttl = "10m", key = "range:{from}-{to}")]
async fn range(from: u32, to: u32) -> Vec<u32> {
    (from..to).collect()
}

#[cached(ttl = "10m", key = "range::{from}", tags = ["r:{from"])]
async fn from(from: u32) -> Vec<u32> {
    (from..10).collect()
}

fn main() {}
