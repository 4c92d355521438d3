use turret_macros::cached;

#[cached(ttl = "10m")]
async fn area((w, h): (u32, u32)) -> u32 {
    w * h
}

fn main() {}
