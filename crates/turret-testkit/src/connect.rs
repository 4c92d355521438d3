//! [`connect!`](crate::connect): a `turret_redis::Redis` handle on a test server.

/// Connects a `turret_redis::Redis` handle to a [`RedisServer`](crate::RedisServer) or
/// [`RedisCluster`](crate::RedisCluster) (anything with a `url()`), its configuration
/// adjusted by `configure` (default: the URL's defaults); panics when it cannot. Evaluates to
/// a future: `.await` it.
///
/// A macro rather than a function: `turret-redis`'s own tests use this crate, so this crate
/// cannot depend on `turret-redis` without a dependency cycle. The expansion names
/// `::turret_redis`, a dependency of every crate that calls it.
///
/// ```ignore
/// let server = turret_testkit::RedisServer::start();
/// let redis = turret_testkit::connect!(&server).await;
/// let fast = turret_testkit::connect!(&server, |c| c.command_timeout(Duration::from_millis(500))).await;
/// ```
#[macro_export]
macro_rules! connect {
    ($server:expr) => {
        $crate::connect!($server, |config| config)
    };
    ($server:expr, $configure:expr) => {{
        fn __testkit_configure(
            config: ::turret_redis::RedisConfig,
            f: impl FnOnce(::turret_redis::RedisConfig) -> ::turret_redis::RedisConfig,
        ) -> ::turret_redis::RedisConfig {
            f(config)
        }
        let config = __testkit_configure(
            ::turret_redis::RedisConfig::from_url(&$server.url())
                .expect("the test server's URL is a Redis URL"),
            $configure,
        );
        async move {
            ::turret_redis::Redis::connect(config)
                .await
                .expect("connect to the test Redis")
        }
    }};
}
