//! The `#[cached]` attribute of [turret-stampede](https://docs.rs/turret-stampede):
//! stampede-safe caching of `async fn`s, re-exported as `turret_stampede::cached` (feature
//! `macros`) and `turret::cached` (feature `cached`). See [`macro@cached`].

mod args;
mod duration;
mod expand;
mod template;

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::{ItemFn, parse_macro_input};

/// Caches an `async fn`'s value in a `StampedeCache`: one computation per key for the
/// process (and, on Redis, for the fleet), errors never cached.
///
/// ```text
/// #[cached(ttl = "10m", key = "product:{id}", tags = ["category:{category_id}"], grace = "1m", skip(db))]
/// async fn get_product(db: &Db, id: u64, category_id: u32) -> Result<Product, DbError> { … }
///
/// impl ProductService {
///     #[cached(cache = self.cache, ttl = "10m", key = "product:{id}")]
///     async fn get_product(&self, id: u64) -> Result<Product, DbError> { … }
/// }
/// ```
///
/// # Options
///
/// - `ttl = "10m"` (required), `grace = "1m"`: durations (`ms`, `s`, `m`, `h`, `d`, summed:
///   `"1h30m"`), read at compile time.
/// - `cache = <expr>`: the cache, any expression with a `fetch` method (`self.cache`, an
///   argument, `&*CACHE`). Free functions default to `StampedeCache::default_cache()` (set it
///   once at start-up with `StampedeCache::set_default`); methods (`&self`) must name one. An
///   argument named by `cache = name` is left out of the key.
/// - `key = "product:{id}"`: a template. It is split at `:`; the first segment names the key,
///   every other segment is one escaped `CacheKey` part, so an argument whose value contains
///   `:` can never produce another call's key. A `{argument}` renders with `Display`; a
///   segment holds at most one (`"{a}:{b}"`, not `"{a}-{b}"`); `{{`/`}}` are literal braces.
///   Every argument that is not skipped must be in the key or in a tag.
/// - Without `key`: the key is the function's path (`module_path!()`, or
///   `type_name::<Self>()` for a method) and name, and a hash of every argument that is not
///   skipped (`serde::Serialize`, SHA-256 of a stable encoding: the same across processes
///   and releases; an argument must serialize deterministically: `BTreeMap`, not
///   `HashMap`). `key_prefix = "products"` replaces the path and name.
/// - `tags = ["category:{category_id}"]`: templates like `key`, given to the cache for
///   `invalidate_tag`.
/// - `skip(db, …)`: arguments left out of the key (handles, connections). `_` arguments are
///   left out by themselves.
///
/// # The return type
///
/// A type whose last path segment is `Result` (`Result<T, E>`, `io::Result<T>`) is a
/// fallible computation: `Ok` values are cached, `Err` is returned to this caller and never
/// cached. Any other type is the value itself. `T: Serialize + DeserializeOwned + Clone +
/// Send + Sync + 'static`.
///
/// # Generated next to the function
///
/// With the function's visibility, as free functions or, in an `impl`, associated ones:
/// - `<name>_key(..) -> String`: the key, taking the arguments the key uses, by value with
///   their declared types (`get_product_key(42)`), for `cache.invalidate(..)` and
///   `cache.set(..)`;
/// - `<name>_options(..) -> Options`: the TTL, grace and tags, taking the arguments the tags
///   use, so that write-through stores with the same TTL and tags.
///
/// # Refused at compile time
///
/// A non-`async` fn, `&mut self`, an unknown or repeated option, a missing `ttl`, a bad
/// duration, a method without `cache = …`, a template naming a missing or skipped argument,
/// an argument in neither the key nor a tag, a pattern argument, an `impl Trait` key
/// argument or return type, and type parameters in a key argument or the return type (one
/// key would hold values of different types; a type parameter used only by skipped
/// arguments is fine).
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut args = args::Args::default();
    let parser = syn::meta::parser(|meta| args.parse_meta(meta));
    parse_macro_input!(attr with parser);
    let item_tokens = proc_macro2::TokenStream::from(item.clone());
    let item = parse_macro_input!(item as ItemFn);
    let result = args.finish().and_then(|()| expand::expand(args, item));
    match result {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // The function unchanged as well, so its callers do not add errors of their own.
            let mut out = error.to_compile_error();
            item_tokens.to_tokens(&mut out);
            out.into()
        }
    }
}
