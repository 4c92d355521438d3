use turret_macros::cached;

#[cached(ttl = "10m", key = "greeting:{name}")]
async fn greet(name: impl std::fmt::Display) -> String {
    format!("hello {name}")
}

#[cached(ttl = "10m")]
async fn numbers(n: u8) -> impl Iterator<Item = u8> {
    0..n
}

fn main() {}
