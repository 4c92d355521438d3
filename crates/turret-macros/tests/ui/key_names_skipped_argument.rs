use turret_macros::cached;

struct Db;

#[cached(ttl = "10m", key = "product:{db}:{id}", skip(db))]
async fn get_product(db: &Db, id: u64) -> String {
    let _ = db;
    id.to_string()
}

#[cached(ttl = "10m", key = "product:{id}", skip(conn))]
async fn get_other(db: &Db, id: u64) -> String {
    let _ = db;
    id.to_string()
}

fn main() {}
