//! A real git server on loopback: `git daemon` serving the bare repositories of one directory
//! over `git://`, receive-pack enabled, so pushes go through the network code of the git CLI.
//!
//! The fixture waits for the daemon's "Ready to rumble" line on stderr (printed once its socket
//! listens), never for a clock; a port someone else holds makes the daemon exit with "unable to
//! allocate any listen sockets", and the next free port is tried. It can be stopped and started
//! again on the same port (a server going down and coming back), and is killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// How long a daemon may take to say it is ready before the test gives up. A guard against a
/// hang, not a synchronisation: readiness is the "Ready to rumble" line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many ports are tried before giving up.
const PORT_TRIES: usize = 20;

/// A `git daemon` serving `base` on 127.0.0.1.
pub struct GitDaemon<'a> {
    env: &'a Env,
    base: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Everything the current daemon printed on stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// Why one start did not give a ready daemon.
enum StartError {
    PortTaken(String),
}

impl<'a> GitDaemon<'a> {
    /// Starts a daemon serving the repositories under `base` on a free port.
    pub fn start(env: &'a Env, base: &Path) -> Self {
        Self::start_trying(env, base, None)
    }

    /// Starts a daemon serving `base`, trying `first` before free ports.
    pub fn start_trying(env: &'a Env, base: &Path, first: Option<u16>) -> Self {
        std::fs::create_dir_all(base).unwrap();
        let mut daemon = GitDaemon {
            env,
            base: base.to_path_buf(),
            port: 0,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let mut refused = Vec::new();
        let candidates = first.into_iter().chain(std::iter::repeat_with(free_port));
        for port in candidates.take(PORT_TRIES) {
            match daemon.spawn_on(port) {
                Ok(()) => return daemon,
                Err(StartError::PortTaken(why)) => refused.push(format!("{port}: {why}")),
            }
        }
        panic!(
            "git daemon could not listen on any of {PORT_TRIES} ports:\n{}",
            refused.join("\n")
        );
    }

    /// The port the daemon listens on (kept across `stop` and `restart`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git://127.0.0.1:<port>/<name>` for the repository `base/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Whether a daemon is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What the daemon printed so far (its `--verbose` log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Kills the daemon and waits for it: the port stops answering. Connections it already
    /// handed to a child process finish on their own.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same port (the URLs stay valid).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        let mut refused = Vec::new();
        for _ in 0..PORT_TRIES {
            match self.spawn_on(self.port) {
                Ok(()) => return,
                Err(StartError::PortTaken(why)) => refused.push(why),
            }
        }
        panic!(
            "git daemon could not listen on its port {} again:\n{}",
            self.port,
            refused.join("\n")
        );
    }

    /// Spawns `git daemon` on `port` and waits until it says it is ready, or exits.
    fn spawn_on(&mut self, port: u16) -> Result<(), StartError> {
        let base = self.base.display().to_string();
        let mut cmd = daemon_cmd(self.env, &self.base);
        cmd.args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            &format!("--base-path={base}"),
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--verbose",
            &base,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn git daemon");
        let stderr = child.stderr.take().expect("daemon stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        {
            let log = Arc::clone(&log);
            // Drains stderr for the daemon's whole life (a full pipe would block it), and says
            // when the ready line went by. At end of file the sender is dropped, which wakes
            // the waiter below if the daemon exited before being ready.
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    let ready = text.contains("Ready to rumble");
                    log.lock().unwrap().push(text);
                    if ready && let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            });
        }
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => {
                self.port = port;
                self.child = Some(child);
                self.log = log;
                Ok(())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The daemon closed stderr without being ready: it exited (or is exiting).
                let status = child.wait().expect("wait for git daemon");
                let text = log.lock().unwrap().join("\n");
                if text.contains("unable to allocate any listen sockets")
                    || text.contains("Address already in use")
                {
                    Err(StartError::PortTaken(text))
                } else {
                    panic!(
                        "git daemon on port {port} exited ({status}) before being ready:\n{text}"
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "git daemon on port {port} not ready after {READY_TIMEOUT:?}:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    }
}

impl Drop for GitDaemon<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `git-daemon` itself, in the hermetic environment of `env`'s git commands. Not `git daemon`:
/// `git` runs the daemon as a child process of its own, and killing `git` would leave the daemon
/// listening.
fn daemon_cmd(env: &Env, cwd: &Path) -> Command {
    let exec_path = env.git(cwd, ["--exec-path"]);
    let git = env.git_cmd(cwd);
    let mut cmd = Command::new(Path::new(exec_path.trim()).join("git-daemon"));
    cmd.env_clear().current_dir(cwd);
    for (key, value) in git.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd
}

/// A port nobody listened on a moment ago (the daemon start retries if that changed since).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// A bare repository `base/<name>` whose `main` holds one commit (`build.pkr.hcl`).
pub fn served_repo(env: &Env, base: &Path, name: &str) -> PathBuf {
    let src = env.repo(&format!("{}-seed", name.trim_end_matches(".git")));
    std::fs::create_dir_all(base).unwrap();
    let path = base.join(name);
    env.git(
        env.path(),
        [
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    path
}

// ---------------------------------------------------------------------------------------------
// The fixture itself
// ---------------------------------------------------------------------------------------------

/// Clone and push over git://, a stop that really stops, and a restart on the same port.
#[test]
fn git_daemon_serves_clone_and_push_and_restarts_on_its_port() {
    let env = Env::new();
    let base = env.path().join("srv");
    let bare = served_repo(&env, &base, "infra.git");
    let mut daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("infra.git");
    assert!(daemon.log().contains("Ready to rumble"), "{}", daemon.log());

    env.git(env.path(), ["clone", "-q", &url, "client"]);
    let client = env.path().join("client");
    assert!(client.join("build.pkr.hcl").is_file());
    std::fs::write(client.join("variables.pkr.hcl"), "# vars\n").unwrap();
    env.git(&client, ["add", "variables.pkr.hcl"]);
    env.git(&client, ["commit", "-q", "-m", "variables"]);
    env.git(&client, ["push", "-q", "origin", "main"]);
    assert_eq!(
        env.git(&bare, ["rev-parse", "main"]),
        env.git(&client, ["rev-parse", "main"]),
        "the push over git:// must reach the bare repository"
    );
    assert!(
        daemon.log().contains("receive-pack"),
        "the daemon must have served the push:\n{}",
        daemon.log()
    );

    let port = daemon.port();
    daemon.stop();
    assert!(!daemon.is_running());
    let down = env
        .git_cmd(&client)
        .args(["ls-remote", &url])
        .output()
        .unwrap();
    assert!(
        !down.status.success(),
        "ls-remote must fail while the daemon is down:\n{}",
        stdout(&down)
    );

    daemon.restart();
    assert_eq!(daemon.port(), port, "restart must keep the port");
    let heads = env.git(&client, ["ls-remote", &url, "refs/heads/main"]);
    assert!(
        heads.starts_with(env.git(&bare, ["rev-parse", "main"]).trim()),
        "{heads}"
    );
}

/// A port that is taken makes the fixture move on to another one.
#[test]
fn git_daemon_moves_to_another_port_when_its_port_is_taken() {
    let env = Env::new();
    let base = env.path().join("srv");
    served_repo(&env, &base, "infra.git");
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let daemon = GitDaemon::start_trying(&env, &base, Some(taken));
    assert_ne!(daemon.port(), taken);
    let heads = env.git(
        env.path(),
        ["ls-remote", &daemon.url("infra.git"), "refs/heads/main"],
    );
    assert!(heads.ends_with("\trefs/heads/main\n"), "{heads}");
    drop(squatter);
}
