//! Lua scripts, run with `EVALSHA` and recovered on `NOSCRIPT`.

use redis::ToRedisArgs;

use crate::{Error, Redis};

/// A Lua script: one atomic Redis operation, one round trip.
///
/// Scripts are declared once (usually in a `static` via [`std::sync::LazyLock`]) and
/// run with [`Script::key`] / [`Script::arg`] / [`ScriptCall::invoke`]. A call sends
/// `EVALSHA`; when the node does not know the script (`NOSCRIPT`: a restarted or flushed
/// Redis, a failed-over replica, a new cluster node), the same call retries with `EVAL`,
/// which runs the script and caches it on that node. No separate `SCRIPT LOAD` is needed,
/// and it works on each node of a cluster. [`Redis::preload`] loads scripts ahead of time.
///
/// On a Redis Cluster, every key of one call must share a hash tag (see
/// [`crate::KeyBuilder::tag`]); the call is routed to the node that owns the first key.
///
/// ```
/// use std::sync::LazyLock;
/// use turret_redis::Script;
///
/// static INCR_BY: LazyLock<Script> = LazyLock::new(|| {
///     Script::new("incr_by", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
/// });
/// assert_eq!(INCR_BY.sha1().len(), 40);
/// ```
#[derive(Debug, Clone)]
pub struct Script {
    name: &'static str,
    source: String,
    sha1: String,
}

impl Script {
    /// Declares a script; `name` appears in logs and metrics.
    pub fn new(name: &'static str, source: impl Into<String>) -> Self {
        let source = source.into();
        let sha1 = redis::Script::new(&source).get_hash().to_owned();
        Self { name, source, sha1 }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The script's Lua source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The SHA-1 digest `EVALSHA` names the script by.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }

    /// Starts a call with one key.
    pub fn key(&self, key: impl ToRedisArgs) -> ScriptCall<'_> {
        ScriptCall::new(self).key(key)
    }

    /// Starts a call with one argument.
    pub fn arg(&self, arg: impl ToRedisArgs) -> ScriptCall<'_> {
        ScriptCall::new(self).arg(arg)
    }

    /// Starts a call with no key or argument yet.
    pub fn prepare(&self) -> ScriptCall<'_> {
        ScriptCall::new(self)
    }
}

/// One call of a [`Script`]: its keys and arguments.
#[derive(Debug, Clone)]
pub struct ScriptCall<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> ScriptCall<'a> {
    fn new(script: &'a Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a key (`KEYS[n]`).
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub(crate) fn command(&self, evalsha: bool) -> redis::Cmd {
        let mut cmd = if evalsha {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.script.sha1);
            c
        } else {
            let mut c = redis::cmd("EVAL");
            c.arg(&self.script.source);
            c
        };
        cmd.arg(self.keys.len());
        for k in &self.keys {
            cmd.arg(k.as_slice());
        }
        for a in &self.args {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    /// The script this call runs.
    pub fn script(&self) -> &Script {
        self.script
    }

    /// Runs the call: one `EVALSHA`, plus one `EVAL` if the node answered `NOSCRIPT`.
    pub async fn invoke<T: redis::FromRedisValue>(&self, redis: &Redis) -> Result<T, Error> {
        redis.run_script(self).await
    }
}
