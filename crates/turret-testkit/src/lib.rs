//! Real Redis servers for turret's tests: a single `redis-server` on a free loopback port,
//! or a Redis Cluster of several. No mock stands in for Redis.
//!
//! Every server runs in its own temporary directory with persistence off and is killed
//! when its handle drops. If `redis-server` is not installed, starting one panics with a
//! message that says how to install it: a test that needs Redis never passes without it.
//!
//! ```no_run
//! let server = turret_testkit::RedisServer::start();
//! let mut conn = server.connection();
//! let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
//! assert_eq!(pong, "PONG");
//! ```

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

pub mod body;
mod connect;

const INSTALL_HINT: &str = "redis-server was not found on PATH. turret's tests run against a real Redis. \
Install it with `sudo apt-get install -y redis-server redis-tools` (Debian/Ubuntu), \
`brew install redis` (macOS), or run `scripts/test`, which installs it on Debian/Ubuntu.";

/// How long a server may take to start answering `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A real `redis-server` process on a loopback port. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--maxmemory", "10mb"]`).
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_inner(args, false)
    }

    /// Starts a server that also listens with TLS, on [`RedisServer::tls_port`], with a
    /// certificate for `127.0.0.1` signed by a fresh CA (made with `openssl`). Returns the
    /// server and the CA certificate (PEM) a client must trust.
    pub fn start_tls() -> (Self, Vec<u8>) {
        let certs = tempfile::Builder::new()
            .prefix("turret-tls-")
            .tempdir()
            .expect("temp dir for certificates");
        let d = certs.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=turret test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ]);
        let tls_port = free_port(false).to_string();
        let path = |f: &str| d.join(f).to_string_lossy().into_owned();
        let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
        let server = Self::start_with_args(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]);
        let ca_pem = std::fs::read(d.join("ca.crt")).expect("read ca.crt");
        // The server reads its files at start-up; the directory can go.
        drop(certs);
        (server, ca_pem)
    }

    /// The TLS port of a server made by [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        let i = self.extra_args.iter().position(|a| a == "--tls-port")?;
        self.extra_args.get(i + 1)?.parse().ok()
    }

    fn start_inner(args: &[&str], cluster_bus: bool) -> Self {
        ensure_installed();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port(cluster_bus);
            let mut server = Self {
                port,
                dir: tempfile::Builder::new()
                    .prefix("turret-redis-")
                    .tempdir()
                    .expect("create a temp dir for redis-server"),
                extra_args: args.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(["--dir".as_ref(), self.dir.path().as_os_str()])
            .args(["--logfile".as_ref(), log.as_os_str()])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited with {status}: {}",
                    self.port,
                    read_log(&log)
                ));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}: {}",
                    self.port,
                    read_log(&log)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers on its port (any reply counts: `-NOAUTH` means it is up).
    fn ping(&self) -> bool {
        let addr = (Ipv4Addr::LOCALHOST, self.port).into();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        stream.write_all(b"PING\r\n").is_ok()
            && stream
                .read(&mut buf)
                .is_ok_and(|n| n > 0 && matches!(buf[0], b'+' | b'-'))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/`, with the password when the server was started with
    /// `--requirepass`.
    pub fn url(&self) -> String {
        let password = self
            .extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra_args.get(i + 1));
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// `127.0.0.1:{port}`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (`SIGKILL`: no goodbye to clients) and waits for it to exit.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port (empty: persistence is off) and waits
    /// until it answers `PING`. Stops it first if it is running.
    pub fn restart(&mut self) {
        self.kill();
        let mut last_err = String::new();
        // The port can take a moment to be free again.
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not restart redis-server on port {}: {last_err}",
            self.port
        );
    }

    /// Pauses all clients for `duration` with `CLIENT PAUSE` (commands hang, then run).
    pub fn pause(&self, duration: Duration) {
        let mut conn = self.connection();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(duration.as_millis() as u64)
            .arg("ALL")
            .query(&mut conn)
            .expect("CLIENT PAUSE");
    }

    /// A fresh synchronous connection, for setting up and checking state in tests.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server")
    }

    /// Runs one command on a fresh connection and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("{args:?} on the test redis-server: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster: `masters` master nodes (and optional replicas) on loopback ports,
/// joined with `redis-cli --cluster create`. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` master nodes (at least 3) with no replicas.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` masters with `replicas` replicas each, and waits until the cluster
    /// reports `cluster_state:ok` on every node and, with replicas, until every replica has
    /// finished its first sync with its master.
    ///
    /// Failover needs that sync: a replica that never synced considers its data too old to
    /// take over (`cluster-replica-validity-factor`), so a master killed before it would stay
    /// failed. The nodes sync at once (`repl-diskless-sync-delay 0`, instead of waiting 5 s
    /// for more replicas), and a master is marked failing after 2 s (`cluster-node-timeout`).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        ensure_installed();
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                RedisServer::start_inner(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                    true,
                )
            })
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli --cluster create: {e}. {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(total);
        if replicas > 0 {
            cluster.wait_replicas_synced(masters * replicas);
        }
        cluster
    }

    /// Waits until `count` nodes are replicas whose link to their master is up (their first
    /// sync done).
    fn wait_replicas_synced(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self
                .nodes
                .iter()
                .filter(|n| {
                    let info: String = n.cmd(&["INFO", "replication"]);
                    info.contains("role:slave") && info.contains("master_link_status:up")
                })
                .count();
            if synced >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster's replicas did not sync with their masters within 30 s ({synced} of {count})"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ok(&self, total: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                let info: String = n.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not reach cluster_state:ok within 30 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`, the single-URL form turret-redis reads.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably (to stop or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The node serving `key`'s hash slot as master.
    pub fn master_of(&self, key: &str) -> &RedisServer {
        let slot: u16 = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]);
        self.nodes
            .iter()
            .find(|node| {
                let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
                nodes
                    .lines()
                    .find(|l| l.contains("myself") && l.contains("master"))
                    .is_some_and(|line| {
                        line.split_whitespace().skip(8).any(|range| {
                            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                        })
                    })
            })
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of the test cluster on port {port}"))
    }

    /// The cluster node ID of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        self.node(port).cmd(&["CLUSTER", "MYID"])
    }

    /// The ports of the masters that serve at least one slot, in the order of the nodes.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| {
                let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
                nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .is_some_and(|l| l.contains("master") && l.split_whitespace().count() > 8)
            })
            .map(RedisServer::port)
            .collect()
    }

    /// Starts moving `slot` from the master serving it to the master on port `to`, as
    /// `redis-cli --cluster reshard` does for each slot it moves: `CLUSTER SETSLOT … IMPORTING`
    /// on the target, then `… MIGRATING` on the source. Until [`SlotMigration::finish`], the
    /// source serves the slot's keys it still has and answers `-ASK` for the others, and the
    /// target serves the slot only to clients that sent `ASKING`.
    pub fn begin_migration(&self, slot: u16, to: u16) -> SlotMigration<'_> {
        let from = self
            .nodes
            .iter()
            .find(|node| serves_slot(node, slot))
            .map(RedisServer::port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        assert_ne!(from, to, "slot {slot} is already served by port {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        let _: () = self
            .node(to)
            .cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        let _: () = self
            .node(from)
            .cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        SlotMigration {
            cluster: self,
            slot,
            from,
            to,
        }
    }

    /// Moves `slot` to the master on port `to` at once: [`RedisCluster::begin_migration`],
    /// [`SlotMigration::migrate_keys`] in batches of 10 keys (`redis-cli`'s default
    /// `--cluster-pipeline`), [`SlotMigration::finish`]. Returns how many keys moved.
    pub fn move_slot(&self, slot: u16, to: u16) -> usize {
        let migration = self.begin_migration(slot, to);
        let moved = migration.migrate_keys(10);
        migration.finish();
        moved
    }
}

/// A slot on its way from one master to another: see [`RedisCluster::begin_migration`].
#[derive(Debug)]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: u16,
    to: u16,
}

impl SlotMigration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of the master the slot leaves.
    pub fn from(&self) -> u16 {
        self.from
    }

    /// The port of the master the slot goes to.
    pub fn to(&self) -> u16 {
        self.to
    }

    /// The slot's keys still on the source (`CLUSTER GETKEYSINSLOT`, at most `count`).
    pub fn keys_on_source(&self, count: usize) -> Vec<String> {
        self.cluster.node(self.from).cmd(&[
            "CLUSTER",
            "GETKEYSINSLOT",
            &self.slot.to_string(),
            &count.to_string(),
        ])
    }

    /// Moves every key of the slot the source still has to the target, `batch` keys per
    /// `MIGRATE … KEYS` (each `MIGRATE` is atomic: a key is on one node or the other, never
    /// both, never neither). Returns how many keys moved.
    pub fn migrate_keys(&self, batch: usize) -> usize {
        let batch = batch.max(1);
        let source = self.cluster.node(self.from);
        let to = self.to.to_string();
        let mut moved = 0;
        loop {
            let keys = self.keys_on_source(batch);
            if keys.is_empty() {
                return moved;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            // `NOKEY` when every key of the batch expired or was deleted meanwhile.
            let _: String = source.cmd(&args);
            moved += keys.len();
        }
    }

    /// Ends the move: `CLUSTER SETSLOT <slot> NODE <target>` on the target, then the source,
    /// then every other master (the order `redis-cli` uses), so that every master names the
    /// target and clients with the old map get `-MOVED`. The source must have no key of the
    /// slot left ([`SlotMigration::migrate_keys`]).
    pub fn finish(self) {
        let to_id = self.cluster.node_id(self.to);
        let s = self.slot.to_string();
        let mut order = vec![self.to, self.from];
        order.extend(
            self.cluster
                .master_ports()
                .into_iter()
                .filter(|p| *p != self.to && *p != self.from),
        );
        for port in order {
            let _: () = self
                .cluster
                .node(port)
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key
/// without one, modulo 16384), computed without a server, as `CLUSTER KEYSLOT` does.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(0, hashed) % 16384
}

/// CRC16/XMODEM (the checksum of Redis Cluster hash slots) of `bytes`, continued from
/// `crc` (0 to start): `crc16(crc16(0, a), b) == crc16(0, ab)`, so that a search over keys
/// with a common start hashes the start once.
pub fn crc16(mut crc: u16, bytes: &[u8]) -> u16 {
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Whether `node` is a master that says it serves `slot` (its own `CLUSTER NODES` line).
fn serves_slot(node: &RedisServer, slot: u16) -> bool {
    let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
    nodes
        .lines()
        .find(|l| l.contains("myself") && l.contains("master"))
        .is_some_and(|line| {
            line.split_whitespace().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            })
        })
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

fn ensure_installed() {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        _ => panic!("{INSTALL_HINT}"),
    }
}

/// A loopback port that is free now; with `cluster_bus`, `port + 10000` is free too.
fn free_port(cluster_bus: bool) -> u16 {
    if !cluster_bus {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral loopback port");
        return listener.local_addr().expect("local addr").port();
    }
    // Cluster bus ports are data ports + 10000, so data ports come from 20000..50000,
    // walked from a per-process starting point so that parallel test binaries spread out.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..30_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let candidate = 20_000 + (seed.wrapping_add(n) % 30_000) as u16;
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, candidate + 10_000)).is_ok();
        if free {
            return candidate;
        }
    }
    panic!("no free loopback port pair (p, p + 10000) in 20000..60000");
}
