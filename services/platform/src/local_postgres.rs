//! Finding or starting a Postgres for `pac dev` and for the test suite: `DATABASE_URL` if set, else a
//! server on 127.0.0.1:5432 if one answers, else a private cluster started from the local PostgreSQL
//! binaries in a data directory of its own (on its own port and socket directory, so it never
//! disturbs a server that is already there).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Connection;

/// The default server tried when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A Postgres to use.
pub struct LocalPostgres {
    /// Administrator URL.
    pub url: String,
    /// Where it came from, for the start-up banner.
    pub origin: Origin,
    private: Option<PrivateCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    DatabaseUrl,
    DefaultPort,
    Private { data_dir: PathBuf, port: u16 },
}

struct PrivateCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    stop_on_drop: bool,
}

impl LocalPostgres {
    /// `DATABASE_URL`, else 127.0.0.1:5432, else a private cluster in `data_dir` on `port`.
    /// With `stop_on_drop`, a cluster started here is stopped when this value is dropped.
    pub async fn find_or_start(data_dir: &Path, port: u16, stop_on_drop: bool) -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            return Ok(Self { url, origin: Origin::DatabaseUrl, private: None });
        }
        if answers(DEFAULT_URL).await {
            return Ok(Self { url: DEFAULT_URL.into(), origin: Origin::DefaultPort, private: None });
        }
        Self::private(data_dir, port, stop_on_drop).await
    }

    /// A private cluster in `data_dir` on `port`, whatever else answers: the fault suite crashes,
    /// pauses and restarts it. Stopped when dropped.
    pub async fn start_private(data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        Self::private(data_dir, port, true).await
    }

    /// Starts (initialising it the first time) the private cluster in `data_dir` and waits until it
    /// answers.
    async fn private(data_dir: &Path, port: u16, stop_on_drop: bool) -> anyhow::Result<Self> {
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let cluster = tokio::task::spawn_blocking({
            let data_dir = data_dir.to_path_buf();
            move || start_private(&data_dir, port)
        })
        .await??;
        for _ in 0..100 {
            if answers(&url).await {
                let origin = Origin::Private { data_dir: cluster.data_dir.clone(), port };
                return Ok(Self { url, origin, private: Some(PrivateCluster { stop_on_drop, ..cluster }) });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("started a private Postgres in {} but it does not answer on port {port}", data_dir.display())
    }

    fn cluster(&self) -> anyhow::Result<&PrivateCluster> {
        self.private.as_ref().context("not a private cluster of this process")
    }

    /// Stops the private cluster as a crash would (`pg_ctl stop -m immediate`: no checkpoint, the
    /// next start recovers from the write-ahead log).
    pub fn crash(&self) -> anyhow::Result<()> {
        let cluster = self.cluster()?;
        let output = pg_command(&cluster.bin_dir, "pg_ctl")
            .args(["-D", &cluster.data_dir.to_string_lossy(), "-m", "immediate", "-w", "stop"])
            .output()?;
        anyhow::ensure!(output.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    /// Starts the private cluster again after [`Self::crash`].
    pub async fn restart(&self) -> anyhow::Result<()> {
        let Origin::Private { data_dir, port } = self.origin.clone() else { bail!("not a private cluster") };
        tokio::task::spawn_blocking(move || start_private(&data_dir, port)).await??;
        Ok(())
    }

    /// The private cluster's server processes: the postmaster and its children (to pause them all).
    pub fn server_processes(&self) -> anyhow::Result<Vec<u32>> {
        let cluster = self.cluster()?;
        let pid_file = std::fs::read_to_string(cluster.data_dir.join("postmaster.pid"))?;
        let postmaster: u32 = pid_file.lines().next().context("empty postmaster.pid")?.trim().parse()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(cluster) = &self.private
            && cluster.stop_on_drop
        {
            let _ = pg_command(&cluster.bin_dir, "pg_ctl")
                .args(["-D", &cluster.data_dir.to_string_lossy(), "-m", "fast", "-w", "stop"])
                .output();
        }
    }
}

/// Creates database `name` on the server at `url` if it is missing; returns its URL.
pub async fn ensure_database(url: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let mut conn = options.connect().await.context("cannot connect to Postgres")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)").bind(name).fetch_one(&mut conn).await?;
    if !exists {
        anyhow::ensure!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "database names are lowercase identifiers");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    }
    Ok(options.database(name).to_url_lossy().to_string())
}

async fn answers(url: &str) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(url)).await, Ok(Ok(_)))
}

/// Initialises (once) and starts a cluster; a file lock keeps concurrent callers from racing.
fn start_private(data_dir: &Path, port: u16) -> anyhow::Result<PrivateCluster> {
    let bin_dir = find_bin_dir()?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let lock_path = data_dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path)?;
    lock.lock()?;
    let owner = server_user()?;
    if let Some((uid, gid)) = owner {
        chown_recursive(data_dir, uid, gid)?;
    }
    if !data_dir.join("PG_VERSION").exists() {
        let output = pg_command(&bin_dir, "initdb")
            .args(["-D", &data_dir.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("cannot run initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
    let running = pg_command(&bin_dir, "pg_ctl").args(["-D", &data_dir.to_string_lossy(), "status"]).output()?.status.success();
    if !running {
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", data_dir.display());
        let output = pg_command(&bin_dir, "pg_ctl")
            .args(["-D", &data_dir.to_string_lossy(), "-l", &data_dir.join("server.log").to_string_lossy()])
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .context("cannot run pg_ctl")?;
        if !output.status.success() {
            let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
            bail!("pg_ctl start failed: {}\n{log}", String::from_utf8_lossy(&output.stderr));
        }
    }
    drop(lock);
    Ok(PrivateCluster { bin_dir, data_dir: data_dir.to_path_buf(), stop_on_drop: false })
}

/// The PostgreSQL server binaries: `PG_BIN_DIR`, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the `PATH`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates = Vec::new();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> =
            entries.filter_map(Result::ok).filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin")))).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, path)| path));
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .context("no PostgreSQL server binaries found (install PostgreSQL, or set DATABASE_URL or PG_BIN_DIR)")
}

/// Postgres refuses to run as root; as root, run it as the `postgres` system user.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    let euid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let output = Command::new("id").args([flag, "postgres"]).output()?;
        if !output.status.success() {
            bail!("running as root needs a 'postgres' system user to run the private Postgres");
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn pg_command(bin_dir: &Path, program: &str) -> Command {
    let program = bin_dir.join(program);
    match server_user() {
        Ok(Some(_)) => {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        }
        _ => Command::new(program),
    }
}
