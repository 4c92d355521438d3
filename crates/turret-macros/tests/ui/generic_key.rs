use turret_macros::cached;

#[cached(ttl = "10m")]
async fn parse<T: std::fmt::Debug>(text: T) -> u64 {
    let _ = text;
    1
}

#[cached(ttl = "10m", key = "parsed:{text}")]
async fn parse_as<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.parse().ok()
}

fn main() {}
