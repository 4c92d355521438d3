//! The JSON the API reads and writes, and the rules input must follow.

use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

/// A product as `GET /products/{id}` returns it. Prices are in the currency's main unit with
/// two decimals (stored as whole cents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Product {
    /// Assigned by the database.
    pub(crate) id: i64,
    /// Display name.
    pub(crate) name: String,
    /// Free text.
    pub(crate) description: String,
    /// Unit price, e.g. `12.99`.
    pub(crate) price: f64,
    /// Units in stock.
    pub(crate) stock: i64,
    /// The category it belongs to.
    pub(crate) category_id: i64,
    /// Incremented by every write; the `ETag` is made from it.
    pub(crate) version: i64,
    /// RFC 3339, UTC.
    pub(crate) created_at: String,
    /// RFC 3339, UTC.
    pub(crate) updated_at: String,
}

impl Product {
    /// The entity-tag of this version: `"p{id}v{version}"`.
    pub(crate) fn etag(&self) -> String {
        product_etag(self.id, self.version)
    }
}

/// The entity-tag of a product version.
pub(crate) fn product_etag(id: i64, version: i64) -> String {
    format!("\"p{id}v{version}\"")
}

/// The entity-tag of a category version.
pub(crate) fn category_etag(id: i64, version: i64) -> String {
    format!("\"c{id}v{version}\"")
}

/// The version in an entity-tag `"{kind}{id}v{version}"` of resource `id`, if it is one.
pub(crate) fn parse_etag(tag: &str, kind: char, id: i64) -> Option<i64> {
    let inner = tag.strip_prefix('"')?.strip_suffix('"')?;
    let (name, version) = inner.strip_prefix(kind)?.split_once('v')?;
    (name.parse::<i64>().ok()? == id).then_some(())?;
    version.parse().ok().filter(|v: &i64| *v > 0)
}

/// The body of `POST /products` and `PUT /products/{id}`: the fields a `GET` returns;
/// `id`, `version` and the timestamps are ignored if present.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProductInput {
    /// 1 to 200 characters, not blank.
    pub(crate) name: String,
    /// Up to 2000 characters (default empty).
    #[serde(default)]
    pub(crate) description: String,
    /// 0 to 1,000,000, at most two decimals.
    pub(crate) price: f64,
    /// 0 to 1,000,000,000.
    pub(crate) stock: i64,
    /// An existing category.
    pub(crate) category_id: i64,
}

/// A [`ProductInput`] that passed [`ProductInput::validate`].
#[derive(Debug, Clone)]
pub(crate) struct NewProduct {
    /// Trimmed, not blank.
    pub(crate) name: String,
    /// Free text.
    pub(crate) description: String,
    /// The price in whole cents.
    pub(crate) price_cents: i64,
    /// Units in stock.
    pub(crate) stock: i64,
    /// The category (its existence is checked against the database).
    pub(crate) category_id: i64,
}

impl ProductInput {
    /// Checks every rule; `422` naming the first broken one.
    pub(crate) fn validate(self) -> Result<NewProduct, ApiError> {
        let name = check_name(&self.name, 200)?;
        check_len("description", &self.description, 2000)?;
        if !self.price.is_finite() || !(0.0..=1_000_000.0).contains(&self.price) {
            return Err(ApiError::Unprocessable(
                "price must be a number from 0 to 1000000".into(),
            ));
        }
        let cents = self.price * 100.0;
        if (cents - cents.round()).abs() > 1e-6 {
            return Err(ApiError::Unprocessable(
                "price has at most two decimals".into(),
            ));
        }
        if !(0..=1_000_000_000).contains(&self.stock) {
            return Err(ApiError::Unprocessable(
                "stock must be from 0 to 1000000000".into(),
            ));
        }
        if self.category_id <= 0 {
            return Err(ApiError::Unprocessable(
                "category_id must be a positive integer".into(),
            ));
        }
        Ok(NewProduct {
            name,
            description: self.description,
            // In range: checked above.
            price_cents: cents.round() as i64,
            stock: self.stock,
            category_id: self.category_id,
        })
    }
}

/// A category as `GET /categories/{id}` returns it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Category {
    /// Assigned by the database.
    pub(crate) id: i64,
    /// Display name.
    pub(crate) name: String,
    /// Free text.
    pub(crate) description: String,
    /// Incremented by every write; the `ETag` is made from it.
    pub(crate) version: i64,
    /// RFC 3339, UTC.
    pub(crate) updated_at: String,
}

/// The body of `PUT /categories/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CategoryInput {
    /// 1 to 100 characters, not blank.
    pub(crate) name: String,
    /// Up to 2000 characters (default empty).
    #[serde(default)]
    pub(crate) description: String,
}

impl CategoryInput {
    /// Checks every rule; `422` naming the first broken one.
    pub(crate) fn validate(self) -> Result<CategoryInput, ApiError> {
        let name = check_name(&self.name, 100)?;
        check_len("description", &self.description, 2000)?;
        Ok(CategoryInput {
            name,
            description: self.description,
        })
    }
}

/// One row of `GET /products/top-selling`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopProduct {
    /// The product.
    pub(crate) product_id: i64,
    /// Its name.
    pub(crate) name: String,
    /// Its category.
    pub(crate) category_id: i64,
    /// Units sold over all orders.
    pub(crate) units_sold: i64,
    /// Revenue over all orders, in the main unit.
    pub(crate) revenue: f64,
}

/// `GET /stats/dashboard`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Dashboard {
    /// Products in the catalogue.
    pub(crate) products: i64,
    /// Categories.
    pub(crate) categories: i64,
    /// Orders placed.
    pub(crate) orders: i64,
    /// Units over all order lines.
    pub(crate) units_sold: i64,
    /// Revenue over all orders, in the main unit.
    pub(crate) revenue: f64,
    /// Revenue per order, in the main unit.
    pub(crate) average_order_value: f64,
}

/// Query of `GET /products`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ListParams {
    /// Products to skip (default 0).
    pub(crate) skip: Option<i64>,
    /// Products to return, 1 to 100 (default 20).
    pub(crate) limit: Option<i64>,
    /// Only this category.
    pub(crate) category: Option<i64>,
}

/// A validated [`ListParams`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    /// Rows to skip, 0 or more.
    pub(crate) skip: i64,
    /// Rows to return, 1 to 100.
    pub(crate) limit: i64,
    /// Only this category.
    pub(crate) category: Option<i64>,
}

impl ListParams {
    /// Checks the ranges; `422` naming the first broken one.
    pub(crate) fn validate(self) -> Result<Page, ApiError> {
        let skip = self.skip.unwrap_or(0);
        if skip < 0 {
            return Err(ApiError::Unprocessable("skip must be 0 or more".into()));
        }
        let limit = check_limit(self.limit, 20)?;
        if let Some(c) = self.category
            && c <= 0
        {
            return Err(ApiError::Unprocessable(
                "category must be a positive integer".into(),
            ));
        }
        Ok(Page {
            skip,
            limit,
            category: self.category,
        })
    }
}

/// Query of `GET /products/top-selling`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TopParams {
    /// Rows to return, 1 to 100 (default 10).
    pub(crate) limit: Option<i64>,
}

/// `limit` in 1..=100, or `default`.
pub(crate) fn check_limit(limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::Unprocessable(
            "limit must be from 1 to 100".into(),
        ));
    }
    Ok(limit)
}

fn check_name(name: &str, max: usize) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::Unprocessable("name must not be blank".into()));
    }
    check_len("name", name, max)?;
    Ok(name.to_owned())
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// Cents to the main unit, for JSON.
pub(crate) fn from_cents(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(price: f64) -> ProductInput {
        ProductInput {
            name: "Lamp".into(),
            description: String::new(),
            price,
            stock: 1,
            category_id: 1,
        }
    }

    #[test]
    fn prices_convert_to_cents_exactly() {
        assert_eq!(input(12.99).validate().unwrap().price_cents, 1299);
        assert_eq!(input(0.1).validate().unwrap().price_cents, 10);
        assert_eq!(input(10.0).validate().unwrap().price_cents, 1000);
        assert!(input(1.234).validate().is_err());
        assert!(input(-1.0).validate().is_err());
        assert!(input(f64::NAN).validate().is_err());
        assert_eq!(from_cents(1299), 12.99);
    }

    #[test]
    fn etags_round_trip() {
        assert_eq!(parse_etag(&product_etag(7, 3), 'p', 7), Some(3));
        assert_eq!(parse_etag(&product_etag(7, 3), 'p', 8), None);
        assert_eq!(parse_etag(&category_etag(7, 3), 'p', 7), None);
        assert_eq!(parse_etag("W/\"p7v3\"", 'p', 7), None);
        assert_eq!(parse_etag("\"p7vx\"", 'p', 7), None);
    }

    #[test]
    fn list_params_are_checked() {
        assert!(ListParams::default().validate().is_ok());
        let bad = |skip, limit| ListParams {
            skip,
            limit,
            category: None,
        };
        assert!(bad(Some(-1), None).validate().is_err());
        assert!(bad(None, Some(0)).validate().is_err());
        assert!(bad(None, Some(101)).validate().is_err());
    }
}
